/**
 * Long-mode differential fuzzing of every op against its float64 reference.
 *
 *   npm run fuzz -- --runs 100000                  100000 cases over all op families
 *   npm run fuzz -- --op sparseKlDiv --runs 5000   one family (comma-separate several)
 *   npm run fuzz -- --seed 42                      a given seed (default: random, printed)
 *   npm run fuzz -- --op jsd --seed 42 --path 7:1:0   replay a printed counterexample
 *   npm run fuzz -- --jobs 2                       families in parallel processes
 *   npm run fuzz -- --max-elems 1048576            larger rows × V per case (default 2^18)
 *   npm run fuzz -- --strict                       no relaxation for known issues
 *
 * A failure is shrunk to a minimal case and printed as a ready-to-paste vitest test;
 * the exit status is 1 if any family failed. The CI-sized run is test/fuzz/*.fuzz.test.ts.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FAMILIES, type Family } from '../test/fuzz/cases.js';
import { fuzzFamily, runsPerFamily, type FamilyResult } from '../test/fuzz/runner.js';

interface Args {
  runs: number;
  seed: number;
  ops: Family[];
  path?: string;
  jobs: number;
  child: boolean;
}

function usage(msg: string): never {
  console.error(`fuzz: ${msg}\nusage: npm run fuzz -- [--runs N] [--seed S] [--op ${FAMILIES.join('|')}[,...]] [--path P] [--jobs J] [--max-elems E] [--strict]`);
  process.exit(2);
}

function parse(argv: string[]): Args {
  const a: Args = { runs: 2000, seed: Math.floor(Math.random() * 2 ** 31), ops: [...FAMILIES], jobs: 1, child: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) usage(`${k} needs a value`);
      return v;
    };
    const int = (v: string, min: number): number => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < min) usage(`${k} must be an integer >= ${min}, got '${v}'`);
      return n;
    };
    if (k === '--runs') a.runs = int(val(), 1);
    else if (k === '--seed') a.seed = int(val(), -(2 ** 31));
    else if (k === '--op') {
      const ops = val().split(',');
      for (const o of ops) if (!(FAMILIES as readonly string[]).includes(o)) usage(`unknown op '${o}'`);
      a.ops = ops as Family[];
    } else if (k === '--path') a.path = val();
    else if (k === '--jobs') a.jobs = int(val(), 1);
    else if (k === '--max-elems') process.env.KD_FUZZ_MAX_ELEMS = String(int(val(), 1));
    else if (k === '--strict') process.env.KD_FUZZ_STRICT = '1';
    else if (k === '--child') a.child = true;
    else if (k === '--help' || k === '-h') usage('help');
    else usage(`unknown argument '${k}'`);
  }
  if (a.path && a.ops.length !== 1) usage('--path replays one family: give --op too');
  return a;
}

function runChild(family: Family, runs: number, seed: number): Promise<FamilyResult> {
  return new Promise((resolve, reject) => {
    const script = fileURLToPath(import.meta.url);
    const p = spawn(process.execPath, [...process.execArgv, script, '--child', '--op', family, '--runs', String(runs), '--seed', String(seed)], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: process.env,
    });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('{"family"'));
      if (!line) return reject(new Error(`fuzz child for ${family} exited with ${code} and no result:\n${out}`));
      resolve(JSON.parse(line) as FamilyResult);
    });
  });
}

async function main(): Promise<void> {
  const a = parse(process.argv.slice(2));
  const per = a.path ? a.runs : a.ops.length === 1 ? a.runs : runsPerFamily(a.runs, a.ops);
  if (a.child) {
    const r = await fuzzFamily(a.ops[0]!, per, a.seed);
    process.stdout.write(JSON.stringify(r) + '\n');
    return;
  }
  console.log(`fuzz: ${per * a.ops.length} cases (${per} per family: ${a.ops.join(', ')}), seed ${a.seed}, ${a.jobs} job(s)`);
  const t0 = Date.now();
  const results: FamilyResult[] = [];
  const report = (r: FamilyResult): void => {
    results.push(r);
    console.log(`  ${r.family.padEnd(17)} ${String(r.runs).padStart(7)} cases  ${r.failed ? 'FAILED' : 'ok    '}  ${(r.ms / 1000).toFixed(1)} s`);
    if (r.report) console.log('\n' + r.report + '\n');
  };
  if (a.jobs <= 1 || a.path) {
    for (const f of a.ops) report(await fuzzFamily(f, per, a.seed, { path: a.path }));
  } else {
    const queue = [...a.ops];
    await Promise.all(
      Array.from({ length: Math.min(a.jobs, queue.length) }, async () => {
        for (let f = queue.shift(); f; f = queue.shift()) report(await runChild(f, per, a.seed));
      }),
    );
  }
  const cases = results.reduce((s, r) => s + r.runs, 0);
  const failed = results.filter((r) => r.failed).map((r) => r.family);
  console.log(`fuzz: ${cases} cases in ${((Date.now() - t0) / 1000).toFixed(0)} s, seed ${a.seed}: ${failed.length ? `FAILED (${failed.join(', ')})` : 'all agree with the references'}`);
  process.exitCode = failed.length ? 1 : 0;
}

await main();
