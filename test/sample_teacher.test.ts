/**
 * sampleTeacher (Sparse Logit Sampling) on the CPU (and CUDA against the CPU): weights
 * and log-probs against the float64 reference (test/reference/sparse.ts), statistical
 * unbiasedness of the weights, determinism per seed, bad arguments.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { CUDA, CUDA_SKIP_REASON, errorOf } from './helpers.js';
import { compareArrays, encodeDtype, logSoftmax, randomLogits, roundToDtype, type FloatDType } from './reference/common.js';
import { sampleTeacherProposal } from './reference/sparse.js';

// ---- tolerances and test sizes (defined once) -----------------------------------------
// Log-probs at the drawn ids: (x - m)/T - log S in double from f32 inputs; S is an f32
// sum of exponentials (relative error ~1e-6), so 1e-5 absolute is a 10x margin.
const LOGPROB_TOL = { atol: 1e-5, rtol: 1e-6 };
// Weights p_id / (n r'_id): the proposal r' = q/Q is exact (fixed point) and p comes from
// S as above, so a weight is within ~1e-6 relative of p_id / (n r'_id); against the
// float64 p / (n r) the fixed-point quantisation of r adds < 2^-20 relative for every id
// whose proposal is above 2^-25 of the largest (all ids the tests draw). 1e-5 relative.
const WEIGHT_RTOL = 1e-5;
// Statistical checks: a z-test per id (and per gradient element in sparse_kl_div.test)
// with |z| < 5. Under the null hypothesis (the estimator is unbiased) the statistic is
// a mean of 100000 i.i.d. bounded terms, ~N(0, 1): P(|z| >= 5) = 5.7e-7 per check, so
// a configuration with V = 24 ids fails falsely with probability < 24 x 5.7e-7 =
// 1.4e-5, and this whole file (3 configurations x 2 statistics x 24 ids) < 1e-4. The
// standard errors are 0.2% - 0.6% of p_i, so a 3% bias is caught (the power test).
const Z_MAX = 5;

const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];

function logitsTensor(data: Float64Array, n: number, v: number, dtype: FloatDType, device: kd.Device = 'cpu'): kd.Tensor {
  return kd.tensor(encodeDtype(data, dtype), [n, v], { dtype, device });
}

/** The teacher distribution of one row of (dtype-rounded) logits at T, in float64. */
function teacherP(row: ArrayLike<number>, T: number): Float64Array {
  return logSoftmax(row, T).map(Math.exp);
}

describe('sampleTeacher values against the float64 reference', () => {
  for (const dtype of DTYPES)
    it(`weights and log-probs, ${dtype}, odd shapes, proposal powers 1, 0.5, 0`, () => {
      for (const [n, v, ns, T, tau] of [
        [41, 1271, 16, 1, 1],
        [7, 123, 64, 2, 0.5],
        [3, 32000, 50, 1, 0],
        [2, 151936, 64, 1.5, 1],
        [4, 1, 5, 1, 0.7],
      ] as const) {
        const data = randomLogits(n, v, { seed: n * 7 + v, peaked: v > 1000, negInf: v > 10 ? 5 : 0 });
        const rounded = roundToDtype(data, dtype);
        const r = kd.sampleTeacher(logitsTensor(data, n, v, dtype), ns, { seed: 1234, temperature: T, proposalPower: tau });
        const ids = r.indices.toArray();
        const w = r.weights.toArray();
        const lp = r.logprobs!.toArray();
        const expW = new Float64Array(n * ns);
        const expLp = new Float64Array(n * ns);
        for (let i = 0; i < n; i++) {
          const row = rounded.subarray(i * v, (i + 1) * v);
          const logp = logSoftmax(row, T);
          const p = logp.map(Math.exp);
          const prop = sampleTeacherProposal(p, tau);
          for (let d = 0; d < ns; d++) {
            const id = ids[i * ns + d]!;
            expect(id >= 0 && id < v && row[id]! > -Infinity, `id ${id} drawn with p > 0`).toBe(true);
            expW[i * ns + d] = p[id]! / (ns * prop[id]!);
            expLp[i * ns + d] = logp[id]!;
          }
        }
        const label = `sampleTeacher ${n}x${v} n=${ns} ${dtype} T=${T} tau=${tau}`;
        const cw = compareArrays(w, expW, { atol: 0, rtol: WEIGHT_RTOL, label: `${label} weights` });
        expect(cw.ok, cw.message).toBe(true);
        const cl = compareArrays(lp, expLp, { ...LOGPROB_TOL, label: `${label} logprobs` });
        expect(cl.ok, cl.message).toBe(true);
        if (tau === 1) for (let j = 0; j < w.length; j++) expect(Math.abs(w[j]! * ns - 1)).toBeLessThan(1e-4); // r = p: w = 1/n
      }
    });

  it('[B, T, V] logits give [B, T, n] outputs; logprobs: false omits them; N = 0 works', () => {
    const t = kd.tensor(Float32Array.from(randomLogits(6, 50, { seed: 3 })), [2, 3, 50]);
    const r = kd.sampleTeacher(t, 7, { seed: 1, logprobs: false });
    expect(r.indices.shape).toEqual([2, 3, 7]);
    expect(r.weights.shape).toEqual([2, 3, 7]);
    expect(r.logprobs).toBeUndefined();
    const e = kd.sampleTeacher(kd.tensor(new Float32Array(0), [0, 9]), 3, { seed: 0 });
    expect(e.indices.shape).toEqual([0, 3]);
  });

  it('rows without a distribution (a NaN, +inf or only -inf) give NaN weights, only in that row', () => {
    const v = 20;
    const data = randomLogits(4, v, { seed: 4 });
    data[3] = NaN;
    data[v + 2] = Infinity;
    for (let j = 0; j < v; j++) data[2 * v + j] = -Infinity;
    const r = kd.sampleTeacher(logitsTensor(data, 4, v, 'f32'), 3, { seed: 9 });
    const w = r.weights.toArray();
    for (let i = 0; i < 3; i++) for (let d = 0; d < 3; d++) expect(Number.isNaN(w[i * 3 + d]!)).toBe(true);
    for (let d = 0; d < 3; d++) expect(Number.isFinite(w[9 + d]!)).toBe(true);
  });
});

describe('determinism', () => {
  const data = randomLogits(16, 32000, { seed: 5, scale: 2 });
  it('the same seed gives bitwise the same draws (number or bigint seed), another seed other ids', async () => {
    const t = logitsTensor(data, 16, 32000, 'bf16');
    const a = kd.sampleTeacher(t, 32, { seed: 77, proposalPower: 0.5 });
    const b = kd.sampleTeacher(t, 32, { seed: 77n, proposalPower: 0.5 });
    const c = await kd.sampleTeacherAsync(t, 32, { seed: 77, proposalPower: 0.5 });
    const d = kd.sampleTeacher(t, 32, { seed: 78, proposalPower: 0.5 });
    for (const x of [b, c]) {
      expect(Array.from(x.indices.toArray())).toEqual(Array.from(a.indices.toArray()));
      expect(Buffer.from(x.weights.toArray().buffer).equals(Buffer.from(a.weights.toArray().buffer))).toBe(true);
    }
    expect(Array.from(d.indices.toArray())).not.toEqual(Array.from(a.indices.toArray()));
    const big = kd.sampleTeacher(t, 8, { seed: (1n << 64n) - 1n });
    expect(big.indices.toArray().every((id) => id >= 0 && id < 32000)).toBe(true);
  });

  it('1 and 2 threads draw bitwise the same', () => {
    const t = logitsTensor(data, 16, 32000, 'f32');
    const before = kd.backends().cpu.threads;
    try {
      kd.setThreads(1);
      const a = kd.sampleTeacher(t, 64, { seed: 3, temperature: 2, proposalPower: 0.3 });
      kd.setThreads(2);
      const b = kd.sampleTeacher(t, 64, { seed: 3, temperature: 2, proposalPower: 0.3 });
      expect(Array.from(b.indices.toArray())).toEqual(Array.from(a.indices.toArray()));
      expect(Buffer.from(b.weights.toArray().buffer).equals(Buffer.from(a.weights.toArray().buffer))).toBe(true);
      expect(Buffer.from(b.logprobs!.toArray().buffer).equals(Buffer.from(a.logprobs!.toArray().buffer))).toBe(true);
    } finally {
      kd.setThreads(before);
    }
  });
});

describe('unbiasedness: E[sum of weights at id i] = p_i (z-tests, see Z_MAX)', () => {
  // One teacher row replicated into R rows: every row draws with its own counter-based
  // stream, so the rows are R independent repetitions (and two seeds double them).
  const V = 24;
  const R = 50000;
  const NS = 8;
  const base = randomLogits(1, V, { seed: 11, scale: 1.5 });
  for (const tau of [1, 0.5, 0]) {
    it(`proposalPower ${tau}: mean weight per id -> p, draw frequencies -> r`, () => {
      const T = 1.3;
      const p = teacherP(roundToDtype(base, 'f32'), T);
      const r = sampleTeacherProposal(p, tau);
      const rows = new Float64Array(R * V);
      for (let i = 0; i < R; i++) rows.set(base, i * V);
      const t = logitsTensor(rows, R, V, 'f32');
      const sumW = new Float64Array(V);
      const hits = new Float64Array(V);
      let reps = 0;
      for (const seed of [1, 2]) {
        const s = kd.sampleTeacher(t, NS, { seed, temperature: T, proposalPower: tau });
        const ids = s.indices.toArray();
        const w = s.weights.toArray();
        for (let j = 0; j < ids.length; j++) {
          sumW[ids[j]!] += w[j]!;
          hits[ids[j]!] += 1;
        }
        reps += R;
      }
      let zMaxW = 0;
      let zMaxR = 0;
      for (let i = 0; i < V; i++) {
        // per repetition Y_i = sum of the weights at i: E = p_i, Var = (p_i^2 / n)(1/r_i - 1)
        const mean = sumW[i]! / reps;
        const se = Math.sqrt(((p[i]! * p[i]!) / NS) * (1 / r[i]! - 1) / reps);
        const zw = se > 0 ? (mean - p[i]!) / se : mean === p[i]! ? 0 : Infinity;
        // draws at i ~ Binomial(n R, r_i)
        const total = NS * reps;
        const zr = (hits[i]! - total * r[i]!) / Math.sqrt(total * r[i]! * (1 - r[i]!));
        zMaxW = Math.max(zMaxW, Math.abs(zw));
        zMaxR = Math.max(zMaxR, Math.abs(zr));
      }
      expect(zMaxW, `max |z| of the mean weights (tau=${tau})`).toBeLessThan(Z_MAX);
      expect(zMaxR, `max |z| of the draw frequencies (tau=${tau})`).toBeLessThan(Z_MAX);
    });
  }

  it('the test has power: a 3% bias in the weights is detected', () => {
    // The same statistic on deliberately biased weights (x 1.03) must exceed Z_MAX.
    const T = 1;
    const p = teacherP(roundToDtype(base, 'f32'), T);
    const r = sampleTeacherProposal(p, 0.5);
    const rows = new Float64Array(R * V);
    for (let i = 0; i < R; i++) rows.set(base, i * V);
    const s = kd.sampleTeacher(logitsTensor(rows, R, V, 'f32'), NS, { seed: 5, proposalPower: 0.5 });
    const ids = s.indices.toArray();
    const w = s.weights.toArray();
    const sumW = new Float64Array(V);
    for (let j = 0; j < ids.length; j++) sumW[ids[j]!] += 1.03 * w[j]!;
    let zMax = 0;
    for (let i = 0; i < V; i++) {
      const se = Math.sqrt(((p[i]! * p[i]!) / NS) * (1 / r[i]! - 1) / R);
      zMax = Math.max(zMax, Math.abs((sumW[i]! / R - p[i]!) / se));
    }
    expect(zMax).toBeGreaterThan(Z_MAX);
  });
});

describe('sampleTeacher argument errors', () => {
  const t = kd.tensor(new Float32Array(2 * 10), [2, 10]);
  const cases: { name: string; fn: () => unknown; cls: string; code: string; msg: RegExp }[] = [
    { name: 'no options', fn: () => kd.sampleTeacher(t, 2, undefined as never), cls: 'TypeError', code: 'KD_EINVAL', msg: /seed/ },
    { name: 'no seed', fn: () => kd.sampleTeacher(t, 2, {} as never), cls: 'TypeError', code: 'KD_EINVAL', msg: /seed is required/ },
    { name: 'negative seed', fn: () => kd.sampleTeacher(t, 2, { seed: -1 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /seed/ },
    { name: 'fractional seed', fn: () => kd.sampleTeacher(t, 2, { seed: 1.5 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /seed/ },
    { name: 'seed >= 2^64', fn: () => kd.sampleTeacher(t, 2, { seed: 1n << 64n }), cls: 'RangeError', code: 'KD_EINVAL', msg: /\[0, 2\^64\)/ },
    { name: 'string seed', fn: () => kd.sampleTeacher(t, 2, { seed: '1' as never }), cls: 'TypeError', code: 'KD_EINVAL', msg: /number or bigint for seed/ },
    { name: 'n = 0', fn: () => kd.sampleTeacher(t, 0, { seed: 1 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /between 1 and 4096 for n/ },
    { name: 'n > 4096', fn: () => kd.sampleTeacher(t, 4097, { seed: 1 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /for n/ },
    { name: 'fractional n', fn: () => kd.sampleTeacher(t, 2.5, { seed: 1 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /for n/ },
    { name: 'temperature 0', fn: () => kd.sampleTeacher(t, 2, { seed: 1, temperature: 0 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /temperature/ },
    { name: 'proposalPower < 0', fn: () => kd.sampleTeacher(t, 2, { seed: 1, proposalPower: -0.5 }), cls: 'RangeError', code: 'KD_EINVAL', msg: />= 0 for proposalPower/ },
    { name: 'proposalPower NaN', fn: () => kd.sampleTeacher(t, 2, { seed: 1, proposalPower: NaN }), cls: 'RangeError', code: 'KD_EINVAL', msg: /proposalPower/ },
    { name: 'logprobs not boolean', fn: () => kd.sampleTeacher(t, 2, { seed: 1, logprobs: 1 as never }), cls: 'TypeError', code: 'KD_EINVAL', msg: /boolean for logprobs/ },
    { name: 'unknown option', fn: () => kd.sampleTeacher(t, 2, { seed: 1, samples: 3 } as never), cls: 'TypeError', code: 'KD_EINVAL', msg: /Unknown option 'samples'/ },
    { name: 'i32 logits', fn: () => kd.sampleTeacher(kd.tensor(new Int32Array(4), [2, 2]), 1, { seed: 1 }), cls: 'TypeError', code: 'KD_EDTYPE', msg: /f32, f16 or bf16/ },
  ];
  for (const c of cases)
    it(c.name, () => {
      const e = errorOf(c.fn);
      expect(e.name).toBe(c.cls);
      expect(e.code).toBe(c.code);
      expect(e.message).toMatch(c.msg);
    });
});

describe.skipIf(!CUDA)(`sampleTeacher on CUDA draws the same ids as the CPU ${CUDA_SKIP_REASON}`, () => {
  for (const dtype of DTYPES)
    it(`same seed, same ids; weights and log-probs close, ${dtype}`, () => {
      for (const [n, v, ns, T, tau] of [
        [41, 1271, 16, 1, 1],
        [7, 123, 64, 2, 0.5],
        [3, 32000, 50, 1, 0],
        [2, 151936, 64, 1.5, 1],
        [64, 5000, 128, 1, 0.25],
        [4, 1, 5, 1, 0.7],
      ] as const) {
        const data = randomLogits(n, v, { seed: n + v, peaked: true, negInf: v > 10 ? 3 : 0 });
        const opts = { seed: 42n, temperature: T, proposalPower: tau };
        const cpu = kd.sampleTeacher(logitsTensor(data, n, v, dtype), ns, opts);
        const gpu = kd.sampleTeacher(logitsTensor(data, n, v, dtype, 'cuda:0'), ns, opts);
        const label = `cuda sampleTeacher ${n}x${v} ${dtype} tau=${tau}`;
        expect(Array.from(gpu.indices.toArray()), `${label} ids`).toEqual(Array.from(cpu.indices.toArray()));
        const cw = compareArrays(gpu.weights.toArray(), cpu.weights.toArray(), { atol: 0, rtol: WEIGHT_RTOL, label: `${label} weights` });
        expect(cw.ok, cw.message).toBe(true);
        const cl = compareArrays(gpu.logprobs!.toArray(), cpu.logprobs!.toArray(), { ...LOGPROB_TOL, label: `${label} logprobs` });
        expect(cl.ok, cl.message).toBe(true);
      }
    });
});
