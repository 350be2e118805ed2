/**
 * scripts/gpu_check.sh (the GPU checks in one device call) where there is no GPU: the
 * path CI takes. It must say why, skip every step in its summary table, build and unpack
 * nothing, and exit 3 within seconds; its step limits must fit the device call (8 min).
 * Also scripts/sanitize.sh --cuda without a GPU: skips, saying so.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CUDA } from './helpers.js';

const ROOT = resolve(import.meta.dirname, '..');
const STEPS = ['info', 'tests', 'sanitizer', 'bench', 'bench_bf16'];
const out = mkdtempSync(join(tmpdir(), 'kd-gpu-check-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

function run(args: string[], env: Record<string, string> = {}) {
  const t0 = Date.now();
  const r = spawnSync('bash', ['scripts/gpu_check.sh', ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, OUT: out, ...env }, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
}

function expectSkippedRun(r: ReturnType<typeof run>, why: RegExp): void {
  expect(r.status, r.stdout + r.stderr).toBe(3);
  expect(r.stdout).toMatch(/gpu_check: no GPU check possible: /);
  expect(r.stdout).toMatch(why);
  const table = r.stdout.slice(r.stdout.indexOf('=== summary'));
  for (const s of STEPS) expect(table).toMatch(new RegExp(`^${s} +skipped: no GPU$`, 'm'));
  expect(r.ms).toBeLessThan(20_000);
}

describe('scripts/gpu_check.sh without a GPU', () => {
  it('the step limits fit the 8-minute device call', () => {
    const r = run(['plan']);
    expect(r.status).toBe(0);
    const limits = Object.fromEntries([...r.stdout.matchAll(/^(\w+) +(\d+) s/gm)].map((m) => [m[1]!, Number(m[2])]));
    for (const s of STEPS) expect(limits[s], s).toBeGreaterThan(0);
    expect(limits.total).toBe(STEPS.reduce((a, s) => a + limits[s]!, 0));
    expect(limits.total).toBeLessThanOrEqual(450); // + unpacking and the summary, inside 480 s
  });

  it('run: no CUDA build to test -> says so, skips every step, exits 3, unpacks nothing', () => {
    const before = ['.device', 'build-cuda', '.ci/logs/gpu'].map((p) => existsSync(join(ROOT, p)));
    const nodeModulesBefore = readdirSync(join(ROOT, 'node_modules')).length;
    const r = run(['run'], { KD_ADDON_PATH: join(out, 'missing', 'kd_kernels.node') });
    // On a machine without a driver (CI) the first reason is the missing nvidia-smi.
    expectSkippedRun(r, /nvidia-smi not found|nvidia-smi -L failed|no CUDA build at /);
    expect(['.device', 'build-cuda', '.ci/logs/gpu'].map((p) => existsSync(join(ROOT, p)))).toEqual(before);
    expect(readdirSync(join(ROOT, 'node_modules')).length).toBe(nodeModulesBefore);
  });

  it.skipIf(CUDA)('run on this GPU-less machine -> exit 3 at once, whatever is built', () => {
    expectSkippedRun(run(['run']), /nvidia-smi not found|nvidia-smi -L failed|no CUDA build at /);
  });

  it('usage errors exit 2; the script parses', () => {
    expect(run([]).status).toBe(2);
    expect(run(['bogus']).status).toBe(2);
    for (const f of ['scripts/gpu_check.sh', 'scripts/sanitize.sh'])
      expect(spawnSync('bash', ['-n', f], { cwd: ROOT }).status, f).toBe(0);
  });

  it.skipIf(CUDA)('scripts/sanitize.sh --cuda skips, saying why, without a GPU', () => {
    const r = spawnSync('bash', ['scripts/sanitize.sh', '--cuda', 'test/cuda_sanitize.test.ts'], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, KD_SANITIZE_LOGS: join(out, 'sanitize') },
      timeout: 60_000,
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/sanitize --cuda: skipped: no GPU or no compute-sanitizer on this machine/);
  });
});
