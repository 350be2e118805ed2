// triad: c[i] = a[i] + b[i] over n elements of 2 or 4 bytes. It is the memory-
// bandwidth floor that fused kernels are held against: a fused forward+backward loss
// reads two [N, V] inputs once and writes one [N, V] gradient once: the same traffic.
#pragma once
#include <cstdint>

namespace kd {

struct TriadArgs {
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  int64_t n = 0;
  int32_t elem_bytes = 4;  // 4: f32 add; 2: 16-bit integer add (pure data movement)
  void* stream = nullptr;  // CUDA only
  int32_t device = -1;
};

}  // namespace kd
