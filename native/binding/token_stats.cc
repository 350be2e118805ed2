// tokenStats(args): per-token statistics for on-policy distillation.
#include <string>

#include "binding/args.h"
#include "common/divergence.h"
#include "cpu/kernels.h"
#include "cuda/kernels.h"

namespace kd::binding {

Napi::Value TokenStats(const Napi::CallbackInfo& info) {
  OpCall call(info, "tokenStats");
  constexpr uint32_t kFloats = (1u << kF32) | (1u << kF16) | (1u << kBF16);
  TensorArg s = call.Tensor("student", kFloats, 2, true);
  TensorArg t = call.Tensor("teacher", kFloats, 2, true);
  TensorArg sampled = call.Tensor("sampled", 1u << kI32, 1, false);
  const char* outs[] = {"forwardKl", "reverseKl", "studentEntropy", "teacherEntropy", "studentLogProb", "teacherLogProb", "teacherRank"};
  TensorArg o[7];
  for (int i = 0; i < 7; ++i)
    o[i] = call.Tensor(outs[i], i == 6 ? (1u << kI32) : (1u << kF32), 1, i < 4 || sampled.present);
  TokenStatsArgs a;
  a.n = s.shape[0];
  a.v = s.shape[1];
  if (s.strides[1] != 1 || t.strides[1] != 1) call.Fail("KD_ESHAPE", "tokenStats: the last dimension of the logits must be contiguous");
  if (t.shape[0] != a.n || t.shape[1] < a.v) call.Fail("KD_ESHAPE", "tokenStats: teacher rows/vocab do not match the student");
  for (int i = 0; i < 7; ++i)
    if (o[i].present && (o[i].shape[0] != a.n || o[i].strides[0] != 1))
      call.Fail("KD_ESHAPE", std::string("tokenStats: '") + outs[i] + "' must be a contiguous [n] tensor");
  if (sampled.present && (sampled.shape[0] != a.n || sampled.strides[0] != 1))
    call.Fail("KD_ESHAPE", "tokenStats: 'sampled' must be a contiguous [n] tensor");
  a.s = s.data; a.lds = s.strides[0]; a.s_dtype = s.dtype;
  a.t = t.data; a.ldt = t.strides[0]; a.t_dtype = t.dtype;
  a.teacher_logprobs = call.Bool("teacherLogprobs", false);
  a.temperature = float(call.Number("temperature", 1.0));
  if (!(a.temperature > 0.0f)) call.Fail("KD_EINVAL", "tokenStats: temperature must be > 0");
  a.sampled = static_cast<const int32_t*>(sampled.data);
  if (sampled.present && call.device() < 0)
    for (int64_t i = 0; i < a.n; ++i)
      if (a.sampled[i] < 0 || a.sampled[i] >= a.v)
        call.Fail("KD_ERANGE", "tokenStats: sampled[" + std::to_string(i) + "] = " + std::to_string(a.sampled[i]) +
                                   " is outside [0, " + std::to_string(a.v) + ")");
  a.forward_kl = static_cast<float*>(o[0].data);
  a.reverse_kl = static_cast<float*>(o[1].data);
  a.student_entropy = static_cast<float*>(o[2].data);
  a.teacher_entropy = static_cast<float*>(o[3].data);
  a.student_logprob = static_cast<float*>(o[4].data);
  a.teacher_logprob = static_cast<float*>(o[5].data);
  a.teacher_rank = static_cast<int32_t*>(o[6].data);
  a.device = call.device();
  a.stream = call.Stream();
  return call.Run([a] { return a.device < 0 ? cpu::token_stats(a) : cuda::token_stats(a); });
}

}  // namespace kd::binding
