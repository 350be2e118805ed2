// Per-element math of the divergence engine, shared by the CPU and CUDA kernels so
// both compute the same formulas. A row is processed in passes:
//   1. row maxima of z/T and t/T (and of z when a CE term needs the untempered softmax)
//   2. sums of exponentials -> lse_s, lse_t (log-sum-exp), so that per element
//        lq = z/T - lse_s (= log q), lp = t/T - lse_t (= log p), q = e^lq, p = e^lp
//   3. row reductions: L = sum_j term(j) (the loss) and, where the gradient needs it,
//        G = sum_j q_j g_j (g = dL/dq), the softmax-chain correction
//   4. gradient dD/dz_j = q_j (g_j - G) / T written per element (closed forms below).
//
// Divergences (lambda = skew, beta in (0,1) for jsd: the endpoints dispatch to kl):
//   forward-kl   L = sum p (lp - lq)                 dz = (q - p)/T
//   reverse-kl   L = sum q (lq - lp)                 dz = q (lq - lp - L)/T
//   jsd          m = b p + (1-b) q, L = b KL(p||m) + (1-b) KL(q||m)
//                G = KL(q||m)                        dz = (1-b) q (lq - lm - G)/T
//   tvd          L = 1/2 sum |p - q|, h = 1/2 sign(q - p), G = sum q h
//                                                    dz = q (h - G)/T
//   skew-fkl     r = l p + (1-l) q, L = sum p (lp - lr), g = -(1-l) p / r
//                                                    dz = q (g - G)/T, G = sum q g
//   skew-rkl     r = (1-l) p + l q, L = sum q (lq - lr), g = lq - lr + 1 - l q / r
//                                                    dz = q (g - G)/T, G = sum q g
// Zero-probability entries (-inf logits) contribute exactly 0 (0 log 0 = 0), so banned
// tokens never produce NaN; a NaN logit makes its own row NaN and nothing else.
#pragma once
#include <cstdint>

#include "common/divergence.h"
#include "common/dtype.h"

namespace kd {

// Which row scalars a divergence needs before its gradient can be written.
KD_HD bool div_needs_G(int32_t div) {
  return div == kJsd || div == kTvd || div == kSkewForwardKl || div == kSkewReverseKl;
}
KD_HD bool div_needs_log(int32_t div) {
  return div == kJsd || div == kSkewForwardKl || div == kSkewReverseKl;
}

// jsd with beta at an endpoint is exactly a KL (TRL's generalized_jsd_loss), and a
// skew KL with lambda = 0 is exactly the plain KL. Dispatching these to the KL paths
// is not only faster: at lambda = 0 the skew gradient's q * (p / r) with r = q is
// 0 * inf where q underflows, while the KL form (q - p) is exact.
KD_HD int32_t effective_div(int32_t div, float beta, float skew = 0.5f) {
  if (div == kJsd && beta == 0.0f) return kForwardKl;
  if (div == kJsd && beta == 1.0f) return kReverseKl;
  if (div == kSkewForwardKl && skew == 0.0f) return kForwardKl;
  if (div == kSkewReverseKl && skew == 0.0f) return kReverseKl;
  return div;
}

// x * y with 0 * anything = 0 (for 0 log 0 and p = 0 against -inf log-ratios).
KD_HD float mul0(float x, float y) { return x == 0.0f ? 0.0f : x * y; }

// The mixture whose log the log-based divergences need (jsd: m, skew: r).
KD_HD float div_mixture(int32_t div, float p, float q, float beta, float skew) {
  if (div == kJsd) return beta * p + (1.0f - beta) * q;
  if (div == kSkewForwardKl) return skew * p + (1.0f - skew) * q;
  return (1.0f - skew) * p + skew * q;  // kSkewReverseKl
}

// Loss contribution of one element. lm: log of the mixture (unused otherwise).
KD_HD float div_term(int32_t div, float lq, float lp, float q, float p, float lm, float beta) {
  switch (div) {
    case kForwardKl: return mul0(p, lp - lq);
    case kReverseKl: return mul0(q, lq - lp);
    case kJsd: return beta * mul0(p, lp - lm) + (1.0f - beta) * mul0(q, lq - lm);
    case kTvd: return 0.5f * (p > q ? p - q : q - p);
    case kSkewForwardKl: return mul0(p, lp - lm);
    case kSkewReverseKl: return mul0(q, lq - lm);
    default: return 0.0f;
  }
}

// g_j = dL/dq_j as needed for G = sum q g (only for div_needs_G divergences).
// For jsd we accumulate KL(q||m) terms, the form its closed-form gradient uses.
KD_HD float div_g(int32_t div, float lq, float q, float p, float m, float lm, float skew) {
  switch (div) {
    case kJsd: return lq - lm;
    case kTvd: return q > p ? 0.5f : (q < p ? -0.5f : 0.0f);
    case kSkewForwardKl: return p == 0.0f ? 0.0f : -(1.0f - skew) * p / m;
    case kSkewReverseKl: return q == 0.0f ? 0.0f : lq - lm + 1.0f - skew * q / m;
    default: return 0.0f;
  }
}

// dD/dz_j * T (the caller multiplies by the row factor, which includes 1/T).
// L: the row's divergence; G: sum q g (or KL(q||m) for jsd).
KD_HD float div_grad(int32_t div, float lq, float lp, float q, float p, float g, float L, float G, float beta) {
  switch (div) {
    case kForwardKl: return q - p;
    case kReverseKl: return mul0(q, lq - lp - L);
    case kJsd: return (1.0f - beta) * mul0(q, g - G);
    case kTvd:
    case kSkewForwardKl:
    case kSkewReverseKl: return mul0(q, g - G);
    default: return 0.0f;
  }
}

// Cross-entropy (PyTorch cross_entropy with label smoothing eps) on untempered logits:
//   CE = -(1-eps) log q0_y - eps/V sum_j log q0_j = lse0 - (1-eps) z_y - eps mean(z)
//   dCE/dz_j = q0_j - (1-eps) [j == y] - eps / V
KD_HD float ce_loss(float lse0, float z_y, float mean_z, float eps) {
  float r = lse0 - (1.0f - eps) * z_y;
  if (eps != 0.0f) r -= eps * mean_z;
  return r;
}

}  // namespace kd
