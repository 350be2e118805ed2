#!/usr/bin/env node
// prebuildify calls `node-gyp rebuild --target=... --release`; this project builds
// with cmake-js, so prebuildify is pointed here (--node-gyp). The Node-API build does
// not depend on the target version. KD_PREBUILD_REUSE=1 reuses an existing
// build/Release/kd_kernels.node (CI builds the CUDA binary once and reuses it).
'use strict';
const { spawnSync } = require('node:child_process');
const { existsSync } = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const built = path.join(root, 'build', 'Release', 'kd_kernels.node');
if (process.env.KD_PREBUILD_REUSE === '1' && existsSync(built)) {
  console.log(`[kd-kernels] reusing ${built}`);
  process.exit(0);
}
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const r = spawnSync(process.execPath, [cmakeJs, 'rebuild', `--CDKD_CUDA=${process.env.KD_CUDA || 'ON'}`], { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
