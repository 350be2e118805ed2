// triad: c[i] = a[i] + b[i], multithreaded in 64 KiB-aligned chunks. The measured
// floor for fused kernels (see native/common/triad.h). Plain loops: the compiler
// vectorises them; the memory system, not arithmetic, sets the speed.
#include <cstring>

#include "common/tuning.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace kd::cpu::KD_ISA {

Status triad(const TriadArgs& a) {
  const int64_t chunk = 1 << 16;  // elements per task
  if (a.elem_bytes == 4) {
    const float* __restrict x = static_cast<const float*>(a.a);
    const float* __restrict y = static_cast<const float*>(a.b);
    float* __restrict z = static_cast<float*>(a.c);
    parallel_for((a.n + chunk - 1) / chunk, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        int64_t lo = c * chunk, hi = lo + chunk < a.n ? lo + chunk : a.n;
        for (int64_t i = lo; i < hi; ++i) z[i] = x[i] + y[i];
      }
    });
  } else if (a.elem_bytes == 2) {
    const uint16_t* __restrict x = static_cast<const uint16_t*>(a.a);
    const uint16_t* __restrict y = static_cast<const uint16_t*>(a.b);
    uint16_t* __restrict z = static_cast<uint16_t*>(a.c);
    parallel_for((a.n + chunk - 1) / chunk, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        int64_t lo = c * chunk, hi = lo + chunk < a.n ? lo + chunk : a.n;
        for (int64_t i = lo; i < hi; ++i) z[i] = uint16_t(x[i] + y[i]);
      }
    });
  } else {
    return make_status(kInvalid, "triad: elem_bytes must be 2 or 4");
  }
  return ok_status();
}

}  // namespace kd::cpu::KD_ISA
