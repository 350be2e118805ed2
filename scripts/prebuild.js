// Produces prebuilds/<platform>-<arch>/node.napi.glibc.node with CUDA compiled in,
// using prebuildify with a shim in place of node-gyp (prebuildify has no cmake-js
// backend). `npm pack` then ships it. KD_PREBUILD_REUSE=1 packs an existing build.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = require.resolve('prebuildify/bin.js');
const r = spawnSync(
  process.execPath,
  [bin, '--napi', '--strip', '--tag-libc', '--node-gyp', join(root, 'scripts', 'cmake-js-shim.cjs')],
  { cwd: root, stdio: 'inherit', env: { ...process.env, KD_CUDA: process.env.KD_CUDA || 'ON' } },
);
process.exit(r.status ?? 1);
