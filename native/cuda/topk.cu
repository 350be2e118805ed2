// topk on CUDA: per row the k largest logits (ties: lower index first; NaN first),
// sorted descending, as raw logits or log-probs at T, and tailLogProb = log of the
// softmax mass outside the top k, summed directly over the tail (common/topk.h; the CPU
// kernel native/cpu/topk.cc computes the same).
//
// One block of tuning::kCudaTopkThreads threads per row; no sort of the row, a radix
// select on the 32-bit order keys (common/topk.h), levels of 11, 11 and 10 bits:
//   1. histogram pass (reads the row from DRAM): shared-memory histogram of the top 11
//      key bits (integer atomics: the counts do not depend on the order); a block scan
//      over the bins from the top finds the bucket b holding the k-th largest, and the
//      count above it.
//   2. if (count above b) + (count in b) fits the shared candidate buffer
//      (tuning::kCudaTopkCandidates, 32 KiB), the GATHER pass reads the row again, in
//      reverse sweep order (the most recently read data, most likely still in L2): every
//      element in or above b goes to the buffer (slot by atomicAdd: the set is the same
//      whatever the order), every other element is tail and enters this thread's online
//      log-sum-exp. Otherwise (tie-heavy or flat rows) the next 11, then 10 key bits are
//      histogrammed over the row among the elements matching the bucket so far; after
//      the last level the bucket is the exact k-th key K, and if its ties still overflow
//      the buffer, a pass over contiguous per-thread index ranges finds the index of the
//      last tie that makes the top k (ties go to lower indices).
//   3. a bitonic sort (descending composite keys, <= 4096 entries) of the buffer in
//      shared memory; the first k are the top k in order, the rest is tail too.
//   4. S_top = sum over the top k of e^{(x - m)/T} (double), S_tail from the threads'
//      online sums merged in a fixed tree, tailLogProb = -log1p(S_top / S_tail), and the
//      outputs (log-probs (x - m)/T - log(S_top + S_tail)).
// Common case: 2 reads of the row (histogram + gather), O(candidates log^2) in shared
// memory; no float atomics, every sum in a fixed order: deterministic run to run.
#include <cstdint>

#include "common/topk.h"
#include "common/tuning.h"
#include "cuda/kernels.h"
#include "cuda/sparse_util.cuh"

namespace kd::cuda {
namespace {

using namespace sparse;

constexpr int kThreads = tuning::kCudaTopkThreads;
constexpr int kCap = tuning::kCudaTopkCandidates;
constexpr int kMaxBins = 2048;
static_assert(kThreads % 32 == 0 && kMaxBins % kThreads == 0 && 1024 % kThreads == 0, "bins split evenly over threads");
static_assert(kCap >= kTopkMaxK && (kCap & (kCap - 1)) == 0, "the buffer holds any top k and is a power of two");

// The bucket of the running count from the top reaching `need` over bins [0, nb)
// (thread t takes the bins nb-1-t*per .. nb-per-t*per, i.e. descending).
struct Pick {
  uint32_t bucket, above, inb;
};

__device__ Pick find_bucket(const uint32_t* hist, int nb, uint32_t need, uint32_t* scan_scratch, Pick* out) {
  const int per = nb / int(blockDim.x);
  const int hi = nb - 1 - int(threadIdx.x) * per;
  uint32_t local = 0;
  for (int b = 0; b < per; ++b) local += hist[hi - b];
  uint32_t total;
  const uint32_t pre = block_exclusive_scan(local, scan_scratch, &total);
  if (pre < need && need <= pre + local) {
    uint32_t c = pre;
    for (int b = 0; b < per; ++b) {
      const uint32_t h = hist[hi - b];
      if (c + h >= need) {
        *out = Pick{uint32_t(hi - b), c, h};
        break;
      }
      c += h;
    }
  }
  __syncthreads();
  const Pick p = *out;
  __syncthreads();
  return p;
}

template <int DT>
__global__ void __launch_bounds__(kThreads) topk_rows(TopkArgs a, float inv_t) {
  __shared__ uint32_t hist[kMaxBins];
  __shared__ uint64_t cand[kCap];
  __shared__ uint32_t scan_scratch[33];
  __shared__ Pick pick;
  __shared__ uint32_t count;
  __shared__ int64_t cut_index;
  __shared__ Lse lse_scratch[33];
  __shared__ double dbl_scratch[33];

  const int64_t i = blockIdx.x;
  const int64_t v = a.v;
  const uint32_t k = uint32_t(a.k);
  const int tid = int(threadIdx.x);
  const int nthr = int(blockDim.x);
  const void* row = static_cast<const char*>(a.x) + i * a.ldx * int64_t(sizeof(typename Elem<DT>::T));
  const bool vec = aligned16(row);
  const int64_t nchunks = (v + kChunk8 - 1) / kChunk8;

  // ---- radix select: levels of 11, 11, 10 bits -------------------------------------
  const int kShift[3] = {21, 10, 0};
  const int kBits[3] = {11, 11, 10};
  uint32_t prefix = 0;  // bucket path so far: key >> shift of the selected bucket
  uint32_t above = 0;   // elements ranked strictly above the selected bucket
  uint32_t need = k;    // how many of the bucket's elements make the top k
  int gshift = 0;
  int64_t cut = INT64_MAX;  // ties at the exact k-th key: indices <= cut are in
  for (int level = 0; level < 3; ++level) {
    const int sh = kShift[level], nb = 1 << kBits[level];
    const int up = sh + kBits[level];  // the bits already fixed are key >> up
    for (int b = tid; b < nb; b += nthr) hist[b] = 0;
    __syncthreads();
    for (int64_t c = tid; c < nchunks; c += nthr) {
      float x[8];
      const int nv = load8<DT>(row, v, c * kChunk8, vec, x);
      for (int e = 0; e < nv; ++e) {
        const uint32_t key = topk_order_key(x[e]);
        if (level == 0 || (key >> up) == prefix) atomicAdd(&hist[(key >> sh) & uint32_t(nb - 1)], 1u);
      }
    }
    __syncthreads();
    const Pick p = find_bucket(hist, nb, need, scan_scratch, &pick);
    prefix = (level == 0 ? 0u : prefix << kBits[level]) | p.bucket;
    above += p.above;
    need -= p.above;
    gshift = sh;
    if (above + p.inb <= uint32_t(kCap)) break;  // everything in or above the bucket fits
    if (level == 2) {
      // Exact key K = prefix with more ties than fit: the first `need` of them by index.
      const int64_t len = (v + nthr - 1) / nthr, lo = int64_t(tid) * len, hi = lo + len < v ? lo + len : v;
      uint32_t mine = 0;
      for (int64_t j = lo; j < hi; ++j) mine += topk_order_key(load_as_f32(row, DT, j)) == prefix ? 1u : 0u;
      uint32_t total;
      const uint32_t pre = block_exclusive_scan(mine, scan_scratch, &total);
      if (pre < need && need <= pre + mine) {
        uint32_t c = pre;
        for (int64_t j = lo; j < hi; ++j) {
          if (topk_order_key(load_as_f32(row, DT, j)) == prefix && ++c == need) {
            cut_index = j;
            break;
          }
        }
      }
      __syncthreads();
      cut = cut_index;
    }
  }

  // ---- gather: candidates to shared memory, the rest into the tail sum ---------------
  if (tid == 0) count = 0;
  __syncthreads();
  Lse tail = lse_identity();
  const int64_t sweeps = (nchunks + nthr - 1) / nthr;
  for (int64_t s = sweeps - 1; s >= 0; --s) {  // reverse: the last-read data first (L2)
    const int64_t c = s * nthr + tid;
    if (c >= nchunks) continue;
    float x[8];
    const int nv = load8<DT>(row, v, c * kChunk8, vec, x);
    for (int e = 0; e < nv; ++e) {
      const uint32_t key = topk_order_key(x[e]);
      const uint32_t kb = key >> gshift;
      const int64_t j = c * kChunk8 + e;
      if (kb > prefix || (kb == prefix && j <= cut)) {
        const uint32_t slot = atomicAdd(&count, 1u);
        cand[slot] = topk_composite(key, uint32_t(j));
      } else {
        lse_add(tail, x[e], inv_t);
      }
    }
  }
  __syncthreads();
  const uint32_t ncand = count;

  // ---- bitonic sort of the candidates, descending ------------------------------------
  uint32_t p2 = 2;
  while (p2 < ncand) p2 <<= 1;
  for (uint32_t j = ncand + tid; j < p2; j += nthr) cand[j] = 0;  // below every real key
  __syncthreads();
  for (uint32_t size = 2; size <= p2; size <<= 1) {
    for (uint32_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (uint32_t j = tid; j < p2; j += nthr) {
        const uint32_t l = j ^ stride;
        if (l > j) {
          const uint64_t x = cand[j], y = cand[l];
          const bool desc = (j & size) == 0;  // this run sorts descending
          if (desc ? x < y : x > y) {
            cand[j] = y;
            cand[l] = x;
          }
        }
      }
      __syncthreads();
    }
  }
  // Candidates past the top k are tail elements as well.
  for (uint32_t j = k + tid; j < ncand; j += nthr) lse_add(tail, topk_key_value(uint32_t(cand[j] >> 32)), inv_t);

  // ---- sums, tailLogProb, outputs ----------------------------------------------------
  const Lse t = block_reduce(tail, [inv_t](Lse x, Lse y) { return lse_merge(x, y, inv_t); }, lse_scratch);
  const float m = topk_key_value(uint32_t(cand[0] >> 32));
  const bool finite = isfinite(m);
  const double inv_td = 1.0 / double(a.temperature);
  double top = 0.0;
  if (finite)
    for (uint32_t j = tid; j < k; j += nthr) top += exp((double(topk_key_value(uint32_t(cand[j] >> 32))) - double(m)) * inv_td);
  const double s_top = block_reduce(top, [](double x, double y) { return x + y; }, dbl_scratch);
  const double s_tail = (t.m == -kInfF || !finite) ? 0.0 : double(t.s) * exp((double(t.m) - double(m)) * inv_td);
  const double nan = __builtin_nan("");
  if (tid == 0 && a.tail_logprob) {
    double tl;
    if (int64_t(k) == v) tl = -double(kInfF);
    else if (!finite || isnan(s_tail)) tl = nan;
    else if (s_tail == 0.0) tl = -double(kInfF);
    else tl = -log1p(s_top / s_tail);
    a.tail_logprob[i] = float(tl);
  }
  const double log_s = finite ? log(s_top + s_tail) : nan;
  const bool raw = !a.output_logprobs && a.values_dtype == DT;
  for (uint32_t j = tid; j < k; j += nthr) {
    const uint32_t idx = topk_composite_index(cand[j]);
    const int64_t o = i * int64_t(k) + j;
    if (a.indices) a.indices[o] = int32_t(idx);
    if (!a.values) continue;
    if (raw) {
      using T = typename Elem<DT>::T;
      static_cast<T*>(a.values)[o] = static_cast<const T*>(row)[idx];
      continue;
    }
    const float x = load_as_f32(row, DT, idx);
    const float out = a.output_logprobs ? float((double(x) - double(m)) * inv_td - log_s) : x;
    store_from_f32(a.values, a.values_dtype, o, out);
  }
}

}  // namespace

Status topk(const TopkArgs& a) {
  if (a.n < 0 || (a.n > 0 && a.v < 1)) return make_status(kShape, "topk: need n >= 0 and v >= 1");
  if (a.n == 0) return ok_status();
  if (a.k < 1 || a.k > a.v) return make_status(kInvalid, "topk: k must be in [1, V]");
  if (a.k > kTopkMaxK) return make_status(kUnsupported, "topk: the CUDA kernel supports k <= 1024");
  if (a.v > int64_t(0x7fffffff)) return make_status(kShape, "topk: V must fit in int32");
  if (a.n > int64_t(0x7fffffff)) return make_status(kShape, "topk: too many rows for one launch");
  if (!(a.temperature > 0.0f)) return make_status(kInvalid, "topk: temperature must be > 0");
  if (!dtype_is_float(a.x_dtype) || (a.values && !dtype_is_float(a.values_dtype)))
    return make_status(kDtype, "topk: logits and values must be f32, f16 or bf16");
  Status s = select_device(a.device);
  if (!s.ok()) return s;
  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  const float inv_t = 1.0f / a.temperature;
  const unsigned grid = unsigned(a.n);
  switch (a.x_dtype) {
    case kF32: KD_SPARSE_LAUNCH(topk_rows<kF32>, grid, kThreads, 0, stream, a, inv_t); break;
    case kF16: KD_SPARSE_LAUNCH(topk_rows<kF16>, grid, kThreads, 0, stream, a, inv_t); break;
    default: KD_SPARSE_LAUNCH(topk_rows<kBF16>, grid, kThreads, 0, stream, a, inv_t); break;
  }
  return launch_status();
}

}  // namespace kd::cuda
