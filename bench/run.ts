/**
 * `npm run bench [-- options]`: the kd-kernels benchmark. Every op suite
 * (bench/<op>.bench.ts) over shapes, dtypes, CPU threads (1 and all) and CUDA when
 * available, side by side with the memory floor (native triad over the same bytes,
 * measured around each case), a hand-written JS loop and tfjs (CPU backend, autograd),
 * and PyTorch on CUDA machines that have it. Prints a table, writes JSON and an SVG.
 *
 *   npm run bench -- --quick                 # < 1 min on 2 cores: 512×32000, all ops
 *   npm run bench                            # the full grid (~10 min on 2 cores)
 *   npm run bench -- --op jsd,forward-kl --dtype bf16 --threads 1,all --shape 128x128256
 *
 * Run with --help for every option.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import * as kd from '../lib/index.js';
import { JS_CONTENDERS, type JsInputs } from './contenders/js_loop.js';
import { TOPK_K, TOPK_ORDERINGS } from './topk.bench.js';
import { loadTfjs, makeTfjsCase, TFJS_LOSSES, tfjsVersion, type Tf } from './contenders/tfjs.js';
import {
  ROOT, FULL_BUDGET, QUICK_BUDGET, Progress, collectGarbage, contendersTable, disposeCaseData, floorStats, fmtDuration, fmtMs, fmtNum,
  fmtRate, fmtSpeedup, groupBytes, machineInfo, makeCaseData, measure, renderSvg, resultsTable, shapeStr, sliceCaseData, statsOf, timeOnce,
  pairedRatio, triadFor, triadSamples, type BenchDevice, type BenchDtype, type Budget, type CaseData, type CaseResult, type ContenderName,
  type ContenderResult, type OpSpec, type Shape, type Stats,
} from './harness.js';

const HELP = `kd-kernels benchmark (npm run bench -- [options])

  --quick              < 1 min on 2 cores: every op at 512×32000 f32 on all threads, plus
                       forward KL on 1 thread and in bf16; JS loop and tfjs contenders
                       (tfjs at a reduced N, normalised per element)
  --op <names>         ops, comma-separated: forward-kl, reverse-kl, kl (both), jsd, tvd,
                       skew-kl, distillation-loss (both its cases), distillation-loss-jsd
                       (½ CE + ½ JSD alone), token-stats, topk, sample-teacher,
                       sparse-kl-div, and the call paths (bench/call_path.bench.ts):
                       forward-kl-default, forward-kl-default-held,
                       forward-kl-default-dispose, jsd-default, tfjs-kd-loss-step
                       (file names such as kl_div also work)
  --device <list>      cpu, cuda (default: cpu, and cuda when available); or webgpu alone:
                       the WGSL kernels vs tfjs-webgpu (tf ops + autograd) and the copy
                       floor, on one GPUDevice (bench/webgpu.ts; --shape, --op forward-kl,jsd)
  --dtype <list>       f32, bf16 (default: both; quick: f32, bf16 for forward KL)
  --threads <list>     CPU threads, numbers or 'all' (default: 1,all; quick: all, 1 for forward KL)
  --shape <list>       NxV shapes, e.g. 512x32000,128x151936 (default: the full grid
                       N ∈ {1,128,512,4096} × V ∈ {32000,128256,151936}, N = 4096 for
                       forward KL only, N = 1 on all threads only, bf16 on 1 thread
                       for forward KL only, and 256x151936 for topk, f32 on all threads;
                       shapes that don't fit in memory are skipped)
  --contenders <list>  js, tfjs, torch, none (default: js,tfjs, and torch on CUDA when
                       python3 has torch with CUDA; on the CPU, torch eager for forward
                       KL and JSD f32 and for topk (all its input orderings) on all
                       threads when KD_TORCH_PYTHON, /usr/bin/python3 or python3 has torch)
  --time <ms>          measured time budget per case (default 250; quick 120)
  --seed <n>           data seed (default 1; recorded in the JSON)
  --out <dir>          where JSON and SVG go (default bench/results/)
  --json-only          print only the JSON document on stdout (no table, no progress)
  --list               print the plan (cases, shapes, estimate) and exit
  --help

Columns: ms = median (p10–p90) of one call; GB/s = bytes an ideal fused pass moves
(each input read once, each output written once) / median; elem/s = N·V / median;
floor = the native triad over the same bytes, same dtype, same threads, measured right
before and after the case (* = it drifted > 15% during the case: noisy machine);
"of floor" = floor time / achieved time; "vs X" = X's time per element / the library's
("@N×V": X ran at that smaller shape). Contenders are single-threaded JS and f32 only.`;

// ---------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    op: { type: 'string', multiple: true },
    device: { type: 'string' },
    dtype: { type: 'string' },
    threads: { type: 'string' },
    shape: { type: 'string', multiple: true },
    contenders: { type: 'string' },
    time: { type: 'string' },
    seed: { type: 'string' },
    out: { type: 'string' },
    'json-only': { type: 'boolean', default: false },
    list: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  allowPositionals: false,
});

if (args.help) {
  console.log(HELP);
  process.exit(0);
}

function fail(msg: string): never {
  console.error(`bench: ${msg}\n(npm run bench -- --help)`);
  process.exit(2);
}

const list = (s: string | undefined): string[] | undefined =>
  s === undefined ? undefined : s.split(',').map((x) => x.trim()).filter(Boolean);

const quick = args.quick!;
const jsonOnly = args['json-only']!;
const seed = args.seed === undefined ? 1 : Number(args.seed);
if (!Number.isInteger(seed)) fail(`--seed must be an integer, got ${args.seed}`);
const outDir = resolve(args.out ?? join(ROOT, 'bench/results'));
const baseBudget: Budget = { ...(quick ? QUICK_BUDGET : FULL_BUDGET) };
if (args.time !== undefined) {
  const t = Number(args.time);
  if (!(t >= 0)) fail(`--time must be a number of milliseconds >= 0, got ${args.time}`);
  baseBudget.time = t;
}

const backends = kd.backends();
const allThreads = backends.cpu.threads;

// --device webgpu: the WGSL kernels against tfjs-webgpu, in their own run (bench/webgpu.ts).
if (list(args.device)?.includes('webgpu')) {
  if (list(args.device)!.length > 1) fail('--device webgpu runs on its own (bench/webgpu.ts); run cpu / cuda separately');
  const { runWebGPUBench } = await import('./webgpu.js');
  await runWebGPUBench({
    quick: args.quick!,
    shapes: args.shape ? list(args.shape.join(',')) : undefined,
    ops: args.op ? list(args.op.join(',')) : undefined,
    timeMs: args.time === undefined ? undefined : Number(args.time),
    out: args.out,
  });
  process.exit(0);
}

const devices: BenchDevice[] = (() => {
  const d = list(args.device);
  if (!d) return backends.cuda.available ? ['cpu', 'cuda'] : ['cpu'];
  for (const x of d) if (x !== 'cpu' && x !== 'cuda') fail(`--device: expected cpu or cuda, got ${x}`);
  return d as BenchDevice[];
})();
const userDtypes = list(args.dtype) as BenchDtype[] | undefined;
for (const x of userDtypes ?? []) if (x !== 'f32' && x !== 'bf16') fail(`--dtype: expected f32 or bf16, got ${x}`);
const userThreads = list(args.threads)?.map((x) => {
  const n = x === 'all' ? allThreads : Number(x);
  if (!Number.isInteger(n) || n < 1) fail(`--threads: expected positive integers or 'all', got ${x}`);
  return n;
});
const userShapes = args.shape
  ?.flatMap((s) => list(s)!)
  .map((s): Shape => {
    const m = /^(\d+)[x×*](\d+)$/i.exec(s);
    if (!m) fail(`--shape: expected NxV (e.g. 512x32000), got ${s}`);
    return { N: Number(m[1]), V: Number(m[2]) };
  });
const contenderKinds = new Set(list(args.contenders) ?? ['js', 'tfjs', 'torch']);
for (const c of contenderKinds) if (!['js', 'tfjs', 'torch', 'none'].includes(c)) fail(`--contenders: expected js, tfjs, torch or none, got ${c}`);
if (contenderKinds.has('none')) contenderKinds.clear();

// ---------------------------------------------------------------------------------
// Suites
// ---------------------------------------------------------------------------------

const ORDER = [
  'forward-kl', 'reverse-kl', 'jsd', 'tvd', 'skew-kl', 'distillation-loss', 'distillation-loss-jsd', 'token-stats', 'topk', 'topk-ascending', 'topk-descending', 'topk-zipf', 'topk-equal', 'sample-teacher', 'sparse-kl-div',
  'forward-kl-default', 'forward-kl-default-held', 'forward-kl-default-dispose', 'jsd-default', 'tfjs-kd-loss-step',
];
const allOps: OpSpec[] = [];
for (const f of readdirSync(join(ROOT, 'bench')).filter((f) => f.endsWith('.bench.ts')).sort()) {
  const mod = (await import(pathToFileURL(join(ROOT, 'bench', f)).href)) as { ops?: OpSpec[] };
  allOps.push(...(mod.ops ?? []));
}
allOps.sort((a, b) => (ORDER.indexOf(a.name) + 1 || 99) - (ORDER.indexOf(b.name) + 1 || 99));

const norm = (s: string) => s.toLowerCase().replace(/_/g, '-');
let ops = allOps;
const opFilter = args.op?.flatMap((s) => list(s)!).map(norm);
if (opFilter) {
  for (const f of opFilter) {
    if (!allOps.some((o) => [o.name, o.suite, ...(o.aliases ?? [])].map(norm).includes(f)))
      fail(`--op: unknown op '${f}'; known: ${allOps.map((o) => o.name).join(', ')}`);
  }
  ops = allOps.filter((o) => [o.name, o.suite, ...(o.aliases ?? [])].map(norm).some((n) => opFilter.includes(n)));
}

const notes: string[] = [];
const unavailable = new Map<string, string>();
for (const o of ops) {
  const why = o.unavailable?.();
  if (why) unavailable.set(o.name, why);
}

// ---------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------

const FULL_N = [1, 128, 512, 4096];
const FULL_V = [32000, 128256, 151936];
const CONTENDER_ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

interface PlannedCase {
  op: OpSpec;
  threads: number | null;
}
interface PlannedContender {
  kind: 'js-loop' | 'tfjs';
  op: OpSpec;
  rows: number;
}
interface Group {
  device: BenchDevice;
  dtype: BenchDtype;
  shape: Shape;
  cases: PlannedCase[];
  contenders: PlannedContender[];
}

/** Which (op, shape, dtype, threads) the mode runs; explicit flags replace the mode's choice for that dimension. */
function included(op: OpSpec, shape: Shape, dtype: BenchDtype, threads: number | null): boolean {
  if (!op.dtypes.includes(dtype)) return false;
  if (op.allThreadsOnly && threads !== null && threads !== allThreads) return false;
  const fkl = op.name === 'forward-kl';
  if (quick) {
    const dOk = userDtypes ? true : dtype === 'f32' || fkl;
    const tOk = userThreads || threads === null ? true : threads === allThreads || fkl;
    const both = userDtypes || userThreads || threads === null ? true : !(dtype === 'bf16' && threads !== allThreads);
    return dOk && tOk && both;
  }
  if (!userShapes && shape.N === 4096 && !fkl) return false;
  // 256×151936: the top-k shape of the project's targets (its orderings and torch.topk), f32 on all threads.
  if (!userShapes && shape.N === 256 && (op.suite !== 'topk' || dtype !== 'f32' || (threads !== null && threads !== allThreads))) return false;
  // bf16 on one thread tells little that f32 on one thread and bf16 on all don't: forward KL only.
  if (!userDtypes && !userThreads && dtype === 'bf16' && threads !== null && threads !== allThreads && !fkl) return false;
  // One row is one thread's work whatever the pool size (rows are split over threads).
  if (!userThreads && shape.N === 1 && threads !== null && threads !== allThreads) return false;
  return true;
}

/** Rows a contender runs at for a case of this shape: all of them when N·V ≤ limit, else fewer. */
function contenderRows(shape: Shape, limit: number): number {
  if (shape.N * shape.V <= limit) return shape.N;
  let best = 1;
  for (const r of CONTENDER_ROWS) if (r <= shape.N && r * shape.V <= limit) best = r;
  return best;
}

function jsLimit(op: OpSpec, shape: Shape): number {
  // Per-element cost of a JS loop hardly depends on N: beyond ~4 M elements a smaller N
  // (normalised per element) says the same; forward KL at 512×32000 runs in full.
  if (op.name === 'forward-kl' && shape.V <= 32000) return 512 * 32000;
  return quick ? 16 * 32000 : 128 * 32000;
}
function tfjsLimit(op: OpSpec, shape: Shape): number {
  if (quick) return op.name === 'forward-kl' ? 8 * 32000 : 2 * 32000;
  // The headline figure: forward KL at 512×32000 itself (10-40 s a call on 2 cores);
  // elsewhere ~0.5 M elements (tfjs's cost per element hardly depends on N), normalised.
  return op.name === 'forward-kl' && shape.V <= 32000 && shape.N >= 512 ? 512 * 32000 : 650_000;
}

const shapes: Shape[] = userShapes ?? (quick ? [{ N: 512, V: 32000 }] : [...FULL_V.flatMap((V) => FULL_N.map((N) => ({ N, V }))), { N: 256, V: 151936 }]);
const dtypes: BenchDtype[] = userDtypes ?? ['f32', 'bf16'];
const threadList = (userThreads ?? [1, allThreads]).filter((x, i, a) => a.indexOf(x) === i).sort((a, b) => a - b);
const runnable = ops.filter((o) => !unavailable.has(o.name));

const groups: Group[] = [];
const contenderKeys = new Set<string>();
for (const device of devices) {
  if (device === 'cuda' && !backends.cuda.available) {
    notes.push(`cuda: skipped: ${backends.cuda.reason ?? 'not available'}`);
    continue;
  }
  for (const dtype of dtypes) {
    for (const shape of shapes) {
      const cases: PlannedCase[] = [];
      const ths = device === 'cpu' ? threadList : [null];
      for (const threads of ths) for (const op of runnable) if (included(op, shape, dtype, threads)) cases.push({ op, threads });
      if (cases.length === 0) continue;
      const contenders: PlannedContender[] = [];
      if (device === 'cpu' && dtype === 'f32') {
        for (const op of [...new Set(cases.map((c) => c.op))]) {
          const plan = (kind: 'js-loop' | 'tfjs', limit: number) => {
            const rows = contenderRows(shape, limit);
            const key = `${kind}|${op.name}|${rows}|${shape.V}`;
            if (contenderKeys.has(key)) return;
            contenderKeys.add(key);
            contenders.push({ kind, op, rows });
          };
          if (contenderKinds.has('js') && op.contenders?.js && JS_CONTENDERS[op.contenders.js]) plan('js-loop', jsLimit(op, shape));
          if (contenderKinds.has('tfjs') && op.contenders?.tfjs && TFJS_LOSSES[op.contenders.tfjs]) plan('tfjs', tfjsLimit(op, shape));
        }
      }
      groups.push({ device, dtype, shape, cases, contenders });
    }
  }
}

// ---------------------------------------------------------------------------------
// Estimate (for --list, the start line and the ETA): a short probe of this machine
// ---------------------------------------------------------------------------------

interface Probe {
  libNsPerElem: number;
  triadGBps: number;
  jsNsPerElem: number;
  tfjsNsPerElem: number;
}

function probeMachine(): Probe {
  const d = makeCaseData('cpu', 'f32', { N: 32, V: 32000 }, 99);
  kd.setThreads(allThreads);
  const call = () => kd.klDiv(d.student, d.teacher, { grad: d.grad });
  call();
  const lib = Math.min(...[0, 1, 2].map(() => timeOnce(call).ms));
  const tri = triadFor(d, 3 * 4 * 32 * 32000);
  tri.run();
  const triMs = Math.min(...[0, 1, 2].map(() => timeOnce(tri.run).ms));
  const x: JsInputs = { s: d.host.student as Float32Array, t: d.host.teacher as Float32Array, N: 4, V: 32000 };
  const g = d.grad.toArray() as Float32Array;
  JS_CONTENDERS['forward-kl']!(x, g);
  const js = timeOnce(() => JS_CONTENDERS['forward-kl']!(x, g)).ms;
  disposeCaseData(d);
  return { libNsPerElem: (lib * 1e6) / (32 * 32000), triadGBps: tri.bytes / (triMs * 1e6), jsNsPerElem: (js * 1e6) / (4 * 32000), tfjsNsPerElem: 800 };
}

/** Estimated seconds of one measurement whose call takes `t` ms (mirrors measure()). */
function measurementS(t: number, budget: Budget): number {
  const slow = t > 1000;
  const medium = t > 150;
  const iters = t > 5000 ? 2 : slow ? Math.min(3, budget.slowIterations) : medium ? budget.slowIterations : budget.minIterations;
  const warm = slow ? 0 : medium ? t : Math.max(budget.warmupIterations * t, budget.warmupTime);
  const run = slow || medium ? iters * t : Math.max(iters * t, budget.time);
  return (t + warm + run) / 1000;
}

/** Cost factors relative to forward KL (rough; the ETA corrects itself as cases finish). */
const OP_FACTOR: Record<string, number> = { 'forward-kl': 1, 'reverse-kl': 1.2, jsd: 1.8, tvd: 1.2, 'skew-kl': 1.8, 'distillation-loss': 1.1, 'distillation-loss-jsd': 1.9, 'token-stats': 0.9 };

function estimateCase(g: Group, c: PlannedCase, p: Probe): number {
  const el = g.shape.N * g.shape.V;
  const scale = (g.dtype === 'bf16' ? 0.9 : 1) * (c.threads === null ? 0.05 : allThreads / c.threads);
  const t = (el * p.libNsPerElem * (OP_FACTOR[c.op.name] ?? 1) * scale) / 1e6;
  const bytes = c.op.traffic(g.shape, g.dtype);
  const tri = (bytes.read + bytes.written) / (p.triadGBps * 1e6);
  const triBudget: Budget = { time: baseBudget.time / 3, minIterations: 3, slowIterations: 3, warmupTime: baseBudget.warmupTime / 2, warmupIterations: 1 };
  return measurementS(t, baseBudget) + 2 * measurementS(tri, triBudget);
}
function estimateContender(g: Group, c: PlannedContender, p: Probe): number {
  const el = c.rows * g.shape.V;
  const t = (el * (c.kind === 'js-loop' ? p.jsNsPerElem : p.tfjsNsPerElem) * (OP_FACTOR[c.op.name] ?? 1)) / 1e6;
  return measurementS(t, baseBudget) + t / 1000;
}
function estimateGroup(g: Group): number {
  return (g.shape.N * g.shape.V * 2 * 1.5) / 1e9; // data generation, ~1.5 ns per element
}

const probe = probeMachine();
const estimates = groups.map((g) => ({
  data: estimateGroup(g),
  cases: g.cases.map((c) => estimateCase(g, c, probe)),
  contenders: g.contenders.map((c) => estimateContender(g, c, probe)),
}));
const estimatedTotalS =
  estimates.reduce((a, e) => a + e.data + e.cases.reduce((x, y) => x + y, 0) + e.contenders.reduce((x, y) => x + y, 0), 0) +
  (groups.some((g) => g.contenders.some((c) => c.kind === 'tfjs')) ? 2 : 0);
const totalSteps = groups.reduce((a, g) => a + g.cases.length + g.contenders.length, 0);

const modeName = quick ? 'quick' : userShapes || opFilter || userDtypes || userThreads ? 'custom' : 'full';
const planLine =
  `${modeName} mode: ${groups.reduce((a, g) => a + g.cases.length, 0)} library cases over ${new Set(groups.map((g) => shapeStr(g.shape))).size} shapes ` +
  `(${devices.join(', ')}; ${dtypes.join(', ')}; threads ${threadList.join(', ')}), ${groups.reduce((a, g) => a + g.contenders.length, 0)} contender runs; ` +
  `estimated ~${fmtDuration(estimatedTotalS)} on this machine`;

if (args.list) {
  console.log(planLine);
  for (const [i, g] of groups.entries()) {
    console.log(`  ${g.device} ${g.dtype} ${shapeStr(g.shape)} (~${fmtDuration(estimates[i]!.cases.reduce((a, b) => a + b, 0))}): ` +
      g.cases.map((c) => `${c.op.name}${c.threads === null ? '' : `@${c.threads}t`}`).join(' ') +
      (g.contenders.length ? ` | ${g.contenders.map((c) => `${c.kind}:${c.op.name}@${c.rows}`).join(' ')}` : ''));
  }
  for (const [op, why] of unavailable) console.log(`  skipped ${op}: ${why}`);
  process.exit(0);
}

// ---------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------

const progress = new Progress(!jsonOnly && process.stderr.isTTY === true && !process.env.CI);
const log = (s: string) => {
  if (!jsonOnly) console.log(s);
};
const addNote = (s: string) => {
  notes.push(s);
  progress.note(`note: ${s}`);
};
for (const [op, why] of unavailable) notes.push(`${op}: skipped: ${why}`);

const info = machineInfo();
log(`kd-kernels bench · ${info.cpuModel} · ${info.logicalCores} logical cores · ${info.simd} · kd threads ${allThreads}` +
  ` · ${info.gpu.available ? info.gpu.devices.map((d) => d.name).join(', ') : 'no GPU'} · node ${process.version}` +
  ` · commit ${info.commit?.slice(0, 12) ?? 'unknown'} (sources ${info.sourceHash})`);
log(planLine);

const results: CaseResult[] = [];
const contenders: ContenderResult[] = [];
/** Library values on the contenders' exact data, keyed op|N|V (CPU f32). */
const errors: string[] = [];
let stepsDone = 0;
let estDone = 0;
let estRemaining = estimatedTotalS;
const t0 = performance.now();

function eta(): number {
  const elapsed = (performance.now() - t0) / 1000;
  const rate = estDone > 5 ? elapsed / estDone : 1;
  return Math.max(0, estRemaining * rate);
}
function step(what: string): void {
  progress.update(stepsDone, totalSteps, what, eta());
}
function advance(est: number): void {
  stepsDone++;
  estDone += est;
  estRemaining -= est;
}

function errCode(e: unknown): string | undefined {
  return (e as { code?: string } | undefined)?.code;
}
function errMsg(e: unknown): string {
  return e instanceof Error ? e.message.split('\n')[0]! : String(e);
}

let tf: Tf | undefined;
let tfWhy: string | undefined;

for (const [gi, g] of groups.entries()) {
  const est = estimates[gi]!;
  const label = `${g.device} ${g.dtype} ${shapeStr(g.shape)}`;
  const skipGroup = (why: string) => {
    addNote(`${label}: skipped: ${why}`);
    for (const e of [...est.cases, ...est.contenders]) advance(e);
  };
  // Memory: the three [N, V] tensors (+ host copies for CUDA) must fit comfortably.
  const need = groupBytes(g.device, g.dtype, g.shape);
  collectGarbage();
  const free = os.freemem();
  if (need.host > 0.75 * free) {
    skipGroup(`needs ${(need.host / 2 ** 30).toFixed(1)} GiB of host memory, ${(free / 2 ** 30).toFixed(1)} GiB free`);
    continue;
  }
  if (g.device === 'cuda') {
    const dev = backends.cuda.devices[0]!;
    if (need.device > 0.8 * dev.totalMemory) {
      skipGroup(`needs ${(need.device / 2 ** 30).toFixed(1)} GiB on ${dev.name} (${(dev.totalMemory / 2 ** 30).toFixed(0)} GiB)`);
      continue;
    }
  }
  step(`${label}: generating data`);
  let d: CaseData;
  try {
    d = makeCaseData(g.device, g.dtype, g.shape, seed);
  } catch (e) {
    skipGroup(`could not allocate or upload the data: ${errMsg(e)}`);
    continue;
  }
  estRemaining -= est.data;
  estDone += est.data;
  const libValues = new Map<string, number>();

  for (const [ci, c] of g.cases.entries()) {
    const what = `${label} ${c.op.name}${c.threads === null ? '' : ` ${c.threads} thr`}`;
    if (unavailable.has(c.op.name)) {
      advance(est.cases[ci]!);
      continue;
    }
    step(what);
    if (c.threads !== null) kd.setThreads(c.threads);
    let oc;
    let first;
    try {
      oc = c.op.make(d);
      first = timeOnce(() => oc!.value());
      if (c.op.steadyStateCalls) {
        for (let k = 0; k < c.op.steadyStateCalls; k++) oc.run();
        first = { value: first.value, ms: timeOnce(() => oc!.run()).ms };
      }
    } catch (e) {
      if (errCode(e) === 'KD_EUNSUPPORTED') {
        unavailable.set(c.op.name, `the addon says: ${errMsg(e)}`);
        addNote(`${c.op.name}: skipped: ${errMsg(e)} (KD_EUNSUPPORTED)`);
      } else {
        errors.push(`${what}: ${errMsg(e)}`);
        addNote(`${what}: FAILED: ${errMsg(e)}`);
      }
      advance(est.cases[ci]!);
      continue;
    }
    libValues.set(c.op.name, first.value);
    try {
      const bytes = c.op.traffic(g.shape, g.dtype);
      const total = bytes.read + bytes.written;
      const tri = triadFor(d, total);
      const before = triadSamples(`triad ${what}`, tri.run, baseBudget);
      const pool0 = kd.memory().cpu;
      // Each case starts from a collected heap: what earlier cases left (the dropped
      // outputs of forward-kl-default, the tfjs step's tensors) is not collected on its clock.
      collectGarbage();
      const budget = c.op.budgetScale ? { ...baseBudget, time: baseBudget.time * c.op.budgetScale } : baseBudget;
      const stats = measure(what, oc.run, budget, first.ms);
      const pool1 = kd.memory().cpu;
      let paired: CaseResult['paired'];
      const baseOp = c.op.pairedBaseline ? allOps.find((o) => o.name === c.op.pairedBaseline) : undefined;
      if (baseOp) {
        const bo = baseOp.make(d);
        try {
          bo.run();
          paired = { baseline: baseOp.name, ...pairedRatio(oc.run, bo.run, stats.median) };
        } finally {
          bo.dispose?.();
        }
      }
      const after = triadSamples(`triad ${what}`, tri.run, baseBudget);
      const floor = floorStats(tri.bytes, before, after);
      const gbps = total / (stats.median * 1e6);
      results.push({
        op: c.op.name,
        title: c.op.title,
        device: g.device,
        dtype: g.dtype,
        threads: c.threads,
        N: g.shape.N,
        V: g.shape.V,
        elements: g.shape.N * g.shape.V,
        bytes: { ...bytes, total },
        stats,
        gbps,
        elemsPerS: (g.shape.N * g.shape.V) / (stats.median / 1000),
        floor,
        fractionOfFloor: gbps / floor.gbps,
        speedups: {},
        load1: +os.loadavg()[0]!.toFixed(2),
        pool: { reused: pool1.reused - pool0.reused, fresh: pool1.fresh - pool0.fresh, overCap: pool1.overCap - pool0.overCap },
        ...(paired ? { paired } : {}),
      });
    } catch (e) {
      errors.push(`${what}: ${errMsg(e)}`);
      addNote(`${what}: FAILED: ${errMsg(e)}`);
    } finally {
      oc.dispose?.();
    }
    advance(est.cases[ci]!);
  }
  if (g.device === 'cpu') kd.setThreads(allThreads);

  for (const [ci, c] of g.contenders.entries()) {
    const what = `${label} ${c.kind} ${c.op.name} @${c.rows}×${g.shape.V}`;
    if (unavailable.has(c.op.name) || !libValues.has(c.op.name)) {
      advance(est.contenders[ci]!);
      continue;
    }
    step(what);
    const slice = sliceCaseData(d, c.rows);
    try {
      // The library's value on exactly the contender's data (the check).
      let libValue = libValues.get(c.op.name)!;
      if (c.rows !== g.shape.N) {
        const oc = c.op.make(slice);
        libValue = oc.value();
        oc.dispose?.();
      }
      const x: JsInputs = {
        s: slice.host.student as Float32Array,
        t: slice.host.teacher as Float32Array,
        N: c.rows,
        V: g.shape.V,
        labels: slice.host.labels,
        sampled: slice.host.sampled,
      };
      let run: () => number;
      let dispose = () => {};
      if (c.kind === 'js-loop') {
        const fn = JS_CONTENDERS[c.op.contenders!.js!]!;
        const gArr = slice.grad.toArray() as Float32Array;
        run = () => fn(x, gArr);
      } else {
        if (!tf && !tfWhy) {
          step('loading tfjs');
          const r = await loadTfjs();
          if (typeof r === 'string') {
            tfWhy = r;
            addNote(`tfjs: skipped: ${r}`);
          } else tf = r;
        }
        if (!tf) {
          advance(est.contenders[ci]!);
          continue;
        }
        const tc = makeTfjsCase(tf, c.op.contenders!.tfjs!, x);
        run = () => tc.run();
        dispose = () => tc.dispose();
      }
      try {
        const first = timeOnce(run);
        const stats = measure(what, () => void run(), baseBudget, first.ms);
        const relErr = Math.abs(first.value - libValue) / Math.max(Math.abs(libValue), 1e-6);
        const el = c.rows * g.shape.V;
        const bytes = c.op.traffic({ N: c.rows, V: g.shape.V }, 'f32');
        const check = { value: first.value, library: libValue, relErr, ok: relErr <= 1e-3 };
        if (!check.ok) {
          errors.push(`${what}: computes ${first.value}, the library ${libValue} (rel ${relErr.toExponential(2)})`);
          addNote(`${what}: MISMATCH: ${first.value} vs library ${libValue}`);
        }
        contenders.push({
          contender: c.kind,
          op: c.op.name,
          device: 'cpu',
          dtype: 'f32',
          N: c.rows,
          V: g.shape.V,
          elements: el,
          bytes: bytes.read + bytes.written,
          stats,
          elemsPerS: el / (stats.median / 1000),
          gbps: (bytes.read + bytes.written) / (stats.median * 1e6),
          check,
        });
      } finally {
        dispose();
      }
    } catch (e) {
      errors.push(`${what}: ${errMsg(e)}`);
      addNote(`${what}: FAILED: ${errMsg(e)}`);
    }
    advance(est.contenders[ci]!);
  }
  disposeCaseData(d);
}
progress.clear();

// ---------------------------------------------------------------------------------
// PyTorch on the CPU (optional), eager, torch.set_num_threads(the library's "all"),
// through bench/contenders/torch_bench.py --device cpu. Two runs of it, because their
// shapes differ: forward KL and JSD (f32, fwd+bwd) at the shapes those ops ran at, up to
// 32 M elements (torch's temporaries are several [N, V] arrays); and the ops with a
// `torchCpu` contender (topk and its input orderings) at theirs. The python with torch:
// KD_TORCH_PYTHON, else /usr/bin/python3 (Debian's python3-torch; a pyenv python3 may
// come first on PATH without it), else python3 on PATH.
// ---------------------------------------------------------------------------------

let torchPython: string | null | undefined; // undefined: not looked for yet; null: none
function findTorchPython(): string | null {
  if (torchPython !== undefined) return torchPython;
  const candidates = [...new Set([process.env.KD_TORCH_PYTHON, '/usr/bin/python3', 'python3'].filter((x): x is string => !!x))];
  const why: string[] = [];
  torchPython = candidates.find((c) => {
    const r = spawnSync(c, ['-c', 'import torch'], { encoding: 'utf8' });
    if (r.status === 0) return true;
    why.push(`${c}: ${(r.error?.message ?? r.stderr ?? '').trim().split('\n').pop()}`);
    return false;
  }) ?? null;
  if (!torchPython) notes.push(`torch (CPU): skipped: no python3 with torch found (${why.join('; ')})`);
  return torchPython;
}

/** Runs torch_bench.py on the CPU for ops × shapes × dtypes and adds its timings to `contenders`. */
function torchCpu(what: string, ops: string[], shapes: string[], dtypes: string[], timeoutMin: number): void {
  const py = findTorchPython();
  if (!py) return;
  progress.update(stepsDone, totalSteps, `torch CPU contenders: ${what} (${py}, ${allThreads} threads)`);
  const r = spawnSync(
    py,
    [join(ROOT, 'bench/contenders/torch_bench.py'), '--device', 'cpu', '--no-compile', '--threads', String(allThreads), '--ops', ops.join(','),
      '--shapes', shapes.join(','), '--dtypes', dtypes.join(','), '--seed', String(seed), ...(quick ? ['--quick'] : [])],
    { encoding: 'utf8', maxBuffer: 64 << 20, timeout: timeoutMin * 60_000 },
  );
  progress.clear();
  for (const line of (r.stdout ?? '').split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const j = JSON.parse(line) as { contender?: ContenderName; op: string; N: number; V: number; dtype?: BenchDtype; ms: number[]; note?: string };
      if (!j.contender || !Array.isArray(j.ms) || j.ms.length === 0) {
        if (j.note) notes.push(`torch (CPU): ${j.note}`);
        continue;
      }
      if ((j.contender as string) === 'torch-triad') continue; // the floor is the library's own native triad
      const dtype: BenchDtype = j.dtype ?? 'f32';
      const stats: Stats = statsOf(j.ms);
      const el = j.N * j.V;
      const bytes = (j.op.startsWith('topk') ? 1 : 3) * el * (dtype === 'f32' ? 4 : 2); // topk reads one row; the losses three
      const what = j.contender === 'torch-topk' ? 'torch.topk alone (values, ids; no log-probs, no tail), ' : '';
      contenders.push({ contender: j.contender, op: j.op, device: 'cpu', dtype, N: j.N, V: j.V, elements: el, bytes, stats, elemsPerS: el / (stats.median / 1000), gbps: bytes / (stats.median * 1e6), threads: allThreads, note: `${what}torch ${py}, ${allThreads} threads, own data, same distribution` });
    } catch {
      /* not ours */
    }
  }
  if (r.status !== 0) notes.push(`torch (CPU): torch_bench.py (${what}) exited with ${r.status ?? r.signal}: ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}`);
}

const TORCH_CPU_OPS = ['forward-kl', 'jsd'];
const TORCH_CPU_MAX_ELEMS = 32 * 2 ** 20;
function libRan(g: Group, op: string): boolean {
  return results.some((r) => r.op === op && r.device === g.device && r.dtype === g.dtype && r.N === g.shape.N && r.V === g.shape.V);
}
if (contenderKinds.has('torch')) {
  const lossShapes = [...new Set(groups
    .filter((g) => g.device === 'cpu' && g.dtype === 'f32' && g.shape.N * g.shape.V <= TORCH_CPU_MAX_ELEMS)
    .filter((g) => g.cases.some((c) => c.threads === allThreads && TORCH_CPU_OPS.includes(c.op.contenders?.torch ?? '') && libRan(g, c.op.name)))
    .map((g) => `${g.shape.N}x${g.shape.V}`))];
  if (lossShapes.length > 0) torchCpu('forward KL, JSD', TORCH_CPU_OPS, lossShapes, ['f32'], 20);
  const cpuTorchGroups = groups.filter((g) => g.device === 'cpu' && g.cases.some((c) => c.op.contenders?.torchCpu));
  if (cpuTorchGroups.length > 0) {
    torchCpu(
      'topk',
      [...new Set(cpuTorchGroups.flatMap((g) => g.cases.map((c) => c.op.contenders?.torchCpu).filter((x): x is string => !!x)))],
      [...new Set(cpuTorchGroups.map((g) => `${g.shape.N}x${g.shape.V}`))],
      [...new Set(cpuTorchGroups.map((g) => g.dtype))],
      30,
    );
  }
}

// ---------------------------------------------------------------------------------
// PyTorch on CUDA (optional): bench/contenders/torch_bench.py, same shapes, its own
// identically distributed data; JSON lines back.
// ---------------------------------------------------------------------------------

const cudaGroups = groups.filter((g) => g.device === 'cuda');
if (contenderKinds.has('torch') && cudaGroups.length > 0) {
  const probeTorch = spawnSync('python3', ['-c', 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 3)'], { encoding: 'utf8' });
  if (probeTorch.status !== 0) {
    notes.push(`torch: skipped: python3 with CUDA-enabled torch not found (${(probeTorch.stderr || `exit ${probeTorch.status}`).trim().split('\n').pop()})`);
  } else {
    const torchOps = [...new Set(cudaGroups.flatMap((g) => g.cases.map((c) => c.op.contenders?.torch).filter((x): x is string => !!x)))];
    const torchShapes = [...new Set(cudaGroups.map((g) => `${g.shape.N}x${g.shape.V}`))];
    const torchDtypes = [...new Set(cudaGroups.map((g) => g.dtype))];
    if (torchOps.length) {
      progress.update(stepsDone, totalSteps, 'torch contenders (eager, torch.compile)');
      const r = spawnSync(
        'python3',
        [join(ROOT, 'bench/contenders/torch_bench.py'), '--ops', torchOps.join(','), '--shapes', torchShapes.join(','), '--dtypes', torchDtypes.join(','), '--seed', String(seed), ...(quick ? ['--quick'] : [])],
        { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 30 * 60_000 },
      );
      progress.clear();
      for (const line of (r.stdout ?? '').split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          const j = JSON.parse(line) as { contender?: ContenderName; op: string; N: number; V: number; dtype: BenchDtype; ms: number[]; note?: string };
          if (!j.contender || !Array.isArray(j.ms) || j.ms.length === 0) {
            if (j.note) notes.push(`torch: ${j.note}`);
            continue;
          }
          const stats: Stats = statsOf(j.ms);
          const el = j.N * j.V;
          // Bytes an ideal pass moves: loss + gradient read two rows and write one; topk
          // reads one (its outputs are N·k, negligible).
          const bytes = (j.op.startsWith('topk') ? 1 : 3) * el * (j.dtype === 'f32' ? 4 : 2);
          const what = j.contender === 'torch-topk' ? 'torch.topk alone (values, ids; no log-probs, no tail), ' : '';
          contenders.push({ contender: j.contender, op: j.op, device: 'cuda', dtype: j.dtype, N: j.N, V: j.V, elements: el, bytes, stats, elemsPerS: el / (stats.median / 1000), gbps: bytes / (stats.median * 1e6), note: `${what}own data, same distribution` });
        } catch {
          /* not ours */
        }
      }
      if (r.status !== 0) notes.push(`torch: torch_bench.py exited with ${r.status ?? r.signal}: ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}`);
    }
  }
}

// ---------------------------------------------------------------------------------
// Speed-ups, output
// ---------------------------------------------------------------------------------

for (const r of results) {
  const spec = ops.find((o) => o.name === r.op)!;
  for (const c of contenders) {
    if ((c.op !== r.op && c.op !== spec.contenders?.torch) || c.V !== r.V || c.dtype !== r.dtype) continue;
    if (c.op !== r.op && !c.contender.startsWith('torch')) continue;
    if (c.device !== r.device) continue;
    if (c.threads !== undefined && (c.threads !== r.threads || c.N !== r.N)) continue;
    if (c.device === 'cpu' && c.threads === undefined) {
      const lim = c.contender === 'js-loop' ? jsLimit(spec, r) : tfjsLimit(spec, r);
      if (c.N !== contenderRows(r, lim)) continue;
    } else if (c.N !== r.N) continue;
    const speedup = c.stats.median / c.elements / (r.stats.median / r.elements);
    r.speedups[c.contender] = { speedup, N: c.N, V: c.V };
  }
}

// Table order: op, device, dtype, V, N, threads (runs go group by group).
const rank = (r: CaseResult) => [ORDER.indexOf(r.op) + 1 || 99, r.device === 'cpu' ? 0 : 1, r.dtype === 'f32' ? 0 : 1, r.V, r.N, r.threads ?? 0];
results.sort((a, b) => {
  const x = rank(a);
  const y = rank(b);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return 0;
});

const durationS = (performance.now() - t0) / 1000;
info.loadavgEnd = os.loadavg().map((x) => +x.toFixed(2));
if (tf) info.versions['@tensorflow/tfjs'] = tfjsVersion(tf);

/** The figures BENCHMARKS.md quotes: forward KL f32 512×32000 on all threads, JSD / forward KL, bf16 / f32. */
function headline(): string[] {
  const out: string[] = [];
  const find = (op: string, dtype: BenchDtype, threads: number | null, N = 512, V = 32000) =>
    results.find((r) => r.op === op && r.dtype === dtype && r.threads === threads && r.N === N && r.V === V && r.device === 'cpu');
  for (const th of [...new Set([allThreads, 1])]) {
    const f = find('forward-kl', 'f32', th);
    if (!f) continue;
    const js = f.speedups['js-loop'];
    const tfs = f.speedups.tfjs;
    out.push(
      `forward KL f32 512×32000, ${th} thread${th > 1 ? 's' : ''}: ${fmtMs(f.stats.median)} ms (p10 ${fmtMs(f.stats.p10)}, p90 ${fmtMs(f.stats.p90)}), ` +
        `${fmtNum(f.gbps)} GB/s = ${(100 * f.fractionOfFloor).toFixed(1)}% of the ${fmtNum(f.floor.gbps)} GB/s floor; ` +
        `${js ? `${fmtSpeedup(js.speedup)} the JS loop${js.N !== 512 ? ` (at ${js.N}×${js.V})` : ''}` : 'no JS loop'}, ` +
        `${tfs ? `${fmtSpeedup(tfs.speedup)} tfjs${tfs.N !== 512 ? ` (at ${tfs.N}×${tfs.V}, per element)` : ''}` : 'no tfjs'}`,
    );
  }
  // Medians and means: a loop that drops its outputs pays V8's collections on a few calls
  // out of many, which the median leaves out and the mean (what a training loop pays) keeps.
  // Paired (harness pairedRatio: rounds alternating with the baseline on the same data) where
  // the case has it (OpSpec.pairedBaseline), else the two cases' own samples.
  const vs = (a: CaseResult, b: CaseResult) =>
    a.paired
      ? `median ${a.paired.medianRatio.toFixed(2)}, mean ${a.paired.meanRatio.toFixed(2)} (${fmtMs(a.paired.caseMeanMs)} vs ${fmtMs(a.paired.baselineMeanMs)} ms; ` +
        `${a.paired.rounds} alternating rounds of ${a.paired.callsPerRound} calls)`
      : `median ${(a.stats.median / b.stats.median).toFixed(2)} (${fmtMs(a.stats.median)} vs ${fmtMs(b.stats.median)} ms), ` +
        `mean ${(a.stats.mean / b.stats.mean).toFixed(2)} (${fmtMs(a.stats.mean)} vs ${fmtMs(b.stats.mean)} ms)`;
  const f = find('forward-kl', 'f32', allThreads);
  const j = find('jsd', 'f32', allThreads);
  if (f && j)
    out.push(
      `JSD / forward KL time (f32 512×32000, ${allThreads} threads): ${(j.stats.median / f.stats.median).toFixed(2)} (the two cases' medians)` +
        (j.paired ? `; paired: ${vs(j, f)}` : ''),
    );
  // The call paths (bench/call_path.bench.ts), each against the preallocated call, and PyTorch CPU.
  const fd = find('forward-kl-default', 'f32', allThreads);
  const fdh = find('forward-kl-default-held', 'f32', allThreads);
  const fdd = find('forward-kl-default-dispose', 'f32', allThreads);
  const jd = find('jsd-default', 'f32', allThreads);
  const step = find('tfjs-kd-loss-step', 'f32', allThreads);
  if (f && fd) out.push(`default call (fresh grad, no dispose) / preallocated, forward KL f32 512×32000: ${vs(fd, f)}`);
  if (f && fdh) out.push(`default call (no dispose, each result held until the next call) / preallocated, forward KL f32 512×32000: ${vs(fdh, f)}`);
  if (f && fdd) out.push(`default call + dispose / preallocated, forward KL f32 512×32000: ${vs(fdd, f)}`);
  if (j && jd) out.push(`default call + dispose / preallocated, JSD f32 512×32000: ${vs(jd, j)}`);
  if (f && step) out.push(`tfjs kdLoss step (variableGrads) / raw preallocated call, forward KL f32 512×32000: ${vs(step, f)}`);
  for (const [name, r] of [['forward KL default call', fd], ['forward KL default call, held', fdh], ['forward KL default call + dispose', fdd], ['JSD default call + dispose', jd]] as const) {
    const t = r?.speedups['torch-eager'];
    if (r && t) out.push(`${name} vs PyTorch CPU eager fwd+bwd (f32 512×32000, ${allThreads} threads): ${fmtSpeedup(t.speedup)}`);
  }
  // topk (k = 64, f32, all threads) at the target shape 256×151936: each input ordering
  // against the i.i.d. case, and each against torch.topk alone (values and ids only).
  const ti = find('topk', 'f32', allThreads, 256, 151936);
  if (ti) {
    const ords = TOPK_ORDERINGS.filter((o) => o !== 'iid').map((o) => [o, find(`topk-${o}`, 'f32', allThreads, 256, 151936)] as const);
    out.push(`topk k=${TOPK_K} f32 256×151936, ${allThreads} threads: i.i.d. ${fmtMs(ti.stats.median)} ms; time / i.i.d.: ` +
      ords.map(([o, r]) => `${o} ${r ? (r.stats.median / ti.stats.median).toFixed(2) : '-'}`).join(', '));
    const vt = (r: CaseResult | undefined) => (r?.speedups['torch-topk'] ? fmtSpeedup(r.speedups['torch-topk'].speedup) : '-');
    if (ti.speedups['torch-topk'])
      out.push(`topk vs torch.topk alone (f32 256×151936, ${allThreads} threads): i.i.d. ${vt(ti)}; ` + ords.map(([o, r]) => `${o} ${vt(r)}`).join(', '));
  }
  const b = find('forward-kl', 'bf16', allThreads);
  if (f && b) out.push(`forward KL bf16 / f32 elements per second (512×32000, ${allThreads} threads): ${(b.elemsPerS / f.elemsPerS).toFixed(2)} (${fmtRate(b.elemsPerS)} vs ${fmtRate(f.elemsPerS)} elem/s)`);
  return out;
}

const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
const command = `npm run bench${process.argv.slice(2).length ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
const doc = {
  tool: 'kd-kernels bench',
  mode: modeName,
  command,
  timestamp: new Date().toISOString(),
  durationS: +durationS.toFixed(1),
  estimatedS: +estimatedTotalS.toFixed(0),
  seed,
  budget: baseBudget,
  machine: info,
  headline: headline(),
  results,
  contenders,
  notes,
  errors,
};

mkdirSync(outDir, { recursive: true });
const base = join(outDir, `kd-bench-${modeName}-${stamp}`);
writeFileSync(`${base}.json`, `${JSON.stringify(doc, null, 1)}\n`);
writeFileSync(join(outDir, 'latest.json'), `${JSON.stringify(doc, null, 1)}\n`);
const svg = renderSvg(
  results,
  `kd-kernels: achieved vs floor (${modeName} run, ${doc.timestamp.slice(0, 10)})`,
  `${info.cpuModel}, ${info.logicalCores} cores, ${info.simd}${info.gpu.available ? `, ${info.gpu.devices[0]?.name}` : ''} · commit ${info.commit?.slice(0, 12) ?? '?'} · ${command}`,
);
writeFileSync(`${base}.svg`, svg);
writeFileSync(join(outDir, 'latest.svg'), svg);

if (jsonOnly) {
  process.stdout.write(`${JSON.stringify(doc, null, 1)}\n`);
} else {
  log('');
  log(results.length ? resultsTable(results) : '(no library case ran)');
  if (contenders.length) {
    log('');
    log('Contenders (single-threaded JS, f32; the loss is checked against the library on the same data):');
    log(contendersTable(contenders));
  }
  const h = headline();
  if (h.length) {
    log('');
    for (const line of h) log(line);
  }
  if (notes.length) {
    log('');
    for (const n of notes) log(`note: ${n}`);
  }
  log('');
  log(`${results.length} cases, ${contenders.length} contender runs in ${fmtDuration(durationS)} (estimated ${fmtDuration(estimatedTotalS)}); ` +
    `load average ${info.loadavgStart.join(' ')} → ${info.loadavgEnd.join(' ')}`);
  log(`wrote ${relative(process.cwd(), `${base}.json`)} and ${relative(process.cwd(), `${base}.svg`)} (and latest.json / latest.svg)`);
  if (errors.length) log(`${errors.length} error(s): see above`);
}
process.exitCode = errors.length ? 1 : 0;
