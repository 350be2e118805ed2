// topk(args): per row the k largest logits (sorted), their ids and the tail log-mass.
// Unpacks into TopkArgs; checks what memory safety needs (shapes vs memory, k <= V).
#include <string>

#include "binding/args.h"
#include "common/topk.h"
#include "cpu/kernels.h"
#include "cuda/kernels.h"

namespace kd::binding {

Napi::Value Topk(const Napi::CallbackInfo& info) {
  OpCall call(info, "topk");
  constexpr uint32_t kFloats = (1u << kF32) | (1u << kF16) | (1u << kBF16);
  TensorArg x = call.Tensor("logits", kFloats, 2, true);
  TensorArg values = call.Tensor("values", kFloats, 2, true);
  TensorArg indices = call.Tensor("indices", 1u << kI32, 2, true);
  TensorArg tail = call.Tensor("tailLogProb", 1u << kF32, 1, true);
  TopkArgs a;
  a.n = x.shape[0];
  a.v = x.shape[1];
  a.k = call.Int("k", 0);
  if (x.strides[1] != 1 && a.v > 1) call.Fail("KD_ESHAPE", "topk: the last dimension of the logits must be contiguous");
  if (a.n > 0 && a.v < 1) call.Fail("KD_ESHAPE", "topk: V must be >= 1");
  if (a.n > 0 && (a.k < 1 || a.k > a.v))
    call.Fail("KD_EINVAL", "topk: k = " + std::to_string(a.k) + " must be in [1, V = " + std::to_string(a.v) + "]");
  if (a.v > 0x7fffffffLL) call.Fail("KD_ESHAPE", "topk: V must fit in int32");
  for (const TensorArg* t : {&values, &indices})
    if (t->shape[0] != a.n || t->shape[1] != a.k || (a.n > 0 && a.k > 0 && (t->strides[1] != 1 || (a.n > 1 && t->strides[0] != a.k))))
      call.Fail("KD_ESHAPE", "topk: values and indices must be contiguous [" + std::to_string(a.n) + ", " + std::to_string(a.k) + "] tensors");
  if (tail.shape[0] != a.n || (a.n > 1 && tail.strides[0] != 1))
    call.Fail("KD_ESHAPE", "topk: 'tailLogProb' must be a contiguous [" + std::to_string(a.n) + "] tensor");
  a.x = x.data;
  a.ldx = a.n > 1 ? x.strides[0] : a.v;
  if (a.n > 1 && a.ldx < a.v) call.Fail("KD_ESHAPE", "topk: the row stride of the logits is smaller than V");
  a.x_dtype = x.dtype;
  a.temperature = float(call.Number("temperature", 1.0));
  if (!(a.temperature > 0.0f)) call.Fail("KD_EINVAL", "topk: temperature must be > 0");
  a.output_logprobs = call.Bool("outputLogprobs", false);
  a.values = values.data;
  a.values_dtype = values.dtype;
  a.indices = static_cast<int32_t*>(indices.data);
  a.tail_logprob = static_cast<float*>(tail.data);
  a.device = call.device();
  a.stream = call.Stream();
  return call.Run([a] { return a.device < 0 ? cpu::topk(a) : cuda::topk(a); });
}

}  // namespace kd::binding
