// CPU row helpers for the row-wise kernels (divergence.cc, token_stats.cc): a
// vectorisable exp and log, fixed-lane reductions, f16/bf16 staging, the per-thread
// scratch rows and the first ("softmax statistics") pass over a row.
//
// Element-wise math is plain scalar C++ (branchless exp/log below) in simple loops that
// GCC -O3 vectorises for whatever ISA the including file is compiled for (generic SSE2,
// AVX2, AVX-512); sums and maxima use fixed lane arrays held in native-width GCC vectors.
// No -ffast-math: we need -inf and NaN semantics, and fixed summation orders for bitwise
// determinism. The reduction order of every sum depends only on tuning::kCpuLanes,
// kCpuRowChains, kCpuRowBlock and the row length, never on the thread count.
//
// This header is included by files compiled once per ISA level (see CMakeLists.txt), so
// everything lives in kd::cpu::KD_ISA::row: the three copies must not be merged by the
// linker (an AVX-512 copy of an inline function picked for the generic build would be
// an illegal instruction on an older CPU).
#pragma once
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#if defined(KD_ISA_avx2) || defined(KD_ISA_avx512)
#include <immintrin.h>
#endif

#include "common/dtype.h"
#include "common/tuning.h"
#include "cpu/thread_pool.h"

#if !defined(KD_ISA)
#error "native/cpu/row.h is compiled per ISA level: define KD_ISA (see CMakeLists.txt)"
#endif

#define KD_ROW_INLINE inline __attribute__((always_inline))

namespace kd::cpu::KD_ISA::row {

constexpr int64_t kBlock = tuning::kCpuRowBlock;
static_assert(kBlock % tuning::kCpuLanes == 0, "a row block must hold whole lane groups");

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

KD_ROW_INLINE uint32_t fbits(float f) { return __builtin_bit_cast(uint32_t, f); }
KD_ROW_INLINE float bitsf(uint32_t u) { return __builtin_bit_cast(float, u); }

// Fixed-lane helpers for the kernels with one accumulator group (topk, sampleTeacher,
// sparseKlDiv): lane l takes the elements j with j % kLanes == l, and lanes meet in a
// fixed tree, so a sum's order depends only on n (bitwise deterministic). The divergence
// engine's wider accumulators are below (kSumLanes).
constexpr int kLanes = tuning::kCpuLanes;
template <class F>
KD_ROW_INLINE void for_lanes(int64_t n, F&& f) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) f(j + l, l);
  for (int l = 0; j + l < n; ++l) f(j + l, l);
}
KD_ROW_INLINE float lane_sum(float* b) {
#pragma GCC unroll 4
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) b[l] += b[l + w];
  return b[0];
}
KD_ROW_INLINE float lane_max(float* b) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) b[l] = b[l + w] > b[l] ? b[l + w] : b[l];
  return b[0];
}

// The loss out of the per-row totals: per token (reduction 'none'), or their sum in
// double, in row order (deterministic), divided by the reduction's divisor (0 when no
// token is selected: loss 0).
inline void write_loss(const float* rowtot, int64_t n, bool per_token, double divisor, float* loss) {
  if (per_token) {
    for (int64_t i = 0; i < n; ++i) loss[i] = rowtot[i];
    return;
  }
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += double(rowtot[i]);
  *loss = divisor > 0.0 ? float(s / divisor) : 0.0f;
}

// ---------------------------------------------------------------------------------
// exp and log: branchless, vectorisable, < 1.2 ulp (measured over all f32 inputs of
// [-86, 88.72] for exp and every 97th positive f32 for log, at every ISA level; the
// first pass's table-driven exps of x - block max, exp8_nonpos (AVX2) and exp16_nonpos
// (AVX-512), are at most 5.6 and 5.2 ulp on [-86, 0], 2.0 and 1.7 on [-3, 0], for three
// and four FMA-pipe operations fewer)
// ---------------------------------------------------------------------------------

// e^x. Range reduction x = n ln2 + r, |r| <= ln2/2 (ln2 split with a 9-bit head,
// so n*C1 is exact with or without FMA); e^r by a degree-6 polynomial (1 + r + ..., fitted
// for relative error 4e-9 on the interval); then the scaling by 2^n (below).
// The rounding constant 1.5 * 2^23 + 126 leaves n + 126 in the low bits of t, so t << 23
// is the float 2^(n-1) (normal for n in [-124, 128], i.e. x in [-86, 88.72]): y 2^(n-1)
// is exact (always normal for x >= -86) and the final *2 rounds and overflows exactly
// like e^x itself. 2^(n-1) is applied by a multiply, not by adding t << 23 into y's
// exponent field: a NaN x with payload bits in t's low bits would have turned that add
// into a finite number (a NaN logit then made a finite loss; found in review, 2026-12-07),
// while NaN * anything stays NaN. Results below e^-86 (4.5e-38, the subnormal range) flush to
// exactly 0, as do -inf and every x < -86; x > 88.7228 (incl. +inf) gives +inf; NaN
// propagates (each special case is a select that a NaN fails). 17 vector ops, no branch.
// The polynomials of exp_f and log_normal_f, highest degree first (Horner), shared by
// their vector forms (row.h exp16 / exp8_reduced, divergence.cc log_normal16 / 8).
constexpr int kPolyTerms = 7;
constexpr float kExpPoly[kPolyTerms] = {1.3811657e-3f, 8.3701354e-3f, 4.1668527e-2f, 1.6666509e-1f, 4.9999994e-1f, 1.0f, 1.0f};
constexpr float kLogPoly[kPolyTerms] = {-1.0082233e-1f, 1.6180466e-1f, -1.7243253e-1f, 1.9906887e-1f,
                                        -2.4971227e-1f, 3.3334714e-1f,  -5.0000320e-1f};

KD_ROW_INLINE float exp_f(float x) {
  const float t = x * 1.44269504088896341f + 12583038.0f;  // round(x / ln2) + 1.5*2^23 + 126
  const float n = t - 12583038.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = kExpPoly[0];
#pragma GCC unroll 8
  for (int i = 1; i < kPolyTerms; ++i) y = y * r + kExpPoly[i];
  y = y * bitsf(fbits(t) << 23) * 2.0f;  // low bits of t: n + 126, so t << 23 = 2^(n-1)
  y = x < -86.0f ? 0.0f : y;
  return x > 88.72283935546875f ? kInf : y;
}

// ln x (Cephes logf). x = 2^k m with m in [sqrt(1/2), sqrt(2)) (musl's integer reduction), f = m - 1,
// Cephes' degree-9 polynomial for ln(1 + f). Subnormal inputs are pre-scaled by 2^23.
// ln 0 = -inf, ln(x < 0) = NaN, ln(+inf) = +inf, ln NaN = NaN.
KD_ROW_INLINE float log_f(float x) {
  bool sub = x < 1.17549435e-38f;  // subnormal (also 0 and negatives: fixed below)
  float xs = sub ? x * 8388608.0f : x;
  uint32_t ix = fbits(xs) + (0x3f800000u - 0x3f3504f3u);
  int32_t k = int32_t(ix >> 23) - 0x7f - (sub ? 23 : 0);
  float f = bitsf((ix & 0x007fffffu) + 0x3f3504f3u) - 1.0f;
  float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  float kf = float(k);
  y = y + kf * -2.12194440e-4f;
  y = y - 0.5f * z;
  float res = f + y;
  res = res + kf * 0.693359375f;
  float special = x == 0.0f ? -kInf : (x < 0.0f ? kNaN : x);  // +inf -> inf, NaN -> NaN
  return (x > 0.0f && x < kInf) ? res : special;
}

// ln x for x a positive normal float (>= 2^-126, finite), cheaper than log_f: no subnormal
// or special-value handling (x = 0 or x < 0 give finite garbage; callers clamp), and
// ln(1 + f) as f + f^2 R(f) with R a degree-6 polynomial fitted for relative error 1.8e-7
// on [sqrt(1/2) - 1, sqrt(2) - 1]; k ln2 added by one FMA (|k ln2 - k ln2_f| < 3e-7,
// under half an ulp of the result whenever k != 0). Measured: < 3.4 ulp, the worst near
// x = 1 where ln x is small (absolute error < 1e-7 for |ln x| < 1): all the mixture logs
// need, as they enter as differences log q - log m. A NaN (or inf) still gives NaN,
// through the + (x - x).
KD_ROW_INLINE float log_normal_f(float x) {
  const uint32_t ix = fbits(x) + (0x3f800000u - 0x3f3504f3u);
  const float kf = float(int32_t(ix >> 23) - 0x7f);
  const float f = bitsf((ix & 0x007fffffu) + 0x3f3504f3u) - 1.0f;
  float y = kLogPoly[0];
#pragma GCC unroll 8
  for (int i = 1; i < kPolyTerms; ++i) y = y * f + kLogPoly[i];
  y = y * (f * f) + f;
  return (kf * 0.693147182464599609375f + y) + (x - x);
}

// ---------------------------------------------------------------------------------
// Fixed-lane reductions
// ---------------------------------------------------------------------------------
//
// Row sums and maxima use kSumLanes = kCpuLanes * kCpuRowChains f32 accumulators: lane l
// takes the elements j with j % kSumLanes == l, then the lanes meet in a fixed pairwise
// tree. The accumulators are native-width GCC vectors, so the order is the same at every
// ISA level and the loops vectorise for certain; the element-wise work (exp, the
// divergence terms) is in plain loops over L1-resident blocks that GCC vectorises itself,
// writing per-element values that these reductions then sum.
#if defined(KD_ISA_avx512)
constexpr int kVecWidth = 16;
#elif defined(KD_ISA_avx2)
constexpr int kVecWidth = 8;
#else
constexpr int kVecWidth = 4;
#endif
constexpr int kSumLanes = tuning::kCpuLanes * tuning::kCpuRowChains;
static_assert(kSumLanes % kVecWidth == 0 && (kSumLanes & (kSumLanes - 1)) == 0, "lanes: a power of two");
constexpr int kVecs = kSumLanes / kVecWidth;
typedef float vnat __attribute__((vector_size(kVecWidth * sizeof(float))));

KD_ROW_INLINE vnat vload(const float* p) {
  vnat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// bf16 rows are read in place (the widening is a shift); f16 rows are staged as f32.
typedef uint16_t vhalf __attribute__((vector_size(kVecWidth * sizeof(uint16_t))));
typedef uint32_t vuint __attribute__((vector_size(kVecWidth * sizeof(uint32_t))));
KD_ROW_INLINE vnat vload(const uint16_t* p) {
#if defined(KD_ISA_avx512)  // one vpmovzxwd (GCC splits the generic widening into halves)
  const __m512i w = _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return reinterpret_cast<vnat>(_mm512_maskz_slli_epi32(0xffff, w, 16));
#elif defined(KD_ISA_avx2)
  // The 8 bf16 loaded into both 128-bit halves (vbroadcasti128: a load, no ALU op), then
  // one in-lane vpshufb puts words 0-3 (low half) and 4-7 (high half) in the high 16 bits
  // of each dword, zeros below: one shuffle instead of vpmovzxwd + vpslld.
  const __m256i ctl = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,  //
                                       -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
  const __m256i h = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return reinterpret_cast<vnat>(_mm256_shuffle_epi8(h, ctl));
#else
  vhalf h;
  std::memcpy(&h, p, sizeof h);
  return reinterpret_cast<vnat>(__builtin_convertvector(h, vuint) << 16);
#endif
}
KD_ROW_INLINE float ldf(const float* p, int64_t j) { return p[j]; }
KD_ROW_INLINE float ldf(const uint16_t* p, int64_t j) { return bitsf(uint32_t(p[j]) << 16); }

// f32 -> bf16, round to nearest even, NaN kept quiet: dtype.h's f32_to_bf16 as a select.
KD_ROW_INLINE uint16_t bf16_rne(float f) {
  const uint32_t u = fbits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : rounded);
}
KD_ROW_INLINE void stf(float* p, int64_t j, float x) { p[j] = x; }
KD_ROW_INLINE void stf(uint16_t* p, int64_t j, float x) { p[j] = bf16_rne(x); }
#if defined(KD_ISA_avx2)
// bf16_rne on 16 values, stored as 16 bf16: the same rounding bit for bit (a NaN: its top
// 16 bits with the quiet bit set), ~9 operations per 8 values against GCC's ~18 for the
// scalar select vectorised (which also repacks through two blends).
KD_ROW_INLINE __m256i bf16_rne8(__m256 x) {  // in the low 16 bits of each 32-bit lane
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
  const __m256i q = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_srli_epi32(_mm256_blendv_epi8(r, q, nan), 16);
}
KD_ROW_INLINE __m256i pack_bf16x16(__m256 lo, __m256 hi) {  // 16 bf16, lo's 8 first
  // packus works within 128-bit halves: [lo 0-3, hi 0-3 | lo 4-7, hi 4-7] -> qwords 0 2 1 3
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_rne8(lo), bf16_rne8(hi)), 0xd8);
}
KD_ROW_INLINE void store_bf16x16(uint16_t* dst, __m256 lo, __m256 hi) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), pack_bf16x16(lo, hi));
}
#endif

// log softmax(x/T)_j = (x_j - m)/T - log S, with m the raw row max (x_j - m first: exact
// for large logits). UNIT (T = 1) skips the multiply, bit-identically: the FMA of
// (x - m) * 1 - log S rounds once, like the subtraction.
template <bool UNIT>
KD_ROW_INLINE float log_softmax_at(float x, float m, float inv_t, float log_s) {
  if constexpr (UNIT) return (x - m) - log_s;
  else return (x - m) * inv_t - log_s;
}
// Calls f(std::true_type) when inv_t == 1, f(std::false_type) otherwise.
template <class F>
KD_ROW_INLINE void with_unit(float inv_t, F&& f) {
  if (inv_t == 1.0f) f(std::true_type{});
  else f(std::false_type{});
}

// Fixed pairwise tree over the lanes.
KD_ROW_INLINE float lane_tree_sum(float* b) {
#pragma GCC unroll 8
  for (int w = kSumLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) b[l] += b[l + w];
  return b[0];
}

// sum_j x_j over n values (any n >= 0).
KD_ROW_INLINE float sum_block(const float* x, int64_t n) {
  vnat acc[kVecs] = {};
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes)
    for (int k = 0; k < kVecs; ++k) acc[k] += vload(x + j + k * kVecWidth);
  float b[kSumLanes];
  std::memcpy(b, acc, sizeof b);
  for (int64_t l = 0; j + l < n; ++l) b[l] += x[j + l];
  return lane_tree_sum(b);
}

// max_j x_j over n values; -inf for n = 0 or all -inf. A NaN is skipped here (it still
// makes the row NaN through exp(NaN) in the sum). X: float, or uint16_t for bf16.
template <class X>
KD_ROW_INLINE float max_block(const X* x, int64_t n) {
  vnat mx[kVecs];
  for (int k = 0; k < kVecs; ++k) mx[k] = vnat{} - kInf;
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes)
    for (int k = 0; k < kVecs; ++k) {
      vnat v = vload(x + j + k * kVecWidth);
      mx[k] = v > mx[k] ? v : mx[k];
    }
  for (int64_t l = 0; j + l < n; ++l) {  // the tail: lane l of group 0 (max is exact: any order)
    const float xl = ldf(x, j + l);
    mx[l / kVecWidth][l % kVecWidth] = xl > mx[l / kVecWidth][l % kVecWidth] ? xl : mx[l / kVecWidth][l % kVecWidth];
  }
  for (int k = 1; k < kVecs; ++k) mx[0] = mx[k] > mx[0] ? mx[k] : mx[0];
  float b[kVecWidth];
  std::memcpy(b, &mx[0], sizeof b);
  float m = b[0];
  for (int l = 1; l < kVecWidth; ++l) m = b[l] > m ? b[l] : m;
  return m;
}

#if defined(KD_ISA_avx512) || defined(KD_ISA_avx2)
// The even/odd bf16 block max below (AVX-512, AVX2) ends here: the max of its w lane
// values and of the elements x[j, n) its vector loop left. Same NaN rule as max_block.
template <class X>
KD_ROW_INLINE float max_lanes_and_tail(const float* b, int w, const X* x, int64_t j, int64_t n) {
  float m = b[0];
  for (int l = 1; l < w; ++l) m = b[l] > m ? b[l] : m;
  for (; j < n; ++j) {
    const float xl = ldf(x, j);
    m = xl > m ? xl : m;
  }
  return m;
}

#endif

#if defined(KD_ISA_avx512)
// The bf16 block max at AVX-512: 32 values per 64-byte load, split into the even
// elements (x << 16) and the odd ones (x & 0xffff0000), each already an f32 in its 32-bit
// lane: two integer ops per 32 values instead of two widenings (vpmovzxwd + vpslld) per
// 16. A max is exact in any order, so the lane split changes nothing but the sign of a
// zero maximum, which no later step can see (block_shift(+-0) gives the same shifted
// values, exp(+-0) = 1). Same NaN rule as above: a NaN never replaces the running max.
KD_ROW_INLINE float max_block(const uint16_t* x, int64_t n) {
  __m512 m0 = _mm512_set1_ps(-kInf), m1 = m0;
  const __m512i hi = _mm512_set1_epi32(int32_t(0xffff0000u));
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512i w = _mm512_loadu_si512(x + j);
    // max_ps(v, m): v > m ? v : m (a NaN v keeps m)
    m0 = _mm512_maskz_max_ps(0xffff, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, w, 16)), m0);
    m1 = _mm512_maskz_max_ps(0xffff, _mm512_castsi512_ps(_mm512_and_si512(w, hi)), m1);
  }
  m0 = _mm512_maskz_max_ps(0xffff, m1, m0);
  float b[16];
  std::memcpy(b, &m0, sizeof b);
  return max_lanes_and_tail(b, 16, x, j, n);
}
#endif

#if defined(KD_ISA_avx2)
// The same even/odd scheme at AVX2: 16 bf16 per 32-byte load, two integer ops and two
// maxima per 16 values instead of two widenings (a shuffle each) and two maxima.
KD_ROW_INLINE float max_block(const uint16_t* x, int64_t n) {
  __m256 m0 = _mm256_set1_ps(-kInf), m1 = m0;
  const __m256i hi = _mm256_set1_epi32(int32_t(0xffff0000u));
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
    // max_ps(v, m): v > m ? v : m (a NaN v keeps m)
    m0 = _mm256_max_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)), m0);
    m1 = _mm256_max_ps(_mm256_castsi256_ps(_mm256_and_si256(w, hi)), m1);
  }
  m0 = _mm256_max_ps(m1, m0);
  float b[8];
  std::memcpy(b, &m0, sizeof b);
  return max_lanes_and_tail(b, 8, x, j, n);
}
#endif

// sum_j (x_j - shift): the row mean relative to the max (label smoothing's mean(z)).
template <class X>
KD_ROW_INLINE float centered_sum(const X* x, int64_t n, float shift) {
  vnat acc[kVecs] = {};
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes)
    for (int k = 0; k < kVecs; ++k) acc[k] += vload(x + j + k * kVecWidth) - shift;
  float b[kSumLanes];
  std::memcpy(b, acc, sizeof b);
  for (int64_t l = 0; j + l < n; ++l) b[l] += ldf(x, j + l) - shift;
  return lane_tree_sum(b);
}

// ---------------------------------------------------------------------------------
// Loading and storing rows of any float dtype
// ---------------------------------------------------------------------------------

// Elements [off, off + n) of a row as f32: f32 rows are used in place, f16/bf16 rows are
// converted into `buf` (n <= kBlock; one L1-resident block). Conversion is exact.
KD_ROW_INLINE const float* load_block(const void* rowp, int32_t dt, int64_t off, int64_t n,
                                      float* __restrict buf) {
  if (dt == kF32) return static_cast<const float*>(rowp) + off;
  const uint16_t* __restrict h = static_cast<const uint16_t*>(rowp) + off;
  if (dt == kBF16) {
    for (int64_t j = 0; j < n; ++j) buf[j] = bitsf(uint32_t(h[j]) << 16);
    return buf;
  }
  int64_t j = 0;
#if defined(KD_ISA_avx512)
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_ps(buf + j, _mm512_maskz_cvtph_ps(__mmask16(0xffff), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + j))));
#elif defined(KD_ISA_avx2)
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(buf + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + j))));
#endif
  for (; j < n; ++j) buf[j] = f16_to_f32(h[j]);
  return buf;
}

// Calls f(x) with elements [off, off + n) of a row: x is `const uint16_t*` (read in
// place) for bf16, `const float*` otherwise (f16 staged in buf by load_block).
template <class F>
KD_ROW_INLINE void with_block(const void* rowp, int32_t dt, int64_t off, int64_t n, float* buf, F&& f) {
  if (dt == kBF16) f(static_cast<const uint16_t*>(rowp) + off);
  else f(load_block(rowp, dt, off, n, buf));
}

// The same for a block of two rows (the student's and the teacher's) at once.
struct Scratch;
template <class F>
KD_ROW_INLINE void with_blocks(const void* zrow, int32_t zdt, const void* trow, int32_t tdt, int64_t off, int64_t n,
                               Scratch& S, F&& f);

// f32 -> bf16 with the AVX512-BF16 conversion (one instruction per 32 values instead of
// ~20 integer ops), where the CPU has it: the avx512 build does not assume it, so it is
// compiled for that target alone and chosen at run time. Same rounding as bf16_rne (round
// to nearest even, NaN kept quiet), except that inputs below 2^-126 (subnormals) become
// +-0 instead of the nearest bf16 subnormal.
#if defined(KD_ISA_avx512)
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) inline void bf16_from_f32_hw(
    const float* src, int64_t n, uint16_t* dst) {
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + j + 16), _mm512_loadu_ps(src + j));
    _mm512_storeu_si512(dst + j, reinterpret_cast<__m512i>(v));
  }
  for (; j < n; j += 16) {
    const __mmask16 m = __mmask16((1u << std::min<int64_t>(16, n - j)) - 1u);
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + j));
    _mm256_mask_storeu_epi16(dst + j, m, reinterpret_cast<__m256i>(v));
  }
}
inline bool has_bf16_hw() {
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
}
#else
inline bool has_bf16_hw() { return false; }
#endif

// Stores n f32 values at elements [off, off + n) of a row of dtype dt, rounding to
// nearest even (bit-identical to dtype.h's f32_to_bf16 / f32_to_f16, except that a NaN
// may keep a different payload through the hardware f16 conversion, and that subnormal
// inputs become +-0 through the hardware bf16 one).
KD_ROW_INLINE void store_block(const float* __restrict src, int64_t n, int32_t dt, void* rowp, int64_t off) {
  if (dt == kF32) {
    std::memcpy(static_cast<float*>(rowp) + off, src, size_t(n) * 4);
    return;
  }
  uint16_t* __restrict h = static_cast<uint16_t*>(rowp) + off;
  if (dt == kBF16) {
    int64_t j = 0;
#if defined(KD_ISA_avx512)
    if (has_bf16_hw()) return bf16_from_f32_hw(src, n, h);
#elif defined(KD_ISA_avx2)
    for (; j + 16 <= n; j += 16) store_bf16x16(h + j, _mm256_loadu_ps(src + j), _mm256_loadu_ps(src + j + 8));
#endif
    for (; j < n; ++j) h[j] = bf16_rne(src[j]);
    return;
  }
  int64_t j = 0;
#if defined(KD_ISA_avx512)
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + j),
                        _mm512_maskz_cvtps_ph(__mmask16(0xffff), _mm512_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(KD_ISA_avx2)
  for (; j + 8 <= n; j += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; j < n; ++j) h[j] = f32_to_f16(src[j]);
}

// A byte range to prefetch, a few cache lines at a time (a burst of 100+ prefetches
// fills the miss buffers and stalls the core; spread over the exp loop it does not).
struct Prefetch {
  const char* p = nullptr;
  int64_t bytes = 0;
  KD_ROW_INLINE void next(int64_t k) {  // the next k bytes
    for (int64_t o = 0; o < k && o < bytes; o += 64) __builtin_prefetch(p + o, 0, 2);
    p += k;
    bytes -= k;
  }
};
// Elements [off, off + n) of a row (nothing if n <= 0).
KD_ROW_INLINE Prefetch prefetch_range(const void* rowp, int32_t dt, int64_t off, int64_t n) {
  Prefetch r;
  if (n > 0) {
    r.p = static_cast<const char*>(rowp) + off * dtype_size(dt);
    r.bytes = n * dtype_size(dt);
  }
  return r;
}

// Pass A of block b prefetches block b + kCpuPrefetchBlocks of the same row: that range.
KD_ROW_INLINE Prefetch prefetch_ahead(const void* rowp, int32_t dt, int64_t off, int64_t v) {
  const int64_t at = off + tuning::kCpuPrefetchBlocks * kBlock;
  return prefetch_range(rowp, dt, at, std::min(kBlock, v - at));
}

// The first kCpuPrefetchBlocks blocks of the thread's next row (row < 0: none), prefetched
// a slice per block while the later passes of the current row run from cache.
struct NextRowPrefetch {
  Prefetch z, t;
  int64_t slice = 0;
  NextRowPrefetch(const void* s, int32_t s_dt, int64_t lds, const void* t_, int32_t t_dt, int64_t ldt, int64_t row,
                  int64_t v, int64_t blocks) {
    if (row < 0) return;
    const int64_t n = std::min(v, tuning::kCpuPrefetchBlocks * kBlock);
    z = prefetch_range(static_cast<const char*>(s) + row * lds * dtype_size(s_dt), s_dt, 0, n);
    if (t_) t = prefetch_range(static_cast<const char*>(t_) + row * ldt * dtype_size(t_dt), t_dt, 0, n);
    slice = ((std::max(z.bytes, t.bytes) + blocks - 1) / blocks + 63) & ~int64_t(63);
  }
  KD_ROW_INLINE void step() {
    if (slice == 0) return;
    z.next(slice);
    t.next(slice);
  }
};

// Rows per parallel_for chunk: runs long enough that a thread's next row is known (and
// prefetched), short enough to balance (tuning::kCpuRowRunsPerThread).
inline int64_t row_grain(int64_t n) {
  return std::max<int64_t>(tuning::kCpuRowGrain, n / (int64_t(num_threads()) * tuning::kCpuRowRunsPerThread));
}

// A row's gradient written out block by block with non-temporal (streaming) stores where
// the ISA has them (divergence.cc, gradients >= kCpuStreamBytes): the gradient is not read
// again here, so writing around the caches saves the read-for-ownership of every line (a
// quarter of a fused kernel's DRAM traffic). Streaming stores take whole aligned lines; a
// partial line goes out with plain stores, and a plain store to a line that is not cached
// first reads it from memory. Copying each block on its own did that at both ends of every
// block whenever the destination is not line-aligned (a Float32Array from V8 is 16-byte
// aligned): one stall per 4 KiB block, ~10% of forward KL at 512 x 32000 f32 (5.65 vs
// 5.04 ms, the same gradient array at 16 vs 64 bytes off a line). This writer holds a
// block's trailing partial line until the next block (contiguous in the row) completes it,
// so only the row's first and last partial lines are plain stores. finish() at the row's
// end, then stream_fence() before the data is handed to another thread.
class LineStream {
 public:
  KD_ROW_INLINE void put(const void* src, int64_t bytes, void* dst) {
#if defined(KD_ISA_avx512) || defined(KD_ISA_avx2)
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
    if (line_ && d != line_ + fill_) finish();  // not contiguous (never, from divergence.cc)
    if (line_) {
      const int64_t k = std::min<int64_t>(bytes, kW - fill_);
      std::memcpy(buf_ + fill_, s, size_t(k));
      fill_ += k, s += k, d += k, bytes -= k;
      if (fill_ < kW) return;
      stream_line(buf_, line_);
      line_ = nullptr, fill_ = 0;
    }
    int64_t head = int64_t((kW - (reinterpret_cast<uintptr_t>(d) & (kW - 1))) & (kW - 1));
    if (head > bytes) head = bytes;
    std::memcpy(d, s, size_t(head));  // the row's first partial line: plain stores
    int64_t j = head;
    for (; j + kW <= bytes; j += kW) stream_line(s + j, d + j);
    if (j < bytes) {
      line_ = d + j, fill_ = bytes - j;
      std::memcpy(buf_, s + j, size_t(fill_));
    }
#else
    std::memcpy(dst, src, size_t(bytes));
#endif
  }
  // The held partial line (the row's last), as plain stores.
  KD_ROW_INLINE void finish() {
    if (line_) std::memcpy(line_, buf_, size_t(fill_));
    line_ = nullptr, fill_ = 0;
  }

 private:
#if defined(KD_ISA_avx512)
  static constexpr int64_t kW = 64;
  static KD_ROW_INLINE void stream_line(const char* s, char* d) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
  }
#elif defined(KD_ISA_avx2)
  static constexpr int64_t kW = 32;
  static KD_ROW_INLINE void stream_line(const char* s, char* d) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  }
#else
  static constexpr int64_t kW = 64;
#endif
  alignas(64) char buf_[64];
  char* line_ = nullptr;  // destination of the held partial line (kW-aligned); nullptr: none
  int64_t fill_ = 0;      // its bytes held
};
KD_ROW_INLINE void stream_fence() {
#if defined(KD_ISA_avx512) || defined(KD_ISA_avx2)
  _mm_sfence();
#endif
}

// Zeroes elements [0, v) of a row (+0.0 is all-zero bits in every float dtype).
KD_ROW_INLINE void zero_row(void* rowp, int32_t dt, int64_t v) {
  std::memset(rowp, 0, size_t(v) * size_t(dtype_size(dt)));
}

KD_ROW_INLINE const void* row_ptr(const void* base, int32_t dt, int64_t ld, int64_t i) {
  return static_cast<const char*>(base) + i * ld * dtype_size(dt);
}
KD_ROW_INLINE void* row_ptr(void* base, int32_t dt, int64_t ld, int64_t i) {
  return static_cast<char*>(base) + i * ld * dtype_size(dt);
}

// ---------------------------------------------------------------------------------
// Per-thread scratch
// ---------------------------------------------------------------------------------

// Per-element rows (exp values of the first pass, cached so that a later pass does not
// recompute them: ~2 exp per element instead of 4), per-block statistics, and L1-sized
// staging buffers. Grown on demand, never shrunk; one per thread and ISA level.
struct Scratch {
  static constexpr int kRows = 3;    // e_q (student), e_p (teacher), e_0 (untempered student)
  static constexpr int kStats = 12;  // per-block arrays (max, sums, scales, ...)
  std::vector<float> row[kRows];
  std::vector<float> blk[kStats];
  alignas(64) float zbuf[kBlock];
  alignas(64) float tbuf[kBlock];
  alignas(64) float gbuf[kBlock];
  alignas(64) uint16_t hbuf[kBlock];  // a 16-bit gradient block on its way out (streamed)
  alignas(64) float tmp[4][kBlock];  // per-element terms, summed by sum_block
};

template <class F>
KD_ROW_INLINE void with_blocks(const void* zrow, int32_t zdt, const void* trow, int32_t tdt, int64_t off, int64_t n,
                               Scratch& S, F&& f) {
  with_block(zrow, zdt, off, n, S.zbuf, [&](const auto* z) {
    with_block(trow, tdt, off, n, S.tbuf, [&](const auto* t) { f(z, t); });
  });
}

// The calling thread's scratch with room for `rows` rows of v elements and the per-block
// arrays, or null when that memory cannot be allocated (the kernel returns kNoMem).
inline Scratch* thread_scratch(int64_t v, int rows) {
  static thread_local std::unique_ptr<Scratch> s;  // freed when the thread exits
  try {
    if (!s) s.reset(new Scratch());
    const int64_t nb = (v + kBlock - 1) / kBlock;
    for (int r = 0; r < rows; ++r)
      if (int64_t(s->row[r].size()) < v) s->row[r].resize(size_t(v));
    for (auto& b : s->blk)
      if (int64_t(b.size()) < nb) b.resize(size_t(nb));
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
  return s.get();
}

// ---------------------------------------------------------------------------------
// Pass one: softmax statistics of a row, block by block
// ---------------------------------------------------------------------------------
//
// For x = one row (student logits, or teacher logits) and 1/T, per block b of kRowBlock
// elements (staged in L1 while the row streams in from memory):
//   bmax_b = max_j x_j (raw; -inf for an all -inf block), shift_b = bmax_b or 0 if -inf
//   e_j    = exp((x_j - shift_b) / T)   (cached in the scratch row), sum_b = sum_j e_j
// and then, for the row (row max m = max_b bmax_b; T > 0 so the max of x/T is m/T):
//   S   = sum_b sum_b * exp((shift_b - m) / T)   (double)
//   q_j = e_j * c_b,   c_b = exp((shift_b - m) / T) / S
//   log q_j = (x_j - m) / T - log S              (x_j - m first: exact for large logits)
// Per-block shifts fuse the max and the exp into the pass that reads the row from DRAM;
// a separate max pass would leave the exp pass with no memory traffic to overlap.

// e_j = exp((x_j - shift) * inv_t) for j < n, stored to e; returns sum_j e_j, summed
// exactly like sum_block(e, n). Works in chunks of kExpChunk with a slice of `pf`
// prefetched before each. Generic / AVX2: exp_f in a loop GCC vectorises, then
// sum_block. AVX-512: the same polynomial with intrinsics (vscalefps applies 2^n and
// handles overflow, underflow and subnormal results; vrndscaleps rounds n), and the sum
// taken in the same loop with sum_block's lanes: ~20% fewer instructions. `nonpos`
// (x - shift <= 0: the shift is the block max) takes the table-driven exp8_nonpos /
// exp16_nonpos at AVX2 / AVX-512 instead.
constexpr int64_t kExpChunk = 128;
static_assert(kExpChunk % kSumLanes == 0, "exp chunks hold whole lane groups");

template <class X>
KD_ROW_INLINE void exp_chunk(const X* __restrict x, int64_t n, float shift, float inv_t, float* __restrict e) {
  if (inv_t == 1.0f) {
    for (int64_t j = 0; j < n; ++j) e[j] = exp_f(ldf(x, j) - shift);
  } else {
    for (int64_t j = 0; j < n; ++j) e[j] = exp_f((ldf(x, j) - shift) * inv_t);
  }
}

#if defined(KD_ISA_avx512)
// (The maskz forms below with an all-ones mask: GCC 12's unmasked intrinsics trip
// -Wmaybe-uninitialized through their _mm512_undefined_* operands.)
constexpr __mmask16 kAll16 = 0xffff;
// 16 values; lanes outside `m` read as -inf, so their exp is 0.
KD_ROW_INLINE __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
// 16 bf16 widened in one vpermw: word i goes to the high half of dword i (odd word slots,
// the even ones zeroed by the mask), which is the f32 value. Measured (forward KL bf16,
// 512 x 32000, 1 thread, CPU time): ~1.5% less than vpmovzxwd + vpslld.
KD_ROW_INLINE __m512 load16(const uint16_t* p) {
  const __m512i idx = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2,
                                       0, 1, 0, 0, 0);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, idx, _mm512_castsi256_si512(h)));
}
KD_ROW_INLINE __m512 load16(const float* p, __mmask16 m) { return _mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), m, p); }
KD_ROW_INLINE __m512 load16(const uint16_t* p, __mmask16 m) {
  const __m512i w = _mm512_maskz_cvtepu16_epi32(kAll16, _mm256_maskz_loadu_epi16(m, p));
  return _mm512_mask_mov_ps(_mm512_set1_ps(-kInf), m, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll16, w, 16)));
}
// exp_f's polynomial on 16 lanes. The clamps (NaN passes: max/min return the second
// operand when either is NaN) keep r finite for +-inf; -104 still rounds to exactly 0.
KD_ROW_INLINE __m512 exp16(__m512 x) {
  x = _mm512_maskz_max_ps(kAll16, _mm512_set1_ps(-104.0f), x);
  x = _mm512_maskz_min_ps(kAll16, _mm512_set1_ps(89.0f), x);
  const __m512 n = _mm512_maskz_roundscale_ps(kAll16, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(kExpPoly[0]);
#pragma GCC unroll 8
  for (int i = 1; i < kPolyTerms; ++i) y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kExpPoly[i]));
  return _mm512_maskz_scalef_ps(kAll16, y, n);
}
// exp for x <= 0 (or NaN), as the first pass's x - block max: AVX2's exp8_nonpos (below)
// at 16 lanes, with a 16-entry table (one register; vpermps reads the low 4 bits of each
// lane's index):
//   k = round(16 x / ln 2) in t's low mantissa bits (t = 16 x / ln 2 + 1.5 2^23), so
//   e^x = 2^(k >> 4) 2^((k & 15) / 16) e^r, r = x - k ln2/16, |r| <= ln2/32 + rounding;
//   2^(k >> 4) added into the table value's exponent field as an integer (a finite table
//   value scaled, so a NaN x stays NaN, whatever its payload, through the NaN
//   polynomial); e^r = 1 + r + r^2/2 + r^3/6 (relative error < 1e-8 on |r| <= ln2/32,
//   three FMAs); x < -86 and -inf give exactly 0 through the zero-masked final multiply
//   (a NaN passes the mask). Six FMA-pipe operations where exp16 has ten (its two clamps,
//   the rounding and vscalefps included).
// Measured against a double exp over every f32 in [-86, 0]: at most 5.17 ulp (at -85.98,
// where the rounding of ln2/16 dominates), 1.70 ulp on [-3, 0]; e^0 = 1, e^-86 normal.
// Zen 5 (2 cores, AVX-512): an L1 block 0.132 -> 0.098 ns per element; A/B in one process,
// 512 x 32000, new/old paired medians of 20 rounds: forward KL f32 0.946 (2 threads),
// 0.943 (1), bf16 0.902 / 0.887, jsd f32 0.948 / 0.958. Like exp8_nonpos, not exp_f bit
// for bit: within the tolerances of every reference test.
KD_ROW_INLINE __m512 exp16_nonpos(__m512 x) {
  const __m512 magic = _mm512_set1_ps(12582912.0f);  // 1.5 * 2^23
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(23.083120654223414f), magic);  // 16 / ln 2
  const __m512 k = _mm512_sub_ps(t, magic);
  const __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.04332169878499658f), x);  // ln2 / 16
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.16666666666666666f), r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512 tab = _mm512_setr_ps(1.0f, 1.0442737824274138f, 1.0905077326652577f, 1.1387886347566916f,
                                    1.189207115002721f, 1.2418578120734840f, 1.2968395546510096f, 1.3542555469368927f,
                                    1.4142135623730951f, 1.4768261459394993f, 1.5422108254079407f, 1.6104903319492543f,
                                    1.6817928305074290f, 1.7562521603732995f, 1.8340080864093424f, 1.9152065613971474f);
  const __m512i tb = _mm512_castps_si512(t);
  const __m512i sc = _mm512_maskz_slli_epi32(kAll16, _mm512_maskz_srli_epi32(kAll16, tb, 4), 23);
  const __m512 s = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(_mm512_permutexvar_ps(tb, tab)), sc));
  return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-86.0f), _CMP_NLT_UQ), p, s);
}
// One group of kSumLanes elements at j: e_j stored, added to the lane accumulators.
template <bool UNIT, bool TAIL, bool NONPOS = false, class X>
KD_ROW_INLINE void exp_sum_group(const X* x, int64_t j, int64_t n, __m512 shift, __m512 inv_t, float* e, __m512* acc) {
  static_assert(kVecWidth == 16, "");
  for (int k = 0; k < kVecs; ++k) {
    const int64_t at = j + k * 16;
    __mmask16 m = kAll16;
    if (TAIL) m = at + 16 <= n ? kAll16 : at >= n ? __mmask16(0) : __mmask16((1u << (n - at)) - 1u);
    __m512 v = _mm512_sub_ps(TAIL ? load16(x + at, m) : load16(x + at), shift);
    if (!UNIT) v = _mm512_mul_ps(v, inv_t);
    const __m512 ev = NONPOS ? exp16_nonpos(v) : exp16(v);  // (NONPOS: x - block max, see exp_store)
    if (TAIL) _mm512_mask_storeu_ps(e + at, m, ev);
    else _mm512_storeu_ps(e + at, ev);
    acc[k] = _mm512_add_ps(acc[k], ev);
  }
}
template <bool UNIT, bool NONPOS, class X>
KD_ROW_INLINE void exp_sum_range(const X* x, int64_t c, int64_t end, int64_t n, __m512 sh, __m512 it, float* e,
                                 __m512* acc) {
  int64_t j = c;
  for (; j + kSumLanes <= end; j += kSumLanes) exp_sum_group<UNIT, false, NONPOS>(x, j, n, sh, it, e, acc);
  if (j < end) exp_sum_group<UNIT, true, NONPOS>(x, j, n, sh, it, e, acc);
}
#endif

#if defined(KD_ISA_avx2)
// AVX2 (8 lanes, 16 ymm registers; no masks, no vscalefps). GCC's vectorisation of
// exp_chunk + sum_block ran one exp per loop iteration (one long dependent chain, the
// constants spilled) and the sum in a second sweep; here a group of kSumLanes elements
// is 8 independent exps in flight, summed into sum_block's lanes as they are made.
// Measured (forward KL f32 512 x 32000, 2 threads, Zen 3): see divergence.cc.
template <class X>
KD_ROW_INLINE __m256 load8(const X* p) { return reinterpret_cast<__m256>(vload(p)); }  // f32, or bf16 widened
KD_ROW_INLINE __m256 bcast(float x) { return _mm256_set1_ps(x); }
KD_ROW_INLINE __m256 exp8_reduced(__m256 x, __m256 t, float k) {
  // The range-reduced polynomial of exp_f, every coefficient times k (k = 1 or 2, exact).
  const __m256 n = _mm256_sub_ps(t, bcast(12583038.0f));
  __m256 r = _mm256_fnmadd_ps(n, bcast(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, bcast(-2.12194440e-4f), r);
  __m256 y = bcast(k * kExpPoly[0]);
#pragma GCC unroll 8
  for (int i = 1; i < kPolyTerms; ++i) y = _mm256_fmadd_ps(y, r, bcast(k * kExpPoly[i]));
  return y;
}
KD_ROW_INLINE __m256 exp8_scale(__m256 y, __m256 t) {  // y * 2^(n - 1): n + 126 in t's low bits (NaN stays NaN)
  return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}
// exp_f on 8 lanes, the same operations (GCC contracts exp_f's a * b + c into FMAs), so
// bit for bit the same values.
KD_ROW_INLINE __m256 exp8(__m256 x) {
  const __m256 t = _mm256_fmadd_ps(x, bcast(1.44269504088896341f), bcast(12583038.0f));
  __m256 y = _mm256_mul_ps(exp8_scale(exp8_reduced(x, t, 1.0f), t), bcast(2.0f));
  y = _mm256_and_ps(y, _mm256_cmp_ps(x, bcast(-86.0f), _CMP_NLT_UQ));  // x < -86: 0 (a NaN passes)
  return _mm256_blendv_ps(y, bcast(kInf), _mm256_cmp_ps(x, bcast(88.72283935546875f), _CMP_GT_OQ));
}
// exp for x <= 0 (or NaN), as the first pass's x - block max: table-driven, six FMA/multiply
// operations where exp8 has eleven (the exp pass is bound by its FP operations here, not
// their latency, and on Zen 3 by its two FMA pipes most of all):
//   k = round(8 x / ln 2) in t's low mantissa bits (t = 8 x / ln 2 + 1.5 2^23), so
//   e^x = 2^(k >> 3) 2^((k & 7) / 8) e^r, r = x - k ln2/8, |r| <= ln2/16 + rounding;
//   - 2^(j/8): an 8-entry table in one register, indexed by vpermps (which reads only
//     the low 3 bits of each lane's index, here t's bits: k & 7);
//   - 2^(k >> 3) added into the table value's exponent field as an integer: t's bits
//     >> 3 << 23 put k >> 3 (two's complement) at the exponent and drop k & 7. The
//     sum is a finite table value scaled, never the polynomial's bits, so a NaN x (NaN
//     r, NaN polynomial) stays NaN whatever its payload; x >= -86 keeps it normal;
//   - e^r: 1 + r + c2 r^2 + c3 r^3, fitted for relative error on |r| <= ln2/16 (2.5e-8
//     there, 0.4 ulp; three FMAs), and r in one FMA with ln2/8 rounded to f32, which
//     adds k (ln2/8 - fl(ln2/8)) ~ 1.9e-9 (k/8) to r: a relative error of at most
//     2.8e-9 |x| (as exp_f's own rounding of x - block max is ~6e-8 |x|).
// Measured against a double exp over every f32 in [-86, 0]: at most 5.57 ulp (at -85.3,
// where the ln2/8 rounding dominates), 2.01 ulp on [-3, 0]; the degree-6 polynomial of
// exp_f with the same single-FMA reduction it replaces: ~4.5 and 0.8 ulp. On an L1 block
// (Zen 3): 0.298 -> 0.248 ns per element; forward KL fwd+bwd 512 x 32000 A/B in one
// process (with fkl_grad_stream): f32 0.95x, bf16 0.93x, jsd 0.95-0.97x the time. Not
// exp_f bit for bit (nor is exp16_nonpos; the generic build is): within the tolerances of every
// reference test. e^0 = 1 and e^-inf = 0 exactly; x < -86 gives 0.
KD_ROW_INLINE __m256 exp8_nonpos(__m256 x) {
  const __m256 magic = bcast(12582912.0f);  // 1.5 * 2^23
  const __m256 t = _mm256_fmadd_ps(x, bcast(11.541560327111707f), magic);  // 8 / ln 2
  const __m256 k = _mm256_sub_ps(t, magic);
  const __m256 r = _mm256_fnmadd_ps(k, bcast(0.0866433975699932f), x);  // ln2 / 8
  __m256 p = _mm256_fmadd_ps(bcast(0.166642963886261f), r, bcast(0.5000647902488708f));
  p = _mm256_fmadd_ps(p, r, bcast(1.0f));
  p = _mm256_fmadd_ps(p, r, bcast(1.0f));
  const __m256 tab = _mm256_setr_ps(1.0f, 1.0905077326652577f, 1.189207115002721f, 1.2968395546510096f,
                                    1.4142135623730951f, 1.5422108254079407f, 1.6817928305074290f, 1.8340080864093424f);
  const __m256i tb = _mm256_castps_si256(t);
  const __m256i sc = _mm256_slli_epi32(_mm256_srli_epi32(tb, 3), 23);  // (two shifts: no mask register)
  const __m256 s = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(_mm256_permutevar8x32_ps(tab, tb)), sc));
  return _mm256_and_ps(_mm256_mul_ps(p, s), _mm256_cmp_ps(x, bcast(-86.0f), _CMP_NLT_UQ));
}
// Fixed-lane group sums in registers (kVecs = 8 vectors = kSumLanes lanes) -> sum_block's
// tree, with a tail of scalar values added lane by lane like sum_block's.
KD_ROW_INLINE float lanes_total(const __m256* acc, const float* tail, int64_t ntail) {
  float b[kSumLanes];
  std::memcpy(b, acc, sizeof b);
  for (int64_t l = 0; l < ntail; ++l) b[l] += tail[l];
  return lane_tree_sum(b);
}
// exp_store's fused block max (max_out) keeps two max accumulators, alternate vectors
// of a group: GCC spills them, and one spilled accumulator made a store-to-load chain of
// every vector (jsd's first pass 1.04x the unfused time); four or eight cost more spills.
// Measured (Zen 3, f32 512 x 32000, 2 threads, fused / unfused, paired medians): one:
// forward KL 0.935, jsd 1.04; two: 0.93-0.95, 0.96-0.97; four: 0.963, 0.982; eight:
// 0.95-0.975, 0.98-0.986.
constexpr int kMaxAcc = 2;
template <bool UNIT, bool NONPOS, bool MAX = false, class X>
KD_ROW_INLINE void exp_sum_groups8(const X* __restrict x, int64_t j, int64_t end, __m256 sh, __m256 it,
                                   float* __restrict e, __m256* acc, __m256* mx = nullptr) {
  for (; j + kSumLanes <= end; j += kSumLanes) {
#pragma GCC unroll 8
    for (int k = 0; k < kVecs; ++k) {
      const __m256 xv = load8(x + j + k * 8);
      if constexpr (MAX) mx[k % kMaxAcc] = _mm256_max_ps(xv, mx[k % kMaxAcc]);  // xv > m ? xv : m: a NaN keeps m (max_block's rule)
      __m256 v = _mm256_sub_ps(xv, sh);
      if (!UNIT) v = _mm256_mul_ps(v, it);
      const __m256 ev = NONPOS ? exp8_nonpos(v) : exp8(v);
      _mm256_storeu_ps(e + j + k * 8, ev);
      acc[k] = _mm256_add_ps(acc[k], ev);
    }
  }
}
#endif

// `max_out` (only where kFusedBlockMax; other levels ignore it): the block's max
// (max_block's value) is taken in the exp sweep itself and stored there; the exps are
// exp8_nonpos's, so the caller must redo the block when (max - shift) * inv_t comes out
// above its bound (divergence.cc kFusedMaxRise).
#if defined(KD_ISA_avx2)
constexpr bool kFusedBlockMax = true;
#else
constexpr bool kFusedBlockMax = false;
#endif
template <class X>
KD_ROW_INLINE float exp_store(const X* x, int64_t n, float shift, float inv_t, float* e, Prefetch pf = {},
                                bool nonpos = false, float* max_out = nullptr) {
  const int64_t chunks = (n + kExpChunk - 1) / kExpChunk;
  const int64_t slice = chunks > 0 ? ((pf.bytes + chunks - 1) / chunks + 63) & ~int64_t(63) : 0;
#if defined(KD_ISA_avx512)
  __m512 acc[kVecs];
  for (int k = 0; k < kVecs; ++k) acc[k] = _mm512_setzero_ps();
  const __m512 sh = _mm512_set1_ps(shift), it = _mm512_set1_ps(inv_t);
  for (int64_t c = 0; c < n; c += kExpChunk) {
    pf.next(slice);
    const int64_t end = std::min(n, c + kExpChunk);
    if (nonpos) {
      if (inv_t == 1.0f) exp_sum_range<true, true>(x, c, end, n, sh, it, e, acc);
      else exp_sum_range<false, true>(x, c, end, n, sh, it, e, acc);
    } else {
      if (inv_t == 1.0f) exp_sum_range<true, false>(x, c, end, n, sh, it, e, acc);
      else exp_sum_range<false, false>(x, c, end, n, sh, it, e, acc);
    }
  }
  float b[kSumLanes];
  std::memcpy(b, acc, sizeof b);
  return lane_tree_sum(b);
#elif defined(KD_ISA_avx2)
  __m256 acc[kVecs];  // (unrolled: a loop here became a rep stos, ~2% of this pass)
#pragma GCC unroll 8
  for (int k = 0; k < kVecs; ++k) acc[k] = _mm256_setzero_ps();
  const __m256 sh = _mm256_set1_ps(shift), it = _mm256_set1_ps(inv_t);
  const bool unit = inv_t == 1.0f;
  __m256 mx[kMaxAcc];
  for (int k = 0; k < kMaxAcc; ++k) mx[k] = bcast(-kInf);
  for (int64_t c = 0; c < n; c += kExpChunk) {
    pf.next(slice);
    const int64_t end = std::min(n, c + kExpChunk);
    if (max_out) {
      if (unit) exp_sum_groups8<true, true, true>(x, c, end, sh, it, e, acc, mx);
      else exp_sum_groups8<false, true, true>(x, c, end, sh, it, e, acc, mx);
    } else if (nonpos) {
      if (unit) exp_sum_groups8<true, true>(x, c, end, sh, it, e, acc);
      else exp_sum_groups8<false, true>(x, c, end, sh, it, e, acc);
    } else {
      if (unit) exp_sum_groups8<true, false>(x, c, end, sh, it, e, acc);
      else exp_sum_groups8<false, false>(x, c, end, sh, it, e, acc);
    }
  }
  const int64_t done = n / kSumLanes * kSumLanes;  // chunks hold whole groups: the tail is at the end
  if (max_out) {
    for (int k = 1; k < kMaxAcc; ++k) mx[0] = _mm256_max_ps(mx[k], mx[0]);  // (max: exact in any order)
    float b[8];
    std::memcpy(b, &mx[0], sizeof b);
    *max_out = max_lanes_and_tail(b, 8, x, done, n);
  }
  exp_chunk(x + done, n - done, shift, inv_t, e + done);
  return lanes_total(acc, e + done, n - done);
#else
  for (int64_t c = 0; c < n; c += kExpChunk) {
    pf.next(slice);
    exp_chunk(x + c, std::min(kExpChunk, n - c), shift, inv_t, e + c);
  }
  return sum_block(e, n);
#endif
}

KD_ROW_INLINE float block_shift(float bmax) { return bmax == -kInf ? 0.0f : bmax; }

// Softmax statistics of one row (see above).
struct RowSoftmax {
  float m = 0.0f;      // raw row max (0 for teacher log-probs used as is)
  float log_s = 0.0f;  // log S: log q_j = (x_j - m) * inv_t - log_s
  double s = 1.0;      // S itself
};

// Combines the per-block maxima and sums into the row's statistics and the per-block
// scales c_b. A block of only -inf contributes nothing; a NaN anywhere makes S NaN.
// The block sums are relative to block_shift(bmax[b]), or to shift[b] where given (the
// divergence engine's fused first pass: a running max of the earlier blocks).
inline RowSoftmax combine_blocks(const float* bmax, const float* bsum, int64_t nb, float inv_t, float* c,
                                 const float* shift = nullptr) {
  RowSoftmax r;
  float m = -kInf;
  for (int64_t b = 0; b < nb; ++b) m = bmax[b] > m ? bmax[b] : m;
  r.m = m;
  auto weight = [&](int64_t b) {  // exp((shift_b - m) / T); 0 for an empty (all -inf) block
    const float sh = shift ? shift[b] : block_shift(bmax[b]);
    return bsum[b] == 0.0f ? 0.0 : std::exp((double(sh) - double(m)) * double(inv_t));
  };
  double s = 0.0;
  for (int64_t b = 0; b < nb; ++b)
    if (bsum[b] != 0.0f) s += double(bsum[b]) * weight(b);
  for (int64_t b = 0; b < nb; ++b) c[b] = float(weight(b) / s);
  r.s = s;
  r.log_s = float(std::log(s));
  return r;
}

}  // namespace kd::cpu::KD_ISA::row
