/**
 * The differential fuzzer's cases: one JSON-serialisable description per op family,
 * and `runCase(c)`, which builds the inputs, runs the native op and its float64
 * reference, and returns the disagreements (empty = pass). Tolerances come from
 * test/tolerances.ts (sampleTeacher's weights, which have no entry there, derive theirs
 * from the same constants; see checkSampleTeacher).
 *
 * A failing case printed by the fuzzer is a ready-to-paste test:
 *   it('...', async () => expect(await runCase({ family: 'klDiv', ... })).toEqual([]));
 */
import * as kd from '../../lib/index.js';
import { compareArrays, decodeDtype, roundToDtype, encodeDtype, logSoftmax, logsumexp, softmax, mulberry32, type FloatDType, type Reduction } from '../reference/common.js';
import { refDivergence, type Divergence } from '../reference/divergences.js';
import { refDistillationLoss, refTokenStats } from '../reference/distillation.js';
import { refSparseKl, refTopk, type SparseTail } from '../reference/sparse.js';
import { U32, gradTol, logScale, lossTol, maxAbsFinite, type Tol } from '../tolerances.js';
import { strictFromEnv } from './known_issues.js';
import { buildMatrix, denseRows, matrixTensor, nanFilled, rowsOf, sameBits, type Matrix, type Special } from './inputs.js';

export const FAMILIES = ['klDiv', 'jsd', 'tvd', 'skewKl', 'distillationLoss', 'tokenStats', 'topk', 'sampleTeacher', 'sparseKlDiv'] as const;
export type Family = (typeof FAMILIES)[number];

/** What every case has: the shape of the inputs and how their values are made. */
export interface BaseCase {
  /** Leading dims: [N] or [B, T]. */
  lead: number[];
  /** Vocabulary (columns the op reads). */
  v: number;
  /** Extra row stride of the (student / only) input beyond its last dim. */
  padS: number;
  sDtype: FloatDType;
  async: boolean;
  /** Bulk values: seed, scale (std-dev) and llm.c-style peaks. */
  seed: number;
  scale: number;
  peaked: boolean;
  specials: Special[];
}

/** Token selection, weighting, reduction and gradient output (the loss ops). */
export interface LossCaseOptions {
  temperature?: number;
  scaleT2?: boolean;
  /** 'random': labels in [0, V); 'some-ignored': every third is ignoreIndex. */
  labels?: 'random' | 'some-ignored' | 'all-ignored';
  ignoreIndex?: number;
  mask?: boolean;
  weights?: boolean;
  reduction?: Reduction;
  normalizer?: number;
  gradScale?: number;
  gradDtype?: 'f32' | 'input';
  /** 'given': a NaN-filled tensor with row stride V + padS (every element must be written). */
  grad: 'new' | 'none' | 'inplace' | 'given';
}

export interface DivergenceCase extends BaseCase, LossCaseOptions {
  family: 'klDiv' | 'jsd' | 'tvd' | 'skewKl' | 'distillationLoss';
  /** Teacher: extra vocabulary (its last dim is v + vtExtra), extra row stride, dtype, kind. */
  vtExtra: number;
  padT: number;
  tDtype: FloatDType;
  teacher?: 'logits' | 'logprobs';
  direction?: 'forward' | 'reverse';
  beta?: number;
  skew?: number;
  /** distillationLoss only. */
  divergence?: Divergence;
  hardWeight?: number;
  softWeight?: number;
  labelSmoothing?: number;
}

export interface TokenStatsCase extends BaseCase {
  family: 'tokenStats';
  vtExtra: number;
  padT: number;
  tDtype: FloatDType;
  teacher?: 'logits' | 'logprobs';
  temperature?: number;
  sampled: boolean;
}

export interface TopkCase extends BaseCase {
  family: 'topk';
  /** Clamped to V. */
  k: number;
  temperature?: number;
  output?: 'logits' | 'logprobs';
  valuesDtype?: 'f32' | 'input';
}

export interface SampleTeacherCase extends BaseCase {
  family: 'sampleTeacher';
  samples: number;
  drawSeed: number;
  temperature?: number;
  proposalPower?: number;
  logprobs?: boolean;
}

export interface SparseKlDivCase extends BaseCase, LossCaseOptions {
  family: 'sparseKlDiv';
  tail: SparseTail;
  /** Slots per token (clamped to V for distinct-id tails). */
  k: number;
  /** Distinct-id tails: the teacher's top k, or k random distinct ids. */
  ids: 'topk' | 'random';
  valuesDtype: FloatDType;
}

export type FuzzCase = DivergenceCase | TokenStatsCase | TopkCase | SampleTeacherCase | SparseKlDivCase;

// ---------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------

function compare(errs: string[], actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tol & { atolPer?: ArrayLike<number> }, label: string, cols?: number, alts: ArrayLike<number>[] = []): void {
  let exp = expected;
  if (alts.length) {
    // Each element may match any of the references (see flushTiny): pick the one it matches.
    const pick = Float64Array.from(expected);
    for (let i = 0; i < pick.length; i++) {
      const t = { atol: tol.atol + (tol.atolPer ? tol.atolPer[i]! : 0), rtol: tol.rtol };
      if (close(actual[i]!, expected[i]!, t)) continue;
      const a = alts.find((x) => close(actual[i]!, x[i]!, t));
      if (a) pick[i] = a[i]!;
    }
    exp = pick;
  }
  const r = compareArrays(actual, exp, { ...tol, label, cols, maxReport: 5 });
  if (!r.ok) errs.push(r.message);
}

function close(a: number, e: number, tol: Tol): boolean {
  if (Number.isNaN(a) || Number.isNaN(e)) return Number.isNaN(a) && Number.isNaN(e);
  if (!Number.isFinite(a) || !Number.isFinite(e)) return a === e;
  return Math.abs(a - e) <= tol.atol + tol.rtol * Math.abs(e);
}

/**
 * The exact values, except those that round to ±inf in `dtype` (beyond 65504 in f16):
 * an output in that dtype cannot be anything else. In-range values are not rounded
 * (the tolerances' rtol already allows for the output rounding).
 */
function overflowTo(x: Float64Array, dtype: FloatDType): Float64Array {
  const r = roundToDtype(x, dtype);
  return x.map((v, i) => (Number.isFinite(v) && !Number.isFinite(r[i]!) ? r[i]! : v));
}

/** log of the smallest normal f32 (2^-126). */
export const LOG_F32_TINY = Math.log(2 ** -126);

/**
 * Inputs with every entry whose probability is below the smallest normal f32 replaced by
 * −inf (probability exactly 0), in the rows `rows` says (all if absent), except column
 * keep[i] of row i. The probability is softmax(x/T), or e^x for log-probs used as given.
 *
 * Why: a kernel computing in f32 cannot see such a probability. With the student −inf
 * where the teacher has p = e^-722, forward KL is infinite in float64 but p is 0 in f32
 * (0·log 0 = 0); a NaN teacher log-prob where q = e^-211 is weighted by an f32 zero. In
 * rows where the float64 reference is not finite, the fuzzer therefore also accepts the
 * reference run on such flushed inputs (student only, teacher only, or both: which
 * side's probabilities act as weights depends on the divergence). Both are exact answers
 * for inputs that differ only below f32's range; a kernel that drops a probability f32
 * can represent, or gives a NaN where every reference is finite, still fails.
 */
export function flushTiny(x: Float64Array, nrows: number, v: number, T: number, asLogprobs = false, rows?: boolean[], keep?: ArrayLike<number>): Float64Array {
  const out = Float64Array.from(x);
  for (let i = 0; i < nrows; i++) {
    if (rows && !rows[i]) continue;
    const row = x.subarray(i * v, (i + 1) * v);
    const lp = asLogprobs ? row : logSoftmax(row, T);
    for (let j = 0; j < v; j++) if (lp[j]! < LOG_F32_TINY && keep?.[i] !== j) out[i * v + j] = -Infinity;
  }
  return out;
}

/** Rows whose per-token value or gradient row is not finite (where flushed references apply). */
function nonFiniteRows(perToken: Float64Array, grad: Float64Array, v: number): boolean[] {
  return Array.from(perToken, (x, i) => !Number.isFinite(x) || grad.subarray(i * v, (i + 1) * v).some((g) => !Number.isFinite(g)));
}

function teacherSpec(c: { lead: number[]; v: number; vtExtra: number; padT: number; tDtype: FloatDType; seed: number; scale: number; peaked: boolean; specials: Special[]; teacher?: 'logits' | 'logprobs' }) {
  const width = c.v + c.vtExtra;
  return { rows: rowsOf(c.lead), used: c.v, width, ld: width + c.padT, dtype: c.tDtype, seed: c.seed + 2, scale: c.scale, peaked: c.peaked, logprobs: c.teacher === 'logprobs', specials: c.specials };
}

function studentSpec(c: BaseCase) {
  return { rows: rowsOf(c.lead), used: c.v, width: c.v, ld: c.v + c.padS, dtype: c.sDtype, seed: c.seed + 1, scale: c.scale, peaked: c.peaked, specials: c.specials };
}

interface Selection {
  labels?: Int32Array;
  mask?: Uint8Array;
  weights?: Float32Array;
  ignoreIndex: number;
  /** Σ w over selected tokens / the divisor (the reduced loss's scale), or max w ('none'). */
  lossScale: number;
  /** Per row |gradScale| · w_i / divisor (0 for unselected rows): what multiplies its gradient. */
  rowFactor: Float64Array;
}

/** Labels / mask / weights of a loss case, and the scale of its reduced loss. */
function selection(c: BaseCase & LossCaseOptions, n: number, needLabels: boolean): Selection {
  const rng = mulberry32(c.seed + 7);
  const ignoreIndex = c.ignoreIndex ?? -100;
  let labels: Int32Array | undefined;
  const kind = c.labels ?? (needLabels ? 'random' : undefined);
  if (kind) {
    labels = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      labels[i] = Math.floor(rng() * c.v);
      if (labels[i] === ignoreIndex) labels[i] = (labels[i]! + 1) % c.v; // a real label, unless V = 1
    }
    if (kind === 'some-ignored') for (let i = 0; i < n; i += 3) labels[i] = ignoreIndex;
    if (kind === 'all-ignored') labels.fill(ignoreIndex);
  }
  const mask = c.mask ? Uint8Array.from({ length: n }, (_, i) => (i % 4 === 1 ? 0 : 1)) : undefined;
  const weights = c.weights ? Float32Array.from({ length: n }, () => 0.25 + 2 * rng()) : undefined;
  let count = 0;
  let wsum = 0;
  let wmax = 0;
  for (let i = 0; i < n; i++) {
    const sel = (!labels || labels[i] !== ignoreIndex) && (!mask || mask[i] !== 0);
    if (!sel) continue;
    count++;
    const w = weights ? weights[i]! : 1;
    wsum += w;
    wmax = Math.max(wmax, w);
  }
  const red = c.reduction ?? 'batchmean';
  const divisor = count === 0 ? 1 : red === 'none' ? 1 : c.normalizer ?? (red === 'sum' ? 1 : red === 'batchmean' ? count : count * c.v);
  return {
    labels, mask, weights, ignoreIndex,
    lossScale: red === 'none' ? Math.max(wmax, 1e-30) : Math.max(wsum / divisor, 1e-30),
    rowFactor: Float64Array.from({ length: n }, (_, i) =>
      (!labels || labels[i] !== ignoreIndex) && (!mask || mask[i] !== 0) ? (Math.abs(c.gradScale ?? 1) * (weights ? weights[i]! : 1)) / divisor : 0,
    ),
  };
}

function lossOpts(c: LossCaseOptions, sel: Selection): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  if (c.temperature !== undefined) o.temperature = c.temperature;
  if (c.scaleT2 !== undefined) o.scaleByTemperatureSquared = c.scaleT2;
  if (c.ignoreIndex !== undefined) o.ignoreIndex = c.ignoreIndex;
  if (sel.mask) o.mask = sel.mask;
  if (sel.weights) o.weights = sel.weights;
  if (c.reduction) o.reduction = c.reduction;
  if (c.normalizer !== undefined) o.normalizer = c.normalizer;
  if (c.gradScale !== undefined) o.gradScale = c.gradScale;
  if (c.gradDtype) o.gradDtype = c.gradDtype;
  return o;
}

/** The `grad` option: false / 'inplace' / a NaN-filled given tensor (row stride V + padS). */
function gradOption(c: BaseCase & LossCaseOptions): { opt?: unknown; given?: kd.Tensor } {
  if (c.grad === 'none') return { opt: false };
  if (c.grad === 'inplace') return { opt: 'inplace' };
  if (c.grad === 'given') {
    const dtype = c.gradDtype === 'f32' ? 'f32' : c.sDtype;
    const ld = c.v + c.padS;
    const n = rowsOf(c.lead);
    const given = kd.tensor(nanFilled(dtype, Math.max(n * ld, 1)), [...c.lead, c.v], {
      dtype,
      strides: c.lead.length === 1 ? [ld, 1] : [c.lead[1]! * ld, ld, 1],
    });
    return { opt: given, given };
  }
  return {};
}

/**
 * Compares the gradient with the reference using gradTol's per-element allowance
 * (test/tolerances.ts): `mag[j]` is the natural magnitude of element j, the size of the
 * terms it is a difference of, from the inputs in float64 (see the *Magnitude helpers).
 * The exact gradient is rounded to the output dtype first (beyond 65504 an f16
 * gradient is ±inf).
 *
 * Rows where the reference gradient has a NaN (a NaN input, or inf − inf in an
 * infinite-loss row) are not compared element-wise: DESIGN.md promises a NaN in that
 * token's loss (checked with the loss), not a particular NaN pattern in its gradient
 * (a kernel may return 0 for V = 1, where the gradient is identically 0).
 */
function checkGrad(errs: string[], c: BaseCase & LossCaseOptions, r: { grad?: kd.Tensor }, student: kd.Tensor, given: kd.Tensor | undefined, refGrad: Float64Array, maxAbs: number, T: number, mag: Float64Array, altGrads: Float64Array[] = [], extraAtol?: Float64Array): void {
  if (c.grad === 'none') {
    if (r.grad !== undefined) errs.push('grad: returned although grad: false');
    return;
  }
  if (!r.grad) return void errs.push('grad: not returned');
  if (c.grad === 'inplace' && r.grad !== student) errs.push("grad: 'inplace' did not return the student tensor");
  if (c.grad === 'given' && r.grad !== given) errs.push('grad: the given tensor was not returned');
  const outDtype: FloatDType = c.gradDtype === 'f32' ? 'f32' : c.sDtype;
  if (r.grad.dtype !== outDtype) errs.push(`grad: dtype ${r.grad.dtype}, expected ${outDtype}`);
  const got = r.grad.toFloat32Array();
  const exp = overflowTo(refGrad, outDtype);
  const alts = altGrads.map((a) => overflowTo(a, outDtype));
  for (let i = 0; i * c.v < exp.length; i++) {
    const rowNaN = (a: Float64Array) => a.subarray(i * c.v, (i + 1) * c.v).some(Number.isNaN);
    if (rowNaN(exp) && alts.every(rowNaN)) {
      for (const a of [exp, ...alts]) a.fill(NaN, i * c.v, (i + 1) * c.v);
      got.fill(NaN, i * c.v, (i + 1) * c.v);
    }
  }
  const m = mag.map((x) => (Number.isFinite(x) ? x : 0));
  const tol = gradTol(outDtype, maxAbs, T, c.v, m);
  // Tiny probabilities: the kernels treat a probability (or mixture) below 2^-100 as 0
  // (native/cpu/divergence.cc kTinyMixture; their fast exp flushes below 2^-126). Such a
  // q_j multiplies log-ratio terms of size <= logScale, so an element may be off by
  // 2^-100·logScale·(the row's total gradient magnitude Σ_j mag_j): ~1e-30 of the row,
  // the f32 counterpart of tolerances.ts's f16 subnormal allowance.
  // And an output in f32 (bf16) cannot be closer than half its smallest subnormal, 2^-150
  // (2^-134), to the exact value: tolerances.ts allows the same for f16 (2^-24).
  const floorK = 2 ** -100 * logScale(maxAbs, T, c.v);
  const subnormal = outDtype === 'f32' ? 2 ** -150 : outDtype === 'bf16' ? 2 ** -134 : 0;
  for (let i = 0; i * c.v < m.length; i++) {
    let rowSum = 0;
    for (let j = i * c.v; j < (i + 1) * c.v; j++) rowSum += m[j]!;
    for (let j = i * c.v; j < (i + 1) * c.v; j++) tol.atolPer[j] += floorK * rowSum + subnormal + (extraAtol ? extraAtol[j]! : 0);
  }
  compare(errs, got, exp, tol, 'grad', c.v, alts);
}

// ---------------------------------------------------------------------------------
// klDiv / jsd / tvd / skewKl / distillationLoss
// ---------------------------------------------------------------------------------

function divergenceOf(c: DivergenceCase): Divergence {
  switch (c.family) {
    case 'klDiv': return c.direction === 'reverse' ? 'reverse-kl' : 'forward-kl';
    case 'jsd': return 'jsd';
    case 'tvd': return 'tvd';
    case 'skewKl': return c.direction === 'reverse' ? 'skew-reverse-kl' : 'skew-forward-kl';
    case 'distillationLoss': return c.divergence ?? 'forward-kl';
  }
}

async function checkDivergence(c: DivergenceCase, strict: boolean): Promise<string[]> {
  const n = rowsOf(c.lead);
  const distill = c.family === 'distillationLoss';
  const sm = buildMatrix(studentSpec(c), 's');
  const tspec = teacherSpec(c);
  const tm = buildMatrix(tspec, 't');
  const student = matrixTensor(sm, c.lead, c.v, c.v + c.padS, c.sDtype);
  const teacher = matrixTensor(tm, c.lead, tspec.width, tspec.ld, c.tDtype);
  const sel = selection(c, n, distill);
  const o = lossOpts(c, sel);
  if (c.teacher) o.teacher = c.teacher;
  if (sel.labels && !distill) o.labels = sel.labels;
  const g = gradOption(c);
  if (g.opt !== undefined) o.grad = g.opt;
  const div = divergenceOf(c);
  const hw = c.hardWeight ?? 0.5;
  const sw = c.softWeight ?? 0.5;

  let r: { loss: kd.Tensor; grad?: kd.Tensor; hard?: kd.Tensor; soft?: kd.Tensor; total?: kd.Tensor };
  switch (c.family) {
    case 'klDiv':
      if (c.direction !== undefined) o.direction = c.direction;
      r = c.async ? await kd.klDivAsync(student, teacher, o) : kd.klDiv(student, teacher, o);
      break;
    case 'jsd':
      if (c.beta !== undefined) o.beta = c.beta;
      r = c.async ? await kd.jsdAsync(student, teacher, o) : kd.jsd(student, teacher, o);
      break;
    case 'tvd':
      r = c.async ? await kd.tvdAsync(student, teacher, o) : kd.tvd(student, teacher, o);
      break;
    case 'skewKl':
      if (c.direction !== undefined) o.direction = c.direction;
      if (c.skew !== undefined) o.skew = c.skew;
      r = c.async ? await kd.skewKlAsync(student, teacher, o) : kd.skewKl(student, teacher, o);
      break;
    case 'distillationLoss':
      for (const k of ['divergence', 'beta', 'skew', 'hardWeight', 'softWeight', 'labelSmoothing'] as const) if (c[k] !== undefined) o[k] = c[k];
      r = c.async ? await kd.distillationLossAsync(student, teacher, sel.labels!, o) : kd.distillationLoss(student, teacher, sel.labels!, o);
      break;
  }

  const T = c.temperature ?? 1;
  const sRef = denseRows(sm.ref, n, c.v, c.v + c.padS);
  const tRef = denseRows(tm.ref, n, c.v, tspec.ld);
  const common = {
    // skew forward KL at λ = 0 is KL(p ‖ q) exactly; the reference's skew path drops the
    // finite limit q_j·g_j = −p_j where q_j underflows to 0 in float64 (a reference issue,
    // see the note in the fuzzer's report), so compare with forward KL there.
    divergence: div === 'skew-forward-kl' && (c.skew ?? 0.1) === 0 ? ('forward-kl' as const) : div,
    beta: c.beta ?? 0.5,
    skew: c.skew ?? 0.1,
    temperature: T,
    scaleByTemperatureSquared: c.scaleT2 ?? true,
    teacherKind: c.teacher ?? 'logits',
    ignoreIndex: sel.ignoreIndex,
    mask: sel.mask,
    weights: sel.weights,
    reduction: c.reduction ?? 'batchmean',
    normalizer: c.normalizer,
    gradScale: c.gradScale ?? 1,
  } as const;
  const maxAbs = Math.max(sm.maxAbs, tm.maxAbs);
  const s2 = (c.scaleT2 ?? true) ? T * T : 1;
  const errs: string[] = [];
  type Ref = { loss: number | Float64Array; grad: Float64Array; perToken?: Float64Array; hard?: Float64Array; soft?: Float64Array; total?: Float64Array };
  const reference = (sx: Float64Array, tx: Float64Array, hwx = hw, swx = sw): Ref =>
    distill
      ? refDistillationLoss(sx, tx, sel.labels!, n, c.v, { ...common, hardWeight: hwx, softWeight: swx, labelSmoothing: c.labelSmoothing ?? 0 })
      : refDivergence(sx, tx, n, c.v, { ...common, labels: sel.labels });
  const ref = reference(sRef, tRef);
  const bad = nonFiniteRows(ref.perToken ?? ref.total!, ref.grad, c.v);
  const alts: Ref[] = [];
  if (bad.some(Boolean)) {
    const asLp = c.teacher === 'logprobs' && T === 1;
    const fs = flushTiny(sRef, n, c.v, T, false, bad);
    const ft = flushTiny(tRef, n, c.v, asLp ? 1 : T, asLp, bad);
    if (!distill) alts.push(reference(fs, tRef), reference(sRef, ft), reference(fs, ft));
    else {
      // the CE term reads log q (never underflows): flush for the divergence term only
      const ce = reference(sRef, tRef, hw, 0);
      const plus = (a: Ref, b: Ref): Ref => {
        const add = (x: Float64Array, y: Float64Array) => x.map((v, i) => v + y[i]!);
        const loss = typeof a.loss === 'number' ? a.loss + (b.loss as number) : add(a.loss, b.loss as Float64Array);
        return { loss, grad: add(a.grad, b.grad), hard: a.hard, soft: b.soft, total: add(a.total!, b.total!) };
      };
      if (sw !== 0) for (const [x, y] of [[fs, tRef], [sRef, ft], [fs, ft]] as const) alts.push(hw !== 0 ? plus(ce, reference(x, y, 0, sw)) : reference(x, y, 0, sw));
    }
  }
  // CE works on the untempered logits: use the larger of the two log-scales (T < 1 or 1).
  const Tg = distill ? Math.min(T, 1) : T;
  const lt = lossTol(maxAbs, Tg, c.v, (distill ? hw + sw * s2 : s2) * sel.lossScale);
  const gotLoss = c.reduction === 'none' ? r.loss.toFloat32Array() : [r.loss.item()];
  if (c.reduction === 'none' && !sameShape(r.loss.shape, c.lead)) errs.push(`loss: shape [${r.loss.shape.join(', ')}], expected [${c.lead.join(', ')}]`);
  const arr = (x: number | Float64Array) => (typeof x === 'number' ? [x] : x);
  compare(errs, gotLoss, arr(ref.loss), lt, 'loss', undefined, alts.map((a) => arr(a.loss)));
  const mag = new Float64Array(n * c.v);
  for (let i = 0; i < n; i++) {
    const f = sel.rowFactor[i]!;
    if (f === 0) continue;
    // |grad_j| ≲ f·(softWeight·s·(q_j + p_j)/T + hardWeight·(q0_j + [j = y] + ε/V))
    const z = sRef.subarray(i * c.v, (i + 1) * c.v);
    const t = tRef.subarray(i * c.v, (i + 1) * c.v);
    const q = softmax(z, T);
    const p = c.teacher === 'logprobs' && T === 1 ? Float64Array.from(t, Math.exp) : softmax(t, T);
    const q0 = distill && hw ? softmax(z, 1) : undefined;
    const swx = distill ? sw : 1;
    for (let j = 0; j < c.v; j++) {
      // (a term with weight 0 is left out: a NaN teacher cannot reach a CE-only gradient)
      let m = swx !== 0 ? (swx * s2 * (q[j]! + p[j]!)) / T : 0;
      if (q0) m += hw * (q0[j]! + (sel.labels![i] === j ? 1 : 0) + (c.labelSmoothing ?? 0) / c.v);
      mag[i * c.v + j] = f * m;
    }
  }
  // TVD's (sub)gradient h_j = ½ sign(q_j − p_j) is discontinuous: where q_j and p_j agree
  // to within the f32 error of computing them (64u·logScale·(q_j + p_j), as gradTol), any
  // h_j in [−½, ½] is right, which moves element j by up to q_j/T and every element k by
  // up to q_k·Σ_ambiguous q_j/T (through Σ q h).
  let extra: Float64Array | undefined;
  if (div === 'tvd') {
    extra = new Float64Array(n * c.v);
    const k64 = 64 * U32 * logScale(maxAbs, T, c.v);
    for (let i = 0; i < n; i++) {
      const f = sel.rowFactor[i]!;
      if (f === 0) continue;
      const q = softmax(sRef.subarray(i * c.v, (i + 1) * c.v), T);
      const t = tRef.subarray(i * c.v, (i + 1) * c.v);
      const p = c.teacher === 'logprobs' && T === 1 ? Float64Array.from(t, Math.exp) : softmax(t, T);
      const amb = Array.from(q, (qj, j) => Math.abs(qj - p[j]!) <= k64 * (qj + p[j]!));
      let qa = 0;
      q.forEach((qj, j) => (qa += amb[j] ? qj : 0));
      const c0 = (f * (distill ? sw : 1) * s2) / T;
      for (let j = 0; j < c.v; j++) extra[i * c.v + j] = c0 * q[j]! * ((amb[j] ? 1 : 0) + qa);
    }
  }
  checkGrad(errs, c, r, student, g.given, ref.grad, maxAbs, Tg, mag, alts.map((a) => a.grad), extra);
  if (distill) {
    const unit = lossTol(maxAbs, Tg, c.v, Math.max(hw + sw * s2, s2, 1) * (sel.weights ? 2.25 : 1));
    for (const k of ['hard', 'soft', 'total'] as const) {
      if (!r[k]) errs.push(`${k}: not returned`);
      else if (k === 'soft' && sw === 0) continue; // softWeight 0: the divergence is not computed
      else compare(errs, r[k]!.toFloat32Array(), ref[k]!, unit, k, undefined, alts.map((a) => a[k]!));
    }
  }
  return errs;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// ---------------------------------------------------------------------------------
// tokenStats
// ---------------------------------------------------------------------------------

async function checkTokenStats(c: TokenStatsCase): Promise<string[]> {
  const n = rowsOf(c.lead);
  const sm = buildMatrix(studentSpec(c), 's');
  const tspec = teacherSpec(c);
  const tm = buildMatrix(tspec, 't');
  const student = matrixTensor(sm, c.lead, c.v, c.v + c.padS, c.sDtype);
  const teacher = matrixTensor(tm, c.lead, tspec.width, tspec.ld, c.tDtype);
  let sampled: Int32Array | undefined;
  if (c.sampled) {
    const rng = mulberry32(c.seed + 9);
    sampled = Int32Array.from({ length: n }, () => Math.floor(rng() * c.v));
  }
  const o: kd.TokenStatsOptions = {};
  if (sampled) o.sampled = sampled;
  if (c.temperature !== undefined) o.temperature = c.temperature;
  if (c.teacher) o.teacher = c.teacher;
  const got = c.async ? await kd.tokenStatsAsync(student, teacher, o) : kd.tokenStats(student, teacher, o);
  const sRef = denseRows(sm.ref, n, c.v, c.v + c.padS);
  const tRef = denseRows(tm.ref, n, c.v, tspec.ld);
  const T = c.temperature ?? 1;
  const opts = { sampled, temperature: c.temperature, teacherKind: c.teacher };
  const ref = refTokenStats(sRef, tRef, n, c.v, opts);
  const asLp = c.teacher === 'logprobs' && T === 1;
  const fs = flushTiny(sRef, n, c.v, T);
  const ft = flushTiny(tRef, n, c.v, T, asLp);
  const alts = [refTokenStats(fs, tRef, n, c.v, opts), refTokenStats(sRef, ft, n, c.v, opts), refTokenStats(fs, ft, n, c.v, opts)];
  const errs: string[] = [];
  const tol = lossTol(Math.max(sm.maxAbs, tm.maxAbs), c.temperature ?? 1, c.v);
  for (const k of ['forwardKl', 'reverseKl', 'studentEntropy', 'teacherEntropy', 'studentLogProb', 'teacherLogProb'] as const) {
    const g = got[k];
    if (!ref[k]) {
      if (g) errs.push(`${k}: returned without sampled`);
      continue;
    }
    if (!g) errs.push(`${k}: missing`);
    else compare(errs, g.toFloat32Array(), ref[k]!, tol, k, undefined, alts.map((a) => a[k]!));
  }
  if (c.sampled) {
    if (!got.teacherRank) errs.push('teacherRank: missing');
    else compare(errs, got.teacherRank.toArray() as Int32Array, ref.teacherRank!, { atol: 0, rtol: 0 }, 'teacherRank');
  }
  return errs;
}

// ---------------------------------------------------------------------------------
// topk
// ---------------------------------------------------------------------------------

async function checkTopk(c: TopkCase): Promise<string[]> {
  const n = rowsOf(c.lead);
  const k = Math.min(c.k, c.v);
  const m = buildMatrix(studentSpec(c), 's');
  const x = matrixTensor(m, c.lead, c.v, c.v + c.padS, c.sDtype);
  const o: kd.TopkOptions = {};
  if (c.temperature !== undefined) o.temperature = c.temperature;
  if (c.output) o.output = c.output;
  if (c.valuesDtype) o.valuesDtype = c.valuesDtype;
  const got = c.async ? await kd.topkAsync(x, k, o) : kd.topk(x, k, o);
  const ref = refTopk(denseRows(m.ref, n, c.v, c.v + c.padS), n, c.v, k, { temperature: c.temperature, output: c.output });
  const errs: string[] = [];
  const vd: FloatDType = c.valuesDtype === 'input' ? c.sDtype : 'f32';
  if (got.values.dtype !== vd) errs.push(`values: dtype ${got.values.dtype}, expected ${vd}`);
  if (!sameShape(got.values.shape, [...c.lead, k])) errs.push(`values: shape [${got.values.shape.join(', ')}]`);
  compare(errs, got.indices.toArray() as Int32Array, ref.indices, { atol: 0, rtol: 0 }, 'indices', k);
  const T = c.temperature ?? 1;
  // raw logits are copied (exact, the input dtype converts to f32 exactly); log-probs carry
  // the log-prob error, plus the output rounding when stored in the input dtype.
  const rounding = gradTol(vd, m.maxAbs, T, c.v, []);
  const vt = c.output === 'logprobs' ? { atol: lossTol(m.maxAbs, T, c.v).atol + rounding.atol, rtol: rounding.rtol } : { atol: 0, rtol: 0 };
  compare(errs, got.values.toFloat32Array(), overflowTo(ref.values, vd), vt, 'values', k);
  // A tail more than ~87 nats below the top underflows f32: −inf is then also accepted
  // (flushTiny); the mass it stands for is 0 in f32 either way.
  const altTail = refTopk(flushTiny(denseRows(m.ref, n, c.v, c.v + c.padS), n, c.v, T), n, c.v, k, { temperature: c.temperature }).tailLogProb;
  // A row with a +inf logit has no distribution (test/reference/common.ts logSoftmax gives
  // NaN; native/common/topk.h says NaN): refTopk's lse(tail) − lse(row) = −inf there is
  // taken as the limit instead. Either is accepted for such rows (f16 overflows to +inf).
  const dense = denseRows(m.ref, n, c.v, c.v + c.padS);
  const infRows = ref.tailLogProb.map((x, i) => (dense.subarray(i * c.v, (i + 1) * c.v).includes(Infinity) ? NaN : x));
  compare(errs, got.tailLogProb.toFloat32Array(), ref.tailLogProb, lossTol(m.maxAbs, T, c.v), 'tailLogProb', undefined, [altTail, infRows]);
  return errs;
}

// ---------------------------------------------------------------------------------
// sampleTeacher
// ---------------------------------------------------------------------------------

/**
 * sampleTeacher draws ids at random, so the reference cannot predict them; per drawn id
 * it can predict everything else. Checks: the same seed gives bitwise-identical results
 * (sync and async); a row without a distribution (a NaN, a +inf, or no finite logit)
 * gives ids 0 and NaN weights / log-probs; otherwise every id is in [0, V) with a finite
 * logit, its log-prob matches log softmax(x/T) (lossTol), and its weight matches
 * p_id / (n r_id), r ∝ p^τ, computed in float64 in the log domain, within
 *   rtol = 1e-4 + 64u·logScale·(1 + τ)   (the log-prob error of p_id and of r_id, as lossTol)
 *        + 2^-s / r̂_id + V·2^-s          (the kernel's fixed-point proposal: q_j = ⌊r̂_j 2^s⌋,
 *                                          r̂ = r / max r; native/common/sample_teacher.h)
 */
async function checkSampleTeacher(c: SampleTeacherCase): Promise<string[]> {
  const n = rowsOf(c.lead);
  const m = buildMatrix(studentSpec(c), 's');
  const x = matrixTensor(m, c.lead, c.v, c.v + c.padS, c.sDtype);
  const o: kd.SampleTeacherOptions = { seed: c.drawSeed };
  if (c.temperature !== undefined) o.temperature = c.temperature;
  if (c.proposalPower !== undefined) o.proposalPower = c.proposalPower;
  if (c.logprobs !== undefined) o.logprobs = c.logprobs;
  const got = c.async ? await kd.sampleTeacherAsync(x, c.samples, o) : kd.sampleTeacher(x, c.samples, o);
  const again = c.async ? kd.sampleTeacher(x, c.samples, o) : await kd.sampleTeacherAsync(x, c.samples, o);
  const errs: string[] = [];
  const ids = got.indices.toArray() as Int32Array;
  const w = got.weights.toArray() as Float32Array;
  const lp = got.logprobs?.toArray() as Float32Array | undefined;
  if (!sameBits(ids, again.indices.toArray()) || !sameBits(w, again.weights.toArray()) || (lp && !sameBits(lp, again.logprobs!.toArray())))
    errs.push('not deterministic: the same seed gave different results (sync vs async)');
  if ((c.logprobs ?? true) !== (lp !== undefined)) errs.push('logprobs: presence does not follow the option');
  const T = c.temperature ?? 1;
  const tau = c.proposalPower ?? 1;
  const ld = c.v + c.padS;
  let b = 0;
  while (b < 62 && 2 ** b < c.v) b++;
  const s = 63 - b; // sample_fixed_shift(V)
  const lpTol = lossTol(m.maxAbs, T, c.v);
  const wRtol0 = 1e-4 + 64 * U32 * logScale(m.maxAbs, T, c.v) * (1 + tau) + c.v * 2 ** -s;
  let reported = 0;
  const bad = (msg: string) => {
    if (reported++ < 5) errs.push(msg);
  };
  for (let i = 0; i < n; i++) {
    const row = m.ref.subarray(i * ld, i * ld + c.v);
    let mx = -Infinity;
    let nan = false;
    for (const v of row) {
      if (Number.isNaN(v)) nan = true;
      else if (v > mx) mx = v;
    }
    const invalid = nan || !Number.isFinite(mx);
    const logp = logSoftmax(row, T);
    // log r_j = τ log p_j − lse_k(τ log p_k) over the finite logits (τ = 0: uniform over them)
    const tl = Array.from(row, (v, j) => (v === -Infinity ? -Infinity : tau * logp[j]!));
    const lseR = logsumexp(tl);
    const logMaxP = mx / T - logsumexp(row, T); // log of the largest p
    for (let d = 0; d < c.samples; d++) {
      const at = i * c.samples + d;
      const id = ids[at]!;
      if (invalid) {
        if (id !== 0 || !Number.isNaN(w[at]!) || (lp && !Number.isNaN(lp[at]!)))
          bad(`row ${i} has no distribution: expected id 0 and NaN, got id ${id}, weight ${w[at]}${lp ? `, logprob ${lp[at]}` : ''}`);
        continue;
      }
      if (!(id >= 0 && id < c.v) || row[id] === -Infinity) {
        bad(`row ${i} draw ${d}: id ${id} is outside [0, ${c.v}) or has p = 0 (logit ${row[id]})`);
        continue;
      }
      const logr = tl[id]! - lseR;
      const wRef = Math.exp(logp[id]! - logr) / c.samples;
      const rhat = Math.exp(tl[id]! - tau * logMaxP); // r / max r
      const rtol = wRtol0 + 2 ** -s / rhat;
      if (!(Math.abs(w[at]! - wRef) <= rtol * Math.abs(wRef) + 1e-45))
        bad(`row ${i} draw ${d} (id ${id}): weight ${w[at]} vs reference ${wRef} (rtol ${rtol.toExponential(2)})`);
      if (lp && !(Math.abs(lp[at]! - logp[id]!) <= lpTol.atol + lpTol.rtol * Math.abs(logp[id]!)))
        bad(`row ${i} draw ${d} (id ${id}): logprob ${lp[at]} vs reference ${logp[id]}`);
    }
  }
  if (reported > 5) errs.push(`... ${reported - 5} more`);
  return errs;
}

// ---------------------------------------------------------------------------------
// sparseKlDiv
// ---------------------------------------------------------------------------------

async function checkSparseKlDiv(c: SparseKlDivCase, strict: boolean): Promise<string[]> {
  const n = rowsOf(c.lead);
  const sampled = c.tail === 'sampled';
  const k = sampled ? c.k : Math.min(c.k, c.v);
  const sm = buildMatrix(studentSpec(c), 's');
  const student = matrixTensor(sm, c.lead, c.v, c.v + c.padS, c.sDtype);
  const T = c.temperature ?? 1;
  const rng = mulberry32(c.seed + 11);
  // The sparse teacher, from a full teacher distribution at temperature T.
  const tm = buildMatrix({ rows: n, used: c.v, width: c.v, ld: c.v, dtype: 'f32', seed: c.seed + 2, scale: c.scale, peaked: c.peaked, specials: [] }, 't');
  const ids = new Int32Array(n * k);
  const vals64 = new Float64Array(n * k);
  const tail = new Float32Array(n);
  const sw = sampled ? new Float32Array(n * k) : undefined;
  for (let i = 0; i < n; i++) {
    const t = tm.ref.subarray(i * c.v, (i + 1) * c.v);
    const logp = logSoftmax(t, T);
    let chosen: number[];
    if (sampled) chosen = Array.from({ length: k }, () => Math.floor(rng() * c.v));
    else if (c.ids === 'topk') chosen = Array.from(refTopk(t, 1, c.v, k).indices);
    else {
      const perm = Array.from({ length: c.v }, (_, j) => j);
      for (let j = 0; j < k; j++) {
        const r = j + Math.floor(rng() * (c.v - j));
        [perm[j], perm[r]] = [perm[r]!, perm[j]!];
      }
      chosen = perm.slice(0, k);
    }
    const isId = new Uint8Array(c.v);
    chosen.forEach((id, j) => {
      ids[i * k + j] = id;
      vals64[i * k + j] = logp[id]!;
      isId[id] = 1;
      if (sw) sw[i * k + j] = 0.01 + 2 * rng();
    });
    const rest: number[] = [];
    for (let j = 0; j < c.v; j++) if (!isId[j]) rest.push(logp[j]!);
    tail[i] = rest.length ? logsumexp(rest) : -Infinity;
  }
  // Teacher-side specials land in the slots: values (or the sample weights for 'sampled').
  if (n > 0 && k > 0)
    for (const sp of c.specials) {
      if (sp.side !== 't') continue;
      const at = (sp.row % n) * k + (sp.col % k);
      if (sw) sw[at] = sp.value === 'nan' ? NaN : sp.value === '1e4' ? 1e4 : sp.value === 'sub' ? 1e-40 : 0;
      else vals64[at] = sp.value === '1e4' ? 0 : sp.value === 'sub' ? -1e-40 : sp.value === 'nan' ? NaN : sp.value === '-1e4' ? -1e4 : sp.value === '-inf' ? -Infinity : 0;
    }
  const vm = buildMatrixFrom(vals64, c.valuesDtype);
  const teacher: kd.SparseTeacher = { indices: kd.tensor(ids, [...c.lead, k]) };
  if (sw) teacher.weights = kd.tensor(sw, [...c.lead, k]);
  else teacher.values = kd.tensor(vm.data, [...c.lead, k], { dtype: c.valuesDtype });
  if (c.tail === 'bucket') teacher.tailLogProb = kd.tensor(tail, [...c.lead]);

  const sel = selection(c, n, false);
  const o = lossOpts(c, sel) as Record<string, unknown>;
  o.tail = c.tail;
  if (sel.labels) o.labels = sel.labels;
  const g = gradOption(c);
  if (g.opt !== undefined) o.grad = g.opt;
  const r = c.async ? await kd.sparseKlDivAsync(student, teacher, o as unknown as kd.SparseKlDivOptions) : kd.sparseKlDiv(student, teacher, o as unknown as kd.SparseKlDivOptions);

  const sRef = denseRows(sm.ref, n, c.v, c.v + c.padS);
  const tail64 = Float64Array.from(tail);
  const reference = (sx: Float64Array, vx: Float64Array, tx: Float64Array) =>
    refSparseKl(sx, n, c.v, { k, indices: ids, values: sw ? undefined : vx, tailLogProb: c.tail === 'bucket' ? tx : undefined, weights: sw }, {
      tail: c.tail,
      temperature: T,
      scaleByTemperatureSquared: c.scaleT2 ?? true,
      labels: sel.labels,
      ignoreIndex: sel.ignoreIndex,
      mask: sel.mask,
      weights: sel.weights,
      reduction: c.reduction ?? 'batchmean',
      normalizer: c.normalizer,
      gradScale: c.gradScale ?? 1,
    });
  const ref = reference(sRef, vm.ref, tail64);
  const bad = nonFiniteRows(ref.perToken, ref.grad, c.v);
  const alts: ReturnType<typeof reference>[] = [];
  if (bad.some(Boolean)) {
    const fs = flushTiny(sRef, n, c.v, T, false, bad);
    const fv = flushTiny(vm.ref, n, k, 1, true, bad);
    const ftail = flushTiny(tail64, n, 1, 1, true, bad);
    alts.push(reference(fs, vm.ref, tail64), reference(sRef, fv, ftail), reference(fs, fv, ftail));
  }
  const errs: string[] = [];
  const s2 = (c.scaleT2 ?? true) ? T * T : 1;
  // 'sampled': the loss is Σ w·(−log q), so its scale carries the row's total weight.
  let wrow = 1;
  if (sw) for (let i = 0; i < n; i++) {
    let a = 0;
    for (let j = 0; j < k; j++) a += Number.isFinite(sw[i * k + j]!) ? Math.abs(sw[i * k + j]!) : 0;
    wrow = Math.max(wrow, a);
  }
  const maxAbs = Math.max(sm.maxAbs, vm.maxAbs);
  const lt = lossTol(maxAbs, T, c.v, s2 * sel.lossScale * wrow);
  const gotLoss = c.reduction === 'none' ? r.loss.toFloat32Array() : [r.loss.item()];
  const arr = (x: number | Float64Array) => (typeof x === 'number' ? [x] : x);
  compare(errs, gotLoss, arr(ref.loss), lt, 'loss', undefined, alts.map((a) => arr(a.loss)));
  // |grad_j| ≲ f·s·(q_j·A + B_j)/T: A = the teacher's total weight in the row (1, S_p or
  // Σ|w|), B_j = its weight at j (+ p_t·q_j/q_t off the ids for 'bucket', + q̃_j for 'conditional')
  const mag = new Float64Array(n * c.v);
  for (let i = 0; i < n; i++) {
    const f = sel.rowFactor[i]!;
    if (f === 0) continue;
    const z = sRef.subarray(i * c.v, (i + 1) * c.v);
    const q = softmax(z, T);
    const B = new Float64Array(c.v);
    let A = 0;
    const rowVals = Array.from({ length: k }, (_, j) => vm.ref[i * k + j]!);
    const pt = c.tail === 'renormalize' || c.tail === 'conditional' ? softmax(rowVals, 1) : undefined;
    let qIds = 0;
    for (let j = 0; j < k; j++) qIds += q[ids[i * k + j]!]!;
    for (let j = 0; j < k; j++) {
      const id = ids[i * k + j]!;
      const w = sw ? Math.abs(sw[i * k + j]!) : pt ? pt[j]! : Math.exp(rowVals[j]!);
      A += w;
      B[id]! += w + (c.tail === 'conditional' ? q[id]! / qIds : 0);
    }
    if (c.tail === 'bucket') {
      const pT = Math.exp(tail[i]!);
      A += pT;
      const logq = logSoftmax(z, T);
      const isId = new Uint8Array(c.v);
      for (let j = 0; j < k; j++) isId[ids[i * k + j]!] = 1;
      const logQt = logsumexp(Array.from(z).filter((_, m) => !isId[m]), T) - logsumexp(z, T);
      if (pT > 0) for (let m = 0; m < c.v; m++) if (!isId[m]) B[m] = pT * Math.exp(logq[m]! - logQt);
    }
    for (let m = 0; m < c.v; m++) mag[i * c.v + m] = (f * s2 * (q[m]! * A + B[m]!)) / T;
  }
  checkGrad(errs, c, r, student, g.given, ref.grad, maxAbs, T, mag, alts.map((a) => a.grad));
  return errs;
}

/** Encodes float64 values in a dtype and decodes them back (what the kernel will see). */
function buildMatrixFrom(vals: Float64Array, dtype: FloatDType): Matrix {
  const data = encodeDtype(vals, dtype);
  const ref = decodeDtype(data, dtype);
  return { data, ref, maxAbs: maxAbsFinite(ref) };
}

// ---------------------------------------------------------------------------------

/**
 * Runs one case; returns the disagreements with the reference (empty = pass).
 * `strict`: no relaxation for the known issues (test/fuzz/known_issues.ts).
 */
export async function runCase(c: FuzzCase, opts: { strict?: boolean } = {}): Promise<string[]> {
  const strict = opts.strict ?? strictFromEnv();
  switch (c.family) {
    case 'tokenStats': return checkTokenStats(c);
    case 'topk': return checkTopk(c);
    case 'sampleTeacher': return checkSampleTeacher(c);
    case 'sparseKlDiv': return checkSparseKlDiv(c, strict);
    default: return checkDivergence(c, strict);
  }
}

/** A one-line description of a case (for test names). */
export function caseTitle(c: FuzzCase): string {
  const parts: string[] = [c.family, `[${c.lead.join('x')}]x${c.v}`, c.sDtype];
  if ('tDtype' in c && c.tDtype !== c.sDtype) parts.push(`teacher ${c.tDtype}`);
  if (c.specials.length) parts.push(c.specials.map((s) => `${s.side}:${s.value}`).join(','));
  return parts.join(' ');
}
