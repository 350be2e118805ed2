// PLACEHOLDER until the op lands: reports "not implemented" (never called as done).
#include "cpu/kernels.h"
namespace kd::cpu::KD_ISA {
Status sparse_kl_div(const SparseKlDivArgs&) { return make_status(kUnsupported, "sparse_kl_div is not implemented yet"); }
}  // namespace kd::cpu::KD_ISA
