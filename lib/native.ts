/**
 * Loads the native addon once per JS realm (main thread or worker): a prebuilt binary
 * from prebuilds/ first, then a local build (build/Release), via node-gyp-build.
 * KD_ADDON_PATH=/path/to/kd_kernels.node loads that file instead (dev builds).
 * A failure throws one KdError listing what was tried and how to fix it.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Binding } from '../binding.js';
import { KdError } from './errors.js';

const require = createRequire(import.meta.url);

/** The package root: the nearest folder above this file whose package.json is ours. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if ((JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'kd-kernels') return dir;
      } catch {
        /* keep looking */
      }
    }
    dir = dirname(dir);
  }
  throw new KdError('kd-kernels: cannot find the package root (package.json)', 'KD_ELOAD');
}

let cached: { binding: Binding; path: string } | undefined;

export function loadBinding(): { binding: Binding; path: string } {
  if (cached) return cached;
  const tried: string[] = [];
  const root = packageRoot();
  let path: string | undefined;
  let binding: Binding | undefined;
  const override = process.env.KD_ADDON_PATH;
  try {
    if (override) {
      tried.push(`KD_ADDON_PATH=${override}`);
      path = override;
    } else {
      const ngb = require('node-gyp-build') as { resolve?: (dir: string) => string };
      tried.push(`node-gyp-build in ${root} (prebuilds/${process.platform}-${process.arch}/, build/Release/)`);
      if (!ngb.resolve) throw new Error('node-gyp-build has no resolve()');
      path = ngb.resolve(root);
    }
    binding = require(path) as Binding;
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new KdError(
      [
        `kd-kernels: could not load the native addon: ${why}`,
        `Tried: ${tried.join('; ')}.`,
        'Possible solutions:',
        '  - reinstall to get a prebuilt binary: npm install kd-kernels (linux-x64, glibc >= 2.34)',
        '  - build from source: npm rebuild kd-kernels (needs cmake >= 3.18 and a C++17 compiler; nvcc for CUDA)',
        '  - set KD_ADDON_PATH to a kd_kernels.node you built',
      ].join('\n'),
      'KD_ELOAD',
    );
  }
  cached = { binding, path: path! };
  return cached;
}

export function binding(): Binding {
  return loadBinding().binding;
}
