// PLACEHOLDER until the op lands: reports "not implemented" (never called as done).
#include "cpu/kernels.h"
namespace kd::cpu::KD_ISA {
Status topk(const TopkArgs&) { return make_status(kUnsupported, "topk is not implemented yet"); }
}  // namespace kd::cpu::KD_ISA
