// Every tuning constant of the native code, in one place, each with its reason.
#pragma once
#include <cstdint>

namespace kd::tuning {

// CPU: accumulator lanes for row reductions. 16 f32 lanes = one AVX-512 register or
// two AVX2 registers; the reduction order depends only on this constant and the row
// length, so results are bitwise identical for any thread count.
constexpr int kCpuLanes = 16;

// CPU: rows handed to a thread at a time. Rows are independent; a small chunk keeps
// the 2-16 core machines we target balanced when N is small (N=128 rows over 16 threads).
constexpr int64_t kCpuRowGrain = 1;

// CPU: below this many elements per call, run on the calling thread (waking the pool
// costs ~5-20 us, more than the work).
constexpr int64_t kCpuSerialElems = 1 << 15;

// CPU: elements per block of the row passes (native/cpu/row.h). A block of both inputs
// plus the gradient staged as f32 (3 x 4 KiB) stays in the 32 KiB L1 while pass one runs
// its max and exp over it; each block has its own max shift (per-block softmax scales).
// Must be a multiple of kCpuLanes; it fixes the summation order (determinism).
constexpr int64_t kCpuRowBlock = 1024;

// CUDA: threads per block for the one-block-per-row kernels. 512 threads x 16-byte
// loads cover 4096 bf16 per sweep; with V=151936 a row takes ~37 sweeps per input.
constexpr int kCudaRowThreads = 512;

// CUDA: threads for the final deterministic (fixed-order tree) loss reduction.
constexpr int kCudaReduceThreads = 1024;

}  // namespace kd::tuning
