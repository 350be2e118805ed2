/**
 * sparseKlDiv on the CPU (and CUDA against the CPU) vs the float64 reference
 * (test/reference/sparse.ts) for the four tail modes, per dtype and option, on odd
 * shapes; the statistical check that 'sampled' is unbiased for the full forward-KL
 * gradient while 'renormalize' is not; determinism; bad arguments.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { CUDA, CUDA_SKIP_REASON, errorOf, ISA_LEVELS, supportedIsas, withIsa } from './helpers.js';
import { compareArrays, decodeDtype, encodeDtype, logSoftmax, randomLogits, roundToDtype, type FloatDType, type Reduction } from './reference/common.js';
import { refSparseKl, type SparseTail } from './reference/sparse.js';
import { SPARSE_GRAD_ATOL_REL_MAX, SPARSE_GRAD_RTOL, SPARSE_LOSS_ATOL_PER_WEIGHT, SPARSE_LOSS_RTOL, TOPK_OUT_ROUNDING } from './tolerances.js';

// ---- tolerances: test/tolerances.ts (SPARSE_*, justified there; shared with the WebGPU tests)
const LOSS_ATOL_PER_WEIGHT = SPARSE_LOSS_ATOL_PER_WEIGHT;
const LOSS_RTOL = SPARSE_LOSS_RTOL;
const GRAD_RTOL = SPARSE_GRAD_RTOL;
const GRAD_ATOL_REL_MAX = SPARSE_GRAD_ATOL_REL_MAX;
const OUT_ROUNDING = TOPK_OUT_ROUNDING; // a 16-bit output's unit roundoff (2^-8 bf16, 2^-11 f16)
// Statistical checks: |z| < 5 per gradient element (z from the empirical standard error
// of R >= 20000 i.i.d. rows: a t statistic with that many degrees of freedom is N(0,1)
// to 3 digits). P(|z| >= 5) = 5.7e-7 per element; V = 30 elements per check, 2 checks:
// a false failure of this file's statistical tests has probability < 4e-5.
const Z_MAX = 5;

const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];
const TAILS: SparseTail[] = ['renormalize', 'bucket', 'conditional', 'sampled'];

interface Case {
  n: number;
  v: number;
  k: number;
  dtype: FloatDType;
  tail: SparseTail;
  temperature?: number;
  scaleT2?: boolean;
  labels?: boolean; // every 4th token ignored
  mask?: boolean; // every 5th token masked
  weights?: boolean;
  reduction?: Reduction;
  normalizer?: number;
  gradScale?: number;
  grad?: 'new' | 'inplace' | 'given' | 'none';
  gradDtype?: 'f32' | 'input';
  ld?: number;
  negInf?: boolean;
  valuesDtype?: 'f32' | 'input'; // the teacher values' dtype (topk's valuesDtype)
  seed?: number;
  device?: kd.Device;
}

function name(c: Case): string {
  const { device, ...rest } = c;
  return `${device ?? 'cpu'} ${JSON.stringify(rest)}`;
}

function studentTensor(data: Float64Array, n: number, v: number, dtype: FloatDType, ld = v, device: kd.Device = 'cpu'): kd.Tensor {
  const padded = new Float64Array(Math.max(0, (n - 1) * ld + v));
  for (let i = 0; i < n; i++) for (let j = 0; j < v; j++) padded[i * ld + j] = data[i * v + j]!;
  return kd.tensor(encodeDtype(padded, dtype), [n, v], { dtype, strides: [ld, 1], device });
}

interface Built {
  student: kd.Tensor;
  teacher: kd.SparseTeacher;
  opts: kd.SparseKlDivOptions;
  rounded: Float64Array;
  labels?: Int32Array;
  mask?: Uint8Array;
  weights?: Float32Array;
}

/** The inputs of a case, on its device (the sparse teacher comes from topk / sampleTeacher). */
function build(c: Case): Built {
  const { n, v, k, dtype } = c;
  const seed = c.seed ?? 1;
  const T = c.temperature ?? 1;
  const device = c.device ?? 'cpu';
  const data = randomLogits(n, v, { seed, peaked: true, negInf: c.negInf ? Math.min(20, v - k) : 0 });
  const tdata = randomLogits(n, v, { seed: seed + 100, scale: 2, peaked: true });
  const rounded = roundToDtype(data, dtype);
  const student = studentTensor(data, n, v, dtype, c.ld ?? v, device);
  const tlog = studentTensor(tdata, n, v, dtype, v, device);
  let teacher: kd.SparseTeacher;
  if (c.tail === 'sampled') {
    const s = kd.sampleTeacher(tlog, k, { seed: seed + 7, temperature: T, proposalPower: 0.5 });
    teacher = { indices: s.indices, weights: s.weights };
  } else {
    teacher = kd.topk(tlog, k, { output: 'logprobs', temperature: T, valuesDtype: c.valuesDtype });
  }
  const labels = c.labels ? Int32Array.from({ length: n }, (_, i) => (i % 4 === 1 ? -100 : i % v)) : undefined;
  const mask = c.mask ? Uint8Array.from({ length: n }, (_, i) => (i % 5 === 2 ? 0 : 1)) : undefined;
  const weights = c.weights ? Float32Array.from({ length: n }, (_, i) => 0.25 + (i % 3)) : undefined;
  const opts: kd.SparseKlDivOptions = {
    tail: c.tail,
    temperature: c.temperature,
    scaleByTemperatureSquared: c.scaleT2,
    labels,
    mask,
    weights,
    reduction: c.reduction,
    normalizer: c.normalizer,
    gradScale: c.gradScale,
    gradDtype: c.gradDtype,
  };
  if (c.grad === 'none') opts.grad = false;
  if (c.grad === 'inplace') opts.grad = 'inplace';
  if (c.grad === 'given') opts.grad = kd.empty([n, v], { dtype: c.gradDtype === 'f32' ? 'f32' : dtype, device });
  return { student, teacher, opts, rounded, labels, mask, weights };
}

function hostSlots(t: kd.Tensor | undefined): Float64Array | undefined {
  if (!t) return undefined;
  return decodeDtype(t.toArray() as Float32Array | Uint16Array, t.dtype as FloatDType);
}

function check(c: Case): void {
  const { n, v, k, dtype } = c;
  const b = build(c);
  const r = kd.sparseKlDiv(b.student, b.teacher, b.opts);
  const T = c.temperature ?? 1;
  const ref = refSparseKl(
    b.rounded,
    n,
    v,
    {
      k,
      indices: b.teacher.indices.toArray(),
      values: hostSlots(b.teacher.values),
      tailLogProb: b.teacher.tailLogProb?.toArray(),
      weights: b.teacher.weights?.toArray(),
    },
    {
      tail: c.tail,
      temperature: T,
      scaleByTemperatureSquared: c.scaleT2,
      labels: b.labels,
      mask: b.mask,
      weights: b.weights,
      reduction: c.reduction,
      normalizer: c.normalizer,
      gradScale: c.gradScale,
    },
  );
  const label = name(c);
  const unit = ((c.scaleT2 ?? true) ? T * T : 1) * (b.weights ? 2.25 : 1);
  if ((c.reduction ?? 'batchmean') === 'none') {
    expect(r.loss.shape).toEqual([n]);
    const cl = compareArrays(r.loss.toArray(), ref.loss as Float64Array, { atol: LOSS_ATOL_PER_WEIGHT * unit, rtol: LOSS_RTOL, label: `${label} loss` });
    expect(cl.ok, cl.message).toBe(true);
  } else {
    const cl = compareArrays([r.loss.item()], [ref.loss as number], { atol: 1e-9, rtol: LOSS_RTOL, label: `${label} loss` });
    expect(cl.ok, cl.message).toBe(true);
  }
  if (c.grad === 'none') {
    expect(r.grad).toBeUndefined();
    return;
  }
  const g = r.grad!;
  if (c.grad === 'inplace') expect(g).toBe(b.student);
  const gd = g.dtype as FloatDType;
  const got = g.toFloat32Array(); // exact for every dtype; follows the strides (in place)
  let gmax = 0;
  for (const x of ref.grad) if (Number.isFinite(x)) gmax = Math.max(gmax, Math.abs(x));
  const cg = compareArrays(got, ref.grad, { atol: GRAD_ATOL_REL_MAX * gmax, rtol: GRAD_RTOL + OUT_ROUNDING[gd], label: `${label} grad`, cols: v });
  expect(cg.ok, cg.message).toBe(true);
}

/** Option scenarios applied to every tail and dtype on 41 x 1271 (peaked student). */
const SCENARIOS: Partial<Case>[] = [
  {},
  { temperature: 2, labels: true, reduction: 'sum' },
  { temperature: 0.5, scaleT2: false, mask: true, weights: true, reduction: 'none', gradScale: -0.7 },
  { reduction: 'mean', normalizer: 37, valuesDtype: 'input' },
  { gradDtype: 'f32', grad: 'given', ld: 1280, temperature: 1.5 },
  { negInf: true, labels: true, grad: 'inplace' },
  { grad: 'none', weights: true },
];

describe('sparseKlDiv vs the float64 reference: tails x dtypes x options on 41 x 1271', () => {
  for (const tail of TAILS)
    for (const dtype of DTYPES)
      it(`${tail} ${dtype}`, () => {
        for (const sc of SCENARIOS) check({ n: 41, v: 1271, k: 17, dtype, tail, ...sc });
      });
});

// The suite above runs the best ISA level this machine has; here every level it supports
// (AVX-512, AVX2, generic: the same sources compiled three times). The AVX2 build once
// summed the 'bucket' tail wrong (a GCC 12 miscompile of a select on a uint8_t mask, fixed
// in cpu/sparse_kl_div.cc), which only an AVX2-only CPU would have shown.
describe('sparseKlDiv at every CPU ISA level this machine supports', () => {
  for (const isa of ISA_LEVELS)
    it(`${isa}: every tail, f32 and bf16`, (ctx) => {
      if (!supportedIsas().includes(isa)) return ctx.skip();
      withIsa(isa, () => {
        for (const tail of TAILS)
          for (const dtype of ['f32', 'bf16'] as const) {
            check({ n: 9, v: 1271, k: 17, dtype, tail });
            check({ n: 5, v: 601, k: 3, dtype, tail, negInf: true, labels: true, grad: 'inplace' });
            check({ n: 2, v: 32000, k: 64, dtype, tail, temperature: 2 });
          }
      });
    });
});

describe('shapes: 7 x 123 (k = V), 3 x 32000, 2 x 151936, V = 1, N = 0', () => {
  for (const tail of TAILS)
    it(`${tail}`, () => {
      for (const dtype of DTYPES) {
        check({ n: 7, v: 123, k: tail === 'sampled' ? 40 : 123, dtype, tail, reduction: 'none' }); // empty tail for top-k
        check({ n: 3, v: 32000, k: 64, dtype, tail, temperature: 2 });
        check({ n: 5, v: 1, k: 1, dtype, tail, reduction: 'none' });
      }
      check({ n: 2, v: 151936, k: 64, dtype: 'bf16', tail, reduction: 'sum' });
      const e = kd.sparseKlDiv(kd.tensor(new Float32Array(0), [0, 9]), { indices: kd.tensor(new Int32Array(0), [0, 4]), values: kd.tensor(new Float32Array(0), [0, 4]), tailLogProb: kd.tensor(new Float32Array(0), [0]), weights: kd.tensor(new Float32Array(0), [0, 4]) }, { tail });
      expect(e.loss.item()).toBe(0);
      expect(e.grad!.shape).toEqual([0, 9]);
    });

  it('all tokens ignored: loss 0 and gradient 0, never NaN', () => {
    for (const tail of TAILS) {
      const b = build({ n: 6, v: 300, k: 9, dtype: 'f32', tail });
      const r = kd.sparseKlDiv(b.student, b.teacher, { ...b.opts, labels: new Int32Array(6).fill(-100) });
      expect(r.loss.item()).toBe(0);
      expect(r.grad!.toFloat32Array().every((x) => x === 0)).toBe(true);
    }
  });

  it("'bucket' with every id (k = V) is exactly the dense forward KL", () => {
    const n = 5, v = 200, T = 1.7;
    const s = randomLogits(n, v, { seed: 3 });
    const t = randomLogits(n, v, { seed: 4, scale: 2 });
    const top = kd.topk(kd.tensor(Float32Array.from(t), [n, v]), v, { output: 'logprobs', temperature: T });
    const r = kd.sparseKlDiv(kd.tensor(Float32Array.from(s), [n, v]), top, { tail: 'bucket', temperature: T, reduction: 'none', scaleByTemperatureSquared: false });
    const loss = r.loss.toArray();
    const g = r.grad!.toArray();
    for (let i = 0; i < n; i++) {
      const lq = logSoftmax(roundToDtype(s.subarray(i * v, (i + 1) * v), 'f32'), T);
      const lp = logSoftmax(roundToDtype(t.subarray(i * v, (i + 1) * v), 'f32'), T);
      let kl = 0;
      for (let j = 0; j < v; j++) kl += Math.exp(lp[j]!) * (lp[j]! - lq[j]!);
      expect(Math.abs(loss[i]! - kl)).toBeLessThan(1e-5);
      for (let j = 0; j < v; j++) expect(Math.abs(g[i * v + j]! - (Math.exp(lq[j]!) - Math.exp(lp[j]!)) / T)).toBeLessThan(2e-6);
    }
  });
});

describe('determinism and async', () => {
  it('1 and 2 threads give bitwise identical loss and gradient; sparseKlDivAsync equals sparseKlDiv', async () => {
    for (const tail of TAILS) {
      const b = build({ n: 24, v: 32000, k: 64, dtype: 'bf16', tail, weights: true });
      const before = kd.backends().cpu.threads;
      try {
        kd.setThreads(1);
        const x = kd.sparseKlDiv(b.student, b.teacher, b.opts);
        kd.setThreads(2);
        const y = kd.sparseKlDiv(b.student, b.teacher, b.opts);
        const z = await kd.sparseKlDivAsync(b.student, b.teacher, b.opts);
        for (const o of [y, z]) {
          expect(o.loss.item()).toBe(x.loss.item());
          expect(Buffer.from(o.grad!.toArray().buffer).equals(Buffer.from(x.grad!.toArray().buffer))).toBe(true);
        }
      } finally {
        kd.setThreads(before);
      }
    }
  });
});

describe("'sampled' is unbiased for the full forward-KL gradient; 'renormalize' is not (|z| < Z_MAX)", () => {
  // One (student, teacher) pair replicated into R rows. sampleTeacher draws each row with
  // its own stream, so the per-row gradients of 'sampled' (reduction 'none' gives each
  // token's own dL_i/dz_i) are R i.i.d. draws of the estimator.
  const V = 30, R = 20000, NS = 6, T = 1;
  const z = randomLogits(1, V, { seed: 50 });
  const t = randomLogits(1, V, { seed: 51, scale: 1.5 });
  const lq = logSoftmax(roundToDtype(z, 'f32'), T);
  const lp = logSoftmax(roundToDtype(t, 'f32'), T);
  const full = Float64Array.from({ length: V }, (_, j) => (Math.exp(lq[j]!) - Math.exp(lp[j]!)) / T); // d KL(p||q) / dz
  const rep = (row: Float64Array) => {
    const out = new Float64Array(R * V);
    for (let i = 0; i < R; i++) out.set(row, i * V);
    return kd.tensor(Float32Array.from(out), [R, V]);
  };
  const student = rep(z);
  const teacherLogits = rep(t);
  const opts = { reduction: 'none' as const, temperature: T, scaleByTemperatureSquared: false };

  function zScores(grad: Float32Array): { zmax: number; bias: Float64Array } {
    const mean = new Float64Array(V);
    const m2 = new Float64Array(V);
    for (let i = 0; i < R; i++) for (let j = 0; j < V; j++) mean[j] += grad[i * V + j]!;
    for (let j = 0; j < V; j++) mean[j] /= R;
    for (let i = 0; i < R; i++) for (let j = 0; j < V; j++) m2[j] += (grad[i * V + j]! - mean[j]!) ** 2;
    let zmax = 0;
    const bias = new Float64Array(V);
    for (let j = 0; j < V; j++) {
      const se = Math.sqrt(m2[j]! / (R - 1) / R);
      bias[j] = mean[j]! - full[j]!;
      const zz = se > 0 ? Math.abs(bias[j]!) / se : bias[j] === 0 ? 0 : Infinity;
      zmax = Math.max(zmax, zz);
    }
    return { zmax, bias };
  }

  for (const tau of [1, 0.5])
    it(`'sampled' (proposalPower ${tau}): the mean gradient over ${R} seeds' rows converges to (q - p)/T`, () => {
      const s = kd.sampleTeacher(teacherLogits, NS, { seed: 2024, temperature: T, proposalPower: tau });
      const r = kd.sparseKlDiv(student, { indices: s.indices, weights: s.weights }, { tail: 'sampled', ...opts });
      const { zmax } = zScores(r.grad!.toArray() as Float32Array);
      expect(zmax, `max |z| over ${V} gradient elements`).toBeLessThan(Z_MAX);
    });

  it("'renormalize' (top-k) is biased: its gradient is exactly (q - p~)/T, off by (p - p~)/T", () => {
    const k = 5;
    const top = kd.topk(teacherLogits, k, { output: 'logprobs', temperature: T });
    const r = kd.sparseKlDiv(student, top, { tail: 'renormalize', ...opts });
    const g = r.grad!.toArray() as Float32Array;
    // Deterministic: every row equals the first.
    for (let i = 1; i < R; i += 997) for (let j = 0; j < V; j++) expect(g[i * V + j]).toBe(g[j]);
    const ids = Array.from(top.indices.toArray().subarray(0, k));
    const tail = Math.exp(top.tailLogProb.toArray()[0]!); // teacher mass outside the top k
    expect(tail).toBeGreaterThan(0.2);
    // p~ = p / (1 - tail) on the ids, 0 elsewhere: the bias of the gradient is (p - p~)/T
    let maxBias = 0;
    for (let j = 0; j < V; j++) {
      const p = Math.exp(lp[j]!);
      const pt = ids.includes(j) ? p / (1 - tail) : 0;
      const bias = g[j]! - full[j]!;
      expect(Math.abs(bias - (p - pt) / T)).toBeLessThan(1e-6);
      maxBias = Math.max(maxBias, Math.abs(bias));
    }
    // ... which no amount of averaging removes: the estimator has zero variance, so its
    // bias is (far) more than Z_MAX standard errors of the sampled estimator away.
    const s = kd.sampleTeacher(teacherLogits, NS, { seed: 7, temperature: T });
    const sampled = kd.sparseKlDiv(student, { indices: s.indices, weights: s.weights }, { tail: 'sampled', ...opts });
    const gs = sampled.grad!.toArray() as Float32Array;
    let seMax = 0;
    for (let j = 0; j < V; j++) {
      let m = 0, m2 = 0;
      for (let i = 0; i < R; i++) m += gs[i * V + j]!;
      m /= R;
      for (let i = 0; i < R; i++) m2 += (gs[i * V + j]! - m) ** 2;
      seMax = Math.max(seMax, Math.sqrt(m2 / (R - 1) / R));
    }
    expect(maxBias).toBeGreaterThan(100 * seMax);
    expect(zScores(g).zmax).toBe(Infinity);
  });
});

describe('sparseKlDiv argument errors', () => {
  const s = kd.tensor(new Float32Array(2 * 10), [2, 10]);
  const ids = kd.tensor(Int32Array.from([0, 1, 2, 3, 4, 5]), [2, 3]);
  const vals = kd.tensor(new Float32Array(6).fill(-1.1), [2, 3]);
  const tl = kd.tensor(new Float32Array(2).fill(-1), [2]);
  const w = kd.tensor(new Float32Array(6).fill(0.3), [2, 3]);
  const T = { indices: ids, values: vals, tailLogProb: tl };
  const cases: { name: string; fn: () => unknown; cls: string; code: string; msg: RegExp }[] = [
    { name: 'no options', fn: () => kd.sparseKlDiv(s, T, undefined as never), cls: 'TypeError', code: 'KD_EINVAL', msg: /tail mode are required/ },
    { name: 'no tail', fn: () => kd.sparseKlDiv(s, T, {} as never), cls: 'TypeError', code: 'KD_EINVAL', msg: /tail is required/ },
    { name: 'unknown tail', fn: () => kd.sparseKlDiv(s, T, { tail: 'zero' as never }), cls: 'RangeError', code: 'KD_EINVAL', msg: /'renormalize', 'bucket', 'conditional', 'sampled' for tail/ },
    { name: 'teacher not an object', fn: () => kd.sparseKlDiv(s, ids as never, { tail: 'bucket' }), cls: 'TypeError', code: 'KD_EINVAL', msg: /sparse teacher/ },
    { name: 'unknown teacher key', fn: () => kd.sparseKlDiv(s, { ...T, ids } as never, { tail: 'bucket' }), cls: 'TypeError', code: 'KD_EINVAL', msg: /Unknown key 'ids'/ },
    { name: 'f32 indices', fn: () => kd.sparseKlDiv(s, { ...T, indices: vals }, { tail: 'bucket' }), cls: 'TypeError', code: 'KD_EDTYPE', msg: /indices of dtype i32/ },
    { name: 'indices for other tokens', fn: () => kd.sparseKlDiv(s, { ...T, indices: kd.tensor(new Int32Array(9), [3, 3]) }, { tail: 'bucket' }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /indices of shape \[2, k\]/ },
    { name: 'values k != indices k', fn: () => kd.sparseKlDiv(s, { ...T, values: kd.tensor(new Float32Array(8), [2, 4]) }, { tail: 'renormalize' }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /values of shape \[2, 3\]/ },
    { name: 'renormalize without values', fn: () => kd.sparseKlDiv(s, { indices: ids }, { tail: 'renormalize' }), cls: 'TypeError', code: 'KD_EINVAL', msg: /needs sparseTeacher.values/ },
    { name: 'bucket without tailLogProb', fn: () => kd.sparseKlDiv(s, { indices: ids, values: vals }, { tail: 'bucket' }), cls: 'TypeError', code: 'KD_EINVAL', msg: /needs sparseTeacher.tailLogProb/ },
    { name: 'sampled without weights', fn: () => kd.sparseKlDiv(s, T, { tail: 'sampled' }), cls: 'TypeError', code: 'KD_EINVAL', msg: /needs sparseTeacher.weights/ },
    { name: 'tailLogProb of the wrong length', fn: () => kd.sparseKlDiv(s, { ...T, tailLogProb: kd.tensor(new Float32Array(3), [3]) }, { tail: 'bucket' }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /tailLogProb with 2 elements/ },
    { name: 'id out of range', fn: () => kd.sparseKlDiv(s, { ...T, indices: kd.tensor(Int32Array.from([0, 1, 2, 3, 4, 10]), [2, 3]) }, { tail: 'bucket' }), cls: 'RangeError', code: 'KD_ERANGE', msg: /indices\[1, 2\] = 10 is outside \[0, 10\)/ },
    { name: 'negative id', fn: () => kd.sparseKlDiv(s, { indices: kd.tensor(Int32Array.from([0, -1, 2, 3, 4, 5]), [2, 3]), weights: w }, { tail: 'sampled' }), cls: 'RangeError', code: 'KD_ERANGE', msg: /= -1 is outside/ },
    { name: 'id out of range, checkIds false (native check)', fn: () => kd.sparseKlDiv(s, { ...T, indices: kd.tensor(Int32Array.from([0, 1, 2, 3, 4, 99]), [2, 3]) }, { tail: 'bucket', checkIds: false }), cls: 'KdError', code: 'KD_ERANGE', msg: /ids\[1, 2\] = 99 is outside \[0, 10\)/ },
    { name: 'repeated ids (not sampled)', fn: () => kd.sparseKlDiv(s, { ...T, indices: kd.tensor(Int32Array.from([0, 1, 1, 3, 4, 5]), [2, 3]) }, { tail: 'renormalize' }), cls: 'RangeError', code: 'KD_ERANGE', msg: /repeats id 1/ },
    { name: 'k > 4096', fn: () => kd.sparseKlDiv(kd.tensor(new Float32Array(5000), [1, 5000]), { indices: kd.tensor(new Int32Array(4097), [1, 4097]), weights: kd.tensor(new Float32Array(4097), [1, 4097]) }, { tail: 'sampled' }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /1 to 4096 teacher slots/ },
    { name: 'temperature 0', fn: () => kd.sparseKlDiv(s, T, { tail: 'bucket', temperature: 0 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /temperature/ },
    { name: 'bad reduction', fn: () => kd.sparseKlDiv(s, T, { tail: 'bucket', reduction: 'avg' as never }), cls: 'RangeError', code: 'KD_EINVAL', msg: /for reduction/ },
    { name: 'bad normalizer', fn: () => kd.sparseKlDiv(s, T, { tail: 'bucket', normalizer: -1 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /normalizer/ },
    { name: 'labels of the wrong length', fn: () => kd.sparseKlDiv(s, T, { tail: 'bucket', labels: new Int32Array(3) }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /labels with 2 elements/ },
    { name: 'grad of the wrong shape', fn: () => kd.sparseKlDiv(s, T, { tail: 'bucket', grad: kd.empty([2, 9]) }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /grad of shape \[2, 10\]/ },
    { name: 'unknown option', fn: () => kd.sparseKlDiv(s, T, { tail: 'bucket', teacher: 'logprobs' } as never), cls: 'TypeError', code: 'KD_EINVAL', msg: /Unknown option 'teacher'/ },
    { name: 'stream on the CPU', fn: () => kd.sparseKlDiv(s, T, { tail: 'bucket', stream: 1n }), cls: 'KdError', code: 'KD_EDEVICE', msg: /stream/ },
  ];
  for (const c of cases)
    it(c.name, () => {
      const e = errorOf(c.fn);
      expect(e.name).toBe(c.cls);
      expect(e.code).toBe(c.code);
      expect(e.message).toMatch(c.msg);
    });
});

describe.skipIf(!CUDA)(`sparseKlDiv on CUDA equals the CPU ${CUDA_SKIP_REASON}`, () => {
  function same(c: Case): void {
    const cpu = build(c);
    const gpu = build({ ...c, device: 'cuda:0' });
    const a = kd.sparseKlDiv(cpu.student, cpu.teacher, cpu.opts);
    const b = kd.sparseKlDiv(gpu.student, gpu.teacher, gpu.opts);
    const label = `cuda ${name(c)}`;
    const T = c.temperature ?? 1;
    const unit = ((c.scaleT2 ?? true) ? T * T : 1) * (cpu.weights ? 2.25 : 1);
    const cl = compareArrays(b.loss.toFloat32Array(), a.loss.toFloat32Array(), { atol: LOSS_ATOL_PER_WEIGHT * unit, rtol: LOSS_RTOL, label: `${label} loss` });
    expect(cl.ok, cl.message).toBe(true);
    if (!a.grad) return;
    const ga = a.grad.toFloat32Array();
    const gb = b.grad!.toFloat32Array();
    let gmax = 0;
    for (const x of ga) if (Number.isFinite(x)) gmax = Math.max(gmax, Math.abs(x));
    const gd = a.grad.dtype as FloatDType;
    const cg = compareArrays(gb, ga, { atol: GRAD_ATOL_REL_MAX * gmax, rtol: GRAD_RTOL + 2 * OUT_ROUNDING[gd], label: `${label} grad`, cols: c.v });
    expect(cg.ok, cg.message).toBe(true);
  }
  for (const tail of TAILS)
    for (const dtype of DTYPES)
      it(`${tail} ${dtype}`, () => {
        for (const sc of SCENARIOS) same({ n: 41, v: 1271, k: 17, dtype, tail, ...sc });
        same({ n: 3, v: 32000, k: 64, dtype, tail, temperature: 2 });
        same({ n: 2, v: 151936, k: 64, dtype, tail, reduction: 'none' });
        same({ n: 7, v: 123, k: tail === 'sampled' ? 40 : 123, dtype, tail });
        same({ n: 5, v: 1, k: 1, dtype, tail, reduction: 'none' });
        same({ n: 4, v: 9000, k: 1024, dtype, tail, reduction: 'sum' });
      });
});
