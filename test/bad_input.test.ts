/**
 * The bad-input matrix (test/fixtures/bad_input_matrix.ts): every public function with
 * every class of wrong argument gives the documented error class, `code` and a message
 * that names the argument, and nothing crashes the process. It runs in a child process:
 * a crash (a signal, an abort, a non-zero exit) fails this test instead of vitest.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

describe('bad-input matrix (child process)', () => {
  it('every public function rejects every class of bad argument cleanly; the process exits normally', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/bad_input_matrix.ts'], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env },
      timeout: 240_000,
      maxBuffer: 64 * 2 ** 20,
    });
    const context = `status ${r.status}, signal ${r.signal}\nstderr:\n${r.stderr.slice(-4000)}`;
    expect(r.signal, context).toBeNull();
    expect(r.status, context).toBe(0);
    const line = r.stdout.trim().split('\n').pop()!;
    const summary = JSON.parse(line) as { tried: number; passed: number; failures: { fn: string; what: string; why: string }[]; functions: number; uncovered: string[] };
    console.log(`[bad-input] ${summary.tried} bad calls over ${summary.functions} exported functions: ${summary.passed} rejected as documented`);
    expect(summary.uncovered, 'exported functions missing from the matrix').toEqual([]);
    expect(summary.failures.map((f) => `${f.fn} | ${f.what} | ${f.why}`)).toEqual([]);
    expect(summary.passed).toBe(summary.tried);
    expect(summary.tried).toBeGreaterThan(700);
  });
});
