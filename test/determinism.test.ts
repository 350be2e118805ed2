/**
 * Determinism: the same inputs give bitwise-identical outputs, run after run, for any
 * CPU thread count and for sync and async calls (CPU), and run after run on CUDA. The
 * ops and inputs are test/fixtures/ops_suite.ts; the shape has enough rows that every
 * thread count splits the work differently.
 */
import { afterAll, describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { diffResults, makeInputs, runAll, runAllAsync } from './fixtures/ops_suite.js';
import { CUDA, CUDA_SKIP_REASON } from './helpers.js';

const threads = kd.backends().cpu.threads;
afterAll(() => kd.setThreads(threads));

describe('determinism (CPU)', () => {
  const shapes = [
    { n: 67, v: 4099 }, // odd rows and vocabulary: uneven chunks per thread, a partial last block
    { n: 5, v: 70001 }, // few long rows
  ];
  for (const { n, v } of shapes)
    it(`${n}×${v}: threads 1, 2, 3, 4, 7, 16, runs and async calls all agree bitwise`, async () => {
      const i = makeInputs(n, v, 21);
      kd.setThreads(1);
      const ref = runAll(i);
      const diffs: string[] = [];
      for (const t of [2, 3, 4, 7, 16]) {
        kd.setThreads(t);
        diffs.push(...diffResults(ref, runAll(i)).map((d) => `threads ${t}: ${d}`));
        diffs.push(...diffResults(ref, await runAllAsync(i)).map((d) => `threads ${t} async: ${d}`));
      }
      kd.setThreads(threads);
      for (let r = 0; r < 3; r++) diffs.push(...diffResults(ref, runAll(i)).map((d) => `run ${r}: ${d}`));
      // fresh tensors over fresh copies of the same values
      diffs.push(...diffResults(ref, runAll(makeInputs(n, v, 21))).map((d) => `fresh inputs: ${d}`));
      expect(diffs).toEqual([]);
      expect(Object.keys(ref).length).toBeGreaterThan(20);
    });
});

describe.skipIf(!CUDA)(`determinism (CUDA)${CUDA ? '' : ` — skipped: ${CUDA_SKIP_REASON}`}`, () => {
  it('67×4099 and 5×70001: repeated runs on cuda:0 agree bitwise', () => {
    const diffs: string[] = [];
    for (const [n, v] of [[67, 4099], [5, 70001]] as const) {
      const i = makeInputs(n, v, 21, 'cuda:0');
      const ref = runAll(i);
      for (let r = 0; r < 5; r++) diffs.push(...diffResults(ref, runAll(i)).map((d) => `${n}x${v} run ${r}: ${d}`));
    }
    expect(diffs).toEqual([]);
  });
});
