// Shared device helpers of the CUDA kernels: error checks that return a Status, launches
// (clusters, dynamic shared memory), 16-byte vector loads and stores with cache hints,
// cp.async staging, and deterministic block / cluster reductions. The geometry, plans and
// softmax statistics they use are in native/common/cuda_plan.h and cuda_rowstats.h.
//
// Conventions used by every row kernel (divergence.cu, token_stats.cu):
//  * A row is cut into CHUNKS of 8 consecutive elements (one 16-byte load for f16/bf16,
//    two for f32). Thread `tid` of a block handles chunk `sweep * kRowThreads + tid` in
//    sweep `sweep`, so a warp touches 512 (or 1024) contiguous bytes per load: fully
//    coalesced. The same chunk->thread mapping is used whether the row is 16-byte
//    aligned (vector loads) or not (element loads), so both paths sum in the same order
//    and give bitwise-identical results.
//  * A row may be split over a thread-block CLUSTER of `cl` blocks (sm_90+): block rank r
//    owns the columns [c0, c1) of row_slice(v, cl, r); the slices are multiples of 8
//    elements, so every block starts 16-byte aligned when the row does.
//  * Statistics are kept in base 2: a = (x - running max) * log2(e) / T, so that one
//    MUFU.EX2 per element (ex2.approx.ftz: ~2 ulp, results below 2^-126 flush to 0) does
//    the exp (online softmax: the max is subtracted before scaling, exactly 0 at the max).
//    Entries of -inf (banned tokens) contribute exactly 0, never NaN.
//  * Reductions have a fixed shape (per-thread sums in chunk order, a fixed shuffle tree
//    per warp, a fixed tree over warps, then cluster ranks 0..cl-1 in a fixed tree), so
//    results are bitwise reproducible run to run. No float atomics anywhere.
//
// The parts that need no GPU (row geometry, staging layout, shared-memory plans, the
// reduction tree, the online softmax statistics) live in native/common/cuda_plan.h and
// native/common/cuda_rowstats.h, which the CPU test suite runs (test/cuda_plan.test.ts).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cuda_plan.h"
#include "common/cuda_rowstats.h"
#include "common/divergence_math.h"
#include "common/dtype.h"
#include "common/status.h"
#include "common/tuning.h"
#include "cuda/runtime.h"

#define KD_DEV __device__ __forceinline__

// ---------------------------------------------------------------------------------
// CUDA-only primitives
// ---------------------------------------------------------------------------------
namespace kd::cuda::dev {

// Dynamic shared memory of the block (all shared memory of the row kernels is dynamic).
KD_DEV unsigned char* dyn_smem() {
  extern __shared__ __align__(16) unsigned char kd_dyn_smem[];
  return kd_dyn_smem;
}

KD_DEV void block_sync() { __syncthreads(); }

KD_DEV uint32_t shfl_down(uint32_t v, int off) { return __shfl_down_sync(0xffffffffu, v, off); }

// Cluster primitives: a launch without a cluster attribute is a cluster of one block.
KD_DEV unsigned cluster_size() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return __clusterSizeInBlocks();
#else
  return 1u;
#endif
}
KD_DEV unsigned cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return __clusterRelativeBlockRank();
#else
  return 0u;
#endif
}
// barrier.cluster.arrive (release) / wait (acquire): all threads of all blocks of the
// cluster must call them, in arrive/wait pairs.
KD_DEV void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __cluster_barrier_arrive();
#endif
}
KD_DEV void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __cluster_barrier_wait();
#endif
}
template <class T>
KD_DEV T* cluster_map(T* p, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return static_cast<T*>(__cluster_map_shared_rank(p, rank));
#else
  (void)rank;
  return p;
#endif
}

}  // namespace kd::cuda::dev

namespace kd::cuda {

// ---------------------------------------------------------------------------------
// Errors: every CUDA call of a launcher goes through KD_CUDA_TRY; never exit, never throw.
// ---------------------------------------------------------------------------------

// The message says when the error is sticky (the context is lost: restart the process).
inline Status cuda_error(cudaError_t e) { return make_status(kCuda, error_message(int(e))); }

#define KD_CUDA_TRY(call)                                              \
  do {                                                                 \
    const cudaError_t kd_err_ = (call);                                \
    if (kd_err_ != cudaSuccess) return ::kd::cuda::cuda_error(kd_err_); \
  } while (0)

// Lets `kernel` be launched with `bytes` of dynamic shared memory on `device` (the
// current one if < 0): cudaFuncSetAttribute above 48 KB, raised only, once per kernel
// and device, under a lock (runtime.cu), so concurrent callers never lower it under
// each other's launch; fails with a clear message when the device cannot give that
// much (cudaDevAttrMaxSharedMemoryPerBlockOptin minus the kernel's static shared memory).
template <class K>
inline Status allow_smem(K kernel, int device, size_t bytes) {
  return allow_dynamic_smem(reinterpret_cast<const void*>(kernel), device, bytes);
}

// Launches `kernel` with a cudaLaunchKernelEx config (optionally as clusters of
// `cluster` blocks along x; the grid must be a multiple of it), after allow_smem, then
// checks cudaGetLastError as well.
template <class... Params, class... Args>
inline Status launch(void (*kernel)(Params...), unsigned grid, unsigned block, size_t smem, cudaStream_t stream,
                     unsigned cluster, Args&&... args) {
  if (cluster == 0 || grid % cluster != 0) return make_status(kInvalid, "launch: the grid is not a whole number of clusters");
  if (Status s = allow_smem(kernel, -1, smem); !s.ok()) return s;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid, 1, 1);
  cfg.blockDim = dim3(block, 1, 1);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  if (cluster > 1) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  KD_CUDA_TRY(cudaLaunchKernelEx(&cfg, kernel, static_cast<Args&&>(args)...));
  KD_CUDA_TRY(cudaGetLastError());
  return ok_status();
}

// Selects args.device (device < 0: keep the current one).
inline Status select_device(int32_t device) {
  if (device >= 0) KD_CUDA_TRY(cudaSetDevice(device));
  return ok_status();
}

// Is every row of a matrix 16-byte aligned (base and row pitch)? Then whole chunks can
// use 16-byte vector accesses.
inline bool rows_aligned16(const void* base, int64_t ld, int32_t dt) {
  return (reinterpret_cast<uintptr_t>(base) & 15u) == 0 && ((ld * dtype_size(dt)) & 15) == 0;
}

// ---------------------------------------------------------------------------------
// Memory access: chunks of 8 elements as raw bits, converted to f32 after the load
// ---------------------------------------------------------------------------------

// 8 elements as raw bits: f32 uses u[0..7]; f16/bf16 use u[0..3] (element 2k in the low
// half of u[k], 2k+1 in the high half), u[4..7] are unused.
struct Raw8 {
  uint32_t u[8];
};

enum LoadHint : int {
  kLdDefault = 0,  // ld.global: allocate in L2 normally (data we will read again)
  kLdStream = 1,   // ld.global.cs: evict-first (last use, or data staged in smem)
};

struct alignas(16) Word4 {
  uint32_t x, y, z, w;
};

template <int H>
KD_HD Word4 ld_word(const unsigned char* p) {
#if defined(__CUDA_ARCH__)
  uint4 v = H == kLdStream ? __ldcs(reinterpret_cast<const uint4*>(p)) : *reinterpret_cast<const uint4*>(p);
  return Word4{v.x, v.y, v.z, v.w};
#else
  Word4 v;
  std::memcpy(&v, p, 16);
  return v;
#endif
}

// Streaming 16-byte store (st.global.cs): the gradient is written once and not read back
// by us, so it must not evict the input rows that a later pass re-reads from L2.
KD_HD void st_word_stream(unsigned char* p, const Word4& v) {
#if defined(__CUDA_ARCH__)
  __stcs(reinterpret_cast<uint4*>(p), make_uint4(v.x, v.y, v.z, v.w));
#else
  std::memcpy(p, &v, 16);
#endif
}

KD_HD uint32_t ld_u32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
KD_HD uint32_t ld_u16(const unsigned char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Loads elements [col, col + nv) (nv in 1..8, col a multiple of 8) of a row of dtype dt.
// vec: the row is 16-byte aligned, so a whole chunk may use vector loads. Missing
// elements (nv < 8) read as 0 bits; callers pad them (pad_chunk).
// WMAX = 1: the caller guarantees a 16-bit dtype (the f32 code and registers drop out).
template <int H, int WMAX = 2>
KD_HD void load_chunk(Raw8& r, const unsigned char* row, int32_t dt, int64_t col, int nv, bool vec) {
  const int es = WMAX == 1 ? 2 : dtype_size(dt);
  const unsigned char* p = row + col * es;
  if (vec && nv == kChunk) {
    const Word4 a = ld_word<H>(p);
    r.u[0] = a.x; r.u[1] = a.y; r.u[2] = a.z; r.u[3] = a.w;
    if (es == 4) {
      const Word4 b = ld_word<H>(p + 16);
      r.u[4] = b.x; r.u[5] = b.y; r.u[6] = b.z; r.u[7] = b.w;
    } else {
      r.u[4] = r.u[5] = r.u[6] = r.u[7] = 0;
    }
    return;
  }
  if (es == 4) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) r.u[k] = k < nv ? ld_u32(p + 4 * k) : 0u;
  } else {
KD_UNROLL
    for (int k = 0; k < 4; ++k) {
      const uint32_t lo = 2 * k < nv ? ld_u16(p + 4 * k) : 0u;
      const uint32_t hi = 2 * k + 1 < nv ? ld_u16(p + 4 * k + 2) : 0u;
      r.u[k] = lo | (hi << 16);
    }
KD_UNROLL
    for (int k = 4; k < kChunk; ++k) r.u[k] = 0u;
  }
}

KD_HD float half_bits_to_f32(uint32_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
#else
  return f16_to_f32(static_cast<uint16_t>(h));
#endif
}

// Raw bits -> f32 (exact for every dtype). WMAX = 1: dt is known to be 16-bit.
template <int WMAX = 2>
KD_HD void raw_to_f32(const Raw8& r, int32_t dt, float* x) {
  if (WMAX == 2 && dt == kF32) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) x[k] = bits_f32(r.u[k]);
  } else if (dt == kBF16) {
KD_UNROLL
    for (int k = 0; k < 4; ++k) {
      x[2 * k] = bits_f32(r.u[k] << 16);
      x[2 * k + 1] = bits_f32(r.u[k] & 0xffff0000u);
    }
  } else {
KD_UNROLL
    for (int k = 0; k < 4; ++k) {
      x[2 * k] = half_bits_to_f32(r.u[k] & 0xffffu);
      x[2 * k + 1] = half_bits_to_f32(r.u[k] >> 16);
    }
  }
}

// Two f32 -> two 16-bit values (RNE; bit-identical to dtype.h except NaN payloads),
// packed low = a, high = b.
KD_HD uint32_t pack2_16(int32_t dt, float a, float b) {
#if defined(__CUDA_ARCH__)
  uint32_t u;
  if (dt == kBF16) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    std::memcpy(&u, &h, 4);
  } else {
    const __half2 h = __floats2half2_rn(a, b);
    std::memcpy(&u, &h, 4);
  }
  return u;
#else
  if (dt == kBF16) return uint32_t(f32_to_bf16(a)) | (uint32_t(f32_to_bf16(b)) << 16);
  return uint32_t(f32_to_f16(a)) | (uint32_t(f32_to_f16(b)) << 16);
#endif
}

// Stores v[0..nv) at elements [col, col + nv) of a row of dtype dt (streaming stores for
// whole aligned chunks, element stores otherwise).
KD_HD void store_chunk(unsigned char* row, int32_t dt, int64_t col, int nv, bool vec, const float* v) {
  const int es = dtype_size(dt);
  unsigned char* p = row + col * es;
  if (dt == kF32) {
    if (vec && nv == kChunk) {
      st_word_stream(p, Word4{f32_bits(v[0]), f32_bits(v[1]), f32_bits(v[2]), f32_bits(v[3])});
      st_word_stream(p + 16, Word4{f32_bits(v[4]), f32_bits(v[5]), f32_bits(v[6]), f32_bits(v[7])});
    } else {
KD_UNROLL
      for (int k = 0; k < kChunk; ++k)
        if (k < nv) std::memcpy(p + 4 * k, &v[k], 4);
    }
    return;
  }
  uint32_t w[4];
KD_UNROLL
  for (int k = 0; k < 4; ++k) w[k] = pack2_16(dt, v[2 * k], v[2 * k + 1]);
  if (vec && nv == kChunk) {
    st_word_stream(p, Word4{w[0], w[1], w[2], w[3]});
  } else {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) {
      if (k < nv) {
        const uint16_t h = uint16_t((k & 1) ? (w[k >> 1] >> 16) : (w[k >> 1] & 0xffffu));
        std::memcpy(p + 2 * k, &h, 2);
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// Shared-memory staging with cp.async (sm_80+): global -> smem without registers, so a
// block can have its whole slice in flight at once.
// ---------------------------------------------------------------------------------

KD_HD void cp_async16(unsigned char* smem, const unsigned char* gmem) {
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#else
  std::memcpy(smem, gmem, 16);
#endif
}

KD_HD void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `pending` of this thread's most recent cp.async groups are still
// in flight (more than 7 allowed: waits for all but 7, which is merely conservative).
KD_HD void cp_async_wait_pending(int pending) {
#if defined(__CUDA_ARCH__)
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;\n" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;\n" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 7;\n" ::: "memory"); break;
  }
#else
  (void)pending;
#endif
}

KD_HD void st_smem_word(unsigned char* p, const Word4& v) { *reinterpret_cast<Word4*>(p) = v; }
KD_HD Word4 ld_smem_word(const unsigned char* p) { return *reinterpret_cast<const Word4*>(p); }

// Issues the copy of one chunk into the staging area (whole aligned chunks: cp.async;
// otherwise a synchronous element load and st.shared; both visible to this thread after
// cp_async_wait_pending, which is the only thread that reads the chunk back).
KD_HD void stage_chunk(unsigned char* stage, int sweep, int tid, const unsigned char* row, int32_t dt, int64_t col,
                       int nv, bool vec) {
  const int W = chunk_words(dt);
  if (vec && nv == kChunk) {
    const unsigned char* p = row + col * dtype_size(dt);
KD_UNROLL
    for (int w = 0; w < 2; ++w)
      if (w < W) cp_async16(stage + stage_offset(sweep, w, W, tid), p + 16 * w);
  } else {
    Raw8 r;
    load_chunk<kLdStream>(r, row, dt, col, nv, false);
KD_UNROLL
    for (int w = 0; w < 2; ++w)
      if (w < W)
        st_smem_word(stage + stage_offset(sweep, w, W, tid), Word4{r.u[4 * w], r.u[4 * w + 1], r.u[4 * w + 2], r.u[4 * w + 3]});
  }
}

KD_HD void load_staged(Raw8& r, const unsigned char* stage, int sweep, int tid, int32_t dt) {
  const int W = chunk_words(dt);
KD_UNROLL
  for (int w = 0; w < 2; ++w) {
    if (w < W) {
      const Word4 a = ld_smem_word(stage + stage_offset(sweep, w, W, tid));
      r.u[4 * w] = a.x; r.u[4 * w + 1] = a.y; r.u[4 * w + 2] = a.z; r.u[4 * w + 3] = a.w;
    } else {
      r.u[4 * w] = r.u[4 * w + 1] = r.u[4 * w + 2] = r.u[4 * w + 3] = 0u;
    }
  }
}

// ---------------------------------------------------------------------------------
// Deterministic block and cluster reductions
// ---------------------------------------------------------------------------------

// Shuffle of a trivially copyable struct, word by word.
template <class T>
KD_DEV T shfl_down_struct(const T& v, int off) {
  static_assert(sizeof(T) % 4 == 0, "shuffled structs are made of 32-bit words");
  uint32_t w[sizeof(T) / 4];
  std::memcpy(w, &v, sizeof(T));
KD_UNROLL
  for (unsigned i = 0; i < sizeof(T) / 4; ++i) w[i] = dev::shfl_down(w[i], off);
  T r;
  std::memcpy(&r, w, sizeof(T));
  return r;
}

// Fixed-tree reduction over the first `count` lanes (<= 32) of a warp; lane 0 gets it.
// The order is cuda_plan.h's tree (tree_takes; host model tree_reduce_host). Every lane
// of the warp must be here: the shuffles name the full mask.
template <class T, class Op>
KD_DEV T warp_reduce(T v, int count, Op op) {
  const int lane = int(threadIdx.x) & 31;
KD_UNROLL
  for (int off = kTreeTopOffset; off > 0; off >>= 1) {
    const T o = shfl_down_struct(v, off);
    if (tree_takes(lane, off, count)) v = op(v, o);
  }
  return v;
}

// Reduces one value per thread over the block (kRowThreads or `threads` threads) with a
// fixed tree: lanes of each warp, then warp results in warp 0. Every thread returns the
// result. `scratch` is shared memory for 33 values, private to this call site (slot 32
// is read after the second barrier; reusing the same scratch for the same T is safe).
template <class T, class Op>
KD_DEV T block_allreduce(T v, Op op, T* scratch, int threads = kRowThreads) {
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5, nwarps = threads / 32;
  v = warp_reduce(v, 32, op);
  if (lane == 0) scratch[warp] = v;
  dev::block_sync();
  if (warp == 0) {
    v = scratch[lane < nwarps ? lane : 0];
    v = warp_reduce(v, nwarps, op);
    if (lane == 0) scratch[32] = v;
  }
  dev::block_sync();
  return scratch[32];
}

// Combines one value per block (identical in all threads of a block) over the cluster:
// each block publishes it in `slot` (its own shared memory), then warp 0 of every block
// reads all cl slots through distributed shared memory and folds them in the same fixed
// tree, so every block ends up with bitwise the same result. `out` is this call site's
// own shared slot. Barriers: one cluster barrier (publish) and one block barrier.
// The caller must keep its shared memory alive until all peers have read `slot`
// (cluster_exit_arrive / cluster_exit_wait at the end of the kernel).
template <class T, class Op>
KD_DEV T cluster_allreduce(const T& v, Op op, T* slot, T* out, unsigned cl) {
  if (threadIdx.x == 0) *slot = v;
  dev::cluster_arrive();
  dev::cluster_wait();
  if (threadIdx.x < 32) {
    const unsigned lane = threadIdx.x;
    T x = *dev::cluster_map(slot, lane < cl ? lane : 0u);
    x = warp_reduce(x, int(cl), op);
    if (lane == 0) *out = x;
  }
  dev::block_sync();
  return *out;
}

}  // namespace kd::cuda
