// Float64 reference for distillationLoss (hard cross-entropy + soft divergence, fused)
// and tokenStats (per-token statistics for on-policy distillation).

import { checkMatrix, logSoftmax, lossDivisor, reduceLoss, row, selectTokens } from './common.js';
import type { Reduction } from './common.js';
import {
  entropyFromLogProbs,
  klFromLogProbs,
  rowDivergence,
  teacherLogProbs,
} from './divergences.js';
import type { DivergenceOptions, TeacherKind } from './divergences.js';

/**
 * PyTorch `cross_entropy(z, y, label_smoothing=ε)` for one row, on the UN-tempered
 * logits, q0 = softmax(z):
 *
 *   loss = (1 − ε)·(−log q0_y) + ε · mean_j(−log q0_j)
 *   dloss/dz = q0 − ((1 − ε)·onehot(y) + ε / V)
 *
 * (the target distribution (1−ε)·onehot + ε/V sums to 1, so the softmax backward of the
 * cross-entropy −Σ target·log q0 is q0 − target). With ε > 0 a −inf logit makes the
 * loss +inf, as in PyTorch.
 */
export function refCrossEntropy(
  z: ArrayLike<number>,
  label: number,
  labelSmoothing = 0,
): { loss: number; grad: Float64Array } {
  const V = z.length;
  if (!Number.isInteger(label) || label < 0 || label >= V) throw new RangeError(`label ${label} outside [0, ${V})`);
  if (!(labelSmoothing >= 0 && labelSmoothing <= 1)) throw new RangeError(`labelSmoothing must be in [0, 1]`);
  const eps = labelSmoothing;
  const logq0 = logSoftmax(z, 1);
  let meanNll = 0;
  if (eps > 0) {
    for (let j = 0; j < V; j++) meanNll -= logq0[j]!;
    meanNll /= V;
  }
  const loss = (1 - eps) * -logq0[label]! + (eps > 0 ? eps * meanNll : 0);
  const grad = new Float64Array(V);
  for (let j = 0; j < V; j++) grad[j] = Math.exp(logq0[j]!) - ((j === label ? 1 - eps : 0) + eps / V);
  return { loss, grad };
}

export interface DistillationOptions extends Omit<DivergenceOptions, 'labels'> {
  /** Weight of the cross-entropy (hard) term (default 1). */
  hardWeight?: number;
  /** Weight of the divergence (soft) term (default 1). */
  softWeight?: number;
  /** Label smoothing ε of the cross-entropy (default 0). */
  labelSmoothing?: number;
}

export interface DistillationResult {
  /** The reduced total, or the per-token total [N] for 'none'. */
  loss: number | Float64Array;
  /** [N] CE_i: NOT multiplied by w_i nor hardWeight; 0 for unselected tokens. */
  hard: Float64Array;
  /** [N] s·D_i (tempered, s = T² per scaleByTemperatureSquared): NOT multiplied by w_i nor softWeight; 0 if unselected. */
  soft: Float64Array;
  /** [N] w_i · (hardWeight·hard_i + softWeight·soft_i); 0 for unselected tokens. */
  total: Float64Array;
  /** [N · V] dense (row stride V): gradScale · dLoss/dz; exactly 0 on unselected rows. */
  grad: Float64Array;
}

/**
 * distillationLoss: per token the objective hardWeight · CE(z, y) + softWeight · s·D(p, q).
 *
 * - `labels` are both the CE targets and a token selector (TRL: an ignored label masks
 *   both terms); `mask` further deselects tokens.
 * - hard_i and soft_i are returned unweighted (neither w_i nor hardWeight/softWeight
 *   applied); total_i carries all the weights. The loss reduces `total` with the same
 *   rules as the divergences (see lossDivisor), and grad = gradScale · dLoss/dz.
 * - A term whose weight (hardWeight or softWeight) is exactly 0 is left out of total
 *   and of the gradient (so a NaN or inf in it cannot leak in as 0·NaN); hard/soft still
 *   report it.
 */
export function refDistillationLoss(
  student: ArrayLike<number>,
  teacher: ArrayLike<number>,
  labels: ArrayLike<number>,
  N: number,
  V: number,
  opts: DistillationOptions,
): DistillationResult {
  const ldS = opts.ldS ?? V;
  const ldT = opts.ldT ?? V;
  checkMatrix('student', student, N, V, ldS);
  checkMatrix('teacher', teacher, N, V, ldT);
  const T = opts.temperature ?? 1;
  const s = (opts.scaleByTemperatureSquared ?? true) ? T * T : 1;
  const hw = opts.hardWeight ?? 1;
  const sw = opts.softWeight ?? 1;
  const eps = opts.labelSmoothing ?? 0;
  const reduction: Reduction = opts.reduction ?? 'batchmean';
  const gradScale = opts.gradScale ?? 1;
  if (opts.weights !== undefined && opts.weights.length < N) throw new RangeError(`weights: need ${N} entries`);

  const selected = selectTokens(N, { labels, ignoreIndex: opts.ignoreIndex, mask: opts.mask });
  const count = selected.filter(Boolean).length;
  const divisor = lossDivisor(reduction, count, V, opts.normalizer);

  const hard = new Float64Array(N);
  const soft = new Float64Array(N);
  const total = new Float64Array(N);
  const grad = new Float64Array(N * V);
  for (let i = 0; i < N; i++) {
    if (!selected[i]) continue;
    const w = opts.weights === undefined ? 1 : opts.weights[i]!;
    const z = row(student, i, V, ldS);
    const ce = refCrossEntropy(z, labels[i]!, eps);
    const div = rowDivergence(z, row(teacher, i, V, ldT), opts);
    hard[i] = ce.loss;
    soft[i] = s * div.loss;
    total[i] = w * ((hw !== 0 ? hw * hard[i]! : 0) + (sw !== 0 ? sw * soft[i]! : 0));
    for (let j = 0; j < V; j++) {
      const dHard = hw !== 0 ? hw * ce.grad[j]! : 0;
      const dSoft = sw !== 0 ? sw * s * div.grad[j]! : 0;
      grad[i * V + j] = (gradScale * w * (dHard + dSoft)) / divisor;
    }
  }
  return { loss: reduceLoss(total, reduction, divisor), hard, soft, total, grad };
}

export interface TokenStatsOptions {
  /** [N] sampled token ids (each in [0, V)). */
  sampled?: ArrayLike<number>;
  temperature?: number;
  teacherKind?: TeacherKind;
  ldS?: number;
  ldT?: number;
}

export interface TokenStatsResult {
  /** KL(p ‖ q) per token. */
  forwardKl: Float64Array;
  /** KL(q ‖ p) per token. */
  reverseKl: Float64Array;
  /** H(q) = −Σ q log q. */
  studentEntropy: Float64Array;
  /** H(p) = −Σ p log p. */
  teacherEntropy: Float64Array;
  /** log q[sampled] (only with `sampled`). */
  studentLogProb?: Float64Array;
  /** log p[sampled] (only with `sampled`). */
  teacherLogProb?: Float64Array;
  /** #{ j : t_j/T > t_sampled/T } (strictly; 0 = the teacher's argmax; only with `sampled`). */
  teacherRank?: Int32Array;
}

/**
 * tokenStats: per-token statistics of the tempered distributions q = softmax(z/T) and p
 * (teacher logits or log-probs, same rule as the divergences). No selection, no T²
 * scaling, no gradient.
 */
export function refTokenStats(
  student: ArrayLike<number>,
  teacher: ArrayLike<number>,
  N: number,
  V: number,
  opts: TokenStatsOptions = {},
): TokenStatsResult {
  const ldS = opts.ldS ?? V;
  const ldT = opts.ldT ?? V;
  checkMatrix('student', student, N, V, ldS);
  checkMatrix('teacher', teacher, N, V, ldT);
  const T = opts.temperature ?? 1;
  if (!(T > 0 && Number.isFinite(T))) throw new RangeError(`temperature must be finite and > 0, got ${T}`);
  const sampled = opts.sampled;
  if (sampled !== undefined && sampled.length < N) throw new RangeError(`sampled: need ${N} entries`);

  const out: TokenStatsResult = {
    forwardKl: new Float64Array(N),
    reverseKl: new Float64Array(N),
    studentEntropy: new Float64Array(N),
    teacherEntropy: new Float64Array(N),
  };
  if (sampled !== undefined) {
    out.studentLogProb = new Float64Array(N);
    out.teacherLogProb = new Float64Array(N);
    out.teacherRank = new Int32Array(N);
  }
  for (let i = 0; i < N; i++) {
    const t = row(teacher, i, V, ldT);
    const logq = logSoftmax(row(student, i, V, ldS), T);
    const logp = teacherLogProbs(t, T, opts.teacherKind ?? 'logits');
    out.forwardKl[i] = klFromLogProbs(logp, logq);
    out.reverseKl[i] = klFromLogProbs(logq, logp);
    out.studentEntropy[i] = entropyFromLogProbs(logq);
    out.teacherEntropy[i] = entropyFromLogProbs(logp);
    if (sampled !== undefined) {
      const id = sampled[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= V) throw new RangeError(`sampled[${i}] = ${id} outside [0, ${V})`);
      out.studentLogProb![i] = logq[id]!;
      out.teacherLogProb![i] = logp[id]!;
      const threshold = t[id]! / T;
      let rank = 0;
      for (let j = 0; j < V; j++) if (t[j]! / T > threshold) rank++;
      out.teacherRank![i] = rank;
    }
  }
  return out;
}
