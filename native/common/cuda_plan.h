// Launch geometry, shared-memory plans and reduction order of the CUDA kernels, as
// host + device code with no CUDA header: the kernels (native/cuda/*.cu) use these
// functions, and the CPU test suite calls the same functions through the debug binding
// (native/binding/cuda_debug.cc, test/cuda_plan.test.ts) with the shared-memory
// attributes of every architecture we compile for, so a wrong plan, slice or staging
// offset shows up on a machine without a GPU.
//
//  * Row geometry (divergence.cu, token_stats.cu): a row of V elements is cut into
//    CHUNKS of kChunk = 8 consecutive elements; a cluster of cl blocks splits the row into
//    cl SLICES whose widths are whole chunks (each slice starts 16-byte aligned when the
//    row does); thread tid of a block handles chunk c = sweep * kRowThreads + tid of its
//    slice in sweep `sweep`.
//  * Staging: the first stage_sweeps sweeps of a slice are copied to shared memory
//    (cp.async) at stage_offset(); the plan picks cl and stage_sweeps from the device's
//    shared-memory attributes (cudaDeviceGetAttribute, never assumed: sm_80 has 164 KB
//    per SM, sm_86 / sm_89 / sm_120 100 KB, sm_90 / sm_100 228 KB).
//  * Reduction order: one fixed tree (tree_takes) for warps, for the warps of a block and
//    for the blocks of a cluster, so sums are bitwise reproducible; block_reduce_host /
//    tree_reduce_host are its host model.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/cuda_rowstats.h"
#include "common/dtype.h"
#include "common/tuning.h"

namespace kd::cuda {

constexpr int kRowThreads = tuning::kCudaRowThreads;  // threads of the one-row blocks
constexpr int kRowWarps = kRowThreads / 32;
static_assert(kRowThreads % 32 == 0 && kRowThreads <= 1024, "row blocks are whole warps");

// ---------------------------------------------------------------------------------
// Row geometry: slices (per cluster rank), chunks, sweeps, staging layout
// ---------------------------------------------------------------------------------

KD_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct RowSlice {
  int64_t c0 = 0, c1 = 0;  // columns [c0, c1) of the row
  int32_t nchunks = 0;     // chunks of 8 (the last may be partial)
  int32_t sweeps = 0;      // ceil(nchunks / kRowThreads)
};

// Width of every slice but the last: ceil(v / cl) rounded up to a whole chunk, so each
// slice starts at a multiple of 8 elements (16-byte aligned when the row is).
KD_HD int64_t slice_width(int64_t v, int cl) { return ceil_div(ceil_div(v, cl), kChunk) * kChunk; }

KD_HD RowSlice row_slice(int64_t v, int cl, int rank) {
  RowSlice s;
  const int64_t w = slice_width(v, cl);
  s.c0 = int64_t(rank) * w < v ? int64_t(rank) * w : v;
  s.c1 = s.c0 + w < v ? s.c0 + w : v;
  s.nchunks = int32_t(ceil_div(s.c1 - s.c0, kChunk));
  s.sweeps = int32_t(ceil_div(s.nchunks, kRowThreads));
  return s;
}

// The chunk of thread tid in sweep `sweep` (valid when < nchunks), its first column and
// its number of valid elements (1..8).
KD_HD int32_t chunk_index(int sweep, int tid) { return int32_t(sweep) * kRowThreads + tid; }
KD_HD int64_t chunk_col(const RowSlice& s, int32_t c) { return s.c0 + int64_t(c) * kChunk; }
KD_HD int chunk_len(const RowSlice& s, int64_t col) { return int(s.c1 - col < kChunk ? s.c1 - col : kChunk); }

// 16-byte words per chunk of a dtype (f32: 2, f16/bf16: 1).
KD_HD int chunk_words(int32_t dt) { return dt == kF32 ? 2 : 1; }

// Byte offset of word w of the chunk of thread `tid` in sweep `sweep` in a staging area
// holding W words per chunk. Consecutive threads hold consecutive 16-byte words, so a
// warp's ld.shared.v4 is conflict-free (4 wavefronts of 128 B).
KD_HD size_t stage_offset(int sweep, int w, int W, int tid) {
  return ((size_t(sweep) * size_t(W) + size_t(w)) * size_t(kRowThreads) + size_t(tid)) * 16u;
}

// Staging bytes per sweep for a student of dtype sd and (if present) a teacher of td.
KD_HD size_t stage_bytes_per_sweep(int32_t sd, int32_t td, bool teacher) {
  return size_t(kRowThreads) * 16u * size_t(chunk_words(sd) + (teacher ? chunk_words(td) : 0));
}

// ---------------------------------------------------------------------------------
// The fixed reduction tree (warp shuffles, warps of a block, blocks of a cluster)
// ---------------------------------------------------------------------------------
//
// Over `count` <= 32 values in lanes 0..count-1: for off = 16, 8, 4, 2, 1, lane l takes
// l + off's value (as it was before this step) when l + off < count; lane 0 ends with
// the result. The device does it with __shfl_down_sync over the full warp (every lane
// shuffles, so no lane may have exited), the host model below in a loop.
constexpr int kTreeTopOffset = 16;
KD_HD bool tree_takes(int lane, int off, int count) { return lane + off < count; }

// Host model of warp_reduce: lanes[0..count) in, result in lanes[0] (lanes is modified).
template <class T, class Op>
inline T tree_reduce_host(T* lanes, int count, Op op) {
  for (int off = kTreeTopOffset; off > 0; off >>= 1)
    for (int l = 0; l < 32; ++l)  // ascending: l + off is read before it is updated
      if (tree_takes(l, off, count)) lanes[l] = op(lanes[l], lanes[l + off]);
  return lanes[0];
}

// Host model of block_allreduce: each warp's 32 values in a tree, then the warp results
// (warp 0's lanes 0..nwarps-1) in a tree.
template <class T, class Op>
inline T block_reduce_host(const T* per_thread, int threads, Op op) {
  T warp_res[32];
  const int nwarps = threads / 32;
  for (int w = 0; w < nwarps; ++w) {
    T lanes[32];
    for (int l = 0; l < 32; ++l) lanes[l] = per_thread[w * 32 + l];
    warp_res[w] = tree_reduce_host(lanes, 32, op);
  }
  return tree_reduce_host(warp_res, nwarps, op);
}

// ---------------------------------------------------------------------------------
// Shared memory: per-device limits and the row kernels' staging plan
// ---------------------------------------------------------------------------------

// The shared-memory attributes of a device (cudaDeviceGetAttribute).
struct SmemLimits {
  int64_t per_sm = 0;              // cudaDevAttrMaxSharedMemoryPerMultiprocessor
  int64_t reserved_per_block = 0;  // cudaDevAttrReservedSharedMemoryPerBlock (1 KB on sm_80+)
  int64_t optin_per_block = 0;     // cudaDevAttrMaxSharedMemoryPerBlockOptin
};

// The most dynamic shared memory a block of a kernel with `static_bytes` of static
// shared memory may use, at all (optin) or with `blocks` of them resident per SM.
inline int64_t max_dynamic_smem(const SmemLimits& L, int64_t static_bytes) {
  const int64_t r = L.optin_per_block - static_bytes;
  return r > 0 ? r : 0;
}
inline int64_t dynamic_smem_for_residency(const SmemLimits& L, int blocks, int64_t static_bytes) {
  const int64_t per_block = (L.per_sm - int64_t(blocks) * L.reserved_per_block) / blocks;
  const int64_t r = (per_block < L.optin_per_block ? per_block : L.optin_per_block) - static_bytes;
  return r > 0 ? r : 0;
}

// The divergence kernel's shared scratch (reductions and cluster exchanges), before the
// staging area.
struct Sum2 {
  float l, g;
};
KD_HD Sum2 add2(const Sum2& a, const Sum2& b) { return Sum2{a.l + b.l, a.g + b.g}; }
struct DivShared {
  PairStats red[33];
  PairStats xchg, merged;  // cluster exchange of phase 1
  Sum2 red2[33];
  Sum2 xchg2, merged2;     // cluster exchange of phase 2
};
constexpr size_t kDivScratch = (sizeof(DivShared) + 15) / 16 * 16;

struct RowPlan {
  int cl = 1;             // blocks per row (cluster size)
  int stage_sweeps = 0;   // sweeps of each block's slice staged in shared memory
  size_t smem = 0;        // dynamic shared memory per block
  size_t budget = 0;      // staging bytes a block may use
  size_t per_sweep = 0;   // staging bytes per sweep
};

// Pure planning rule: the smallest cluster whose slices fit the staging budget
// entirely; else the widest cluster that can run, staging what fits.
// fits(cl, smem): can clusters of cl blocks with smem bytes each be resident? (On the
// device: cudaOccupancyMaxActiveClusters; never asked for cl = 1.)
// restage: whether any phase re-reads the row (gradient, or jsd/tvd/skew); without it
// nothing is staged, but cl is chosen the same way so that results do not depend on it.
template <class Fits>
RowPlan choose_plan(int64_t v, size_t per_sweep, size_t scratch, size_t budget, int max_cl, bool restage, Fits&& fits) {
  RowPlan p;
  p.budget = budget;
  p.per_sweep = per_sweep;
  bool done = false;
  for (int cl = 1; cl <= max_cl && !done; cl *= 2) {
    const int sw = row_slice(v, cl, 0).sweeps;
    if (size_t(sw) * per_sweep <= budget && (cl == 1 || fits(cl, scratch + size_t(sw) * per_sweep))) {
      p.cl = cl;
      p.stage_sweeps = sw;
      done = true;
    }
  }
  for (int cl = max_cl; cl >= 1 && !done; cl /= 2) {
    const int sw = row_slice(v, cl, 0).sweeps;
    const int fit = int(budget / per_sweep < size_t(sw) ? budget / per_sweep : size_t(sw));
    if (cl == 1 || fits(cl, scratch + size_t(fit) * per_sweep)) {
      p.cl = cl;
      p.stage_sweeps = fit;
      done = true;
    }
  }
  if (!restage) p.stage_sweeps = 0;
  p.smem = scratch + size_t(p.stage_sweeps) * per_sweep;
  return p;
}

// The divergence rows kernel's plan on a device with limits L, for a kernel with
// static_bytes of static shared memory; clusters: the device and the loaded code both
// support them (sm_90+).
template <class Fits>
RowPlan plan_divergence_rows(int64_t v, int32_t s_dt, int32_t t_dt, bool teacher, bool restage, const SmemLimits& L,
                             int64_t static_bytes, bool clusters, Fits&& fits) {
  const int64_t limit = dynamic_smem_for_residency(L, tuning::kCudaRowBlocksPerSm, static_bytes);
  const size_t budget = size_t(limit) > kDivScratch ? size_t(limit) - kDivScratch : 0;
  const size_t per_sweep = stage_bytes_per_sweep(s_dt, t_dt, teacher);
  const int max_cl = clusters ? tuning::kCudaMaxClusterBlocks : 1;
  return choose_plan(v, per_sweep, kDivScratch, budget, max_cl, restage, fits);
}

// ---------------------------------------------------------------------------------
// The sparse kernels' dynamic shared memory
// ---------------------------------------------------------------------------------

// sparse_rows (sparse_kl_div.cu): p2 sort keys (8 B) + p2 leader values (4 B), p2 the
// power of two >= max(k, 2); 'bucket' adds an open-addressing id set of hsize int32
// (a power of two >= max(2k, 64): load factor <= 1/2, so a probe ends quickly).
struct SparseSmem {
  uint32_t p2 = 2, hsize = 64;
  size_t bytes = 0;
};
KD_HD SparseSmem sparse_rows_smem(int64_t k, bool bucket) {
  SparseSmem s;
  while (int64_t(s.p2) < k) s.p2 <<= 1;
  if (bucket)
    while (int64_t(s.hsize) < 2 * k) s.hsize <<= 1;
  s.bytes = size_t(s.p2) * 12u + (bucket ? size_t(s.hsize) * 4u : 0u);
  return s;
}

// sample_rows (sample_teacher.cu): the exclusive prefix sums of the proposal's chunk
// sums (uint64 per chunk of tuning::kSampleChunk elements, plus the total).
KD_HD int64_t sample_chunks(int64_t v) { return ceil_div(v, tuning::kSampleChunk); }
KD_HD size_t sample_rows_smem(int64_t v) { return size_t(sample_chunks(v) + 1) * sizeof(uint64_t); }

}  // namespace kd::cuda
