/**
 * Every ```ts snippet in README.md runs, as a new user would write it: imports of
 * 'kd-kernels' are pointed at this checkout's lib/, each snippet runs in its own
 * process with tsx, and must exit 0 (snippets assert their own results).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { requestDevice } from '../lib/webgpu/runtime.js';

const root = resolve(import.meta.dirname, '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const snippets = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);

// Snippets whose first line names WebGPU need an adapter (lavapipe in CI): skipped, saying
// why, where none exists.
let noGpu = '';
try {
  await requestDevice();
} catch (e) {
  noGpu = (e as Error).message;
}
const needsGpu = (code: string) => /webgpu/i.test(code.split('\n')[0]!);

describe('README snippets', () => {
  it('has snippets', () => expect(snippets.length).toBeGreaterThan(0));
  // Inside the checkout, so that a snippet's own imports ('webgpu', '@tensorflow/tfjs')
  // resolve from its node_modules as they would in a user's project.
  const dir = join(root, `.readme-snippets-${process.pid}`);
  void tmpdir;
  snippets.forEach((code, i) => {
    const title = code.split('\n')[0]!.replace(/^\/\/\s*/, '').slice(0, 60);
    it.skipIf(needsGpu(code) && noGpu !== '')(`snippet ${i + 1}: ${title}${needsGpu(code) && noGpu ? ` (no WebGPU adapter: ${noGpu})` : ''}`, () => {
      mkdirSync(dir, { recursive: true });
      const file = join(dir, `snippet-${i + 1}.mts`);
      const src = code
        .replaceAll(/from 'kd-kernels'/g, `from '${join(root, 'lib/index.ts')}'`)
        .replaceAll(/from 'kd-kernels\/tfjs'/g, `from '${join(root, 'lib/tfjs.ts')}'`);
      writeFileSync(file, src);
      try {
        execFileSync(process.execPath, [join(root, 'node_modules/tsx/dist/cli.mjs'), file], { cwd: dir, stdio: 'pipe', timeout: 120_000, env: process.env });
      } catch (e) {
        const err = e as { stderr?: Buffer; stdout?: Buffer };
        throw new Error(`README snippet ${i + 1} failed:\n${code}\n--- stderr ---\n${err.stderr?.toString()}\n--- stdout ---\n${err.stdout?.toString()}`);
      } finally {
        rmSync(file, { force: true });
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
