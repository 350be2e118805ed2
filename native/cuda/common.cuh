// Shared device helpers of the CUDA kernels: error checks that return a Status, fast
// base-2 exp/log, 16-byte vector loads and stores with cache hints, cp.async staging,
// the chunk/slice geometry of the row kernels, the online (single-pass) softmax
// statistics, and deterministic block / cluster reductions.
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
// KD_CUDA_EMULATION: when defined (to a header path), the few CUDA-only primitives below
// (thread indices, barriers, shuffles, shared memory, clusters, launches) come from that
// header instead, so the kernels can be executed on a CPU by an emulator (each CUDA thread
// a fiber). Production builds never define it.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(KD_CUDA_EMULATION)
#include KD_CUDA_EMULATION
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "common/divergence_math.h"
#include "common/dtype.h"
#include "common/status.h"
#include "common/tuning.h"

#define KD_DEV __device__ __forceinline__

// `#pragma unroll` for device compilation only (host passes of __host__ __device__
// helpers, and the CPU emulation, would warn about an unknown pragma).
#if defined(__CUDA_ARCH__)
#define KD_UNROLL _Pragma("unroll")
#else
#define KD_UNROLL
#endif

// ---------------------------------------------------------------------------------
// CUDA-only primitives (replaced by the emulation header when KD_CUDA_EMULATION is set)
// ---------------------------------------------------------------------------------
#if !defined(KD_CUDA_EMULATION)
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
#endif

namespace kd::cuda {

// ---------------------------------------------------------------------------------
// Errors: every CUDA call of a launcher goes through KD_CUDA_TRY; never exit, never throw.
// ---------------------------------------------------------------------------------

inline Status cuda_error(cudaError_t e) { return make_status(kCuda, cudaGetErrorString(e)); }

#define KD_CUDA_TRY(call)                                              \
  do {                                                                 \
    const cudaError_t kd_err_ = (call);                                \
    if (kd_err_ != cudaSuccess) return ::kd::cuda::cuda_error(kd_err_); \
  } while (0)

// Launches `kernel` with a cudaLaunchKernelEx config (optionally as clusters of
// `cluster` blocks along x), then checks cudaGetLastError as well.
template <class... Params, class... Args>
inline Status launch(void (*kernel)(Params...), unsigned grid, unsigned block, size_t smem, cudaStream_t stream,
                     unsigned cluster, Args&&... args) {
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

// ---------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------

constexpr int kRowThreads = tuning::kCudaRowThreads;   // threads of the one-row blocks
constexpr int kRowWarps = kRowThreads / 32;
constexpr int kChunk = 8;                              // elements per chunk (16 B of 16-bit)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;
constexpr float kInf = __builtin_huge_valf();
static_assert(kRowThreads % 32 == 0 && kRowThreads <= 1024, "row blocks are whole warps");

// ---------------------------------------------------------------------------------
// Fast math (device: MUFU; host/emulation: libm with the same flush-to-zero)
// ---------------------------------------------------------------------------------

// 2^x; results below 2^-126 (probabilities < 1.2e-38) flush to +0. -inf -> 0, NaN -> NaN.
KD_HD float ex2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  const float y = std::exp2(x);
  return std::fabs(y) < FLT_MIN ? 0.0f : y;
#endif
}

// log2(x); 0 (and inputs below 2^-126) -> -inf, x < 0 -> NaN.
KD_HD float lg2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  if (x >= 0.0f && x < FLT_MIN) return -kInf;
  return std::log2(x);
#endif
}

// The shift used for a running maximum: 0 while it is -inf (nothing but -inf seen yet),
// so that x - shift stays -inf (exp 0) instead of becoming NaN.
KD_HD float safe_max(float m) { return m == -kInf ? 0.0f : m; }

// r * x where r == 0 means "this part has no probability mass": 0, even if x is +-inf,
// but a NaN in x survives (a NaN input must make its row NaN).
KD_HD float scale0(float r, float x) { return r == 0.0f ? (x != x ? x : 0.0f) : r * x; }

// Fixed pairwise tree over 8 values (also better rounding than a running sum).
KD_HD float sum8(const float* a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}
KD_HD float max8(const float* a) {
  float m = fmaxf(a[0], a[1]);
  for (int k = 2; k < 8; ++k) m = fmaxf(m, a[k]);
  return m;  // NaNs are skipped (they still poison the row through exp)
}

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

// Elements past the end of the row (nv < 8) become -inf: probability exactly 0, so they
// drop out of every max, sum and divergence term without a per-element test.
KD_HD void pad_chunk(float* x, int nv) {
  if (nv < kChunk) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k)
      if (k >= nv) x[k] = -kInf;
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
// Online softmax statistics of a (student, teacher) row pair, in base 2
// ---------------------------------------------------------------------------------
//
// With scales cs = log2(e)/T (student) and ct (teacher: log2(e)/T, or log2(e) for teacher
// log-probs used as is) and raw running maxima ms, mt, each element contributes
// a_s = (z - safe(ms)) cs, e_s = 2^a_s (and a_t, e_t). Shifting BEFORE scaling keeps a_s
// exact for the max element (a_s = 0, e_s = 1): a shift ms*cs rounded to f32 would move
// every exponent by up to ulp(ms cs) and break sum q = 1 at large logits.
//   ss = sum e_s, st = sum e_t                         (softmax normalisers, shifted)
//   a  = sum e_s (a_s - a_t)      -> reverse KL  = ln2 (a/ss - log2 ss + log2 st)
//   b  = sum e_t (a_t - a_s)      -> forward KL  = ln2 (b/st + log2 ss - log2 st)
//   dq = sum e_s a_s              -> H(q)        = ln2 (log2 ss - dq/ss)
//   dp = sum e_t a_t              -> H(p)        = ln2 (log2 st - dp/st)
//   s0 = sum 2^((z - safe(ms)) log2e)      (untempered normaliser: CE at T != 1)
//   zc = sum (z - zref)                    (label smoothing's mean, zref = z[label])
// When a maximum grows by d (in shifted units) the old terms are rescaled by r = 2^-d and
// their a_s (resp. a_t) fall by d, hence the corrections below; merging two partial
// states applies the same algebra, so each state is exact up to rounding whatever the
// order, and the shifted log-ratios stay small (no cancellation for large logits).
// a_s - a_t may be +-inf (a banned token on one side): such terms are weighted by e = 0
// (mul0) or are genuinely infinite (KL to a zero-probability token).

enum PairFlags : unsigned {
  kHasTeacher = 1u,
  kAccA = 2u,   // reverse KL accumulator
  kAccB = 4u,   // forward KL accumulator
  kAccDq = 8u,  // student entropy
  kAccDp = 16u, // teacher entropy
};

struct PairStats {
  float ms, ss;   // student: raw max, shifted sum
  float mt, st;   // teacher: raw max (0, fixed, for raw log-probs), shifted sum
  float a, b;     // reverse / forward KL accumulators
  float dq, dp;   // entropy accumulators
  float s0;       // untempered student sum (CE at T != 1)
  float zc;       // sum (z - zref) (label smoothing)
};

// Per-call constants of the statistics.
struct PairConsts {
  float cs = kLog2e, ct = kLog2e;  // scales
  bool traw = false;               // teacher log-probs used as is (mt fixed at 0)
  bool s0 = false;                 // accumulate s0
  bool zc = false;                 // accumulate zc
  float zref = 0.0f;               // zc's reference value
};

KD_HD PairStats pair_identity(bool traw) {
  PairStats s;
  s.ms = -kInf; s.ss = 0.0f;
  s.mt = traw ? 0.0f : -kInf; s.st = 0.0f;
  s.a = s.b = s.dq = s.dp = s.s0 = s.zc = 0.0f;
  return s;
}

// Adds one chunk (z[8], t[8]: raw f32 values, padded with -inf; nv valid) to S.
template <unsigned F>
KD_HD void pair_update(PairStats& S, const float* z, const float* t, int nv, const PairConsts& C) {
  constexpr bool kT = (F & kHasTeacher) != 0;
  // Student maximum first: rescale what has been accumulated so far.
  const float cm = max8(z);
  if (cm > S.ms) {  // false for NaN, so ms is never NaN
    const float r = S.ms == -kInf ? 0.0f : ex2((S.ms - cm) * C.cs);
    const float d = (cm - safe_max(S.ms)) * C.cs;  // how far every a_s falls
    if (F & kAccA) S.a = scale0(r, S.a - d * S.ss);
    if (F & kAccDq) S.dq = scale0(r, S.dq - d * S.ss);
    if (F & kAccB) S.b += d * S.st;  // teacher weights unchanged, a_s fell by d
    if (C.s0) S.s0 *= S.ms == -kInf ? 0.0f : ex2((S.ms - cm) * kLog2e);
    S.ss *= r;
    S.ms = cm;
  }
  if (kT && !C.traw) {
    const float cmt = max8(t);
    if (cmt > S.mt) {
      const float r = S.mt == -kInf ? 0.0f : ex2((S.mt - cmt) * C.ct);
      const float d = (cmt - safe_max(S.mt)) * C.ct;
      if (F & kAccB) S.b = scale0(r, S.b - d * S.st);
      if (F & kAccDp) S.dp = scale0(r, S.dp - d * S.st);
      if (F & kAccA) S.a += d * S.ss;  // student weights unchanged, a_t fell by d
      S.st *= r;
      S.mt = cmt;
    }
  }
  const float ms = safe_max(S.ms);
  const float mt = kT ? safe_max(S.mt) : 0.0f;
  float as[kChunk], es[kChunk], at[kChunk], et[kChunk], tmp[kChunk];
KD_UNROLL
  for (int k = 0; k < kChunk; ++k) {
    as[k] = (z[k] - ms) * C.cs;
    es[k] = ex2(as[k]);
  }
  S.ss += sum8(es);
  if (kT) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) {
      at[k] = (t[k] - mt) * C.ct;
      et[k] = ex2(at[k]);
    }
    S.st += sum8(et);
  }
  if (F & kAccA) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = mul0(es[k], as[k] - at[k]);
    S.a += sum8(tmp);
  }
  if (F & kAccB) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = mul0(et[k], at[k] - as[k]);
    S.b += sum8(tmp);
  }
  if (F & kAccDq) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = mul0(es[k], as[k]);
    S.dq += sum8(tmp);
  }
  if (F & kAccDp) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = mul0(et[k], at[k]);
    S.dp += sum8(tmp);
  }
  if (C.s0) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = ex2((z[k] - ms) * kLog2e);
    S.s0 += sum8(tmp);
  }
  if (C.zc) {
KD_UNROLL
    for (int k = 0; k < kChunk; ++k) tmp[k] = k < nv ? z[k] - C.zref : 0.0f;
    S.zc += sum8(tmp);
  }
}

// The rescale factor of a part whose raw max was m_part, to the merged raw max m >= m_part.
KD_HD float merge_factor(float m_part, float m, float c) {
  if (m_part == m) return 1.0f;
  return m_part == -kInf ? 0.0f : ex2((m_part - m) * c);
}
// How far the shifted log-values a of that part fall: (safe(m) - safe(m_part)) c.
KD_HD float merge_shift(float m_part, float m, float c) { return (safe_max(m) - safe_max(m_part)) * c; }

// Combines two partial states (as if their elements had been accumulated together).
template <unsigned F>
KD_HD PairStats pair_merge(const PairStats& x, const PairStats& y, const PairConsts& C) {
  constexpr bool kT = (F & kHasTeacher) != 0;
  PairStats o;
  o.ms = fmaxf(x.ms, y.ms);
  const float rx = merge_factor(x.ms, o.ms, C.cs), ry = merge_factor(y.ms, o.ms, C.cs);
  const float dx = merge_shift(x.ms, o.ms, C.cs), dy = merge_shift(y.ms, o.ms, C.cs);
  o.ss = x.ss * rx + y.ss * ry;
  float rtx = 1.0f, rty = 1.0f, dtx = 0.0f, dty = 0.0f;
  if (kT) {
    o.mt = fmaxf(x.mt, y.mt);
    rtx = merge_factor(x.mt, o.mt, C.ct);
    rty = merge_factor(y.mt, o.mt, C.ct);
    dtx = merge_shift(x.mt, o.mt, C.ct);
    dty = merge_shift(y.mt, o.mt, C.ct);
    o.st = x.st * rtx + y.st * rty;
  } else {
    o.mt = x.mt;
    o.st = 0.0f;
  }
  o.a = (F & kAccA) ? scale0(rx, x.a + (dtx - dx) * x.ss) + scale0(ry, y.a + (dty - dy) * y.ss) : 0.0f;
  o.b = (F & kAccB) ? scale0(rtx, x.b + (dx - dtx) * x.st) + scale0(rty, y.b + (dy - dty) * y.st) : 0.0f;
  o.dq = (F & kAccDq) ? scale0(rx, x.dq - dx * x.ss) + scale0(ry, y.dq - dy * y.ss) : 0.0f;
  o.dp = (F & kAccDp) ? scale0(rtx, x.dp - dtx * x.st) + scale0(rty, y.dp - dty * y.st) : 0.0f;
  if (C.s0) o.s0 = x.s0 * merge_factor(x.ms, o.ms, kLog2e) + y.s0 * merge_factor(y.ms, o.ms, kLog2e);
  else o.s0 = 0.0f;
  o.zc = C.zc ? x.zc + y.zc : 0.0f;
  return o;
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
template <class T, class Op>
KD_DEV T warp_reduce(T v, int count, Op op) {
  const int lane = int(threadIdx.x) & 31;
KD_UNROLL
  for (int off = 16; off > 0; off >>= 1) {
    const T o = shfl_down_struct(v, off);
    if (lane + off < count) v = op(v, o);
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
