// sparseKlDiv(args): KD against a sparse (top-k or sampled) teacher with the student's
// full-vocabulary softmax. Unpacks into SparseKlDivArgs; checks what memory safety needs
// (shapes vs memory, strides, teacher ids in [0, V) on the CPU).
#include <string>

#include "binding/args.h"
#include "common/divergence.h"
#include "common/sparse_kl_div.h"
#include "cpu/kernels.h"
#include "cuda/kernels.h"

namespace kd::binding {
namespace {
constexpr uint32_t kFloats = (1u << kF32) | (1u << kF16) | (1u << kBF16);

void CheckRows(OpCall& call, const TensorArg& t, int64_t n, const char* name) {
  if (t.present && (t.shape[0] != n || (n > 1 && t.strides[0] != 1)))
    call.Fail("KD_ESHAPE", std::string("sparseKlDiv: '") + name + "' must be a contiguous [" + std::to_string(n) + "] tensor");
}
void CheckSlots(OpCall& call, const TensorArg& t, int64_t n, int64_t k, const char* name) {
  if (t.present && (t.shape[0] != n || t.shape[1] != k || (n > 0 && k > 0 && (t.strides[1] != 1 || (n > 1 && t.strides[0] != k)))))
    call.Fail("KD_ESHAPE", std::string("sparseKlDiv: '") + name + "' must be a contiguous [" + std::to_string(n) + ", " +
                               std::to_string(k) + "] tensor");
}
}  // namespace

Napi::Value SparseKlDiv(const Napi::CallbackInfo& info) {
  OpCall call(info, "sparseKlDiv");
  TensorArg s = call.Tensor("student", kFloats, 2, true);
  TensorArg ids = call.Tensor("ids", 1u << kI32, 2, true);
  TensorArg values = call.Tensor("values", kFloats, 2, false);
  TensorArg tail_lp = call.Tensor("tailLogProb", 1u << kF32, 1, false);
  TensorArg sw = call.Tensor("sampleWeights", 1u << kF32, 2, false);
  TensorArg labels = call.Tensor("labels", 1u << kI32, 1, false);
  TensorArg mask = call.Tensor("mask", 1u << kU8, 1, false);
  TensorArg weights = call.Tensor("weights", 1u << kF32, 1, false);
  TensorArg grad = call.Tensor("grad", kFloats, 2, false);
  TensorArg loss = call.Tensor("loss", 1u << kF32, -1, true);
  TensorArg ws = call.Tensor("workspace", 1u << kU8, 1, false);

  SparseKlDivArgs a;
  a.n = s.shape[0];
  a.v = s.shape[1];
  a.k = ids.shape[1];
  if (s.strides[1] != 1 && a.v > 1) call.Fail("KD_ESHAPE", "sparseKlDiv: the last dimension of the student logits must be contiguous");
  if (a.n > 0 && a.v < 1) call.Fail("KD_ESHAPE", "sparseKlDiv: V must be >= 1");
  if (a.v > 0x7fffffffLL) call.Fail("KD_ESHAPE", "sparseKlDiv: V must fit in int32");
  if (a.n > 0 && (a.k < 1 || a.k > kSparseMaxSlots))
    call.Fail("KD_ESHAPE", "sparseKlDiv: the sparse teacher must have 1 to " + std::to_string(kSparseMaxSlots) + " slots per row");
  a.tail = int32_t(call.Int("tail", kRenormalize));
  if (a.tail < kRenormalize || a.tail > kSampled) call.Fail("KD_EINVAL", "sparseKlDiv: unknown tail code");
  CheckSlots(call, ids, a.n, a.k, "ids");
  CheckSlots(call, values, a.n, a.k, "values");
  CheckSlots(call, sw, a.n, a.k, "sampleWeights");
  CheckRows(call, tail_lp, a.n, "tailLogProb");
  if (a.tail == kSampled ? !sw.present : !values.present)
    call.Fail("KD_EINVAL", a.tail == kSampled ? "sparseKlDiv: tail 'sampled' needs sampleWeights" : "sparseKlDiv: this tail needs teacher values");
  if (a.tail == kBucket && !tail_lp.present) call.Fail("KD_EINVAL", "sparseKlDiv: tail 'bucket' needs tailLogProb");
  CheckRows(call, labels, a.n, "labels");
  CheckRows(call, mask, a.n, "mask");
  CheckRows(call, weights, a.n, "weights");
  a.s = s.data;
  a.lds = a.n > 1 ? s.strides[0] : a.v;
  if (a.n > 1 && a.lds < a.v) call.Fail("KD_ESHAPE", "sparseKlDiv: the row stride of the student is smaller than V");
  a.s_dtype = s.dtype;
  a.ids = static_cast<const int32_t*>(ids.data);
  a.values = values.data;
  a.values_dtype = values.present ? values.dtype : kF32;
  a.tail_logprob = static_cast<const float*>(tail_lp.data);
  a.sample_weights = static_cast<const float*>(sw.data);
  a.temperature = float(call.Number("temperature", 1.0));
  if (!(a.temperature > 0.0f)) call.Fail("KD_EINVAL", "sparseKlDiv: temperature must be > 0");
  a.soft_weight = float(call.Number("softWeight", 1.0));
  a.labels = static_cast<const int32_t*>(labels.data);
  a.ignore_index = int32_t(call.Int("ignoreIndex", -100));
  a.mask = static_cast<const uint8_t*>(mask.data);
  a.weights = static_cast<const float*>(weights.data);
  a.reduction = int32_t(call.Int("reduction", kBatchMean));
  if (a.reduction < kNone || a.reduction > kBatchMean) call.Fail("KD_EINVAL", "sparseKlDiv: unknown reduction code");
  a.normalizer = call.Number("normalizer", 0.0);
  a.grad_scale = float(call.Number("gradScale", 1.0));
  if (a.reduction == kNone ? (loss.ndim != 1 || loss.shape[0] != a.n || (a.n > 1 && loss.strides[0] != 1)) : loss.numel() != 1)
    call.Fail("KD_ESHAPE", "sparseKlDiv: 'loss' has the wrong shape for this reduction");
  a.loss = static_cast<float*>(loss.data);
  if (grad.present) {
    if (grad.shape[0] != a.n || grad.shape[1] != a.v || (a.v > 1 && grad.strides[1] != 1))
      call.Fail("KD_ESHAPE", "sparseKlDiv: 'grad' must be [" + std::to_string(a.n) + ", " + std::to_string(a.v) + "] with contiguous rows");
    a.grad = grad.data;
    a.ldg = a.n > 1 ? grad.strides[0] : a.v;
    if (a.n > 1 && a.ldg < a.v) call.Fail("KD_ESHAPE", "sparseKlDiv: the row stride of 'grad' is smaller than V");
    a.g_dtype = grad.dtype;
  }
  // Teacher ids index the student row: range-check them here on the CPU (the CUDA path
  // relies on lib/ having checked a host copy, and writes NaN for the row otherwise).
  if (call.device() < 0) {
    const int64_t total = a.n * a.k;
    for (int64_t j = 0; j < total; ++j)
      if (a.ids[j] < 0 || a.ids[j] >= a.v)
        call.Fail("KD_ERANGE", "sparseKlDiv: ids[" + std::to_string(j / a.k) + ", " + std::to_string(j % a.k) + "] = " +
                                   std::to_string(a.ids[j]) + " is outside [0, " + std::to_string(a.v) + ")");
  }
  a.device = call.device();
  if (a.device >= 0) {
    if (!ws.present || ws.numel() < sparse_kl_div_workspace_bytes(a.n)) call.Fail("KD_EINVAL", "sparseKlDiv: CUDA workspace missing or too small");
    a.workspace = ws.data;
    a.stream = call.Stream();
  }
  return call.Run([a] { return a.device < 0 ? cpu::sparse_kl_div(a) : cuda::sparse_kl_div(a); });
}

}  // namespace kd::binding
