// divergence(args): the fused divergence engine behind klDiv, jsd, tvd, skewKl and
// distillationLoss. Unpacks tensors and options into DivergenceArgs; checks only
// what memory safety needs (shapes vs memory, strides, label range on CPU).
#include <string>

#include "binding/args.h"
#include "common/dtype.h"
#include "common/divergence.h"
#include "cpu/kernels.h"
#include "cuda/kernels.h"

namespace kd::binding {
namespace {
constexpr uint32_t kFloats = (1u << kF32) | (1u << kF16) | (1u << kBF16);

void CheckRows(OpCall& call, const TensorArg& t, int64_t n, const char* name) {
  if (t.present && (t.shape[0] != n || t.strides[0] != 1))
    call.Fail("KD_ESHAPE", std::string("divergence: '") + name + "' must be a contiguous [" + std::to_string(n) + "] tensor");
}
}  // namespace

Napi::Value Divergence(const Napi::CallbackInfo& info) {
  OpCall call(info, "divergence");
  TensorArg s = call.Tensor("student", kFloats, 2, true);
  TensorArg t = call.Tensor("teacher", kFloats, 2, true);
  TensorArg labels = call.Tensor("labels", 1u << kI32, 1, false);
  TensorArg mask = call.Tensor("mask", 1u << kU8, 1, false);
  TensorArg weights = call.Tensor("weights", 1u << kF32, 1, false);
  TensorArg grad = call.Tensor("grad", kFloats, 2, false);
  TensorArg loss = call.Tensor("loss", 1u << kF32, -1, true);
  TensorArg hard = call.Tensor("hard", 1u << kF32, 1, false);
  TensorArg soft = call.Tensor("soft", 1u << kF32, 1, false);
  TensorArg total = call.Tensor("total", 1u << kF32, 1, false);
  TensorArg ws = call.Tensor("workspace", 1u << kU8, 1, false);

  DivergenceArgs a;
  a.n = s.shape[0];
  a.v = s.shape[1];
  if (s.strides[1] != 1 || t.strides[1] != 1) call.Fail("KD_ESHAPE", "divergence: the last dimension of the logits must be contiguous");
  if (t.shape[0] != a.n || t.shape[1] < a.v)
    call.Fail("KD_ESHAPE", "divergence: teacher is [" + std::to_string(t.shape[0]) + ", " + std::to_string(t.shape[1]) +
                               "], student is [" + std::to_string(a.n) + ", " + std::to_string(a.v) + "]");
  if (a.n > 0 && a.v < 1) call.Fail("KD_ESHAPE", "divergence: V must be >= 1");
  a.s = s.data; a.lds = s.strides[0]; a.s_dtype = s.dtype;
  a.t = t.data; a.ldt = t.strides[0]; a.t_dtype = t.dtype;
  a.teacher_logprobs = call.Bool("teacherLogprobs", false);
  CheckRows(call, labels, a.n, "labels");
  CheckRows(call, mask, a.n, "mask");
  CheckRows(call, weights, a.n, "weights");
  CheckRows(call, hard, a.n, "hard");
  CheckRows(call, soft, a.n, "soft");
  CheckRows(call, total, a.n, "total");
  a.labels = static_cast<const int32_t*>(labels.data);
  a.ignore_index = int32_t(call.Int("ignoreIndex", -100));
  a.mask = static_cast<const uint8_t*>(mask.data);
  a.weights = static_cast<const float*>(weights.data);
  a.div = int32_t(call.Int("divergence", kForwardKl));
  if (a.div < kForwardKl || a.div > kNoDivergence) call.Fail("KD_EINVAL", "divergence: unknown divergence code");
  a.beta = float(call.Number("beta", 0.5));
  a.skew = float(call.Number("skew", 0.1));
  a.temperature = float(call.Number("temperature", 1.0));
  a.soft_weight = float(call.Number("softWeight", 1.0));
  a.soft_scale = float(call.Number("softScale", 1.0));
  a.hard_weight = float(call.Number("hardWeight", 0.0));
  a.label_smoothing = float(call.Number("labelSmoothing", 0.0));
  if (a.hard_weight != 0.0f && !labels.present) call.Fail("KD_EINVAL", "divergence: a CE term needs labels");
  a.reduction = int32_t(call.Int("reduction", kBatchMean));
  if (a.reduction < kNone || a.reduction > kBatchMean) call.Fail("KD_EINVAL", "divergence: unknown reduction code");
  a.normalizer = call.Number("normalizer", 0.0);
  a.grad_scale = float(call.Number("gradScale", 1.0));
  if (!(a.temperature > 0.0f)) call.Fail("KD_EINVAL", "divergence: temperature must be > 0");

  int64_t loss_numel = loss.numel();
  if (a.reduction == kNone ? (loss.ndim != 1 || loss.shape[0] != a.n || loss.strides[0] != 1) : loss_numel != 1)
    call.Fail("KD_ESHAPE", "divergence: 'loss' has the wrong shape for this reduction");
  a.loss = static_cast<float*>(loss.data);
  a.hard = static_cast<float*>(hard.data);
  a.soft = static_cast<float*>(soft.data);
  a.total = static_cast<float*>(total.data);
  if (grad.present) {
    if (grad.shape[0] != a.n || grad.shape[1] != a.v || grad.strides[1] != 1)
      call.Fail("KD_ESHAPE", "divergence: 'grad' must be [" + std::to_string(a.n) + ", " + std::to_string(a.v) + "] with contiguous rows");
    a.grad = grad.data; a.ldg = grad.strides[0]; a.g_dtype = grad.dtype;
  }
  // Labels index the row when a CE term is present: range-check them here on CPU (the
  // CUDA path relies on lib/ having checked a host copy, and writes NaN otherwise).
  if (labels.present && call.device() < 0) {
    const int32_t* l = a.labels;
    for (int64_t i = 0; i < a.n; ++i)
      if (l[i] != a.ignore_index && (l[i] < 0 || l[i] >= a.v))
        call.Fail("KD_ERANGE", "divergence: labels[" + std::to_string(i) + "] = " + std::to_string(l[i]) +
                                   " is outside [0, " + std::to_string(a.v) + ") and is not ignoreIndex");
  }
  a.device = call.device();
  if (a.device >= 0) {
    if (!ws.present || ws.numel() < divergence_workspace_bytes(a.n)) call.Fail("KD_EINVAL", "divergence: CUDA workspace missing or too small");
    a.workspace = ws.data;
    a.stream = call.Stream();
  }
  return call.Run([a] { return a.device < 0 ? cpu::divergence(a) : cuda::divergence(a); });
}

}  // namespace kd::binding
