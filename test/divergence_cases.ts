/**
 * Shared machinery for comparing the native divergence engine (klDiv, jsd, tvd,
 * skewKl, distillationLoss) with the float64 references: builds inputs in a dtype,
 * runs both, and compares with the tolerances of test/tolerances.ts.
 */
import * as kd from '../lib/index.js';
import { compareArrays, decodeDtype, encodeDtype, logSoftmax, mulberry32, randomLogits, softmax, type FloatDType } from './reference/common.js';
import { refDivergence, type Divergence } from './reference/divergences.js';
import { refDistillationLoss } from './reference/distillation.js';
import { gradTol, lossTol, maxAbsFinite } from './tolerances.js';

export interface DivCase {
  n: number;
  v: number;
  /** Teacher vocabulary (>= v; the loss uses the first v columns). */
  vt?: number;
  /** Row strides (>= v / vt). */
  ldS?: number;
  ldT?: number;
  sDtype: FloatDType;
  tDtype?: FloatDType;
  divergence: Divergence;
  beta?: number;
  skew?: number;
  temperature?: number;
  scaleT2?: boolean;
  teacherKind?: 'logits' | 'logprobs';
  labels?: 'some-ignored' | 'all-ignored';
  mask?: boolean;
  weights?: boolean;
  reduction?: kd.Reduction;
  normalizer?: number;
  gradScale?: number;
  gradDtype?: 'f32' | 'input';
  grad?: 'new' | 'inplace' | 'given' | 'none';
  scale?: number;
  peaked?: boolean;
  negInf?: boolean;
  /**
   * Add a per-block offset (blocks of 1024 columns, the CPU row block) to both inputs:
   * rises above every earlier block, small and large, and blocks far below the row max,
   * so the CPU first pass's running-max shifts and their redo path are exercised.
   */
  blockSteps?: boolean;
  /** distillationLoss: CE weight (> 0 turns the case into a distillationLoss case). */
  hardWeight?: number;
  softWeight?: number;
  labelSmoothing?: number;
  seed?: number;
}

export function caseName(c: DivCase): string {
  const parts = [`${c.n}x${c.v}`, c.divergence, `${c.sDtype}${c.tDtype && c.tDtype !== c.sDtype ? '/' + c.tDtype : ''}`];
  if (c.beta !== undefined) parts.push(`beta=${c.beta}`);
  if (c.skew !== undefined) parts.push(`skew=${c.skew}`);
  if (c.temperature !== undefined) parts.push(`T=${c.temperature}`);
  if (c.scaleT2 === false) parts.push('noT2');
  if (c.teacherKind === 'logprobs') parts.push('logprobs');
  if (c.labels) parts.push(`labels:${c.labels}`);
  if (c.mask) parts.push('mask');
  if (c.weights) parts.push('weights');
  if (c.reduction) parts.push(c.reduction);
  if (c.normalizer) parts.push(`norm=${c.normalizer}`);
  if (c.gradScale !== undefined) parts.push(`gs=${c.gradScale}`);
  if (c.gradDtype === 'f32') parts.push('grad:f32');
  if (c.grad && c.grad !== 'new') parts.push(`grad:${c.grad}`);
  if (c.ldS || c.ldT || (c.vt && c.vt > c.v)) parts.push('strided');
  if (c.scale) parts.push(`scale=${c.scale}`);
  if (c.blockSteps) parts.push('blockSteps');
  if (c.negInf) parts.push('-inf');
  if (c.hardWeight !== undefined) parts.push(`hw=${c.hardWeight}`);
  if (c.labelSmoothing) parts.push(`ls=${c.labelSmoothing}`);
  return parts.join(' ');
}

export interface Built {
  student: kd.Tensor;
  teacher: kd.Tensor;
  sRef: Float64Array;
  tRef: Float64Array;
  labels?: Int32Array;
  mask?: Uint8Array;
  weights?: Float32Array;
  maxAbs: number;
  ldS: number;
  ldT: number;
  vt: number;
}

export function build(c: DivCase, device: kd.Device = 'cpu'): Built {
  const rng = mulberry32(c.seed ?? 1234);
  const vt = c.vt ?? c.v;
  const ldS = c.ldS ?? c.v;
  const ldT = c.ldT ?? vt;
  const tDtype = c.tDtype ?? c.sDtype;
  const s64 = randomLogits(c.n, ldS, { seed: (c.seed ?? 1234) + 1, scale: c.scale ?? 3, peaked: c.peaked ?? true });
  const t64 = randomLogits(c.n, ldT, { seed: (c.seed ?? 1234) + 2, scale: c.scale ?? 3, peaked: c.peaked ?? true });
  if (c.blockSteps) {
    // after block 0: +10 (kept at T = 1, redone at T = 0.5), +40 (redone), -150 (far
    // below the running max: its exps flush), +41, -60, +95 (redone), 0; the teacher's
    // pattern shifted by two blocks
    const steps = [0, 10, 40, -150, 41, -60, 95, 0];
    for (let i = 0; i < c.n; i++) {
      for (let j = 0; j < ldS; j++) s64[i * ldS + j] += steps[(j >> 10) % steps.length]!;
      for (let j = 0; j < ldT; j++) t64[i * ldT + j] += steps[((j >> 10) + 2) % steps.length]!;
    }
  }
  if (c.negInf && c.v > 1) {
    // banned tokens: the same columns are -inf for student and teacher (every divergence
    // stays finite), at most v - 1 of them per row
    for (let i = 0; i < c.n; i++)
      for (let k = 0; k < Math.min(3, c.v - 1); k++) {
        const j = Math.floor(rng() * c.v);
        if (j === 0) continue; // keep column 0 finite
        s64[i * ldS + j] = -Infinity;
        t64[i * ldT + j] = -Infinity;
      }
  }
  if (c.teacherKind === 'logprobs') {
    const T = c.temperature ?? 1;
    for (let i = 0; i < c.n; i++) {
      // log-probs over the teacher's own vocabulary (vt), at T = 1: what a teacher emits
      const lp = logSoftmax(t64.subarray(i * ldT, i * ldT + vt), 1);
      t64.set(lp, i * ldT);
      void T;
    }
  }
  const sEnc = encodeDtype(s64, c.sDtype);
  const tEnc = encodeDtype(t64, tDtype);
  const sRef = decodeDtype(sEnc, c.sDtype);
  const tRef = decodeDtype(tEnc, tDtype);
  const student = kd.tensor(sEnc, [c.n, c.v], { dtype: c.sDtype, strides: [ldS, 1], device });
  const teacher = kd.tensor(tEnc, [c.n, vt], { dtype: tDtype, strides: [ldT, 1], device });
  let labels: Int32Array | undefined;
  if (c.labels || c.hardWeight !== undefined) {
    labels = new Int32Array(c.n);
    for (let i = 0; i < c.n; i++) labels[i] = Math.floor(rng() * c.v);
    if (c.labels === 'some-ignored') for (let i = 0; i < c.n; i += 3) labels[i] = -100;
    if (c.labels === 'all-ignored') labels.fill(-100);
    if (c.negInf) {
      // a label on a banned (-inf) student token would make CE infinite; pick a finite one
      for (let i = 0; i < c.n; i++) {
        if (labels[i] === -100) continue;
        for (let j = 0; j < c.v; j++) {
          const y = (labels[i]! + j) % c.v;
          if (Number.isFinite(sRef[i * ldS + y]!)) { labels[i] = y; break; }
        }
      }
    }
  }
  let mask: Uint8Array | undefined;
  if (c.mask) mask = Uint8Array.from({ length: c.n }, (_, i) => (i % 4 === 1 ? 0 : 1));
  let weights: Float32Array | undefined;
  if (c.weights) weights = Float32Array.from({ length: c.n }, () => 0.25 + 2 * rng());
  let maxAbs = Math.max(maxAbsFinite(sRef), maxAbsFinite(tRef));
  return { student, teacher, sRef, tRef, labels, mask, weights, maxAbs, ldS, ldT, vt };
}

export interface RunOut {
  loss: Float32Array | number;
  grad?: Float32Array;
  hard?: Float32Array;
  soft?: Float32Array;
  total?: Float32Array;
}

export function lossOptions(c: DivCase, b: Built): kd.LossOptions {
  const o: kd.LossOptions = {};
  if (c.temperature !== undefined) o.temperature = c.temperature;
  if (c.scaleT2 !== undefined) o.scaleByTemperatureSquared = c.scaleT2;
  if (c.teacherKind) o.teacher = c.teacherKind;
  if (b.labels && c.hardWeight === undefined) o.labels = b.labels;
  if (b.mask) o.mask = b.mask;
  if (b.weights) o.weights = b.weights;
  if (c.reduction) o.reduction = c.reduction;
  if (c.normalizer) o.normalizer = c.normalizer;
  if (c.gradScale !== undefined) o.gradScale = c.gradScale;
  if (c.gradDtype) o.gradDtype = c.gradDtype;
  return o;
}

type OpOut = { loss: kd.Tensor; grad?: kd.Tensor; hard?: kd.Tensor; soft?: kd.Tensor; total?: kd.Tensor };

/** Runs the native op for a case. */
export function runNative(c: DivCase, b: Built): RunOut {
  const r = runOp(c, b);
  return {
    loss: c.reduction === 'none' ? r.loss.toFloat32Array() : r.loss.item(),
    grad: r.grad?.toFloat32Array(),
    hard: r.hard?.toFloat32Array(),
    soft: r.soft?.toFloat32Array(),
    total: r.total?.toFloat32Array(),
  };
}

/** runNative with asynchronous reads: any device, WebGPU included. */
export async function runNativeAsync(c: DivCase, b: Built): Promise<RunOut> {
  const r = runOp(c, b);
  return {
    loss: c.reduction === 'none' ? await r.loss.toFloat32ArrayAsync() : await r.loss.itemAsync(),
    grad: await r.grad?.toFloat32ArrayAsync(),
    hard: await r.hard?.toFloat32ArrayAsync(),
    soft: await r.soft?.toFloat32ArrayAsync(),
    total: await r.total?.toFloat32ArrayAsync(),
  };
}

/** Runs the op for a case on the tensors' device; the outputs stay there. */
export function runOp(c: DivCase, b: Built): OpOut {
  const o = lossOptions(c, b);
  let given: kd.Tensor | undefined;
  if (c.grad === 'none') o.grad = false;
  if (c.grad === 'inplace') o.grad = 'inplace';
  if (c.grad === 'given') {
    given = kd.zeros([c.n, c.v], { dtype: c.gradDtype === 'f32' ? 'f32' : c.sDtype, device: b.student.device });
    o.grad = given;
  }
  let r: OpOut;
  if (c.hardWeight !== undefined) {
    r = kd.distillationLoss(b.student, b.teacher, b.labels!, {
      ...o,
      divergence: c.divergence,
      beta: c.beta,
      skew: c.skew,
      hardWeight: c.hardWeight,
      softWeight: c.softWeight ?? 1,
      labelSmoothing: c.labelSmoothing,
    });
  } else if (c.divergence === 'forward-kl' || c.divergence === 'reverse-kl') {
    r = kd.klDiv(b.student, b.teacher, { ...o, direction: c.divergence === 'forward-kl' ? 'forward' : 'reverse' });
  } else if (c.divergence === 'jsd') {
    r = kd.jsd(b.student, b.teacher, { ...o, beta: c.beta });
  } else if (c.divergence === 'tvd') {
    r = kd.tvd(b.student, b.teacher, o);
  } else {
    r = kd.skewKl(b.student, b.teacher, { ...o, skew: c.skew, direction: c.divergence === 'skew-forward-kl' ? 'forward' : 'reverse' });
  }
  if (c.grad === 'inplace' && r.grad !== b.student) throw new Error("grad 'inplace' did not return the student tensor");
  if (c.grad === 'given' && r.grad !== given) throw new Error("grad given did not return the given tensor");
  return r;
}

export function runReference(c: DivCase, b: Built) {
  const common = {
    divergence: c.divergence,
    beta: c.beta ?? 0.5,
    skew: c.skew ?? 0.1,
    temperature: c.temperature ?? 1,
    scaleByTemperatureSquared: c.scaleT2 ?? true,
    teacherKind: c.teacherKind ?? 'logits',
    ldS: b.ldS,
    ldT: b.ldT,
    mask: b.mask,
    weights: b.weights,
    reduction: c.reduction ?? 'batchmean',
    normalizer: c.normalizer,
    gradScale: c.gradScale ?? 1,
  } as const;
  if (c.hardWeight !== undefined) {
    return refDistillationLoss(b.sRef, b.tRef, b.labels!, c.n, c.v, {
      ...common,
      hardWeight: c.hardWeight,
      softWeight: c.softWeight ?? 1,
      labelSmoothing: c.labelSmoothing ?? 0,
    });
  }
  return refDivergence(b.sRef, b.tRef, c.n, c.v, { ...common, labels: b.labels });
}

/**
 * The natural magnitude of each gradient element (see test/tolerances.ts gradTol):
 * |row factor| · (softWeight·s·(q_j + p_j)/T + hardWeight·(q0_j + [j = y] + ε/V)).
 */
export function gradMagnitude(c: DivCase, b: Built): Float64Array {
  const T = c.temperature ?? 1;
  const s = (c.scaleT2 ?? true) ? T * T : 1;
  const mag = new Float64Array(c.n * c.v);
  const selected = (i: number) => (!b.labels || b.labels[i] !== -100) && (!b.mask || b.mask[i] !== 0);
  let count = 0;
  for (let i = 0; i < c.n; i++) if (selected(i)) count++;
  const red = c.reduction ?? 'batchmean';
  const divisor = c.normalizer && red !== 'none' ? c.normalizer : red === 'batchmean' ? count : red === 'mean' ? count * c.v : 1;
  const hw = c.hardWeight ?? 0;
  const sw = c.hardWeight !== undefined ? (c.softWeight ?? 1) : 1;
  for (let i = 0; i < c.n; i++) {
    if (!selected(i)) continue;
    const f = (Math.abs(c.gradScale ?? 1) * (b.weights ? b.weights[i]! : 1)) / divisor;
    const z = b.sRef.subarray(i * b.ldS, i * b.ldS + c.v);
    const t = b.tRef.subarray(i * b.ldT, i * b.ldT + c.v);
    const q = softmax(z, T);
    const p = c.teacherKind === 'logprobs' && T === 1 ? Float64Array.from(t, Math.exp) : softmax(t, T);
    const q0 = hw ? softmax(z, 1) : undefined;
    // tvd's subgradient h = ½ sign(q − p) jumps by up to 1 where q and p tie to within
    // rounding; there either side is correct. g_j = s·q_j·(h_j − Σ_k q_k h_k)/T, so a tie
    // at k moves g_k by up to s·q_k/T and every other g_j, through the row sum, by up to
    // s·q_j·q_k/T (e.g. q_k = 1 − 8e-13 against p_k = 1: equal in f32, so h_k = 0 there
    // and −½ in float64, which halves a g_j of 1e-13). Allowed (÷ k, see gradTol).
    const tied = (j: number) => c.divergence === 'tvd' && Math.abs(q[j]! - p[j]!) <= 1e-5 * (q[j]! + p[j]!);
    let tiedMass = 0;
    for (let j = 0; j < c.v; j++) if (tied(j)) tiedMass += q[j]!;
    for (let j = 0; j < c.v; j++) {
      let m = (sw * s * (q[j]! + p[j]!)) / T;
      if (tied(j)) m += (sw * s * q[j]!) / (T * 64 * 2 ** -24);
      if (tiedMass > 0) m += (sw * s * q[j]! * tiedMass) / (T * 64 * 2 ** -24);
      if (q0) m += hw * (q0[j]! + (b.labels![i] === j ? 1 : 0) + (c.labelSmoothing ?? 0) / c.v);
      // Floor: gradient elements under ~1e-24 of the row's gradient scale f/T are f32
      // rounding noise of terms 20+ orders of magnitude larger (and below anything an
      // optimizer can apply: f32 weights have 2^-24 relative spacing); the kernels' exp
      // also flushes probabilities under e^-87.3 ≈ 1e-38 to zero. The allowance there is
      // 64·u·(M + ln V + 1)·1e-20 ≈ 1e-24 of f/T.
      mag[i * c.v + j] = f * Math.max(m, 1e-20 / T);
    }
  }
  return mag;
}

/** Runs native and reference; returns a list of failure messages (empty = pass). */
export function check(c: DivCase, device: kd.Device = 'cpu'): string[] {
  const b = build(c, device);
  return compareWithReference(c, b, runNative(c, b));
}

/** check() with asynchronous reads: any device, WebGPU included. */
export async function checkAsync(c: DivCase, device: kd.Device): Promise<string[]> {
  const b = build(c, device);
  return compareWithReference(c, b, await runNativeAsync(c, b));
}

/** Compares a run's outputs with the float64 reference; disposes the inputs. */
export function compareWithReference(c: DivCase, b: Built, out: RunOut): string[] {
  const ref = runReference(c, b);
  const T = c.temperature ?? 1;
  const errs: string[] = [];
  const wScale = (c.scaleT2 ?? true ? T * T : 1) * (c.weights ? 2.25 : 1) * Math.max(1, Math.abs(c.gradScale ?? 1));
  const lt = lossTol(b.maxAbs, T, c.v, wScale);
  const refLoss = typeof ref.loss === 'number' ? [ref.loss] : ref.loss;
  const gotLoss = typeof out.loss === 'number' ? [out.loss] : out.loss;
  const lr = compareArrays(gotLoss, refLoss, { ...lt, label: 'loss' });
  if (!lr.ok) errs.push(lr.message);
  if (c.grad !== 'none') {
    if (!out.grad) errs.push('no gradient returned');
    else {
      const outDtype: FloatDType = c.gradDtype === 'f32' ? 'f32' : c.sDtype;
      const gt = gradTol(outDtype, b.maxAbs, T, c.v, gradMagnitude(c, b));
      const gr = compareArrays(out.grad, ref.grad, { ...gt, label: 'grad', cols: c.v });
      if (!gr.ok) errs.push(gr.message);
    }
  }
  if (c.hardWeight !== undefined && 'hard' in ref) {
    for (const k of ['hard', 'soft', 'total'] as const) {
      const r = compareArrays(out[k]!, ref[k], { ...lt, label: k });
      if (!r.ok) errs.push(r.message);
    }
  }
  b.student.dispose();
  b.teacher.dispose();
  return errs;
}

/** The divergences (with the β / skew endpoints) that the CUDA, WebGPU and distillationLoss tests run. */
export const DIVERGENCE_TABLE: readonly { divergence: Divergence; beta?: number; skew?: number }[] = [
  { divergence: 'forward-kl' },
  { divergence: 'reverse-kl' },
  { divergence: 'jsd', beta: 0.5 },
  { divergence: 'jsd', beta: 0 },
  { divergence: 'jsd', beta: 1 },
  { divergence: 'tvd' },
  { divergence: 'skew-forward-kl', skew: 0.1 },
  { divergence: 'skew-reverse-kl', skew: 0.3 },
];
