// sampleTeacher on CUDA: Sparse Logit Sampling draws (ids with replacement from
// r ∝ p^tau, weights p_id / (n r_id), log p_id). The algorithm is defined in
// common/sample_teacher.h and shared with the CPU kernel (native/cpu/sample_teacher.cc):
// the proposal is built in fixed point from correctly rounded operations and the inverse
// CDF is exact integer arithmetic, so both backends draw the same ids for a seed.
//
// One block of tuning::kCudaSampleThreads threads (16 warps) per row:
//   1. max m and NaN / +inf detection (block reduction of a max and an OR).
//   2. warp w takes the chunks w, w + 16, ... of tuning::kSampleChunk elements; in a
//      chunk lane l reads the elements 32 r + l (coalesced): q_j = sample_fixed(x_j),
//      the chunk's exact uint64 sum into shared memory, and the warp's share of
//      S = sum e^{(x - m)/T} (fixed order: lanes, fixed shuffle tree, chunks in order,
//      then the warps in order).
//   3. warp 0 turns the chunk sums into exclusive prefix sums (integers: exact).
//   4. warp w takes the draws w, w + 16, ...: 64 random bits -> t in [0, Q) -> binary
//      search of the chunk -> the warp recomputes that chunk's q_j 32 at a time with an
//      inclusive warp scan; the lane whose interval holds t is the drawn id.
// Reads: the row twice (max, proposal) plus one chunk per draw, all coalesced.
#include <cstdint>

#include "common/sample_teacher.h"
#include "common/tuning.h"
#include "cuda/kernels.h"
#include "cuda/sparse_util.cuh"

namespace kd::cuda {
namespace {

using namespace sparse;

constexpr int kThreads = tuning::kCudaSampleThreads;
constexpr int64_t kChunk = tuning::kSampleChunk;
static_assert(kThreads % 32 == 0 && kChunk % 32 == 0, "chunks are scanned 32 elements at a time");

KD_SDEV uint64_t warp_inclusive_scan(uint64_t x) {
  const int lane = int(threadIdx.x) & 31;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint64_t o = __shfl_up_sync(0xffffffffu, x, off);
    if (lane >= off) x += o;
  }
  return x;
}

template <int DT>
__global__ void __launch_bounds__(kThreads) sample_rows(SampleTeacherArgs a, float c, float inv_t, float scale, int64_t nchunks) {
  KD_SPARSE_DYN_SMEM(uint64_t, prefix);  // [nchunks + 1]: exclusive prefix sums of q, then Q
  __shared__ float max_scratch[33];
  __shared__ int flag_scratch[33];
  __shared__ double warp_sp[32];
  __shared__ double s_log_s;

  const int64_t i = blockIdx.x;
  const int64_t v = a.v, ns = a.samples;
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5, nwarps = int(blockDim.x) >> 5;
  const void* row = static_cast<const char*>(a.x) + i * a.ldx * int64_t(sizeof(typename Elem<DT>::T));
  const bool vec = aligned16(row);
  int32_t* ids = a.indices + i * ns;
  float* w = a.weights + i * ns;
  float* lp = a.logprobs ? a.logprobs + i * ns : nullptr;

  // ---- 1. max and validity -------------------------------------------------------------
  float mx = -kInfF;
  int bad = 0;
  const int64_t n8 = (v + kChunk8 - 1) / kChunk8;
  for (int64_t ch = tid; ch < n8; ch += blockDim.x) {
    float x[8];
    const int nv = load8<DT>(row, v, ch * kChunk8, vec, x);
    for (int e = 0; e < nv; ++e) {
      bad |= x[e] != x[e] ? 1 : 0;
      mx = x[e] > mx ? x[e] : mx;
    }
  }
  const float m = block_reduce(mx, [](float p, float q) { return q > p ? q : p; }, max_scratch);
  bad = block_reduce(bad, [](int p, int q) { return p | q; }, flag_scratch);
  if (bad || !(m > -kInfF && m < kInfF)) {  // NaN, +inf or nothing finite: no distribution
    const float nan = __builtin_nanf("");
    for (int64_t d = tid; d < ns; d += blockDim.x) {
      ids[d] = 0;
      w[d] = nan;
      if (lp) lp[d] = nan;
    }
    return;
  }

  // ---- 2. chunk sums of the fixed-point proposal, and S ----------------------------
  double sp = 0.0;
  for (int64_t ch = warp; ch < nchunks; ch += nwarps) {
    uint64_t qs = 0;
    float ps = 0.0f;
    for (int r = 0; r < int(kChunk / 32); ++r) {
      const int64_t j = ch * kChunk + r * 32 + lane;
      if (j < v) {
        const float x = load_as_f32(row, DT, j);
        qs += sample_fixed(x, m, c, scale);
        ps += x == -kInfF ? 0.0f : expf((x - m) * inv_t);
      }
    }
    qs = warp_reduce(qs, [](uint64_t p, uint64_t q) { return p + q; });
    ps = warp_reduce(ps, [](float p, float q) { return p + q; });
    if (lane == 0) {
      prefix[ch + 1] = qs;
      sp += double(ps);
    }
  }
  if (lane == 0) warp_sp[warp] = sp;
  __syncthreads();

  // ---- 3. exclusive prefix sums over the chunks (warp 0), log S (thread 0) -----------
  if (warp == 0) {
    const int64_t per = (nchunks + 31) / 32, lo = lane * per, hi = lo + per < nchunks ? lo + per : nchunks;
    uint64_t mine = 0;
    for (int64_t ch = lo; ch < hi; ++ch) mine += prefix[ch + 1];
    const uint64_t incl = warp_inclusive_scan(mine);
    uint64_t run = incl - mine;
    for (int64_t ch = lo; ch < hi; ++ch) {
      run += prefix[ch + 1];
      prefix[ch + 1] = run;
    }
    if (lane == 0) {
      prefix[0] = 0;
      double s = 0.0;
      for (int k = 0; k < nwarps; ++k) s += warp_sp[k];
      s_log_s = log(s);
    }
  }
  __syncthreads();
  const uint64_t Q = prefix[nchunks];  // > 0: the max element has q = 2^s
  const double log_s = s_log_s;
  const double inv_td = 1.0 / double(a.temperature);

  // ---- 4. draws -----------------------------------------------------------------------
  for (int64_t d = warp; d < ns; d += nwarps) {
    const uint64_t t = sample_mulhi(sample_random(a.seed, uint64_t(i), uint64_t(d)), Q);
    int64_t lo = 0, hi = nchunks;  // prefix[lo] <= t < prefix[hi]
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) >> 1;
      if (prefix[mid] <= t) lo = mid;
      else hi = mid;
    }
    uint64_t base = prefix[lo];
    for (int r = 0; r < int(kChunk / 32); ++r) {
      const int64_t j = lo * kChunk + r * 32 + lane;
      const float x = j < v ? load_as_f32(row, DT, j) : -kInfF;
      const uint64_t q = j < v ? sample_fixed(x, m, c, scale) : 0;
      const uint64_t incl = warp_inclusive_scan(q);
      const bool hit = t < base + incl && t >= base + incl - q;  // empty interval when q = 0
      const unsigned ballot = __ballot_sync(0xffffffffu, hit);
      if (ballot) {
        if (lane == __ffs(ballot) - 1) {
          const double logp = (double(x) - double(m)) * inv_td - log_s;
          ids[d] = int32_t(j);
          w[d] = float(exp(logp) * (double(Q) / (double(ns) * double(q))));
          if (lp) lp[d] = float(logp);
        }
        break;
      }
      base += __shfl_sync(0xffffffffu, incl, 31);
    }
  }
}

}  // namespace

Status sample_teacher(const SampleTeacherArgs& a) {
  if (a.n < 0 || (a.n > 0 && a.v < 1) || a.samples < 0) return make_status(kShape, "sampleTeacher: need n >= 0, v >= 1, samples >= 0");
  if (a.n == 0 || a.samples == 0) return ok_status();
  if (!(a.temperature > 0.0f)) return make_status(kInvalid, "sampleTeacher: temperature must be > 0");
  if (!(a.proposal_power >= 0.0f)) return make_status(kInvalid, "sampleTeacher: proposalPower must be >= 0");
  if (!dtype_is_float(a.x_dtype)) return make_status(kDtype, "sampleTeacher: logits must be f32, f16 or bf16");
  if (a.v > int64_t(0x7fffffff) || a.n > int64_t(0x7fffffff)) return make_status(kShape, "sampleTeacher: V and N must fit in int32");
  Status s = select_device(a.device);
  if (!s.ok()) return s;
  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  const int64_t nchunks = sample_chunks(a.v);  // common/cuda_plan.h
  const size_t smem = sample_rows_smem(a.v);
  const float inv_t = 1.0f / a.temperature;
  const float c = a.proposal_power / a.temperature;  // the same f32 division as the CPU
  const float scale = sample_fixed_scale(sample_fixed_shift(a.v));
  const unsigned grid = unsigned(a.n);
  switch (a.x_dtype) {
    case kF32:
      s = allow_smem(sample_rows<kF32>, a.device, smem);
      if (s.ok()) KD_SPARSE_LAUNCH(sample_rows<kF32>, grid, kThreads, smem, stream, a, c, inv_t, scale, nchunks);
      break;
    case kF16:
      s = allow_smem(sample_rows<kF16>, a.device, smem);
      if (s.ok()) KD_SPARSE_LAUNCH(sample_rows<kF16>, grid, kThreads, smem, stream, a, c, inv_t, scale, nchunks);
      break;
    default:
      s = allow_smem(sample_rows<kBF16>, a.device, smem);
      if (s.ok()) KD_SPARSE_LAUNCH(sample_rows<kBF16>, grid, kThreads, smem, stream, a, c, inv_t, scale, nchunks);
      break;
  }
  if (!s.ok()) return s;
  return launch_status();
}

}  // namespace kd::cuda
