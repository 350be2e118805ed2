// The online (single-pass) softmax statistics of the CUDA row kernels (divergence.cu,
// token_stats.cu): the per-element update, the merge of two partial states, and the
// per-row results derived from a merged state. Host + device code with no CUDA header,
// so the CPU test suite runs the very functions the kernels run (through the debug
// binding native/binding/cuda_debug.cc, in the kernels' own chunk and reduction order:
// native/common/cuda_plan.h). Only ex2 / lg2 differ between the two: MUFU (ex2.approx,
// lg2.approx, ~2 ulp) on the device, libm with the same flush-to-zero on the host.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/divergence_math.h"
#include "common/dtype.h"

// `#pragma unroll` for device compilation only (host passes of __host__ __device__
// helpers, and host builds of these headers, would warn about an unknown pragma).
#if !defined(KD_UNROLL)
#if defined(__CUDA_ARCH__)
#define KD_UNROLL _Pragma("unroll")
#else
#define KD_UNROLL
#endif
#endif

namespace kd::cuda {

constexpr int kChunk = 8;                              // elements per chunk (16 B of 16-bit)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;
constexpr float kInf = __builtin_huge_valf();

// ---------------------------------------------------------------------------------
// Fast math (device: MUFU; host: libm with the same flush-to-zero)
// ---------------------------------------------------------------------------------

// 2^x; results below 2^-126 (probabilities < 1.2e-38) flush to +0. -inf -> 0, NaN -> NaN.
KD_HD float ex2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  const float y = std::exp2(x);
  return std::fabs(y) < FLT_MIN ? 0.0f : y;
#endif
}

// log2(x); 0 (and inputs below 2^-126) -> -inf, x < 0 -> NaN.
KD_HD float lg2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  if (x >= 0.0f && x < FLT_MIN) return -kInf;
  return std::log2(x);
#endif
}

// The shift used for a running maximum: 0 while it is -inf (nothing but -inf seen yet),
// so that x - shift stays -inf (exp 0) instead of becoming NaN.
KD_HD float safe_max(float m) { return m == -kInf ? 0.0f : m; }

// r * x where r == 0 means "this part has no probability mass": 0, even if x is +-inf,
// but a NaN in x survives (a NaN input must make its row NaN).
KD_HD float scale0(float r, float x) { return r == 0.0f ? (x != x ? x : 0.0f) : r * x; }

// Fixed pairwise tree over 8 values (also better rounding than a running sum).
KD_HD float sum8(const float* a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}
KD_HD float max8(const float* a) {
  float m = fmaxf(a[0], a[1]);
  for (int k = 2; k < 8; ++k) m = fmaxf(m, a[k]);
  return m;  // NaNs are skipped (they still poison the row through exp)
}

// Elements past the end of the row (nv < 8) become -inf: probability exactly 0, so they
// drop out of every max, sum and divergence term without a per-element test.
KD_HD void pad_chunk(float* x, int nv) {
  if (nv < kChunk) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k)
      if (k >= nv) x[k] = -kInf;
  }
}


// ---------------------------------------------------------------------------------
// Online softmax statistics of a (student, teacher) row pair, in base 2
// ---------------------------------------------------------------------------------
//
// With scales cs = log2(e)/T (student) and ct (teacher: log2(e)/T, or log2(e) for teacher
// log-probs used as is) and raw running maxima ms, mt, each element contributes
// a_s = (z - safe(ms)) cs, e_s = 2^a_s (and a_t, e_t). Shifting BEFORE scaling keeps a_s
// exact for the max element (a_s = 0, e_s = 1): a shift ms*cs rounded to f32 would move
// every exponent by up to ulp(ms cs) and break sum q = 1 at large logits.
//   ss = sum e_s, st = sum e_t                         (softmax normalisers, shifted)
//   a  = sum e_s (a_s - a_t)      -> reverse KL  = ln2 (a/ss - log2 ss + log2 st)
//   b  = sum e_t (a_t - a_s)      -> forward KL  = ln2 (b/st + log2 ss - log2 st)
//   dq = sum e_s a_s              -> H(q)        = ln2 (log2 ss - dq/ss)
//   dp = sum e_t a_t              -> H(p)        = ln2 (log2 st - dp/st)
//   s0 = sum 2^((z - safe(ms)) log2e)      (untempered normaliser: CE at T != 1)
//   zc = sum (z - zref)                    (label smoothing's mean, zref = z[label])
// When a maximum grows by d (in shifted units) the old terms are rescaled by r = 2^-d and
// their a_s (resp. a_t) fall by d, hence the corrections below; merging two partial
// states applies the same algebra, so each state is exact up to rounding whatever the
// order, and the shifted log-ratios stay small (no cancellation for large logits).
// a_s - a_t may be +-inf (a banned token on one side): such terms are weighted by e = 0
// (mul0) or are genuinely infinite (KL to a zero-probability token).

enum PairFlags : unsigned {
  kHasTeacher = 1u,
  kAccA = 2u,   // reverse KL accumulator
  kAccB = 4u,   // forward KL accumulator
  kAccDq = 8u,  // student entropy
  kAccDp = 16u, // teacher entropy
};

struct PairStats {
  float ms, ss;   // student: raw max, shifted sum
  float mt, st;   // teacher: raw max (0, fixed, for raw log-probs), shifted sum
  float a, b;     // reverse / forward KL accumulators
  float dq, dp;   // entropy accumulators
  float s0;       // untempered student sum (CE at T != 1)
  float zc;       // sum (z - zref) (label smoothing)
};

// Per-call constants of the statistics.
struct PairConsts {
  float cs = kLog2e, ct = kLog2e;  // scales
  bool traw = false;               // teacher log-probs used as is (mt fixed at 0)
  bool s0 = false;                 // accumulate s0
  bool zc = false;                 // accumulate zc
  float zref = 0.0f;               // zc's reference value
};

KD_HD PairStats pair_identity(bool traw) {
  PairStats s;
  s.ms = -kInf; s.ss = 0.0f;
  s.mt = traw ? 0.0f : -kInf; s.st = 0.0f;
  s.a = s.b = s.dq = s.dp = s.s0 = s.zc = 0.0f;
  return s;
}

// Adds one chunk (z[8], t[8]: raw f32 values, padded with -inf; nv valid) to S.
template <unsigned F>
KD_HD void pair_update(PairStats& S, const float* z, const float* t, int nv, const PairConsts& C) {
  constexpr bool kT = (F & kHasTeacher) != 0;
  // Student maximum first: rescale what has been accumulated so far.
  const float cm = max8(z);
  if (cm > S.ms) {  // false for NaN, so ms is never NaN
    const float r = S.ms == -kInf ? 0.0f : ex2((S.ms - cm) * C.cs);
    const float d = (cm - safe_max(S.ms)) * C.cs;  // how far every a_s falls
    if (F & kAccA) S.a = scale0(r, S.a - d * S.ss);
    if (F & kAccDq) S.dq = scale0(r, S.dq - d * S.ss);
    if (F & kAccB) S.b += d * S.st;  // teacher weights unchanged, a_s fell by d
    if (C.s0) S.s0 *= S.ms == -kInf ? 0.0f : ex2((S.ms - cm) * kLog2e);
    S.ss *= r;
    S.ms = cm;
  }
  if (kT && !C.traw) {
    const float cmt = max8(t);
    if (cmt > S.mt) {
      const float r = S.mt == -kInf ? 0.0f : ex2((S.mt - cmt) * C.ct);
      const float d = (cmt - safe_max(S.mt)) * C.ct;
      if (F & kAccB) S.b = scale0(r, S.b - d * S.st);
      if (F & kAccDp) S.dp = scale0(r, S.dp - d * S.st);
      if (F & kAccA) S.a += d * S.ss;  // student weights unchanged, a_t fell by d
      S.st *= r;
      S.mt = cmt;
    }
  }
  const float ms = safe_max(S.ms);
  const float mt = kT ? safe_max(S.mt) : 0.0f;
  float as[kChunk], es[kChunk], at[kChunk], et[kChunk], tmp[kChunk];
KD_UNROLL
  for (int k = 0; k < kChunk; ++k) {
    as[k] = (z[k] - ms) * C.cs;
    es[k] = ex2(as[k]);
  }
  S.ss += sum8(es);
  if (kT) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) {
      at[k] = (t[k] - mt) * C.ct;
      et[k] = ex2(at[k]);
    }
    S.st += sum8(et);
  }
  if (F & kAccA) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = mul0(es[k], as[k] - at[k]);
    S.a += sum8(tmp);
  }
  if (F & kAccB) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = mul0(et[k], at[k] - as[k]);
    S.b += sum8(tmp);
  }
  if (F & kAccDq) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = mul0(es[k], as[k]);
    S.dq += sum8(tmp);
  }
  if (F & kAccDp) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = mul0(et[k], at[k]);
    S.dp += sum8(tmp);
  }
  if (C.s0) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = ex2((z[k] - ms) * kLog2e);
    S.s0 += sum8(tmp);
  }
  if (C.zc) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = k < nv ? z[k] - C.zref : 0.0f;
    S.zc += sum8(tmp);
  }
}

// The rescale factor of a part whose raw max was m_part, to the merged raw max m >= m_part.
KD_HD float merge_factor(float m_part, float m, float c) {
  if (m_part == m) return 1.0f;
  return m_part == -kInf ? 0.0f : ex2((m_part - m) * c);
}
// How far the shifted log-values a of that part fall: (safe(m) - safe(m_part)) c.
KD_HD float merge_shift(float m_part, float m, float c) { return (safe_max(m) - safe_max(m_part)) * c; }

// Combines two partial states (as if their elements had been accumulated together).
template <unsigned F>
KD_HD PairStats pair_merge(const PairStats& x, const PairStats& y, const PairConsts& C) {
  constexpr bool kT = (F & kHasTeacher) != 0;
  PairStats o;
  o.ms = fmaxf(x.ms, y.ms);
  const float rx = merge_factor(x.ms, o.ms, C.cs), ry = merge_factor(y.ms, o.ms, C.cs);
  const float dx = merge_shift(x.ms, o.ms, C.cs), dy = merge_shift(y.ms, o.ms, C.cs);
  o.ss = x.ss * rx + y.ss * ry;
  float rtx = 1.0f, rty = 1.0f, dtx = 0.0f, dty = 0.0f;
  if (kT) {
    o.mt = fmaxf(x.mt, y.mt);
    rtx = merge_factor(x.mt, o.mt, C.ct);
    rty = merge_factor(y.mt, o.mt, C.ct);
    dtx = merge_shift(x.mt, o.mt, C.ct);
    dty = merge_shift(y.mt, o.mt, C.ct);
    o.st = x.st * rtx + y.st * rty;
  } else {
    o.mt = x.mt;
    o.st = 0.0f;
  }
  o.a = (F & kAccA) ? scale0(rx, x.a + (dtx - dx) * x.ss) + scale0(ry, y.a + (dty - dy) * y.ss) : 0.0f;
  o.b = (F & kAccB) ? scale0(rtx, x.b + (dx - dtx) * x.st) + scale0(rty, y.b + (dy - dty) * y.st) : 0.0f;
  o.dq = (F & kAccDq) ? scale0(rx, x.dq - dx * x.ss) + scale0(ry, y.dq - dy * y.ss) : 0.0f;
  o.dp = (F & kAccDp) ? scale0(rtx, x.dp - dtx * x.st) + scale0(rty, y.dp - dty * y.st) : 0.0f;
  if (C.s0) o.s0 = x.s0 * merge_factor(x.ms, o.ms, kLog2e) + y.s0 * merge_factor(y.ms, o.ms, kLog2e);
  else o.s0 = 0.0f;
  o.zc = C.zc ? x.zc + y.zc : 0.0f;
  return o;
}

// ---------------------------------------------------------------------------------
// Per-row results from a merged state (token_stats.cu writes these; divergence.cu's
// forward / reverse KL losses are fkl / rkl)
// ---------------------------------------------------------------------------------

struct RowResults {
  float fkl, rkl;  // KL(p||q), KL(q||p)
  float hq, hp;    // H(q), H(p)
  float l2ss, l2zt;  // log2 of the student's / teacher's shifted sums (l2zt = 0 for raw log-probs)
};

// Zt = st (or 1 for raw log-probs, which are not renormalised: sum p = st then):
//   forward_kl = ln2 (b/Zt + (st/Zt)(log2 ss - log2 Zt)),  reverse_kl = ln2 (a/ss - log2 ss + log2 Zt)
//   H(q) = ln2 (log2 ss - dq/ss),  H(p) = ln2 ((st/Zt) log2 Zt - dp/Zt)
KD_HD RowResults row_results(const PairStats& S, bool traw) {
  RowResults r;
  r.l2ss = log2f(S.ss);
  r.l2zt = traw ? 0.0f : log2f(S.st);
  const float zt = traw ? 1.0f : S.st;
  const float pm = S.st / zt;  // sum p: 1, or sum e^t for raw log-probs
  r.fkl = kLn2 * (S.b / zt + pm * (r.l2ss - r.l2zt));
  r.rkl = kLn2 * (S.a / S.ss - r.l2ss + r.l2zt);
  r.hq = kLn2 * (r.l2ss - S.dq / S.ss);
  r.hp = kLn2 * (pm * r.l2zt - S.dp / zt);
  return r;
}

}  // namespace kd::cuda
