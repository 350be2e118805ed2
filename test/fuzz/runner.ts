/**
 * Runs the fuzzer's properties with fast-check and turns a failure into a
 * ready-to-paste vitest test. Used by test/fuzz/fuzz.test.ts (CI size) and
 * scripts/fuzz.ts (`npm run fuzz -- --runs 100000`).
 *
 *   KD_FUZZ_SEED    the fast-check seed (default: a fixed seed in CI, so runs repeat)
 *   KD_FUZZ_RUNS    total cases over all families (default 2000)
 *   KD_FUZZ_MAX_ELEMS  rows × V budget per case (default 2^18)
 */
import fc from 'fast-check';
import { arbitraryFor } from './arbitraries.js';
import { FAMILIES, caseTitle, runCase, type Family, type FuzzCase } from './cases.js';

export const DEFAULT_SEED = 20261129;
export const DEFAULT_RUNS = 2000;

export function envSeed(): number {
  const s = process.env.KD_FUZZ_SEED;
  if (s === undefined || s === '') return DEFAULT_SEED;
  const n = Number(s);
  if (!Number.isInteger(n)) throw new Error(`KD_FUZZ_SEED must be an integer, got '${s}'`);
  return n;
}

export function envRuns(): number {
  const s = process.env.KD_FUZZ_RUNS;
  if (s === undefined || s === '') return DEFAULT_RUNS;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new Error(`KD_FUZZ_RUNS must be a positive integer, got '${s}'`);
  return n;
}

/** Runs per family for a total (split evenly, at least 1 each). */
export function runsPerFamily(total: number, families: readonly Family[] = FAMILIES): number {
  return Math.max(1, Math.round(total / families.length));
}

export class CaseFailure extends Error {
  constructor(readonly errors: string[]) {
    super(errors.join('\n'));
  }
}

export interface FamilyResult {
  family: Family;
  seed: number;
  runs: number;
  failed: boolean;
  /** A ready-to-paste vitest block (failures only). */
  report?: string;
  ms: number;
}

/** The property of one family: the native op agrees with its reference. */
export function property(family: Family) {
  return fc.asyncProperty(arbitraryFor(family), async (c: FuzzCase) => {
    const errs = await runCase(c);
    if (errs.length) throw new CaseFailure(errs);
  });
}

/** Checks `runs` cases of a family from `seed`; on failure the counterexample is shrunk. */
export async function fuzzFamily(family: Family, runs: number, seed: number, opts: { path?: string; timeLimitMs?: number } = {}): Promise<FamilyResult> {
  const t0 = Date.now();
  const params: fc.Parameters<[FuzzCase]> = { seed, numRuns: runs };
  if (opts.path) params.path = opts.path;
  if (opts.timeLimitMs) params.interruptAfterTimeLimit = opts.timeLimitMs;
  const d = await fc.check(property(family), params);
  const r: FamilyResult = { family, seed, runs: d.numRuns, failed: d.failed, ms: Date.now() - t0 };
  if (d.failed) {
    if (d.counterexample) r.report = formatFailure(family, d.counterexample[0], { seed: d.seed, path: d.counterexamplePath, shrinks: d.numShrinks, error: d.errorInstance });
    else r.report = `${family}: the run failed without a counterexample (interrupted: ${d.interrupted})`;
  }
  return r;
}

/** A failing case as a vitest `it(...)` block plus how to replay it. */
export function formatFailure(family: Family, c: FuzzCase, info: { seed: number; path: string | null; shrinks: number; error: unknown }): string {
  const errors = info.error instanceof CaseFailure ? info.error.errors : [String(info.error instanceof Error ? info.error.stack ?? info.error.message : info.error)];
  const json = JSON.stringify(c, null, 2).replace(/\n/g, '\n    ');
  return [
    `fuzz: ${family} failed (seed ${info.seed}, path '${info.path}', shrunk ${info.shrinks} times)`,
    ...errors.map((e) => '  ' + e.replace(/\n/g, '\n  ')),
    '',
    `replay: npm run fuzz -- --op ${family} --seed ${info.seed} --path '${info.path}'`,
    'paste into test/fuzz/regressions.test.ts (it imports runCase from ./cases.js):',
    '',
    `  it(${JSON.stringify(`fuzz: ${caseTitle(c)}`)}, async () => {`,
    `    const c: FuzzCase = ${json};`,
    '    expect(await runCase(c)).toEqual([]);',
    '  });',
  ].join('\n');
}
