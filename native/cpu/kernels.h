// The CPU kernels, compiled once per ISA level (see CMakeLists.txt) into
// kd::cpu::<isa>, and the dispatchers kd::cpu::<name>() that pick the best level the
// machine supports at run time. Add a kernel: add it to KD_CPU_KERNELS.
#pragma once
#include "common/status.h"
#include "common/triad.h"
#include "common/divergence.h"
#include "common/topk.h"
#include "common/sample_teacher.h"
#include "common/sparse_kl_div.h"

#define KD_CPU_KERNELS(X)                  \
  X(triad, TriadArgs)                      \
  X(divergence, DivergenceArgs)            \
  X(token_stats, TokenStatsArgs)           \
  X(topk, TopkArgs)                        \
  X(sample_teacher, SampleTeacherArgs)     \
  X(sparse_kl_div, SparseKlDivArgs)

#define KD_DECLARE_KERNEL(name, Args) Status name(const Args& args);

namespace kd::cpu {
namespace generic { KD_CPU_KERNELS(KD_DECLARE_KERNEL) }
namespace avx2 { KD_CPU_KERNELS(KD_DECLARE_KERNEL) }
namespace avx512 { KD_CPU_KERNELS(KD_DECLARE_KERNEL) }
// Dispatchers.
KD_CPU_KERNELS(KD_DECLARE_KERNEL)
// "avx512", "avx2" or "generic": the level the dispatchers use.
const char* isa_name();
// Force a lower level (tests compare levels); returns false if unsupported here.
bool set_isa(const char* name);
}  // namespace kd::cpu

#if defined(KD_ISA)
#define KD_ISA_NAMESPACE KD_ISA
#endif
