// sparseKlDiv on the CPU: KD against a sparse teacher (k ids per row with teacher
// log-probs, or sampled ids with importance weights) with the student's full-vocabulary
// softmax. The four tail modes, their losses and gradients are in
// common/sparse_kl_div.h (derivations: test/reference/sparse.ts).
//
// Per row (rows split over the pool, each row sequential):
//   A  one read of z from memory, block by block (tuning::kCpuRowBlock, L1-sized): block
//      max, e_j = exp((z_j - blockmax)/T) cached in a scratch row, block sums -> m,
//      log S and per-block scales (cpu/row.h, as the divergence engine). 'bucket' also
//      sums the tail (non-id elements) directly: blocks without ids reuse the block sum;
//      in blocks with ids the cached e_j are taken relative to the block's non-id max
//      (the ids' share of the block sum is added in double), so every tail e_j keeps full
//      precision however much mass the ids hold. q_t is never formed as 1 - sum of the id
//      masses, and log q_t is combined over blocks in log space (q_t may be below even
//      double's range).
//   S  the k slots, in double: log q at the ids (z_id read before any gradient write, so
//      grad may alias the student), the teacher side, the loss, and per distinct id the
//      final gradient value. Slots are sorted by (id, slot) once, which groups repeated
//      ids (only 'sampled' has them) and orders their sums by slot: deterministic.
//   W  the gradient row: base coefficient * q_j (from the cached e) for every j, the ids
//      overwritten with their own value, staged per block and rounded once to the
//      gradient dtype. 'bucket': off the ids q_j (S_p - p_t/q_t)/T is formed as
//      (q_j/q_t) (S_p q_t - p_t)/T, q_j/q_t = e_j times a per-block factor <= 1, so a
//      tiny (even f32-underflowing) q_t with an O(1) ratio gives the right gradient.
// One exp per element. The loss is reduced over rows in row order in double: bitwise
// identical results for any thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "common/arg_checks.h"
#include "common/select.h"
#include "common/sparse_kl_div.h"
#include "common/tuning.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/thread_pool.h"

namespace kd::cpu::KD_ISA {
namespace {

using row::for_lanes;
using row::kLanes;
using row::lane_max;
using row::lane_sum;
using row::exp_f;
using row::kBlock;
using row::kInf;
using row::load_block;
using row::row_ptr;
using row::store_block;
using row::write_loss;
using row::zero_row;
using row::block_shift;
using row::combine_blocks;
using row::RowSoftmax;

// Blocks meet in double, in order (bitwise deterministic).
KD_ROW_INLINE float block_max(const float* __restrict x, int64_t n) {
  float mx[kLanes];
  for (int l = 0; l < kLanes; ++l) mx[l] = -kInf;
  for_lanes(n, [&](int64_t j, int l) { mx[l] = x[j] > mx[l] ? x[j] : mx[l]; });
  return lane_max(mx);
}
// e_j = exp((x_j - shift) * inv_t) stored to e; returns their sum.
KD_ROW_INLINE float exp_block(const float* __restrict x, int64_t n, float shift, float inv_t, float* __restrict e) {
  float acc[kLanes] = {};
  for_lanes(n, [&](int64_t j, int l) {
    const float y = exp_f((x[j] - shift) * inv_t);
    e[j] = y;
    acc[l] += y;
  });
  return lane_sum(acc);
}
enum Blk { kBMax, kBSum, kBScale, kTShift, kTSum, kNumBlk };

// Per-thread rows: the cached exp row, per-block arrays, L1 staging buffers.
struct Scratch {
  std::vector<float> e;
  std::vector<float> blk[kNumBlk];
  alignas(64) float zbuf[kBlock];
  alignas(64) float gbuf[kBlock];
};

Scratch* row_scratch(int64_t v) {
  static thread_local Scratch* s = nullptr;
  try {
    if (!s) s = new Scratch();
    const int64_t nb = (v + kBlock - 1) / kBlock;
    if (int64_t(s->e.size()) < v) s->e.resize(size_t(v));
    for (auto& b : s->blk)
      if (int64_t(b.size()) < nb) b.resize(size_t(nb));
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
  return s;
}

struct SlotScratch {
  std::vector<uint64_t> order;  // (id << 32 | slot), sorted
  std::vector<double> lq;       // log q at each slot's id
  std::vector<double> corr;     // the slot's correction (see row kernel)
  alignas(64) uint8_t is_id[kBlock];
};

SlotScratch* slot_scratch(int64_t k) {
  static thread_local SlotScratch* s = nullptr;
  try {
    if (!s) s = new SlotScratch();
    if (int64_t(s->order.size()) < k) {
      s->order.resize(size_t(k));
      s->lq.resize(size_t(k));
      s->corr.resize(size_t(k));
    }
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
  return s;
}

struct Plan {
  const SparseKlDivArgs* a = nullptr;
  float inv_t = 1.0f;
  double grad_coef = 0.0;
  float* rowtot = nullptr;
};

constexpr double kNaND = std::numeric_limits<double>::quiet_NaN();
constexpr double kInfD = std::numeric_limits<double>::infinity();

// log-softmax pieces of a slot vector v[0..k): max and log sum e^{v - max} (double).
void lse_parts(const double* v, int64_t k, double* mx, double* log_sum) {
  double m = -kInfD;
  bool nan = false;
  for (int64_t j = 0; j < k; ++j) {
    nan |= std::isnan(v[j]);
    m = v[j] > m ? v[j] : m;
  }
  if (nan || !std::isfinite(m)) {
    *mx = kNaND;
    *log_sum = kNaND;
    return;
  }
  double s = 0.0;
  for (int64_t j = 0; j < k; ++j) s += std::exp(v[j] - m);
  *mx = m;
  *log_sum = std::log(s);
}

void row_kernel(const Plan& P, int64_t i, Scratch& S, SlotScratch& T) {
  const SparseKlDivArgs& a = *P.a;
  const int64_t v = a.v, k = a.k;
  const int64_t nb = (v + kBlock - 1) / kBlock;
  void* grow = a.grad ? row_ptr(a.grad, a.g_dtype, a.ldg, i) : nullptr;
  if (!row_selected(a.labels, a.ignore_index, a.mask, i)) {
    if (grow) zero_row(grow, a.g_dtype, v);
    P.rowtot[i] = 0.0f;
    return;
  }
  const void* zrow = row_ptr(a.s, a.s_dtype, a.lds, i);
  const int32_t* ids = a.ids + i * k;
  float* const eq = S.e.data();
  float* blk[kNumBlk];
  for (int b = 0; b < kNumBlk; ++b) blk[b] = S.blk[b].data();
  const float inv_t = P.inv_t;
  const double inv_td = 1.0 / double(a.temperature);
  const int32_t tail = a.tail;

  uint64_t* order = T.order.data();
  for (int64_t j = 0; j < k; ++j) order[j] = (uint64_t(uint32_t(ids[j])) << 32) | uint64_t(j);
  std::sort(order, order + k);

  // ---- pass A: block max, cached exp, block sums (+ the direct tail sum) -----------
  int64_t p = 0;  // next entry of `order` (ids ascending)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t off = b * kBlock, n = std::min(kBlock, v - off);
    const float* z = load_block(zrow, a.s_dtype, off, n, S.zbuf);
    const float mz = block_max(z, n), sz = block_shift(mz);
    blk[kBMax][b] = mz;
    int64_t p2 = p;
    if (tail == kBucket)
      while (p2 < k && int64_t(order[p2] >> 32) < off + n) ++p2;
    if (p2 == p) {  // not 'bucket', or no id here: the whole block is tail
      blk[kBSum][b] = exp_block(z, n, sz, inv_t, eq + off);
      blk[kTShift][b] = sz;
      blk[kTSum][b] = blk[kBSum][b];
      continue;
    }
    // 'bucket', a block with ids: the cached e_j are taken relative to the block's tail
    // (non-id) max tm, so that e_j = (q_j / q_t) * e^{(tm - m)/T - log S_t} keeps full
    // precision for every tail element whatever the ids' mass (pass W forms q_j / q_t from
    // them, never q_j and q_t separately). The ids' e_j (possibly +inf) are never read.
    uint8_t* is_id = T.is_id;
    std::memset(is_id, 0, size_t(n));
    for (int64_t q = p; q < p2; ++q) is_id[int64_t(order[q] >> 32) - off] = 1;
    float mx[kLanes];
    for (int l = 0; l < kLanes; ++l) mx[l] = -kInf;
    for_lanes(n, [&](int64_t j, int l) { mx[l] = (!is_id[j] && z[j] > mx[l]) ? z[j] : mx[l]; });
    float tm = -kInf;
    for (int l = 0; l < kLanes; ++l) tm = mx[l] > tm ? mx[l] : tm;
    const float tshift = tm == -kInf ? sz : tm;
    const float all = exp_block(z, n, tshift, inv_t, eq + off);
    float ts = 0.0f;
    {
      const float* e = eq + off;
      float acc[kLanes] = {};
      // e_j off the ids as a bit mask (is_id is 0 or 1), bit for bit the select
      // `is_id[j] ? 0.0f : e[j]`, which GCC 12 -O3 -mavx2 miscompiles in this lane loop:
      // the AVX2 build summed wrong values (a standalone 16-element repro: 2.860 against
      // 3.131) and sparseKlDiv 'bucket' failed its reference tests on AVX2-only CPUs.
      for_lanes(n, [&](int64_t j, int l) { acc[l] += row::bitsf(row::fbits(e[j]) & (uint32_t(is_id[j]) - 1u)); });
      ts = lane_sum(acc);
    }
    if (tshift == sz) {
      blk[kBSum][b] = all;
    } else {  // the block sum relative to its max: the tail part rescaled, the ids in double
      double bs = double(ts) * std::exp((double(tshift) - double(sz)) * inv_td);
      for (int64_t q = p; q < p2; ++q) bs += std::exp((double(z[int64_t(order[q] >> 32) - off]) - double(sz)) * inv_td);
      blk[kBSum][b] = float(bs);
    }
    p = p2;
    blk[kTShift][b] = tshift;
    blk[kTSum][b] = ts;
  }
  const RowSoftmax sq = combine_blocks(blk[kBMax], blk[kBSum], nb, inv_t, blk[kBScale]);
  const double m = double(sq.m);
  const double log_s = std::log(sq.s);

  // ---- slots: log q at the ids, the loss, per-slot corrections ---------------------
  double* lq = T.lq.data();
  double* corr = T.corr.data();
  for (int64_t j = 0; j < k; ++j) lq[j] = (double(load_as_f32(zrow, a.s_dtype, ids[j])) - m) * inv_td - log_s;
  double L = 0.0;
  double A = 0.0;       // ids: gradient = A q_id - sum of their slots' corrections
  double a_all = 0.0;   // every other element: a_all q_j
  const int vdt = a.values_dtype;
  auto value = [&](int64_t j) { return double(load_as_f32(a.values, vdt, i * k + j)); };
  if (tail == kSampled) {
    const float* w = a.sample_weights + i * k;
    double W = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      const double wj = w[j];
      corr[j] = wj * inv_td;
      if (wj == 0.0) continue;  // 0 log q = 0, even for q = 0
      L -= wj * lq[j];
      W += wj;
    }
    A = a_all = W * inv_td;
  } else if (tail == kBucket) {
    const double lpt = a.tail_logprob[i];
    const double pt = std::exp(lpt);
    double sp = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      const double vj = value(j), pj = std::exp(vj);
      corr[j] = pj * inv_td;
      sp += pj;
      if (pj != 0.0) L += pj * (vj - lq[j]);
    }
    sp += pt;
    // log S_t, the tail sum relative to m like S, in log space (S_t itself may be below
    // double's range): lst = log sum_b t_b e^{(shift_b - m)/T}, each t_b >= 1 (or NaN).
    double lmax = -kInfD;
    for (int64_t b = 0; b < nb; ++b)
      if (blk[kTSum][b] != 0.0f) {
        const double lb = std::log(double(blk[kTSum][b])) + (double(blk[kTShift][b]) - m) * inv_td;
        lmax = lb > lmax || lb != lb ? lb : lmax;
      }
    double lst = lmax;
    if (std::isfinite(lmax)) {
      double st = 0.0;
      for (int64_t b = 0; b < nb; ++b)
        if (blk[kTSum][b] != 0.0f) st += double(blk[kTSum][b]) * std::exp((double(blk[kTShift][b]) - m) * inv_td - lmax);
      lst = lmax + std::log(st);
    }
    const double lqt = lst - log_s;  // -inf when there is no tail
    if (pt != 0.0) L += pt * (lpt - lqt);
    A = sp * inv_td;
    // Off the ids dz_j = q_j (S_p - p_t/q_t)/T = (q_j/q_t) (S_p q_t - p_t)/T, and in block b
    // q_j/q_t = e_j e^{(shift_b - m)/T - lst} (<= 1): pass W scales e_j by a per-block
    // factor (kBScale), so neither q_j nor q_t is ever formed in f32 (q_t may underflow
    // while q_j/q_t is O(1)).
    const double tcoef = P.grad_coef * (a.weights ? double(a.weights[i]) : 1.0) * double(a.soft_weight) * (sp * std::exp(lqt) - pt) * inv_td;
    for (int64_t b = 0; b < nb; ++b) {  // 0 for blocks without tail mass (every e_j off the ids is 0)
      const double r = std::exp((double(blk[kTShift][b]) - m) * inv_td - lst);
      const double c = blk[kTSum][b] == 0.0f || r == 0.0 ? 0.0 : tcoef * r;
      blk[kBScale][b] = float(log_s != log_s || lst != lst ? kNaND : c);
    }
  } else {  // renormalize, conditional: p~ = softmax(values)
    double vm, vls;
    for (int64_t j = 0; j < k; ++j) corr[j] = value(j);  // staging the values
    lse_parts(corr, k, &vm, &vls);
    double qm = 0.0, qls = 0.0;
    if (tail == kConditional) lse_parts(lq, k, &qm, &qls);
    for (int64_t j = 0; j < k; ++j) {
      const double lpj = corr[j] - vm - vls, pj = std::exp(lpj);
      const double lqj = tail == kConditional ? lq[j] - qm - qls : lq[j];
      if (pj != 0.0) L += pj * (lpj - lqj);
      corr[j] = tail == kConditional ? (pj - std::exp(lqj)) * inv_td : pj * inv_td;
    }
    A = a_all = tail == kConditional ? 0.0 : inv_td;
  }

  const double w_row = a.weights ? double(a.weights[i]) : 1.0;
  P.rowtot[i] = float(w_row * double(a.soft_weight) * L);
  if (!grow) return;

  // ---- pass W: the gradient row --------------------------------------------------------
  const double f = P.grad_coef * w_row * double(a.soft_weight);
  const float fa = float(f * a_all);
  const bool fa_finite = std::isfinite(fa);
  float* __restrict gb = S.gbuf;
  p = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t off = b * kBlock, n = std::min(kBlock, v - off);
    const float* __restrict e = eq + off;
    const float cb = blk[kBScale][b];
    if (tail == kConditional) std::fill(gb, gb + n, 0.0f);
    else if (tail == kBucket) {  // gb = cb * e_j, cb as computed above; 0 where e_j = 0 (no 0 * inf)
      if (std::isfinite(cb)) for (int64_t j = 0; j < n; ++j) gb[j] = cb * e[j];
      else for (int64_t j = 0; j < n; ++j) gb[j] = e[j] == 0.0f && cb == cb ? 0.0f : cb * e[j];
    } else if (fa_finite) for (int64_t j = 0; j < n; ++j) gb[j] = fa * (e[j] * cb);
    else for (int64_t j = 0; j < n; ++j) {  // fa = +-inf or NaN: 0 where q = 0 (no 0 * inf)
      const float q = e[j] * cb;
      gb[j] = q == 0.0f ? 0.0f : q * fa;
    }
    // the ids of this block, each distinct id once, its slots' corrections in slot order
    while (p < k && int64_t(order[p] >> 32) < off + n) {
      const int64_t id = int64_t(order[p] >> 32);
      const int64_t first = int64_t(order[p] & 0xffffffffu);
      double c = 0.0;
      for (; p < k && int64_t(order[p] >> 32) == id; ++p) c += corr[order[p] & 0xffffffffu];
      gb[id - off] = float(f * (A == 0.0 ? -c : A * std::exp(lq[first]) - c));
    }
    store_block(gb, n, a.g_dtype, grow, off);
  }
}

}  // namespace

Status sparse_kl_div(const SparseKlDivArgs& a) {
  if (a.n < 0 || (a.n > 0 && a.v < 1) || a.k < 0) return make_status(kShape, "sparseKlDiv: need n >= 0, v >= 1, k >= 0");
  if (a.tail < kRenormalize || a.tail > kSampled) return make_status(kInvalid, "sparseKlDiv: unknown tail mode");
  if (a.reduction < kNone || a.reduction > kBatchMean) return make_status(kInvalid, "sparseKlDiv: unknown reduction");
  if (!(a.temperature > 0.0f && a.temperature < kInf)) return make_status(kInvalid, "sparseKlDiv: temperature must be finite and > 0");
  if (a.n == 0) {
    if (a.loss && a.reduction != kNone) *a.loss = 0.0f;
    return ok_status();
  }
  if (a.k < 1) return make_status(kShape, "sparseKlDiv: the sparse teacher needs k >= 1 slots per row");
  if (a.v > int64_t(0x7fffffff)) return make_status(kShape, "sparseKlDiv: V must fit in int32");
  if (!dtype_is_float(a.s_dtype) || (a.grad && !dtype_is_float(a.g_dtype)) || (a.tail != kSampled && !dtype_is_float(a.values_dtype)))
    return make_status(kDtype, "sparseKlDiv: logits, values and gradient must be f32, f16 or bf16");
  if (!a.s || !a.ids) return make_status(kInvalid, "sparseKlDiv: missing student logits or teacher ids");
  if (a.tail == kSampled ? !a.sample_weights : !a.values) return make_status(kInvalid, "sparseKlDiv: missing teacher values or sample weights");
  if (a.tail == kBucket && !a.tail_logprob) return make_status(kInvalid, "sparseKlDiv: 'bucket' needs tailLogProb");
  if (a.lds < a.v || (a.grad && a.ldg < a.v)) return make_status(kShape, "sparseKlDiv: row strides must be >= v");
  if (a.grad) {
    const Span g = span(a.grad, a.g_dtype, a.n, a.ldg, a.v);
    const bool same = a.grad == a.s && a.g_dtype == a.s_dtype && a.ldg == a.lds;
    if (!same && overlap(g, span(a.s, a.s_dtype, a.n, a.lds, a.v)))
      return make_status(kInvalid, "sparseKlDiv: grad partially overlaps the student logits");
  }
  for (int64_t j = 0; j < a.n * a.k; ++j)
    if (a.ids[j] < 0 || a.ids[j] >= a.v) return make_status(kRange, "sparseKlDiv: a teacher id is outside [0, V)");
  int64_t count = 0;
  for (int64_t i = 0; i < a.n; ++i) count += row_selected(a.labels, a.ignore_index, a.mask, i) ? 1 : 0;
  const double divisor = loss_divisor(a.reduction, count, a.v, a.normalizer);

  Plan P;
  P.a = &a;
  P.inv_t = 1.0f / a.temperature;
  P.grad_coef = divisor > 0.0 ? double(a.grad_scale) / divisor : 0.0;
  std::vector<float> rowtot;
  try {
    rowtot.resize(size_t(a.n));
  } catch (const std::bad_alloc&) {
    return make_status(kNoMem, "sparseKlDiv: out of memory");
  }
  P.rowtot = rowtot.data();

  std::atomic<bool> nomem{false};
  auto run_rows = [&](int64_t b, int64_t e) {
    Scratch* S = row_scratch(a.v);
    SlotScratch* T = slot_scratch(a.k);
    if (!S || !T) {
      nomem.store(true);
      return;
    }
    for (int64_t i = b; i < e; ++i) row_kernel(P, i, *S, *T);
  };
  if (a.n * a.v < tuning::kCpuSerialElems) run_rows(0, a.n);
  else parallel_for(a.n, tuning::kCpuRowGrain, run_rows);
  if (nomem.load()) return make_status(kNoMem, "sparseKlDiv: out of memory for scratch rows");

  if (a.loss) write_loss(rowtot.data(), a.n, a.reduction == kNone, divisor, a.loss);
  return ok_status();
}

}  // namespace kd::cpu::KD_ISA
