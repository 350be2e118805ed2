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
// Passes (see divergence.cc): A reads both rows once, block max + cached exp + sums
// (cpu/row.h); B takes the four sums (and the rank count) from the cached exps and the
// L2-resident rows. Two exp per element, no log. Sums in fixed lanes, then over blocks in
// double: bitwise identical for any thread count.
#include <algorithm>
#include <atomic>

#include "common/divergence_math.h"
#include "common/tuning.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/thread_pool.h"

namespace kd::cpu::KD_ISA {
namespace {

using namespace row;

enum Blk { kQMax, kQSum, kQScale, kPMax, kPSum, kPScale };

struct StatsConst {
  float mq, lsq, mp, lsp, inv_t;
};

// Per-element terms of the four sums (GCC vectorises this loop; sum_block reduces).
// Z, T: float, or uint16_t for bf16 rows read in place.
template <bool UNIT, class Z, class T>
KD_ROW_INLINE void stats_block(const Z* __restrict z, const T* __restrict t, const float* __restrict eq,
                               const float* __restrict ep, int64_t n, float cq, float cp, const StatsConst& k,
                               float* __restrict fkl, float* __restrict rkl, float* __restrict hq,
                               float* __restrict hp) {
  const float mq = k.mq, lsq = k.lsq, mp = k.mp, lsp = k.lsp, it = k.inv_t;
  for (int64_t j = 0; j < n; ++j) {
    const float q = eq[j] * cq, p = ep[j] * cp;
    const float lq = log_softmax_at<UNIT>(ldf(z, j), mq, it, lsq), lp = log_softmax_at<UNIT>(ldf(t, j), mp, it, lsp);
    fkl[j] = div_term(kForwardKl, lq, lp, q, p, 0.0f, 0.0f);
    rkl[j] = div_term(kReverseKl, lq, lp, q, p, 0.0f, 0.0f);
    hq[j] = -mul0(q, lq);
    hp[j] = -mul0(p, lp);
  }
}

// #{j : t_j > ts} (an integer sum: any order gives the same count).
template <class T>
KD_ROW_INLINE int64_t count_above(const T* __restrict t, int64_t n, float ts) {
  int32_t c = 0;
  for (int64_t j = 0; j < n; ++j) c += ldf(t, j) > ts ? 1 : 0;
  return c;
}

void stats_row(const TokenStatsArgs& a, float inv_t, bool t_raw, int64_t i, int64_t next, Scratch& S) {
  const int64_t v = a.v;
  const int64_t nb = (v + kBlock - 1) / kBlock;
  const void* zrow = row_ptr(a.s, a.s_dtype, a.lds, i);
  const void* trow = row_ptr(a.t, a.t_dtype, a.ldt, i);
  float* const eq = S.row[0].data();
  float* const ep = S.row[1].data();
  float* bl[Scratch::kStats];
  for (int k = 0; k < Scratch::kStats; ++k) bl[k] = S.blk[k].data();

  // ---- pass A ----------------------------------------------------------------------
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t off = b * kBlock, n = std::min(kBlock, v - off);
    // A later block streams in from memory while this one computes.
    with_block(zrow, a.s_dtype, off, n, S.zbuf, [&](const auto* z) {
      const float mz = max_block(z, n);
      bl[kQMax][b] = mz;
      bl[kQSum][b] = exp_store(z, n, block_shift(mz), inv_t, eq + off, prefetch_ahead(zrow, a.s_dtype, off, v));
    });
    with_block(trow, a.t_dtype, off, n, S.tbuf, [&](const auto* t) {
      const float mt = t_raw ? 0.0f : max_block(t, n);
      bl[kPMax][b] = mt;
      bl[kPScale][b] = 1.0f;  // raw log-probs: p_j = e^t_j (combine_blocks overwrites otherwise)
      bl[kPSum][b] = exp_store(t, n, t_raw ? 0.0f : block_shift(mt), t_raw ? 1.0f : inv_t, ep + off,
                               prefetch_ahead(trow, a.t_dtype, off, v));
    });
  }
  const RowSoftmax sq = combine_blocks(bl[kQMax], bl[kQSum], nb, inv_t, bl[kQScale]);
  RowSoftmax sp;  // raw log-probs: m = 0, log S = 0, scale 1
  if (!t_raw) sp = combine_blocks(bl[kPMax], bl[kPSum], nb, inv_t, bl[kPScale]);
  const float mq = sq.m, lsq = sq.log_s, mp = sp.m, lsp = sp.log_s;

  // ---- the sampled token (read before pass B so the rank count can ride along) -------
  const bool has_s = a.sampled != nullptr;
  float ts = 0.0f;
  if (has_s) {
    const int32_t id = a.sampled[i];
    const float zs = load_as_f32(zrow, a.s_dtype, id);
    ts = load_as_f32(trow, a.t_dtype, id);
    a.student_logprob[i] = (zs - mq) * inv_t - lsq;
    a.teacher_logprob[i] = (ts - mp) * inv_t - lsp;
  }

  // ---- pass B ----------------------------------------------------------------------
  const StatsConst k{mq, lsq, mp, lsp, inv_t};
  double fkl = 0.0, rkl = 0.0, hq = 0.0, hp = 0.0;
  int64_t rank = 0;
  NextRowPrefetch pf_next(a.s, a.s_dtype, a.lds, a.t, a.t_dtype, a.ldt, next, v, nb);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t off = b * kBlock, n = std::min(kBlock, v - off);
    pf_next.step();
    with_blocks(zrow, a.s_dtype, trow, a.t_dtype, off, n, S, [&](const auto* z, const auto* t) {
      with_unit(inv_t, [&](auto unit) {
        stats_block<unit()>(z, t, eq + off, ep + off, n, bl[kQScale][b], bl[kPScale][b], k, S.tmp[0], S.tmp[1],
                            S.tmp[2], S.tmp[3]);
      });
      if (has_s) rank += count_above(t, n, ts);
    });
    fkl += double(sum_block(S.tmp[0], n));
    rkl += double(sum_block(S.tmp[1], n));
    hq += double(sum_block(S.tmp[2], n));
    hp += double(sum_block(S.tmp[3], n));
  }
  a.forward_kl[i] = float(fkl);
  a.reverse_kl[i] = float(rkl);
  a.student_entropy[i] = float(hq);
  a.teacher_entropy[i] = float(hp);
  if (has_s) a.teacher_rank[i] = int32_t(rank);
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
    Scratch* S = thread_scratch(a.v, 2);
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
