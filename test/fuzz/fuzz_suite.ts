/**
 * Declares one vitest test per op family that fuzzes it against its float64 reference
 * (test/fuzz/cases.ts) at CI size: KD_FUZZ_RUNS cases in total over all families
 * (default 2000), from the seed KD_FUZZ_SEED (default fixed, so CI runs repeat; set it to
 * explore). A failure prints the shrunk case as a ready-to-paste test.
 */
import { expect, it } from 'vitest';
import type { Family } from './cases.js';
import { envRuns, envSeed, fuzzFamily, runsPerFamily } from './runner.js';

export function fuzzTests(families: readonly Family[]): void {
  const seed = envSeed();
  const runs = runsPerFamily(envRuns());
  for (const family of families)
    it(`${family}: ${runs} random cases agree with the float64 reference (seed ${seed})`, async () => {
      const r = await fuzzFamily(family, runs, seed);
      console.log(`[fuzz] ${family}: ${r.runs} cases, seed ${seed}, ${r.failed ? 'FAILED' : 'ok'} (${(r.ms / 1000).toFixed(1)} s)`);
      if (r.failed) throw new Error(r.report);
      expect(r.runs).toBe(runs);
    }, 600_000);
}
