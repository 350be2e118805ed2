// divergence: the fused forward + backward engine behind klDiv, jsd, tvd, skewKl and
// distillationLoss, on CUDA. Semantics: native/common/divergence.h, divergence_math.h,
// select.h (the CPU kernel native/cpu/divergence.cc computes the same formulas).
//
// Math, per row i (token); student z = s[i, 0:V] (row stride lds), teacher t (stride ldt):
//   q = softmax(z/T), p = softmax(t/T)   (teacher log-probs at T = 1: log p = t as given)
//   log q_j = z_j/T - lse_s     computed as ln2 * ((z_j - zmax) cs - log2 S), cs = log2(e)/T
//   D  = sum_j term(j)          (forward / reverse KL, jsd, tvd, skew KLs: div_term)
//   G  = sum_j q_j g_j          (jsd: KL(q||m); tvd, skew: g = dD/dq) for the softmax chain
//   dD/dz_j = div_grad(...)/T   forward: (q_j sum(p) - p_j)/T, reverse: q_j (lq - lp - D)/T,
//                               others: q_j (g_j - G)/T (times 1-beta for jsd)
//   CE = log sum e^(z - zmax) - (1-eps)(z_y - zmax) - eps mean(z - zmax)  (untempered)
//   dCE/dz_j = q0_j - (1-eps)[j == y] - eps/V
//   total_i = w_i (hw CE_i + sw D_i)   (a term with weight 0 is left out: no 0 * inf)
//   outputs: hard_i = CE_i, soft_i = soft_scale D_i (unweighted), total_i; 0 if unselected
//   loss = sum over selected rows of total_i / divisor (select.h), or total_i ('none')
//   grad = grad_scale / divisor * w_i (hw dCE/dz + sw dD/dz), exactly 0 on unselected rows
//
// Launch shape and why:
//  * one row per thread-block CLUSTER of cl blocks (cl = 1 before sm_90, or when the row
//    is short), kRowThreads = 512 threads per block; block rank r owns 1/cl of the row.
//  * Phase 1 streams the block's slice of z and t from DRAM ONCE with cp.async into
//    shared memory (all of it in flight at once: no register staging, full memory-level
//    parallelism) and accumulates the online softmax statistics (max, sum of exp, and for
//    forward / reverse KL the loss itself, see PairStats in common.cuh) per thread; a
//    fixed-tree block reduction and a DSMEM exchange between the cluster's blocks give
//    every block the row's statistics.
//  * Phase 2 (jsd, tvd, skew KLs only) re-reads the slice from shared memory for D and G.
//  * Phase 3 re-reads the slice from shared memory, computes the gradient and writes it
//    once with streaming (evict-first) 16-byte stores.
//  cl is the smallest power of two (<= tuning::kCudaMaxClusterBlocks) for which the slice
//  fits the shared-memory budget of tuning::kCudaRowBlocksPerSm blocks per SM. Why not
//  one block per row re-reading the row from L2: at bf16 V = 151936 a row pair is 608 KB;
//  with ~2 blocks per SM on 132 SMs that is ~160 MB between a row's first and second
//  read, far beyond the 50 MB L2, so the re-read would come from DRAM (5 instead of 3
//  bytes of traffic per 2-byte element). With cl = 8 a block holds 76 KB (+ padding to
//  whole sweeps: 80 KB) in shared memory, two blocks per SM: the re-reads cost nothing.
//  When even cl = 8 cannot hold a slice (H100/H200: f32 above V ~ 98K, bf16 above ~ 196K;
//  without clusters, e.g. A100: f32 above ~ 8K, bf16 above ~ 16K), the first sweeps are
//  staged and the rest re-read from global memory in REVERSE order, so the most recently
//  read data (the most likely to still be in L2) is re-read first.
//  * Expected traffic (bf16, N = 8192, V = 151936, cl = 8, fully staged): reads 2 x 2.49
//    GB, writes 2.49 GB = exactly the floor (each input byte read once, the gradient
//    written once) plus O(N) per-row scalars. Arithmetic per element pair, forward KL:
//    4 MUFU.EX2 and ~26 other instructions, about half the time of the memory floor on
//    an H200, so the kernel should be bandwidth bound (to be measured).
//  * Extra device memory: the caller's workspace of (n + 4) doubles: per-row totals,
//    then the selected count, the divisor and grad_scale / divisor.
// Kernels, in stream order:
//  1. count_selected (1 block; only for 'batchmean' / 'mean' with labels or a mask and no
//     normalizer): the selected count -> divisor -> grad_scale / divisor, in the workspace.
//  2. divergence_rows<DIV>: everything per row (above); per-row totals to the workspace.
//  3. reduce_loss (1 block; reduced losses only): sum of the row totals in a fixed order
//     (each thread a fixed stride of rows, then a fixed tree) in double, / divisor.
// Determinism: every sum has a fixed order for a given (V, dtypes, device), so results are
// bitwise identical run to run; the plan (cl) does not depend on whether a gradient is
// requested, so the loss is the same with and without it.
// Numerics: f32 accumulation, exponentials via ex2.approx.ftz (probabilities below 2^-126
// count as 0), -inf logits contribute exactly 0, a NaN logit makes only its row NaN.
// A label outside [0, V) (other than ignore_index) on a row with a CE term cannot be
// reported from a kernel: that row's hard loss is NaN and, when hard_weight != 0, its
// total and gradient are NaN too (lib/ range-checks labels before the launch).
#include <climits>
#include <map>
#include <mutex>
#include <tuple>

#include "common/arg_checks.h"
#include "common/divergence.h"
#include "common/divergence_math.h"
#include "common/select.h"
#include "common/tuning.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kd::cuda {
namespace {

template <int DIV>
struct DivTraits {
  static constexpr bool kTeacher = DIV != kNoDivergence;
  // D and G need normalised p and q per element: a pass of their own before the gradient.
  static constexpr bool kPhase2 = DIV == kJsd || DIV == kTvd || DIV == kSkewForwardKl || DIV == kSkewReverseKl;
  static constexpr bool kLog = DIV == kJsd || DIV == kSkewForwardKl || DIV == kSkewReverseKl;
  // Forward / reverse KL come out of phase 1's online statistics.
  static constexpr unsigned kFlags =
      (kTeacher ? kHasTeacher : 0u) | (DIV == kReverseKl ? kAccA : 0u) | (DIV == kForwardKl ? kAccB : 0u);
};

struct DivParams {
  int64_t n, v;
  const unsigned char* s; int64_t s_pitch; int32_t s_dt; bool s_vec;  // pitch in bytes
  const unsigned char* t; int64_t t_pitch; int32_t t_dt; bool t_vec;
  bool traw;                 // teacher log-probs at T = 1, used as is
  const int32_t* labels; int32_t ignore_index;
  const uint8_t* mask;
  const float* weights;
  float cs, ct;              // base-2 scales of z and t (log2(e)/T, or log2(e))
  float inv_t, beta, skew, sw, hw, eps;
  float soft_scale;          // the per-token soft output is soft_scale * D (T^2 or 1)
  bool ce;                   // compute CE (labels and (hw != 0 or the hard output))
  bool s0sep;                // CE needs its own untempered statistics (T != 1)
  bool use_hard, use_soft;   // the term enters total and grad (weight != 0)
  bool reread;               // a later phase re-reads the inputs (keep them in L2)
  unsigned char* g; int64_t g_pitch; int32_t g_dt; bool g_vec;
  float* loss_rows;          // 'none': the per-row loss
  float* hard; float* soft; float* total;
  double* ws_rows;           // reduced: per-row totals
  const double* gscale_dev;  // grad_scale / divisor from count_selected, or null:
  double gscale_host;        //   then this
  int32_t stage_sweeps;      // sweeps of the slice staged in shared memory
};

// Shared memory of divergence_rows: reduction scratch first (DivShared, kDivScratch in
// common/cuda_plan.h), then the staging area.

template <int H>
KD_DEV void load_rt(Raw8& r, const unsigned char* row, int32_t dt, int64_t col, int nv, bool vec) {
  load_chunk<H>(r, row, dt, col, nv, vec);
}

// A chunk of this block's slice, from the staging area (sweep < staged) or from global
// memory with the given cache hint.
KD_DEV void fetch(Raw8& r, const unsigned char* stage, int sweep, int staged, int tid, const unsigned char* row,
                  int32_t dt, int64_t col, int nv, bool vec, bool stream) {
  if (sweep < staged) load_staged(r, stage, sweep, tid, dt);
  else if (stream) load_chunk<kLdStream>(r, row, dt, col, nv, vec);
  else load_chunk<kLdDefault>(r, row, dt, col, nv, vec);
}

// Per-element q, p and their natural logs from the row statistics:
// log2 q = (z - zmax) cs - log2 ss (shift first: exact at the max, see common.cuh).
struct RowLogs {
  float cs, ct;      // scales
  float ms, mt;      // safe raw maxima
  float l2ss, l2zt;  // log2 of the shifted sums (l2zt = 0 for raw log-probs)
  bool traw;
};
KD_DEV float lq2_of(float z, const RowLogs& R) { return fmaf(z - R.ms, R.cs, -R.l2ss); }
KD_DEV void qp_of(float z, float t, const RowLogs& R, float& lq, float& lp, float& q, float& p) {
  const float lq2 = lq2_of(z, R);
  q = ex2(lq2);
  lq = lq2 * kLn2;
  if (R.traw) {
    p = ex2(t * kLog2e);
    lp = t;
  } else {
    const float lp2 = fmaf(t - R.mt, R.ct, -R.l2zt);
    p = ex2(lp2);
    lp = lp2 * kLn2;
  }
}

// Mixture divergences: m = a p + b q is clamped to >= 2^-100, as on the CPU
// (cpu/divergence.cc kTinyMixture): a p can underflow to 0 next to a subnormal p > 0
// (log m = -inf, p (lp - lm) = inf) and p / m would overflow in the skew gradients; the
// clamp changes only elements whose true contribution is < ~1e-28. A NaN passes.
constexpr float kTinyMixture = 7.8886091e-31f;  // 2^-100
KD_DEV float clamp_mixture(float m) { return m < kTinyMixture ? kTinyMixture : m; }

// log of the mixture (jsd: m, skew: r); equal components mix to themselves exactly.
template <int DIV>
KD_DEV float mix_log(float lq, float lp, float m) {
  return lq == lp ? lq : lg2(m) * kLn2;
}

template <int DIV>
__global__ void __launch_bounds__(kRowThreads, 2) divergence_rows(const DivParams P) {
  using Tr = DivTraits<DIV>;
  unsigned char* const smem = dev::dyn_smem();
  DivShared& sh = *reinterpret_cast<DivShared*>(smem);
  unsigned char* const stage_s = smem + kDivScratch;
  unsigned char* const stage_t = stage_s + size_t(P.stage_sweeps) * kRowThreads * 16u * size_t(chunk_words(P.s_dt));

  const unsigned cl = dev::cluster_size(), rank = dev::cluster_rank();
  const int64_t row = int64_t(blockIdx.x / cl);
  const int tid = int(threadIdx.x);
  const RowSlice sl = row_slice(P.v, int(cl), int(rank));
  unsigned char* const grow = P.g ? P.g + row * P.g_pitch : nullptr;

  // ---- unselected rows: zero gradient and outputs, nothing read -------------------------
  if (!row_selected(P.labels, P.ignore_index, P.mask, row)) {
    if (grow) {
      const float zero[kChunk] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int c = tid; c < sl.nchunks; c += kRowThreads) {
        const int64_t col = chunk_col(sl, c);
        store_chunk(grow, P.g_dt, col, chunk_len(sl, col), P.g_vec, zero);
      }
    }
    if (rank == 0 && tid == 0) {
      if (P.hard) P.hard[row] = 0.0f;
      if (P.soft) P.soft[row] = 0.0f;
      if (P.total) P.total[row] = 0.0f;
      if (P.loss_rows) P.loss_rows[row] = 0.0f;
      if (P.ws_rows) P.ws_rows[row] = 0.0;
    }
    return;  // every block of the cluster returns here: no cluster barrier is pending
  }

  const unsigned char* const srow = P.s + row * P.s_pitch;
  const unsigned char* const trow = Tr::kTeacher ? P.t + row * P.t_pitch : nullptr;

  // The label logit, read by every thread before any barrier, hence before any gradient
  // of this row is written (in place: grad may alias s).
  int32_t y = -1;
  bool bad = false;
  float zy = 0.0f;
  if (P.ce) {
    y = P.labels[row];
    bad = y < 0 || int64_t(y) >= P.v;
    if (!bad) zy = load_as_f32(srow, P.s_dt, y);
  }

  PairConsts C;
  C.cs = P.cs;
  C.ct = P.ct;
  C.traw = P.traw;
  C.s0 = P.ce && P.s0sep;
  C.zc = P.ce && P.eps != 0.0f && !bad;
  C.zref = zy;
  auto merge = [&](const PairStats& a, const PairStats& b) { return pair_merge<Tr::kFlags>(a, b, C); };

  // ---- phase 1: stage the slice (cp.async), online statistics --------------------------
  const int staged = min(P.stage_sweeps, sl.sweeps);
  for (int sw = 0; sw < staged; ++sw) {
    const int c = chunk_index(sw, tid);
    if (c < sl.nchunks) {
      const int64_t col = chunk_col(sl, c);
      const int nv = chunk_len(sl, col);
      stage_chunk(stage_s, sw, tid, srow, P.s_dt, col, nv, P.s_vec);
      if (Tr::kTeacher) stage_chunk(stage_t, sw, tid, trow, P.t_dt, col, nv, P.t_vec);
    }
    cp_async_commit();  // one group per sweep (possibly empty)
  }
  PairStats st = pair_identity(P.traw);
  for (int sw = 0; sw < sl.sweeps; ++sw) {
    const int c = chunk_index(sw, tid);
    if (c >= sl.nchunks) break;
    const int64_t col = chunk_col(sl, c);
    const int nv = chunk_len(sl, col);
    if (sw < staged) cp_async_wait_pending(staged - 1 - sw);  // this thread's copies of sweep sw
    Raw8 rs, rt;
    float z[kChunk], t[kChunk];
    // Unstaged sweeps: keep them in L2 for the re-read when a later phase needs them.
    fetch(rs, stage_s, sw, staged, tid, srow, P.s_dt, col, nv, P.s_vec, !P.reread);
    raw_to_f32(rs, P.s_dt, z);
    pad_chunk(z, nv);
    if (Tr::kTeacher) {
      fetch(rt, stage_t, sw, staged, tid, trow, P.t_dt, col, nv, P.t_vec, !P.reread);
      raw_to_f32(rt, P.t_dt, t);
      pad_chunk(t, nv);
    }
    pair_update<Tr::kFlags>(st, z, t, nv, C);
  }
  cp_async_wait_pending(0);
  st = block_allreduce(st, merge, sh.red);
  if (cl > 1) st = cluster_allreduce(st, merge, &sh.xchg, &sh.merged, cl);

  // ---- row scalars (identical in every thread of every block of the cluster) ------------
  RowLogs R;
  R.cs = P.cs;
  R.ct = P.ct;
  R.traw = P.traw;
  R.ms = safe_max(st.ms);
  R.mt = Tr::kTeacher ? safe_max(st.mt) : 0.0f;
  // The same per-row formulas as token_stats (common/cuda_rowstats.h row_results).
  const RowResults rr = row_results(st, !Tr::kTeacher || P.traw);
  const float l2ss = rr.l2ss;
  R.l2ss = l2ss;
  const float sum_p = Tr::kTeacher && P.traw ? st.st : 1.0f;  // sum p of log-probs used as is (forward KL's gradient)
  R.l2zt = Tr::kTeacher ? rr.l2zt : 0.0f;
  float L = 0.0f, G = 0.0f;
  if (DIV == kReverseKl) L = rr.rkl;
  if (DIV == kForwardKl) L = rr.fkl;
  float hard = 0.0f, l2s0 = l2ss;
  if (P.ce) {
    // Untempered statistics: the raw max is the student's (T does not move the argmax).
    l2s0 = P.s0sep ? log2f(st.s0) : l2ss;
    if (bad) {
      hard = __builtin_nanf("");
    } else {
      const float zrel = zy - st.ms;  // z_y - zmax
      const float mean_rel = P.eps != 0.0f ? st.zc / float(P.v) + zrel : 0.0f;
      hard = ce_loss(kLn2 * l2s0, zrel, mean_rel, P.eps);
    }
  }

  // ---- phase 2 (jsd, tvd, skew KLs): D and G ------------------------------------------
  if constexpr (Tr::kPhase2) {
    Sum2 acc{0.0f, 0.0f};
    for (int sw = sl.sweeps - 1; sw >= 0; --sw) {  // reverse: unstaged sweeps are freshest in L2
      const int c = chunk_index(sw, tid);
      if (c >= sl.nchunks) continue;
      const int64_t col = chunk_col(sl, c);
      const int nv = chunk_len(sl, col);
      Raw8 rs, rt;
      float z[kChunk], t[kChunk], term[kChunk], qg[kChunk];
      const bool last_use = P.g == nullptr;
      fetch(rs, stage_s, sw, staged, tid, srow, P.s_dt, col, nv, P.s_vec, last_use);
      fetch(rt, stage_t, sw, staged, tid, trow, P.t_dt, col, nv, P.t_vec, last_use);
      raw_to_f32(rs, P.s_dt, z);
      raw_to_f32(rt, P.t_dt, t);
      pad_chunk(z, nv);
      pad_chunk(t, nv);
KD_UNROLL
      for (int k = 0; k < kChunk; ++k) {
        float lq, lp, q, p;
        qp_of(z[k], t[k], R, lq, lp, q, p);
        float m = 0.0f, lm = 0.0f;
        if (Tr::kLog) {
          m = clamp_mixture(div_mixture(DIV, p, q, P.beta, P.skew));
          lm = mix_log<DIV>(lq, lp, m);
        }
        term[k] = div_term(DIV, lq, lp, q, p, lm, P.beta);
        qg[k] = mul0(q, div_g(DIV, lq, q, p, m, lm, P.skew));
      }
      acc.l += sum8(term);
      acc.g += sum8(qg);
    }
    acc = block_allreduce(acc, add2, sh.red2);
    if (cl > 1) acc = cluster_allreduce(acc, add2, &sh.xchg2, &sh.merged2, cl);
    L = acc.l;
    G = acc.g;
  }
  // No more distributed shared memory reads: let the peers go once all have arrived; we
  // wait (cluster_wait below) only before exiting, so phase 3 overlaps the barrier.
  if (cl > 1) dev::cluster_arrive();

  // ---- per-row outputs ---------------------------------------------------------------
  const float w = P.weights ? P.weights[row] : 1.0f;
  if (rank == 0 && tid == 0) {
    const float D = Tr::kTeacher ? L : 0.0f;
    const float total = w * ((P.use_hard ? P.hw * hard : 0.0f) + (P.use_soft ? P.sw * D : 0.0f));
    const float soft = P.soft_scale * D;
    if (P.hard) P.hard[row] = hard;
    if (P.soft) P.soft[row] = soft;
    if (P.total) P.total[row] = total;
    if (P.loss_rows) P.loss_rows[row] = total;
    if (P.ws_rows) P.ws_rows[row] = double(total);
  }

  // ---- phase 3: the gradient -------------------------------------------------------------
  if (grow) {
    const double rowf = (P.gscale_dev ? *P.gscale_dev : P.gscale_host) * double(w);
    const float c_div = (Tr::kTeacher && P.use_soft) ? float(rowf * double(P.sw) * double(P.inv_t)) : 0.0f;
    float c_ce = P.use_hard ? float(rowf * double(P.hw)) : 0.0f;
    if (bad && P.use_hard) c_ce = __builtin_nanf("");  // an invalid label poisons its row
    const float eps_v = P.eps / float(P.v), ome = 1.0f - P.eps;
    const bool soft_on = Tr::kTeacher && P.use_soft;
    for (int sw = sl.sweeps - 1; sw >= 0; --sw) {
      const int c = chunk_index(sw, tid);
      if (c >= sl.nchunks) continue;
      const int64_t col = chunk_col(sl, c);
      const int nv = chunk_len(sl, col);
      Raw8 rs, rt;
      float z[kChunk], t[kChunk], gv[kChunk];
      fetch(rs, stage_s, sw, staged, tid, srow, P.s_dt, col, nv, P.s_vec, true);
      raw_to_f32(rs, P.s_dt, z);
      pad_chunk(z, nv);
      if (Tr::kTeacher && soft_on) {
        fetch(rt, stage_t, sw, staged, tid, trow, P.t_dt, col, nv, P.t_vec, true);
        raw_to_f32(rt, P.t_dt, t);
        pad_chunk(t, nv);
      }
KD_UNROLL
      for (int k = 0; k < kChunk; ++k) {
        float g = 0.0f, q;
        if (soft_on) {
          float lq, lp, p;
          qp_of(z[k], t[k], R, lq, lp, q, p);
          float m = 0.0f, lm = 0.0f, gg = 0.0f;
          if (Tr::kLog) {
            m = clamp_mixture(div_mixture(DIV, p, q, P.beta, P.skew));
            lm = mix_log<DIV>(lq, lp, m);
          }
          if (Tr::kPhase2) gg = div_g(DIV, lq, q, p, m, lm, P.skew);
          const float qq = DIV == kForwardKl ? q * sum_p : q;
          g = c_div * div_grad(DIV, lq, lp, qq, p, gg, L, G, P.beta);
        } else {
          q = ex2(lq2_of(z[k], R));
        }
        if (P.use_hard) {
          const float q0 = P.s0sep ? ex2(fmaf(z[k] - R.ms, kLog2e, -l2s0)) : q;
          float dce = q0 - eps_v;
          if (col + k == int64_t(y)) dce -= ome;
          g += c_ce * dce;
        }
        gv[k] = g;
      }
      store_chunk(grow, P.g_dt, col, nv, P.g_vec, gv);
    }
  }
  if (cl > 1) dev::cluster_wait();  // our shared memory stays valid until all peers have read it
}

// ---- 1. the selected count, the divisor and grad_scale / divisor ------------------------
__global__ void __launch_bounds__(tuning::kCudaReduceThreads)
    count_selected(const int32_t* labels, int32_t ignore_index, const uint8_t* mask, int64_t n, int64_t v,
                   int32_t reduction, double normalizer, float grad_scale, double* tail) {
  long long* scratch = reinterpret_cast<long long*>(dev::dyn_smem());
  long long c = 0;
  for (int64_t i = threadIdx.x; i < n; i += tuning::kCudaReduceThreads)
    c += row_selected(labels, ignore_index, mask, i) ? 1 : 0;
  c = block_allreduce(c, [](long long a, long long b) { return a + b; }, scratch, tuning::kCudaReduceThreads);
  if (threadIdx.x == 0) {
    const double d = loss_divisor(reduction, c, v, normalizer);
    tail[0] = double(c);
    tail[1] = d;
    tail[2] = d > 0.0 ? double(grad_scale) / d : 0.0;
  }
}

// ---- 3. the reduced loss: fixed-order sum of the per-row totals --------------------------
__global__ void __launch_bounds__(tuning::kCudaReduceThreads)
    reduce_loss(const double* rows, int64_t n, const double* divisor_dev, double divisor_host, float* loss) {
  double* scratch = reinterpret_cast<double*>(dev::dyn_smem());
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += tuning::kCudaReduceThreads) acc += rows[i];
  acc = block_allreduce(acc, [](double a, double b) { return a + b; }, scratch, tuning::kCudaReduceThreads);
  if (threadIdx.x == 0) {
    const double d = divisor_dev ? *divisor_dev : divisor_host;
    *loss = d > 0.0 ? float(acc / d) : 0.0f;
  }
}

// ---- launch planning ---------------------------------------------------------------------

// The plan (common/cuda_plan.h plan_divergence_rows) on this device: its shared-memory
// attributes (cached per device), the kernel's static shared memory, and whether
// clusters can run (occupancy query per candidate cluster size).
// Plans are cached per (kernel, device, V, dtypes, restage): the attribute and occupancy
// queries cost tens of microseconds, as much as a small call's kernels. Bounded: cleared
// when it holds kPlanCacheMax plans (a trainer uses a handful of shapes).
struct PlanKey {
  const void* kernel;
  int dev;
  int64_t v;
  int32_t s_dt, t_dt;
  bool teacher, restage;
  bool operator<(const PlanKey& o) const {
    return std::tie(kernel, dev, v, s_dt, t_dt, teacher, restage) <
           std::tie(o.kernel, o.dev, o.v, o.s_dt, o.t_dt, o.teacher, o.restage);
  }
};
constexpr size_t kPlanCacheMax = 1024;
std::mutex g_plan_mu;
std::map<PlanKey, RowPlan> g_plans;

template <class K>
Status plan_rows_uncached(K kernel, int dev, int64_t v, int32_t s_dt, int32_t t_dt, bool teacher, bool restage,
                          RowPlan* out);

template <class K>
Status plan_rows(K kernel, int device, int64_t v, int32_t s_dt, int32_t t_dt, bool teacher, bool restage,
                 RowPlan* out) {
  int dev = device;
  if (dev < 0) KD_CUDA_TRY(cudaGetDevice(&dev));
  const PlanKey key{reinterpret_cast<const void*>(kernel), dev, v, s_dt, t_dt, teacher, restage};
  {
    std::lock_guard<std::mutex> lk(g_plan_mu);
    auto it = g_plans.find(key);
    if (it != g_plans.end()) {
      *out = it->second;
      return ok_status();
    }
  }
  Status s = plan_rows_uncached(kernel, dev, v, s_dt, t_dt, teacher, restage, out);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> lk(g_plan_mu);
  if (g_plans.size() >= kPlanCacheMax) g_plans.clear();
  g_plans.emplace(key, *out);
  return ok_status();
}

template <class K>
Status plan_rows_uncached(K kernel, int dev, int64_t v, int32_t s_dt, int32_t t_dt, bool teacher, bool restage,
                          RowPlan* out) {
  int major = 0;
  KD_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  SmemLimits L;
  if (Status s = smem_limits(dev, &L); !s.ok()) return s;
  cudaFuncAttributes fa;
  KD_CUDA_TRY(cudaFuncGetAttributes(&fa, kernel));
  // Clusters need sm_90 hardware AND code compiled for it (a compute_80 PTX JIT-compiled
  // on an H100 has no cluster code: __CUDA_ARCH__ was 800).
  const bool clusters = major >= 9 && fa.binaryVersion >= 90 && fa.ptxVersion >= 90;

  auto fits = [&](int cl, size_t smem) -> bool {
    // The attribute must allow smem before the occupancy query (raised only: a
    // concurrent launch with a larger plan is never undercut).
    if (!allow_smem(kernel, dev, smem).ok()) {
      (void)cudaGetLastError();
      return false;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(unsigned(cl), 1, 1);
    cfg.blockDim = dim3(kRowThreads, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = unsigned(cl);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int active = 0;
    if (cudaOccupancyMaxActiveClusters(&active, kernel, &cfg) != cudaSuccess) {
      (void)cudaGetLastError();  // not fatal: fall back to a smaller cluster
      return false;
    }
    return active >= 1;
  };
  *out = plan_divergence_rows(v, s_dt, t_dt, teacher, restage, L, int64_t(fa.sharedSizeBytes), clusters, fits);
  return ok_status();
}

template <int DIV>
Status launch_rows(DivParams P, const DivergenceArgs& a, cudaStream_t stream) {
  using Tr = DivTraits<DIV>;
  auto kernel = divergence_rows<DIV>;
  const bool restage = a.grad != nullptr || Tr::kPhase2;
  RowPlan plan;
  Status s = plan_rows(kernel, a.device, a.v, a.s_dtype, a.t_dtype, Tr::kTeacher, restage, &plan);
  if (!s.ok()) return s;
  P.stage_sweeps = plan.stage_sweeps;
  P.reread = restage;
  if (a.n > int64_t(INT_MAX) / plan.cl) return make_status(kShape, "divergence: too many rows for one launch");
  return launch(kernel, unsigned(a.n * plan.cl), unsigned(kRowThreads), plan.smem, stream, unsigned(plan.cl), P);
}


}  // namespace

Status divergence(const DivergenceArgs& a) {
  // ---- argument checks (what memory safety and the launch need; lib/ validates the rest)
  if (Status st = check_divergence_args(a); !st.ok()) return st;
  if (a.n == 0) return ok_status();  // enqueues nothing
  const bool has_div = a.div != kNoDivergence;
  const bool reduced = a.reduction != kNone;
  if (reduced && (!a.workspace || (reinterpret_cast<uintptr_t>(a.workspace) & 7u) != 0))
    return make_status(kInvalid, "divergence: CUDA needs an 8-byte aligned workspace of divergence_workspace_bytes(n)");

  Status st = select_device(a.device);
  if (!st.ok()) return st;
  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);

  // jsd at beta = 0 / 1 and the skew KLs at lambda = 0 are exactly the plain KLs.
  const int32_t div = effective_div(a.div, a.beta, a.skew);

  DivParams P = {};
  P.n = a.n;
  P.v = a.v;
  P.s = static_cast<const unsigned char*>(a.s);
  P.s_pitch = a.lds * dtype_size(a.s_dtype);
  P.s_dt = a.s_dtype;
  P.s_vec = rows_aligned16(a.s, a.lds, a.s_dtype);
  P.t = has_div ? static_cast<const unsigned char*>(a.t) : nullptr;
  P.t_pitch = has_div ? a.ldt * dtype_size(a.t_dtype) : 0;
  P.t_dt = has_div ? a.t_dtype : kF32;
  P.t_vec = has_div && rows_aligned16(a.t, a.ldt, a.t_dtype);
  P.traw = has_div && a.teacher_logprobs && a.temperature == 1.0f;
  P.labels = a.labels;
  P.ignore_index = a.ignore_index;
  P.mask = a.mask;
  P.weights = a.weights;
  // Without a divergence the student softmax IS the CE's untempered one.
  P.inv_t = has_div ? 1.0f / a.temperature : 1.0f;
  P.cs = has_div ? kLog2e / a.temperature : kLog2e;
  P.ct = P.traw ? kLog2e : P.cs;
  P.beta = a.beta;
  P.skew = a.skew;
  P.sw = has_div ? a.soft_weight : 0.0f;
  P.soft_scale = has_div ? a.soft_scale : 0.0f;
  P.hw = a.hard_weight;
  P.eps = a.label_smoothing;
  P.ce = a.labels != nullptr && (a.hard_weight != 0.0f || a.hard != nullptr);
  P.s0sep = P.ce && P.cs != kLog2e;
  P.use_hard = P.ce && a.hard_weight != 0.0f;
  P.use_soft = has_div && a.soft_weight != 0.0f;
  P.g = static_cast<unsigned char*>(a.grad);
  P.g_pitch = a.grad ? a.ldg * dtype_size(a.g_dtype) : 0;
  P.g_dt = a.grad ? a.g_dtype : kF32;
  P.g_vec = a.grad && rows_aligned16(a.grad, a.ldg, a.g_dtype);
  P.loss_rows = reduced ? nullptr : a.loss;
  P.hard = a.hard;
  P.soft = a.soft;
  P.total = a.total;
  double* ws = static_cast<double*>(a.workspace);
  P.ws_rows = reduced ? ws : nullptr;

  // ---- 1. the divisor: on the host unless it depends on the selected count -------------
  const bool selection = a.labels != nullptr || a.mask != nullptr;
  const bool need_count = reduced && selection && !(a.normalizer > 0.0) &&
                          (a.reduction == kBatchMean || a.reduction == kMean);
  // Without a selection every row counts; for 'none', 'sum' or a normalizer the count
  // only matters when it is 0, and then every row is unselected (loss 0, grad 0) anyway.
  const double host_divisor = loss_divisor(a.reduction, a.n, a.v, a.normalizer);
  double* tail = reduced ? ws + a.n : nullptr;
  if (need_count) {
    st = launch(count_selected, 1u, unsigned(tuning::kCudaReduceThreads), 33 * sizeof(long long), stream, 1u,
                a.labels, a.ignore_index, a.mask, a.n, a.v, a.reduction, a.normalizer, a.grad_scale, tail);
    if (!st.ok()) return st;
    P.gscale_dev = tail + 2;
  } else {
    P.gscale_dev = nullptr;
  }
  P.gscale_host = host_divisor > 0.0 ? double(a.grad_scale) / host_divisor : 0.0;

  // ---- 2. the rows ------------------------------------------------------------------
  switch (div) {
    case kForwardKl: st = launch_rows<kForwardKl>(P, a, stream); break;
    case kReverseKl: st = launch_rows<kReverseKl>(P, a, stream); break;
    case kJsd: st = launch_rows<kJsd>(P, a, stream); break;
    case kTvd: st = launch_rows<kTvd>(P, a, stream); break;
    case kSkewForwardKl: st = launch_rows<kSkewForwardKl>(P, a, stream); break;
    case kSkewReverseKl: st = launch_rows<kSkewReverseKl>(P, a, stream); break;
    default: st = launch_rows<kNoDivergence>(P, a, stream); break;
  }
  if (!st.ok()) return st;

  // ---- 3. the reduced loss ----------------------------------------------------------
  if (reduced && a.loss) {
    st = launch(reduce_loss, 1u, unsigned(tuning::kCudaReduceThreads), 33 * sizeof(double), stream, 1u,
                static_cast<const double*>(ws), a.n, need_count ? static_cast<const double*>(tail + 1) : nullptr,
                host_divisor, a.loss);
    if (!st.ok()) return st;
  }
  return ok_status();
}

}  // namespace kd::cuda
