// triad({ a, b, c }): c = a + b, the bandwidth floor used by the benchmarks.
#include "binding/args.h"
#include "common/dtype.h"
#include "cpu/kernels.h"
#include "cuda/kernels.h"

namespace kd::binding {

Napi::Value Triad(const Napi::CallbackInfo& info) {
  OpCall call(info, "triad");
  const uint32_t any = 0x1f;
  TensorArg a = call.Tensor("a", any, 1, true);
  TensorArg b = call.Tensor("b", any, 1, true);
  TensorArg c = call.Tensor("c", any, 1, true);
  if (a.shape[0] != b.shape[0] || a.shape[0] != c.shape[0] || a.dtype != b.dtype || a.dtype != c.dtype ||
      a.strides[0] != 1 || b.strides[0] != 1 || c.strides[0] != 1 || dtype_size(a.dtype) == 1)
    call.Fail("KD_ESHAPE", "triad: a, b, c must be contiguous 1-D tensors of one 2- or 4-byte dtype and length");
  TriadArgs t;
  t.a = a.data; t.b = b.data; t.c = c.data; t.n = a.shape[0];
  t.elem_bytes = dtype_size(a.dtype);
  t.device = call.device();
  t.stream = call.Stream();
  return call.Run([t] { return t.device < 0 ? cpu::triad(t) : cuda::triad(t); });
}

}  // namespace kd::binding
