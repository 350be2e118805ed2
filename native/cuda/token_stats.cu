// token_stats: per-token statistics for on-policy distillation (GKD, MiniLLM, ...), on
// CUDA, in ONE read of both rows (no gradient, no selection, no T^2 scaling). The CPU
// kernel native/cpu/token_stats.cc computes the same quantities.
//
// Math, per row i; q = softmax(z/T), p = softmax(t/T) (teacher log-probs at T = 1: log p = t
// as given, not renormalised: the divergence engine's rule):
//   forward_kl      = KL(p||q) = sum p (log p - log q)
//   reverse_kl      = KL(q||p) = sum q (log q - log p)
//   student_entropy = H(q)     = -sum q log q
//   teacher_entropy = H(p)     = -sum p log p           (0 log 0 = 0 throughout)
//   with sampled ids s: log q_s, log p_s and teacher_rank = #{j : t_j/T > t_s/T}, counted
//   on the raw t (T > 0 keeps the order; t/T in float could merge neighbours).
// All four sums are taken ONLINE in the single pass (PairStats in common.cuh: per thread a
// running max per side, the shifted sums ss, st and the shifted-log-ratio sums a, b, dq,
// dp, rescaled whenever a max grows), then merged in a fixed tree:
//   forward_kl = ln2 (b/Zt + (st/Zt)(log2 ss - log2 Zt))      Zt = st (or 1 for raw log-probs)
//   reverse_kl = ln2 (a/ss - log2 ss + log2 Zt)
//   H(q) = ln2 (log2 ss - dq/ss),   H(p) = ln2 ((st/Zt) log2 Zt - dp/Zt)
// (common/cuda_rowstats.h row_results; the CPU suite runs it in this kernel's order:
// test/cuda_plan.test.ts).
// The log-ratios are relative to the running maxima, so large logits cause no cancellation.
//
// Launch shape: one block of kRowThreads = 512 threads per row, grid = n. Each thread reads
// chunks of 8 elements (16-byte loads for f16/bf16, 2 x 16 for f32) in sweeps of 512
// chunks, the next sweep's loads issued before the current one is processed (two sweeps in
// flight per thread: ~64 KB per SM at two blocks per SM, enough to cover DRAM latency).
// Every byte is read once with evict-first loads: traffic = the floor 2 N V (dtype bytes)
// + O(N) outputs, no workspace. 2 MUFU.EX2 per element pair, no log.
// Determinism: fixed per-thread order, fixed block tree: bitwise reproducible.
// A sampled id outside [0, V) cannot be reported from a kernel: that row's log-probs are
// NaN and its rank -1 (lib/ range-checks the ids before the launch).
#include <climits>

#include "common/divergence.h"
#include "common/divergence_math.h"
#include "common/tuning.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kd::cuda {
namespace {

constexpr unsigned kTsFlags = kHasTeacher | kAccA | kAccB | kAccDq | kAccDp;

struct TsParams {
  int64_t n, v;
  const unsigned char* s; int64_t s_pitch; int32_t s_dt; bool s_vec;
  const unsigned char* t; int64_t t_pitch; int32_t t_dt; bool t_vec;
  bool traw;
  float cs, ct;
  const int32_t* sampled;
  float* forward_kl; float* reverse_kl; float* student_entropy; float* teacher_entropy;
  float* student_logprob; float* teacher_logprob; int32_t* teacher_rank;
};

struct TsAcc {
  PairStats p;
  int32_t rank;
  int32_t pad;
};

struct TsShared {
  TsAcc red[33];
};

// WS, WT: 16-byte words per chunk of student / teacher (1: f16/bf16, 2: f32), so the
// common 16-bit case carries no f32-sized buffers (registers: 64 at 2 blocks per SM).
template <int WS, int WT>
__global__ void __launch_bounds__(kRowThreads, 2) token_stats_rows(const TsParams P) {
  TsShared& sh = *reinterpret_cast<TsShared*>(dev::dyn_smem());
  const int64_t row = int64_t(blockIdx.x);
  const int tid = int(threadIdx.x);
  const RowSlice sl = row_slice(P.v, 1, 0);
  const unsigned char* const srow = P.s + row * P.s_pitch;
  const unsigned char* const trow = P.t + row * P.t_pitch;

  int32_t id = -1;
  bool bad = false;
  float zs = 0.0f, ts = 0.0f;
  if (P.sampled) {
    id = P.sampled[row];
    bad = id < 0 || int64_t(id) >= P.v;
    if (!bad) {
      zs = load_as_f32(srow, P.s_dt, id);
      ts = load_as_f32(trow, P.t_dt, id);
    }
  }
  const bool count_rank = P.sampled && !bad;

  PairConsts C;
  C.cs = P.cs;
  C.ct = P.ct;
  C.traw = P.traw;
  TsAcc acc;
  acc.p = pair_identity(P.traw);
  acc.rank = 0;
  acc.pad = 0;

  // Software pipeline: the loads of sweep k+1 are in flight while sweep k is processed.
  Raw8 ns, nt;
  int c = tid;
  if (c < sl.nchunks) {
    const int nv = int(min(int64_t(kChunk), sl.c1 - int64_t(c) * kChunk));
    load_chunk<kLdStream, WS>(ns, srow, P.s_dt, int64_t(c) * kChunk, nv, P.s_vec);
    load_chunk<kLdStream, WT>(nt, trow, P.t_dt, int64_t(c) * kChunk, nv, P.t_vec);
  }
  for (; c < sl.nchunks; c += kRowThreads) {
    const int64_t col = int64_t(c) * kChunk;
    const int nv = int(min(int64_t(kChunk), sl.c1 - col));
    const Raw8 rs = ns, rt = nt;
    const int cn = c + kRowThreads;
    if (cn < sl.nchunks) {
      const int nvn = int(min(int64_t(kChunk), sl.c1 - int64_t(cn) * kChunk));
      load_chunk<kLdStream, WS>(ns, srow, P.s_dt, int64_t(cn) * kChunk, nvn, P.s_vec);
      load_chunk<kLdStream, WT>(nt, trow, P.t_dt, int64_t(cn) * kChunk, nvn, P.t_vec);
    }
    float z[kChunk], t[kChunk];
    raw_to_f32<WS>(rs, P.s_dt, z);
    raw_to_f32<WT>(rt, P.t_dt, t);
    pad_chunk(z, nv);
    pad_chunk(t, nv);
    pair_update<kTsFlags>(acc.p, z, t, nv, C);
    if (count_rank) {
      int r = 0;
KD_UNROLL
      for (int k = 0; k < kChunk; ++k) r += t[k] > ts ? 1 : 0;  // padding is -inf: never counted
      acc.rank += r;
    }
  }
  auto merge = [&](const TsAcc& a, const TsAcc& b) {
    TsAcc o;
    o.p = pair_merge<kTsFlags>(a.p, b.p, C);
    o.rank = a.rank + b.rank;
    o.pad = 0;
    return o;
  };
  acc = block_allreduce(acc, merge, sh.red);

  if (tid == 0) {
    const PairStats& S = acc.p;
    const RowResults r = row_results(S, P.traw);  // common/cuda_rowstats.h (CPU-tested)
    const float l2ss = r.l2ss, l2zt = r.l2zt;
    P.forward_kl[row] = r.fkl;
    P.reverse_kl[row] = r.rkl;
    P.student_entropy[row] = r.hq;
    P.teacher_entropy[row] = r.hp;
    if (P.sampled) {
      if (bad) {
        P.student_logprob[row] = __builtin_nanf("");
        P.teacher_logprob[row] = __builtin_nanf("");
        P.teacher_rank[row] = -1;
      } else {
        P.student_logprob[row] = kLn2 * fmaf(zs - safe_max(S.ms), P.cs, -l2ss);
        P.teacher_logprob[row] = P.traw ? ts : kLn2 * fmaf(ts - safe_max(S.mt), P.ct, -l2zt);
        P.teacher_rank[row] = acc.rank;
      }
    }
  }
}

}  // namespace

Status token_stats(const TokenStatsArgs& a) {
  if (a.n < 0 || (a.n > 0 && a.v < 1)) return make_status(kShape, "token_stats: need n >= 0 and v >= 1");
  if (!(a.temperature > 0.0f && a.temperature < kInf))
    return make_status(kInvalid, "token_stats: temperature must be finite and > 0");
  if (a.n == 0) return ok_status();  // enqueues nothing
  if (!dtype_is_float(a.s_dtype) || !dtype_is_float(a.t_dtype))
    return make_status(kDtype, "token_stats: logits must be f32, f16 or bf16");
  if (!a.s || !a.t) return make_status(kInvalid, "token_stats: missing student or teacher logits");
  if (a.lds < a.v || a.ldt < a.v) return make_status(kShape, "token_stats: row strides must be >= v");
  if (!a.forward_kl || !a.reverse_kl || !a.student_entropy || !a.teacher_entropy)
    return make_status(kInvalid, "token_stats: missing an output");
  if (a.sampled && (!a.student_logprob || !a.teacher_logprob || !a.teacher_rank))
    return make_status(kInvalid, "token_stats: sampled ids need the log-prob and rank outputs");
  if (a.n > int64_t(INT_MAX)) return make_status(kShape, "token_stats: too many rows for one launch");

  Status st = select_device(a.device);
  if (!st.ok()) return st;

  TsParams P = {};
  P.n = a.n;
  P.v = a.v;
  P.s = static_cast<const unsigned char*>(a.s);
  P.s_pitch = a.lds * dtype_size(a.s_dtype);
  P.s_dt = a.s_dtype;
  P.s_vec = rows_aligned16(a.s, a.lds, a.s_dtype);
  P.t = static_cast<const unsigned char*>(a.t);
  P.t_pitch = a.ldt * dtype_size(a.t_dtype);
  P.t_dt = a.t_dtype;
  P.t_vec = rows_aligned16(a.t, a.ldt, a.t_dtype);
  P.traw = a.teacher_logprobs && a.temperature == 1.0f;
  P.cs = kLog2e / a.temperature;
  P.ct = P.traw ? kLog2e : P.cs;
  P.sampled = a.sampled;
  P.forward_kl = a.forward_kl;
  P.reverse_kl = a.reverse_kl;
  P.student_entropy = a.student_entropy;
  P.teacher_entropy = a.teacher_entropy;
  P.student_logprob = a.student_logprob;
  P.teacher_logprob = a.teacher_logprob;
  P.teacher_rank = a.teacher_rank;
  auto kernel = token_stats_rows<2, 2>;
  if (a.s_dtype != kF32 && a.t_dtype != kF32) kernel = token_stats_rows<1, 1>;
  else if (a.s_dtype != kF32) kernel = token_stats_rows<1, 2>;
  else if (a.t_dtype != kF32) kernel = token_stats_rows<2, 1>;
  return launch(kernel, unsigned(a.n), unsigned(kRowThreads), sizeof(TsShared), static_cast<cudaStream_t>(a.stream),
                1u, P);
}

}  // namespace kd::cuda
