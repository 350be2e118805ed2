// Device helpers of the sparse-KD kernels (topk.cu, sample_teacher.cu, sparse_kl_div.cu):
// row loads in chunks of 8 elements, deterministic warp / block reductions and scans,
// the online log-sum-exp pair, launch checks. One block per row everywhere.
//
// Conventions:
//  * A row is read in chunks of 8 consecutive elements; thread t takes chunk
//    t + s * blockDim in sweep s, so a warp reads 512 (16-bit) or 1024 (f32) contiguous
//    bytes per sweep: coalesced. A row that starts 16-byte aligned uses 16-byte vector
//    loads, any other row element loads of the SAME chunks, so the summation order (and
//    every result bit) does not depend on the address.
//  * Reductions have a fixed shape: each thread in its own element order, a fixed
//    shuffle tree per warp, warp results folded by warp 0 in a fixed tree. No float
//    atomics (integer atomics only for histograms and buffer slots, whose results do not
//    depend on the order).
//  * Dynamic shared-memory sizes: native/common/cuda_plan.h (sparse_rows_smem,
//    sample_rows_smem), checked against the device's limit before every launch.
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include "common/cuda_plan.h"
#include "common/dtype.h"
#include "common/status.h"
#include "cuda/runtime.h"

// kernel<<<grid, block, smem, stream>>>(args...): the one launch form of these kernels.
#define KD_SPARSE_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
// The block's dynamic shared memory as an array of T named `name`.
#define KD_SPARSE_DYN_SMEM(T, name) extern __shared__ T name[]

#define KD_SDEV __device__ __forceinline__

namespace kd::cuda::sparse {

constexpr float kInfF = __builtin_huge_valf();
constexpr int kChunk8 = 8;

// The message says when the error is sticky (runtime.cu error_message).
inline Status cuda_status(cudaError_t e) { return make_status(kCuda, error_message(int(e))); }

// After a launch: the launch error, if any (never synchronises).
inline Status launch_status() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? ok_status() : cuda_status(e);
}

inline Status select_device(int32_t device) {
  if (device >= 0) {
    const cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return cuda_status(e);
  }
  return ok_status();
}

// Allows `bytes` of dynamic shared memory for `kernel` on `device` (runtime.cu
// allow_dynamic_smem: raised only, once per kernel and device, under a lock; a clear
// kUnsupported when the device has less than that).
template <class K>
inline Status allow_smem(K kernel, int32_t device, size_t bytes) {
  return allow_dynamic_smem(reinterpret_cast<const void*>(kernel), device, bytes);
}

// ---- loads ---------------------------------------------------------------------------

// Elements [j0, j0 + 8) of a row of dtype DT as f32 (j0 a multiple of 8); elements past
// v read as -inf. vec: the row is 16-byte aligned (then a whole chunk is 1 or 2 vector
// loads). Returns the number of valid elements.
template <int DT>
KD_SDEV int load8(const void* row, int64_t v, int64_t j0, bool vec, float (&x)[8]) {
  using T = typename Elem<DT>::T;
  const T* p = static_cast<const T*>(row) + j0;
  const int nv = v - j0 >= 8 ? 8 : int(v - j0);
  if (vec && nv == 8) {
    if (DT == kF32) {
      const float4 a = reinterpret_cast<const float4*>(p)[0];
      const float4 b = reinterpret_cast<const float4*>(p)[1];
      x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w;
      x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
    } else {
      const uint4 a = reinterpret_cast<const uint4*>(p)[0];
      const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint16_t lo = uint16_t(w[e] & 0xffffu), hi = uint16_t(w[e] >> 16);
        x[2 * e] = Elem<DT>::load(reinterpret_cast<const T*>(&lo));
        x[2 * e + 1] = Elem<DT>::load(reinterpret_cast<const T*>(&hi));
      }
    }
    return 8;
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) x[e] = e < nv ? Elem<DT>::load(p + e) : -kInfF;
  return nv;
}

KD_SDEV bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Stores g[0..nv) at elements [j0, j0 + nv) of a row of dtype dt (round to nearest
// even, as dtype.h); a whole aligned chunk is 1 or 2 16-byte stores.
KD_SDEV void store8(void* row, int32_t dt, int64_t j0, int nv, bool vec, const float (&g)[8]) {
  if (vec && nv == 8) {
    if (dt == kF32) {
      float4* p = reinterpret_cast<float4*>(static_cast<float*>(row) + j0);
      p[0] = make_float4(g[0], g[1], g[2], g[3]);
      p[1] = make_float4(g[4], g[5], g[6], g[7]);
    } else {
      uint32_t w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t lo = dt == kBF16 ? f32_to_bf16(g[2 * e]) : f32_to_f16(g[2 * e]);
        const uint32_t hi = dt == kBF16 ? f32_to_bf16(g[2 * e + 1]) : f32_to_f16(g[2 * e + 1]);
        w[e] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(static_cast<uint16_t*>(row) + j0) = make_uint4(w[0], w[1], w[2], w[3]);
    }
    return;
  }
  for (int e = 0; e < nv; ++e) store_from_f32(row, dt, j0 + e, g[e]);
}

// ---- online log-sum-exp ---------------------------------------------------------------

// sum_j e^{(x_j - m) inv_t} with its running max m (raw units). -inf entries add 0; a
// NaN makes s NaN.
struct Lse {
  float m;
  float s;
};
KD_SDEV Lse lse_identity() { return Lse{-kInfF, 0.0f}; }
KD_SDEV void lse_add(Lse& a, float x, float inv_t) {
  if (x == -kInfF) return;
  if (x > a.m) {
    a.s = a.s * expf((a.m - x) * inv_t) + 1.0f;  // a.m = -inf: 0 * 0 + 1
    a.m = x;
  } else {
    a.s += expf((x - a.m) * inv_t);  // NaN x lands here: s becomes NaN
  }
}
KD_SDEV Lse lse_merge(const Lse& a, const Lse& b, float inv_t) {
  const float m = fmaxf(a.m, b.m);
  if (m == -kInfF) return Lse{m, a.s + b.s};
  const float sa = a.m == -kInfF ? 0.0f : a.s * expf((a.m - m) * inv_t);
  const float sb = b.m == -kInfF ? 0.0f : b.s * expf((b.m - m) * inv_t);
  return Lse{m, sa + sb};
}

// Shuffle of the Lse pair (word by word).
KD_SDEV Lse shfl_down(Lse v, int off) {
  return Lse{__shfl_down_sync(0xffffffffu, v.m, off), __shfl_down_sync(0xffffffffu, v.s, off)};
}

// ---- warp and block reductions (fixed trees) ------------------------------------------

template <class T>
KD_SDEV T shfl_down(T v, int off) { return __shfl_down_sync(0xffffffffu, v, off); }

// Lane 0 gets op over the warp, in a fixed tree.
template <class T, class Op>
KD_SDEV T warp_reduce(T v, Op op) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = op(v, shfl_down(v, off));
  return v;
}

// op over one value per thread of the block (blockDim.x a multiple of 32, <= 1024);
// every thread gets the result. scratch: 33 values of shared memory for this call site.
template <class T, class Op>
KD_SDEV T block_reduce(T v, Op op, T* scratch) {
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5, nwarps = int(blockDim.x) >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = scratch[lane < nwarps ? lane : 0];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const T o = shfl_down(w, off);
      if (lane + off < nwarps) w = op(w, o);
    }
    if (lane == 0) scratch[32] = w;
  }
  __syncthreads();
  const T r = scratch[32];
  __syncthreads();  // scratch may be reused right away
  return r;
}

// Exclusive prefix sum of one uint32 per thread, in thread order; *total gets the sum.
// scratch: 33 uint32 of shared memory.
KD_SDEV uint32_t block_exclusive_scan(uint32_t v, uint32_t* scratch, uint32_t* total) {
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5, nwarps = int(blockDim.x) >> 5;
  uint32_t incl = v;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint32_t o = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += o;
  }
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < nwarps ? scratch[lane] : 0u;
    uint32_t wi = w;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const uint32_t o = __shfl_up_sync(0xffffffffu, wi, off);
      if (lane >= off) wi += o;
    }
    if (lane < nwarps) scratch[lane] = wi - w;  // exclusive prefix of the warps
    if (lane == 31) scratch[32] = wi;
  }
  __syncthreads();
  const uint32_t r = scratch[warp] + incl - v;
  *total = scratch[32];
  __syncthreads();
  return r;
}

}  // namespace kd::cuda::sparse
