// npm install hook. node-gyp-build's own install would run `node-gyp rebuild`, which
// this cmake-js project can't use; so: use a prebuilt binary if one loads here, else
// build from source with cmake-js (CUDA when nvcc is found, else CPU-only).
// PREBUILDS_ONLY=1: never build; fail with an explanation if no prebuild loads.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function tryLoad() {
  try {
    const ngb = require('node-gyp-build');
    const path = ngb.resolve(root);
    require(path);
    return path;
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) };
  }
}

const loaded = existsSync(join(root, 'prebuilds')) || existsSync(join(root, 'build')) ? tryLoad() : { error: 'no prebuilt binary and no build' };
if (typeof loaded === 'string') {
  console.log(`[kd-kernels] using ${loaded}`);
  process.exit(0);
}
if (process.env.PREBUILDS_ONLY === '1') {
  console.error(`[kd-kernels] PREBUILDS_ONLY=1 but no prebuilt binary loads: ${loaded.error}`);
  process.exit(1);
}
console.log(`[kd-kernels] no usable prebuilt binary (${loaded.error}); building from source with cmake-js`);
let cmakeJs;
try {
  cmakeJs = require.resolve('cmake-js/bin/cmake-js');
} catch {
  console.error('[kd-kernels] cmake-js is missing; run npm install again');
  process.exit(1);
}
const cuda = process.env.KD_CUDA || 'AUTO';
const r = spawnSync(process.execPath, [cmakeJs, 'rebuild', `--CDKD_CUDA=${cuda}`], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) {
  console.error(
    '[kd-kernels] the source build failed. It needs cmake >= 3.18 and a C++17 compiler (g++ >= 9);\n' +
      'nvcc (CUDA >= 12) is optional. Set KD_CUDA=OFF to skip CUDA.',
  );
  process.exit(r.status ?? 1);
}
