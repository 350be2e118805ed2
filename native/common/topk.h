// topk: per row, the k largest logits (ties: lower index first), sorted descending,
// as raw logits or log-probs at temperature T, plus tailLogProb = log of the
// probability mass outside the top k, summed directly (no log(1 - x) cancellation).
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace kd {

struct TopkArgs {
  int64_t n = 0, v = 0, k = 0;
  const void* x = nullptr; int64_t ldx = 0; int32_t x_dtype = kF32;
  float temperature = 1.0f;
  bool output_logprobs = false;
  void* values = nullptr; int32_t values_dtype = kF32;  // [n, k]
  int32_t* indices = nullptr;                            // [n, k]
  float* tail_logprob = nullptr;                         // [n]
  void* stream = nullptr;
  int32_t device = -1;
};

}  // namespace kd
