// divergence: the fused forward + backward engine behind klDiv, jsd, tvd, skewKl and
// distillationLoss, on the CPU. One row (token) at a time; rows split over the pool.
//
// Per row, student logits z [V] (row stride lds), teacher t [V] (stride ldt), T > 0:
//   q = softmax(z/T), log q_j = (z_j - max z)/T - log S_q
//   p = softmax(t/T), or p = e^t, log p = t as given (teacher log-probs at T = 1; NOT
//       renormalised, so sum p may differ from 1)
//   D = the divergence (formulas in common/divergence_math.h; jsd with beta = 0 / 1 and
//       the skew KLs with lambda = 0 are exactly forward / reverse KL and run as such)
//   dD/dz_j = q_j (g_j - sum_k q_k g_k) / T,  g = dD/dq   (softmax chain rule), i.e.
//       forward  (q_j sum p - p_j)/T             reverse  q_j (log q_j - log p_j - D)/T
//       jsd      (1-b) q_j (log q_j - log m_j - KL(q||m))/T
//       tvd / skew   q_j (g_j - G)/T, G = sum q g
//   CE (labels y, eps = label smoothing, untempered q0 = softmax(z)):
//       CE = log S_0 - (1-eps)(z_y - max z) - eps mean_j(z_j - max z)
//       dCE/dz_j = q0_j - (1-eps)[j == y] - eps/V
//   total_i = w_i (hard_weight CE_i + soft_weight D_i); soft_i = soft_scale D_i; loss =
//   reduction of total over the selected rows (common/select.h); grad = grad_scale
//   dLoss/dz, exactly 0 on unselected rows. A term whose weight is exactly 0 is left out
//   of total and grad (no 0 * inf); hard_i is reported whenever labels are given.
//
// Passes over one row; after A the row's inputs and two f32 scratch rows (~16V bytes)
// sit in L2, and the later passes run from there:
//   A  reads z and t from memory once, in L1-sized blocks (tuning::kCpuRowBlock): per
//      block the max, e_j = exp((x_j - blockmax)/T) into a per-thread scratch row, and
//      the block sum (at AVX2 after the first block: relative to the running max of the
//      earlier blocks, with the block max taken in the same sweep, kFusedBlockMax).
//      Per-block shifts fuse the max into the exp pass, so the DRAM read
//      overlaps the exp work; blocks kCpuPrefetchBlocks ahead are prefetched a few lines
//      at a time inside the exp loop. The block sums are combined in double into log S
//      and per-block scales c_b (q_j = e_j c_b). (+ e^(z_j - blockmax) for CE when
//      T != 1; at T = 1 the CE's q0 is q itself.)
//   B  forward KL: loss terms and the gradient in the same sweep (it needs no row sum);
//      below AVX-512 the loss comes from pass A's block sums instead (fkl_cross_block)
//      and pass B writes the gradient from e_q and e_p alone (kFklLossInPassA; a
//      streamed f32 or bf16 gradient at AVX2 straight from the registers,
//      fkl_grad_stream).
//      Others: D and G = sum q g, with g_j stored over the teacher's scratch row.
//   C  (the G divergences, with a gradient) dz_j from e_j and the stored g_j.
//   A last pass that reads no input (forward KL's B below AVX-512, C, the CE-only
//   gradient) is one GradPass, block by block.
// So each element costs 2 exp (+1 log for jsd / skew, +1 exp for CE at T != 1), not the
// 4 of recomputing both softmaxes in a second pass. exp / log are our own (cpu/row.h):
// branchless polynomials that GCC vectorises without -ffast-math, and at AVX-512 the exp
// pass in intrinsics (vscalefps), at AVX2 too (8 exps in flight per lane group, the
// sum in the same loop). The element loops take __restrict L1 blocks and write
// per-element terms that fixed-lane vector sums reduce. bf16 rows are read in place;
// f16 ones are converted to an L1 block. Gradients of >= kCpuStreamBytes go out with
// streaming stores (no read-for-ownership); bf16 ones through the AVX512-BF16
// conversion where the CPU has it. Rows are handed out in runs (row_grain) so that a
// thread prefetches the first blocks of its next row while it finishes this one.
// Measured (512 x 32000, f32, 2 threads, this repo's 2-core EPYC, Zen 4, AVX-512): forward KL fwd+bwd
// ~1.5x the triad time over the same bytes (~2/3 of the memory floor); jsd ~1.4x forward
// KL (bench medians 1.37-1.43); bf16 1.1-1.25x f32 elements/s. Both dtypes are compute-
// bound there (pass A's two exps per element dominate), so bf16's halved bytes buy little
// and its widening costs count: at AVX-512 bf16 blocks are widened with one vpermw (row.h
// load16), their block max is taken on even/odd lanes without widening (row.h
// max_block), and pass B of bf16 forward KL (fkl_block_bf16) and of jsd (jsd_block16; jsd_block8 at AVX2) is
// in intrinsics with the row sums in registers.
//
// Determinism: every row sum is taken in fixed lanes (kCpuLanes x kCpuRowChains) per
// block and a fixed tree, then over blocks in double, and the scalar loss is reduced in
// row order in double from a per-row buffer: bitwise identical for any thread count.
// In place (grad == s, same dtype and stride): a block of z is read for the last time
// before the same block of the gradient is written; any other overlap is rejected.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common/arg_checks.h"
#include "common/divergence_math.h"
#include "common/select.h"
#include "common/tuning.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/thread_pool.h"

namespace kd::cpu::KD_ISA {
namespace {

using namespace row;
#define KD_ROW_INLINE_LAMBDA __attribute__((always_inline))

// Mixture divergences (jsd, skew KLs): the mixture m = a p + b q is clamped to >= 2^-100.
// In linear space a p can underflow to 0 next to a subnormal p > 0 (then log m = -inf
// and p (lp - lm) = inf) and p / m would overflow in the skew gradients; the clamp changes
// only elements whose true contribution is < ~1e-28, and keeps log m a normal-range log.
constexpr float kTinyMixture = 7.8886091e-31f;  // 2^-100

enum CeMode : int { kCeOff = 0, kCeReuse = 1, kCeOwn = 2 };  // reuse: q0 = q (T == 1)

// Per-call constants shared by every row.
struct Plan {
  const DivergenceArgs* a = nullptr;
  float inv_t = 1.0f;     // 1/T of the divergence (1 without a divergence: q is then q0)
  bool t_raw = false;     // teacher log-probs at T = 1: log p = t, p = e^t
  int ce = kCeOff;        // CE computed (needs labels): for the loss or the `hard` output
  float eps = 0.0f;
  float beta = 0.5f, skew = 0.1f;
  float sw = 0.0f, hw = 0.0f;
  bool use_soft = false;  // soft_weight != 0 and a divergence: D enters total and grad
  bool use_hard = false;  // hard_weight != 0: CE enters total and grad
  double grad_coef = 0.0; // grad_scale / divisor (0 when nothing is selected)
  bool stream = false;    // a gradient larger than the caches: streaming stores
  float* rowtot = nullptr;
};

// Scratch layout (row.h Scratch): rows e_q, e_p (then g), e_0; per-block arrays below.
enum Blk { kQMax, kQSum, kQScale, kPMax, kPSum, kPScale, k0Sum, k0Scale, kZCen, kCross, kQShift, kPShift };
static_assert(kPShift < Scratch::kStats, "Scratch holds every per-block array");

// Adds the CE gradient to one staged gradient block: a2 q0_j - a2 eps/V, and -a2 (1-eps)
// at the label.
struct CeGrad {
  const float* e = nullptr;  // cached exp row of q0 (e_q or e_0)
  const float* c = nullptr;  // its per-block scales
  float a2 = 0.0f, a3 = 0.0f, ay = 0.0f;
  int64_t y = -1;
  static KD_ROW_INLINE void axpb(const float* __restrict e, int64_t n, float c, float a2, float a3, float* __restrict g) {
    for (int64_t j = 0; j < n; ++j) g[j] += a2 * (e[j] * c) + a3;
  }
  KD_ROW_INLINE void add(float* g, int64_t b, int64_t off, int64_t n) const {
    axpb(e + off, n, c[b], a2, a3, g);
    if (y >= off && y < off + n) g[y - off] -= ay;
  }
};

// Row constants of the later passes: log q_j = (z_j - mq) inv_t - lsq, same for p.
struct RowConst {
  float mq, lsq, mp, lsp, inv_t, beta, skew;
};

// The element loops below take __restrict pointers to L1-resident blocks so that GCC
// vectorises them without alias checks; their per-element terms go to tmp buffers that
// sum_block (fixed lanes) reduces. Z, T: float, or uint16_t for bf16 rows read in place;
// gradients go out as float or, rounded in the loop, as bf16 (uint16_t).

// Forward KL, one block: D terms, and a1 (q sum_p - p) into g (pass B, with a gradient).
// q itself is not needed here, only q sum_p = e_q (c_q sum_p).
template <bool WITH_G, bool UNIT, class Z, class T, class G>
KD_ROW_INLINE void fkl_block(const Z* __restrict z, const T* __restrict t, const float* __restrict eq,
                             const float* __restrict ep, int64_t n, float cq, float cp, const RowConst& k,
                             float a1, float sum_p, float* __restrict term, G* __restrict g) {
  const float mq = k.mq, lsq = k.lsq, mp = k.mp, lsp = k.lsp, it = k.inv_t, beta = k.beta;
  const float cqs = cq * sum_p;
  for (int64_t j = 0; j < n; ++j) {
    const float p = ep[j] * cp;
    const float lq = log_softmax_at<UNIT>(ldf(z, j), mq, it, lsq), lp = log_softmax_at<UNIT>(ldf(t, j), mp, it, lsp);
    term[j] = div_term(kForwardKl, lq, lp, 0.0f, p, 0.0f, beta);
    if constexpr (WITH_G) stf(g, j, a1 * div_grad(kForwardKl, lq, lp, eq[j] * cqs, p, 0.0f, 0.0f, 0.0f, beta));
  }
}

// The other divergences, pass B: D terms, q g terms for G = sum q g, and (keep_g) g_j
// stored over e_p (p is not needed after this pass).
template <int DIV, bool KEEP_G, bool UNIT, class Z, class T>
KD_ROW_INLINE void gdiv_block(const Z* __restrict z, const T* __restrict t, const float* __restrict eq,
                              float* __restrict ep, int64_t n, float cq, float cp, const RowConst& k,
                              float* __restrict term, float* __restrict qg) {
  const float mq = k.mq, lsq = k.lsq, mp = k.mp, lsp = k.lsp, it = k.inv_t, beta = k.beta, skew = k.skew;
  for (int64_t j = 0; j < n; ++j) {
    const float q = eq[j] * cq, p = ep[j] * cp;
    const float lq = log_softmax_at<UNIT>(ldf(z, j), mq, it, lsq), lp = log_softmax_at<UNIT>(ldf(t, j), mp, it, lsp);
    float tm, g;
    if constexpr (DIV == kReverseKl) {
      tm = div_term(DIV, lq, lp, q, p, 0.0f, beta);
      g = lq - lp;  // pass C: div_grad(kReverseKl) = q (lq - lp - D)
    } else if constexpr (DIV == kTvd) {
      tm = div_term(DIV, lq, lp, q, p, 0.0f, beta);
      g = div_g(DIV, lq, q, p, 0.0f, 0.0f, skew);
    } else {  // jsd, skew KLs: the log of the mixture; equal components mix to themselves
      float m = div_mixture(DIV, p, q, beta, skew);
      m = m < kTinyMixture ? kTinyMixture : m;  // see kTinyMixture (a NaN passes)
      const float lm = lq == lp ? lq : log_normal_f(m);
      tm = div_term(DIV, lq, lp, q, p, lm, beta);
      g = div_g(DIV, lq, q, p, m, lm, skew);
    }
    term[j] = tm;
    if constexpr (KEEP_G) {
      qg[j] = mul0(q, g);
      ep[j] = g;
    }
  }
}

// Pass C: a1 * dD/dz from q and the stored g. dD/dz is linear in q_j = e_j c_q (and 0
// exactly where e_j is), so e_j goes in as q and c_q joins the row factor; so does jsd's
// (1 - beta), div_grad then seeing beta = 0 (its 1 - 0 folds away).
template <int DIV, class O>
KD_ROW_INLINE void gdiv_grad_block(const float* __restrict eq, const float* __restrict gg, int64_t n, float cq,
                                   float a1, float L, float G, float beta, O* __restrict out) {
  const float f = DIV == kJsd ? a1 * cq * (1.0f - beta) : a1 * cq;
  int64_t j = 0;
#if defined(KD_ISA_avx2)
  // jsd at AVX2, f32 out: jsd_block8 stored a finite g_j (-FLT_MAX - lm) where q_j = 0 in
  // the whole lane groups of the block, so mul0 is a plain product there (0 times a
  // finite value; two FP ops fewer per vector). Its scalar tail stored lq - lm as is:
  // that part keeps the masked loop below.
  if constexpr (DIV == kJsd && std::is_same_v<O, float>) {
    const __m256 vf = _mm256_set1_ps(f), vG = _mm256_set1_ps(G);
    for (const int64_t full = n / kSumLanes * kSumLanes; j < full; j += 8)
      _mm256_storeu_ps(out + j, _mm256_mul_ps(vf, _mm256_mul_ps(_mm256_loadu_ps(eq + j), _mm256_sub_ps(_mm256_loadu_ps(gg + j), vG))));
  }
#endif
  for (; j < n; ++j) {
    // reverse KL: g = lq - lp is passed as lq (with lp = 0): q (g - D)
    stf(out, j, f * div_grad(DIV, gg[j], 0.0f, eq[j], 0.0f, gg[j], L, G, DIV == kJsd ? 0.0f : beta));
  }
}

#if defined(KD_ISA_avx512)
// jsd at AVX-512: pass B in intrinsics. The same formulas, in the same operation order
// and FMA contractions as gdiv_block (and log_normal_f), so g_j, G and the gradient are
// bit-identical to the generic loop's, and D equal up to its regrouping (below, a few ulp
// of the row's D); what changes is the work around them:
//   - the two row sums stay in registers, in sum_block's lanes (element j of the block to
//     lane j % kSumLanes, full lane groups first, then the tail lane by lane, then the
//     same tree), instead of two term rows stored and summed in two more sweeps;
//   - D's per-element weighting beta A_j + (1 - beta) G_j is taken per block from the two
//     sums (A = sum p (lp - lm), G = sum q (lq - lm)), one FMA and one multiply fewer per
//     element;
//   - the mixture clamp is one max (a NaN passes, as in the select).
// Pass C stays the generic loop into an L1 block copied out by LineStream: writing the
// gradient with streaming stores straight from the loop measured slower (jsd/forward KL
// 1.52 against 1.46, 1 thread). (At AVX2 on a Zen 3, 2026-12-08, the same for jsd's f32
// pass C, bit for bit the staged values, measured 0.993-1.003: no gain, not kept.)
// Measured (512 x 32000 f32, 1 thread, CPU time, same process, A/B by a run-time switch):
// jsd / forward KL 1.455 -> 1.387.
using row::load16;
KD_ROW_INLINE __m512 log_normal16(__m512 x) {  // log_normal_f on 16 lanes
  const __m512i ix = _mm512_add_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(0x3f800000 - 0x3f3504f3));
  const __m512 kf = _mm512_maskz_cvtepi32_ps(kAll16, _mm512_sub_epi32(_mm512_maskz_srli_epi32(kAll16, ix, 23), _mm512_set1_epi32(0x7f)));
  const __m512 f = _mm512_sub_ps(
      _mm512_castsi512_ps(_mm512_add_epi32(_mm512_and_si512(ix, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x3f3504f3))),
      _mm512_set1_ps(1.0f));
  __m512 y = _mm512_set1_ps(kLogPoly[0]);
#pragma GCC unroll 8
  for (int i = 1; i < kPolyTerms; ++i) y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kLogPoly[i]));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(f, f), f);
  return _mm512_add_ps(_mm512_fmadd_ps(kf, _mm512_set1_ps(0.693147182464599609375f), y), _mm512_sub_ps(x, x));
}
KD_ROW_INLINE __m512 mul0_16(__m512 x, __m512 y) {  // mul0: x == 0 ? 0 : x * y
  return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_UQ), x, y);
}
template <bool UNIT>
KD_ROW_INLINE __m512 log_softmax16(__m512 x, __m512 m, __m512 it, __m512 ls) {
  if constexpr (UNIT) return _mm512_sub_ps(_mm512_sub_ps(x, m), ls);
  else return _mm512_fmsub_ps(_mm512_sub_ps(x, m), it, ls);
}
constexpr __mmask16 kAll = 0xffff;
KD_ROW_INLINE __mmask16 tail_mask(int64_t at, int64_t n) {
  return at + 16 <= n ? kAll : at >= n ? __mmask16(0) : __mmask16((1u << (n - at)) - 1u);
}

// Pass B of jsd over one block: returns A = sum_j mul0(p_j, lp_j - lm_j) and sets
// *gsum = G = sum_j mul0(q_j, lq_j - lm_j) = KL(q||m) over the block; (KEEP_G) g_j =
// lq_j - lm_j stored over e_p. The block's D is beta A + (1 - beta) G (the caller, in
// double): the per-element beta / (1 - beta) weighting of div_term moved out of the loop.
template <bool KEEP_G, bool UNIT, class Z, class T>
KD_ROW_INLINE float jsd_block16(const Z* __restrict z, const T* __restrict t, const float* __restrict eq,
                                float* __restrict ep, int64_t n, float cq, float cp, const RowConst& k, float* gsum) {
  const __m512 vcq = _mm512_set1_ps(cq), vcp = _mm512_set1_ps(cp), mq = _mm512_set1_ps(k.mq),
               lsq = _mm512_set1_ps(k.lsq), mp = _mm512_set1_ps(k.mp), lsp = _mm512_set1_ps(k.lsp),
               it = _mm512_set1_ps(k.inv_t), beta = _mm512_set1_ps(k.beta), omb = _mm512_set1_ps(1.0f - k.beta),
               tiny = _mm512_set1_ps(kTinyMixture);
  __m512 at[kVecs], ag[kVecs];
  for (int v = 0; v < kVecs; ++v) at[v] = ag[v] = _mm512_setzero_ps();
  auto step = [&](int64_t j, int v, __mmask16 msk, auto tail) KD_ROW_INLINE_LAMBDA {
    __m512 zz, tt, eqv, epv;
    if constexpr (tail()) {
      zz = load16(z + j, msk), tt = load16(t + j, msk);
      eqv = _mm512_maskz_loadu_ps(msk, eq + j), epv = _mm512_maskz_loadu_ps(msk, ep + j);
    } else {
      zz = load16(z + j), tt = load16(t + j), eqv = _mm512_loadu_ps(eq + j), epv = _mm512_loadu_ps(ep + j);
    }
    const __m512 q = _mm512_mul_ps(eqv, vcq), p = _mm512_mul_ps(epv, vcp);
    const __m512 lq = log_softmax16<UNIT>(zz, mq, it, lsq), lp = log_softmax16<UNIT>(tt, mp, it, lsp);
    const __m512 m = _mm512_maskz_max_ps(0xffff, tiny, _mm512_fmadd_ps(p, beta, _mm512_mul_ps(q, omb)));  // tiny > m ? tiny : m
    const __m512 lm = _mm512_mask_mov_ps(lq, _mm512_cmp_ps_mask(lq, lp, _CMP_NEQ_UQ), log_normal16(m));
    const __m512 g = _mm512_sub_ps(lq, lm);
    const __m512 qg = mul0_16(q, g);
    const __m512 pa = mul0_16(p, _mm512_sub_ps(lp, lm));
    if constexpr (tail()) {
      at[v] = _mm512_mask_add_ps(at[v], msk, at[v], pa);
      ag[v] = _mm512_mask_add_ps(ag[v], msk, ag[v], qg);
      if constexpr (KEEP_G) _mm512_mask_storeu_ps(ep + j, msk, g);
    } else {
      at[v] = _mm512_add_ps(at[v], pa);
      ag[v] = _mm512_add_ps(ag[v], qg);
      if constexpr (KEEP_G) _mm512_storeu_ps(ep + j, g);
    }
  };
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes) {
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) step(j + v * 16, v, kAll, std::false_type{});
  }
#pragma GCC unroll 4
  for (int v = 0; v < kVecs; ++v)
    if (j + v * 16 < n) step(j + v * 16, v, tail_mask(j + v * 16, n), std::true_type{});
  float b[kSumLanes];
  std::memcpy(b, ag, sizeof b);
  *gsum = lane_tree_sum(b);
  std::memcpy(b, at, sizeof b);
  return lane_tree_sum(b);
}

// Forward KL pass B over one block of bf16 student and teacher rows (fkl_block, f32
// gradient out): the rows widened by load16's vpermw instead of GCC's vpmovzxwd + vpslld
// (+ vextracti64x4) per 16, and D's block sum kept in registers in sum_block's lanes.
// Same per-element formulas and contractions as fkl_block, so the same values.
template <bool WITH_G, bool UNIT>
KD_ROW_INLINE float fkl_block_bf16(const uint16_t* __restrict z, const uint16_t* __restrict t,
                                   const float* __restrict eq, const float* __restrict ep, int64_t n, float cq, float cp,
                                   const RowConst& k, float a1, float sum_p, float* __restrict g) {
  const __m512 vcqs = _mm512_set1_ps(cq * sum_p), vcp = _mm512_set1_ps(cp), mq = _mm512_set1_ps(k.mq),
               lsq = _mm512_set1_ps(k.lsq), mp = _mm512_set1_ps(k.mp), lsp = _mm512_set1_ps(k.lsp),
               it = _mm512_set1_ps(k.inv_t), va1 = _mm512_set1_ps(a1);
  __m512 acc[kVecs];
  for (int v = 0; v < kVecs; ++v) acc[v] = _mm512_setzero_ps();
  auto step = [&](int64_t j, int v, __mmask16 msk, auto tail) KD_ROW_INLINE_LAMBDA {
    __m512 zz, tt, epv;
    if constexpr (tail()) zz = load16(z + j, msk), tt = load16(t + j, msk), epv = _mm512_maskz_loadu_ps(msk, ep + j);
    else zz = load16(z + j), tt = load16(t + j), epv = _mm512_loadu_ps(ep + j);
    const __m512 p = _mm512_mul_ps(epv, vcp);
    const __m512 lq = log_softmax16<UNIT>(zz, mq, it, lsq), lp = log_softmax16<UNIT>(tt, mp, it, lsp);
    const __m512 tm = mul0_16(p, _mm512_sub_ps(lp, lq));
    if constexpr (tail()) {
      acc[v] = _mm512_mask_add_ps(acc[v], msk, acc[v], tm);
      if constexpr (WITH_G)
        _mm512_mask_storeu_ps(g + j, msk, _mm512_mul_ps(va1, _mm512_fmsub_ps(_mm512_maskz_loadu_ps(msk, eq + j), vcqs, p)));
    } else {
      acc[v] = _mm512_add_ps(acc[v], tm);
      if constexpr (WITH_G) _mm512_storeu_ps(g + j, _mm512_mul_ps(va1, _mm512_fmsub_ps(_mm512_loadu_ps(eq + j), vcqs, p)));
    }
  };
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes) {
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) step(j + v * 16, v, kAll, std::false_type{});
  }
#pragma GCC unroll 4
  for (int v = 0; v < kVecs; ++v)
    if (j + v * 16 < n) step(j + v * 16, v, tail_mask(j + v * 16, n), std::true_type{});
  float b[kSumLanes];
  std::memcpy(b, acc, sizeof b);
  return lane_tree_sum(b);
}
#endif

#if defined(KD_ISA_avx2)
// jsd at AVX2: jsd_block16's scheme on 8 lanes (gdiv_block's formulas and log_normal_f's
// operations, with the block scales moved out of the loop: m_j rounds differently, so
// g_j, G and D agree with the generic loop's to a few ulp, not bit for bit): the two row
// sums in registers in sum_block's lanes (8 vectors), each product fused with its lane's
// add into one FMA, no term rows and no extra sweeps, the beta weighting taken per block.
// The tail of a block (n % kSumLanes elements, the last block of a row) goes lane by lane,
// in scalar code.
// Measured with the -inf clamp below and pass C's plain product (gdiv_grad_block), A/B in
// one process (Zen 3, 512 x 32000, 2 threads, paired median): jsd f32 0.97-0.98.
KD_ROW_INLINE __m256 log_normal8(__m256 x) {  // log_normal_f on 8 lanes
  const __m256i ix = _mm256_add_epi32(_mm256_castps_si256(x), _mm256_set1_epi32(0x3f800000 - 0x3f3504f3));
  const __m256 kf = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(ix, 23), _mm256_set1_epi32(0x7f)));
  const __m256 f = _mm256_sub_ps(
      _mm256_castsi256_ps(_mm256_add_epi32(_mm256_and_si256(ix, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f3504f3))),
      bcast(1.0f));
  __m256 y = bcast(kLogPoly[0]);
#pragma GCC unroll 8
  for (int i = 1; i < kPolyTerms; ++i) y = _mm256_fmadd_ps(y, f, bcast(kLogPoly[i]));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(f, f), f);
  return _mm256_add_ps(_mm256_fmadd_ps(kf, bcast(0.693147182464599609375f), y), _mm256_sub_ps(x, x));
}
template <bool UNIT>
KD_ROW_INLINE __m256 log_softmax8(__m256 x, __m256 m, __m256 it, __m256 ls) {
  if constexpr (UNIT) return _mm256_sub_ps(_mm256_sub_ps(x, m), ls);
  else return _mm256_fmsub_ps(_mm256_sub_ps(x, m), it, ls);
}

// Pass B of jsd over one block (see jsd_block16): returns A = sum_j mul0(p_j, lp_j - lm_j),
// sets *gsum = G = sum_j mul0(q_j, lq_j - lm_j), both as c (sum_j e_j (...)); (KEEP_G)
// g_j = lq_j - lm_j over e_p.
template <bool KEEP_G, bool UNIT, class Z, class T>
KD_ROW_INLINE float jsd_block8(const Z* __restrict z, const T* __restrict t, const float* __restrict eq,
                               float* __restrict ep, int64_t n, float cq, float cp, const RowConst& k, float* gsum) {
  // The block's scales c_q, c_p leave the element loop: m_j = (beta c_p) e^p_j + ((1 - beta)
  // c_q) e^q_j, and the sums are taken over e^p_j (lp_j - lm_j) and e^q_j (lq_j - lm_j), then
  // multiplied by c_p and c_q once per block: two multiplies fewer per vector (q_j and p_j
  // are never formed). Measured (Zen 3, 512 x 32000, 2 threads, A/B by a run-time switch in
  // one process, paired medians of 12 rounds, two runs): jsd f32 0.94-0.98 (without a
  // gradient 0.96-0.99), bf16 0.95 (0.92).
  const __m256 mq = bcast(k.mq), lsq = bcast(k.lsq), mp = bcast(k.mp), lsp = bcast(k.lsp), it = bcast(k.inv_t),
               bcp = bcast(k.beta * cp), omcq = bcast((1.0f - k.beta) * cq), tiny = bcast(kTinyMixture),
               lowest = bcast(-std::numeric_limits<float>::max());
  __m256 at[kVecs], ag[kVecs];
#pragma GCC unroll 8
  for (int v = 0; v < kVecs; ++v) at[v] = ag[v] = _mm256_setzero_ps();  // (a loop became two rep stos)
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes) {
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) {
      const int64_t o = j + v * 8;
      const __m256 q = _mm256_loadu_ps(eq + o), p = _mm256_loadu_ps(ep + o);  // e^q_j, e^p_j
      // -inf log-probs clamped to -FLT_MAX (a NaN passes: max returns its second operand):
      // then lp - lm and lq - lm are finite wherever p or q is 0, and the two mul0 become
      // plain products (two FP ops fewer per vector). Same sums: a zero weight times a
      // finite difference adds a zero, and lq == lp still holds for two -inf. g_j is
      // -FLT_MAX - lm instead of -inf where q_j = 0; pass C multiplies it by mul0(q_j, .).
      const __m256 lq = _mm256_max_ps(lowest, log_softmax8<UNIT>(load8(z + o), mq, it, lsq));
      const __m256 lp = _mm256_max_ps(lowest, log_softmax8<UNIT>(load8(t + o), mp, it, lsp));
      const __m256 m = _mm256_max_ps(tiny, _mm256_fmadd_ps(p, bcp, _mm256_mul_ps(q, omcq)));  // a NaN passes
      const __m256 lm = _mm256_blendv_ps(lq, log_normal8(m), _mm256_cmp_ps(lq, lp, _CMP_NEQ_UQ));
      const __m256 g = _mm256_sub_ps(lq, lm);
      at[v] = _mm256_add_ps(at[v], _mm256_mul_ps(p, _mm256_sub_ps(lp, lm)));
      ag[v] = _mm256_add_ps(ag[v], _mm256_mul_ps(q, g));
      if constexpr (KEEP_G) _mm256_storeu_ps(ep + o, g);
    }
  }
  float ta[kSumLanes], tg[kSumLanes];
  const int64_t nt = n - j;
  for (int64_t l = 0; l < nt; ++l) {  // the tail, element by element (gdiv_block's formulas)
    const float q = eq[j + l] * cq, p = ep[j + l] * cp;  // (for m; the sums take e^q_j, e^p_j)
    const float lq = log_softmax_at<UNIT>(ldf(z, j + l), k.mq, k.inv_t, k.lsq);
    const float lp = log_softmax_at<UNIT>(ldf(t, j + l), k.mp, k.inv_t, k.lsp);
    float m = div_mixture(kJsd, p, q, k.beta, 0.0f);
    m = m < kTinyMixture ? kTinyMixture : m;
    const float lm = lq == lp ? lq : log_normal_f(m);
    ta[l] = mul0(ep[j + l], lp - lm);
    tg[l] = mul0(eq[j + l], lq - lm);
    if constexpr (KEEP_G) ep[j + l] = lq - lm;
  }
  *gsum = cq * lanes_total(ag, tg, nt);
  return cp * lanes_total(at, ta, nt);
}
#endif

// Forward KL's loss from the first pass (all but AVX-512, see kFklLossInPassA). With
// the block shifts s^q_b, s^p_b (block maxima) and the row's m_q, m_p, log S_q, log S_p:
//   lp_j - lq_j = [(t_j - s^p_b) - (z_j - s^q_b)]/T + K_b,
//   K_b = [(s^p_b - m_p) - (s^q_b - m_q)]/T - log S_p + log S_q
// so D = sum_b c^p_b (X_b / T + S^p_b K_b), with X_b = sum_j e^p_j [(t_j - s^p_b) -
// (z_j - s^q_b)] taken here while both blocks and e^p are in L1, S^p_b = sum_j e^p_j and
// c^p_b the block's scale (p_j = e^p_j c^p_b). Every difference is relative to a block
// or row maximum, so large logits cost no precision (the same rounding scale as
// lp_j - lq_j element by element). e^p_j = 0 contributes exactly 0 (mul0: no 0 * inf for
// a -inf logit). The sum is in sum_block's fixed lanes.
// The mask costs two of the loop's seven FP operations and matters only where e^p_j = 0
// next to an infinite or NaN difference, which makes the unmasked sum non-finite: so the
// block is summed without it first, and again with it only if that sum is not finite.
// Bit for bit the masked sum either way (an e^p_j = 0 with a finite difference adds a
// zero of either sign, and no lane sum starting at +0 is ever -0).
template <bool MASK, class Z, class T>
KD_ROW_INLINE float fkl_cross_lanes(const Z* __restrict z, const T* __restrict t, const float* __restrict ep,
                                    int64_t n, float sz, float st) {
  vnat acc[kVecs] = {};
  int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes)
    for (int k = 0; k < kVecs; ++k) {
      const int64_t at = j + k * kVecWidth;
      const vnat e = vload(ep + at), d = (vload(t + at) - st) - (vload(z + at) - sz);
      if constexpr (MASK) acc[k] += e * (e != 0.0f ? d : vnat{});
      else acc[k] += e * d;
    }
  float b[kSumLanes];
  std::memcpy(b, acc, sizeof b);
  for (int64_t l = 0; j + l < n; ++l) b[l] += mul0(ep[j + l], (ldf(t, j + l) - st) - (ldf(z, j + l) - sz));
  return lane_tree_sum(b);
}
template <class Z, class T>
KD_ROW_INLINE float fkl_cross_block(const Z* __restrict z, const T* __restrict t, const float* __restrict ep,
                                    int64_t n, float sz, float st) {
  const float x = fkl_cross_lanes<false>(z, t, ep, n, sz, st);
  return std::isfinite(x) ? x : fkl_cross_lanes<true>(z, t, ep, n, sz, st);
}

// The forward KL gradient of one block from the cached exps alone: a1 (q_j sum_p - p_j),
// q_j sum_p = e^q_j (c^q_b sum_p), p_j = e^p_j c^p_b (the same values as fkl_block's).
#if defined(KD_ISA_avx2)
// At AVX2 every f32 element of it is this one expression on 8 lanes (a tail through masked
// loads), wherever it goes: into the row, or streamed out (fkl_grad_stream); so are bf16
// ones but a row's last < 16 elements.
struct FklGrad8 {
  __m256 cqs, cp, a1;
  FklGrad8(float cqs_, float cp_, float a1_) : cqs(_mm256_set1_ps(cqs_)), cp(_mm256_set1_ps(cp_)), a1(_mm256_set1_ps(a1_)) {}
  KD_ROW_INLINE __m256 of(__m256 eq, __m256 ep) const { return _mm256_mul_ps(a1, _mm256_fmsub_ps(eq, cqs, _mm256_mul_ps(ep, cp))); }
  KD_ROW_INLINE __m256 at(const float* eq, const float* ep) const { return of(_mm256_loadu_ps(eq), _mm256_loadu_ps(ep)); }
  static KD_ROW_INLINE __m256i first(int64_t k) {  // lanes [0, k), 0 <= k <= 8
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  KD_ROW_INLINE __m256 at(const float* eq, const float* ep, __m256i m) const {
    return of(_mm256_maskload_ps(eq, m), _mm256_maskload_ps(ep, m));
  }
};
#endif
template <class G>
KD_ROW_INLINE void fkl_grad_block(const float* __restrict eq, const float* __restrict ep, int64_t n, float cqs,
                                  float cp, float a1, G* __restrict g) {
  int64_t j = 0;
#if defined(KD_ISA_avx2)
  const FklGrad8 f(cqs, cp, a1);
  if constexpr (std::is_same_v<G, uint16_t>) {  // bf16 out: rounded and packed 16 at a time
    for (; j + 16 <= n; j += 16) store_bf16x16(g + j, f.at(eq + j, ep + j), f.at(eq + j + 8, ep + j + 8));
  } else {
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(g + j, f.at(eq + j, ep + j));
    if (j < n) {
      const __m256i m = FklGrad8::first(n - j);
      _mm256_maskstore_ps(g + j, m, f.at(eq + j, ep + j, m));
    }
    return;
  }
#endif
  for (; j < n; ++j) {
    const float p = ep[j] * cp;
    stf(g, j, a1 * (eq[j] * cqs - p));
  }
}

#if defined(KD_ISA_avx2)
// fkl_grad_block for a gradient that is streamed out, straight from the registers into
// streaming stores: the 32-byte lines that lie inside the block go out as they are
// computed (8 f32, or 16 bf16 packed by pack_bf16x16), and only the partial lines at its
// two ends pass through the LineStream (which joins a block's last partial line with the
// next block's first). The staged route (compute into an L1 block, then LineStream copies
// it out) stored and reloaded every element once more; for bf16 its bursts of streaming
// stores (64 per block) also stalled the conversion's own stores behind them (a profile
// put a third of the pass on that store). Measured for bf16 (Zen 3, bf16 512 x 32000,
// bf16 gradient, 2 threads, A/B by a run-time switch in one process, paired medians of 24
// rounds, both orders): 0.952 and 0.942 the time of the staged route. G: float or
// uint16_t (bf16); g: the block's first element in the row, aligned to sizeof(G).
template <class G>
KD_ROW_INLINE void fkl_grad_stream(const float* __restrict eq, const float* __restrict ep, int64_t n, float cqs,
                                   float cp, float a1, G* g, LineStream& out) {
  constexpr int64_t W = 32 / sizeof(G);  // elements per 32-byte line
  const FklGrad8 f(cqs, cp, a1);
  auto line = [&](int64_t at, int64_t cnt) KD_ROW_INLINE_LAMBDA {  // elements [at, at + cnt), cnt <= W
    if constexpr (W == 8) {
      return _mm256_castps_si256(cnt == 8 ? f.at(eq + at, ep + at) : f.at(eq + at, ep + at, FklGrad8::first(cnt)));
    } else {
      if (cnt == 16) return pack_bf16x16(f.at(eq + at, ep + at), f.at(eq + at + 8, ep + at + 8));
      return pack_bf16x16(f.at(eq + at, ep + at, FklGrad8::first(std::min<int64_t>(cnt, 8))),
                          f.at(eq + at + 8, ep + at + 8, FklGrad8::first(std::max<int64_t>(cnt - 8, 0))));
    }
  };
  alignas(32) G part[W];
  auto partial = [&](int64_t at, int64_t cnt) KD_ROW_INLINE_LAMBDA {  // cnt < W elements, through `out`
    _mm256_store_si256(reinterpret_cast<__m256i*>(part), line(at, cnt));
    out.put(part, cnt * int64_t(sizeof(G)), g + at);
  };
  const int64_t head = std::min<int64_t>(n, int64_t((32 - (reinterpret_cast<uintptr_t>(g) & 31)) & 31) / int64_t(sizeof(G)));
  if (head > 0) partial(0, head);
  int64_t j = head;
  for (; j + W <= n; j += W) _mm256_stream_si256(reinterpret_cast<__m256i*>(g + j), line(j, W));
  if (j < n) partial(j, n - j);
}
#endif

// Where a row's gradient blocks go (the rules: row_kernel, where g_b16 is set).
struct GradOut {
  const Plan* P = nullptr;
  Scratch* S = nullptr;
  void* grow = nullptr;
  int32_t dtype = kF32;
  bool g_f32 = false, in_place = false;
  LineStream out;  // P.stream: the gradient row, streamed block by block
  KD_ROW_INLINE float* f32(bool reads_z, int64_t off) {  // the f32 destination of a block
    return g_f32 && !P->stream && !(reads_z && in_place) ? static_cast<float*>(grow) + off : S->gbuf;
  }
  KD_ROW_INLINE uint16_t* b16(bool reads_z, int64_t off) {  // the bf16 destination (g_b16)
    return !P->stream && !(reads_z && in_place) ? static_cast<uint16_t*>(grow) + off : S->hbuf;
  }
  KD_ROW_INLINE void flush32(const float* g, int64_t off, int64_t n) {  // g: from f32()
    if (g != S->gbuf) return;
    if (!P->stream) return store_block(g, n, dtype, grow, off);
    if (g_f32) return out.put(g, n * 4, static_cast<float*>(grow) + off);
    // (bf16: converted into an L1 block, then streamed out. Measured slower: converting
    // straight into streaming stores, bf16_from_f32_hw's loop with _mm512_stream_si512,
    // bf16/f32 elem/s 0.85-0.96 against 0.99-1.03; a copy loop streams better.)
    store_block(g, n, dtype, S->hbuf, 0);
    out.put(S->hbuf, n * 2, static_cast<uint16_t*>(grow) + off);
  }
  KD_ROW_INLINE void flush16(const uint16_t* h, int64_t off, int64_t n) {  // h: from b16()
    if (h != S->hbuf) return;
    if (P->stream) out.put(h, n * 2, static_cast<uint16_t*>(grow) + off);
    else std::memcpy(static_cast<uint16_t*>(grow) + off, h, size_t(n) * 2);
  }
};

// The last pass over a row with a gradient, where it reads no input: the gradient from the
// cached rows alone (forward KL below AVX-512: e^q and e^p; the G divergences: e^q and the
// stored g; no divergence: the CE term only), plus the CE term, block by block. (Tried and
// left out: putting this pass off into the thread's next row, one block per block of that
// row's pass A, so that a streamed gradient's writes overlap the next reads. A/B on Zen 3
// at 512 x 32000, 2 threads: bf16 forward KL 1.00-1.04x, jsd 1.03x the time of running it
// here, f32 forward KL no clear gain; two rows' exps no longer fit in L2.)
struct GradPass {
  GradOut go;
  int32_t div = kNoDivergence;
  int64_t v = 0;
  const float* eq = nullptr;  // e^q
  const float* eg = nullptr;  // e^p (forward KL) or the stored g
  const float* cq = nullptr;  // per-block scales of e^q, e^p
  const float* cp = nullptr;
  float sum_p = 1.0f, a1 = 0.0f, Lf = 0.0f, Gf = 0.0f, beta = 0.0f;
  CeGrad ceg;
  bool g_b16 = false, div_grad_on = false, ce_grad = false;
  bool direct = false;  // AVX2 forward KL, f32 streamed, no CE: fkl_grad_stream
  bool direct16 = false;  // the same, bf16 (without the AVX512-BF16 conversion)

  template <class O>
  KD_ROW_INLINE void div_block(int64_t b, int64_t off, int64_t n, O* g) const {
    switch (div) {
      case kForwardKl: return fkl_grad_block(eq + off, eg + off, n, cq[b] * sum_p, cp[b], a1, g);
      case kReverseKl: return gdiv_grad_block<kReverseKl>(eq + off, eg + off, n, cq[b], a1, Lf, Gf, beta, g);
      case kJsd: return gdiv_grad_block<kJsd>(eq + off, eg + off, n, cq[b], a1, Lf, Gf, beta, g);
      case kTvd: return gdiv_grad_block<kTvd>(eq + off, eg + off, n, cq[b], a1, Lf, Gf, beta, g);
      case kSkewForwardKl: return gdiv_grad_block<kSkewForwardKl>(eq + off, eg + off, n, cq[b], a1, Lf, Gf, beta, g);
      case kSkewReverseKl: return gdiv_grad_block<kSkewReverseKl>(eq + off, eg + off, n, cq[b], a1, Lf, Gf, beta, g);
      default: return;
    }
  }
  KD_ROW_INLINE void block(int64_t b) {
    const int64_t off = b * kBlock, n = std::min(kBlock, v - off);
#if defined(KD_ISA_avx2)
    if (direct) return fkl_grad_stream(eq + off, eg + off, n, cq[b] * sum_p, cp[b], a1, static_cast<float*>(go.grow) + off, go.out);
    if (direct16) return fkl_grad_stream(eq + off, eg + off, n, cq[b] * sum_p, cp[b], a1, static_cast<uint16_t*>(go.grow) + off, go.out);
#endif
    if (g_b16) {  // (implies div_grad_on, no CE)
      uint16_t* hb = go.b16(false, off);
      div_block(b, off, n, hb);
      return go.flush16(hb, off, n);
    }
    float* gb = go.f32(false, off);
    if (div_grad_on) div_block(b, off, n, gb);
    else std::fill(gb, gb + n, 0.0f);
    if (ce_grad) ceg.add(gb, b, off, n);
    go.flush32(gb, off, n);
  }
  int64_t blocks() const { return (v + kBlock - 1) / kBlock; }
};

// Where forward KL takes its loss. AVX-512 keeps the loss in pass B (fkl_block /
// fkl_block_bf16, tuned and measured on Zen 4: pass B reads z and t again from L2, which
// holds a 32000-wide row's ~16V bytes there). Elsewhere the loss comes from pass A
// (fkl_cross_block) and pass B only writes the gradient from e^q and e^p: it reads half
// the bytes (a row's inputs and exps, 16V bytes, overflow Zen 3's 512 KiB L2 at V = 32000)
// and does a third of the work, and a call without a gradient has no pass B at all.
// Measured (Zen 3, AVX2, 512 x 32000 f32, 2 threads, median of 10 calls x 3 rounds, A/B in
// one session, with the AVX2 exp pass): forward KL 13.6-14.8 -> 11.6-11.7 ms; pass A alone
// (grad: false) 9.3 ms of it, ~1.13 ns per element per core from DRAM or L3 alike: there
// the kernel is compute-bound (48% of the floor in the 5c7f3f0 bench).
#if defined(KD_ISA_avx512)
constexpr bool kFklLossInPassA = false;
#else
constexpr bool kFklLossInPassA = true;
#endif

// A bf16 gradient of the G divergences (pass C: reverse KL, jsd, tvd, skew KLs) without the
// AVX512-BF16 conversion: rounded to bf16 in the element loop (GCC vectorises bf16_rne's
// select), or staged as f32 in L1 and converted by store_block. At AVX2 the staged route
// wins: its conversion (store_bf16x16) is ~9 operations per 8 values against ~18 for the
// vectorised select. Measured (Zen 3, bf16 512 x 32000, bf16 gradient, 2 threads, A/B by
// a run-time switch in one process, paired medians of 10-12 rounds): reverse KL 0.913,
// tvd 0.923, jsd 0.941 the time of rounding in the loop. Forward KL's bf16 gradient has its
// own AVX2 conversion (fkl_grad_block). Elsewhere the in-loop rounding stays as it was.
#if defined(KD_ISA_avx2)
constexpr bool kBf16InLoopG = false;
#else
constexpr bool kBf16InLoopG = true;
#endif

// The first pass's block max, fused into its exp sweep (row.h exp_store's max_out), at
// AVX2 (row.h kFusedBlockMax). A block after the first takes its exps relative to the running max r of the
// blocks before it, e_j = exp((x_j - r)/T), and finds its own max in the same sweep: one
// read of the block from L1 instead of two (the separate max sweep was ~10% of the
// first pass). If the block's max rises above r by more than kFusedMaxRise (in units of
// x/T, and of x for the CE's untempered exps), it is redone relative to its own max, as
// the unfused pass does for every block: so every exp argument stays <= kFusedMaxRise
// (exp8_nonpos is exact in form there, its reduction error ~2.8e-9 |x| relative) and no
// block sum overflows. Elements more than ~86 below r flush to 0 where the unfused pass
// would have kept them relative to a lower block max: their probability is below
// e^-86 of the row's largest, i.e. zero or subnormal in f32 either way. The shifts depend
// only on the row's values: bitwise identical for any thread count.
// Measured (Zen 3, 2 threads, fused / unfused by a run-time switch in one process, paired
// medians of 8-12 alternating rounds, both orders): f32 512 x 32000 forward KL
// 0.93-0.96, without a gradient 0.94-0.95, jsd 0.96-0.97, reverse KL 0.93-0.95, tvd 0.96;
// bf16 forward KL 0.96, jsd 0.97; f32 256 x 151936 forward KL 0.96, jsd 0.98, reverse
// KL 0.96.
constexpr float kFusedMaxRise = 16.0f;
KD_ROW_INLINE bool fused_max(float running) {  // running: -inf before the first block
  return kFusedBlockMax && std::isfinite(running);
}
// Pass A for one input's block b: e = exp((x - shift) * inv_t), and the block's max, the
// shift taken and the sum stored at mx[b], sh[b], sm[b]; `running` (the max of the blocks
// before) updated. Fused (above), the shift is `running` unless the block's max rises more
// than kFusedMaxRise / rise_k above it; otherwise it is the block's own max.
template <class X>
KD_ROW_INLINE void first_pass_block(const X* x, int64_t n, int64_t b, float inv_t, float rise_k, float* e,
                                    Prefetch pf, float& running, float* mx, float* sh, float* sm) {
  float m, s, sum;
  if (fused_max(running)) {
    s = running;
    sum = exp_store(x, n, s, inv_t, e, pf, true, &m);
    if (!((m - s) * rise_k <= kFusedMaxRise)) {  // redone relative to its own max
      s = block_shift(m);
      sum = exp_store(x, n, s, inv_t, e, {}, true);
    }
  } else {
    m = max_block(x, n);
    s = block_shift(m);
    sum = exp_store(x, n, s, inv_t, e, pf, true);
  }
  running = m > running ? m : running;
  mx[b] = m;
  sh[b] = s;
  sm[b] = sum;
}

template <int DIV, bool GRAD>
void row_kernel(const Plan& P, int64_t i, int64_t next, Scratch& S) {
  const DivergenceArgs& a = *P.a;
  const int64_t v = a.v;
  const int64_t nb = (v + kBlock - 1) / kBlock;
  void* grow = GRAD ? row_ptr(a.grad, a.g_dtype, a.ldg, i) : nullptr;

  if (!row_selected(a.labels, a.ignore_index, a.mask, i)) {
    if (GRAD) zero_row(grow, a.g_dtype, v);
    if (a.hard) a.hard[i] = 0.0f;
    if (a.soft) a.soft[i] = 0.0f;
    if (a.total) a.total[i] = 0.0f;
    P.rowtot[i] = 0.0f;
    return;
  }

  constexpr bool kHasDiv = DIV != kNoDivergence;
  const void* zrow = row_ptr(a.s, a.s_dtype, a.lds, i);
  const void* trow = kHasDiv ? row_ptr(a.t, a.t_dtype, a.ldt, i) : nullptr;
  float* const eq = S.row[0].data();
  float* const ep = S.row[1].data();
  float* const e0 = S.row[2].data();
  float* blk[Scratch::kStats];  // per-block statistics, indexed by Blk
  for (int k = 0; k < Scratch::kStats; ++k) blk[k] = S.blk[k].data();
  const float inv_t = P.inv_t;
  const bool own_q0 = P.ce == kCeOwn;
  const bool cen = P.ce != kCeOff && P.eps != 0.0f;

  // ---- pass A: block max + exp (+ sums), reading z and t from memory once ----------
  // (kFusedBlockMax: after the first block, a block's exps are relative to the running
  // max of the blocks before it, and its own max is taken in the same sweep; a block
  // whose max rises more than kFusedMaxRise / max(1/T, 1) above that shift is redone
  // relative to its own max.)
  float rz = -kInf, rt = -kInf;  // running maxima of the blocks so far
  const float rise_k = inv_t > 1.0f ? inv_t : 1.0f;  // z's rises bound the CE's untempered exps too
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t off = b * kBlock, n = std::min(kBlock, v - off);
    // A later block streams in from memory while this one computes.
    with_block(zrow, a.s_dtype, off, n, S.zbuf, [&](const auto* z) {
      first_pass_block(z, n, b, inv_t, rise_k, eq + off, prefetch_ahead(zrow, a.s_dtype, off, v), rz, blk[kQMax],
                       blk[kQShift], blk[kQSum]);
      const float sz = blk[kQShift][b];
      if (own_q0) {
        float* e = GRAD && P.use_hard ? e0 + off : S.tmp[0];
        blk[k0Sum][b] = exp_store(z, n, sz, 1.0f, e, {}, true);
      }
      if (cen) blk[kZCen][b] = centered_sum(z, n, sz);
    });
    if (kHasDiv) {
      with_block(trow, a.t_dtype, off, n, S.tbuf, [&](const auto* t) {
        if (P.t_raw) {  // log p = t: no shift
          blk[kPMax][b] = blk[kPShift][b] = 0.0f;
          blk[kPSum][b] = exp_store(t, n, 0.0f, 1.0f, ep + off, prefetch_ahead(trow, a.t_dtype, off, v), false);
        } else {
          first_pass_block(t, n, b, inv_t, inv_t, ep + off, prefetch_ahead(trow, a.t_dtype, off, v), rt, blk[kPMax],
                           blk[kPShift], blk[kPSum]);
        }
        const float st = blk[kPShift][b];
        if constexpr (DIV == kForwardKl && kFklLossInPassA) {
          // z's block, still in L1: in place (f32, bf16), or as staged in S.zbuf above (f16)
          // (Fusing this sum into exp_store's sweep, while t_j - st is in a register, measured
          // 8% slower on Zen 3 at AVX2: a second set of 8 lane accumulators spills. With two
          // accumulators, in the fused-max sweep: 0.98 without a gradient, 1.03 with one.)
          const float sz = blk[kQShift][b];
          if (a.s_dtype == kF16) blk[kCross][b] = fkl_cross_block(static_cast<const float*>(S.zbuf), t, ep + off, n, sz, st);
          else with_block(zrow, a.s_dtype, off, n, S.zbuf, [&](const auto* z) {
            blk[kCross][b] = fkl_cross_block(z, t, ep + off, n, sz, st);
          });
        }
      });
    }
  }
  const RowSoftmax sq = combine_blocks(blk[kQMax], blk[kQSum], nb, inv_t, blk[kQScale], blk[kQShift]);
  RowSoftmax sp;
  if (kHasDiv) {
    if (P.t_raw) {  // log p = t: no shift, scale 1; S = sum e^t is only needed as sum p
      double s = 0.0;
      for (int64_t b = 0; b < nb; ++b) {
        s += blk[kPSum][b];
        blk[kPScale][b] = 1.0f;
      }
      sp.s = s;
    } else {
      sp = combine_blocks(blk[kPMax], blk[kPSum], nb, inv_t, blk[kPScale], blk[kPShift]);
    }
  }
  // sum p: exactly 1 for a softmax (so q * sum_p == q), sum e^t for raw log-probs.
  const float sum_p = P.t_raw ? float(sp.s) : 1.0f;

  // ---- CE scalars (untempered; all relative to the row max for large logits) -------
  float ce = 0.0f;
  CeGrad ceg;
  if (P.ce != kCeOff) {
    const int32_t y = a.labels[i];
    const float zy = load_as_f32(zrow, a.s_dtype, y);  // before an in-place overwrite
    float log_s0 = sq.log_s;
    if (own_q0) log_s0 = combine_blocks(blk[kQMax], blk[k0Sum], nb, 1.0f, blk[k0Scale], blk[kQShift]).log_s;
    double mean_rel = 0.0;
    if (cen) {
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t n = std::min(kBlock, v - b * kBlock);
        mean_rel += double(blk[kZCen][b]) + double(n) * (double(blk[kQShift][b]) - double(sq.m));
      }
      mean_rel /= double(v);
    }
    ce = ce_loss(log_s0, zy - sq.m, float(mean_rel), P.eps);
    ceg.e = own_q0 ? e0 : eq;
    ceg.c = own_q0 ? blk[k0Scale] : blk[kQScale];
    ceg.y = y;
  }

  // ---- row gradient factors ----------------------------------------------------------
  const float w = a.weights ? a.weights[i] : 1.0f;
  const double rowf = P.grad_coef * double(w);
  const float a1 = float(rowf * double(P.sw) * double(inv_t));  // divergence
  if (P.use_hard) {
    ceg.a2 = float(rowf * double(P.hw));
    ceg.a3 = float(-rowf * double(P.hw) * double(P.eps) / double(v));
    ceg.ay = float(rowf * double(P.hw) * (1.0 - double(P.eps)));
  }
  const bool ce_grad = GRAD && P.use_hard;
  const bool div_grad_on = GRAD && P.use_soft;
  // Where a gradient block goes. f32: straight into the row. bf16 without a CE term (and
  // without the AVX512-BF16 conversion, and not a G divergence at AVX2: kBf16InLoopG):
  // rounded in the element loop, straight into the row. Otherwise: staged as f32 in L1 (the
  // CE term added there), then converted. Large gradients go through L1 and out with
  // streaming stores (P.stream); so does pass B of forward KL in place (it reads z while it
  // writes the same row).
  const bool g_f32 = GRAD && a.g_dtype == kF32;
  const bool g_b16 = GRAD && a.g_dtype == kBF16 && div_grad_on && !ce_grad && !has_bf16_hw() &&
                     (DIV == kForwardKl || kBf16InLoopG);
  GradOut go;
  go.P = &P, go.S = &S, go.grow = grow, go.dtype = a.g_dtype, go.g_f32 = g_f32, go.in_place = a.grad == a.s;
  // The first blocks of the thread's next row, prefetched during the last pass over this one.
  NextRowPrefetch pf_next(a.s, a.s_dtype, a.lds, kHasDiv ? a.t : nullptr, a.t_dtype, a.ldt, next, v, nb);
  // The last pass, where it reads no input (GradPass)
  GradPass gp;
  gp.go = go, gp.div = DIV, gp.v = v, gp.eq = eq, gp.eg = ep, gp.cq = blk[kQScale], gp.cp = blk[kPScale];
  gp.sum_p = sum_p, gp.a1 = a1, gp.beta = P.beta, gp.ceg = ceg;
  gp.g_b16 = g_b16, gp.div_grad_on = div_grad_on, gp.ce_grad = ce_grad;
  gp.direct = DIV == kForwardKl && P.stream && g_f32 && div_grad_on && !ce_grad && (reinterpret_cast<uintptr_t>(grow) & 3) == 0;
  gp.direct16 = DIV == kForwardKl && P.stream && g_b16 && (reinterpret_cast<uintptr_t>(grow) & 1) == 0;
  auto last_pass = [&]() {
    for (int64_t b = 0; b < gp.blocks(); ++b) {
      pf_next.step();
      gp.block(b);
    }
    gp.go.out.finish();
  };

  const RowConst rc{sq.m, sq.log_s, sp.m, sp.log_s, inv_t, P.beta, P.skew};
  double L = 0.0;

  if constexpr (DIV == kForwardKl && kFklLossInPassA) {
    // ---- the loss from pass A's block sums (fkl_cross_block), in double ----------------
    const double it = inv_t, mz = sq.m, mt = sp.m, lsq = sq.log_s, lsp = sp.log_s;
    for (int64_t b = 0; b < nb; ++b) {
      const double cp = blk[kPScale][b], sp_b = blk[kPSum][b];
      // As fkl_block's mul0(p_j, lp_j - lq_j), p_j = e_j c_b: a block with c_b = 0 adds
      // nothing, e_j = 0 adds nothing (no 0 * inf from K_b), a NaN c_b (a teacher row with
      // no finite logit: S_p = 0) makes the row NaN.
      if (cp == 0.0) continue;
      const double st = blk[kPShift][b], sz = blk[kQShift][b];
      const double k_b = it * ((st - mt) - (sz - mz)) - lsp + lsq;
      L += cp * (it * double(blk[kCross][b]) + (sp_b == 0.0 ? 0.0 : sp_b * k_b));
    }
    // ---- pass B: the gradient from e^q and e^p alone ---------------------------------
    if (GRAD) last_pass();
  } else if constexpr (DIV == kForwardKl) {
    // ---- pass B: loss and gradient in one sweep --------------------------------------
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t off = b * kBlock, n = std::min(kBlock, v - off);
      pf_next.step();
      const float cq = blk[kQScale][b], cp = blk[kPScale][b];
      float* gb = go.f32(true, off);
      uint16_t* hb = g_b16 ? go.b16(true, off) : nullptr;
      bool summed = false;
      with_blocks(zrow, a.s_dtype, trow, a.t_dtype, off, n, S, [&](const auto* z, const auto* t) {
        with_unit(inv_t, [&](auto unit) {
#if defined(KD_ISA_avx512)
          using ZT = std::remove_cv_t<std::remove_pointer_t<decltype(z)>>;
          using TT = std::remove_cv_t<std::remove_pointer_t<decltype(t)>>;
          if constexpr (std::is_same_v<ZT, uint16_t> && std::is_same_v<TT, uint16_t>) {
            if (!g_b16) {
              L += double(div_grad_on ? fkl_block_bf16<true, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, a1, sum_p, gb)
                                      : fkl_block_bf16<false, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, a1, sum_p, gb));
              summed = true;
              return;
            }
          }
#endif
          if (g_b16) fkl_block<true, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, a1, sum_p, S.tmp[0], hb);
          else if (div_grad_on) fkl_block<true, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, a1, sum_p, S.tmp[0], gb);
          else fkl_block<false, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, a1, sum_p, S.tmp[0], gb);
        });
      });
      if (!summed) L += double(sum_block(S.tmp[0], n));
      if (g_b16) {
        go.flush16(hb, off, n);
      } else if (GRAD) {
        if (!div_grad_on) std::fill(gb, gb + n, 0.0f);
        if (ce_grad) ceg.add(gb, b, off, n);
        go.flush32(gb, off, n);
      }
    }
  } else if constexpr (kHasDiv) {
    // ---- pass B: D and G = sum q g; g_j stored over e_p -------------------------------
    double G = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t off = b * kBlock, n = std::min(kBlock, v - off);
      pf_next.step();
      with_blocks(zrow, a.s_dtype, trow, a.t_dtype, off, n, S, [&](const auto* z, const auto* t) {
        with_unit(inv_t, [&](auto unit) {
          const float cq = blk[kQScale][b], cp = blk[kPScale][b];
#if defined(KD_ISA_avx512) || defined(KD_ISA_avx2)
          if constexpr (DIV == kJsd) {
            float gs = 0.0f;
#if defined(KD_ISA_avx512)
            const float pa = div_grad_on ? jsd_block16<true, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, &gs)
                                         : jsd_block16<false, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, &gs);
#else
            const float pa = div_grad_on ? jsd_block8<true, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, &gs)
                                         : jsd_block8<false, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, &gs);
#endif
            L += double(P.beta) * double(pa) + (1.0 - double(P.beta)) * double(gs);
            G += double(gs);
            return;
          }
#endif
          if (div_grad_on)
            gdiv_block<DIV, true, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, S.tmp[0], S.tmp[1]);
          else
            gdiv_block<DIV, false, unit()>(z, t, eq + off, ep + off, n, cq, cp, rc, S.tmp[0], S.tmp[1]);
        });
      });
#if defined(KD_ISA_avx512) || defined(KD_ISA_avx2)
      if constexpr (DIV == kJsd) continue;  // summed in jsd_block16 / jsd_block8
#endif
      L += double(sum_block(S.tmp[0], n));
      if (div_grad_on) G += double(sum_block(S.tmp[1], n));
    }
    // ---- pass C: the gradient from q and the stored g --------------------------------
    if (GRAD) {
      gp.Lf = float(L), gp.Gf = float(G);
      last_pass();
    }
  } else if (GRAD) {
    // ---- no divergence: the CE gradient only -----------------------------------------
    last_pass();
  }

  if (GRAD && P.stream) {
    go.out.finish();  // (forward KL's pass B at AVX-512 streams through go)
    stream_fence();
  }

  // ---- per-row outputs -------------------------------------------------------------
  const float D = kHasDiv ? float(L) : 0.0f;
  const float soft = kHasDiv ? a.soft_scale * D : 0.0f;  // per-token output: s * D, unweighted
  const float total = w * ((P.use_hard ? P.hw * ce : 0.0f) + (P.use_soft ? P.sw * D : 0.0f));
  if (a.hard) a.hard[i] = ce;
  if (a.soft) a.soft[i] = soft;
  if (a.total) a.total[i] = total;
  P.rowtot[i] = total;
}

using RowFn = void (*)(const Plan&, int64_t, int64_t, Scratch&);

template <bool GRAD>
RowFn pick(int32_t div) {
  switch (div) {
    case kForwardKl: return row_kernel<kForwardKl, GRAD>;
    case kReverseKl: return row_kernel<kReverseKl, GRAD>;
    case kJsd: return row_kernel<kJsd, GRAD>;
    case kTvd: return row_kernel<kTvd, GRAD>;
    case kSkewForwardKl: return row_kernel<kSkewForwardKl, GRAD>;
    case kSkewReverseKl: return row_kernel<kSkewReverseKl, GRAD>;
    default: return row_kernel<kNoDivergence, GRAD>;
  }
}


}  // namespace

Status divergence(const DivergenceArgs& a) {
  // ---- checks the memory safety of the loops needs (the TS layer validates the rest) --
  if (Status st = check_divergence_args(a); !st.ok()) return st;
  if (a.n == 0) {
    if (a.loss && a.reduction != kNone) *a.loss = 0.0f;
    return ok_status();
  }
  const bool has_div = a.div != kNoDivergence;
  int64_t count = 0;
  for (int64_t i = 0; i < a.n; ++i) {
    if (a.labels && a.labels[i] != a.ignore_index && (a.labels[i] < 0 || a.labels[i] >= a.v))
      return make_status(kRange, "divergence: label out of range [0, V)");
    count += row_selected(a.labels, a.ignore_index, a.mask, i) ? 1 : 0;
  }
  const double divisor = loss_divisor(a.reduction, count, a.v, a.normalizer);

  Plan P;
  P.a = &a;
  const int32_t div = effective_div(a.div, a.beta, a.skew);  // endpoints run as plain KLs
  P.inv_t = has_div ? 1.0f / a.temperature : 1.0f;
  P.t_raw = has_div && a.teacher_logprobs && a.temperature == 1.0f;
  if (a.labels && (a.hard_weight != 0.0f || a.hard))
    P.ce = (!has_div || a.temperature == 1.0f) ? kCeReuse : kCeOwn;
  P.eps = a.label_smoothing;
  P.beta = a.beta;
  P.skew = a.skew;
  P.sw = has_div ? a.soft_weight : 0.0f;
  P.hw = a.hard_weight;
  P.use_soft = has_div && a.soft_weight != 0.0f;
  P.use_hard = P.ce != kCeOff && a.hard_weight != 0.0f;
  P.grad_coef = divisor > 0.0 ? double(a.grad_scale) / divisor : 0.0;
  P.stream = a.grad && a.n * a.v * dtype_size(a.g_dtype) >= tuning::kCpuStreamBytes;

  std::vector<float> rowtot;
  try {
    rowtot.resize(size_t(a.n));
  } catch (const std::bad_alloc&) {
    return make_status(kNoMem, "divergence: out of memory");
  }
  P.rowtot = rowtot.data();

  const RowFn fn = a.grad ? pick<true>(div) : pick<false>(div);
  const int rows = (P.ce == kCeOwn && a.grad) ? 3 : 2;
  std::atomic<bool> nomem{false};
  auto run_rows = [&](int64_t b, int64_t e) {
    Scratch* S = thread_scratch(a.v, rows);
    if (!S) {
      nomem.store(true);
      return;
    }
    for (int64_t i = b; i < e; ++i) fn(P, i, i + 1 < e ? i + 1 : -1, *S);
  };
  if (a.n * a.v < tuning::kCpuSerialElems) run_rows(0, a.n);
  else parallel_for(a.n, row_grain(a.n), run_rows);
  if (nomem.load()) return make_status(kNoMem, "divergence: out of memory for scratch rows");

  if (a.loss) write_loss(rowtot.data(), a.n, a.reduction == kNone, divisor, a.loss);
  return ok_status();
}

}  // namespace kd::cpu::KD_ISA
