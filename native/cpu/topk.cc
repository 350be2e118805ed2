// topk on the CPU: per row (x [V], row stride ldx), the k largest entries sorted by
// value descending (ties: lower index first; NaN first), as raw logits or as log-probs
// at temperature T, and tailLogProb = log of the softmax(x/T) mass outside the top k
// (definitions and the order in common/topk.h). Rows are split over the thread pool.
//
// Per row: a sampled threshold, then one streaming pass, block by block
// (tuning::kCpuRowBlock elements, f16/bf16 converted into an L1 buffer):
//   - the prefilter t (sample_threshold): the r-th largest of a stratified sample of the
//     row (32 runs of 128 elements at pseudo-random places, 4096 in all), r chosen so
//     that ~4k + a margin of the row's elements are >= t, whatever the order of the row
//     (ascending, sorted, sawtooth: a running threshold alone let every element of an
//     ascending row in, 9-18x the time of a random row). Its runs are prefetched during
//     the previous row's sweep, so the row is still read from memory once.
//   - a candidate buffer of at most k + slack composite keys. Until it first fills, an
//     element is a candidate iff x >= t (or NaN); then thr = the value of its k-th best,
//     and an element is a candidate iff x > thr (or NaN): later indices lose ties, so
//     x <= thr means "definitely in the tail". For any order almost every element is
//     rejected by that one compare. Without a prefilter (V < 128, r >= half the sample,
//     i.e. k a large share of V, or a sample whose r-th largest is NaN or -inf) the row's first k + slack elements all enter the buffer.
//   - if fewer than k elements were >= t (the sample held r of the row's top k: ~2e-6
//     per i.i.d. row at k = 64, V = 151936), the row is redone without the prefilter,
//     its second read mostly from L2 (an f32 row of 151936 is 600 KB).
//   - in the same sweep the rejected elements' e^{(x - thr)/T} are summed (fixed lanes;
//     thr = the largest float below t until the buffer first fills): the shift thr is
//     >= every rejected element, so nothing overflows; a block whose
//     tail sum comes out below 2^-80 (elements far below thr) is re-summed relative to
//     its own tail max, so tiny tail masses (1e-30 and far below) keep full precision.
//     Block sums are combined in double with e^{(thr_b - m)/T} once m is known.
//   - when the buffer is full it is compacted to its best k (nth_element); the losers
//     go to an "evicted" list, which is summed at the end (relative to its own max) and
//     added to the tail: every tail element is thus summed exactly once, directly,
//     never as total - top.
// Then the k survivors are sorted, S_top is summed in double, and
//   tailLogProb = -log1p(S_top / S_tail),  log-prob = (x - m)/T - log(S_top + S_tail).
// One exponential per element (the tail sum) is the only arithmetic that scales with V:
// it is a base-2 exp with a degree-5 polynomial (exp2_neg, relative error < 2.5e-7), in
// one fused compare + exp + masked-add sweep written with AVX-512 / AVX2 intrinsics (a
// scalar loop on the generic level), over L1-sized blocks while the next streams in.
// On AVX-512 that sweep is 12 vector instructions per 16 elements (vreduceps gives the
// fraction and maps -inf to a 0 term, no clamp), and each block's 16 lanes are reduced in
// registers (the store + partial reloads of lane_sum stalled on store forwarding).
//
// Determinism: every sum is over a fixed order (lanes per block, blocks in order, the
// evicted list in the order of eviction, which depends only on the row; the sampled
// places depend only on V), so the results are bitwise identical for any thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <vector>

#include "common/topk.h"
#include "common/tuning.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/thread_pool.h"

#if defined(KD_ISA_avx2) || defined(KD_ISA_avx512)
#include <immintrin.h>
#endif

namespace kd::cpu::KD_ISA {
namespace {

using row::bitsf;
using row::for_lanes;
using row::kLanes;
using row::lane_max;
using row::lane_sum;
using row::fbits;
using row::kBlock;
using row::kInf;
using row::load_block;
using row::row_ptr;

// 2^y for y <= 0: y = n + f, f in [-1/2, 1/2], a degree-5 minimax polynomial for 2^f
// (relative error < 2.5e-7 evaluated in f32), 2^n added to the exponent bits. y below
// -126 gives 0 (a term under 2^-126 of the shift: the callers' sums are >= 2^-80, or
// redone relative to their own max). Cheaper than row.h's exp_f (no subnormal results,
// one exponent scaling), which matters here: this is the one transcendental per element.
// Only ever evaluated on values the caller uses when y <= 0 (others are masked out).
KD_ROW_INLINE float exp2_neg(float y) {
  const float yc = y < -126.0f ? -126.0f : y;
  const float t = yc + 12582912.0f;  // 1.5 * 2^23: rounds yc to an integer
  const float n = t - 12582912.0f;
  const float f = yc - n;
  float p = 1.3278163969516754e-3f;
  p = p * f + 9.675555862486362e-3f;
  p = p * f + 5.5507078766822815e-2f;
  p = p * f + 2.4022118747234344e-1f;
  p = p * f + 6.931469440460205e-1f;
  p = p * f + 1.0000001192092896f;
  const uint32_t e = fbits(p) + (uint32_t(int32_t(fbits(t) - 0x4B400000u)) << 23);
  return y < -126.0f ? 0.0f : bitsf(e);
}
constexpr float kLog2e = 1.44269504088896341f;

// sum_j e^{(x_j - shift) / T} over n values (x_j <= shift); c2 = log2(e) / T.
KD_ROW_INLINE float exp_sum(const float* __restrict x, int64_t n, float shift, float c2) {
  float acc[kLanes] = {};
  for_lanes(n, [&](int64_t j, int l) { acc[l] += exp2_neg((x[j] - shift) * c2); });
  return lane_sum(acc);
}

// Sum of e^{(x_j - thr)/T} over x_j <= thr (the rejected elements), in one fused sweep
// that also records, per group g of kLanes elements, a bit mask of its candidates
// (x > thr or NaN) in cm[g]; the few non-zero masks are then scanned element by element.
// Lane l accumulates the elements j = l (mod kLanes) on every ISA level (AVX-512: one
// register; AVX2: two; generic: an array), then the fixed tree of lane_sum.
static_assert(tuning::kCpuLanes == 16, "the vector sweeps below are written for 16 lanes");
#if defined(KD_ISA_avx2) || defined(KD_ISA_avx512)
// The last three levels of lane_sum's tree, on s8[l] = b[l] + b[l + 8]: the same sums in
// the same order, so every ISA level gives the same bits.
KD_ROW_INLINE float hsum8(__m256 s8) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}
#endif
KD_ROW_INLINE float tail_sweep(const float* __restrict x, int64_t n, float thr, float c2, uint16_t* __restrict cm) {
  float acc[kLanes];
  int64_t j = 0, g = 0;
#if defined(KD_ISA_avx512)
  {
    const __m512 vthr = _mm512_set1_ps(thr), vc2 = _mm512_set1_ps(c2);
    const __m512 k5 = _mm512_set1_ps(1.3278163969516754e-3f), k4 = _mm512_set1_ps(9.675555862486362e-3f),
                 k3 = _mm512_set1_ps(5.5507078766822815e-2f), k2 = _mm512_set1_ps(2.4022118747234344e-1f),
                 k1 = _mm512_set1_ps(6.931469440460205e-1f), k0 = _mm512_set1_ps(1.0000001192092896f);
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512 va = _mm512_setzero_ps();
    for (; j + kLanes <= n; j += kLanes, ++g) {
      const __m512 v = _mm512_loadu_ps(x + j);
      const __mmask16 keep = _mm512_cmp_ps_mask(v, vthr, _CMP_LE_OQ);  // rejected: x <= thr (never NaN)
      cm[g] = uint16_t(~unsigned(keep));
      // 2^y = 2^f 2^n with n = rint(y) (vrndscaleps) and f = y - n in [-1/2, 1/2]
      // (vreduceps, exact): the polynomial, then vscalefps (exact, gradual underflow, 0 far
      // below). -inf inputs: n = -inf and f = 0 (vreduceps gives 0 for infinities), so the
      // term is 1 * 2^-inf = 0 with no clamp. (Same n, f and terms as y - rint(y).)
      const __m512 y = _mm512_mul_ps(_mm512_sub_ps(v, vthr), vc2);
      const __m512 nn = _mm512_maskz_roundscale_ps(__mmask16(0xffff), y, kRound);
      const __m512 f = _mm512_maskz_reduce_ps(__mmask16(0xffff), y, kRound);
      __m512 p = _mm512_fmadd_ps(k5, f, k4);
      p = _mm512_fmadd_ps(p, f, k3);
      p = _mm512_fmadd_ps(p, f, k2);
      p = _mm512_fmadd_ps(p, f, k1);
      p = _mm512_fmadd_ps(p, f, k0);
      va = _mm512_mask_add_ps(va, keep, va, _mm512_maskz_scalef_ps(__mmask16(0xffff), p, nn));
    }
    if (j == n) {  // lane_sum's tree in registers (a spill and reload per block stalls)
      const __m256 s8 = _mm256_add_ps(_mm512_maskz_extractf32x8_ps(__mmask8(0xff), va, 0), _mm512_maskz_extractf32x8_ps(__mmask8(0xff), va, 1));
      return hsum8(s8);
    }
    _mm512_storeu_ps(acc, va);
  }
#elif defined(KD_ISA_avx2)
  {
    const __m256 vthr = _mm256_set1_ps(thr), vc2 = _mm256_set1_ps(c2), lo = _mm256_set1_ps(-126.0f);
    const __m256 magic = _mm256_set1_ps(12582912.0f), zero = _mm256_setzero_ps();
    const __m256 k5 = _mm256_set1_ps(1.3278163969516754e-3f), k4 = _mm256_set1_ps(9.675555862486362e-3f),
                 k3 = _mm256_set1_ps(5.5507078766822815e-2f), k2 = _mm256_set1_ps(2.4022118747234344e-1f),
                 k1 = _mm256_set1_ps(6.931469440460205e-1f), k0 = _mm256_set1_ps(1.0000001192092896f);
    __m256 va[2] = {zero, zero};
    for (; j + kLanes <= n; j += kLanes, ++g) {
      unsigned bits = 0;
      for (int h = 0; h < 2; ++h) {
        const __m256 v = _mm256_loadu_ps(x + j + 8 * h);
        const __m256 keep = _mm256_cmp_ps(v, vthr, _CMP_LE_OQ);  // rejected: x <= thr (never NaN)
        bits |= (~unsigned(_mm256_movemask_ps(keep)) & 0xffu) << (8 * h);
        const __m256 yc = _mm256_max_ps(_mm256_mul_ps(_mm256_sub_ps(v, vthr), vc2), lo);  // as AVX-512
        const __m256 t = _mm256_add_ps(yc, magic);
        const __m256 f = _mm256_sub_ps(yc, _mm256_sub_ps(t, magic));
        __m256 p = _mm256_fmadd_ps(k5, f, k4);
        p = _mm256_fmadd_ps(p, f, k3);
        p = _mm256_fmadd_ps(p, f, k2);
        p = _mm256_fmadd_ps(p, f, k1);
        p = _mm256_fmadd_ps(p, f, k0);
        const __m256i e = _mm256_add_epi32(_mm256_castps_si256(p),
                                           _mm256_slli_epi32(_mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic)), 23));
        va[h] = _mm256_add_ps(va[h], _mm256_and_ps(_mm256_castsi256_ps(e), keep));
      }
      cm[g] = uint16_t(bits);
    }
    if (j == n) return hsum8(_mm256_add_ps(va[0], va[1]));  // lane_sum's tree in registers
    _mm256_storeu_ps(acc, va[0]);
    _mm256_storeu_ps(acc + 8, va[1]);
  }
#else
  for (int l = 0; l < kLanes; ++l) acc[l] = 0.0f;
  for (; j + kLanes <= n; j += kLanes, ++g) {
    unsigned bits = 0;
    for (int l = 0; l < kLanes; ++l) {
      const float v = x[j + l];
      const bool c = (v > thr) | (v != v);
      bits |= unsigned(c) << l;
      const float e = exp2_neg((v - thr) * c2);
      acc[l] += c ? 0.0f : e;
    }
    cm[g] = uint16_t(bits);
  }
#endif
  if (j < n) {  // the last partial group, scalar
    unsigned bits = 0;
    for (int l = 0; j + l < n; ++l) {
      const float v = x[j + l];
      const bool c = (v > thr) | (v != v);
      bits |= unsigned(c) << l;
      if (!c) acc[l] += exp2_neg((v - thr) * c2);
    }
    cm[g] = uint16_t(bits);
  }
  return lane_sum(acc);
}

// Candidate masks only (thr = -inf: every rejected element is -inf and adds 0).
KD_ROW_INLINE void candidate_masks(const float* __restrict x, int64_t n, float thr, uint16_t* __restrict cm) {
  for (int64_t j = 0, g = 0; j < n; j += kLanes, ++g) {
    unsigned bits = 0;
    for (int l = 0; l < kLanes && j + l < n; ++l) {
      const float v = x[j + l];
      bits |= unsigned((v > thr) | (v != v)) << l;
    }
    cm[g] = uint16_t(bits);
  }
}

struct TopkScratch {
  std::vector<uint32_t> sample;   // order keys of the sampled elements (sample_threshold)
  std::vector<uint64_t> cand;     // composite keys (common/topk.h)
  std::vector<float> evicted;     // values of elements that left the candidate buffer
  std::vector<float> shifts;      // per group of blocks with the same thr: the shift
  std::vector<double> sums;       //   and the tail sum relative to it
  alignas(64) float buf[kBlock];
  int64_t sample_at[tuning::kCpuTopkSampleRuns];  // first element of each sampled run
  int64_t runs = 0;                                   //   (plan_sample)
  uint16_t masks[kBlock / 16 + 4];       // candidate masks of a block's groups (+ zero padding)
};

TopkScratch* topk_scratch(int64_t cap) {
  static thread_local TopkScratch* s = nullptr;
  try {
    if (!s) s = new TopkScratch();
    if (int64_t(s->cand.capacity()) < cap) s->cand.reserve(size_t(cap));
    if (s->sample.capacity() < size_t(tuning::kCpuTopkSampleRuns * tuning::kCpuTopkSampleRun * 17 / 16)) s->sample.reserve(size_t(tuning::kCpuTopkSampleRuns * tuning::kCpuTopkSampleRun * 17 / 16));
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
  return s;
}

// The rejected elements' sum relative to their own max (the precise fallback). Returns
// the sum and sets *shift (0 sum when every rejected element is -inf).
KD_ROW_INLINE float tail_sum_own_max(const float* __restrict x, int64_t n, float thr, float c2, float* shift) {
  float mx[kLanes];
  for (int l = 0; l < kLanes; ++l) mx[l] = -kInf;
  for_lanes(n, [&](int64_t j, int l) {
    const float v = x[j];
    mx[l] = (v <= thr && v > mx[l]) ? v : mx[l];
  });
  const float m = lane_max(mx);
  *shift = m;
  if (m == -kInf) return 0.0f;
  float acc[kLanes] = {};
  for_lanes(n, [&](int64_t j, int l) {
    const float v = x[j];
    const float e = exp2_neg((v - m) * c2);
    acc[l] += v <= thr ? e : 0.0f;
  });
  return lane_sum(acc);
}

struct RowSelect {
  int64_t k;
  int64_t cap;
  float inv_t;
  TopkScratch* S;
  bool have_thr = false;
  float thr = -kInf;

  void compact() {
    auto& c = S->cand;
    std::nth_element(c.begin(), c.begin() + (k - 1), c.end(), std::greater<uint64_t>());
    for (size_t j = size_t(k); j < c.size(); ++j) S->evicted.push_back(topk_key_value(uint32_t(c[j] >> 32)));
    c.resize(size_t(k));
    thr = topk_key_value(uint32_t(c[size_t(k - 1)] >> 32));  // the k-th best (nth_element)
    have_thr = true;
  }

  KD_ROW_INLINE void push(float v, int64_t idx) {
    S->cand.push_back(topk_composite(topk_order_key(v), uint32_t(idx)));
    if (int64_t(S->cand.size()) >= cap) compact();
  }

  // Scalar pass over elements [j0, j1) of a block: the candidates (x > thr0, the block's
  // threshold, or NaN; every element when `all`) enter the buffer, or go straight to
  // the evicted list when the threshold has risen past them meanwhile.
  void scan(const float* x, int64_t j0, int64_t j1, int64_t off, float thr0, bool all) {
    for (int64_t j = j0; j < j1; ++j) {
      const float v = x[j];
      if (!(all || v > thr0 || v != v)) continue;  // summed by tail_sweep
      if (!have_thr || v > thr || v != v) push(v, off + j);
      else S->evicted.push_back(v);
    }
  }
  // The candidates of a block, from its groups' masks (cm zero-padded to a multiple of 4
  // groups, read 64 bits = 64 elements at a time).
  void scan_masks(const float* x, const uint16_t* cm, int64_t n, int64_t off, float thr0) {
    const int64_t ng = (n + kLanes - 1) / kLanes;
    for (int64_t g4 = 0; g4 < ng; g4 += 4) {
      uint64_t w;
      std::memcpy(&w, cm + g4, 8);
      while (w) {
        const int64_t j = g4 * kLanes + __builtin_ctzll(w);
        w &= w - 1;
        scan(x, j, j + 1, off, thr0, false);
      }
    }
  }
};

// Sum over vals of e^{(x - m) * inv_t} in double, relative to their own max first.
double evicted_sum(const std::vector<float>& ev, float m, float inv_t) {
  const float c2 = kLog2e * inv_t;
  const int64_t n = int64_t(ev.size());
  if (n == 0) return 0.0;
  const float* x = ev.data();
  float mx[kLanes];
  for (int l = 0; l < kLanes; ++l) mx[l] = -kInf;
  for_lanes(n, [&](int64_t j, int l) { mx[l] = x[j] > mx[l] ? x[j] : mx[l]; });
  const float me = lane_max(mx);
  if (me == -kInf) return 0.0;
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    total += double(exp_sum(x + b, len, me, c2));
  }
  return total * std::exp((double(me) - double(m)) * double(inv_t));
}

// A fixed integer hash (the murmur3 finaliser): where in its stratum a sampled group lies.
KD_ROW_INLINE uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  return h ^ (h >> 16);
}

// The prefilter threshold of a row: the r-th largest of a sample of R runs of L
// consecutive elements (tuning::kCpuTopkSampleRuns, kCpuTopkSampleRun), one run at a
// pseudo-random place in each of R equal strata of the row (stratified, so the sample's
// distribution does not depend on the order of the row; the places depend only on V).
// With the sampled fraction f = R * L / V,
//   r = ceil(kCpuTopkOversample * k * f) + kCpuTopkSampleMargin,
// so about kCpuTopkOversample * k + kCpuTopkSampleMargin / f row elements are >= it
// (~400 at k = 64, V = 151936 on i.i.d. rows); fewer than k only if the sample holds >= r
// of the row's top k (for i.i.d. rows Poisson(k f) >= r: ~2e-6 there), which topk_row
// detects and then redoes the row without it.
// Returns false (no prefilter) when the sample is too small for k (r >= half of it), or
// its r-th largest is NaN or -inf (rows of NaN / banned tokens: the plain pass does them).

// Where the sampled runs start (they depend on V only): S->sample_at[0, S->runs).
void plan_sample(int64_t v, TopkScratch* S) {
  constexpr int64_t L = tuning::kCpuTopkSampleRun;
  const int64_t slots = v / L;  // places a run can start (multiples of L)
  const int64_t runs = std::min<int64_t>(tuning::kCpuTopkSampleRuns, slots);
  for (int64_t g = 0; g < runs; ++g) {
    const int64_t lo = g * slots / runs, hi = (g + 1) * slots / runs;  // this stratum's slots
    S->sample_at[g] = (lo + int64_t(mix32(uint32_t(g) ^ 0x9e3779b9u) % uint32_t(hi - lo))) * L;
  }
  S->runs = std::max<int64_t>(runs, 0);
}

// Prefetches the sampled runs [g0, g1) of a row.
KD_ROW_INLINE void prefetch_sample(const void* xrow, int esz, const int64_t* at, int64_t g0, int64_t g1) {
  constexpr int64_t bytes = tuning::kCpuTopkSampleRun;  // per element size unit
  for (int64_t g = g0; g < g1; ++g) {
    const char* p = static_cast<const char*>(xrow) + at[g] * esz;
    for (int64_t o = 0; o < bytes * esz; o += 64) __builtin_prefetch(p + o);
    __builtin_prefetch(p + bytes * esz - 1);
  }
}

bool sample_threshold(const void* xrow, int32_t dt, int64_t v, int64_t k, TopkScratch* S, float* t) {
  constexpr int64_t L = tuning::kCpuTopkSampleRun;
  static_assert(L % kLanes == 0 && L <= kBlock, "sampled runs are whole groups of lanes within one block");
  const int64_t runs = S->runs;
  if (runs < 1) return false;
  const int64_t n = runs * L, groups = n / kLanes;
  const double f = double(n) / double(v);
  const int64_t r = int64_t(std::ceil(double(tuning::kCpuTopkOversample) * double(k) * f)) + tuning::kCpuTopkSampleMargin;
  if (r >= n / 2) return false;  // k is a large share of V: the sample can't narrow it down
  auto& keys = S->sample;
  keys.resize(size_t(n + groups));
  uint32_t* gmax = keys.data() + n;  // each group of kLanes keys' largest
  const int64_t* at = S->sample_at;
  // All the runs' cache misses are issued first, so they overlap. Mostly they hit
  // already: topk_row prefetched them during the previous row's sweep.
  prefetch_sample(xrow, dtype_size(dt), at, 0, runs);
  for (int64_t g = 0; g < runs; ++g) {
    const float* x = load_block(xrow, dt, at[g], L, S->buf);
    // Branch-free order keys (topk_order_key's branches on the sign mispredicted on every
    // other element of a random row): the same order, except that -0 ranks just below +0
    // and negative NaNs last, which only moves the threshold (any t is correct).
    uint32_t* kk = keys.data() + g * L;
    for (int64_t j = 0; j < L; ++j) {
      const uint32_t u = fbits(x[j]);
      kk[j] = u ^ (uint32_t(int32_t(u) >> 31) | 0x80000000u);
    }
    for (int64_t h = 0; h < L / kLanes; ++h) {
      uint32_t mx = 0;
      for (int l = 0; l < kLanes; ++l) mx = kk[h * kLanes + l] > mx ? kk[h * kLanes + l] : mx;
      gmax[g * (L / kLanes) + h] = mx;
    }
  }
  // The r-th largest of the groups' maxima is a lower bound of the sample's r-th largest
  // (r groups each hold an element >= it): only the few keys >= it are selected among
  // (nth_element over all n keys cost a third of the row's time).
  int64_t cnt = n;
  if (r <= groups) {
    std::nth_element(gmax, gmax + (r - 1), gmax + groups, std::greater<uint32_t>());
    const uint32_t lb = gmax[r - 1];
    cnt = 0;
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t key = keys[size_t(j)];
      keys[size_t(cnt)] = key;
      cnt += key >= lb;
    }
  }
  std::nth_element(keys.begin(), keys.begin() + (r - 1), keys.begin() + cnt, std::greater<uint32_t>());
  const uint32_t key = keys[size_t(r - 1)];
  *t = bitsf((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);  // the inverse map
  return *t == *t && *t != -kInf;  // not NaN, not -inf
}

// next_row: the row this thread does next (nullptr if none): its sampled runs are
// prefetched during the second half of this row's sweep.
void topk_row(const TopkArgs& a, int64_t i, TopkScratch* S, const void* next_row) {
  const int64_t v = a.v, k = a.k;
  const float inv_t = 1.0f / a.temperature;
  const float c2 = kLog2e * inv_t;
  const void* xrow = row_ptr(a.x, a.x_dtype, a.ldx, i);
  // The prefilter: every element >= t is a candidate until the buffer first fills, every
  // element < t goes to the tail sums (swept with the shift t_below, the largest float
  // below t, so x <= t_below is the same test as x < t). Without one (small V / large k,
  // a sample of NaN or -inf, or the rare row where fewer than k elements are >= t) the
  // first k + slack elements all enter the buffer instead.
  float t = 0.0f;
  bool prefilter = sample_threshold(xrow, a.x_dtype, v, k, S, &t);
  const int esz = dtype_size(a.x_dtype);
  const float t_below = std::nextafter(t, -kInf);
  RowSelect R{k, k + std::max<int64_t>(k, tuning::kCpuTopkSlack), inv_t, S};
  for (;;) {
    S->cand.clear();
    S->evicted.clear();
    S->shifts.clear();
    S->sums.clear();
    R.have_thr = false;
    R.thr = -kInf;
    for (int64_t off = 0; off < v; off += kBlock) {
      const int64_t n = std::min(kBlock, v - off);
      if (next_row && off + n > v / 2) {  // this block's share of the next row's sample
        const int64_t h0 = v / 2, span = v - h0;  // spread over the second half of the row
        const int64_t g0 = S->runs * std::max<int64_t>(0, off - h0) / span;
        prefetch_sample(next_row, esz, S->sample_at, g0, S->runs * (off + n - h0) / span);
      }
      const float* x = load_block(xrow, a.x_dtype, off, n, S->buf);
      int64_t j0 = 0;
      if (!R.have_thr && !prefilter) {
        // Until the buffer first fills (k + slack elements), every element is a candidate;
        // the compaction then sets thr and the rest of the block is swept.
        j0 = std::min(n, R.cap - int64_t(S->cand.size()));
        R.scan(x, 0, j0, off, 0.0f, true);
        if (!R.have_thr) continue;
      }
      const int64_t m = n - j0;
      if (m == 0) continue;
      const float* xs = x + j0;
      const float thr0 = R.have_thr ? R.thr : t_below;
      uint16_t* cm = S->masks;
      if (thr0 == -kInf) {
        candidate_masks(xs, m, thr0, cm);
      } else {
        float shift = thr0;
        float sum = tail_sweep(xs, m, thr0, c2, cm);
        // Below 2^-80 the sum may have lost terms to f32 underflow: redo it relative to
        // the block's own tail max (its largest term is then 1).
        if (!(sum >= 0x1p-80f)) sum = tail_sum_own_max(xs, m, thr0, c2, &shift);
        if (sum != 0.0f) {
          if (!S->shifts.empty() && S->shifts.back() == shift) {
            S->sums.back() += double(sum);
          } else {
            S->shifts.push_back(shift);
            S->sums.push_back(double(sum));
          }
        }
      }
      const int64_t ng = (m + kLanes - 1) / kLanes;
      for (int64_t g = ng; g < ((ng + 3) & ~int64_t(3)); ++g) cm[g] = 0;
      R.scan_masks(xs, cm, m, off + j0, thr0);
    }
    if (int64_t(S->cand.size()) >= k) break;
    // Fewer than k elements >= t (the sample held too many of the top k): redo the row
    // without the prefilter. Its second read comes from L2 (f32 V = 151936 is 600 KB).
    prefilter = false;
  }
  if (int64_t(S->cand.size()) > k) R.compact();  // now exactly the top k
  auto& c = S->cand;
  std::sort(c.begin(), c.end(), std::greater<uint64_t>());
  const float m = topk_key_value(uint32_t(c[0] >> 32));  // the row max (NaN if any NaN)
  const bool finite = std::isfinite(m);

  double s_top = 0.0, s_tail = 0.0;
  if (finite) {
    for (int64_t j = 0; j < k; ++j) {
      const float xv = topk_key_value(uint32_t(c[size_t(j)] >> 32));
      s_top += std::exp((double(xv) - double(m)) * double(inv_t));
    }
    for (size_t g = 0; g < S->shifts.size(); ++g)
      s_tail += S->sums[g] * std::exp((double(S->shifts[g]) - double(m)) * double(inv_t));
    s_tail += evicted_sum(S->evicted, m, inv_t);
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  double tail;
  if (k == v) tail = -std::numeric_limits<double>::infinity();
  else if (!finite) tail = nan;
  else if (s_tail == 0.0) tail = -std::numeric_limits<double>::infinity();
  else tail = -std::log1p(s_top / s_tail);
  if (a.tail_logprob) a.tail_logprob[i] = float(tail);

  const double log_s = finite ? std::log(s_top + s_tail) : nan;
  int32_t* ind = a.indices ? a.indices + i * k : nullptr;
  const int vsz = dtype_size(a.values_dtype);
  char* vals = a.values ? static_cast<char*>(a.values) + i * k * vsz : nullptr;
  const bool raw_copy = !a.output_logprobs && a.values_dtype == a.x_dtype;
  for (int64_t j = 0; j < k; ++j) {
    const uint32_t idx = topk_composite_index(c[size_t(j)]);
    if (ind) ind[j] = int32_t(idx);
    if (!vals) continue;
    if (raw_copy) {
      std::memcpy(vals + j * vsz, static_cast<const char*>(xrow) + int64_t(idx) * vsz, size_t(vsz));
      continue;
    }
    const float xv = load_as_f32(xrow, a.x_dtype, idx);
    float out = xv;
    if (a.output_logprobs) out = float((double(xv) - double(m)) * double(inv_t) - log_s);
    store_from_f32(vals, a.values_dtype, j, out);
  }
}

}  // namespace

Status topk(const TopkArgs& a) {
  if (a.n < 0 || (a.n > 0 && a.v < 1)) return make_status(kShape, "topk: need n >= 0 and v >= 1");
  if (a.n == 0) return ok_status();
  if (a.k < 1 || a.k > a.v) return make_status(kInvalid, "topk: k must be in [1, V]");
  if (!(a.temperature > 0.0f && a.temperature < kInf)) return make_status(kInvalid, "topk: temperature must be finite and > 0");
  if (!dtype_is_float(a.x_dtype) || (a.values && !dtype_is_float(a.values_dtype)))
    return make_status(kDtype, "topk: logits and values must be f32, f16 or bf16");
  if (!a.x || a.ldx < a.v) return make_status(kShape, "topk: missing logits or row stride < V");
  if (a.v > int64_t(0x7fffffff)) return make_status(kShape, "topk: V must fit in int32");

  std::atomic<bool> nomem{false};
  const int64_t cap = a.k + std::max<int64_t>(a.k, tuning::kCpuTopkSlack);
  auto run_rows = [&](int64_t b, int64_t e) {
    TopkScratch* S = topk_scratch(cap);
    if (!S) {
      nomem.store(true);
      return;
    }
    try {
      plan_sample(a.v, S);
      for (int64_t i = b; i < e; ++i) topk_row(a, i, S, i + 1 < e ? row_ptr(a.x, a.x_dtype, a.ldx, i + 1) : nullptr);
    } catch (const std::bad_alloc&) {
      nomem.store(true);
    }
  };
  if (a.n * a.v < tuning::kCpuSerialElems) run_rows(0, a.n);
  else parallel_for(a.n, row::row_grain(a.n), run_rows);
  if (nomem.load()) return make_status(kNoMem, "topk: out of memory for scratch");
  return ok_status();
}

}  // namespace kd::cpu::KD_ISA
