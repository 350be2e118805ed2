// sparseKlDiv: KD against a sparse teacher (top-k or sampled ids) with the student's
// full-vocabulary softmax. Tail modes: renormalize, bucket, conditional, sampled.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "common/divergence.h"

namespace kd {

enum SparseTail : int32_t { kRenormalize = 0, kBucket = 1, kConditional = 2, kSampled = 3 };

struct SparseKlDivArgs {
  int64_t n = 0, v = 0, k = 0;
  const void* s = nullptr; int64_t lds = 0; int32_t s_dtype = kF32;
  const int32_t* ids = nullptr;        // [n, k]
  const void* values = nullptr;        // [n, k] teacher log-probs (not 'sampled')
  int32_t values_dtype = kF32;
  const float* tail_logprob = nullptr; // [n] ('bucket')
  const float* sample_weights = nullptr; // [n, k] ('sampled')
  int32_t tail = kRenormalize;
  float temperature = 1.0f;
  float soft_weight = 1.0f;            // T^2 when requested
  const int32_t* labels = nullptr; int32_t ignore_index = -100;
  const uint8_t* mask = nullptr;
  const float* weights = nullptr;
  int32_t reduction = kBatchMean;
  double normalizer = 0.0;
  float grad_scale = 1.0f;
  void* grad = nullptr; int64_t ldg = 0; int32_t g_dtype = kF32;
  float* loss = nullptr;
  void* stream = nullptr;
  int32_t device = -1;
  void* workspace = nullptr;
};

}  // namespace kd
