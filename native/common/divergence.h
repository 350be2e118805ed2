// Arguments of the fused divergence engine behind klDiv, jsd, tvd, skewKl and
// distillationLoss (the same pass with a cross-entropy term riding along), shared by
// the CPU and CUDA kernels. Per row i (token), with q = softmax(z/T), p = softmax(t/T)
// (or log p = t for teacher log-probs at T = 1):
//
//   D_i     = D(p, q)                          (see native/common/divergence_math.h)
//   hard_i  = CE(softmax(z), label_i)          (untempered, label smoothing eps)
//   total_i = w_i * (hard_weight * hard_i + soft_weight * D_i)
//   soft_i  = soft_scale * D_i                 (the per-token output; no weights)
//
// soft_weight = softWeight * s and soft_scale = s, s = T^2 when
// scaleByTemperatureSquared, else 1. A row is selected
// when label != ignore_index (if labels) and mask != 0 (if mask). The loss is the
// reduction of total over selected rows; the gradient is grad_scale * dLoss/dz.
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace kd {

enum Div : int32_t {
  kForwardKl = 0,
  kReverseKl = 1,
  kJsd = 2,
  kTvd = 3,
  kSkewForwardKl = 4,
  kSkewReverseKl = 5,
  kNoDivergence = 6,  // distillationLoss with softWeight = 0: CE only
};

enum Reduction : int32_t { kNone = 0, kSum = 1, kMean = 2, kBatchMean = 3 };

struct DivergenceArgs {
  int64_t n = 0, v = 0;               // rows, vocabulary (the student's V)
  const void* s = nullptr;            // student logits [n, lds], only v columns used
  int64_t lds = 0;
  int32_t s_dtype = kF32;
  const void* t = nullptr;            // teacher logits or log-probs [n, ldt]
  int64_t ldt = 0;
  int32_t t_dtype = kF32;
  bool teacher_logprobs = false;

  const int32_t* labels = nullptr;    // [n] or null; CE target and selection
  int32_t ignore_index = -100;
  const uint8_t* mask = nullptr;      // [n] or null
  const float* weights = nullptr;     // [n] or null

  int32_t div = kForwardKl;
  float beta = 0.5f;                  // jsd
  float skew = 0.1f;                  // skew KLs (lambda)
  float temperature = 1.0f;
  float soft_weight = 1.0f;           // includes T^2 when requested
  float soft_scale = 1.0f;            // the per-token `soft` output: soft_scale * D (T^2 or 1)
  float hard_weight = 0.0f;           // 0: no CE term (plain divergences)
  float label_smoothing = 0.0f;

  int32_t reduction = kBatchMean;
  double normalizer = 0.0;            // > 0: replaces the divisor
  float grad_scale = 1.0f;

  void* grad = nullptr;               // [n, ldg] or null (no gradient); may alias s
  int64_t ldg = 0;
  int32_t g_dtype = kF32;

  float* loss = nullptr;              // scalar (reduced) or [n] for kNone
  float* hard = nullptr;              // [n] per-token outputs, each optional
  float* soft = nullptr;
  float* total = nullptr;

  void* stream = nullptr;             // CUDA: cudaStream_t
  int32_t device = -1;
  void* workspace = nullptr;          // CUDA: >= divergence_workspace_bytes(n) bytes
};

// Per-token statistics for on-policy distillation (one forward read of both rows).
struct TokenStatsArgs {
  int64_t n = 0, v = 0;
  const void* s = nullptr; int64_t lds = 0; int32_t s_dtype = kF32;
  const void* t = nullptr; int64_t ldt = 0; int32_t t_dtype = kF32;
  bool teacher_logprobs = false;
  float temperature = 1.0f;
  const int32_t* sampled = nullptr;   // [n] or null
  float* forward_kl = nullptr;        // [n] each (all required)
  float* reverse_kl = nullptr;
  float* student_entropy = nullptr;
  float* teacher_entropy = nullptr;
  float* student_logprob = nullptr;   // required iff sampled
  float* teacher_logprob = nullptr;
  int32_t* teacher_rank = nullptr;
  void* stream = nullptr;
  int32_t device = -1;
};

// CUDA workspace for the divergence engine: per-row totals + the selected count.
inline int64_t divergence_workspace_bytes(int64_t n) { return (n + 4) * 8; }

}  // namespace kd
