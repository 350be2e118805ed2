// Host launchers of the CUDA kernels (defined in native/cuda/<op>.cu). Plain C++
// declarations, so the binding can include this without nvcc. Each launcher enqueues
// its work on args.stream (a cudaStream_t) for args.device and returns without
// waiting; it returns a Status and never throws.
#pragma once
#include <cstdint>

#include "common/divergence.h"
#include "common/sample_teacher.h"
#include "common/sparse_kl_div.h"
#include "common/status.h"
#include "common/topk.h"
#include "common/triad.h"

namespace kd::cuda {

Status triad(const TriadArgs& args);
Status divergence(const DivergenceArgs& args);
Status token_stats(const TokenStatsArgs& args);
Status topk(const TopkArgs& args);
Status sample_teacher(const SampleTeacherArgs& args);
Status sparse_kl_div(const SparseKlDivArgs& args);

}  // namespace kd::cuda
