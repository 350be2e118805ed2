/**
 * Knowledge distillation on multi-digit arithmetic with tfjs and kd-kernels.
 *
 *   npm run example:arithmetic -- --quick            # < 3 min on 2 cores, one seed
 *   npm run example:arithmetic -- --search           # choose hparams.json on the validation split (once)
 *   npm run example:arithmetic                       # the full run: every method, seeds 1,2,3
 *   npm run example:arithmetic -- --seeds 2 --steps 400 --methods ce,fkl,gkd --out /tmp/dev
 *   flags: --quick --search --seeds 1,2,3 --steps N (student steps) --teacher-steps N
 *          --methods a,b,... --ops + | - | +- --digits D --out DIR
 *          --eval-on val (development runs: score on the validation split, keep the held-out set unseen)
 *          --teacher-dir DIR (keep trained teachers there and reuse them: development runs)
 *          --hparams FILE (default hparams.json next to this file) and overrides of its
 *          values: --temperature T --hard-weight W --soft-weight W --lambda L
 *          --warm-fraction F --guide-top-k K (a run with overrides says so)
 *
 * The full run writes results/seed{N}.{md,json} per seed and results/summary.{json,md}
 * across seeds; --quick writes results/quick.{md,json} and results/quick-summary.json;
 * --out DIR writes the same files under DIR instead (development runs). See README.md.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Ops } from './data.js';
import { ALL_METHODS, runExperiment, type ExperimentConfig, type ExperimentResult, type HParams, type MethodId } from './experiment.js';
import { markdownTable, summarize, summaryTable } from './report.js';
import { runSearch } from './search.js';

export const HPARAM_KEYS = ['temperature', 'hardWeight', 'softWeight', 'lambda', 'beta', 'warmFraction', 'guideTopK'] as const satisfies readonly (keyof HParams)[];

/** hparams.json: the shared hyper-parameters and where they came from. */
export interface HParamsFile extends HParams {
  /** 'searched' once search.ts chose them on the validation split; 'prior' before. */
  status: 'prior' | 'searched';
  note?: string;
  search?: unknown;
}

export const HPARAMS_PATH = fileURLToPath(new URL('./hparams.json', import.meta.url));

export function readHParams(path = HPARAMS_PATH): HParamsFile {
  const h = JSON.parse(readFileSync(path, 'utf8')) as HParamsFile;
  if (h.status !== 'prior' && h.status !== 'searched') throw new Error(`${path}: status must be 'prior' or 'searched', got '${String(h.status)}'`);
  for (const k of HPARAM_KEYS)
    if (typeof h[k] !== 'number' || !Number.isFinite(h[k])) throw new Error(`${path}: expected a finite number for '${k}' but received ${JSON.stringify(h[k])}`);
  return h;
}

/**
 * The two budgets. Sizes and steps are set by what tfjs's pure-JS CPU backend can do
 * on 2 shared cores (a student step ≈ 0.1 s, a teacher step ≈ 0.2 s of CPU, an
 * on-policy step 2-4x a student step); the KD hyper-parameters come from hparams.json.
 * Addition only by default: see README.md ("Why addition only").
 */
export function configFor(mode: 'quick' | 'full', h: HParams): Omit<ExperimentConfig, 'log'> {
  const common = {
    seed: 1,
    digits: 3,
    ops: '+' as Ops,
    batch: 32,
    teacherLr: 1e-2,
    studentLr: 1e-2,
    weightDecay: 1,
    rolloutTemperature: 1,
    storeDtype: 'f16' as const,
    methods: ALL_METHODS,
    evalChunk: 250,
    teacher: { dModel: 48, nLayers: 2, nHeads: 4, dFF: 96 },
    student: { dModel: 32, nLayers: 2, nHeads: 2, dFF: 64 },
    ...Object.fromEntries(HPARAM_KEYS.map((k) => [k, h[k]])) as unknown as HParams,
  };
  if (mode === 'quick') return { ...common, mode, nTrain: 1000, nVal: 200, nTest: 200, teacherSteps: 120, teacherTarget: 0.9, teacherAttempts: 1, studentSteps: 30 };
  return { ...common, mode, nTrain: 4000, nVal: 500, nTest: 1000, teacherSteps: 1000, teacherTarget: 0.9, teacherAttempts: 3, studentSteps: 400 };
}

export const FULL_SEEDS = [1, 2, 3];
/**
 * The search's teacher and validation split: seed 2's training pool (its teacher passed
 * the 90 % gate at the first attempt in the earlier runs, seed 1's at the second, so the
 * search costs one teacher less). The held-out set is never read by the search.
 */
export const SEARCH_SEED = 2;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      search: { type: 'boolean', default: false },
      seeds: { type: 'string' },
      seed: { type: 'string' },
      steps: { type: 'string' },
      'teacher-steps': { type: 'string' },
      methods: { type: 'string' },
      ops: { type: 'string' },
      digits: { type: 'string' },
      hparams: { type: 'string' },
      temperature: { type: 'string' },
      'hard-weight': { type: 'string' },
      'soft-weight': { type: 'string' },
      lambda: { type: 'string' },
      'warm-fraction': { type: 'string' },
      'guide-top-k': { type: 'string' },
      'eval-on': { type: 'string' },
      'teacher-dir': { type: 'string' },
      out: { type: 'string' },
    },
  });
  const mode = values.quick ? 'quick' : 'full';
  const hfile = readHParams(values.hparams ?? HPARAMS_PATH);
  const cfg = configFor(mode, hfile);
  const int = (name: string, v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} expects a non-negative integer, got '${v}'`);
    return n;
  };
  const num = (name: string, v: string, ok: (x: number) => boolean, what: string): number => {
    const x = Number(v);
    if (!(Number.isFinite(x) && ok(x))) throw new Error(`--${name} expects ${what}, got '${v}'`);
    return x;
  };
  const overrides: string[] = [];
  const override = (flag: string, key: keyof HParams, ok: (x: number) => boolean, what: string) => {
    const v = (values as Record<string, string | boolean | undefined>)[flag];
    if (typeof v !== 'string') return;
    cfg[key] = num(flag, v, ok, what);
    overrides.push(`${key} = ${cfg[key]}`);
  };
  override('temperature', 'temperature', (x) => x > 0, 'a number > 0');
  override('hard-weight', 'hardWeight', (x) => x > 0, 'a number > 0');
  override('soft-weight', 'softWeight', (x) => x > 0, 'a number > 0');
  override('lambda', 'lambda', (x) => x >= 0 && x <= 1, 'a number in [0, 1]');
  override('warm-fraction', 'warmFraction', (x) => x >= 0 && x < 1, 'a number in [0, 1)');
  override('guide-top-k', 'guideTopK', (x) => Number.isInteger(x) && x >= 1, 'an integer ≥ 1');
  if (values['eval-on'] !== undefined) {
    if (values['eval-on'] !== 'val' && values['eval-on'] !== 'test') throw new Error(`--eval-on expects 'val' or 'test', got '${values['eval-on']}'`);
    if (values['eval-on'] === 'val' && !values.out) throw new Error('--eval-on val is for development runs: pass --out DIR too');
    cfg.evalOn = values['eval-on'];
  }
  if (values['teacher-dir'] !== undefined) cfg.teacherDir = values['teacher-dir'];
  if (values.steps !== undefined) cfg.studentSteps = int('steps', values.steps);
  if (values['teacher-steps'] !== undefined) cfg.teacherSteps = int('teacher-steps', values['teacher-steps']);
  if (values.ops !== undefined) {
    if (!['+', '-', '+-'].includes(values.ops)) throw new Error(`--ops expects '+', '-' or '+-', got '${values.ops}'`);
    cfg.ops = values.ops as Ops;
  }
  if (values.digits !== undefined) cfg.digits = Math.max(2, int('digits', values.digits));
  if (values.methods !== undefined) {
    const ms = values.methods.split(',').map((m) => m.trim());
    for (const m of ms) if (!(ALL_METHODS as readonly string[]).includes(m)) throw new Error(`unknown method '${m}'; known: ${ALL_METHODS.join(', ')}`);
    cfg.methods = ms as MethodId[];
  }
  const seedList = values.seeds ?? values.seed;
  const seeds = seedList !== undefined ? seedList.split(',').map((x) => int('seeds', x.trim())) : mode === 'quick' ? [1] : FULL_SEEDS;
  const command = `npm run example:arithmetic${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`;
  console.log(`${command}\n`);
  const dir = values.out ?? fileURLToPath(new URL('./results', import.meta.url));
  mkdirSync(dir, { recursive: true });

  if (values.search) {
    if (overrides.length) throw new Error(`--search chooses the hyper-parameters itself; drop ${overrides.join(', ')}`);
    const h = await runSearch({ ...cfg, seed: seedList !== undefined ? seeds[0]! : SEARCH_SEED, log: (l) => console.log(l) }, command, sourceRevision());
    const path = values.out ? join(dir, 'hparams.json') : (values.hparams ?? HPARAMS_PATH);
    writeFileSync(path, JSON.stringify(h, null, 2) + '\n');
    console.log(`written: ${path}`);
    return;
  }
  // The committed full run must use hyper-parameters chosen on the validation split.
  if (mode === 'full' && !values.out && (hfile.status !== 'searched' || overrides.length))
    throw new Error(
      `the full run writes results/ and needs hparams.json chosen on the validation split (status '${hfile.status}'${overrides.length ? `, overrides ${overrides.join(', ')}` : ''}): ` +
        `run 'npm run example:arithmetic -- --search' first, or pass --out DIR for a development run`,
    );
  const hparamsSource = `${values.hparams ?? 'hparams.json'} (status '${hfile.status}')${overrides.length ? `, overridden: ${overrides.join(', ')}` : ''}`;
  const runs: ExperimentResult[] = [];
  const source = sourceRevision();
  for (const seed of seeds) {
    const result = await runExperiment({ ...cfg, seed, log: (l) => console.log(`[seed ${seed}] ${l}`) });
    runs.push(result);
    const table = markdownTable(result, command) + `\nHyper-parameters: ${hparamsSource}. Source: ${source}.\n`;
    console.log('\n' + table);
    // seed{N}: not full-seed{N}, which holds the earlier runs (see README.md).
    const base = mode === 'full' ? `seed${seed}` : `quick${seeds.length > 1 ? `-seed${seed}` : ''}`;
    writeFileSync(join(dir, `${base}.md`), table);
    writeFileSync(join(dir, `${base}.json`), JSON.stringify({ command, source, hparams: hparamsSource, ...result }, null, 2) + '\n');
    console.log(`written: ${join(dir, `${base}.md`)} and ${base}.json`);
  }
  const summary = summarize(runs, { command, source, hparams: { source: hparamsSource, ...Object.fromEntries(HPARAM_KEYS.map((k) => [k, cfg[k]])) } });
  const sname = mode === 'quick' ? 'quick-summary' : 'summary';
  writeFileSync(join(dir, `${sname}.json`), JSON.stringify(summary, null, 2) + '\n');
  writeFileSync(join(dir, `${sname}.md`), summaryTable(summary));
  console.log('\n' + summaryTable(summary));
  console.log(`written: ${join(dir, `${sname}.json`)} and ${sname}.md`);
}

/** The git commit the run came from (so a quoted table names its code), or why not known. */
export function sourceRevision(): string {
  const git = (args: string[]) => execFileSync('git', args, { cwd: fileURLToPath(new URL('.', import.meta.url)), encoding: 'utf8' }).trim();
  try {
    const dirty = git(['status', '--porcelain', '--untracked-files=no', '--', ':/', ':(top,exclude)examples/arithmetic/results']) !== ''; // outputs don't count
    return `commit ${git(['rev-parse', 'HEAD'])}${dirty ? ' plus uncommitted changes' : ''}`;
  } catch {
    return 'unknown (not a git checkout)';
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
