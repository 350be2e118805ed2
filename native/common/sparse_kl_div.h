// sparseKlDiv: KD against a sparse teacher (top-k or sampled ids) with the student's
// full-vocabulary softmax. Tail modes: renormalize, bucket, conditional, sampled.
//
// Per row (token), student z [V] (row stride lds), q = softmax(z/T) over all V
// (log q_j = (z_j - m)/T - log S), k teacher slots (ids, values = teacher log-probs at
// T, or sample weights). Write P_k for the teacher weight at vocabulary id k (0 off the
// ids). Loss L and dL/dz (derivations in test/reference/sparse.ts):
//   renormalize  p~ = softmax(values) over the k slots
//                L = sum_j p~_j (log p~_j - log q_{id_j})        dz = (q - P~)/T
//   bucket       p_j = e^{values_j}, p_t = e^{tailLogProb}, q_t = sum_{m not an id} q_m
//                (summed directly), S_p = sum_j p_j + p_t
//                L = sum_j p_j log(p_j / q_{id_j}) + p_t log(p_t / q_t)
//                dz_k = (q_k S_p - P_k)/T (k an id), q_k (S_p - p_t/q_t)/T (otherwise)
//   conditional  q~ = softmax(z_ids / T) over the slots, p~ as renormalize
//                L = sum_j p~_j (log p~_j - log q~_j)            dz = (q~ - P~)/T on the
//                ids, 0 elsewhere
//   sampled      L = -sum_j w_j log q_{id_j} (ids may repeat)    dz = (q W - W_k)/T,
//                W = sum_j w_j, W_k = sum of w over the slots at id k
// Terms with a zero teacher weight are left out (0 log 0 = 0). Per row
// total_i = w_i * soft_weight * L_i (soft_weight = T^2 when requested); loss and
// selection/reduction as common/select.h; grad = grad_scale * dLoss/dz, 0 on ignored
// rows. ids must lie in [0, V) (checked on the CPU; the CUDA kernel writes NaN to the
// row's loss and gradient for an id out of range instead of touching memory) and, except
// for 'sampled', be distinct within a row (the TS layer checks).
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
  void* workspace = nullptr;           // CUDA: >= sparse_kl_div_workspace_bytes(n)
};

// Slots per row (k of a top-k teacher, n of a sampled one): the CUDA kernel sorts a
// row's slots in shared memory. The API enforces this limit on both backends.
constexpr int64_t kSparseMaxSlots = 4096;

// CUDA workspace: the selected-row count and per-row totals (double), then reduced in
// row order by one block (deterministic).
inline int64_t sparse_kl_div_workspace_bytes(int64_t n) { return (n + 4) * 8; }

}  // namespace kd
