// Argument checks shared by the CPU and CUDA kernels: what memory safety and the loops
// need, the same on both backends (the TypeScript layer validates everything else, with
// friendlier messages). Host code only.
#pragma once
#include <cstdint>
#include <limits>

#include "common/divergence.h"
#include "common/dtype.h"
#include "common/status.h"

namespace kd {

// Byte range [lo, hi) of an [n, ld] matrix's used elements (n >= 1).
struct Span {
  uintptr_t lo, hi;
};
inline Span span(const void* p, int32_t dt, int64_t n, int64_t ld, int64_t v) {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p);
  return {lo, lo + uintptr_t(((n - 1) * ld + v) * dtype_size(dt))};
}
inline bool overlap(Span x, Span y) { return x.lo < y.hi && y.lo < x.hi; }

// The divergence engine's arguments. With n == 0 only the scalar options are checked (no
// tensor is read); the caller then returns its empty result.
inline Status check_divergence_args(const DivergenceArgs& a) {
  if (a.n < 0 || (a.n > 0 && a.v < 1)) return make_status(kShape, "divergence: need n >= 0 and v >= 1");
  if (a.div < kForwardKl || a.div > kNoDivergence) return make_status(kInvalid, "divergence: unknown divergence");
  if (a.reduction < kNone || a.reduction > kBatchMean) return make_status(kInvalid, "divergence: unknown reduction");
  if (!(a.temperature > 0.0f && a.temperature < std::numeric_limits<float>::infinity()))
    return make_status(kInvalid, "divergence: temperature must be finite and > 0");
  if (a.hard_weight != 0.0f && !a.labels) return make_status(kInvalid, "divergence: a cross-entropy term needs labels");
  if (a.n == 0) return ok_status();
  const bool has_div = a.div != kNoDivergence;
  if (!dtype_is_float(a.s_dtype) || (has_div && !dtype_is_float(a.t_dtype)) || (a.grad && !dtype_is_float(a.g_dtype)))
    return make_status(kDtype, "divergence: logits and gradient must be f32, f16 or bf16");
  if (!a.s || (has_div && !a.t)) return make_status(kInvalid, "divergence: missing student or teacher logits");
  if (a.lds < a.v || (has_div && a.ldt < a.v) || (a.grad && a.ldg < a.v))
    return make_status(kShape, "divergence: row strides must be >= v");
  if (a.grad) {
    const Span g = span(a.grad, a.g_dtype, a.n, a.ldg, a.v);
    const bool same = a.grad == a.s && a.g_dtype == a.s_dtype && a.ldg == a.lds;
    if (!same && overlap(g, span(a.s, a.s_dtype, a.n, a.lds, a.v)))
      return make_status(kInvalid, "divergence: grad partially overlaps the student logits");
    if (has_div && overlap(g, span(a.t, a.t_dtype, a.n, a.ldt, a.v)))
      return make_status(kInvalid, "divergence: grad overlaps the teacher logits");
  }
  return ok_status();
}

}  // namespace kd
