// Token selection and loss reduction semantics shared by every loss kernel (CPU and
// CUDA), so that 'batchmean', 'mean', 'sum', 'none' and `normalizer` mean the same
// thing everywhere:
//   selected(i) = (labels == null || labels[i] != ignore_index) && (mask == null || mask[i] != 0)
//   divisor     = normalizer > 0 ? normalizer
//               : batchmean ? count : mean ? count * V : 1       (none, sum)
//   loss        = sum_i total_i / divisor ('none': total_i per row, divisor 1)
// With count == 0 (everything ignored) the loss and the gradient are 0, never NaN.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "common/divergence.h"

namespace kd {

KD_HD bool row_selected(const int32_t* labels, int32_t ignore_index, const uint8_t* mask, int64_t i) {
  if (labels && labels[i] == ignore_index) return false;
  if (mask && mask[i] == 0) return false;
  return true;
}

// Returns 0 when nothing is selected: the caller then writes loss 0 and grad 0.
KD_HD double loss_divisor(int32_t reduction, int64_t count, int64_t v, double normalizer) {
  if (count == 0) return 0.0;
  if (normalizer > 0.0) return reduction == kNone ? 1.0 : normalizer;
  if (reduction == kBatchMean) return double(count);
  if (reduction == kMean) return double(count) * double(v);
  return 1.0;
}

}  // namespace kd
