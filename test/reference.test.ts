// Checks of the float64 references in test/reference/: gradients against central finite
// differences, and losses against small cases worked out by hand.
//
// Finite-difference tolerance. For each coordinate we use h = 1e-5 · max(1, |z|) and
// divide by the step actually taken, (z + h) − (z − h), so the representation error of
// the step does not count. The error of the central difference then has two parts:
//   truncation  ≈ h² · |f'''| / 6: the losses are smooth in z with derivatives of order
//               (1/T)^k (softmax Jacobians), so for T ≥ 0.5 and |z| ≲ 1 this is
//               ~1e-10 · 8 / 6 ≈ 1e-10; on peaked entries (|z| ~ 40, h ~ 4e-4) the
//               softmax is saturated there, so the third derivative is tiny and it
//               stays well below 1e-8.
//   rounding    ≈ ε_64 · |f| / h ≈ 2.2e-16 · |f| / 1e-5 ≈ 2e-11 · |f|, with |f| ≲ 100.
// Hence |fd − analytic| ≤ atol + rtol·|analytic| with atol = 1e-8 · max(1, |f|) (scaled
// with the loss for the rounding part) and rtol = 1e-6, ample for those bounds while a
// wrong gradient (a missing term, a wrong factor of T) is off by ≥ 1e-3 relative.

import { describe, expect, it } from 'vitest';
import {
  compareArrays,
  fromBf16Bits,
  fromF16Bits,
  logSoftmax,
  logsumexp,
  mulberry32,
  randn,
  randomLogits,
  roundToDtype,
  roundToFormat,
  softmax,
  toBf16Bits,
  toF16Bits,
} from './reference/common.js';
import type { CompareOptions, Reduction } from './reference/common.js';
import { DIVERGENCES, refDivergence } from './reference/divergences.js';
import type { Divergence, DivergenceOptions, TeacherKind } from './reference/divergences.js';
import { refCrossEntropy, refDistillationLoss, refTokenStats } from './reference/distillation.js';
import type { DistillationOptions } from './reference/distillation.js';
import { refSampleTeacherWeights, refSparseKl, refTopk, sampleTeacherProposal } from './reference/sparse.js';
import type { SparseTail, SparseTeacher } from './reference/sparse.js';

// ---------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, opts: CompareOptions): void {
  const r = compareArrays(actual, expected, opts);
  expect(r.ok, r.message).toBe(true);
}

function scalar(loss: number | Float64Array): number {
  if (typeof loss === 'number') return loss;
  let s = 0;
  for (const x of loss) s += x;
  return s;
}

/**
 * Central finite differences of f at z over the first V columns of each of N rows (row
 * stride ld). Returns a dense [N·V] gradient. Non-finite entries (−inf logits) cannot be
 * perturbed: their derivative is reported as 0 (the analytic gradient must be 0 there).
 */
function finiteDiff(f: (z: Float64Array) => number, z0: ArrayLike<number>, N: number, V: number, ld: number): Float64Array {
  const z = Float64Array.from(z0);
  const out = new Float64Array(N * V);
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < V; j++) {
      const idx = i * ld + j;
      const x = z[idx]!;
      if (!Number.isFinite(x)) continue;
      const h = 1e-5 * Math.max(1, Math.abs(x));
      const xp = x + h;
      const xm = x - h;
      z[idx] = xp;
      const fp = f(z);
      z[idx] = xm;
      const fm = f(z);
      z[idx] = x;
      out[i * V + j] = (fp - fm) / (xp - xm);
    }
  }
  return out;
}

/** Checks an analytic gradient against finite differences of `f`; −inf entries must have exactly 0 gradient. */
function checkGrad(
  label: string,
  f: (z: Float64Array) => number,
  z: ArrayLike<number>,
  grad: Float64Array,
  N: number,
  V: number,
  ld: number,
): void {
  const f0 = f(Float64Array.from(z));
  expect(Number.isFinite(f0), `${label}: loss ${f0} should be finite`).toBe(true);
  const fd = finiteDiff(f, z, N, V, ld);
  expectClose(grad, fd, { atol: 1e-8 * Math.max(1, Math.abs(f0)), rtol: 1e-6, label, cols: V });
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < V; j++) {
      if (!Number.isFinite(z[i * ld + j]!)) expect(grad[i * V + j] === 0, `${label}: grad at -inf logit [${i},${j}] is ${grad[i * V + j]}`).toBe(true);
    }
  }
}

/** Copies an N × V matrix into one with row stride ld, filling the padding with NaN (must never be read). */
function pad(x: ArrayLike<number>, N: number, V: number, ld: number): Float64Array {
  const out = new Float64Array(N * ld).fill(NaN);
  for (let i = 0; i < N; i++) for (let j = 0; j < V; j++) out[i * ld + j] = x[i * V + j]!;
  return out;
}

function logSoftmaxRows(x: ArrayLike<number>, N: number, V: number, T = 1): Float64Array {
  const out = new Float64Array(N * V);
  for (let i = 0; i < N; i++) out.set(logSoftmax(Array.from({ length: V }, (_, j) => x[i * V + j]!), T), i * V);
  return out;
}

const REDUCTIONS: readonly Reduction[] = ['none', 'sum', 'mean', 'batchmean'];
const TEMPERATURES = [0.5, 1, 2] as const;

interface DivCase {
  name: string;
  divergence: Divergence;
  beta?: number;
  skew?: number;
}

const DIV_CASES: DivCase[] = [
  { name: 'forward-kl', divergence: 'forward-kl' },
  { name: 'reverse-kl', divergence: 'reverse-kl' },
  { name: 'jsd beta=0', divergence: 'jsd', beta: 0 },
  { name: 'jsd beta=0.3', divergence: 'jsd', beta: 0.3 },
  { name: 'jsd beta=0.5', divergence: 'jsd', beta: 0.5 },
  { name: 'jsd beta=1', divergence: 'jsd', beta: 1 },
  { name: 'tvd', divergence: 'tvd' },
  { name: 'skew-forward-kl skew=0', divergence: 'skew-forward-kl', skew: 0 },
  { name: 'skew-forward-kl skew=0.1', divergence: 'skew-forward-kl', skew: 0.1 },
  { name: 'skew-forward-kl skew=0.5', divergence: 'skew-forward-kl', skew: 0.5 },
  { name: 'skew-reverse-kl skew=0', divergence: 'skew-reverse-kl', skew: 0 },
  { name: 'skew-reverse-kl skew=0.1', divergence: 'skew-reverse-kl', skew: 0.1 },
  { name: 'skew-reverse-kl skew=0.5', divergence: 'skew-reverse-kl', skew: 0.5 },
];

/** Is the divergence finite when p_j = 0 < q_j (teacher bans a token the student allows)? */
function finiteWithTeacherZero(c: DivCase): boolean {
  if (c.divergence === 'reverse-kl') return false;
  if (c.divergence === 'jsd' && c.beta === 1) return false;
  if (c.divergence === 'skew-reverse-kl' && c.skew === 0) return false;
  return true;
}

/** Is the divergence finite when q_j = 0 < p_j (student bans a token the teacher allows)? */
function finiteWithStudentZero(c: DivCase): boolean {
  if (c.divergence === 'forward-kl') return false;
  if (c.divergence === 'jsd' && c.beta === 0) return false;
  if (c.divergence === 'skew-forward-kl' && c.skew === 0) return false;
  return true;
}

interface DataCase {
  name: string;
  N: number;
  V: number;
  student: Float64Array;
  teacherLogits: Float64Array;
}

/** Small odd shapes: plain, peaked, and −inf entries (shared, teacher-only, student-only). */
function dataCases(c: DivCase): DataCase[] {
  const out: DataCase[] = [
    { name: '3x7 plain', N: 3, V: 7, student: randomLogits(3, 7, { seed: 11 }), teacherLogits: randomLogits(3, 7, { seed: 12 }) },
    {
      name: '5x13 peaked',
      N: 5,
      V: 13,
      student: randomLogits(5, 13, { seed: 21, peaked: true }),
      teacherLogits: randomLogits(5, 13, { seed: 22, peaked: true, scale: 2 }),
    },
  ];
  // A token banned by both (the same column is −inf in student and teacher).
  const s = randomLogits(3, 7, { seed: 31, scale: 1.5 });
  const t = randomLogits(3, 7, { seed: 32 });
  s[1 * 7 + 4] = -Infinity;
  t[1 * 7 + 4] = -Infinity;
  s[2 * 7 + 0] = -Infinity;
  t[2 * 7 + 0] = -Infinity;
  out.push({ name: '3x7 -inf shared', N: 3, V: 7, student: s, teacherLogits: t });
  if (finiteWithTeacherZero(c)) {
    const t2 = randomLogits(3, 7, { seed: 42, negInf: 1 });
    out.push({ name: '3x7 -inf teacher only', N: 3, V: 7, student: randomLogits(3, 7, { seed: 41 }), teacherLogits: t2 });
  }
  if (finiteWithStudentZero(c)) {
    const s3 = randomLogits(3, 7, { seed: 51, negInf: 2 });
    out.push({ name: '3x7 -inf student only', N: 3, V: 7, student: s3, teacherLogits: randomLogits(3, 7, { seed: 52 }) });
  }
  return out;
}

interface SelectionCase {
  name: string;
  /** Options given the row count (labels/mask/weights sized to N). */
  make: (N: number, V: number) => Partial<DivergenceOptions> & { padS?: number; padT?: number };
}

const SELECTION_CASES: SelectionCase[] = [
  { name: 'all tokens', make: () => ({}) },
  {
    name: 'labels(1 ignored)+weights+gradScale',
    make: (N, V) => ({
      labels: Array.from({ length: N }, (_, i) => (i === 1 ? -100 : (i * 3) % V)),
      weights: Array.from({ length: N }, (_, i) => 0.5 + 0.25 * i),
      gradScale: 0.7,
    }),
  },
  {
    name: 'mask+custom ignoreIndex+normalizer+weights+gradScale<0+strides',
    make: (N) => ({
      labels: Array.from({ length: N }, (_, i) => (i === N - 1 ? 7 : 0)),
      ignoreIndex: 7,
      mask: Array.from({ length: N }, (_, i) => (i === 0 ? 0 : 1)),
      weights: Array.from({ length: N }, (_, i) => 1.5 - 0.2 * i),
      normalizer: 3.5,
      gradScale: -1.3,
      padS: 3,
      padT: 2,
    }),
  },
];

// ---------------------------------------------------------------------------------
// common.ts
// ---------------------------------------------------------------------------------

describe('common: logSoftmax / logsumexp', () => {
  it('matches a hand case and sums to one', () => {
    // softmax([log 1, log 2, log 7]) = [0.1, 0.2, 0.7]
    const ls = logSoftmax([0, Math.log(2), Math.log(7)]);
    expectClose(ls.map(Math.exp), [0.1, 0.2, 0.7], { atol: 0, rtol: 1e-15, label: 'softmax' });
    expect(logsumexp([0, Math.log(2), Math.log(7)])).toBeCloseTo(Math.log(10), 15);
    // temperature: softmax([2 log 3, 0] / 2) = [0.75, 0.25]
    expectClose(softmax([2 * Math.log(3), 0], 2), [0.75, 0.25], { rtol: 1e-15, label: 'tempered softmax' });
  });

  it('is stable for huge logits', () => {
    const ls = logSoftmax([1000, 1000, -1000]);
    expectClose(ls, [-Math.LN2, -Math.LN2, -2000 - Math.LN2], { rtol: 1e-15, label: 'huge' });
  });

  it('handles -inf entries without NaN; NaN only for all -inf or NaN input', () => {
    const ls = logSoftmax([-Infinity, 0, 0]);
    expect(ls[0]).toBe(-Infinity);
    expectClose(ls.subarray(1), [-Math.LN2, -Math.LN2], { rtol: 1e-15, label: '-inf row' });
    expect(logsumexp([-Infinity, -Infinity])).toBe(-Infinity);
    expect(Array.from(logSoftmax([-Infinity, -Infinity])).every(Number.isNaN)).toBe(true);
    expect(Array.from(logSoftmax([1, NaN, 2])).every(Number.isNaN)).toBe(true);
    expect(Number.isNaN(logsumexp([1, NaN]))).toBe(true);
  });
});

describe('common: PRNG and random logits', () => {
  it('mulberry32 is deterministic and in [0, 1)', () => {
    const a = mulberry32(123);
    const b = mulberry32(123);
    for (let i = 0; i < 1000; i++) {
      const x = a();
      expect(x).toBe(b());
      expect(x >= 0 && x < 1).toBe(true);
    }
    expect(mulberry32(1)()).not.toBe(mulberry32(2)());
  });

  it('randn has roughly zero mean and unit variance', () => {
    const rng = mulberry32(7);
    let s = 0;
    let s2 = 0;
    const n = 20000;
    for (let i = 0; i < n; i++) {
      const x = randn(rng);
      s += x;
      s2 += x * x;
    }
    expect(Math.abs(s / n)).toBeLessThan(0.05);
    expect(Math.abs(s2 / n - 1)).toBeLessThan(0.05);
  });

  it('randomLogits: peaked rows are not flat, negInf sets exactly that many -inf', () => {
    const x = randomLogits(4, 50, { seed: 3, peaked: true, negInf: 2 });
    for (let i = 0; i < 4; i++) {
      const r = Array.from(x.subarray(i * 50, (i + 1) * 50));
      expect(r.filter((v) => v === -Infinity).length).toBe(2);
      const top3 = Array.from(softmax(r)).sort((a, b) => b - a).slice(0, 3);
      expect(top3.reduce((a, b) => a + b, 0)).toBeGreaterThan(0.9);
    }
    expect(randomLogits(2, 3, { seed: 9 })).toEqual(randomLogits(2, 3, { seed: 9 }));
  });
});

describe('common: f32 / f16 / bf16 rounding', () => {
  it('roundToFormat with f32 parameters equals Math.fround (normals, subnormals, overflow)', () => {
    const rng = mulberry32(5);
    const specials = [0, -0, 1, -1, 2 ** -149, 2 ** -150, 3 * 2 ** -151, 2 ** -126, 3.4028235677973366e38, 3.4028235677973366e38 * (1 + 2 ** -25), 1e39, 1 + 2 ** -24, 1 + 3 * 2 ** -24];
    for (const x of specials) expect(Object.is(roundToFormat(x, 23, -126, 127), Math.fround(x)), `x=${x}`).toBe(true);
    for (let i = 0; i < 20000; i++) {
      const x = (rng() - 0.5) * 2 ** Math.floor(rng() * 300 - 160);
      expect(roundToFormat(x, 23, -126, 127), `x=${x}`).toBe(Math.fround(x));
    }
  });

  it('f16 known values (RNE, subnormals, overflow, NaN, -0)', () => {
    const cases: Array<[number, number]> = [
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff], // max finite
      [65519.99, 0x7bff], // just below the rounding boundary
      [65520, 0x7c00], // halfway to 2^16: ties to even → inf
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // halfway between 0 and 2^-24: ties to even → 0
      [3 * 2 ** -26, 0x0001], // 0.75 · 2^-24 → 2^-24
      [2 ** -14, 0x0400], // smallest normal
      [1 + 2 ** -11, 0x3c00], // tie → even mantissa (0)
      [1 + 3 * 2 ** -11, 0x3c02], // tie → even mantissa (2)
      [1 + 2 ** -11 + 2 ** -30, 0x3c01], // just above the tie
      [0.1, 0x2e66],
      [-0, 0x8000],
      [0, 0x0000],
    ];
    for (const [x, bits] of cases) expect(toF16Bits(x), `x=${x}`).toBe(bits);
    expect(toF16Bits(NaN)).toBe(0x7e00);
    expect(Number.isNaN(fromF16Bits(0x7e00))).toBe(true);
    expect(fromF16Bits(0x7bff)).toBe(65504);
    expect(fromF16Bits(0x0001)).toBe(2 ** -24);
    expect(Object.is(fromF16Bits(0x8000), -0)).toBe(true);
  });

  it('f16: every bit pattern round-trips and every value rounds to a nearest neighbour', () => {
    for (let b = 0; b < 0x10000; b++) {
      const v = fromF16Bits(b);
      if (Number.isNaN(v)) {
        expect(Number.isNaN(fromF16Bits(toF16Bits(v)))).toBe(true);
        continue;
      }
      expect(toF16Bits(v)).toBe(b);
    }
    // random doubles in the f16 range: the result is at least as close as its neighbours,
    // and on an exact tie the mantissa is even
    const rng = mulberry32(17);
    for (let i = 0; i < 20000; i++) {
      const x = (rng() * 2 - 1) * 2 ** Math.floor(rng() * 42 - 26);
      const b = toF16Bits(x);
      const v = fromF16Bits(b);
      for (const nb of [b - 1, b + 1]) {
        if ((nb & 0x7fff) >= 0x7c00 || nb < 0 || nb > 0xffff || ((nb ^ b) & 0x8000) !== 0) continue;
        const d = Math.abs(x - v);
        const dn = Math.abs(x - fromF16Bits(nb));
        expect(d <= dn, `x=${x}: ${v} vs neighbour ${fromF16Bits(nb)}`).toBe(true);
        if (d === dn) expect(b & 1, `tie at x=${x}`).toBe(0);
      }
    }
  });

  it('bf16 agrees with the f32 bit trick (RNE) and round-trips every bit pattern', () => {
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    const trick = (x: number): number => {
      f[0] = x;
      const bits = u[0]!;
      return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
    };
    const rng = mulberry32(19);
    for (let i = 0; i < 50000; i++) {
      u[0] = Math.floor(rng() * 2 ** 32);
      const x = f[0]!;
      if (Number.isNaN(x)) continue;
      expect(toBf16Bits(x), `x=${x}`).toBe(trick(x));
    }
    expect(toBf16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie → even
    expect(toBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie → even
    expect(toBf16Bits(NaN)).toBe(0x7fc0);
    expect(toBf16Bits(-Infinity)).toBe(0xff80);
    expect(toBf16Bits(3.4e38)).toBe(0x7f80); // above max bf16 (≈3.3895e38) + half ulp → inf
    for (let b = 0; b < 0x10000; b++) {
      const v = fromBf16Bits(b);
      if (Number.isNaN(v)) expect(Number.isNaN(fromBf16Bits(toBf16Bits(v)))).toBe(true);
      else expect(toBf16Bits(v)).toBe(b);
    }
  });

  it('roundToDtype', () => {
    expectClose(roundToDtype([0.1, 1e-9, 70000], 'f32'), [Math.fround(0.1), Math.fround(1e-9), 70000], { label: 'f32' });
    expectClose(roundToDtype([0.1, 1e-9, 70000], 'f16'), [0.0999755859375, 0, Infinity], { label: 'f16' });
    expectClose(roundToDtype([0.1, 70000], 'bf16'), [0.10009765625, 70144], { label: 'bf16' });
  });
});

describe('common: compareArrays', () => {
  it('treats NaN == NaN and same-sign infinities as equal', () => {
    const r = compareArrays([NaN, Infinity, -Infinity, 1], [NaN, Infinity, -Infinity, 1]);
    expect(r.ok, r.message).toBe(true);
  });

  it('counts NaN and inf disagreements and lists the first 10 mismatches with indices', () => {
    const expected = Array.from({ length: 30 }, (_, i) => i);
    const actual = expected.map((x, i) => (i >= 5 ? x + 1 : x));
    actual[0] = NaN;
    actual[1] = Infinity;
    const expected2 = [...expected];
    expected2[2] = -Infinity;
    actual[2] = Infinity;
    const r = compareArrays(actual, expected2, { atol: 0.5, label: 'demo', cols: 10 });
    expect(r.ok).toBe(false);
    expect(r.nanMismatches).toBe(1);
    expect(r.infMismatches).toBe(2);
    expect(r.mismatches).toBe(3 + 25);
    expect(r.message).toContain('demo: 28 of 30 elements differ');
    expect(r.message).toContain('[0] (row 0, col 0)');
    expect(r.message).toContain('[11] (row 1, col 1)');
    expect(r.message).not.toContain('[12]');
    expect(r.message).toContain('and 18 more');
  });

  it('uses |a - e| <= atol + rtol*|e| and fails on length mismatch', () => {
    expect(compareArrays([1.09], [1], { atol: 0.05, rtol: 0.05 }).ok).toBe(true);
    expect(compareArrays([1.11], [1], { atol: 0.05, rtol: 0.05 }).ok).toBe(false);
    expect(compareArrays([-0], [0]).ok).toBe(true);
    const r = compareArrays([1, 2], [1, 2, 3]);
    expect(r.ok).toBe(false);
    expect(r.message).toContain('length mismatch');
  });
});

// ---------------------------------------------------------------------------------
// divergences: finite differences
// ---------------------------------------------------------------------------------

describe('refDivergence gradients vs finite differences', () => {
  for (const c of DIV_CASES) {
    for (const T of TEMPERATURES) {
      for (const kind of ['logits', 'logprobs'] as TeacherKind[]) {
        it(`${c.name} T=${T} teacher=${kind}`, () => {
          for (const data of dataCases(c)) {
            const { N, V } = data;
            // For 'logprobs', hand the teacher as log-probs at T = 1; at T = 1 also try an
            // unnormalised variant (used as is, Liger's convention): the gradients are exact for it too.
            const teachers: Array<[string, Float64Array]> =
              kind === 'logits'
                ? [['', data.teacherLogits]]
                : [['', logSoftmaxRows(data.teacherLogits, N, V)]];
            if (kind === 'logprobs' && T === 1) {
              teachers.push([' unnormalised', logSoftmaxRows(data.teacherLogits, N, V).map((x) => x + 0.3)]);
            }
            for (const [tName, teacher] of teachers) {
              for (const sel of SELECTION_CASES) {
                for (const reduction of REDUCTIONS) {
                  for (const scaleByTemperatureSquared of [true, false]) {
                    const { padS = 0, padT = 0, ...selOpts } = sel.make(N, V);
                    const ldS = V + padS;
                    const ldT = V + padT;
                    const s = pad(data.student, N, V, ldS);
                    const t = pad(teacher, N, V, ldT);
                    const opts: DivergenceOptions = {
                      divergence: c.divergence,
                      beta: c.beta,
                      skew: c.skew,
                      temperature: T,
                      teacherKind: kind,
                      reduction,
                      scaleByTemperatureSquared,
                      ldS,
                      ldT,
                      ...selOpts,
                    };
                    const gs = opts.gradScale ?? 1;
                    const res = refDivergence(s, t, N, V, opts);
                    const f = (z: Float64Array): number => gs * scalar(refDivergence(z, t, N, V, opts).loss);
                    const label = `${c.name} T=${T} ${kind}${tName} ${data.name} ${sel.name} ${reduction} T2=${scaleByTemperatureSquared}`;
                    checkGrad(label, f, s, res.grad, N, V, ldS);
                    // unselected rows: exactly zero loss and gradient
                    if (opts.labels || opts.mask) {
                      for (let i = 0; i < N; i++) {
                        const ignored = opts.labels?.[i] === (opts.ignoreIndex ?? -100) || opts.mask?.[i] === 0;
                        if (!ignored) continue;
                        expect(res.perToken[i]).toBe(0);
                        expect(res.grad.subarray(i * V, (i + 1) * V).every((g) => g === 0)).toBe(true);
                      }
                    }
                  }
                }
              }
            }
          }
        });
      }
    }
  }
});

// ---------------------------------------------------------------------------------
// divergences: hand cases
// ---------------------------------------------------------------------------------

describe('refDivergence hand cases (V = 2)', () => {
  // Student logits [log 9, 0] → q = [0.9, 0.1]; teacher logits [0, 0] → p = [0.5, 0.5].
  const z = [Math.log(9), 0];
  const t = [0, 0];
  const one = (divergence: Divergence, extra: Partial<DivergenceOptions> = {}) =>
    refDivergence(z, t, 1, 2, { divergence, ...extra });
  const tol = { atol: 1e-15, rtol: 1e-14 };

  it('forward KL(p‖q) = 0.5 log(0.5/0.9) + 0.5 log(0.5/0.1) = 0.5 log(25/9) = log(5/3) ≈ 0.5108256; grad q − p = [0.4, −0.4]', () => {
    const r = one('forward-kl');
    expectClose([r.loss as number], [Math.log(5 / 3)], { ...tol, label: 'loss' });
    expectClose(r.grad, [0.4, -0.4], { ...tol, label: 'grad' });
  });

  it('reverse KL(q‖p) = 0.9 log 1.8 + 0.1 log 0.2 ≈ 0.3680642; grad = q(log q − log p − L) = [0.09 log 9, −0.09 log 9]', () => {
    // j=0: 0.9 (log 1.8 − 0.9 log 1.8 − 0.1 log 0.2) = 0.9 · 0.1 · (log 1.8 − log 0.2) = 0.09 log 9
    const r = one('reverse-kl');
    expectClose([r.loss as number], [0.9 * Math.log(1.8) + 0.1 * Math.log(0.2)], { ...tol, label: 'loss' });
    expectClose(r.grad, [0.09 * Math.log(9), -0.09 * Math.log(9)], { ...tol, label: 'grad' });
  });

  it('jsd β=0.5: m = [0.7, 0.3]; 0.5·(0.5 log(5/7) + 0.5 log(5/3)) + 0.5·(0.9 log(9/7) + 0.1 log(1/3)) ≈ 0.1017493', () => {
    // KL(p‖m) = 0.5 log(25/21) ≈ 0.0871767, KL(q‖m) ≈ 0.2261830 − 0.1098612 = 0.1163218
    // grad j=0: 0.5 · 0.9 · (log(9/7) − KL(q‖m)) = 0.45 · 0.1 · (log(9/7) − log(1/3)) = 0.045 log(27/7)
    const r = one('jsd', { beta: 0.5 });
    const expected = 0.5 * (0.5 * Math.log(5 / 7) + 0.5 * Math.log(5 / 3)) + 0.5 * (0.9 * Math.log(9 / 7) + 0.1 * Math.log(1 / 3));
    expectClose([r.loss as number], [expected], { ...tol, label: 'loss' });
    expect(Math.abs((r.loss as number) - 0.1017493)).toBeLessThan(1e-7);
    expectClose(r.grad, [0.045 * Math.log(27 / 7), -0.045 * Math.log(27 / 7)], { ...tol, label: 'grad' });
  });

  it('jsd β=0 is exactly forward KL and β=1 exactly reverse KL (===, loss and grad)', () => {
    const rng = mulberry32(77);
    const s = Array.from({ length: 4 * 9 }, () => 3 * randn(rng));
    const tt = Array.from({ length: 4 * 9 }, () => 3 * randn(rng));
    for (const T of TEMPERATURES) {
      const fwd = refDivergence(s, tt, 4, 9, { divergence: 'forward-kl', temperature: T });
      const rev = refDivergence(s, tt, 4, 9, { divergence: 'reverse-kl', temperature: T });
      const j0 = refDivergence(s, tt, 4, 9, { divergence: 'jsd', beta: 0, temperature: T });
      const j1 = refDivergence(s, tt, 4, 9, { divergence: 'jsd', beta: 1, temperature: T });
      expect(j0.loss).toBe(fwd.loss);
      expect(j1.loss).toBe(rev.loss);
      expect(j0.grad).toEqual(fwd.grad);
      expect(j1.grad).toEqual(rev.grad);
    }
  });

  it('tvd = ½(|0.5−0.9| + |0.5−0.1|) = 0.4; h = [½, −½], Σqh = 0.4, grad = q(h − 0.4) = [0.09, −0.09]', () => {
    const r = one('tvd');
    expectClose([r.loss as number], [0.4], { ...tol, label: 'loss' });
    expectClose(r.grad, [0.09, -0.09], { ...tol, label: 'grad' });
  });

  it('skew KLs: λ=0 equals plain KL; forward skew λ=0.5 by hand', () => {
    expectClose([one('skew-forward-kl', { skew: 0 }).loss as number], [Math.log(5 / 3)], { ...tol, label: 'skew fwd λ=0' });
    expectClose([one('skew-reverse-kl', { skew: 0 }).loss as number], [one('reverse-kl').loss as number], { ...tol, label: 'skew rev λ=0' });
    // λ = 0.5: r = 0.5 p + 0.5 q = [0.7, 0.3]; KL(p‖r) = 0.5 log(5/7) + 0.5 log(5/3)
    expectClose([one('skew-forward-kl', { skew: 0.5 }).loss as number], [0.5 * Math.log(5 / 7) + 0.5 * Math.log(5 / 3)], { ...tol, label: 'skew fwd λ=0.5' });
    // skew reverse λ = 0.5: r = 0.5 p + 0.5 q = [0.7, 0.3]; KL(q‖r) = 0.9 log(9/7) + 0.1 log(1/3)
    expectClose([one('skew-reverse-kl', { skew: 0.5 }).loss as number], [0.9 * Math.log(9 / 7) + 0.1 * Math.log(1 / 3)], { ...tol, label: 'skew rev λ=0.5' });
  });

  it('temperature: T=2 with logits [2 log 9, 0] gives the same q; loss scaled by T² = 4, grad = T²(q−p)/T = [0.8, −0.8]', () => {
    const r = refDivergence([2 * Math.log(9), 0], t, 1, 2, { divergence: 'forward-kl', temperature: 2 });
    expectClose([r.loss as number], [4 * Math.log(5 / 3)], { ...tol, label: 'loss' });
    expectClose(r.grad, [0.8, -0.8], { ...tol, label: 'grad' });
    const u = refDivergence([2 * Math.log(9), 0], t, 1, 2, { divergence: 'forward-kl', temperature: 2, scaleByTemperatureSquared: false });
    expectClose([u.loss as number], [Math.log(5 / 3)], { ...tol, label: 'unscaled loss' });
    expectClose(u.grad, [0.2, -0.2], { ...tol, label: 'unscaled grad' });
  });

  it('reductions, weights, labels, normalizer and gradScale by hand (two identical rows, w = [1, 3])', () => {
    const zz = [...z, ...z];
    const tt = [...t, ...t];
    const base = { divergence: 'forward-kl' as const, weights: [1, 3] };
    const L = Math.log(5 / 3);
    const loss = (extra: Partial<DivergenceOptions>) => refDivergence(zz, tt, 2, 2, { ...base, ...extra }).loss;
    expectClose([loss({ reduction: 'sum' }) as number], [4 * L], { ...tol, label: 'sum' });
    expectClose([loss({ reduction: 'batchmean' }) as number], [2 * L], { ...tol, label: 'batchmean' });
    expectClose([loss({ reduction: 'mean' }) as number], [L], { ...tol, label: 'mean = sum / (count·V)' });
    expectClose(loss({ reduction: 'none' }) as Float64Array, [L, 3 * L], { ...tol, label: 'none' });
    expectClose([loss({ reduction: 'sum', normalizer: 8 }) as number], [L / 2], { ...tol, label: 'sum / normalizer' });
    expectClose([loss({ reduction: 'batchmean', normalizer: 8 }) as number], [L / 2], { ...tol, label: 'batchmean / normalizer' });
    expectClose([loss({ reduction: 'batchmean', labels: [1, -100] }) as number], [L], { ...tol, label: 'one ignored' });
    expectClose([loss({ reduction: 'batchmean', mask: [0, 1] }) as number], [3 * L], { ...tol, label: 'masked' });
    const g = refDivergence(zz, tt, 2, 2, { ...base, reduction: 'batchmean', gradScale: 0.5 }).grad;
    // d/dz of (1·KL_0 + 3·KL_1)/2, times 0.5: row 0 → 0.25 (q − p), row 1 → 0.75 (q − p)
    expectClose(g, [0.1, -0.1, 0.3, -0.3], { ...tol, label: 'grad' });
  });

  it('V = 1 gives zero loss and zero gradient for every divergence', () => {
    for (const divergence of DIVERGENCES) {
      for (const T of TEMPERATURES) {
        const r = refDivergence([3.7, -1, 12], [0.2, 5, -8], 3, 1, { divergence, temperature: T, reduction: 'sum' });
        expect(r.loss, divergence).toBe(0);
        expect(Array.from(r.grad)).toEqual([0, 0, 0]);
      }
    }
  });

  it('all tokens ignored: loss 0 (zeros for none), gradient 0, never NaN', () => {
    const s = randomLogits(3, 5, { seed: 1 });
    const tt = randomLogits(3, 5, { seed: 2 });
    for (const divergence of DIVERGENCES) {
      for (const reduction of REDUCTIONS) {
        for (const sel of [{ labels: [-100, -100, -100] }, { mask: [0, 0, 0] }]) {
          const r = refDivergence(s, tt, 3, 5, { divergence, reduction, ...sel });
          if (reduction === 'none') expect(Array.from(r.loss as Float64Array)).toEqual([0, 0, 0]);
          else expect(r.loss).toBe(0);
          expect(r.grad.every((g) => g === 0)).toBe(true);
        }
        expect(refDivergence([], [], 0, 5, { divergence, reduction }).loss).toEqual(reduction === 'none' ? new Float64Array(0) : 0);
      }
    }
  });

  it('teacher log-probs at T=1 are used as given (no renormalisation)', () => {
    // t = log([0.5, 0.5]) + 0.1 → p = 0.5 e^0.1 each (sums to e^0.1 ≠ 1)
    const lp = [Math.log(0.5) + 0.1, Math.log(0.5) + 0.1];
    const r = refDivergence(z, lp, 1, 2, { divergence: 'forward-kl', teacherKind: 'logprobs' });
    const pj = 0.5 * Math.exp(0.1);
    expectClose([r.loss as number], [pj * (lp[0]! - Math.log(0.9)) + pj * (lp[1]! - Math.log(0.1))], { ...tol, label: 'loss' });
    // exact gradient of that loss: q·Σp − p
    expectClose(r.grad, [0.9 * 2 * pj - pj, 0.1 * 2 * pj - pj], { ...tol, label: 'grad' });
    // at T ≠ 1, log-probs are re-softmaxed like logits
    const a = refDivergence(z, lp, 1, 2, { divergence: 'forward-kl', teacherKind: 'logprobs', temperature: 2 });
    const b = refDivergence(z, lp, 1, 2, { divergence: 'forward-kl', teacherKind: 'logits', temperature: 2 });
    expect(a.loss).toBe(b.loss);
  });

  it('properties: jsd β=0.5 is symmetric, bounded by log 2; tvd in [0, 1]; KLs ≥ 0', () => {
    const s = randomLogits(6, 11, { seed: 5, peaked: true });
    const tt = randomLogits(6, 11, { seed: 6, scale: 3 });
    const none = { reduction: 'none' as const, scaleByTemperatureSquared: false };
    const a = refDivergence(s, tt, 6, 11, { divergence: 'jsd', beta: 0.5, ...none }).loss as Float64Array;
    const b = refDivergence(tt, s, 6, 11, { divergence: 'jsd', beta: 0.5, ...none }).loss as Float64Array;
    expectClose(a, b, { atol: 1e-15, rtol: 1e-12, label: 'jsd symmetric' });
    for (const x of a) expect(x >= 0 && x <= Math.LN2).toBe(true);
    for (const x of refDivergence(s, tt, 6, 11, { divergence: 'tvd', ...none }).loss as Float64Array) expect(x >= 0 && x <= 1).toBe(true);
    for (const d of DIVERGENCES) for (const x of refDivergence(s, tt, 6, 11, { divergence: d, ...none }).loss as Float64Array) expect(x).toBeGreaterThanOrEqual(0);
  });

  it('a NaN in one row gives NaN in that row only; padding columns are never read', () => {
    const s = randomLogits(3, 5, { seed: 8 });
    const tt = randomLogits(3, 5, { seed: 9 });
    s[1 * 5 + 2] = NaN;
    const r = refDivergence(s, tt, 3, 5, { divergence: 'jsd', reduction: 'none' });
    const l = r.loss as Float64Array;
    expect(Number.isNaN(l[1])).toBe(true);
    expect(Number.isFinite(l[0]) && Number.isFinite(l[2])).toBe(true);
    expect(r.grad.subarray(0, 5).every(Number.isFinite) && r.grad.subarray(10).every(Number.isFinite)).toBe(true);
    const s2 = randomLogits(3, 5, { seed: 8 });
    const compact = refDivergence(s2, tt, 3, 5, { divergence: 'reverse-kl', temperature: 2 });
    const strided = refDivergence(pad(s2, 3, 5, 9), pad(tt, 3, 5, 6), 3, 5, { divergence: 'reverse-kl', temperature: 2, ldS: 9, ldT: 6 });
    expect(strided.loss).toBe(compact.loss);
    expect(strided.grad).toEqual(compact.grad);
  });

  it('rejects bad parameters', () => {
    expect(() => one('jsd', { beta: 1.5 })).toThrow(RangeError);
    expect(() => one('skew-forward-kl', { skew: 1 })).toThrow(RangeError);
    expect(() => one('forward-kl', { temperature: 0 })).toThrow(RangeError);
    expect(() => one('forward-kl', { normalizer: 0 })).toThrow(RangeError);
    expect(() => refDivergence([1, 2, 3], [1, 2, 3], 2, 2, { divergence: 'tvd' })).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------------------------
// distillation loss and token statistics
// ---------------------------------------------------------------------------------

describe('refCrossEntropy', () => {
  it('label smoothing by hand: z = [log 9, 0], y = 0, ε = 0.1', () => {
    // q0 = [0.9, 0.1]; loss = 0.9·(−log 0.9) + 0.1 · ½(−log 0.9 − log 0.1)
    //                       = −0.95 log 0.9 − 0.05 log 0.1 ≈ 0.1000925 + 0.1151293 = 0.2152218
    // grad = q0 − (0.9·[1, 0] + 0.05) = [0.9 − 0.95, 0.1 − 0.05] = [−0.05, 0.05]
    const r = refCrossEntropy([Math.log(9), 0], 0, 0.1);
    expectClose([r.loss], [-0.95 * Math.log(0.9) - 0.05 * Math.log(0.1)], { rtol: 1e-14, label: 'loss' });
    expect(Math.abs(r.loss - 0.2152218)).toBeLessThan(1e-7);
    expectClose(r.grad, [-0.05, 0.05], { atol: 1e-15, label: 'grad' });
    const plain = refCrossEntropy([Math.log(9), 0], 1);
    expectClose([plain.loss], [-Math.log(0.1)], { rtol: 1e-14, label: 'no smoothing' });
  });

  it('gradient vs finite differences', () => {
    const z = randomLogits(1, 9, { seed: 4, peaked: true });
    for (const eps of [0, 0.1, 0.3]) {
      const r = refCrossEntropy(z, 3, eps);
      checkGrad(`CE eps=${eps}`, (x) => refCrossEntropy(x, 3, eps).loss, z, r.grad, 1, 9, 9);
    }
  });
});

describe('refDistillationLoss', () => {
  for (const c of DIV_CASES) {
    for (const T of TEMPERATURES) {
      it(`gradient vs finite differences: ${c.name} T=${T}`, () => {
        const N = 5;
        const V = 11;
        const s = randomLogits(N, V, { seed: 61, peaked: true });
        const t = randomLogits(N, V, { seed: 62, scale: 2 });
        // a banned token shared by both (fine for every divergence; ε = 0 keeps the CE finite)
        s[2 * V + 5] = -Infinity;
        t[2 * V + 5] = -Infinity;
        const labels = [3, -100, 0, 10, 7];
        for (const labelSmoothing of [0, 0.1]) {
          for (const reduction of REDUCTIONS) {
            for (const sel of SELECTION_CASES) {
              // labels are the CE targets here (row 1 ignored with the default −100)
              const { padS = 0, padT = 0, labels: _l, ignoreIndex: _ii, ...selOpts } = sel.make(N, V);
              void _l;
              void _ii;
              const ldS = V + padS;
              const ldT = V + padT;
              const sp = pad(s, N, V, ldS);
              const tp = pad(t, N, V, ldT);
              // with smoothing, the −inf entry would make the CE infinite: use a finite student row there
              if (labelSmoothing > 0) sp[2 * ldS + 5] = 0.3;
              const opts: DistillationOptions = {
                divergence: c.divergence,
                beta: c.beta,
                skew: c.skew,
                temperature: T,
                hardWeight: 0.7,
                softWeight: 1.3,
                labelSmoothing,
                reduction,
                ldS,
                ldT,
                ...selOpts,
              };
              if (labelSmoothing > 0 && !finiteWithTeacherZero(c)) continue; // the teacher bans a token the student now allows
              const r = refDistillationLoss(sp, tp, labels, N, V, opts);
              const gs = opts.gradScale ?? 1;
              const f = (z: Float64Array): number => gs * scalar(refDistillationLoss(z, tp, labels, N, V, opts).loss);
              checkGrad(`distill ${c.name} T=${T} eps=${labelSmoothing} ${reduction} ${sel.name}`, f, sp, r.grad, N, V, ldS);
              expect(r.hard[1]).toBe(0);
              expect(r.soft[1]).toBe(0);
              expect(r.total[1]).toBe(0);
            }
          }
        }
      });
    }
  }

  it('hard/soft/total by hand: q = [0.9, 0.1], p = [0.5, 0.5], y = 0, hardWeight 0.5, softWeight 2, w = 3', () => {
    const r = refDistillationLoss([Math.log(9), 0], [0, 0], [0], 1, 2, {
      divergence: 'forward-kl',
      hardWeight: 0.5,
      softWeight: 2,
      weights: [3],
      reduction: 'sum',
    });
    const hard = -Math.log(0.9);
    const soft = Math.log(5 / 3);
    expectClose(r.hard, [hard], { rtol: 1e-14, label: 'hard (unweighted)' });
    expectClose(r.soft, [soft], { rtol: 1e-14, label: 'soft (unweighted)' });
    expectClose(r.total, [3 * (0.5 * hard + 2 * soft)], { rtol: 1e-14, label: 'total' });
    expectClose([r.loss as number], [3 * (0.5 * hard + 2 * soft)], { rtol: 1e-14, label: 'loss' });
    // grad = 3·(0.5·(q0 − onehot) + 2·(q − p)) = 3·(0.5·[−0.1, 0.1] + 2·[0.4, −0.4]) = [2.25, −2.25]
    expectClose(r.grad, [2.25, -2.25], { atol: 1e-14, label: 'grad' });
  });

  it('the soft term uses tempered logits with T², the hard term the raw logits', () => {
    const z = [2 * Math.log(9), 0]; // softmax(z/2) = [0.9, 0.1]; softmax(z) = [81/82, 1/82]
    const r = refDistillationLoss(z, [0, 0], [1], 1, 2, { divergence: 'forward-kl', temperature: 2 });
    expectClose(r.hard, [Math.log(82)], { rtol: 1e-14, label: 'hard' });
    expectClose(r.soft, [4 * Math.log(5 / 3)], { rtol: 1e-14, label: 'soft' });
  });

  it('all tokens ignored: loss 0, gradient 0', () => {
    for (const reduction of REDUCTIONS) {
      const r = refDistillationLoss(randomLogits(2, 4), randomLogits(2, 4, { seed: 3 }), [-100, -100], 2, 4, { divergence: 'jsd', reduction });
      expect(scalar(r.loss)).toBe(0);
      expect(r.grad.every((g) => g === 0)).toBe(true);
    }
  });

  it('softWeight = 0 reduces to cross-entropy only', () => {
    const s = randomLogits(3, 6, { seed: 13 });
    const r = refDistillationLoss(s, randomLogits(3, 6, { seed: 14 }), [1, 2, 3], 3, 6, { divergence: 'tvd', softWeight: 0, reduction: 'sum' });
    let ce = 0;
    for (let i = 0; i < 3; i++) ce += refCrossEntropy(s.subarray(i * 6, i * 6 + 6), i + 1).loss;
    expectClose([r.loss as number], [ce], { rtol: 1e-14, label: 'CE only' });
  });
});

describe('refTokenStats', () => {
  it('hand case: KLs and entropies', () => {
    const r = refTokenStats([Math.log(9), 0, -Infinity], [0, 0, -Infinity], 1, 3, { sampled: [1] });
    expectClose(r.forwardKl, [Math.log(5 / 3)], { rtol: 1e-14, label: 'forwardKl' });
    expectClose(r.reverseKl, [0.9 * Math.log(1.8) + 0.1 * Math.log(0.2)], { rtol: 1e-14, label: 'reverseKl' });
    expectClose(r.studentEntropy, [-0.9 * Math.log(0.9) - 0.1 * Math.log(0.1)], { rtol: 1e-14, label: 'H(q)' });
    expectClose(r.teacherEntropy, [Math.LN2], { rtol: 1e-14, label: 'H(p)' });
    expectClose(r.studentLogProb!, [Math.log(0.1)], { rtol: 1e-14, label: 'log q[s]' });
    expectClose(r.teacherLogProb!, [-Math.LN2], { rtol: 1e-14, label: 'log p[s]' });
    expect(Array.from(r.teacherRank!)).toEqual([0]); // tie with the argmax: nothing strictly above
  });

  it('teacherRank counts strictly greater tempered logits (ties and -inf)', () => {
    const row = [3, 1, 3, 2, -Infinity];
    const teacher = [...row, ...row, ...row, ...row, ...row];
    const r = refTokenStats(randomLogits(5, 5), teacher, 5, 5, { sampled: [3, 0, 2, 4, 1], temperature: 0.5 });
    expect(Array.from(r.teacherRank!)).toEqual([2, 0, 0, 4, 3]);
    expect(r.teacherLogProb![3]).toBe(-Infinity);
  });

  it('agrees with refDivergence per token and omits sampled stats when not asked', () => {
    const s = randomLogits(4, 9, { seed: 71, peaked: true });
    const t = randomLogits(4, 9, { seed: 72 });
    const st = refTokenStats(s, t, 4, 9, { temperature: 2 });
    const opts = { temperature: 2, reduction: 'none' as const, scaleByTemperatureSquared: false };
    expect(st.forwardKl).toEqual(refDivergence(s, t, 4, 9, { divergence: 'forward-kl', ...opts }).perToken);
    expect(st.reverseKl).toEqual(refDivergence(s, t, 4, 9, { divergence: 'reverse-kl', ...opts }).perToken);
    expect(st.studentLogProb).toBeUndefined();
    expect(st.teacherRank).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------
// top-k and sparse KD
// ---------------------------------------------------------------------------------

describe('refTopk', () => {
  it('hand case with ties: lower index first', () => {
    const x = [1, 3, 3, -Infinity, 2, 3, 0];
    const r = refTopk(x, 1, 7, 4);
    expect(Array.from(r.indices)).toEqual([1, 2, 5, 4]);
    expect(Array.from(r.values)).toEqual([3, 3, 3, 2]);
    // tail = {0, 3, 6}: mass (e^1 + e^0) / (3e^3 + e^2 + e^1 + e^0)
    const expected = Math.log(Math.E + 1) - Math.log(3 * Math.exp(3) + Math.exp(2) + Math.E + 1);
    expectClose(r.tailLogProb, [expected], { rtol: 1e-14, label: 'tail' });
  });

  it('matches a full sort for every k, with many ties, strides and both outputs', () => {
    const N = 4;
    const V = 9;
    const ld = 12;
    const rng = mulberry32(91);
    const x = new Float64Array(N * ld).fill(NaN); // padding must never be read
    for (let i = 0; i < N; i++) for (let j = 0; j < V; j++) x[i * ld + j] = Math.floor(rng() * 4) - 1;
    for (const T of TEMPERATURES) {
      for (let k = 0; k <= V; k++) {
        const lg = refTopk(x, N, V, k, { ld, temperature: T });
        const lp = refTopk(x, N, V, k, { ld, temperature: T, output: 'logprobs' });
        for (let i = 0; i < N; i++) {
          const rowX = Array.from({ length: V }, (_, j) => x[i * ld + j]!);
          const order = rowX.map((v, j) => ({ v, j })).sort((a, b) => b.v - a.v || a.j - b.j).map((e) => e.j);
          const logp = logSoftmax(rowX, T);
          expect(Array.from(lg.indices.subarray(i * k, (i + 1) * k))).toEqual(order.slice(0, k));
          expect(Array.from(lg.values.subarray(i * k, (i + 1) * k))).toEqual(order.slice(0, k).map((j) => rowX[j]));
          expect(Array.from(lp.values.subarray(i * k, (i + 1) * k))).toEqual(order.slice(0, k).map((j) => logp[j]));
          // tail mass another way: 1 − Σ top-k probs (fine here: the tail is not tiny)
          let head = 0;
          for (const j of order.slice(0, k)) head += Math.exp(logp[j]!);
          if (k === V) expect(lg.tailLogProb[i]).toBe(-Infinity);
          else expectClose([lg.tailLogProb[i]!], [Math.log(1 - head)], { atol: 1e-13, rtol: 1e-12, label: `tail k=${k}` });
        }
      }
    }
  });

  it('tailLogProb is accurate for a tail mass ~1e-30 (where log(1 − Σ top-k) fails)', () => {
    // x = [69, 69, 69, 0 × 7], k = 3. Tail mass = 7 / (3 e^69 + 7)
    //   ⇒ log tail = log 7 − 69 − log(3 + 7 e^−69) = log(7/3) − 69 − log1p((7/3) e^−69) ≈ −68.15 (mass ≈ 2.2e-30)
    const x = [69, 69, 69, 0, 0, 0, 0, 0, 0, 0];
    for (const T of [1, 2]) {
      const a = 69 / T;
      const expected = Math.log(7 / 3) - a - Math.log1p((7 / 3) * Math.exp(-a));
      const r = refTopk(x, 1, 10, 3, { temperature: T });
      expectClose(r.tailLogProb, [expected], { rtol: 1e-15, label: `tail T=${T}` });
      if (T === 1) {
        expect(Math.exp(expected)).toBeLessThan(1e-29);
        // the naive form cancels completely: 1 − 3·(1/3) = 0 or a few ulps, far from 2.2e-30
        const head = 3 * Math.exp(69 - logsumexp(x));
        expect(Math.abs(Math.log(Math.max(1 - head, 0)) - expected)).toBeGreaterThan(1);
      }
    }
    // all-zero tail mass: −inf
    expect(refTopk([1, 2, -Infinity], 1, 3, 2).tailLogProb[0]).toBe(-Infinity);
  });
});

describe('refSparseKl', () => {
  const N = 4;
  const V = 11;
  const student = randomLogits(N, V, { seed: 101, peaked: true });
  const teacherLogits = randomLogits(N, V, { seed: 102, scale: 2 });

  function teacherFor(tail: SparseTail, T: number, k: number): SparseTeacher {
    if (tail === 'sampled') {
      const n = k;
      const indices = new Int32Array(N * n);
      const weights = new Float64Array(N * n);
      for (let i = 0; i < N; i++) {
        const p = softmax(teacherLogits.subarray(i * V, (i + 1) * V), T);
        const d = refSampleTeacherWeights(p, 0.5, n, mulberry32(200 + i));
        indices.set(d.ids, i * n);
        weights.set(d.weights, i * n);
      }
      return { k: n, indices, weights };
    }
    const tk = refTopk(teacherLogits, N, V, k, { temperature: T, output: 'logprobs' });
    return { k, indices: tk.indices, values: tk.values, tailLogProb: tk.tailLogProb };
  }

  for (const tail of ['renormalize', 'bucket', 'conditional', 'sampled'] as SparseTail[]) {
    for (const T of TEMPERATURES) {
      it(`gradient vs finite differences: ${tail} T=${T}`, () => {
        for (const k of [1, 3, V]) {
          const sparse = teacherFor(tail, T, tail === 'sampled' ? 2 * k : k);
          for (const reduction of REDUCTIONS) {
            for (const sel of SELECTION_CASES) {
              const { padS = 0, padT: _padT, ...selOpts } = sel.make(N, V);
              void _padT;
              const ldS = V + padS;
              const s = pad(student, N, V, ldS);
              const opts = { tail, temperature: T, reduction, ldS, ...selOpts };
              const r = refSparseKl(s, N, V, sparse, opts);
              const gs = opts.gradScale ?? 1;
              const f = (z: Float64Array): number => gs * scalar(refSparseKl(z, N, V, sparse, opts).loss);
              checkGrad(`sparse ${tail} T=${T} k=${k} ${reduction} ${sel.name}`, f, s, r.grad, N, V, ldS);
            }
          }
        }
      });
    }
  }

  it('with k = V all non-sampled modes equal the full forward KL (loss and grad)', () => {
    for (const T of TEMPERATURES) {
      const full = refDivergence(student, teacherLogits, N, V, { divergence: 'forward-kl', temperature: T });
      for (const tail of ['renormalize', 'bucket', 'conditional'] as SparseTail[]) {
        const r = refSparseKl(student, N, V, teacherFor(tail, T, V), { tail, temperature: T });
        expectClose([r.loss as number], [full.loss as number], { atol: 1e-13, rtol: 1e-12, label: `${tail} loss T=${T}` });
        expectClose(r.grad, full.grad, { atol: 1e-13, rtol: 1e-10, label: `${tail} grad T=${T}`, cols: V });
      }
    }
  });

  it("'sampled' with every id and weights p is the cross-entropy −Σ p log q (= forward KL + H(p)), same gradient", () => {
    const T = 2;
    const indices = new Int32Array(N * V);
    const weights = new Float64Array(N * V);
    for (let i = 0; i < N; i++) {
      const p = softmax(teacherLogits.subarray(i * V, (i + 1) * V), T);
      for (let j = 0; j < V; j++) {
        indices[i * V + j] = j;
        weights[i * V + j] = p[j]!;
      }
    }
    const opts = { temperature: T, reduction: 'none' as const };
    const r = refSparseKl(student, N, V, { k: V, indices, weights }, { tail: 'sampled', ...opts });
    const kl = refDivergence(student, teacherLogits, N, V, { divergence: 'forward-kl', ...opts });
    const st = refTokenStats(student, teacherLogits, N, V, { temperature: T });
    const expected = Array.from(kl.perToken, (x, i) => x + T * T * st.teacherEntropy[i]!);
    expectClose(r.loss as Float64Array, expected, { atol: 1e-13, rtol: 1e-12, label: 'CE = KL + H' });
    expectClose(r.grad, kl.grad, { atol: 1e-14, rtol: 1e-10, label: 'grad', cols: V });
  });

  it('bucket by hand: V = 3, ids {0}, p = [0.6 | tail 0.4], q = [0.5, 0.25, 0.25]', () => {
    // L = 0.6 log(0.6/0.5) + 0.4 log(0.4/0.5). Tail grad: q_k (S − p_t/q_t) = q_k (1 − 0.8) = 0.2 q_k;
    // id grad: q_0 S − p_0 = 0.5 − 0.6 = −0.1.
    const z = [Math.log(2), 0, 0];
    const r = refSparseKl(z, 1, 3, { k: 1, indices: [0], values: [Math.log(0.6)], tailLogProb: [Math.log(0.4)] }, { tail: 'bucket' });
    expectClose([r.loss as number], [0.6 * Math.log(1.2) + 0.4 * Math.log(0.8)], { rtol: 1e-14, label: 'loss' });
    expectClose(r.grad, [-0.1, 0.05, 0.05], { atol: 1e-15, label: 'grad' });
    // renormalize with the same teacher: p̃ = [1] → L = −log q_0 = log 2, grad = q − [1, 0, 0]
    const rn = refSparseKl(z, 1, 3, { k: 1, indices: [0], values: [Math.log(0.6)] }, { tail: 'renormalize' });
    expectClose([rn.loss as number], [Math.LN2], { rtol: 1e-14, label: 'renormalize loss' });
    expectClose(rn.grad, [-0.5, 0.25, 0.25], { atol: 1e-15, label: 'renormalize grad' });
    // conditional: q̃ over {0} = [1] → L = 0, grad 0
    const cd = refSparseKl(z, 1, 3, { k: 1, indices: [0], values: [Math.log(0.6)] }, { tail: 'conditional' });
    expect(cd.loss).toBe(0);
    expectClose(cd.grad, [0, 0, 0], { atol: 1e-16, label: 'conditional grad' });
  });

  it('all tokens ignored: loss 0, grad 0; repeated ids rejected except for sampled', () => {
    const sp = teacherFor('bucket', 1, 3);
    const r = refSparseKl(student, N, V, sp, { tail: 'bucket', mask: [0, 0, 0, 0] });
    expect(r.loss).toBe(0);
    expect(r.grad.every((g) => g === 0)).toBe(true);
    expect(() => refSparseKl([0, 0, 0], 1, 3, { k: 2, indices: [1, 1], values: [-1, -1] }, { tail: 'renormalize' })).toThrow(RangeError);
    const ok = refSparseKl([0, 0, 0], 1, 3, { k: 2, indices: [1, 1], weights: [0.5, 0.5] }, { tail: 'sampled' });
    expectClose([ok.loss as number], [Math.log(3)], { rtol: 1e-14, label: 'sampled repeats' });
  });
});

describe('refSampleTeacherWeights (Sparse Logit Sampling)', () => {
  const p = softmax(randomLogits(1, 7, { seed: 111, scale: 2 }).map((x, j) => (j === 4 ? -Infinity : x)));

  it('E[Σ_{draws at i} w] = Σ over outcomes n·r_i · p_i/(n·r_i) = p_i, analytically', () => {
    for (const tau of [0, 0.5, 1, 2]) {
      const n = 5;
      const d = refSampleTeacherWeights(p, tau, n, mulberry32(3));
      const r = d.proposal;
      expectClose([r.reduce((a, b) => a + b, 0)], [1], { rtol: 1e-15, label: 'proposal sums to 1' });
      expect(r[4]).toBe(0); // zero-probability tokens are never proposed
      // every draw's weight is the function p_id / (n r_id) of its id
      for (let k = 0; k < n; k++) expect(d.weights[k]).toBe(p[d.ids[k]!]! / (n * r[d.ids[k]!]!));
      // expectation over the proposal: each of the n draws lands on i with probability r_i
      const expectation = Array.from(r, (ri, i) => (ri === 0 ? 0 : n * ri * (p[i]! / (n * ri))));
      expectClose(expectation, p, { atol: 0, rtol: 4e-16, label: `E[w] = p, tau=${tau}` });
      // the proposal is p^tau normalised
      const pt = Array.from(p, (x) => (x > 0 ? x ** tau : 0));
      const Z = pt.reduce((a, b) => a + b, 0);
      expectClose(r, pt.map((x) => x / Z), { atol: 1e-17, rtol: 1e-13, label: `r ∝ p^tau, tau=${tau}` });
    }
    // tau = 1: r = p, every weight is 1/n
    const d1 = refSampleTeacherWeights(p, 1, 8);
    expectClose(d1.weights, new Array(8).fill(1 / 8), { rtol: 1e-14, label: 'tau=1 weights' });
  });

  it('Monte Carlo average of the weights approaches p', () => {
    const n = 200000;
    const d = refSampleTeacherWeights(p, 0.5, n, mulberry32(9));
    const est = new Float64Array(p.length);
    for (let k = 0; k < n; k++) est[d.ids[k]!] += d.weights[k]!;
    // each est_i is a mean of n i.i.d. terms; 5 standard deviations of slack
    for (let i = 0; i < p.length; i++) {
      const ri = d.proposal[i]!;
      const sd = ri === 0 ? 0 : Math.sqrt((ri * (1 - ri)) / n) * (p[i]! / ri);
      expect(Math.abs(est[i]! - p[i]!), `i=${i}`).toBeLessThanOrEqual(5 * sd + 1e-15);
    }
  });

  it('sampleTeacherProposal rejects negative powers', () => {
    expect(() => sampleTeacherProposal(p, -1)).toThrow(RangeError);
  });
});
