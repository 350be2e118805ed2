/**
 * Knowledge distillation on multi-digit arithmetic with tfjs and kd-kernels.
 *
 *   npm run example:arithmetic -- --quick            # < 3 min on 2 cores
 *   npm run example:arithmetic                       # the full run (~10-15 min)
 *   npm run example:arithmetic -- --seed 2 --steps 400 --methods ce,fkl,onpolicy
 *   flags: --quick --seed N --steps N (student steps) --teacher-steps N
 *          --methods a,b,... --ops + | - | +- --digits D --temperature T
 *          --hard-weight W --soft-weight W (KD methods' CE and KD weights) --out DIR
 *
 * Prints the results table and writes it to examples/arithmetic/results/{quick,full}.md
 * (and .json). See README.md next to this file.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Ops } from './data.js';
import { ALL_METHODS, runExperiment, type ExperimentConfig, type MethodId } from './experiment.js';
import { markdownTable } from './report.js';

/**
 * The two budgets. Sizes and steps are set by what tfjs's pure-JS CPU backend can do
 * on 2 shared cores (a student step ≈ 0.1 s, a teacher step ≈ 0.2 s of CPU); the
 * learning rate, temperature and loss weights are fixed a priori (not tuned on the
 * held-out set). Addition only by default: see README.md ("Why addition only").
 */
export function configFor(mode: 'quick' | 'full'): Omit<ExperimentConfig, 'log'> {
  const common = {
    seed: 1,
    digits: 3,
    ops: '+' as Ops,
    batch: 32,
    teacherLr: 1e-2,
    studentLr: 1e-2,
    weightDecay: 1,
    temperature: 2,
    hardWeight: 0.5,
    softWeight: 0.5,
    lambda: 0.5,
    beta: 0.5,
    rolloutTemperature: 1,
    storeDtype: 'f16' as const,
    methods: ALL_METHODS,
    evalChunk: 250,
    teacher: { dModel: 48, nLayers: 2, nHeads: 4, dFF: 96 },
    student: { dModel: 32, nLayers: 2, nHeads: 2, dFF: 64 },
  };
  if (mode === 'quick') return { ...common, mode, nTrain: 1000, nTest: 200, teacherSteps: 120, teacherTarget: 0.9, teacherAttempts: 1, studentSteps: 30 };
  return { ...common, mode, nTrain: 4000, nTest: 1000, teacherSteps: 1000, teacherTarget: 0.9, teacherAttempts: 3, studentSteps: 400 };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      seed: { type: 'string' },
      steps: { type: 'string' },
      'teacher-steps': { type: 'string' },
      methods: { type: 'string' },
      ops: { type: 'string' },
      temperature: { type: 'string' },
      'hard-weight': { type: 'string' },
      'soft-weight': { type: 'string' },
      digits: { type: 'string' },
      out: { type: 'string' },
    },
  });
  const mode = values.quick ? 'quick' : 'full';
  const cfg = configFor(mode);
  const int = (name: string, v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} expects a non-negative integer, got '${v}'`);
    return n;
  };
  if (values.seed !== undefined) cfg.seed = int('seed', values.seed);
  if (values.steps !== undefined) cfg.studentSteps = int('steps', values.steps);
  if (values['teacher-steps'] !== undefined) cfg.teacherSteps = int('teacher-steps', values['teacher-steps']);
  for (const [flag, key] of [['hard-weight', 'hardWeight'], ['soft-weight', 'softWeight']] as const) {
    const v = values[flag];
    if (v === undefined) continue;
    const w = Number(v);
    if (!(w > 0 && Number.isFinite(w))) throw new Error(`--${flag} expects a number > 0, got '${v}'`);
    cfg[key] = w;
  }
  if (values.temperature !== undefined) {
    const T = Number(values.temperature);
    if (!(T > 0 && Number.isFinite(T))) throw new Error(`--temperature expects a number > 0, got '${values.temperature}'`);
    cfg.temperature = T;
  }
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
  const command = `npm run example:arithmetic${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`;
  console.log(`${command}\n`);
  const result = await runExperiment({ ...cfg, log: (l) => console.log(l) });
  const table = markdownTable(result, command) + `\nSource: ${sourceRevision()}.\n`;
  console.log('\n' + table);
  const dir = values.out ?? fileURLToPath(new URL('./results', import.meta.url));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${mode}.md`), table);
  writeFileSync(join(dir, `${mode}.json`), JSON.stringify({ command, source: sourceRevision(), ...result }, null, 2) + '\n');
  console.log(`written: ${join(dir, `${mode}.md`)} and ${mode}.json`);
}

/** The git commit the run came from (so a quoted table names its code), or why not known. */
function sourceRevision(): string {
  const git = (args: string[]) => execFileSync('git', args, { cwd: fileURLToPath(new URL('.', import.meta.url)), encoding: 'utf8' }).trim();
  try {
    const dirty = git(['status', '--porcelain', '--untracked-files=no', '--', ':/', ':(top,exclude)examples/arithmetic/results']) !== ''; // outputs don't count
    return `commit ${git(['rev-parse', 'HEAD'])}${dirty ? ' plus uncommitted changes' : ''}`;
  } catch {
    return 'unknown (not a git checkout)';
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
