/**
 * kd-kernels/tfjs: the adapter's loss and gradient against tfjs autograd of the same
 * loss written in tf ops, for every divergence, distillationLoss and sparse KD; use
 * under optimizer.minimize / tf.variableGrads; no tensor leaks.
 *
 * Tolerance. Both sides compute in float32 (tf's CPU backend element-wise, the kernels
 * with f32 accumulation) from the same f32 inputs, in different orders (a fused online
 * logsumexp and closed-form gradients vs. tf's max/sub/exp/sum/log and autograd through
 * the softmax Jacobian). Relative errors are then ~1e-6 per value. The largest
 * absolute gradient errors come from entries that are differences of O(1..10) terms,
 * e.g. reverse KL's q (log q − log p − L): their error is ~eps_f32 · |log terms| · q/T,
 * i.e. up to ~1.5e-6 of the largest gradient entry of the case (seen: 1.5e-6 at
 * T = 2.5, V = 97). Hence |a − b| ≤ ATOL + RTOL·|b| with RTOL = 2e-4 and
 * ATOL = max(1e-5 · max|b|, 1e-8) per case: ~7x above the worst difference seen, and
 * far below any real mistake (a wrong sign, a missing T, T² or 1/N is ≥ 10% off). The
 * 1e-8 floor covers cases whose exact gradient is 0 (V = 1: q = p = 1), where both sides
 * leave ~1e-9 of rounding residue.
 */
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { _gradBufferCount, fromTf, kdLoss, sparseKdLoss, toTf, type KdLossOptions } from '../lib/tfjs.js';

const RTOL = 2e-4;
const ATOL_REL = 1e-5;
const ATOL_FLOOR = 1e-8;

beforeAll(async () => {
  tf.env().set('PROD', true); // silences tfjs's "install tfjs-node" banner
  await tf.setBackend('cpu');
});

/** Deterministic generator (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function expectClose(name: string, got: ArrayLike<number>, want: ArrayLike<number>): void {
  expect(got.length).toBe(want.length);
  let scale = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  const atol = Math.max(ATOL_REL * scale, ATOL_FLOOR);
  const bad: string[] = [];
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    worst = Math.max(worst, d / (atol + RTOL * Math.abs(want[i]!)));
    if (!(d <= atol + RTOL * Math.abs(want[i]!)) && bad.length < 5) bad.push(`[${i}] got ${got[i]} want ${want[i]} (|diff| ${d.toExponential(2)})`);
  }
  if (bad.length) throw new Error(`${name}: ${bad.length}+ mismatches (worst ${worst.toFixed(1)}x tolerance):\n  ${bad.join('\n  ')}`);
}

// ---------------------------------------------------------------------------------
// The same losses written in tf ops (autograd gives their gradients)
// ---------------------------------------------------------------------------------

interface RefCase {
  divergence: kd.DivergenceName;
  beta?: number;
  skew?: number;
  T: number;
  scaleT2: boolean;
  teacherKind: 'logits' | 'logprobs';
  reduction: 'sum' | 'mean' | 'batchmean';
  normalizer?: number;
  /** [N] or undefined; entries equal to ignoreIndex (-100) deselect. */
  labels?: Int32Array;
  mask?: Uint8Array;
  weights?: Float32Array;
  distill?: { hardWeight: number; softWeight: number; labelSmoothing: number };
}

/** Per-token divergence D(p, q) [N] from log p and log q ([N, V]). */
function tfDivergence(logp: tf.Tensor2D, logq: tf.Tensor2D, c: RefCase): tf.Tensor1D {
  const p = tf.exp(logp);
  const q = tf.exp(logq);
  const kl = (la: tf.Tensor, lb: tf.Tensor) => tf.sum(tf.mul(tf.exp(la), tf.sub(la, lb)), -1) as tf.Tensor1D;
  const mix = (wa: number, a: tf.Tensor, wb: number, b: tf.Tensor) => tf.log(tf.add(tf.mul(wa, a), tf.mul(wb, b)));
  const beta = c.beta ?? 0.5;
  const lam = c.skew ?? 0.1;
  switch (c.divergence) {
    case 'forward-kl':
      return kl(logp, logq);
    case 'reverse-kl':
      return kl(logq, logp);
    case 'jsd': {
      if (beta === 0) return kl(logp, logq);
      if (beta === 1) return kl(logq, logp);
      const logm = mix(beta, p, 1 - beta, q);
      return tf.add(tf.mul(beta, kl(logp, logm)), tf.mul(1 - beta, kl(logq, logm)));
    }
    case 'tvd':
      return tf.mul(0.5, tf.sum(tf.abs(tf.sub(p, q)), -1));
    case 'skew-forward-kl':
      return kl(logp, mix(lam, p, 1 - lam, q));
    case 'skew-reverse-kl':
      return kl(logq, mix(1 - lam, p, lam, q));
  }
}

/** Selected-token mask [N] as float (labels ≠ −100 and mask ≠ 0). */
function selection(N: number, c: RefCase): Float32Array {
  const sel = new Float32Array(N).fill(1);
  for (let i = 0; i < N; i++) {
    if (c.labels && c.labels[i] === -100) sel[i] = 0;
    if (c.mask && c.mask[i] === 0) sel[i] = 0;
  }
  return sel;
}

/** The reference loss of student logits z ([N, V] rows) against teacher rows. */
function tfRefLoss(z: tf.Tensor2D, teacher: tf.Tensor2D, c: RefCase): tf.Scalar {
  const [N, V] = z.shape;
  const logq = tf.logSoftmax(tf.div(z, c.T)) as tf.Tensor2D;
  const logp = (c.teacherKind === 'logprobs' && c.T === 1 ? teacher : tf.logSoftmax(tf.div(teacher, c.T))) as tf.Tensor2D;
  const s = c.scaleT2 ? c.T * c.T : 1;
  let perToken = tf.mul(s, tfDivergence(logp, logq, c)) as tf.Tensor1D;
  if (c.distill) {
    const { hardWeight, softWeight, labelSmoothing: eps } = c.distill;
    const logq0 = tf.logSoftmax(z) as tf.Tensor2D;
    const safe = Int32Array.from(c.labels!, (l) => (l < 0 ? 0 : l));
    const oh = new Float32Array(N * V);
    safe.forEach((l, i) => (oh[i * V + l] = 1));
    const onehot = tf.tensor2d(oh, [N, V]);
    const target = tf.add(tf.mul(1 - eps, onehot), eps / V);
    const ce = tf.neg(tf.sum(tf.mul(target, logq0), -1)) as tf.Tensor1D;
    perToken = tf.add(tf.mul(hardWeight, ce), softWeight === 0 ? 0 : tf.mul(softWeight, perToken));
  }
  const sel = selection(N, c);
  const w = c.weights ? Float32Array.from(c.weights, (x, i) => x * sel[i]!) : sel;
  const count = sel.reduce((a, b) => a + b, 0);
  const divisor = c.normalizer ?? (c.reduction === 'sum' ? 1 : c.reduction === 'batchmean' ? count : count * V);
  return tf.div(tf.sum(tf.mul(perToken, tf.tensor1d(w))), count === 0 ? 1 : divisor) as tf.Scalar;
}

function optionsOf(c: RefCase): KdLossOptions {
  const o: KdLossOptions = {
    divergence: c.divergence,
    temperature: c.T,
    scaleByTemperatureSquared: c.scaleT2,
    teacher: c.teacherKind,
    reduction: c.reduction,
  };
  if (c.divergence === 'jsd' && c.beta !== undefined) o.beta = c.beta;
  if (c.divergence.startsWith('skew') && c.skew !== undefined) o.skew = c.skew;
  if (c.normalizer !== undefined) o.normalizer = c.normalizer;
  if (c.labels) o.labels = c.labels;
  if (c.mask) o.mask = c.mask;
  if (c.weights) o.weights = c.weights;
  if (c.distill) Object.assign(o, c.distill);
  return o;
}

function randomCase(seed: number, divergence: kd.DivergenceName, distill: boolean) {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const threeD = r() < 0.5;
  const B = 1 + Math.floor(r() * 3);
  const Tn = 1 + Math.floor(r() * 5);
  const N = threeD ? B * Tn : 1 + Math.floor(r() * 12);
  const V = pick([1, 2, 7, 16, 33, 97]);
  const shape = threeD ? [B, Tn, V] : [N, V];
  const T = pick([1, 1, 0.7, 2.5]);
  const spread = pick([0.5, 2, 4]);
  const z = Float32Array.from({ length: N * V }, () => spread * (2 * r() - 1));
  let t: Float32Array = Float32Array.from({ length: N * V }, () => spread * (2 * r() - 1));
  const teacherKind = r() < 0.25 ? 'logprobs' : 'logits';
  if (teacherKind === 'logprobs') t = tf.tidy(() => tf.logSoftmax(tf.tensor2d(t, [N, V])).dataSync() as Float32Array);
  const c: RefCase = {
    divergence,
    T,
    scaleT2: r() < 0.7,
    teacherKind,
    reduction: pick(['sum', 'mean', 'batchmean', 'batchmean'] as const),
  };
  if (divergence === 'jsd') c.beta = pick([0, 0.25, 0.5, 0.9, 1]);
  if (divergence.startsWith('skew')) c.skew = pick([0, 0.1, 0.5]);
  if (r() < 0.3) c.normalizer = 1 + 10 * r();
  if (distill || r() < 0.5) c.labels = Int32Array.from({ length: N }, () => (r() < 0.2 ? -100 : Math.floor(r() * V)));
  if (r() < 0.3) c.mask = Uint8Array.from({ length: N }, () => (r() < 0.8 ? 1 : 0));
  if (r() < 0.3) c.weights = Float32Array.from({ length: N }, () => 2 * r());
  if (distill) c.distill = { hardWeight: pick([0, 0.3, 1]), softWeight: pick([0.5, 1]), labelSmoothing: pick([0, 0, 0.1]) };
  return { c, z, t, shape, N, V };
}

/** Adapter vs reference: loss and gradient (optionally under an upstream factor). */
function checkCase(seed: number, divergence: kd.DivergenceName, distill: boolean, upstream = 1): void {
  const { c, z, t, shape, N, V } = randomCase(seed, divergence, distill);
  const label = `seed ${seed} ${divergence}${distill ? ' (distillationLoss)' : ''} ${JSON.stringify({ ...c, labels: undefined, mask: undefined, weights: undefined })} N=${N} V=${V}`;
  tf.tidy(() => {
    const zt = tf.tensor(z, shape);
    const tt = tf.tensor(t, shape);
    const f = (x: tf.Tensor) => tf.mul(upstream, kdLoss(x, tt, optionsOf(c))) as tf.Scalar;
    const g = (x: tf.Tensor) => tf.mul(upstream, tfRefLoss(tf.reshape(x, [N, V]), tf.reshape(tt, [N, V]), c)) as tf.Scalar;
    const got = tf.valueAndGrad(f)(zt);
    const want = tf.valueAndGrad(g)(zt);
    expectClose(`${label} loss`, got.value.dataSync(), want.value.dataSync());
    expect(got.grad.shape).toEqual(shape);
    expectClose(`${label} grad`, got.grad.dataSync(), want.grad.dataSync());
  });
}

describe('kdLoss gradient = tfjs autograd of the same loss in tf ops', () => {
  for (const divergence of ['forward-kl', 'reverse-kl', 'jsd', 'tvd', 'skew-forward-kl', 'skew-reverse-kl'] as const) {
    it(`${divergence}: 40 random cases (shapes [N,V] and [B,T,V], T, T², reductions, labels, mask, weights, logprobs)`, () => {
      for (let s = 0; s < 40; s++) checkCase(1000 * (divergence.length + 1) + s, divergence, false);
    });
    it(`distillationLoss with ${divergence}: 20 random cases (hard/soft weights, label smoothing)`, () => {
      for (let s = 0; s < 20; s++) checkCase(7000 + 97 * divergence.length + s, divergence, true);
    });
  }

  it('the upstream gradient dy becomes gradScale (dy = 0.37 and dy = -2 via tf.mul)', () => {
    for (let s = 0; s < 10; s++) {
      checkCase(500 + s, 'jsd', false, 0.37);
      checkCase(600 + s, 'forward-kl', true, -2);
    }
  });

  it('plain cross-entropy with a null teacher equals tf.losses.softmaxCrossEntropy', () => {
    tf.tidy(() => {
      const r = rng(3);
      const N = 9, V = 11;
      const z = tf.tensor2d(Float32Array.from({ length: N * V }, () => 3 * r() - 1.5), [N, V]);
      const y = Int32Array.from({ length: N }, () => Math.floor(r() * V));
      const got = tf.valueAndGrad((x: tf.Tensor) => kdLoss(x, null, { labels: y, hardWeight: 1, softWeight: 0 }))(z);
      const want = tf.valueAndGrad((x: tf.Tensor) => tf.losses.softmaxCrossEntropy(tf.oneHot(tf.tensor1d(y, 'int32'), V), x as tf.Tensor2D) as tf.Scalar)(z);
      expectClose('ce loss', got.value.dataSync(), want.value.dataSync());
      expectClose('ce grad', got.grad.dataSync(), want.grad.dataSync());
    });
  });

  it('accepts labels, mask and weights as tf tensors ([B, T] shaped)', () => {
    tf.tidy(() => {
      const r = rng(11);
      const [B, T, V] = [2, 3, 5];
      const z = tf.tensor3d(Float32Array.from({ length: B * T * V }, () => r() * 2 - 1), [B, T, V]);
      const t = tf.tensor3d(Float32Array.from({ length: B * T * V }, () => r() * 2 - 1), [B, T, V]);
      const labels = Int32Array.from([1, -100, 3, 0, 4, 2]);
      const mask = Uint8Array.from([1, 1, 0, 1, 1, 1]);
      const weights = Float32Array.from([1, 2, 3, 0.5, 1, 1]);
      const a = tf.valueAndGrad((x: tf.Tensor) => kdLoss(x, t, { labels, mask, weights, hardWeight: 0.4, softWeight: 0.6 }))(z);
      const b = tf.valueAndGrad((x: tf.Tensor) =>
        kdLoss(x, t, { labels: tf.tensor2d(labels, [B, T], 'int32'), mask: tf.tensor2d(mask, [B, T], 'bool'), weights: tf.tensor2d(weights, [B, T]), hardWeight: 0.4, softWeight: 0.6 }),
      )(z);
      expect(b.value.dataSync()[0]).toBe(a.value.dataSync()[0]);
      expect(Array.from(b.grad.dataSync())).toEqual(Array.from(a.grad.dataSync()));
    });
  });
});

describe('sparseKdLoss', () => {
  /** tf-ops reference of sparse KD with 'bucket' / 'sampled' tails. */
  function tfSparseRef(z: tf.Tensor2D, ids: Int32Array, values: Float32Array, tail: Float32Array, w: Float32Array, k: number, T: number, mode: 'bucket' | 'sampled'): tf.Scalar {
    const [N, V] = z.shape;
    const logq = tf.logSoftmax(tf.div(z, T));
    const sel = tf.oneHot(tf.tensor2d(ids, [N, k], 'int32'), V); // [N, k, V]
    const logqIds = tf.sum(tf.mul(sel, tf.expandDims(logq, 1)), -1); // [N, k]
    let per: tf.Tensor;
    if (mode === 'sampled') {
      per = tf.neg(tf.sum(tf.mul(tf.tensor2d(w, [N, k]), logqIds), -1));
    } else {
      const v = tf.tensor2d(values, [N, k]);
      const logQt = tf.log(tf.sub(1, tf.sum(tf.exp(logqIds), -1)));
      const lt = tf.tensor1d(tail);
      per = tf.add(tf.sum(tf.mul(tf.exp(v), tf.sub(v, logqIds)), -1), tf.mul(tf.exp(lt), tf.sub(lt, logQt)));
    }
    return tf.div(tf.sum(tf.mul(T * T, per)), N) as tf.Scalar;
  }

  for (const mode of ['bucket', 'sampled'] as const) {
    it(`'${mode}' from topk / sampleTeacher: gradient = tf autograd (10 random cases)`, () => {
      for (let s = 0; s < 10; s++) {
        const r = rng(900 + s);
        const N = 1 + Math.floor(r() * 8);
        const V = [16, 40, 97][s % 3]!;
        const k = [1, 4, 8][s % 3]!;
        const T = s % 2 ? 2 : 1;
        const zs = Float32Array.from({ length: N * V }, () => 4 * r() - 2);
        const ts = Float32Array.from({ length: N * V }, () => 4 * r() - 2);
        const teacher = kd.tensor(ts, [N, V]);
        const st =
          mode === 'bucket'
            ? kd.topk(teacher, k, { output: 'logprobs', temperature: T })
            : (() => {
                const d = kd.sampleTeacher(teacher, k, { seed: s, temperature: T });
                return { indices: d.indices, weights: d.weights };
              })();
        const ids = st.indices.toArray() as Int32Array;
        const values = 'values' in st ? (st.values.toArray() as Float32Array) : new Float32Array(N * k);
        const tailLp = 'tailLogProb' in st ? (st.tailLogProb.toArray() as Float32Array) : new Float32Array(N);
        const w = 'weights' in st ? (st.weights.toArray() as Float32Array) : new Float32Array(N * k);
        tf.tidy(() => {
          const z = tf.tensor2d(zs, [N, V]);
          const got = tf.valueAndGrad((x: tf.Tensor) => sparseKdLoss(x, st, { tail: mode, temperature: T }))(z);
          const want = tf.valueAndGrad((x: tf.Tensor) => tfSparseRef(x as tf.Tensor2D, ids, values, tailLp, w, k, T, mode))(z);
          expectClose(`${mode} seed ${s} loss`, got.value.dataSync(), want.value.dataSync());
          expectClose(`${mode} seed ${s} grad`, got.grad.dataSync(), want.grad.dataSync());
        });
      }
    });
  }

  it('takes the sparse teacher as tf tensors too, with tf labels', () => {
    const r = rng(5);
    const [N, V, k] = [6, 20, 4];
    const zs = Float32Array.from({ length: N * V }, () => r());
    const top = kd.topk(kd.tensor(Float32Array.from({ length: N * V }, () => 3 * r()), [N, V]), k, { output: 'logprobs' });
    const labels = Int32Array.from([1, 2, -100, 3, 4, 5]);
    tf.tidy(() => {
      const z = tf.tensor2d(zs, [N, V]);
      const a = tf.valueAndGrad((x: tf.Tensor) => sparseKdLoss(x, top, { tail: 'bucket', labels }))(z);
      const tfTop = { indices: toTf(top.indices), values: toTf(top.values), tailLogProb: toTf(top.tailLogProb) };
      const b = tf.valueAndGrad((x: tf.Tensor) => sparseKdLoss(x, tfTop, { tail: 'bucket', labels: tf.tensor1d(labels, 'int32') }))(z);
      expect(b.value.dataSync()[0]).toBe(a.value.dataSync()[0]);
      expect(Array.from(b.grad.dataSync())).toEqual(Array.from(a.grad.dataSync()));
      // The ignored token gets no gradient.
      expect(Array.from(a.grad.dataSync().subarray(2 * V, 3 * V)).every((g) => g === 0)).toBe(true);
    });
  });
});

describe('training with the adapter', () => {
  /** A linear "student" x W → logits, a fixed random teacher, labels. */
  function setup(seed: number) {
    const r = rng(seed);
    const [N, D, V] = [24, 8, 13];
    const x = tf.keep(tf.tensor2d(Float32Array.from({ length: N * D }, () => 2 * r() - 1), [N, D]));
    const teacher = tf.keep(tf.tensor2d(Float32Array.from({ length: N * V }, () => 3 * r() - 1.5), [N, V]));
    const labels = Int32Array.from({ length: N }, () => Math.floor(r() * V));
    const w0 = Float32Array.from({ length: D * V }, () => 0.1 * (2 * r() - 1));
    return { x, teacher, labels, w0, N, D, V };
  }
  const cases: Array<[string, KdLossOptions]> = [
    ['forward-kl', { divergence: 'forward-kl', temperature: 2 }],
    ['reverse-kl', { divergence: 'reverse-kl' }],
    ['jsd', { divergence: 'jsd', beta: 0.5 }],
    ['tvd', { divergence: 'tvd' }],
    ['skew-forward-kl', { divergence: 'skew-forward-kl', skew: 0.2 }],
    ['skew-reverse-kl', { divergence: 'skew-reverse-kl', skew: 0.2 }],
    ['distillationLoss', { divergence: 'jsd', hardWeight: 0.5, softWeight: 0.5, labelSmoothing: 0.1 }],
  ];

  for (const [name, opts] of cases) {
    it(`${name}: tf.variableGrads equals autograd of the tf-ops loss; optimizer.minimize steps match`, () => {
      const { x, teacher, labels, w0, N, V } = setup(42);
      const c: RefCase = {
        divergence: opts.divergence!,
        beta: opts.beta,
        skew: opts.skew,
        T: opts.temperature ?? 1,
        scaleT2: true,
        teacherKind: 'logits',
        reduction: 'batchmean',
      };
      const withLabels = { ...opts, ...(opts.hardWeight !== undefined ? { labels } : {}) };
      if (opts.hardWeight !== undefined) {
        c.labels = labels;
        c.distill = { hardWeight: opts.hardWeight, softWeight: opts.softWeight!, labelSmoothing: opts.labelSmoothing ?? 0 };
      }
      const W = tf.variable(tf.tensor2d(w0, [w0.length / V, V]));
      const Wref = tf.variable(tf.tensor2d(w0, [w0.length / V, V]));
      const mine = () => kdLoss(tf.matMul(x, W), teacher, withLabels);
      const ref = () => tfRefLoss(tf.matMul(x, Wref), teacher as tf.Tensor2D, c);
      // variableGrads
      const a = tf.variableGrads(mine, [W]);
      const b = tf.variableGrads(ref, [Wref]);
      expectClose(`${name} variableGrads value`, a.value.dataSync(), b.value.dataSync());
      expectClose(`${name} variableGrads grad`, a.grads[W.name]!.dataSync(), b.grads[Wref.name]!.dataSync());
      tf.dispose([a.value, b.value, ...Object.values(a.grads), ...Object.values(b.grads)]);
      // 20 Adam steps with both: same trajectory (to tolerance), the loss goes down, no leak.
      const optA = tf.train.adam(0.05);
      const optB = tf.train.adam(0.05);
      const first = optA.minimize(mine, true, [W])!;
      optB.minimize(ref, false, [Wref]);
      const start = tf.memory().numTensors;
      let last = NaN;
      for (let s = 1; s < 20; s++) {
        const l = optA.minimize(mine, true, [W])!;
        last = l.dataSync()[0]!;
        l.dispose();
        optB.minimize(ref, false, [Wref]);
        expect(tf.memory().numTensors).toBe(start);
      }
      expect(last).toBeLessThan(first.dataSync()[0]! * 0.9);
      // Both trajectories agree (Adam normalises, so this checks directions step by step).
      const wa = W.dataSync();
      const wb = Wref.dataSync();
      let maxDiff = 0;
      for (let i = 0; i < wa.length; i++) maxDiff = Math.max(maxDiff, Math.abs(wa[i]! - wb[i]!));
      expect(maxDiff).toBeLessThan(1e-3);
      tf.dispose([first, W, Wref, x, teacher]);
      optA.dispose();
      optB.dispose();
      void N;
    });
  }

  it('numTensors is stable over 20 minimize steps with kdLoss + sparseKdLoss + a tf regulariser', () => {
    const { x, teacher, labels, w0, V } = setup(7);
    const W = tf.variable(tf.tensor2d(w0, [w0.length / V, V]));
    const top = kd.topk(fromTf(teacher), 4, { output: 'logprobs' });
    const opt = tf.train.sgd(0.1);
    const step = () =>
      opt.minimize(() => {
        const logits = tf.matMul(x, W);
        const dense = kdLoss(logits, teacher, { labels, hardWeight: 0.5, softWeight: 0.5 });
        const sparse = sparseKdLoss(logits, top, { tail: 'bucket' });
        return tf.addN([dense, tf.mul(0.5, sparse), tf.mul(1e-3, tf.sum(tf.square(W)))]) as tf.Scalar;
      }, false, [W]);
    step();
    const start = tf.memory().numTensors;
    for (let i = 0; i < 20; i++) {
      step();
      expect(tf.memory().numTensors).toBe(start);
    }
    tf.dispose([W, x, teacher]);
    opt.dispose();
  });

  it('computes only the loss outside a gradient tape, and errors are thrown before anything is recorded', () => {
    const before = tf.memory().numTensors;
    const z = tf.tensor2d([1, 2, 3, 4], [2, 2]);
    const t = tf.tensor2d([0, 0, 0, 0], [2, 2]);
    const l = kdLoss(z, t, { divergence: 'forward-kl' });
    expect(l.shape).toEqual([]);
    expect(Number.isFinite(l.dataSync()[0])).toBe(true);
    expect(() => kdLoss(z, z, { divergence: 'nope' as never })).toThrow(/Expected one of 'forward-kl'/);
    expect(() => kdLoss(z, z, { reduction: 'none' as never })).toThrow(/'sum', 'mean', 'batchmean'/);
    expect(() => kdLoss(z, z, { hardWeight: 1 })).toThrow(/needs labels/);
    expect(() => kdLoss(z, null, { divergence: 'jsd' })).toThrow(/only allowed for plain cross-entropy/);
    expect(() => kdLoss(z, z, { beta: 0.3 })).toThrow(/'beta' does not apply/);
    expect(() => kdLoss(z, z, { labels: Int32Array.from([0, 5]) })).toThrow(/labels\[1\] = 5/);
    const v1 = tf.tensor1d([1, 2]);
    expect(() => kdLoss(v1, z)).toThrow(/\[N, V\] or \[B, T, V\]/);
    expect(() => kdLoss(z, z, { colour: 1 } as never)).toThrow(/Unknown option 'colour'/);
    expect(() => tf.grad((x: tf.Tensor) => kdLoss(x, z, { labels: Int32Array.from([0]) }))(z)).toThrow(/labels with 2 elements/);
    tf.dispose([z, t, l, v1]);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('kdLoss gradient buffers: reused across steps, never while tf holds them', () => {
  /** A reference gradient: the library into a fresh array. */
  function refGrad(z: Float32Array, t: Float32Array, shape: number[]): Float32Array {
    const g = new Float32Array(z.length);
    kd.klDiv(kd.tensor(z, shape), kd.tensor(t, shape), { grad: kd.tensor(g, shape) });
    return g;
  }
  const N = 5, V = 211;
  const r = rng(99);
  const z1 = Float32Array.from({ length: N * V }, () => r() * 6 - 3);
  const z2 = Float32Array.from({ length: N * V }, () => r() * 6 - 3);
  const tt = Float32Array.from({ length: N * V }, () => r() * 6 - 3);

  it('a gradient kept by the user is not overwritten by later steps; disposed ones are reused', () => {
    const teacher = tf.tensor2d(tt, [N, V]);
    const v = tf.variable(tf.tensor2d(z1, [N, V]));
    const step = () => tf.variableGrads(() => kdLoss(v, teacher), [v]);
    const a = step(); // kept
    const ga = a.grads[v.name]!;
    const want1 = refGrad(z1, tt, [N, V]);
    v.assign(tf.tensor2d(z2, [N, V]));
    const want2 = refGrad(z2, tt, [N, V]);
    const b = step(); // must not write into a's buffer
    expect(Array.from(ga.dataSync())).toEqual(Array.from(want1));
    expect(Array.from(b.grads[v.name]!.dataSync())).toEqual(Array.from(want2));
    const count = _gradBufferCount();
    tf.dispose([a.value, ga, b.value, b.grads[v.name]!]);
    // with every gradient disposed after its step, no new buffer is needed
    for (let i = 0; i < 10; i++) {
      const c = step();
      expect(Array.from(c.grads[v.name]!.dataSync())).toEqual(Array.from(want2));
      tf.dispose([c.value, c.grads[v.name]!]);
    }
    expect(_gradBufferCount()).toBe(count);
    tf.dispose([v, teacher]);
  });

  it('a gradient that tf passes on through a reshape (shared data) is not reused while the reshape lives', () => {
    const teacher = tf.tensor3d(tt, [1, N, V]);
    const v = tf.variable(tf.tensor2d(z1, [N, V]));
    const want1 = refGrad(z1, tt, [N, V]);
    // the gradient w.r.t. v is the reshape of the adapter's [1, N, V] gradient: same data
    const a = tf.variableGrads(() => kdLoss(tf.reshape(v, [1, N, V]), teacher), [v]);
    const ga = a.grads[v.name]!;
    v.assign(tf.tensor2d(z2, [N, V]));
    for (let i = 0; i < 3; i++) {
      const b = tf.variableGrads(() => kdLoss(tf.reshape(v, [1, N, V]), teacher), [v]);
      tf.dispose([b.value, b.grads[v.name]!]);
    }
    expect(Array.from(ga.dataSync())).toEqual(Array.from(want1));
    tf.dispose([a.value, ga, v, teacher]);
  });
});
