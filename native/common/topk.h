// topk: per row, the k largest logits (ties: lower index first), sorted descending,
// as raw logits or log-probs at temperature T, plus tailLogProb = log of the
// probability mass outside the top k, summed directly (no log(1 - x) cancellation).
//
// Order (the same on CPU and CUDA, and as test/reference/sparse.ts): by value
// descending, NaN above everything (as torch.topk), -0 == +0, equal values by lower
// index. Each element maps to a 64-bit composite key, larger = ranked higher:
//   key = topk_order_key(x) << 32 | (0xffffffff - index)
// so the top k are exactly the k largest composite keys, all distinct.
//
// With m = the row max, S_top = sum_{top k} e^{(x-m)/T}, S_tail = sum_{rest} e^{(x-m)/T}
// (summed over the tail elements themselves):
//   tailLogProb = log S_tail - log(S_top + S_tail) = -log1p(S_top / S_tail)
//   logprob_j   = (x_j - m)/T - log(S_top + S_tail)          (output 'logprobs')
// k = V: tailLogProb = -inf. A row whose max is NaN or +-inf (a NaN, a +inf, or only
// -inf) has no distribution: tailLogProb and log-probs are NaN (ids are still ranked).
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

// The CUDA kernel sorts survivors in shared memory: k is at most this (the API's limit).
constexpr int64_t kTopkMaxK = 1024;

// Order-preserving map float -> uint32 (larger float = larger key); every NaN maps to
// the largest key, -0 to the key of +0.
KD_HD uint32_t topk_order_key(float x) {
  uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffffffffu;
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Inverse of topk_order_key (NaN -> a NaN, the -0 key -> +0).
KD_HD float topk_key_value(uint32_t key) {
  return bits_f32((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

KD_HD uint64_t topk_composite(uint32_t key, uint32_t index) {
  return (uint64_t(key) << 32) | uint64_t(0xffffffffu - index);
}
KD_HD uint32_t topk_composite_index(uint64_t c) { return 0xffffffffu - uint32_t(c & 0xffffffffu); }

}  // namespace kd
