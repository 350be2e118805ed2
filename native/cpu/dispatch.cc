#include <cstring>

#include "cpu/kernels.h"

namespace kd::cpu {
namespace {

int detect() {
#if defined(KD_X86_DISPATCH)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2"))
    return 1;
#endif
  return 0;
}

const int kBest = detect();
int g_level = kBest;

}  // namespace

const char* isa_name() { return g_level == 2 ? "avx512" : g_level == 1 ? "avx2" : "generic"; }

bool set_isa(const char* name) {
  int want = std::strcmp(name, "avx512") == 0 ? 2 : std::strcmp(name, "avx2") == 0 ? 1
           : std::strcmp(name, "generic") == 0 ? 0 : -1;
  if (want < 0 || want > kBest) return false;
  g_level = want;
  return true;
}

#if defined(KD_X86_DISPATCH)
#define KD_DISPATCH(name, Args)                               \
  Status name(const Args& args) {                             \
    if (g_level == 2) return avx512::name(args);              \
    if (g_level == 1) return avx2::name(args);                \
    return generic::name(args);                               \
  }
#else
#define KD_DISPATCH(name, Args) \
  Status name(const Args& args) { return generic::name(args); }
#endif
KD_CPU_KERNELS(KD_DISPATCH)

}  // namespace kd::cpu
