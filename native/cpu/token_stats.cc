// token_stats: per-token statistics for on-policy distillation, on the CPU, one forward
// read of both rows (no gradient, no selection, no T^2 scaling).
//
// Per row, q = softmax(z/T), p = softmax(t/T) (teacher log-probs at T = 1: log p = t as
// given, not renormalised; the same rule as the divergence engine):
//   forward_kl      = KL(p||q) = sum p (log p - log q)
//   reverse_kl      = KL(q||p) = sum q (log q - log p)
//   student_entropy = H(q)     = -sum q log q
//   teacher_entropy = H(p)     = -sum p log p          (0 log 0 = 0 throughout)
// and with `sampled` ids s: log q_s, log p_s, and teacher_rank = #{j : t_j/T > t_s/T}
// (strictly; 0 = the teacher's argmax), counted on the raw values since T > 0 keeps the
// order (and t/T in float could merge neighbours that t/T in exact arithmetic keeps apart).
//
// One pass, no scratch rows, no log per element. The four statistics are linear in p and
// q once the row constants are known: per element
//   log p_j - log q_j = d_j/T + K + (shp_b - shq_b)/T,  d_j = (t_j - shp_b) - (z_j - shq_b),
//   K = (mq - mp)/T + log S_q - log S_p      (sh_b: block b's shifts, m: the row maxima)
// so KL(p||q) = sum p (log p - log q), KL(q||p) = -sum q (log p - log q), and
//   H(q) = log S_q sum q - sum q (z - mq)/T,   H(p) likewise,
// and each L1-sized block of both rows (tuning::kCpuRowBlock), as it streams in from
// memory, needs only its max (its own shift, as in cpu/row.h's pass one) and then
//   e_j = exp((x_j - sh_b)/T) for both rows, and six block sums:
//   sum e_q, sum e_p, sum e_q d, sum e_p d, sum e_q x_q, sum e_p x_p   (x: the exp arguments)
// plus the rank count, each product 0 where e_j = 0 (0 * inf = 0: -inf logits). The
// blocks are then combined in double with the weights exp((sh_b - m)/T) / S. d is taken
// relative to the two blocks' shifts, so an offset between the student's and the
// teacher's logits (softmax ignores it; real models differ by tens) never enters the f32
// sums: it is added back per block in double, where it cancels against K. Accuracy is
// that of the per-element form (measured against the float64 reference on the test
// shapes, offsets of 40 and rising logits: <= 5e-7 absolute, as before).
//
// Cost. The previous version (two passes like divergence.cc: exps cached in L2 scratch
// rows, then per-element log-probs and four term arrays) took 1.07-1.36x the time of
// klDiv forward with its gradient at 512 x 32000 f32. Here the loop is bound by the
// FMA/multiply pipe, so the exps are taken in base 2 with the temperature folded into one
// multiply, AVX-512 uses a 32-entry table exp2 (4 multiply/FMA ops instead of 10), the
// products are plain FMAs with a NaN check per block instead of per-element 0 * inf
// guards (fast path; a block that comes out NaN is redone exactly), and the rank count is
// a mask popcount. Measured (one thread, CPU time, interleaved, this repo's noisy 2-core
// EPYC): ~0.49 ns/element from L3, ~0.55-0.6 from DRAM; 0.56-0.58x forward KL fwd+bwd.
//
// Determinism: per block, fixed lanes (element j of a block goes to lane j % kCpuLanes,
// then a fixed pairwise tree; the rank is an integer), then over blocks in double in
// block order: bitwise identical for any thread count.
#include <algorithm>
#include <atomic>
#include <cmath>

#include "common/divergence_math.h"
#include "common/tuning.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/thread_pool.h"

namespace kd::cpu::KD_ISA {
namespace {

using namespace row;

enum Blk { kQMax, kQSum, kQD, kQU, kPMax, kPSum, kPD, kPW };

// Lanes of the block sums: kCpuLanes, i.e. one AVX-512 register (two AVX2, four SSE) per
// sum. The element work between two adds to one accumulator (two exp) hides the add
// latency, so more chains would only add register pressure (six sums + the rank count).
using row::kLanes;
using row::lane_sum;  // the fixed pairwise tree over kLanes lanes
static_assert(kLanes % kVecWidth == 0 && (kLanes & (kLanes - 1)) == 0, "lanes: a power of two of whole vectors");
static_assert(kExpChunk % kLanes == 0, "prefetch chunks hold whole lane groups");
constexpr int kLaneVecs = kLanes / kVecWidth;
typedef int32_t vint __attribute__((vector_size(kVecWidth * sizeof(int32_t))));

KD_ROW_INLINE vnat vsplat(float x) { return vnat{} + x; }

// The exponentials are taken in base 2: x = (v - sh) * (log2 e / T) (one multiply, which
// also applies the temperature), e = 2^x, and the products summed against x are scaled
// back by ln 2 per row.
//
// 2^x for x <= 0: x = n + r, n = round(x), |r| <= 1/2 (r = x - n exact: the 1.5 * 2^23
// rounding constant), 2^r by a degree-5 polynomial fitted for relative error 9.1e-8
// (Lawson iteration for the minimax relative error), times 2^n (the float t << 23).
// x < -125 (incl. -inf) gives 0 (a result below 2^-125, i.e. 1e-38 of the block max),
// NaN gives NaN. Exact enough for the f32 sums it feeds (measured < 1.7e-7 relative
// over x in [-125, 0]). Scalar or native vector (V = float / vnat, U = its bit type).
constexpr float kP1 = 6.9314700e-1f, kP2 = 2.4022242e-1f, kP3 = 5.5507336e-2f, kP4 = 9.6715130e-3f,
                kP5 = 1.3264727e-3f;
template <class V, class U>
KD_ROW_INLINE V exp2_nonpos(V x) {
  const V t = x + 12583039.0f;  // 1.5 * 2^23 + 127: round(x) + 127 in the low mantissa bits
  const V n = t - 12583039.0f;
  const V r = x - n;
  V y = kP5 * r + kP4;
  y = y * r + kP3;
  y = y * r + kP2;
  y = y * r + kP1;
  y = y * r + 1.0f;
  y = y * __builtin_bit_cast(V, __builtin_bit_cast(U, t) << 23);  // * 2^n (a multiply: NaN stays NaN, see row.h exp_f)
  const V zero = V{};
  return x < -125.0f ? zero : y;
}
KD_ROW_INLINE float exp2_nonpos(float x) { return exp2_nonpos<float, uint32_t>(x); }
KD_ROW_INLINE vnat exp2_nonpos(vnat x) { return exp2_nonpos<vnat, vuint>(x); }

#if defined(KD_ISA_avx512)
// The fast path's 2^x at AVX-512: x = K/32 + r, |r| <= 1/64 (K = round(32 x) by the
// 1.5 * 2^18 constant, r exact), 2^(K mod 32 / 32) from a 32-entry table (one vpermi2ps
// on the low 5 bits), 2^r = 1 + r (c1 + c2 r) fitted for relative error 5.3e-8, and
// 2^floor(K/32) by vscalefps (underflows to 0 for any finite x). Measured < 1.7e-7
// relative over x in [-125, 0]. 4 multiply/FMA-pipe ops instead of the 10 of row.h's
// degree-6 exp16 (that pipe bounds this loop). x = -inf gives NaN (no clamps): the
// block then goes to the exact path (stats_block).
alignas(64) constexpr float kExp2Tab[32] = {
    1.000000000e+00f, 1.021897197e+00f, 1.044273734e+00f, 1.067140460e+00f, 1.090507746e+00f, 1.114386797e+00f,
    1.138788581e+00f, 1.163724899e+00f, 1.189207077e+00f, 1.215247393e+00f, 1.241857767e+00f, 1.269050956e+00f,
    1.296839595e+00f, 1.325236678e+00f, 1.354255557e+00f, 1.383909941e+00f, 1.414213538e+00f, 1.445180774e+00f,
    1.476826191e+00f, 1.509164453e+00f, 1.542210817e+00f, 1.575980902e+00f, 1.610490322e+00f, 1.645755529e+00f,
    1.681792855e+00f, 1.718619347e+00f, 1.756252170e+00f, 1.794709086e+00f, 1.834008098e+00f, 1.874167681e+00f,
    1.915206552e+00f, 1.957144141e+00f};
struct Exp2Table {
  __m512 lo, hi;
};
KD_ROW_INLINE Exp2Table exp2_table() { return {_mm512_load_ps(kExp2Tab), _mm512_load_ps(kExp2Tab + 16)}; }
KD_ROW_INLINE vnat exp2_fast(vnat xv, const Exp2Table& tab) {
  const __m512 x = reinterpret_cast<__m512>(xv);
  const __m512 magic = _mm512_set1_ps(393216.0f);  // 1.5 * 2^18: ulp 1/32
  const __m512 tt = _mm512_add_ps(x, magic);
  const __m512 k = _mm512_sub_ps(tt, magic);  // K / 32
  const __m512 r = _mm512_sub_ps(x, k);
  const __m512 T = _mm512_permutex2var_ps(tab.lo, _mm512_castps_si512(tt), tab.hi);
  const __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(2.4022651e-1f), r, _mm512_set1_ps(6.9315732e-1f));
  const __m512 e = _mm512_fmadd_ps(_mm512_mul_ps(T, r), q, T);
  return reinterpret_cast<vnat>(_mm512_maskz_scalef_ps(kAll16, e, k));
}
#else
struct Exp2Table {};
KD_ROW_INLINE Exp2Table exp2_table() { return {}; }
KD_ROW_INLINE vnat exp2_fast(vnat x, const Exp2Table&) { return exp2_nonpos(x); }
#endif

KD_ROW_INLINE vnat vmul0(vnat e, vnat x) { return e != vnat{} ? e * x : vnat{}; }

// A block's sums (see the top of the file; x in base 2, d relative to the shifts and not
// yet divided by T).
struct BlockSums {
  float sq, sp, dq, dp, uq, wp;
  int32_t rank;
};

// One block of n <= kBlock elements of both rows (Z, T: float, or uint16_t for bf16 read
// in place), shifts shq / shp, a = log2(e) / T, ts the sampled teacher logit (+inf: none).
// `pf` (two ranges: z and t) is advanced a slice per kExpChunk elements.
// FAST: the products as plain FMAs (no 0 * inf guard) and exp2_fast (no -inf handling):
// one vector op per sum instead of three. Exact for finite logits; a -inf logit makes
// some sum NaN (0 * inf, or the exp itself), and the caller then redoes the block with
// FAST = false, which gives each product 0 where e = 0.
template <bool FAST, class Z, class T>
KD_ROW_INLINE BlockSums stats_block(const Z* __restrict z, const T* __restrict t, int64_t n, float shq, float shp,
                                    float a, float ts, Prefetch* pf, int64_t slice) {
  vnat sq[kLaneVecs] = {}, sp[kLaneVecs] = {}, dq[kLaneVecs] = {}, dp[kLaneVecs] = {}, uq[kLaneVecs] = {},
       wp[kLaneVecs] = {};
  vint rk[kLaneVecs] = {};
  int32_t rank_pop = 0;
  const vnat vshq = vsplat(shq), vshp = vsplat(shp), va = vsplat(a), vts = vsplat(ts);
  const Exp2Table tab = exp2_table();
  int64_t j = 0;
  const int64_t full = n & ~int64_t(kLanes - 1);
  for (int64_t c = 0; c < full; c = j) {
    pf[0].next(slice);
    pf[1].next(slice);
    const int64_t end = std::min(full, c + kExpChunk);
    for (j = c; j < end; j += kLanes) {
#pragma GCC unroll 4
      for (int k = 0; k < kLaneVecs; ++k) {
        const vnat zv = vload(z + j + k * kVecWidth), tv = vload(t + j + k * kVecWidth);
        const vnat zc = zv - vshq, tc = tv - vshp;
        const vnat u = zc * va, w = tc * va, d = tc - zc;
        const vnat eq = FAST ? exp2_fast(u, tab) : exp2_nonpos(u), ep = FAST ? exp2_fast(w, tab) : exp2_nonpos(w);
        sq[k] += eq;
        sp[k] += ep;
        if constexpr (FAST) {
          dq[k] += eq * d;
          dp[k] += ep * d;
          uq[k] += eq * u;
          wp[k] += ep * w;
        } else {
          dq[k] += vmul0(eq, d);
          dp[k] += vmul0(ep, d);
          uq[k] += vmul0(eq, u);
          wp[k] += vmul0(ep, w);
        }
#if defined(KD_ISA_avx512)  // the count on the integer side: a mask and a popcount
        rank_pop += __builtin_popcount(_mm512_cmp_ps_mask(reinterpret_cast<__m512>(tv), reinterpret_cast<__m512>(vts), _CMP_GT_OQ));
#else
        rk[k] -= tv > vts;  // true is -1
#endif
      }
    }
  }
  float b[6][kLanes];
  int32_t r[kLanes];
  std::memcpy(b[0], sq, sizeof b[0]);
  std::memcpy(b[1], sp, sizeof b[1]);
  std::memcpy(b[2], dq, sizeof b[2]);
  std::memcpy(b[3], dp, sizeof b[3]);
  std::memcpy(b[4], uq, sizeof b[4]);
  std::memcpy(b[5], wp, sizeof b[5]);
  std::memcpy(r, rk, sizeof r);
  for (int64_t l = 0; j + l < n; ++l) {  // the tail: lane l
    const float zl = ldf(z, j + l), tl = ldf(t, j + l);
    const float zc = zl - shq, tc = tl - shp;
    const float u = zc * a, w = tc * a, d = tc - zc;
    const float eq = exp2_nonpos(u), ep = exp2_nonpos(w);
    b[0][l] += eq;
    b[1][l] += ep;
    b[2][l] += mul0(eq, d);
    b[3][l] += mul0(ep, d);
    b[4][l] += mul0(eq, u);
    b[5][l] += mul0(ep, w);
    r[l] += tl > ts ? 1 : 0;
  }
  BlockSums s;
  s.sq = lane_sum(b[0]);
  s.sp = lane_sum(b[1]);
  s.dq = lane_sum(b[2]);
  s.dp = lane_sum(b[3]);
  s.uq = lane_sum(b[4]);
  s.wp = lane_sum(b[5]);
  int32_t rank = rank_pop;
  for (int l = 0; l < kLanes; ++l) rank += r[l];
  s.rank = rank;
  return s;
}

void stats_row(const TokenStatsArgs& a, float inv_t, bool t_raw, int64_t i, int64_t next, Scratch& S) {
  const int64_t v = a.v;
  const int64_t nb = (v + kBlock - 1) / kBlock;
  const void* zrow = row_ptr(a.s, a.s_dtype, a.lds, i);
  const void* trow = row_ptr(a.t, a.t_dtype, a.ldt, i);
  const void* znext = next >= 0 ? row_ptr(a.s, a.s_dtype, a.lds, next) : nullptr;
  const void* tnext = next >= 0 ? row_ptr(a.t, a.t_dtype, a.ldt, next) : nullptr;
  float* bl[Scratch::kStats];
  for (int k = 0; k < Scratch::kStats; ++k) bl[k] = S.blk[k].data();

  const bool has_s = a.sampled != nullptr;
  const float ts = has_s ? load_as_f32(trow, a.t_dtype, a.sampled[i]) : kInf;  // +inf: counts nothing

  // Block b + kCpuPrefetchBlocks of this row, or past its end the first blocks of the
  // thread's next row.
  auto ahead = [&](const void* rowp, const void* nextp, int32_t dt, int64_t b) {
    int64_t at = b + tuning::kCpuPrefetchBlocks;
    if (at >= nb) {
      at -= nb;
      rowp = nextp;
      if (!rowp || at >= nb) return Prefetch{};
    }
    return prefetch_range(rowp, dt, at * kBlock, std::min(kBlock, v - at * kBlock));
  };

  const float a2 = float(1.4426950408889634 / double(a.temperature));  // log2(e) / T
  int64_t rank = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t off = b * kBlock, n = std::min(kBlock, v - off);
    Prefetch pf[2] = {ahead(zrow, znext, a.s_dtype, b), ahead(trow, tnext, a.t_dtype, b)};
    const int64_t chunks = (n + kExpChunk - 1) / kExpChunk;
    const int64_t slice = ((std::max(pf[0].bytes, pf[1].bytes) + chunks - 1) / chunks + 63) & ~int64_t(63);
    with_blocks(zrow, a.s_dtype, trow, a.t_dtype, off, n, S, [&](const auto* z, const auto* t) {
      const float mz = max_block(z, n), mt = max_block(t, n);
      // raw teacher log-probs: p_j = e^t_j as given, shifted only by a positive block max
      const float shq = block_shift(mz), shp = t_raw ? (mt > 0.0f ? mt : 0.0f) : block_shift(mt);
      BlockSums s = stats_block<true>(z, t, n, shq, shp, a2, ts, pf, slice);
      if (std::isnan(s.sq + s.sp + s.dq + s.dp + s.uq + s.wp)) {  // a -inf (or NaN) logit: exactly
        Prefetch none[2];
        s = stats_block<false>(z, t, n, shq, shp, a2, ts, none, 0);
      }
      bl[kQMax][b] = mz;
      bl[kPMax][b] = t_raw ? shp : mt;
      bl[kQSum][b] = s.sq;
      bl[kPSum][b] = s.sp;
      bl[kQD][b] = s.dq;
      bl[kPD][b] = s.dp;
      bl[kQU][b] = s.uq;
      bl[kPW][b] = s.wp;
      rank += s.rank;
    });
  }
  // ---- the row: blocks combined in double, in block order -----------------------------
  // Block b's exps are relative to its shifts; its weight on each side is
  // exp(rel_b) / S, rel_b = (sh_b - m)/T (raw teacher: rel_b = sh_b, S = 1).
  constexpr double kLn2 = 0.693147180559945309;
  const double it = inv_t;
  float mzf = -kInf, mtf = -kInf;
  for (int64_t b = 0; b < nb; ++b) {
    mzf = bl[kQMax][b] > mzf ? bl[kQMax][b] : mzf;
    mtf = bl[kPMax][b] > mtf ? bl[kPMax][b] : mtf;
  }
  const double mq = mzf, mp = t_raw ? 0.0 : double(mtf);
  auto shq = [&](int64_t b) { return double(block_shift(bl[kQMax][b])); };
  auto shp = [&](int64_t b) { return t_raw ? double(bl[kPMax][b]) : double(block_shift(bl[kPMax][b])); };
  auto relq = [&](int64_t b) { return (shq(b) - mq) * it; };
  auto relp = [&](int64_t b) { return t_raw ? shp(b) : (shp(b) - mp) * it; };
  double Sq = 0.0, Uq = 0.0, Sp = 0.0, Up = 0.0;  // S, and sum e (x - m)/T, per side
  for (int64_t b = 0; b < nb; ++b) {
    if (bl[kQSum][b] != 0.0f) {  // (a block of only -inf contributes nothing)
      const double r = relq(b), w = std::exp(r);
      Sq += double(bl[kQSum][b]) * w;
      Uq += (double(bl[kQU][b]) * kLn2 + r * double(bl[kQSum][b])) * w;
    }
    if (bl[kPSum][b] != 0.0f) {
      const double r = relp(b), w = std::exp(r);
      Sp += double(bl[kPSum][b]) * w;
      Up += (double(bl[kPW][b]) * kLn2 + r * double(bl[kPSum][b])) * w;
    }
  }
  const double lsq = std::log(Sq), lsp = t_raw ? 0.0 : std::log(Sp);
  const double nq = 1.0 / Sq, np = t_raw ? 1.0 : 1.0 / Sp;  // sum p = Sp np (1, or sum e^t raw)
  // log p_j - log q_j = d_j/T + off_b, d_j = (t_j - shp_b) - (z_j - shq_b) per element,
  // off_b = K + (shp_b - shq_b)/T: the offset between the two rows' logits is taken out
  // of d (it cancels against K, in double here).
  const double K = (mq - mp) * it + lsq - lsp;
  double F = 0.0, R = 0.0;
  for (int64_t b = 0; b < nb; ++b) {
    const double off = K + (shp(b) - shq(b)) * it;
    if (bl[kPSum][b] != 0.0f) F += std::exp(relp(b)) * (double(bl[kPD][b]) * it + off * double(bl[kPSum][b]));
    if (bl[kQSum][b] != 0.0f) R += std::exp(relq(b)) * (double(bl[kQD][b]) * it + off * double(bl[kQSum][b]));
  }
  a.forward_kl[i] = float(F * np);
  a.reverse_kl[i] = float(-R * nq);
  a.student_entropy[i] = float(lsq * (Sq * nq) - Uq * nq);
  a.teacher_entropy[i] = float(lsp * (Sp * np) - Up * np);
  if (has_s) {
    const float zs = load_as_f32(zrow, a.s_dtype, a.sampled[i]);
    a.student_logprob[i] = (zs - float(mq)) * inv_t - float(lsq);
    a.teacher_logprob[i] = (ts - float(mp)) * inv_t - float(lsp);
    a.teacher_rank[i] = int32_t(rank);
  }
}

}  // namespace

Status token_stats(const TokenStatsArgs& a) {
  if (a.n < 0 || (a.n > 0 && a.v < 1)) return make_status(kShape, "token_stats: need n >= 0 and v >= 1");
  if (!(a.temperature > 0.0f && a.temperature < kInf))
    return make_status(kInvalid, "token_stats: temperature must be finite and > 0");
  if (a.n == 0) return ok_status();
  if (!dtype_is_float(a.s_dtype) || !dtype_is_float(a.t_dtype))
    return make_status(kDtype, "token_stats: logits must be f32, f16 or bf16");
  if (!a.s || !a.t) return make_status(kInvalid, "token_stats: missing student or teacher logits");
  if (a.lds < a.v || a.ldt < a.v) return make_status(kShape, "token_stats: row strides must be >= v");
  if (!a.forward_kl || !a.reverse_kl || !a.student_entropy || !a.teacher_entropy)
    return make_status(kInvalid, "token_stats: missing an output");
  if (a.sampled) {
    if (!a.student_logprob || !a.teacher_logprob || !a.teacher_rank)
      return make_status(kInvalid, "token_stats: sampled ids need the log-prob and rank outputs");
    for (int64_t i = 0; i < a.n; ++i)
      if (a.sampled[i] < 0 || a.sampled[i] >= a.v) return make_status(kRange, "token_stats: sampled id out of range [0, V)");
  }

  const float inv_t = 1.0f / a.temperature;
  const bool t_raw = a.teacher_logprobs && a.temperature == 1.0f;
  std::atomic<bool> nomem{false};
  auto run_rows = [&](int64_t b, int64_t e) {
    Scratch* S = thread_scratch(a.v, 0);  // the per-block arrays and staging buffers only
    if (!S) {
      nomem.store(true);
      return;
    }
    for (int64_t i = b; i < e; ++i) stats_row(a, inv_t, t_raw, i, i + 1 < e ? i + 1 : -1, *S);
  };
  if (a.n * a.v < tuning::kCpuSerialElems) run_rows(0, a.n);
  else parallel_for(a.n, row_grain(a.n), run_rows);
  if (nomem.load()) return make_status(kNoMem, "token_stats: out of memory for scratch rows");
  return ok_status();
}

}  // namespace kd::cpu::KD_ISA
