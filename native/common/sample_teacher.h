// sampleTeacher: the random-sampling estimator of Sparse Logit Sampling (Anshumann et
// al., ACL 2025). Per row, n ids drawn with replacement from r ∝ p^tau (p =
// softmax(x/T)); id j gets weight p_j / (n r_j), so E[sum of weights at i] = p_i.
// Randomness is counter-based (seed, row, draw), so CPU and CUDA agree.
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace kd {

struct SampleTeacherArgs {
  int64_t n = 0, v = 0, samples = 0;
  const void* x = nullptr; int64_t ldx = 0; int32_t x_dtype = kF32;
  float temperature = 1.0f;
  float proposal_power = 1.0f;
  uint64_t seed = 0;
  int32_t* indices = nullptr;   // [n, samples]
  float* weights = nullptr;     // [n, samples]
  float* logprobs = nullptr;    // [n, samples] teacher log p at the ids (optional)
  void* stream = nullptr;
  int32_t device = -1;
};

}  // namespace kd
