/**
 * Tolerances for native-vs-reference comparisons, defined once, each justified.
 * Inputs are rounded to their dtype BEFORE the float64 reference sees them, so input
 * quantisation is not counted as kernel error; what remains is f32 arithmetic in the
 * kernel and the rounding of outputs to their dtype.
 *
 * u = 2^-24 (f32 unit roundoff). M = max |logit| / T, the scale of the log-probs.
 *  - A log-prob x/T − lse is computed with absolute error ≈ u·(|x/T| + |lse|) ≤ 2u(M + ln V).
 *    Every per-token divergence is a probability-weighted average of log-ratios plus
 *    such terms, so its absolute error is a small multiple of u(M + ln V + 1): we allow
 *    64× that (4e-6 at M = 1, ~1.2e-3 for logits of magnitude 1e4 where the inputs
 *    themselves only have ~4 significant digits in bf16).
 *  - Sums over V terms use 16 fixed lanes then a tree: the worst-case relative error
 *    is (V/16 + 4)u ≈ 6e-4 at V = 151936, the expected (random-walk) error ≈ √(V/16)·u
 *    ≈ 6e-6. rtol = 1e-4 sits between the two, 15× above the expected error.
 *  - Outputs stored as bf16 / f16 add their rounding: half an ulp is 2^-9 (bf16) and
 *    2^-12 (f16) relative; we allow 2× that. f16 has subnormals below 2^-14 with a
 *    spacing of 2^-24: absolute allowance 2^-24.
 */
import type { FloatDType } from './reference/common.js';

export const U32 = 2 ** -24;

export interface Tol {
  atol: number;
  rtol: number;
}

/** Scale M + ln V + 1 of the log-probabilities of logits with max magnitude maxAbs at temperature T. */
export function logScale(maxAbs: number, T: number, V: number): number {
  return (Number.isFinite(maxAbs) ? maxAbs : 0) / T + Math.log(Math.max(V, 1)) + 1;
}

/** Loss values (f32 outputs). `weightScale` multiplies (T², weights, 1/divisor...). */
export function lossTol(maxAbs: number, T: number, V: number, weightScale = 1): Tol {
  return { atol: 64 * U32 * logScale(maxAbs, T, V) * Math.max(weightScale, 1e-30), rtol: 1e-4 };
}

/**
 * Gradient values in `out` dtype. Each gradient element is c·q_j·(a difference of
 * log-probs) (or c·(q_j − p_j)), so its f32 error scales with c·(q_j + p_j)·u·(M + ln V),
 * NOT with the result, which cancellation can make arbitrarily small (a saturated JSD
 * has gradients of 1e-13 computed from O(1) terms). `mag[j]` is that natural magnitude
 * c·(q_j + p_j)/T (plus the CE term's), computed from the inputs in float64; the
 * per-element allowance is 64·u·(M + ln V + 1)·mag[j], plus the output rounding.
 */
export function gradTol(out: FloatDType, maxAbs: number, T: number, V: number, mag: ArrayLike<number>): Tol & { atolPer: Float64Array } {
  const k = 64 * U32 * logScale(maxAbs, T, V);
  const atolPer = Float64Array.from(mag, (m) => k * m);
  if (out === 'bf16') return { atol: 0, atolPer, rtol: 2 * 2 ** -9 + 1e-4 };
  if (out === 'f16') return { atol: 2 ** -24, atolPer, rtol: 2 * 2 ** -12 + 1e-4 };
  return { atol: 0, atolPer, rtol: 1e-4 };
}

export function maxAbsFinite(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const x = Math.abs(a[i]!);
    if (Number.isFinite(x) && x > m) m = x;
  }
  return m;
}

/**
 * topk (the bounds of test/topk.test.ts, shared with the WebGPU tests). Ids and raw
 * values: exact. Log-prob values (x − m)/T − log S: only S (an f32 sum of
 * exponentials, ~1e-6 relative at V = 151936) and the output rounding are inexact:
 * 1e-5 absolute + 1e-6 relative is a 10× margin; a 16-bit output adds its rounding.
 * tailLogProb: 1e-5 relative, also for a tail mass of 1e-30 (summed directly).
 */
export const TOPK_LOGPROB_TOL = { atol: 1e-5, rtol: 1e-6 };
export const TOPK_OUT_ROUNDING: Record<FloatDType, number> = { f32: 0, f16: 2 ** -11, bf16: 2 ** -8 };
export const TOPK_TAIL_TOL = { atol: 0, rtol: 1e-5 };

/**
 * sparseKlDiv (the bounds of test/sparse_kl_div.test.ts, shared with the WebGPU tests).
 * Losses: the student's S (an f32 sum, ~1e-6 relative at V = 151936) enters every
 * log q; per-token losses 4e-6 absolute per unit of weight (T² × token weight) + 2e-5
 * relative. Gradients: coef·q_j (1e-5 relative, ~40× the f32 rounding); at the ids
 * coef·(A q − corr) may cancel, leaving ~1e-6 of its terms: 4e-6 × the largest reference
 * gradient of the case; a 16-bit gradient adds its unit roundoff.
 */
export const SPARSE_LOSS_ATOL_PER_WEIGHT = 4e-6;
export const SPARSE_LOSS_RTOL = 2e-5;
export const SPARSE_GRAD_RTOL = 1e-5;
export const SPARSE_GRAD_ATOL_REL_MAX = 4e-6;
