/**
 * Contender: the best a TypeScript user would write by hand. Per row (token), two passes
 * over the logits in memory:
 *   1. an online max + sum-of-exp (a running max with rescaling, one exp per element and
 *      side) for student and teacher together: the two logsumexps;
 *   2. log-probs, probabilities, the loss terms and the gradient, written once.
 * Divergences whose gradient needs a row sum of the loss (reverse KL, JSD, TVD, skew KL)
 * keep q and the unfinished gradient in V-sized float64 scratch rows during pass 2 and
 * write the gradient in a last sweep over the scratch, still in cache.
 *
 * Plain loops over Float32Array, float64 accumulators (a JS number), Math.exp / Math.log.
 * Same semantics as the library at its defaults: temperature 1, reduction 'batchmean'
 * (sum over the N tokens / N), gradient dLoss/dz written to `g` (row stride V).
 * f32 only: a TS user with bf16 data would convert it first.
 */

export interface JsInputs {
  /** Student logits [N, V], row-major. */
  s: Float32Array;
  /** Teacher logits [N, V]. */
  t: Float32Array;
  N: number;
  V: number;
  /** i32 [N] labels (distillationLoss). */
  labels?: Int32Array;
  /** i32 [N] sampled tokens (tokenStats). */
  sampled?: Int32Array;
}

/** A contender: computes the op on `x`, writes the gradient into `g` (if any), returns the check value. */
export type JsContender = (x: JsInputs, g: Float32Array) => number;

// Two float64 scratch rows (q and the unfinished gradient): a row's temporaries stay in
// cache and in double precision (parking them in the f32 gradient row would round
// values like q (log q − log p) ≈ 600 before the − q·L that cancels them).
let scratchQ = new Float64Array(0);
let scratchU = new Float64Array(0);
function scratchRows(V: number): [Float64Array, Float64Array] {
  if (scratchQ.length < V) {
    scratchQ = new Float64Array(V);
    scratchU = new Float64Array(V);
  }
  return [scratchQ, scratchU];
}

/** Pass 1 for one row: writes [logsumexp(student), logsumexp(teacher)] into out. */
function rowLse(s: Float32Array, t: Float32Array, o: number, V: number, out: Float64Array): void {
  let ms = -Infinity;
  let ss = 0;
  let mt = -Infinity;
  let st = 0;
  for (let j = 0; j < V; j++) {
    const z = s[o + j]!;
    if (z > ms) {
      ss = ss * Math.exp(ms - z) + 1;
      ms = z;
    } else ss += Math.exp(z - ms);
    const x = t[o + j]!;
    if (x > mt) {
      st = st * Math.exp(mt - x) + 1;
      mt = x;
    } else st += Math.exp(x - mt);
  }
  out[0] = ms + Math.log(ss);
  out[1] = mt + Math.log(st);
}

const lse = new Float64Array(2);

/** Forward KL(p‖q) = Σ p (log p − log q); dL/dz = (q − p) / N. */
export const forwardKl: JsContender = ({ s, t, N, V }, g) => {
  const inv = 1 / N;
  let total = 0;
  for (let i = 0; i < N; i++) {
    const o = i * V;
    rowLse(s, t, o, V, lse);
    const cs = lse[0]!;
    const ct = lse[1]!;
    let kl = 0;
    for (let j = 0; j < V; j++) {
      const lq = s[o + j]! - cs;
      const lp = t[o + j]! - ct;
      const p = Math.exp(lp);
      kl += p * (lp - lq);
      g[o + j] = (Math.exp(lq) - p) * inv;
    }
    total += kl;
  }
  return total * inv;
};

/** Reverse KL(q‖p) = Σ q (log q − log p); dL/dz = q (log q − log p − L) / N. */
export const reverseKl: JsContender = ({ s, t, N, V }, g) => {
  const inv = 1 / N;
  const [q, w] = scratchRows(V);
  let total = 0;
  for (let i = 0; i < N; i++) {
    const o = i * V;
    rowLse(s, t, o, V, lse);
    const cs = lse[0]!;
    const ct = lse[1]!;
    let kl = 0;
    for (let j = 0; j < V; j++) {
      const lq = s[o + j]! - cs;
      const qj = Math.exp(lq);
      const u = qj * (lq - (t[o + j]! - ct));
      kl += u;
      q[j] = qj;
      w[j] = u;
    }
    for (let j = 0; j < V; j++) g[o + j] = (w[j]! - q[j]! * kl) * inv;
    total += kl;
  }
  return total * inv;
};

/**
 * Generalised JSD (TRL): β KL(p‖m) + (1−β) KL(q‖m), m = βp + (1−β)q;
 * dL/dz = (1−β) q (log q − log m − KL(q‖m)) / N. β = 0 / 1 are the plain KLs.
 */
export function jsdContender(beta = 0.5): JsContender {
  if (beta === 0) return forwardKl;
  if (beta === 1) return reverseKl;
  const b1 = 1 - beta;
  return ({ s, t, N, V }, g) => {
    const inv = 1 / N;
    const [q, w] = scratchRows(V);
    let total = 0;
    for (let i = 0; i < N; i++) {
      const o = i * V;
      rowLse(s, t, o, V, lse);
      const cs = lse[0]!;
      const ct = lse[1]!;
      let loss = 0;
      let klqm = 0;
      for (let j = 0; j < V; j++) {
        const lq = s[o + j]! - cs;
        const lp = t[o + j]! - ct;
        const qj = Math.exp(lq);
        const pj = Math.exp(lp);
        const lm = Math.log(beta * pj + b1 * qj);
        const u = qj * (lq - lm);
        loss += beta * pj * (lp - lm) + b1 * u;
        klqm += u;
        q[j] = qj;
        w[j] = u;
      }
      const c = b1 * inv;
      for (let j = 0; j < V; j++) g[o + j] = (w[j]! - q[j]! * klqm) * c;
      total += loss;
    }
    return total * inv;
  };
}

/** TVD ½ Σ |p − q|; dL/dz = q (h − Σ q h) / N, h = ½ sign(q − p). */
export const tvd: JsContender = ({ s, t, N, V }, g) => {
  const inv = 1 / N;
  const [q, w] = scratchRows(V);
  let total = 0;
  for (let i = 0; i < N; i++) {
    const o = i * V;
    rowLse(s, t, o, V, lse);
    const cs = lse[0]!;
    const ct = lse[1]!;
    let loss = 0;
    let G = 0;
    for (let j = 0; j < V; j++) {
      const qj = Math.exp(s[o + j]! - cs);
      const pj = Math.exp(t[o + j]! - ct);
      const d = qj - pj;
      loss += Math.abs(d);
      const u = d > 0 ? 0.5 * qj : d < 0 ? -0.5 * qj : 0;
      G += u;
      q[j] = qj;
      w[j] = u;
    }
    for (let j = 0; j < V; j++) g[o + j] = (w[j]! - q[j]! * G) * inv;
    total += 0.5 * loss;
  }
  return total * inv;
};

/** Skew forward KL(p ‖ r), r = λp + (1−λ)q; dL/dz = q (g − Σ q g) / N, g = −(1−λ) p / r. */
export function skewForwardKl(skew = 0.1): JsContender {
  const l1 = 1 - skew;
  return ({ s, t, N, V }, g) => {
    const inv = 1 / N;
    const [q, w] = scratchRows(V);
    let total = 0;
    for (let i = 0; i < N; i++) {
      const o = i * V;
      rowLse(s, t, o, V, lse);
      const cs = lse[0]!;
      const ct = lse[1]!;
      let loss = 0;
      let G = 0;
      for (let j = 0; j < V; j++) {
        const qj = Math.exp(s[o + j]! - cs);
        const lp = t[o + j]! - ct;
        const pj = Math.exp(lp);
        const r = skew * pj + l1 * qj;
        loss += pj * (lp - Math.log(r));
        const u = (-l1 * pj * qj) / r;
        G += u;
        q[j] = qj;
        w[j] = u;
      }
      for (let j = 0; j < V; j++) g[o + j] = (w[j]! - q[j]! * G) * inv;
      total += loss;
    }
    return total * inv;
  };
}

/**
 * distillationLoss at its defaults: per token ½ CE(z, y) + ½ KL(p‖q) (T = 1, no label
 * smoothing), mean over the N tokens; dL/dz = (½ (q − onehot(y)) + ½ (q − p)) / N.
 */
export const distillation: JsContender = ({ s, t, N, V, labels }, g) => {
  if (!labels) throw new Error('distillation contender needs labels');
  const inv = 1 / N;
  let total = 0;
  for (let i = 0; i < N; i++) {
    const o = i * V;
    rowLse(s, t, o, V, lse);
    const cs = lse[0]!;
    const ct = lse[1]!;
    let kl = 0;
    for (let j = 0; j < V; j++) {
      const lq = s[o + j]! - cs;
      const lp = t[o + j]! - ct;
      const p = Math.exp(lp);
      kl += p * (lp - lq);
      g[o + j] = (Math.exp(lq) - 0.5 * p) * inv;
    }
    const y = labels[i]!;
    g[o + y] = g[o + y]! - 0.5 * inv;
    total += 0.5 * (cs - s[o + y]!) + 0.5 * kl;
  }
  return total * inv;
};

/**
 * distillationLoss with ½ CE + ½ JSD (β = 0.5, T = 1): per token ½ (lse(z) − z_y) + ½ JSD,
 * mean over the N tokens; dL/dz = (½ (q − onehot(y)) + ½ · ½ q (log q − log m − KL(q‖m))) / N.
 */
export const distillationJsd: JsContender = ({ s, t, N, V, labels }, g) => {
  if (!labels) throw new Error('distillation contender needs labels');
  const inv = 1 / N;
  const [q, w] = scratchRows(V);
  let total = 0;
  for (let i = 0; i < N; i++) {
    const o = i * V;
    rowLse(s, t, o, V, lse);
    const cs = lse[0]!;
    const ct = lse[1]!;
    let jsd = 0;
    let klqm = 0;
    for (let j = 0; j < V; j++) {
      const lq = s[o + j]! - cs;
      const lp = t[o + j]! - ct;
      const qj = Math.exp(lq);
      const pj = Math.exp(lp);
      const lm = Math.log(0.5 * pj + 0.5 * qj);
      const u = qj * (lq - lm);
      jsd += 0.5 * pj * (lp - lm) + 0.5 * u;
      klqm += u;
      q[j] = qj;
      w[j] = u;
    }
    for (let j = 0; j < V; j++) g[o + j] = (0.5 * q[j]! + 0.25 * (w[j]! - q[j]! * klqm)) * inv;
    const y = labels[i]!;
    g[o + y] = g[o + y]! - 0.5 * inv;
    total += 0.5 * (cs - s[o + y]!) + 0.5 * jsd;
  }
  return total * inv;
};

export interface JsTokenStats {
  forwardKl: Float32Array;
  reverseKl: Float32Array;
  studentEntropy: Float32Array;
  teacherEntropy: Float32Array;
  studentLogProb: Float32Array;
  teacherLogProb: Float32Array;
  teacherRank: Int32Array;
}

/** tokenStats: per token KL both ways, both entropies, log-probs and teacher rank of the sampled token. */
export function tokenStatsJs({ s, t, N, V, sampled }: JsInputs, out?: JsTokenStats): JsTokenStats {
  const r = out ?? {
    forwardKl: new Float32Array(N),
    reverseKl: new Float32Array(N),
    studentEntropy: new Float32Array(N),
    teacherEntropy: new Float32Array(N),
    studentLogProb: new Float32Array(N),
    teacherLogProb: new Float32Array(N),
    teacherRank: new Int32Array(N),
  };
  for (let i = 0; i < N; i++) {
    const o = i * V;
    rowLse(s, t, o, V, lse);
    const cs = lse[0]!;
    const ct = lse[1]!;
    const y = sampled ? sampled[i]! : 0;
    const ty = t[o + y]!;
    let fwd = 0;
    let rev = 0;
    let hq = 0;
    let hp = 0;
    let rank = 0;
    for (let j = 0; j < V; j++) {
      const x = t[o + j]!;
      const lq = s[o + j]! - cs;
      const lp = x - ct;
      const q = Math.exp(lq);
      const p = Math.exp(lp);
      fwd += p * (lp - lq);
      rev += q * (lq - lp);
      hq -= q * lq;
      hp -= p * lp;
      if (x > ty) rank++;
    }
    r.forwardKl[i] = fwd;
    r.reverseKl[i] = rev;
    r.studentEntropy[i] = hq;
    r.teacherEntropy[i] = hp;
    r.studentLogProb[i] = s[o + y]! - cs;
    r.teacherLogProb[i] = ty - ct;
    r.teacherRank[i] = rank;
  }
  return r;
}

/** tokenStats as a contender: the check value is Σ forwardKl (no gradient; `g` unused). */
export const tokenStats: JsContender = (x) => {
  const r = tokenStatsJs(x);
  let sum = 0;
  for (let i = 0; i < x.N; i++) sum += r.forwardKl[i]!;
  return sum;
};

export interface JsTopk {
  values: Float32Array;
  indices: Int32Array;
  tailLogProb: Float32Array;
}

/**
 * topk (log-probs + tailLogProb) the way a TS user would write a partial sort: per row
 * one pass with a size-k min-heap (root = the current k-th best; ties: the later index
 * ranks lower, so an element enters only if x > root), which is also a threshold filter:
 * almost every element of a long row costs one compare. The tail mass is summed directly
 * in the same pass relative to the running max (rescaled when the max rises): rejected
 * elements and heap evictions each add e^{x - m} once, so tailLogProb has no
 * log(1 - x) cancellation, one Math.exp per element. Then the k survivors are sorted
 * (value descending, lower index first). Temperature 1, finite inputs (the bench's data).
 */
export function topkJs(t: Float32Array, N: number, V: number, k: number, out?: JsTopk): JsTopk {
  const r = out ?? { values: new Float32Array(N * k), indices: new Int32Array(N * k), tailLogProb: new Float32Array(N) };
  const hv = new Float64Array(k);
  const hi = new Int32Array(k);
  const order = Array.from({ length: k }, (_, j) => j);
  // Min-heap order: a "below" b when a ranks lower (smaller value, or equal and later index).
  const below = (a: number, b: number) => hv[a]! < hv[b]! || (hv[a] === hv[b] && hi[a]! > hi[b]!);
  const swap = (a: number, b: number) => {
    const v = hv[a]!;
    hv[a] = hv[b]!;
    hv[b] = v;
    const x = hi[a]!;
    hi[a] = hi[b]!;
    hi[b] = x;
  };
  const siftDown = (size: number) => {
    let p = 0;
    for (;;) {
      const l = 2 * p + 1;
      if (l >= size) return;
      const c = l + 1 < size && below(l + 1, l) ? l + 1 : l;
      if (!below(c, p)) return;
      swap(c, p);
      p = c;
    }
  };
  for (let i = 0; i < N; i++) {
    const o = i * V;
    let size = 0;
    let m = -Infinity; // running max (the heap holds it)
    let st = 0; // tail sum relative to m
    for (let j = 0; j < V; j++) {
      const x = t[o + j]!;
      if (x > m) {
        if (st !== 0) st *= Math.exp(m - x);
        m = x;
      }
      if (size < k) {
        let c = size++;
        hv[c] = x;
        hi[c] = j;
        while (c > 0) {
          const p = (c - 1) >> 1;
          if (!below(c, p)) break;
          swap(c, p);
          c = p;
        }
        continue;
      }
      if (x > hv[0]!) {
        st += Math.exp(hv[0]! - m);
        hv[0] = x;
        hi[0] = j;
        siftDown(size);
      } else st += Math.exp(x - m);
    }
    for (let j = 0; j < k; j++) order[j] = j;
    order.sort((a, b) => hv[b]! - hv[a]! || hi[a]! - hi[b]!);
    let stop = 0;
    for (let j = 0; j < k; j++) stop += Math.exp(hv[order[j]!]! - m);
    const logS = Math.log(stop + st);
    for (let j = 0; j < k; j++) {
      const s = order[j]!;
      r.values[i * k + j] = hv[s]! - m - logS;
      r.indices[i * k + j] = hi[s]!;
    }
    r.tailLogProb[i] = st === 0 ? -Infinity : -Math.log1p(stop / st);
  }
  return r;
}

/** topk (k = 64, log-probs) as a contender: the check value is Σ tailLogProb (`g` unused). */
export const TOPK_JS_K = 64;
export const topkContender: JsContender = ({ t, N, V }) => {
  const r = topkJs(t, N, V, Math.min(TOPK_JS_K, V));
  let sum = 0;
  for (let i = 0; i < N; i++) sum += r.tailLogProb[i]!;
  return sum;
};

/** The contenders by benchmark op name (see bench/*.bench.ts). */
export const JS_CONTENDERS: Record<string, JsContender> = {
  'forward-kl': forwardKl,
  'reverse-kl': reverseKl,
  jsd: jsdContender(0.5),
  tvd,
  'skew-kl': skewForwardKl(0.1),
  'distillation-loss': distillation,
  'distillation-loss-jsd': distillationJsd,
  'token-stats': tokenStats,
  topk: topkContender,
};
