// The CUDA runtime services when the addon was built without CUDA (no nvcc at build
// time, or KD_CUDA=OFF). Every entry point reports that, so users see why.
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace kd::cuda {
namespace {
constexpr const char* kWhy =
    "this build of kd-kernels has no CUDA backend (built without nvcc or with KD_CUDA=OFF); "
    "rebuild with nvcc on PATH (npm rebuild kd-kernels) or install a prebuilt binary with CUDA";
Status off() { return make_status(kUnsupported, kWhy); }
}  // namespace

bool compiled() { return false; }
int device_count(const char** reason) { *reason = kWhy; return 0; }
Status device_info(int, DeviceInfo*) { return off(); }
int runtime_version() { return 0; }
int driver_version() { return 0; }
Status default_stream(int, void**) { return off(); }
Status stream_wait(int, void*, void*) { return off(); }
Status synchronize(int) { return off(); }
Status stream_synchronize(int, void*) { return off(); }
Status malloc_async(int, size_t, void**) { return off(); }
Status free_async(int, void*) { return off(); }
Status memset_async(int, void*, int, size_t) { return off(); }
Status copy_to_device(int, void*, const void*, size_t) { return off(); }
Status copy_to_host(int, void*, const void*, size_t) { return off(); }
Status pointer_info(const void*, int*, bool*) { return off(); }
Status pool_info(int, uint64_t*, uint64_t*) { return off(); }
Status pool_trim(int, uint64_t) { return off(); }
const char* error_message(int) { return kWhy; }
Status smem_limits(int, SmemLimits*) { return off(); }
Status allow_dynamic_smem(const void*, int, size_t) { return off(); }

Status triad(const TriadArgs&) { return off(); }
Status divergence(const DivergenceArgs&) { return off(); }
Status token_stats(const TokenStatsArgs&) { return off(); }
Status topk(const TopkArgs&) { return off(); }
Status sample_teacher(const SampleTeacherArgs&) { return off(); }
Status sparse_kl_div(const SparseKlDivArgs&) { return off(); }

}  // namespace kd::cuda
