// Float64 reference for the full-vocabulary divergences (klDiv, jsd, tvd, skewKl):
// loss and gradient w.r.t. the student logits, per row and for the whole op with token
// selection, weights and reductions.
//
// Notation per row (token): student logits z, q = softmax(z / T); teacher t, with
// log p = logSoftmax(t / T) for teacher logits. For teacher log-probs at T = 1, log p = t
// is used as given, NOT renormalised (Liger's convention); at T ≠ 1 log-probs are
// treated like logits (log p = logSoftmax(t / T)).
//
// Convention 0·log 0 = 0: a term whose weight (the first distribution's probability) is
// exactly 0 contributes 0 to the loss and to the gradient, so −inf logits (banned
// tokens) are fine wherever the divergence itself is finite. A divergence that is
// genuinely infinite (e.g. forward KL with p_j > 0 and q_j = 0) is reported as +inf.
//
// Gradients. Every loss here is a function L(q) of the student distribution (p fixed),
// and q = softmax(z/T), so by the softmax Jacobian dq_j/dz_k = q_j (δ_jk − q_k) / T:
//
//     dL/dz_k = q_k (g_k − Σ_j q_j g_j) / T,   g = dL/dq.                         (*)
//
// The closed forms below are (*) with g worked out; they hold for any nonnegative p,
// including unnormalised teacher log-probs (so finite differences agree with them even
// then). They reduce to the DESIGN.md forms when Σ p = 1.

import { checkMatrix, lossDivisor, logaddexp, logSoftmax, reduceLoss, row, selectTokens } from './common.js';
import type { Reduction, ReductionOptions, SelectionOptions } from './common.js';

export type Divergence = 'forward-kl' | 'reverse-kl' | 'jsd' | 'tvd' | 'skew-forward-kl' | 'skew-reverse-kl';
export type TeacherKind = 'logits' | 'logprobs';

export const DIVERGENCES: readonly Divergence[] = [
  'forward-kl',
  'reverse-kl',
  'jsd',
  'tvd',
  'skew-forward-kl',
  'skew-reverse-kl',
];

export interface DivergenceParams {
  divergence: Divergence;
  /** jsd mixing weight β ∈ [0, 1] (default 0.5). */
  beta?: number;
  /** skew λ ∈ [0, 1) for the skew KLs (default 0.1). */
  skew?: number;
}

export interface RowOptions extends DivergenceParams {
  temperature?: number;
  teacherKind?: TeacherKind;
}

/** The teacher's log-probabilities for one row (see the header for the logprobs rule). */
export function teacherLogProbs(t: ArrayLike<number>, T: number, kind: TeacherKind = 'logits'): Float64Array {
  if (kind === 'logprobs' && T === 1) return Float64Array.from(t);
  return logSoftmax(t, T);
}

/** Σ_j a_j (log a_j − log b_j) with a_j = exp(logA_j); terms with a_j = 0 are 0. */
export function klFromLogProbs(logA: ArrayLike<number>, logB: ArrayLike<number>): number {
  let sum = 0;
  for (let j = 0; j < logA.length; j++) {
    const a = Math.exp(logA[j]!);
    if (a === 0) continue; // 0 · log 0 = 0
    sum += a * (logA[j]! - logB[j]!);
  }
  return sum;
}

/** −Σ_j a_j log a_j with 0 · log 0 = 0. */
export function entropyFromLogProbs(logA: ArrayLike<number>): number {
  let sum = 0;
  for (let j = 0; j < logA.length; j++) {
    const a = Math.exp(logA[j]!);
    if (a === 0) continue;
    sum -= a * logA[j]!;
  }
  return sum;
}

/** log(w_a · exp(logA) + w_b · exp(logB)) element-wise, stable (the log of a mixture). */
export function logMixture(wa: number, logA: ArrayLike<number>, wb: number, logB: ArrayLike<number>): Float64Array {
  const out = new Float64Array(logA.length);
  const la = Math.log(wa); // log 0 = −inf: that component drops out exactly
  const lb = Math.log(wb);
  for (let j = 0; j < out.length; j++) {
    // Equal components mix to themselves exactly (the weights sum to 1 here): this keeps
    // e.g. the V = 1 case and p = q rows at exactly 0 loss.
    out[j] = logA[j] === logB[j] && wa + wb === 1 ? logA[j]! : logaddexp(la + logA[j]!, lb + logB[j]!);
  }
  return out;
}

function checkParams(params: DivergenceParams): { beta: number; skew: number } {
  const beta = params.beta ?? 0.5;
  const skew = params.skew ?? 0.1;
  if (!(beta >= 0 && beta <= 1)) throw new RangeError(`beta must be in [0, 1], got ${beta}`);
  if (!(skew >= 0 && skew < 1)) throw new RangeError(`skew must be in [0, 1), got ${skew}`);
  return { beta, skew };
}

/** D(p, q) for one row from log p and log q (no temperature scaling, no weights). */
export function divergenceFromLogProbs(
  logp: ArrayLike<number>,
  logq: ArrayLike<number>,
  params: DivergenceParams,
): number {
  const { beta, skew } = checkParams(params);
  switch (params.divergence) {
    case 'forward-kl':
      return klFromLogProbs(logp, logq); // KL(p ‖ q)
    case 'reverse-kl':
      return klFromLogProbs(logq, logp); // KL(q ‖ p)
    case 'jsd': {
      // TRL generalized_jsd_loss: the endpoints are the plain KLs, exactly.
      if (beta === 0) return klFromLogProbs(logp, logq);
      if (beta === 1) return klFromLogProbs(logq, logp);
      const logm = logMixture(beta, logp, 1 - beta, logq); // m = βp + (1−β)q
      return beta * klFromLogProbs(logp, logm) + (1 - beta) * klFromLogProbs(logq, logm);
    }
    case 'tvd': {
      let sum = 0;
      for (let j = 0; j < logp.length; j++) sum += Math.abs(Math.exp(logp[j]!) - Math.exp(logq[j]!));
      return 0.5 * sum;
    }
    case 'skew-forward-kl': {
      const logr = logMixture(skew, logp, 1 - skew, logq); // r = λp + (1−λ)q
      return klFromLogProbs(logp, logr);
    }
    case 'skew-reverse-kl': {
      const logr = logMixture(1 - skew, logp, skew, logq); // r = (1−λ)p + λq
      return klFromLogProbs(logq, logr);
    }
    default:
      throw new RangeError(`unknown divergence ${String(params.divergence)}`);
  }
}

/** q ⊙ (g − Σ q g) / T, skipping entries with q_j = 0 (their g may be ±inf or NaN). */
function softmaxBackward(q: Float64Array, g: Float64Array, T: number): Float64Array {
  let qg = 0;
  for (let j = 0; j < q.length; j++) if (q[j] !== 0) qg += q[j]! * g[j]!;
  const out = new Float64Array(q.length);
  for (let j = 0; j < q.length; j++) out[j] = q[j] === 0 ? 0 : (q[j]! * (g[j]! - qg)) / T;
  return out;
}

/**
 * dD/dz for one row, from log p, log q and T (no temperature-squared scaling, no weights).
 *
 *  forward KL  L = Σ p (log p − log q):  g = −p/q  ⇒  dL/dz = (q·Σp − p) / T  (= (q − p)/T).
 *  reverse KL  L = Σ q (log q − log p):  g = log q − log p + 1
 *              ⇒  dL/dz = q ⊙ (log q − log p − L) / T.
 *  jsd         L = β KL(p‖m) + (1−β) KL(q‖m), m = βp + (1−β)q. With dm/dq = (1−β):
 *              g_j = β(−p_j/m_j)(1−β) + (1−β)(log(q_j/m_j) + 1 − (1−β)q_j/m_j)
 *                  = (1−β)(log(q_j/m_j) + 1 − (βp_j + (1−β)q_j)/m_j) = (1−β) log(q_j/m_j)
 *              ⇒  dL/dz = (1−β) q ⊙ (log q − log m − KL(q‖m)) / T.
 *  tvd         L = ½ Σ |p − q|:  g = h = ½ sign(q − p), sign(0) = 0  ⇒  q ⊙ (h − Σ q h) / T.
 *  skew fwd    L = KL(p ‖ r), r = λp + (1−λ)q:  g = −(1−λ) p / r.
 *  skew rev    L = KL(q ‖ r), r = (1−λ)p + λq:  g = log(q/r) + 1 − λ q / r.
 */
export function divergenceGradFromLogProbs(
  logp: ArrayLike<number>,
  logq: ArrayLike<number>,
  T: number,
  params: DivergenceParams,
): Float64Array {
  const { beta, skew } = checkParams(params);
  // λ = 0: the skew KLs ARE the plain KLs; use their closed forms, which stay exact
  // where q underflows to 0 (the skew form's q · p/r with r = q is then 0 · ∞).
  if (skew === 0 && params.divergence === 'skew-forward-kl') return divergenceGradFromLogProbs(logp, logq, T, { divergence: 'forward-kl' });
  if (skew === 0 && params.divergence === 'skew-reverse-kl') return divergenceGradFromLogProbs(logp, logq, T, { divergence: 'reverse-kl' });
  const V = logq.length;
  const p = Float64Array.from(logp, Math.exp);
  const q = Float64Array.from(logq, Math.exp);
  const g = new Float64Array(V);
  let divergence = params.divergence;
  if (divergence === 'jsd' && beta === 0) divergence = 'forward-kl';
  if (divergence === 'jsd' && beta === 1) divergence = 'reverse-kl';

  switch (divergence) {
    case 'forward-kl': {
      let sumP = 0;
      for (const x of p) sumP += x;
      const out = new Float64Array(V);
      for (let j = 0; j < V; j++) out[j] = (q[j]! * sumP - p[j]!) / T;
      return out;
    }
    case 'reverse-kl': {
      const L = klFromLogProbs(logq, logp);
      const out = new Float64Array(V);
      for (let j = 0; j < V; j++) out[j] = q[j] === 0 ? 0 : (q[j]! * (logq[j]! - logp[j]! - L)) / T;
      return out;
    }
    case 'jsd': {
      const logm = logMixture(beta, logp, 1 - beta, logq);
      const klqm = klFromLogProbs(logq, logm);
      const out = new Float64Array(V);
      for (let j = 0; j < V; j++) {
        out[j] = q[j] === 0 ? 0 : ((1 - beta) * q[j]! * (logq[j]! - logm[j]! - klqm)) / T;
      }
      return out;
    }
    case 'tvd':
      for (let j = 0; j < V; j++) g[j] = 0.5 * Math.sign(q[j]! - p[j]!);
      return softmaxBackward(q, g, T);
    case 'skew-forward-kl': {
      const logr = logMixture(skew, logp, 1 - skew, logq);
      for (let j = 0; j < V; j++) g[j] = p[j] === 0 ? 0 : -(1 - skew) * Math.exp(logp[j]! - logr[j]!);
      return softmaxBackward(q, g, T);
    }
    case 'skew-reverse-kl': {
      const logr = logMixture(1 - skew, logp, skew, logq);
      for (let j = 0; j < V; j++) {
        g[j] = q[j] === 0 ? 0 : logq[j]! - logr[j]! + 1 - skew * Math.exp(logq[j]! - logr[j]!);
      }
      return softmaxBackward(q, g, T);
    }
    default:
      throw new RangeError(`unknown divergence ${String(divergence)}`);
  }
}

/**
 * One row: D(p, q) and dD/dz from raw student logits z and teacher t (logits or
 * log-probs). No T² scaling and no weights here.
 */
export function rowDivergence(
  z: ArrayLike<number>,
  t: ArrayLike<number>,
  opts: RowOptions,
): { loss: number; grad: Float64Array } {
  const T = opts.temperature ?? 1;
  if (!(T > 0 && Number.isFinite(T))) throw new RangeError(`temperature must be finite and > 0, got ${T}`);
  if (z.length !== t.length) throw new RangeError(`row lengths differ: ${z.length} vs ${t.length}`);
  const logq = logSoftmax(z, T);
  const logp = teacherLogProbs(t, T, opts.teacherKind ?? 'logits');
  return {
    loss: divergenceFromLogProbs(logp, logq, opts),
    grad: divergenceGradFromLogProbs(logp, logq, T, opts),
  };
}

export interface DivergenceOptions extends RowOptions, SelectionOptions, ReductionOptions {
  /** Multiply the per-token divergence (and its gradient) by T² (default true). */
  scaleByTemperatureSquared?: boolean;
  /** Row stride of the student (default V); only the first V columns are used. */
  ldS?: number;
  /** Row stride of the teacher (default V); only the first V columns are used. */
  ldT?: number;
  /** [N] per-token weights (default 1). */
  weights?: ArrayLike<number>;
  /** The upstream gradient: multiplies the returned gradient (default 1). */
  gradScale?: number;
}

export interface DivergenceResult {
  /** The reduced loss, or the per-token vector [N] for reduction 'none'. */
  loss: number | Float64Array;
  /** [N] w_i · s · D_i for selected tokens, 0 for the others (s = T² or 1). */
  perToken: Float64Array;
  /** [N · V] dense (row stride V): gradScale · dLoss/dz; exactly 0 on unselected rows. */
  grad: Float64Array;
}

/**
 * The full op over N rows: klDiv / jsd / tvd / skewKl as DESIGN.md specifies them.
 *
 *   selected_i = (labels absent or labels_i ≠ ignoreIndex) and (mask absent or mask_i ≠ 0)
 *   perToken_i = selected_i ? w_i · s · D_i : 0,   s = T² if scaleByTemperatureSquared else 1
 *   loss       = Σ perToken / divisor ('none': perToken itself; see lossDivisor)
 *   grad       = gradScale · dLoss/dz   ('none': gradient of Σ perToken)
 * Nothing selected: loss 0 (or zeros for 'none') and gradient 0.
 */
export function refDivergence(
  student: ArrayLike<number>,
  teacher: ArrayLike<number>,
  N: number,
  V: number,
  opts: DivergenceOptions,
): DivergenceResult {
  const ldS = opts.ldS ?? V;
  const ldT = opts.ldT ?? V;
  checkMatrix('student', student, N, V, ldS);
  checkMatrix('teacher', teacher, N, V, ldT);
  const T = opts.temperature ?? 1;
  const s = (opts.scaleByTemperatureSquared ?? true) ? T * T : 1;
  const reduction: Reduction = opts.reduction ?? 'batchmean';
  const gradScale = opts.gradScale ?? 1;
  if (opts.weights !== undefined && opts.weights.length < N) throw new RangeError(`weights: need ${N} entries`);

  const selected = selectTokens(N, opts);
  const count = selected.filter(Boolean).length;
  const divisor = lossDivisor(reduction, count, V, opts.normalizer);

  const perToken = new Float64Array(N);
  const grad = new Float64Array(N * V);
  for (let i = 0; i < N; i++) {
    if (!selected[i]) continue; // loss 0, gradient exactly 0
    const w = opts.weights === undefined ? 1 : opts.weights[i]!;
    const r = rowDivergence(row(student, i, V, ldS), row(teacher, i, V, ldT), opts);
    perToken[i] = w * s * r.loss;
    for (let j = 0; j < V; j++) grad[i * V + j] = (gradScale * w * s * r.grad[j]!) / divisor;
  }
  return { loss: reduceLoss(perToken, reduction, divisor), perToken, grad };
}
