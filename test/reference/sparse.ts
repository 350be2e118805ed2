// Float64 reference for top-k sparsification, sparse KD against a top-k / sampled
// teacher, and the Sparse Logit Sampling estimator (Anshumann et al., ACL 2025).

import { checkMatrix, logSoftmax, logsumexp, lossDivisor, mulberry32, reduceLoss, row, selectTokens } from './common.js';
import type { Reduction, ReductionOptions, SelectionOptions } from './common.js';

// ---------------------------------------------------------------------------------
// topk
// ---------------------------------------------------------------------------------

export interface TopkOptions {
  temperature?: number;
  /** 'logits': the raw logits unchanged (default); 'logprobs': logSoftmax(x/T) at the ids. */
  output?: 'logits' | 'logprobs';
  /** Row stride (default V). */
  ld?: number;
}

export interface TopkResult {
  /** [N · k] sorted descending per row. */
  values: Float64Array;
  /** [N · k] the column ids of `values`. */
  indices: Int32Array;
  /** [N] log Σ_{j ∉ top-k} softmax(x/T)_j; −Infinity when the tail is empty or has zero mass. */
  tailLogProb: Float64Array;
}

/** Orders ids by logit descending, ties by lower index; NaN ranks above everything (as torch.topk). */
function compareIds(x: Float64Array, a: number, b: number): number {
  const xa = x[a]!;
  const xb = x[b]!;
  const na = Number.isNaN(xa);
  const nb = Number.isNaN(xb);
  if (na !== nb) return na ? -1 : 1;
  if (!na && xa !== xb) return xb > xa ? 1 : -1;
  return a - b;
}

/**
 * topk over each row of an N × V matrix (row stride ld): the k largest logits, sorted
 * descending with ties broken by the lower index, and the tail's log-mass
 *
 *   tailLogProb = log Σ_{j ∉ top-k} exp(x_j/T − lse(x/T)) = lse_{tail}(x/T) − lse(x/T),
 *
 * summed directly over the tail terms, never as log(1 − Σ top-k probs) (which cancels
 * catastrophically when the tail mass is tiny).
 */
export function refTopk(logits: ArrayLike<number>, N: number, V: number, k: number, opts: TopkOptions = {}): TopkResult {
  const ld = opts.ld ?? V;
  checkMatrix('logits', logits, N, V, ld);
  if (!Number.isInteger(k) || k < 0 || k > V) throw new RangeError(`k must be an integer in [0, V = ${V}], got ${k}`);
  const T = opts.temperature ?? 1;
  if (!(T > 0 && Number.isFinite(T))) throw new RangeError(`temperature must be finite and > 0, got ${T}`);
  const output = opts.output ?? 'logits';

  const values = new Float64Array(N * k);
  const indices = new Int32Array(N * k);
  const tailLogProb = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    const x = row(logits, i, V, ld);
    const order = Array.from({ length: V }, (_, j) => j).sort((a, b) => compareIds(x, a, b));
    const logp = logSoftmax(x, T);
    for (let c = 0; c < k; c++) {
      const id = order[c]!;
      indices[i * k + c] = id;
      values[i * k + c] = output === 'logits' ? x[id]! : logp[id]!;
    }
    const tail = order.slice(k).map((j) => x[j]!);
    // lse over an empty tail (or an all −inf tail) is −inf, hence tailLogProb = −inf.
    tailLogProb[i] = tail.length === 0 ? -Infinity : logsumexp(tail, T) - logsumexp(x, T);
  }
  return { values, indices, tailLogProb };
}

// ---------------------------------------------------------------------------------
// sparseKlDiv
// ---------------------------------------------------------------------------------

export type SparseTail = 'renormalize' | 'bucket' | 'conditional' | 'sampled';

export interface SparseTeacher {
  /** Slots per row. */
  k: number;
  /** [N · k] teacher token ids (distinct within a row, except for 'sampled'). */
  indices: ArrayLike<number>;
  /** [N · k] teacher log-probs at temperature T at those ids (not used by 'sampled'). */
  values?: ArrayLike<number>;
  /** [N] log of the teacher mass outside the ids (required by 'bucket'). */
  tailLogProb?: ArrayLike<number>;
  /** [N · k] importance weights of the sampled ids (required by 'sampled'). */
  weights?: ArrayLike<number>;
}

export interface SparseKlOptions extends SelectionOptions, ReductionOptions {
  tail: SparseTail;
  temperature?: number;
  /** Multiply the per-token loss (and gradient) by T² (default true). */
  scaleByTemperatureSquared?: boolean;
  /** Student row stride (default V). */
  ldS?: number;
  /** [N] per-token weights (default 1). */
  weights?: ArrayLike<number>;
  /** Multiplies the returned gradient (default 1). */
  gradScale?: number;
}

/**
 * One row of sparse KD: loss and dL/dz. z is the student's full row, q = softmax(z/T)
 * over the whole vocabulary (log q_j = z_j/T − lse(z/T), so d log q_j/dz_k = (δ_jk − q_k)/T).
 * ids / values / weights are this row's k slots. Write P_k for the teacher weight
 * sitting at vocabulary id k (0 off the ids).
 *
 * 'renormalize' (DistillKit): p̃ = softmax(values) over the k ids;
 *    L = Σ_j p̃_j (log p̃_j − log q_{id_j}).
 *    dL/dz_k = −Σ_j p̃_j (δ_{id_j,k} − q_k)/T = (q_k Σ_j p̃_j − P̃_k)/T = (q_k − P̃_k)/T.
 *
 * 'bucket' (TRL): k classes plus one tail class. p_j = exp(values_j), p_t = exp(tailLogProb),
 *    q_t = Σ_{m ∉ ids} q_m (summed directly), L = Σ_j p_j log(p_j/q_{id_j}) + p_t log(p_t/q_t).
 *    dq_t/dz_k = Σ_{m ∉ ids} q_m (δ_mk − q_k)/T = (q_k·[k ∉ ids] − q_t q_k)/T, so
 *    d log q_t/dz_k = (q_k [k ∉ ids]/q_t − q_k)/T and, with S = Σ_j p_j + p_t,
 *    dL/dz_k = (q_k S − P_k)/T                 for k ∈ ids,
 *    dL/dz_k = q_k (S − p_t/q_t)/T             for k ∉ ids.
 *    (p_t = 0 drops the tail term: 0 · log 0 = 0 and its gradient is 0.)
 *
 * 'conditional': both renormalised over the ids: p̃ = softmax(values),
 *    q̃_j = q_{id_j} / Σ_{ids} q = softmax(z_ids / T); L = Σ_j p̃_j (log p̃_j − log q̃_j).
 *    d log q̃_j/dz_k = (δ_{id_j,k} − q̃_k [k ∈ ids])/T, so
 *    dL/dz_k = (q̃_k Σ p̃ − P̃_k)/T = (q̃_k − P̃_k)/T for k ∈ ids, 0 for k ∉ ids.
 *
 * 'sampled': L = −Σ_j w_j log q_{id_j} (ids may repeat; an unbiased estimate of the
 *    forward-KL cross-entropy term when E[Σ_{j: id_j = k} w_j] = p_k).
 *    dL/dz_k = −Σ_j w_j (δ_{id_j,k} − q_k)/T = (q_k W − W_k)/T, W = Σ_j w_j, W_k = Σ_{j: id_j=k} w_j.
 */
export function sparseRowLoss(
  z: ArrayLike<number>,
  ids: ArrayLike<number>,
  tail: SparseTail,
  T: number,
  slot: { values?: ArrayLike<number>; tailLogProb?: number; weights?: ArrayLike<number> },
): { loss: number; grad: Float64Array } {
  const V = z.length;
  const k = ids.length;
  const logq = logSoftmax(z, T);
  const q = Float64Array.from(logq, Math.exp);
  const grad = new Float64Array(V);

  const isId = new Array<boolean>(V).fill(false);
  for (let j = 0; j < k; j++) {
    const id = ids[j]!;
    if (!Number.isInteger(id) || id < 0 || id >= V) throw new RangeError(`teacher id ${id} outside [0, ${V})`);
    if (isId[id] && tail !== 'sampled') throw new RangeError(`teacher id ${id} repeated (only 'sampled' allows repeats)`);
    isId[id] = true;
  }

  if (tail === 'sampled') {
    const w = slot.weights;
    if (w === undefined) throw new TypeError(`tail 'sampled' needs sample weights`);
    let loss = 0;
    let W = 0;
    for (let j = 0; j < k; j++) {
      if (w[j] === 0) continue; // 0 · log q = 0 even if q = 0
      loss -= w[j]! * logq[ids[j]!]!;
      W += w[j]!;
    }
    for (let m = 0; m < V; m++) grad[m] = (q[m]! * W) / T;
    for (let j = 0; j < k; j++) grad[ids[j]!] -= w[j]! / T;
    return { loss, grad };
  }

  const values = slot.values;
  if (values === undefined) throw new TypeError(`tail '${tail}' needs teacher values`);

  if (tail === 'renormalize' || tail === 'conditional') {
    const logpt = logSoftmax(Array.from({ length: k }, (_, j) => values[j]!), 1); // log p̃
    // log q at the ids: full-vocab for 'renormalize', renormalised over the ids for 'conditional'
    const logqIds = Array.from({ length: k }, (_, j) => logq[ids[j]!]!);
    const logqt = tail === 'conditional' ? logSoftmax(logqIds, 1) : Float64Array.from(logqIds);
    let loss = 0;
    for (let j = 0; j < k; j++) {
      const pj = Math.exp(logpt[j]!);
      if (pj !== 0) loss += pj * (logpt[j]! - logqt[j]!);
    }
    if (tail === 'renormalize') {
      for (let m = 0; m < V; m++) grad[m] = q[m]! / T;
    }
    for (let j = 0; j < k; j++) {
      const id = ids[j]!;
      if (tail === 'conditional') grad[id] = Math.exp(logqt[j]!) / T;
      grad[id] -= Math.exp(logpt[j]!) / T;
    }
    return { loss, grad };
  }

  if (tail === 'bucket') {
    if (slot.tailLogProb === undefined) throw new TypeError(`tail 'bucket' needs tailLogProb`);
    const logPt = slot.tailLogProb;
    const pt = Math.exp(logPt);
    // log q_t = lse_{m ∉ ids}(z_m/T) − lse(z/T): the tail mass summed directly.
    const tailZ: number[] = [];
    for (let m = 0; m < V; m++) if (!isId[m]) tailZ.push(z[m]!);
    const logQt = logsumexp(tailZ, T) - logsumexp(z, T); // −inf when no tail
    let loss = 0;
    let S = 0;
    for (let j = 0; j < k; j++) {
      const pj = Math.exp(values[j]!);
      S += pj;
      if (pj !== 0) loss += pj * (values[j]! - logq[ids[j]!]!);
    }
    S += pt;
    if (pt !== 0) loss += pt * (logPt - logQt);
    // Off the ids q_m (S − p_t/q_t) = q_m S − p_t (q_m/q_t), with q_m/q_t = e^{log q_m − log q_t}
    // (≤ 1): q_m and q_t may both be below float64's range while their ratio is O(1).
    // q_m = 0 exactly (z_m = −inf) gives 0; q_t = 0 < p_t only when every off-id q_m is 0.
    for (let m = 0; m < V; m++) {
      if (isId[m]) grad[m] = (q[m]! * S) / T;
      else if (logq[m] === -Infinity) grad[m] = 0;
      else grad[m] = (q[m]! * S - (pt === 0 ? 0 : pt * Math.exp(logq[m]! - logQt))) / T;
    }
    for (let j = 0; j < k; j++) grad[ids[j]!] -= Math.exp(values[j]!) / T;
    return { loss, grad };
  }

  throw new RangeError(`unknown tail mode ${String(tail)}`);
}

export interface SparseKlResult {
  loss: number | Float64Array;
  /** [N] w_i · s · L_i for selected tokens, 0 otherwise. */
  perToken: Float64Array;
  /** [N · V] dense: gradScale · dLoss/dz; 0 on unselected rows. */
  grad: Float64Array;
}

/** sparseKlDiv over N rows, with the same selection / weighting / reduction rules as refDivergence. */
export function refSparseKl(
  student: ArrayLike<number>,
  N: number,
  V: number,
  sparse: SparseTeacher,
  opts: SparseKlOptions,
): SparseKlResult {
  const ldS = opts.ldS ?? V;
  checkMatrix('student', student, N, V, ldS);
  const k = sparse.k;
  if (!Number.isInteger(k) || k < 0) throw new RangeError(`k must be an integer >= 0, got ${k}`);
  if (sparse.indices.length < N * k) throw new RangeError(`indices: need ${N * k} entries`);
  const T = opts.temperature ?? 1;
  if (!(T > 0 && Number.isFinite(T))) throw new RangeError(`temperature must be finite and > 0, got ${T}`);
  const s = (opts.scaleByTemperatureSquared ?? true) ? T * T : 1;
  const reduction: Reduction = opts.reduction ?? 'batchmean';
  const gradScale = opts.gradScale ?? 1;

  const selected = selectTokens(N, opts);
  const count = selected.filter(Boolean).length;
  const divisor = lossDivisor(reduction, count, V, opts.normalizer);
  const slice = (a: ArrayLike<number> | undefined, i: number): number[] | undefined =>
    a === undefined ? undefined : Array.from({ length: k }, (_, j) => a[i * k + j]!);

  const perToken = new Float64Array(N);
  const grad = new Float64Array(N * V);
  for (let i = 0; i < N; i++) {
    if (!selected[i]) continue;
    const w = opts.weights === undefined ? 1 : opts.weights[i]!;
    const r = sparseRowLoss(row(student, i, V, ldS), slice(sparse.indices, i)!, opts.tail, T, {
      values: slice(sparse.values, i),
      tailLogProb: sparse.tailLogProb?.[i],
      weights: slice(sparse.weights, i),
    });
    perToken[i] = w * s * r.loss;
    for (let j = 0; j < V; j++) grad[i * V + j] = (gradScale * w * s * r.grad[j]!) / divisor;
  }
  return { loss: reduceLoss(perToken, reduction, divisor), perToken, grad };
}

// ---------------------------------------------------------------------------------
// Sparse Logit Sampling estimator
// ---------------------------------------------------------------------------------

/**
 * The proposal r ∝ p^τ (τ = proposalPower), computed in log space. Tokens with p = 0
 * are never proposed (also for τ = 0, where r is uniform over the support of p).
 */
export function sampleTeacherProposal(p: ArrayLike<number>, proposalPower: number): Float64Array {
  if (!(proposalPower >= 0 && Number.isFinite(proposalPower))) {
    throw new RangeError(`proposalPower must be finite and >= 0, got ${proposalPower}`);
  }
  const logw = Array.from({ length: p.length }, (_, j) => (p[j]! > 0 ? proposalPower * Math.log(p[j]!) : -Infinity));
  return logSoftmax(logw, 1).map(Math.exp);
}

export interface SampledTeacher {
  /** [n] drawn ids (with replacement). */
  ids: Int32Array;
  /** [n] weight p_id / (n · r_id) of each draw. */
  weights: Float64Array;
  /** [V] the proposal r. */
  proposal: Float64Array;
}

/**
 * Sparse Logit Sampling: n ids drawn with replacement from r ∝ p^τ; each draw of id j
 * gets weight p_j / (n · r_j). Then for every i,
 *   E[Σ_{draws at i} w] = n · r_i · p_i / (n · r_i) = p_i,
 * so −Σ w log q_id is an unbiased estimate of the cross-entropy −Σ p log q. τ = 1 gives
 * r = p and all weights 1/n; τ = 0 gives uniform proposals over the support.
 * `rng` defaults to mulberry32(1); the draws use inverse-CDF sampling.
 */
export function refSampleTeacherWeights(
  p: ArrayLike<number>,
  proposalPower: number,
  n: number,
  rng: () => number = mulberry32(1),
): SampledTeacher {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`n must be an integer >= 0, got ${n}`);
  const r = sampleTeacherProposal(p, proposalPower);
  const V = r.length;
  const cdf = new Float64Array(V);
  let acc = 0;
  let last = -1; // last id with r > 0: guards against u·total landing past the final cumsum by rounding
  for (let j = 0; j < V; j++) {
    acc += r[j]!;
    cdf[j] = acc;
    if (r[j]! > 0) last = j;
  }
  if (n > 0 && last < 0) throw new RangeError('p has no positive entry to sample from');
  const ids = new Int32Array(n);
  const weights = new Float64Array(n);
  for (let d = 0; d < n; d++) {
    const u = rng() * acc;
    let id = last;
    for (let j = 0; j < V; j++) {
      if (cdf[j]! > u && r[j]! > 0) {
        id = j;
        break;
      }
    }
    ids[d] = id;
    weights[d] = p[id]! / (n * r[id]!);
  }
  return { ids, weights, proposal: r };
}
