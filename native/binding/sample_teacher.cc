// sampleTeacher(args): Sparse Logit Sampling draws (ids, importance weights, log-probs).
// Unpacks into SampleTeacherArgs; checks what memory safety needs.
#include <string>

#include "binding/args.h"
#include "common/sample_teacher.h"
#include "cpu/kernels.h"
#include "cuda/kernels.h"

namespace kd::binding {

Napi::Value SampleTeacher(const Napi::CallbackInfo& info) {
  OpCall call(info, "sampleTeacher");
  constexpr uint32_t kFloats = (1u << kF32) | (1u << kF16) | (1u << kBF16);
  TensorArg x = call.Tensor("logits", kFloats, 2, true);
  TensorArg indices = call.Tensor("indices", 1u << kI32, 2, true);
  TensorArg weights = call.Tensor("weights", 1u << kF32, 2, true);
  TensorArg logprobs = call.Tensor("logprobs", 1u << kF32, 2, false);
  SampleTeacherArgs a;
  a.n = x.shape[0];
  a.v = x.shape[1];
  a.samples = call.Int("samples", 0);
  if (x.strides[1] != 1 && a.v > 1) call.Fail("KD_ESHAPE", "sampleTeacher: the last dimension of the logits must be contiguous");
  if (a.n > 0 && a.v < 1) call.Fail("KD_ESHAPE", "sampleTeacher: V must be >= 1");
  if (a.samples < 0) call.Fail("KD_EINVAL", "sampleTeacher: samples must be >= 0");
  if (a.v > 0x7fffffffLL) call.Fail("KD_ESHAPE", "sampleTeacher: V must fit in int32");
  for (const TensorArg* t : {&indices, &weights, &logprobs})
    if (t->present && (t->shape[0] != a.n || t->shape[1] != a.samples ||
                       (a.n > 0 && a.samples > 0 && (t->strides[1] != 1 || (a.n > 1 && t->strides[0] != a.samples)))))
      call.Fail("KD_ESHAPE", "sampleTeacher: indices, weights and logprobs must be contiguous [" + std::to_string(a.n) + ", " +
                                 std::to_string(a.samples) + "] tensors");
  a.x = x.data;
  a.ldx = a.n > 1 ? x.strides[0] : a.v;
  if (a.n > 1 && a.ldx < a.v) call.Fail("KD_ESHAPE", "sampleTeacher: the row stride of the logits is smaller than V");
  a.x_dtype = x.dtype;
  a.temperature = float(call.Number("temperature", 1.0));
  a.proposal_power = float(call.Number("proposalPower", 1.0));
  if (!(a.temperature > 0.0f)) call.Fail("KD_EINVAL", "sampleTeacher: temperature must be > 0");
  if (!(a.proposal_power >= 0.0f)) call.Fail("KD_EINVAL", "sampleTeacher: proposalPower must be >= 0");
  a.seed = call.BigUint("seed", 0);
  a.indices = static_cast<int32_t*>(indices.data);
  a.weights = static_cast<float*>(weights.data);
  a.logprobs = static_cast<float*>(logprobs.data);
  a.device = call.device();
  a.stream = call.Stream();
  return call.Run([a] { return a.device < 0 ? cpu::sample_teacher(a) : cuda::sample_teacher(a); });
}

}  // namespace kd::binding
