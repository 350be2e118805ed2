// triad: c[i] = a[i] + b[i] over n elements (f32 add for 4-byte elements, wrapping 16-bit
// integer add for 2-byte ones: pure data movement for f16/bf16 buffers). It is the
// device-bandwidth floor fused kernels are held against: a fused forward+backward loss reads
// two [N, V] inputs once and writes one [N, V] gradient once, the same traffic: 3 n
// element bytes (see native/common/triad.h).
//
// Launch shape: a grid-stride loop of 16-byte words (ld.global.cs / st.global.cs: streamed
// once, evict-first, like the fused kernels' reads of staged data and gradient writes),
// tuning::kCudaTriadThreads threads per block, at most kCudaTriadBlocksPerSm blocks per SM
// (enough loads in flight to saturate HBM). When a, b and c are all 16-byte aligned the
// words cover the largest multiple of 16 bytes and a one-block kernel adds the tail;
// otherwise an element-wise grid-stride loop does everything (a fallback: the benchmark
// allocates aligned buffers).
#include <climits>

#include "common/triad.h"
#include "common/tuning.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kd::cuda {
namespace {

KD_HD uint32_t add16x2(uint32_t x, uint32_t y) {
  const uint32_t lo = (x + y) & 0xffffu;                     // low halves (carry discarded)
  const uint32_t hi = ((x >> 16) + (y >> 16)) << 16;         // high halves (carry shifted out)
  return lo | hi;
}

KD_HD uint32_t add_word(uint32_t x, uint32_t y, int eb) {
  return eb == 4 ? f32_bits(bits_f32(x) + bits_f32(y)) : add16x2(x, y);
}

__global__ void __launch_bounds__(tuning::kCudaTriadThreads)
    triad_words(const unsigned char* a, const unsigned char* b, unsigned char* c, int64_t words, int eb) {
  const int64_t stride = int64_t(gridDim.x) * tuning::kCudaTriadThreads;
  for (int64_t i = int64_t(blockIdx.x) * tuning::kCudaTriadThreads + threadIdx.x; i < words; i += stride) {
    const Word4 x = ld_word<kLdStream>(a + 16 * i);
    const Word4 y = ld_word<kLdStream>(b + 16 * i);
    st_word_stream(c + 16 * i, Word4{add_word(x.x, y.x, eb), add_word(x.y, y.y, eb), add_word(x.z, y.z, eb),
                                     add_word(x.w, y.w, eb)});
  }
}

// Elements [first, n), element-wise (the tail, or everything when misaligned).
__global__ void __launch_bounds__(tuning::kCudaTriadThreads)
    triad_elems(const unsigned char* a, const unsigned char* b, unsigned char* c, int64_t first, int64_t n, int eb) {
  const int64_t stride = int64_t(gridDim.x) * tuning::kCudaTriadThreads;
  for (int64_t i = first + int64_t(blockIdx.x) * tuning::kCudaTriadThreads + threadIdx.x; i < n; i += stride) {
    if (eb == 4) {
      const float r = bits_f32(ld_u32(a + 4 * i)) + bits_f32(ld_u32(b + 4 * i));
      std::memcpy(c + 4 * i, &r, 4);
    } else {
      const uint16_t r = uint16_t(ld_u16(a + 2 * i) + ld_u16(b + 2 * i));
      std::memcpy(c + 2 * i, &r, 2);
    }
  }
}

unsigned grid_for(int64_t items, int sms) {
  const int64_t want = ceil_div(items, tuning::kCudaTriadThreads);
  const int64_t cap = int64_t(sms) * tuning::kCudaTriadBlocksPerSm;
  const int64_t g = want < cap ? want : cap;
  return unsigned(g < 1 ? 1 : g);
}

}  // namespace

Status triad(const TriadArgs& args) {
  if (args.elem_bytes != 2 && args.elem_bytes != 4) return make_status(kInvalid, "triad: elem_bytes must be 2 or 4");
  if (args.n < 0) return make_status(kShape, "triad: n must be >= 0");
  if (args.n == 0) return ok_status();  // enqueues nothing
  if (!args.a || !args.b || !args.c) return make_status(kInvalid, "triad: missing buffer");
  Status st = select_device(args.device);
  if (!st.ok()) return st;
  int dev = args.device;
  if (dev < 0) KD_CUDA_TRY(cudaGetDevice(&dev));
  int sms = 0;
  KD_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaStream_t stream = static_cast<cudaStream_t>(args.stream);
  const auto* a = static_cast<const unsigned char*>(args.a);
  const auto* b = static_cast<const unsigned char*>(args.b);
  auto* c = static_cast<unsigned char*>(args.c);
  const int eb = args.elem_bytes;
  const bool aligned = ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
                         reinterpret_cast<uintptr_t>(c)) & 15u) == 0;
  int64_t first = 0;
  if (aligned) {
    const int64_t words = args.n * eb / 16;
    if (words > 0) {
      st = launch(triad_words, grid_for(words, sms), unsigned(tuning::kCudaTriadThreads), 0, stream, 1u, a, b, c,
                  words, eb);
      if (!st.ok()) return st;
    }
    first = words * 16 / eb;
  }
  if (first < args.n)
    return launch(triad_elems, grid_for(args.n - first, sms), unsigned(tuning::kCudaTriadThreads), 0, stream, 1u, a,
                  b, c, first, args.n, eb);
  return ok_status();
}

}  // namespace kd::cuda
