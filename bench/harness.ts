/**
 * The benchmark harness behind `npm run bench` (bench/run.ts is the CLI):
 *
 * - shared setup: random peaked logits (a teacher and a student near it) per (device, dtype, shape), generated once and
 *   used by every op and every contender (the library, the floor, the JS loop, tfjs);
 * - measurement with tinybench: a first call (checks the op runs, faults in the output
 *   pages), warm-up, then a time budget with a minimum number of samples; median and
 *   p10 / p90 from the retained samples;
 * - bytes and elements per case: what an ideal fused kernel moves (each input read
 *   once, each output written once), so GB/s compares across ops;
 * - the floor: the native triad (c = a + b over the same number of bytes, same dtype,
 *   same threads, same process) measured immediately before and after each case;
 * - output: a terminal table, a JSON document with the machine, and an SVG chart.
 *
 * Benchmarks are not tests: nothing here asserts a time.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runInNewContext } from 'node:vm';
import v8 from 'node:v8';
import { Bench } from 'tinybench';
import type { TensorDesc } from '../binding.js';
import * as kd from '../lib/index.js';
import { binding } from '../lib/native.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

// ---------------------------------------------------------------------------------
// Types shared by the runner and the suites
// ---------------------------------------------------------------------------------

export type BenchDtype = 'f32' | 'bf16';
export type BenchDevice = 'cpu' | 'cuda';

export interface Shape {
  N: number;
  V: number;
}

/** The data every contender of one (device, dtype, shape) group shares. */
export interface CaseData {
  device: BenchDevice;
  /** kd device name ('cpu' or 'cuda:0'). */
  kdDevice: kd.Device;
  dtype: BenchDtype;
  N: number;
  V: number;
  /** Student and teacher logits [N, V] and a preallocated gradient [N, V] (input dtype). */
  student: kd.Tensor;
  teacher: kd.Tensor;
  grad: kd.Tensor;
  /** i32 [N] labels (distillationLoss) and sampled ids (tokenStats), on the device. */
  labels: kd.Tensor;
  sampled: kd.Tensor;
  /** Host copies (CPU: the very arrays the tensors view). */
  host: { student: Float32Array | Uint16Array; teacher: Float32Array | Uint16Array; labels: Int32Array; sampled: Int32Array };
  /** Waits for queued device work (no-op on the CPU). */
  sync(): void;
}

/** Bytes an ideal kernel moves: each input read once, each output written once. */
export interface Traffic {
  read: number;
  written: number;
}

/** One library call over a CaseData, built by a suite. */
export interface OpCase {
  /** One call (CUDA: includes synchronisation). */
  run(): void;
  /** One call; returns the scalar the contenders are checked against (the loss, or Σ forwardKl). */
  value(): number;
  dispose?(): void;
}

export interface OpSpec {
  /** CLI name: 'forward-kl', 'jsd', ... */
  name: string;
  /** What is timed, for the table: 'klDiv forward, loss + grad'. */
  title: string;
  /** The bench file (and lib file) it belongs to: 'kl_div'. */
  suite: string;
  /** Other names --op accepts. */
  aliases?: string[];
  dtypes: readonly BenchDtype[];
  /** Why it can't run in this build (function not exported yet), or undefined. */
  unavailable?(): string | undefined;
  traffic(shape: Shape, dtype: BenchDtype): Traffic;
  make(d: CaseData): OpCase;
  /** Contenders that compute the same thing: keys of JS_CONTENDERS / TFJS_LOSSES. */
  /** torch: on CUDA groups, and on CPU groups for forward KL / JSD; torchCpu: on CPU groups (torch's own threads = the pool's). */
  contenders?: { js?: string; tfjs?: string; torch?: string; torchCpu?: string };
  /** Run on all CPU threads only (the call-path cases of bench/call_path.bench.ts). */
  allThreadsOnly?: boolean;
  /**
   * Calls made after the first and before timing (and before the harness picks its
   * budget from a call's time): the default call path without dispose() reaches its
   * steady state only once the output pool holds the buffers V8 has not yet collected
   * (a few calls), as a training loop does after its first steps.
   */
  steadyStateCalls?: number;
  /**
   * Multiplies the sampling time budget: the call-path cases pay V8's collections on a
   * few of their calls, so their mean needs more calls than a kernel's median does.
   */
  budgetScale?: number;
  /**
   * The op this one is a ratio against in the headline (a call path against the
   * preallocated call it makes; jsd against forward KL). Besides its own samples, the case is then timed in
   * rounds alternating with that op's calls on the same data (harness `pairedRatio`), so
   * the ratio does not carry the minutes of machine drift between two separate cases.
   */
  pairedBaseline?: string;
}

export const DTYPE_BYTES: Record<BenchDtype, number> = { f32: 4, bf16: 2 };

/** Traffic of a fused loss + gradient: read student and teacher, write the gradient. */
export function lossTraffic({ N, V }: Shape, dtype: BenchDtype, extraRead = 0, extraWritten = 0): Traffic {
  const e = DTYPE_BYTES[dtype];
  return { read: 2 * N * V * e + extraRead, written: N * V * e + extraWritten };
}

/** Disposes every tensor in an op's result except those in `keep` (CUDA outputs). */
export function disposeOutputs(r: unknown, keep: readonly kd.Tensor[] = []): void {
  if (!r || typeof r !== 'object') return;
  for (const v of Object.values(r as Record<string, unknown>)) {
    if (kd.isTensor(v) && !keep.includes(v)) v.dispose();
  }
}

/** The library function `name` if lib/index.ts exports it in this build (ops still being written). */
export function optionalExport<T>(name: string): T | undefined {
  const f = (kd as unknown as Record<string, unknown>)[name];
  return typeof f === 'function' ? (f as T) : undefined;
}

// ---------------------------------------------------------------------------------
// Random peaked logits
// ---------------------------------------------------------------------------------

/** mulberry32 (as test/reference/common.ts): uniform [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const f32Box = new Float32Array(1);
const u32Box = new Uint32Array(f32Box.buffer);
/** f32 → bf16 bits, round to nearest even (finite inputs). */
export function toBf16(x: number): number {
  f32Box[0] = x;
  const b = u32Box[0]!;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}
export function fromBf16(bits: number): number {
  u32Box[0] = (bits & 0xffff) << 16;
  return f32Box[0]!;
}

/** Logit scale (std) of the random teacher logits: LLM logits are a few units wide. */
export const LOGIT_SCALE = 2;
/** Normal samples drawn directly; rows are random windows of this pool. */
const POOL = 1 << 22;

/**
 * Random peaked logits for a teacher and a student that has partly learnt it, N × V each
 * (never zeros, never flat, never degenerate):
 *   teacher t = 2 · N(0, 1), plus 1–3 peaks per row raised by 8–14 (the top token holds
 *               roughly 5–80% of the mass at V = 32000, as LLM next-token distributions do);
 *   student s = t + N(0, 1) noise, its peaks at the same ids with heights off by ±30%.
 * So p and q overlap and every divergence is well away from its extremes (with
 * independent one-hot-like rows, JSD would sit at log 2 and TVD at 1 and a wrong
 * contender could still "agree"). Each row reads random windows of a 4 Mi-sample normal
 * pool (Box–Muller costs ~25 ns a sample; a window copy is memory speed), so the full
 * grid's 4096 × 151936 pairs take seconds, not minutes.
 */
export function randomLogitPair(N: number, V: number, dtype: BenchDtype, seed: number): { student: Float32Array | Uint16Array; teacher: Float32Array | Uint16Array } {
  const n = N * V;
  const rng = mulberry32(seed);
  const poolLen = Math.max(2 * V, Math.min(POOL, n + V));
  const pool = new Float32Array(poolLen);
  for (let i = 0; i < poolLen; i += 2) {
    const u1 = 1 - rng();
    const u2 = rng();
    const r = Math.sqrt(-2 * Math.log(u1));
    pool[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < poolLen) pool[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  const f32 = dtype === 'f32';
  const teacher = f32 ? new Float32Array(n) : new Uint16Array(n);
  const student = f32 ? new Float32Array(n) : new Uint16Array(n);
  const rowT = new Float32Array(V);
  const rowS = new Float32Array(V);
  const bitsT = new Uint32Array(rowT.buffer);
  const bitsS = new Uint32Array(rowS.buffer);
  const span = poolLen - V + 1;
  for (let i = 0; i < N; i++) {
    const a = Math.floor(rng() * span);
    const b = Math.floor(rng() * span);
    for (let j = 0; j < V; j++) {
      const t = LOGIT_SCALE * pool[a + j]!;
      rowT[j] = t;
      rowS[j] = t + pool[b + j]!;
    }
    const peaks = Math.min(V, 1 + Math.floor(rng() * 3));
    for (let c = 0; c < peaks; c++) {
      const j = Math.min(V - 1, Math.floor(rng() * V));
      const h = 8 + 6 * rng();
      rowT[j] = rowT[j]! + h;
      rowS[j] = rowS[j]! + h * (0.7 + 0.6 * rng());
    }
    const o = i * V;
    if (f32) {
      (teacher as Float32Array).set(rowT, o);
      (student as Float32Array).set(rowS, o);
    } else {
      for (let j = 0; j < V; j++) {
        const x = bitsT[j]!;
        const y = bitsS[j]!;
        teacher[o + j] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
        student[o + j] = ((y + 0x7fff + ((y >>> 16) & 1)) >>> 16) & 0xffff;
      }
    }
  }
  return { student, teacher };
}

function randomIds(N: number, V: number, seed: number): Int32Array {
  const rng = mulberry32(seed);
  const out = new Int32Array(N);
  for (let i = 0; i < N; i++) out[i] = Math.min(V - 1, Math.floor(rng() * V));
  return out;
}

/** Memory a group needs: student, teacher, gradient (+ the host copies on CUDA). */
export function groupBytes(device: BenchDevice, dtype: BenchDtype, { N, V }: Shape): { host: number; device: number } {
  const t = 3 * N * V * DTYPE_BYTES[dtype];
  return device === 'cpu' ? { host: t, device: 0 } : { host: (2 / 3) * t, device: t };
}

/** Generates the shared data of one group (seeded). */
export function makeCaseData(device: BenchDevice, dtype: BenchDtype, shape: Shape, seed: number): CaseData {
  const { N, V } = shape;
  const kdDevice: kd.Device = device === 'cpu' ? 'cpu' : 'cuda:0';
  const { student: hs, teacher: ht } = randomLogitPair(N, V, dtype, seed);
  const labels = randomIds(N, V, seed + 2);
  const sampled = randomIds(N, V, seed + 3);
  const opts = { dtype, device: kdDevice } as const;
  const student = kd.tensor(hs, [N, V], opts);
  const teacher = kd.tensor(ht, [N, V], opts);
  const grad = kd.empty([N, V], opts);
  const labelsT = kd.tensor(labels, [N], { device: kdDevice });
  const sampledT = kd.tensor(sampled, [N], { device: kdDevice });
  const sync = device === 'cpu' ? () => {} : () => kd.synchronize(kdDevice as `cuda:${number}`);
  return {
    device, kdDevice, dtype, N, V, student, teacher, grad, labels: labelsT, sampled: sampledT,
    host: { student: hs, teacher: ht, labels, sampled }, sync,
  };
}

/** CPU f32 data for the first `rows` rows of `d` (zero-copy views): the contenders' reduced shapes. */
export function sliceCaseData(d: CaseData, rows: number): CaseData {
  if (d.device !== 'cpu') throw new Error('sliceCaseData: CPU only');
  if (rows === d.N) return d;
  const n = rows * d.V;
  const hs = d.host.student.subarray(0, n) as Float32Array | Uint16Array;
  const ht = d.host.teacher.subarray(0, n) as Float32Array | Uint16Array;
  const labels = d.host.labels.subarray(0, rows);
  const sampled = d.host.sampled.subarray(0, rows);
  const gArr = (d.grad.toArray() as Float32Array | Uint16Array).subarray(0, n);
  const opts = { dtype: d.dtype } as const;
  return {
    ...d,
    N: rows,
    student: kd.tensor(hs, [rows, d.V], opts),
    teacher: kd.tensor(ht, [rows, d.V], opts),
    grad: kd.tensor(gArr, [rows, d.V], opts),
    labels: kd.tensor(labels, [rows]),
    sampled: kd.tensor(sampled, [rows]),
    host: { student: hs, teacher: ht, labels, sampled },
  };
}

export function disposeCaseData(d: CaseData): void {
  for (const t of [d.student, d.teacher, d.grad, d.labels, d.sampled]) t.dispose();
}

let gcFn: (() => void) | undefined;
/** Forces a full GC so the previous group's big arrays are released before the next. */
export function collectGarbage(): void {
  if (!gcFn) {
    v8.setFlagsFromString('--expose-gc');
    gcFn = runInNewContext('gc') as () => void;
  }
  gcFn();
}

// ---------------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------------

/** Milliseconds. */
export interface Stats {
  median: number;
  p10: number;
  p90: number;
  min: number;
  mean: number;
  samples: number;
}

export interface Budget {
  /** Measured time budget per task (ms); tinybench runs until both it and minIterations are met. */
  time: number;
  minIterations: number;
  /** Samples of a call that takes over 150 ms (no time budget then); over 1 s: 3. */
  slowIterations: number;
  /** Warm-up budget (ms) and minimum calls, after the first call. */
  warmupTime: number;
  warmupIterations: number;
}

export const QUICK_BUDGET: Budget = { time: 120, minIterations: 5, slowIterations: 3, warmupTime: 40, warmupIterations: 2 };
export const FULL_BUDGET: Budget = { time: 250, minIterations: 7, slowIterations: 5, warmupTime: 80, warmupIterations: 2 };

/** Linear-interpolation percentile of ascending samples. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const x = (n - 1) * q;
  const lo = Math.floor(x);
  const hi = Math.min(n - 1, lo + 1);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (x - lo);
}

export function statsOf(samples: readonly number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  return {
    median: percentile(s, 0.5),
    p10: percentile(s, 0.1),
    p90: percentile(s, 0.9),
    min: s[0] ?? NaN,
    mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length),
    samples: s.length,
  };
}

/**
 * Times fn with tinybench. `firstMs` is the duration of a call already made (the check
 * call): expensive calls get fewer samples (a 2 s call is timed 3 times, a 10 s one
 * twice), cheap ones fill the time budget.
 */
export function measure(name: string, fn: () => void, budget: Budget, firstMs: number): Stats {
  const slow = firstMs > 1000;
  const medium = firstMs > 150;
  // Over 5 s a call (tfjs at 512×32000): 2 samples; the contender is 100s of times slower, its spread doesn't matter.
  const iterations = firstMs > 5000 ? 2 : slow ? Math.min(3, budget.slowIterations) : medium ? budget.slowIterations : budget.minIterations;
  const warmupIterations = slow ? 0 : medium ? 1 : budget.warmupIterations;
  const bench = new Bench({
    name,
    time: slow || medium ? 0 : budget.time,
    iterations,
    warmup: warmupIterations > 0,
    warmupTime: slow || medium ? 0 : budget.warmupTime,
    warmupIterations: Math.max(1, warmupIterations),
    retainSamples: true,
    throws: true,
  });
  bench.add(name, fn, { async: false });
  bench.runSync();
  const r = bench.tasks[0]!.result;
  if (r.state !== 'completed' && r.state !== 'aborted-with-statistics') throw new Error(`${name}: tinybench ended in state ${r.state}`);
  const samples = r.latency.samples;
  if (!samples || samples.length === 0) throw new Error(`${name}: no samples`);
  return statsOf(Array.from(samples));
}

/** Runs fn once, timed (ms), returning its value. */
export function timeOnce<T>(fn: () => T): { ms: number; value: T } {
  const t0 = performance.now();
  const value = fn();
  return { ms: performance.now() - t0, value };
}

// ---------------------------------------------------------------------------------
// The floor: triad over the same bytes, same dtype, same threads, same process
// ---------------------------------------------------------------------------------

export interface FloorResult {
  /** Bytes one triad call moves (3 · n · element size). */
  triadBytes: number;
  before: Stats;
  after: Stats;
  /** Median of before and after samples together. */
  stats: Stats;
  /** Triad bandwidth: the floor's GB/s. */
  gbps: number;
  /** |before − after| / min: > 0.15 means the machine's state changed during the case. */
  drift: number;
}

function desc1d(t: kd.Tensor, n: number): TensorDesc {
  return { ...t._desc('triad'), shape: [n], strides: [1] };
}

/**
 * A triad closure over sub-views of the group's own buffers (student + teacher → grad):
 * n elements of the input dtype so that 3 · n · size ≈ `bytes` (capped at N · V).
 */
export function triadFor(d: CaseData, bytes: number): { run: () => void; bytes: number } {
  const e = DTYPE_BYTES[d.dtype];
  const n = Math.max(1, Math.min(d.N * d.V, Math.round(bytes / (3 * e))));
  const args = { a: desc1d(d.student, n), b: desc1d(d.teacher, n), c: desc1d(d.grad, n) };
  const b = binding();
  return {
    run: () => {
      b.triad(args);
      d.sync();
    },
    bytes: 3 * n * e,
  };
}

export function floorStats(triadBytes: number, before: number[], after: number[]): FloorResult {
  const b = statsOf(before);
  const a = statsOf(after);
  const all = statsOf([...before, ...after]);
  return {
    triadBytes,
    before: b,
    after: a,
    stats: all,
    gbps: triadBytes / (all.median * 1e6),
    drift: Math.abs(b.median - a.median) / Math.min(b.median, a.median),
  };
}

/** Triad samples (ms) with a budget a third of the case's: cheap, but enough for a median. */
export function triadSamples(name: string, run: () => void, budget: Budget): number[] {
  const first = timeOnce(run).ms;
  const b: Budget = { time: budget.time / 3, minIterations: 3, slowIterations: 3, warmupTime: budget.warmupTime / 2, warmupIterations: 1 };
  const bench = new Bench({
    name,
    time: first > 150 ? 0 : b.time,
    iterations: b.minIterations,
    warmup: first <= 150,
    warmupTime: b.warmupTime,
    warmupIterations: b.warmupIterations,
    retainSamples: true,
    throws: true,
  });
  bench.add(name, run, { async: false });
  bench.runSync();
  const r = bench.tasks[0]!.result;
  if (r.state !== 'completed' && r.state !== 'aborted-with-statistics') throw new Error(`${name}: tinybench ended in state ${r.state}`);
  return Array.from(r.latency.samples ?? []);
}

// ---------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------

/** torch-topk: torch.topk alone (values and ids; no log-probs, no tail), a timing for topk only. */
export type ContenderName = 'js-loop' | 'tfjs' | 'torch-eager' | 'torch-compile' | 'torch-topk';

export interface ContenderResult {
  contender: ContenderName;
  op: string;
  device: BenchDevice;
  dtype: BenchDtype;
  N: number;
  V: number;
  elements: number;
  bytes: number;
  stats: Stats;
  /** Elements per second (median). */
  elemsPerS: number;
  gbps: number;
  /** Its loss vs the library's on the same data (relative difference), when checked. */
  check?: { value: number; library: number; relErr: number; ok: boolean };
  note?: string;
  /** CPU threads it ran on, where it used several (torch on the CPU); else single-threaded. */
  threads?: number;
}

export interface CaseResult {
  op: string;
  title: string;
  device: BenchDevice;
  dtype: BenchDtype;
  /** CPU threads (null on CUDA). */
  threads: number | null;
  N: number;
  V: number;
  elements: number;
  bytes: Traffic & { total: number };
  stats: Stats;
  gbps: number;
  elemsPerS: number;
  floor: FloorResult;
  /** Achieved bandwidth / floor bandwidth = floor time / achieved time. */
  fractionOfFloor: number;
  /** Speed-up (per element) over each contender measured for this op and V, and where it ran. */
  speedups: Partial<Record<ContenderName, { speedup: number; N: number; V: number }>>;
  /** The 1-minute load average when the case finished (other work on the machine). */
  load1: number;
  /**
   * The host output pool (kd.memory().cpu) over the timed calls: allocations served from
   * an idle block, fresh ones (new memory: page faults), and over the cap (plain zero-
   * filled ArrayBuffers). A default-call case at steady state should show fresh = overCap = 0.
   */
  pool?: { reused: number; fresh: number; overCap: number };
  /** OpSpec.pairedBaseline: this case against its baseline, timed in alternating rounds. */
  paired?: PairedRatio & { baseline: string };
}

export interface PairedRatio {
  rounds: number;
  callsPerRound: number;
  /** Median over rounds of (this round's median call / the baseline round's median call). */
  medianRatio: number;
  /** All of this case's call time / all of the baseline's: what a loop pays, collections included. */
  meanRatio: number;
  caseMeanMs: number;
  baselineMeanMs: number;
}

/**
 * `run` against `baseline`, in `rounds` rounds of `calls` timed calls each, alternating
 * which goes first. On a shared machine whose speed drifts by 10-15% over minutes, two
 * cases timed minutes apart can be that far off in ratio; paired rounds see the same drift.
 */
export function pairedRatio(run: () => void, baseline: () => void, firstMs: number, rounds = 8): PairedRatio {
  const calls = Math.max(5, Math.min(40, Math.ceil(150 / Math.max(firstMs, 0.1))));
  const time = (f: () => void) => {
    const ts: number[] = [];
    for (let k = 0; k < calls; k++) {
      const t0 = performance.now();
      f();
      ts.push(performance.now() - t0);
    }
    return ts;
  };
  const ratios: number[] = [];
  let sumCase = 0;
  let sumBase = 0;
  for (let r = 0; r < rounds; r++) {
    let c: number[], b: number[];
    if (r % 2 === 0) {
      b = time(baseline);
      c = time(run);
    } else {
      c = time(run);
      b = time(baseline);
    }
    ratios.push(statsOf(c).median / statsOf(b).median);
    sumCase += c.reduce((x, y) => x + y, 0);
    sumBase += b.reduce((x, y) => x + y, 0);
  }
  return {
    rounds,
    callsPerRound: calls,
    medianRatio: statsOf(ratios).median,
    meanRatio: sumCase / sumBase,
    caseMeanMs: sumCase / (rounds * calls),
    baselineMeanMs: sumBase / (rounds * calls),
  };
}

export interface MachineInfo {
  cpuModel: string;
  logicalCores: number;
  availableParallelism: number;
  totalMemGiB: number;
  platform: string;
  kernel: string;
  simd: string;
  kdThreads: number;
  gpu: { compiled: boolean; available: boolean; reason?: string; devices: { name: string; computeCapability: string; totalMemoryGiB: number }[] };
  loadavgStart: number[];
  loadavgEnd?: number[];
  versions: Record<string, string>;
  commit?: string;
  /** sha256 over native/, lib/, bench/ sources: ties the figures to the source state. */
  sourceHash: string;
  binary: string;
  binaryMtime?: string;
}

function readJson(p: string): { version?: string } {
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as { version?: string };
  } catch {
    return {};
  }
}

/** HEAD's commit, read from .git without running git (undefined outside a checkout). */
export function gitCommit(root = ROOT): string | undefined {
  try {
    let gitDir = join(root, '.git');
    if (!existsSync(gitDir)) return undefined;
    if (statSync(gitDir).isFile()) {
      const m = /gitdir:\s*(.+)/.exec(readFileSync(gitDir, 'utf8'));
      if (!m) return undefined;
      gitDir = join(root, m[1]!.trim());
    }
    const head = readFileSync(join(gitDir, 'HEAD'), 'utf8').trim();
    if (/^[0-9a-f]{40}$/.test(head)) return head;
    const ref = /^ref:\s*(.+)$/.exec(head)?.[1];
    if (!ref) return undefined;
    const loose = join(gitDir, ref);
    if (existsSync(loose)) return readFileSync(loose, 'utf8').trim();
    const packed = join(gitDir, 'packed-refs');
    if (existsSync(packed)) {
      for (const line of readFileSync(packed, 'utf8').split('\n')) {
        const [sha, name] = line.split(' ');
        if (name === ref && sha) return sha;
      }
    }
  } catch {
    /* not available */
  }
  return undefined;
}

function sourceHash(root = ROOT): string {
  const h = createHash('sha256');
  const walk = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) {
        if (name !== 'results') walk(p);
      } else if (/\.(cc|cu|h|ts|py)$/.test(name)) {
        h.update(p.slice(root.length));
        h.update(readFileSync(p));
      }
    }
  };
  for (const d of ['native', 'lib', 'bench']) walk(join(root, d));
  h.update(readFileSync(join(root, 'CMakeLists.txt')));
  return h.digest('hex').slice(0, 16);
}

export function machineInfo(extraVersions: Record<string, string> = {}): MachineInfo {
  const b = kd.backends();
  const cpus = os.cpus();
  let binaryMtime: string | undefined;
  try {
    binaryMtime = statSync(b.binary).mtime.toISOString();
  } catch {
    /* unknown */
  }
  return {
    cpuModel: cpus[0]?.model ?? 'unknown',
    logicalCores: cpus.length,
    availableParallelism: os.availableParallelism(),
    totalMemGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    platform: `${os.platform()} ${os.arch()}`,
    kernel: os.release(),
    simd: b.cpu.simd,
    kdThreads: b.cpu.threads,
    gpu: {
      compiled: b.cuda.compiled,
      available: b.cuda.available,
      reason: b.cuda.reason,
      devices: b.cuda.devices.map((d) => ({ name: d.name, computeCapability: d.computeCapability, totalMemoryGiB: +(d.totalMemory / 2 ** 30).toFixed(1) })),
    },
    loadavgStart: os.loadavg().map((x) => +x.toFixed(2)),
    versions: {
      node: process.version,
      'kd-kernels': readJson(join(ROOT, 'package.json')).version ?? '?',
      tinybench: readJson(join(ROOT, 'node_modules/tinybench/package.json')).version ?? '?',
      ...extraVersions,
    },
    commit: gitCommit(),
    sourceHash: sourceHash(),
    binary: b.binary,
    binaryMtime,
  };
}

// ---------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------

export function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  if (ms >= 1000) return ms.toFixed(0);
  if (ms >= 100) return ms.toFixed(1);
  if (ms >= 1) return ms.toFixed(2);
  if (ms >= 0.01) return ms.toFixed(3);
  return ms.toPrecision(2);
}

export function fmtNum(x: number, digits = 3): string {
  if (!Number.isFinite(x)) return '-';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1000) return x.toFixed(0);
  return x.toPrecision(digits);
}

/** Elements per second with a unit (G/M/k). */
export function fmtRate(x: number): string {
  if (!Number.isFinite(x)) return '-';
  if (x >= 1e9) return `${(x / 1e9).toPrecision(3)} G`;
  if (x >= 1e6) return `${(x / 1e6).toPrecision(3)} M`;
  if (x >= 1e3) return `${(x / 1e3).toPrecision(3)} k`;
  return x.toPrecision(3);
}

export function fmtSpeedup(x: number): string {
  if (!Number.isFinite(x)) return '-';
  if (x >= 100) return `${x.toFixed(0)}×`;
  if (x >= 10) return `${x.toFixed(1)}×`;
  return `${x.toFixed(2)}×`;
}

export function fmtDuration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - 60 * m)
    .toString()
    .padStart(2, '0')} s`;
}

export function shapeStr({ N, V }: Shape): string {
  return `${N}×${V}`;
}

/** A plain-text table: columns padded, numbers right-aligned. */
export function renderTable(header: string[], rows: string[][], rightAlign: boolean[]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (rightAlign[i] ? c.padStart(w[i]!) : c.padEnd(w[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), w.map((n) => '─'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

/** The main table: one row per library case. */
export function resultsTable(results: readonly CaseResult[]): string {
  const header = ['op', 'device', 'dtype', 'thr', 'N×V', 'ms median (p10–p90)', 'GB/s', 'elem/s', 'floor GB/s', 'of floor', 'vs JS loop', 'vs tfjs', 'vs torch'];
  const right = [false, false, false, true, false, false, true, true, true, true, false, false, false];
  const sp = (r: CaseResult, c: ContenderName[]) => {
    for (const name of c) {
      const s = r.speedups[name];
      if (s) return `${fmtSpeedup(s.speedup)}${s.N === r.N && s.V === r.V ? '' : ` @${s.N}×${s.V}`}${c.length > 1 ? ` (${name.slice(6)})` : ''}`;
    }
    return '-';
  };
  const rows = results.map((r) => [
    r.op,
    r.device,
    r.dtype,
    r.threads === null ? 'gpu' : String(r.threads),
    shapeStr(r),
    `${fmtMs(r.stats.median)} (${fmtMs(r.stats.p10)}–${fmtMs(r.stats.p90)})`,
    fmtNum(r.gbps),
    fmtRate(r.elemsPerS),
    `${fmtNum(r.floor.gbps)}${r.floor.drift > 0.15 ? '*' : ''}`,
    `${(100 * r.fractionOfFloor).toFixed(r.fractionOfFloor < 0.1 ? 1 : 0)}%`,
    sp(r, ['js-loop']),
    sp(r, ['tfjs']),
    sp(r, ['torch-compile', 'torch-eager']),
  ]);
  return renderTable(header, rows, right);
}

export function contendersTable(cs: readonly ContenderResult[]): string {
  const header = ['contender', 'op', 'device', 'dtype', 'ran at N×V', 'ms median (p10–p90)', 'GB/s', 'elem/s', 'loss vs library'];
  const right = [false, false, false, false, false, false, true, true, false];
  const rows = cs.map((c) => [
    c.contender,
    c.op,
    c.device,
    c.dtype,
    shapeStr(c),
    `${fmtMs(c.stats.median)} (${fmtMs(c.stats.p10)}–${fmtMs(c.stats.p90)})`,
    fmtNum(c.gbps),
    fmtRate(c.elemsPerS),
    c.check ? `${c.check.ok ? 'ok' : 'MISMATCH'} (rel ${c.check.relErr.toExponential(1)})` : (c.note ?? '-'),
  ]);
  return renderTable(header, rows, right);
}

// ---------------------------------------------------------------------------------
// SVG chart: achieved GB/s against the floor, per op and shape
// ---------------------------------------------------------------------------------

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * A self-contained SVG: one horizontal bar pair per case, grouped by op: the floor
 * (grey, the triad's GB/s at that byte count and thread count) and what the op
 * achieved (blue), with the fraction printed. No plotting dependency.
 */
export function renderSvg(results: readonly CaseResult[], title: string, subtitle: string): string {
  const labelW = 250;
  const barW = 560;
  const textW = 190;
  const rowH = 18;
  const width = labelW + barW + textW + 20;
  const max = Math.max(1e-9, ...results.map((r) => Math.max(r.gbps, r.floor.gbps)));
  const ops = [...new Set(results.map((r) => r.op))];
  const out: string[] = [];
  let y = 64;
  for (const op of ops) {
    const rs = results.filter((r) => r.op === op);
    out.push(`<text x="10" y="${y + 13}" class="op">${esc(op)}</text>`);
    y += rowH + 4;
    for (const r of rs) {
      const label = `${r.device} ${r.dtype} ${r.threads === null ? 'gpu' : `${r.threads} thr`} ${shapeStr(r)}`;
      const wf = (barW * r.floor.gbps) / max;
      const wa = (barW * r.gbps) / max;
      out.push(
        `<g><title>${esc(`${op} ${label}: ${fmtNum(r.gbps)} GB/s of ${fmtNum(r.floor.gbps)} GB/s floor (${(100 * r.fractionOfFloor).toFixed(1)}%), ${fmtMs(r.stats.median)} ms`)}</title>` +
          `<text x="${labelW - 8}" y="${y + 12}" class="l">${esc(label)}</text>` +
          `<rect x="${labelW}" y="${y + 2}" width="${wf.toFixed(1)}" height="${rowH - 4}" class="f"/>` +
          `<rect x="${labelW}" y="${y + 5}" width="${Math.max(0.5, wa).toFixed(1)}" height="${rowH - 10}" class="a"/>` +
          `<text x="${labelW + barW + 8}" y="${y + 12}" class="v">${esc(`${fmtNum(r.gbps)} / ${fmtNum(r.floor.gbps)} GB/s (${(100 * r.fractionOfFloor).toFixed(r.fractionOfFloor < 0.1 ? 1 : 0)}%)`)}</text></g>`,
      );
      y += rowH;
    }
    y += 8;
  }
  // axis ticks
  const ticks: string[] = [];
  const step = niceStep(max / 6);
  for (let v = 0; v <= max + 1e-9; v += step) {
    const x = labelW + (barW * v) / max;
    ticks.push(`<line x1="${x.toFixed(1)}" y1="56" x2="${x.toFixed(1)}" y2="${y}" class="g"/><text x="${x.toFixed(1)}" y="${y + 14}" class="t">${fmtNum(v, 2)}</text>`);
  }
  const height = y + 44;
  return `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="11">
<style>
  .op { font-weight: 600; font-size: 13px; }
  .l { text-anchor: end; fill: #333; }
  .v { fill: #333; }
  .t { text-anchor: middle; fill: #666; font-size: 10px; }
  .g { stroke: #e4e4e4; stroke-width: 1; }
  .f { fill: #d0d0d0; }
  .a { fill: #2f6fdf; }
</style>
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="15" font-weight="600">${esc(title)}</text>
<text x="10" y="38" fill="#555">${esc(subtitle)}</text>
<rect x="${labelW}" y="44" width="12" height="8" class="f"/><text x="${labelW + 16}" y="52">floor: triad over the same bytes (same threads, same run)</text>
<rect x="${labelW + 370}" y="45" width="12" height="6" class="a"/><text x="${labelW + 386}" y="52">achieved (bytes of an ideal fused pass / median time)</text>
${ticks.join('\n')}
${out.join('\n')}
<text x="${labelW + barW / 2}" y="${y + 32}" class="t">GB/s</text>
</svg>
`;
}

function niceStep(x: number): number {
  const p = 10 ** Math.floor(Math.log10(x));
  const m = x / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

// ---------------------------------------------------------------------------------
// Progress (TTY only)
// ---------------------------------------------------------------------------------

export class Progress {
  readonly enabled: boolean;
  #t0 = performance.now();
  #last = '';
  constructor(enabled: boolean) {
    this.enabled = enabled;
  }
  elapsedS(): number {
    return (performance.now() - this.#t0) / 1000;
  }
  /** Rewrites the status line on stderr. */
  update(done: number, total: number, what: string, etaS?: number): void {
    if (!this.enabled) return;
    const eta = etaS === undefined ? '' : ` · ~${fmtDuration(etaS)} left`;
    const line = `[${String(done).padStart(String(total).length)}/${total}] ${what} · ${fmtDuration(this.elapsedS())}${eta}`;
    const cols = process.stderr.columns || 120;
    this.#last = line.length > cols - 1 ? `${line.slice(0, cols - 2)}…` : line;
    process.stderr.write(`\r\x1b[K${this.#last}`);
  }
  /** Prints a message above the status line (TTY only; the runner repeats notes in its summary). */
  note(msg: string): void {
    if (this.enabled) process.stderr.write(`\r\x1b[K${msg}\n${this.#last}`);
  }
  clear(): void {
    if (this.enabled) process.stderr.write('\r\x1b[K');
  }
}
