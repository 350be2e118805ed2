/**
 * A browser build of the package is possible: `kd-kernels/browser` (dist/lib/browser.js)
 * bundles with esbuild for the browser platform, using package.json's "browser" field,
 * into one file with no Node.js import (no node:*, no addon, no file system); that
 * bundle, given only `navigator.gpu` (here Dawn's, from the 'webgpu' package), computes
 * a loss on WebGPU equal to the CPU path's. Skips, saying why, without an adapter.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { GPU, GPU_SKIP_REASON } from './webgpu_rows.js';

const root = resolve(import.meta.dirname, '..');

describe.skipIf(!GPU)(`browser bundle of kd-kernels/browser ${GPU_SKIP_REASON}`, { timeout: 300_000 }, () => {
  it('bundles without Node imports and runs klDiv on navigator.gpu', async () => {
    execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.json')], { cwd: root, stdio: 'pipe' });
    const esbuild = (await import('esbuild')) as typeof import('esbuild');
    const dir = mkdtempSync(join(tmpdir(), 'kd-browser-'));
    try {
      const out = join(dir, 'kd.js');
      await esbuild.build({ entryPoints: [join(root, 'dist/lib/browser.js')], bundle: true, platform: 'browser', format: 'esm', outfile: out, logLevel: 'silent' });
      const code = readFileSync(out, 'utf8');
      expect(code.match(/["']node:[a-z_/]+["']/g) ?? []).toEqual([]);
      expect(code).not.toMatch(/createRequire|readFileSync/);
      const n = 3, v = 50;
      const s = Array.from({ length: n * v }, (_, i) => Math.sin(i * 0.7) * 2);
      const t = Array.from({ length: n * v }, (_, i) => Math.cos(i * 0.3) * 2);
      // A page's view: navigator.gpu exists, nothing else of Node is used by the bundle.
      const page = join(dir, 'page.mjs');
      writeFileSync(
        page,
        `import { create } from ${JSON.stringify(join(root, 'node_modules/webgpu/index.js'))};
globalThis.navigator = { gpu: create([]) };
const kd = await import(${JSON.stringify(out)});
await kd.webgpu.device();
const s = kd.tensor(new Float32Array(${JSON.stringify(s)}), [${n}, ${v}], { device: 'webgpu' });
const t = kd.tensor(new Float32Array(${JSON.stringify(t)}), [${n}, ${v}], { device: 'webgpu' });
const r = kd.jsd(s, t, { beta: 0.3 });
console.log(JSON.stringify({ loss: await r.loss.itemAsync(), grad0: (await r.grad.toArrayAsync())[0] }));
let unsupported = '';
try { kd.jsd(kd.tensor(new Float32Array(4), [1, 4]), kd.tensor(new Float32Array(4), [1, 4])); } catch (e) { unsupported = e.code; }
console.log(JSON.stringify({ unsupported }));
`,
      );
      const lines = execFileSync(process.execPath, [page], { cwd: dir, stdio: 'pipe', timeout: 120_000 }).toString().trim().split('\n');
      const got = JSON.parse(lines[0]!) as { loss: number; grad0: number };
      const cpu = kd.jsd(kd.tensor(Float32Array.from(s), [n, v]), kd.tensor(Float32Array.from(t), [n, v]), { beta: 0.3 });
      expect(Math.abs(got.loss - cpu.loss.item())).toBeLessThanOrEqual(1e-6 + 2e-4 * Math.abs(cpu.loss.item()));
      expect(Math.abs(got.grad0 - cpu.grad!.toArray()[0]!)).toBeLessThanOrEqual(1e-7);
      // CPU tensors in a browser build: a clear error, not a crash.
      expect(JSON.parse(lines[1]!)).toEqual({ unsupported: 'KD_EUNSUPPORTED' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
