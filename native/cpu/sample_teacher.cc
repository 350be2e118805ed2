// PLACEHOLDER until the op lands: reports "not implemented" (never called as done).
#include "cpu/kernels.h"
namespace kd::cpu::KD_ISA {
Status sample_teacher(const SampleTeacherArgs&) { return make_status(kUnsupported, "sample_teacher is not implemented yet"); }
}  // namespace kd::cpu::KD_ISA
