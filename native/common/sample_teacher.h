// sampleTeacher: the random-sampling estimator of Sparse Logit Sampling (Anshumann et
// al., ACL 2025). Per row, n ids drawn with replacement from r ∝ p^tau (p =
// softmax(x/T)); id j gets weight p_j / (n r_j), so E[sum of weights at i] = p_i.
// Randomness is counter-based (seed, row, draw), so CPU and CUDA agree.
//
// How a row is sampled, identically on both backends (native/cpu/sample_teacher.cc,
// native/cuda/sample_teacher.cu):
//
//   m      = max_j x_j (raw); a row with a NaN, a +inf or no finite entry is invalid:
//            its ids are 0 and its weights and log-probs NaN (a NaN stays in its row)
//   c      = tau / T (one f32 division, the same on both sides)
//   r_j    = sample_exp((x_j - m) * c) in (0, 1]      (0 for x_j = -inf: p_j = 0)
//   q_j    = floor(r_j * 2^s), s = sample_fixed_shift(V)    (uint64 fixed point)
//   Q      = sum_j q_j                                       (exact: integer adds)
//   draw d : u = sample_random(seed, row, d) (64 uniform bits), t = floor(u * Q / 2^64),
//            id = the smallest j with q_0 + ... + q_j > t    (inverse CDF, exact)
//   weight = p_id / (n q_id / Q),  p_id = e^{(x_id - m)/T} / S,  S = sum_j e^{(x_j - m)/T}
//   logprob= (x_id - m)/T - log S
//
// Why the ids are the same on CPU and CUDA, bit for bit (not "except near a CDF
// boundary"): r_j is computed only with correctly rounded IEEE operations (sub, mul,
// fma, exact scalings by 2^n) in a fixed order with every multiply-add written as an
// explicit fma (so no compiler contraction can change it), hence r_j, q_j, the exact
// integer prefix sums and the search are identical on every backend and ISA level. The
// weights and log-probs use S, a float sum whose last bits depend on the backend's
// summation order (|difference| ~ 1e-7 relative); the ids never do.
//
// Unbiasedness: the draw uses exactly the proposal r'_j = q_j / Q (up to 2^-64 from the
// 64-bit uniform), and the weight divides by that same r'_j, so E[sum of weights at
// id i] = n r'_i p_i / (n r'_i) = p_i for every id with q_i > 0. Ids whose proposal
// is below 2^-s of the largest (q_i = 0) are never drawn; that is the only bias. Such
// an id has p_i / p_max < 2^(-s/tau), so the missing teacher mass is below
// V 2^(-s/tau): for tau = 1 and V = 151936 (s = 45), under 2^-27 ~ 7e-9; tau < 1
// (flatter proposals) only lowers it; tau = 0 proposes every id with p > 0. With
// tau = 1, r = p and every weight is ~1/n.
//
// The row index in sample_random is the row's index within the call (0..N-1).
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace kd {

struct SampleTeacherArgs {
  int64_t n = 0, v = 0, samples = 0;
  const void* x = nullptr; int64_t ldx = 0; int32_t x_dtype = kF32;
  float temperature = 1.0f;
  float proposal_power = 1.0f;
  uint64_t seed = 0;
  int32_t* indices = nullptr;   // [n, samples]
  float* weights = nullptr;     // [n, samples]
  float* logprobs = nullptr;    // [n, samples] teacher log p at the ids (optional)
  void* stream = nullptr;
  int32_t device = -1;
};

// ---- counter-based randomness (splitmix64 finaliser, Stafford's variant 13) ----------

KD_HD uint64_t sample_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// 64 uniform bits for draw `draw` of row `row` under `seed`: three chained splitmix64
// rounds over distinct odd-constant multiples of the counters (a keyed hash; no state).
KD_HD uint64_t sample_random(uint64_t seed, uint64_t row, uint64_t draw) {
  uint64_t h = sample_mix64(seed + 0x9e3779b97f4a7c15ULL);
  h = sample_mix64(h ^ (row * 0xd1b54a32d192ed03ULL + 0x8cb92ba72f3d8dd7ULL));
  return sample_mix64(h + (draw + 1) * 0x9e3779b97f4a7c15ULL);
}

// The same bits as a uniform double in [0, 1) (53 bits); documentation and tests.
KD_HD double sample_uniform(uint64_t seed, uint64_t row, uint64_t draw) {
  return double(sample_random(seed, row, draw) >> 11) * 0x1.0p-53;
}

// floor(a * b / 2^64): maps 64 uniform bits onto [0, b) (bias < b / 2^64).
KD_HD uint64_t sample_mulhi(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return uint64_t((unsigned __int128)a * b >> 64);
#endif
}

// ---- reproducible arithmetic ---------------------------------------------------------

// fma(a, b, c) correctly rounded on every backend: the hardware instruction where there
// is one; otherwise (x86-64 baseline) the exact product in double, a TwoSum and
// round-to-odd, which makes the final double -> float rounding correct (53 >= 24 + 2).
KD_HD float sample_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#elif defined(__FMA__) || defined(__ARM_FEATURE_FMA) || defined(__aarch64__)
  return __builtin_fmaf(a, b, c);
#else
  const double p = double(a) * double(b);  // exact: 24 + 24 bits
  const double s = p + double(c);
  const double bb = s - p;
  const double err = (p - (s - bb)) + (double(c) - bb);  // exact: s + err = p + c
  uint64_t u;
  __builtin_memcpy(&u, &s, 8);
  if (err != 0.0 && (u & 1u) == 0) u += ((err > 0.0) == (s > 0.0)) ? 1 : uint64_t(-1);
  double r;
  __builtin_memcpy(&r, &u, 8);
  return float(r);
#endif
}

// e^a for a <= 0, from correctly rounded operations only (see above): Cody-Waite
// reduction a = n ln2 + f and Cephes' expf polynomial, every multiply-add an explicit
// sample_fma. ~1 ulp; a <= -87 (and NaN) gives 0, where q would be 0 anyway.
KD_HD float sample_exp(float a) {
  const bool zero = !(a > -87.0f);
  const float ac = zero ? 0.0f : a;
  const float t = sample_fma(ac, 1.44269504088896341f, 12582912.0f);  // rint(a log2 e) + 1.5 2^23
  const float n = t - 12582912.0f;                                     // exact
  const int32_t ni = int32_t(f32_bits(t) - 0x4B400000u);               // in [-126, 0]
  float f = sample_fma(n, -0.693359375f, ac);
  f = sample_fma(n, 2.12194440e-4f, f);
  const float z = f * f;
  float y = 1.9875691500e-4f;
  y = sample_fma(y, f, 1.3981999507e-3f);
  y = sample_fma(y, f, 8.3334519073e-3f);
  y = sample_fma(y, f, 4.1665795894e-2f);
  y = sample_fma(y, f, 1.6666665459e-1f);
  y = sample_fma(y, f, 5.0000001201e-1f);
  y = sample_fma(y, z, f);
  y = y + 1.0f;
  y = y * bits_f32(uint32_t(ni + 127) << 23);  // 2^n, a normal float for n >= -126
  return zero ? 0.0f : y;
}

// The fixed-point shift s: q_j <= 2^s and V q_j <= 2^63, so Q never overflows.
KD_HD int sample_fixed_shift(int64_t v) {
  int b = 0;
  while (b < 62 && (int64_t(1) << b) < v) ++b;  // b = ceil(log2 V)
  return 63 - b;
}

// 2^s as a float (exact for s <= 127).
KD_HD float sample_fixed_scale(int s) { return bits_f32(uint32_t(s + 127) << 23); }

// q_j for logit x (raw) given the row max m, c = tau / T and scale = 2^s. -inf (p = 0)
// is never proposed, also for tau = 0 where (x - m) * 0 would be NaN.
KD_HD uint64_t sample_fixed(float x, float m, float c, float scale) {
  if (f32_bits(x) == 0xff800000u) return 0;  // x = -inf
  const float r = sample_exp((x - m) * c);
  const float w = r * scale;  // exact: a power-of-two scaling of a value <= 1
#if defined(__CUDA_ARCH__)
  return __float2ull_rz(w);
#else
  return uint64_t(w);
#endif
}

}  // namespace kd
