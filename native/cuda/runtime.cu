// CUDA runtime services: device discovery, one non-blocking stream per device,
// stream-ordered allocation from the library's own memory pool per device
// (cudaMallocFromPoolAsync; freed memory stays reserved up to a release threshold, so
// per-call workspaces and per-step tensors are reused, not cudaMalloc'ed), host<->device
// copies, error messages that say when the context is lost, and the per-(kernel, device)
// dynamic shared-memory attribute. The runtime is linked statically; on a machine without
// a driver cudaGetDeviceCount fails (e.g. error 35, insufficient driver) and that text
// is what backends() reports.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "cuda/runtime.h"

namespace kd::cuda {
namespace {

constexpr int kMaxDevices = 64;
std::mutex g_mu;
cudaStream_t g_streams[kMaxDevices] = {};
cudaMemPool_t g_pools[kMaxDevices] = {};

Status err(cudaError_t e) { return make_status(kCuda, error_message(int(e))); }
#define KD_CUDA_TRY(expr)                     \
  do {                                        \
    cudaError_t e_ = (expr);                  \
    if (e_ != cudaSuccess) return err(e_);    \
  } while (0)

Status set_device(int device) {
  if (device < 0 || device >= kMaxDevices) return make_status(kInvalid, "device index out of range");
  KD_CUDA_TRY(cudaSetDevice(device));
  return ok_status();
}

}  // namespace

bool compiled() { return true; }

int device_count(const char** reason) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    *reason = cudaGetErrorString(e);
    cudaGetLastError();  // clear the (non-sticky) error
    return 0;
  }
  if (n == 0) *reason = "no CUDA device found";
  return n;
}

Status device_info(int device, DeviceInfo* out) {
  cudaDeviceProp p;
  KD_CUDA_TRY(cudaGetDeviceProperties(&p, device));
  out->index = device;
  for (int i = 0; i < 255 && p.name[i]; ++i) out->name[i] = p.name[i];
  out->major = p.major;
  out->minor = p.minor;
  out->total_memory = p.totalGlobalMem;
  out->multiprocessors = p.multiProcessorCount;
  out->memory_bus_width = p.memoryBusWidth;
  out->l2_cache_bytes = p.l2CacheSize;
  return ok_status();
}

int runtime_version() { int v = 0; cudaRuntimeGetVersion(&v); return v; }
int driver_version() { int v = 0; if (cudaDriverGetVersion(&v) != cudaSuccess) return 0; return v; }

Status default_stream(int device, void** stream) {
  Status s = set_device(device);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> lk(g_mu);
  if (!g_streams[device]) KD_CUDA_TRY(cudaStreamCreateWithFlags(&g_streams[device], cudaStreamNonBlocking));
  *stream = g_streams[device];
  return ok_status();
}

Status stream_wait(int device, void* signaler, void* waiter) {
  if (signaler == waiter) return ok_status();
  Status s = set_device(device);
  if (!s.ok()) return s;
  cudaEvent_t ev;
  KD_CUDA_TRY(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  cudaError_t e = cudaEventRecord(ev, static_cast<cudaStream_t>(signaler));
  if (e == cudaSuccess) e = cudaStreamWaitEvent(static_cast<cudaStream_t>(waiter), ev, 0);
  cudaEventDestroy(ev);  // safe: destruction is deferred until the event completes
  if (e != cudaSuccess) return err(e);
  return ok_status();
}

Status synchronize(int device) {
  void* st;
  Status s = default_stream(device, &st);
  if (!s.ok()) return s;
  KD_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(st)));
  return ok_status();
}

Status stream_synchronize(int device, void* stream) {
  Status s = set_device(device);
  if (!s.ok()) return s;
  KD_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  return ok_status();
}

// The library's pool of a device, created on first use: device-local, no IPC handles, a
// release threshold of 1/tuning::kCudaPoolReleaseFraction of the device's memory. Our own
// pool rather than the device's default one, so that its attributes (and what
// cudaPoolInfo reports) are ours alone and other CUDA users of the process are unaffected.
Status pool_of(int device, cudaMemPool_t* pool) {
  Status s = set_device(device);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> lk(g_mu);
  if (!g_pools[device]) {
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t p;
    KD_CUDA_TRY(cudaMemPoolCreate(&p, &props));
    size_t free_b = 0, total_b = 0;
    cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
    uint64_t threshold = uint64_t(total_b) / uint64_t(tuning::kCudaPoolReleaseFraction);
    if (e == cudaSuccess) e = cudaMemPoolSetAttribute(p, cudaMemPoolAttrReleaseThreshold, &threshold);
    if (e != cudaSuccess) {
      cudaMemPoolDestroy(p);
      return err(e);
    }
    g_pools[device] = p;
  }
  *pool = g_pools[device];
  return ok_status();
}

Status malloc_async(int device, size_t bytes, void** ptr) {
  void* st;
  Status s = default_stream(device, &st);
  if (!s.ok()) return s;
  cudaMemPool_t pool;
  s = pool_of(device, &pool);
  if (!s.ok()) return s;
  *ptr = nullptr;
  if (bytes == 0) return ok_status();
  cudaError_t e = cudaMallocFromPoolAsync(ptr, bytes, pool, static_cast<cudaStream_t>(st));
  if (e == cudaErrorMemoryAllocation) { cudaGetLastError(); return make_status(kNoMem, "out of device memory"); }
  if (e != cudaSuccess) return err(e);
  return ok_status();
}

Status free_async(int device, void* ptr) {
  if (!ptr) return ok_status();
  void* st;
  Status s = default_stream(device, &st);
  if (!s.ok()) return s;
  KD_CUDA_TRY(cudaFreeAsync(ptr, static_cast<cudaStream_t>(st)));
  return ok_status();
}

Status memset_async(int device, void* ptr, int value, size_t bytes) {
  if (!bytes) return ok_status();
  void* st;
  Status s = default_stream(device, &st);
  if (!s.ok()) return s;
  KD_CUDA_TRY(cudaMemsetAsync(ptr, value, bytes, static_cast<cudaStream_t>(st)));
  return ok_status();
}

Status copy_to_device(int device, void* dst, const void* src, size_t bytes) {
  if (!bytes) return ok_status();
  void* st;
  Status s = default_stream(device, &st);
  if (!s.ok()) return s;
  KD_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(st)));
  KD_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(st)));  // src is pageable JS memory
  return ok_status();
}

Status copy_to_host(int device, void* dst, const void* src, size_t bytes) {
  if (!bytes) return ok_status();
  void* st;
  Status s = default_stream(device, &st);
  if (!s.ok()) return s;
  KD_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(st)));
  KD_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(st)));
  return ok_status();
}

Status pointer_info(const void* ptr, int* device, bool* is_device) {
  cudaPointerAttributes a;
  cudaError_t e = cudaPointerGetAttributes(&a, ptr);
  if (e != cudaSuccess) { cudaGetLastError(); *is_device = false; return ok_status(); }
  *is_device = a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
  *device = a.device;
  return ok_status();
}

Status pool_info(int device, uint64_t* reserved, uint64_t* used) {
  cudaMemPool_t pool;
  Status s = pool_of(device, &pool);
  if (!s.ok()) return s;
  unsigned long long r = 0, u = 0;  // cuuint64_t (the driver header is not included)
  KD_CUDA_TRY(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &r));
  KD_CUDA_TRY(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &u));
  *reserved = uint64_t(r);
  *used = uint64_t(u);
  return ok_status();
}

Status pool_trim(int device, uint64_t keep_bytes) {
  Status s = synchronize(device);  // frees enqueued on our stream must have completed
  if (!s.ok()) return s;
  cudaMemPool_t pool;
  s = pool_of(device, &pool);
  if (!s.ok()) return s;
  KD_CUDA_TRY(cudaMemPoolTrimTo(pool, size_t(keep_bytes)));
  return ok_status();
}

const char* error_message(int code) {
  const cudaError_t e = static_cast<cudaError_t>(code);
  switch (e) {
    // Sticky: the context is corrupted, every later call of this process fails the same way.
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable: {
      static std::mutex mu;
      static std::map<int, std::string> texts;  // nodes never move: c_str() stays valid
      std::lock_guard<std::mutex> lk(mu);
      auto it = texts.find(code);
      if (it == texts.end())
        it = texts.emplace(code, std::string(cudaGetErrorString(e)) +
                                     " (a sticky CUDA error: this process's CUDA context is lost and every later "
                                     "CUDA call will fail; save what you can and restart the process)").first;
      return it->second.c_str();
    }
    default: return cudaGetErrorString(e);
  }
}

Status smem_limits(int device, SmemLimits* out) {
  int dev = device;
  if (dev < 0) KD_CUDA_TRY(cudaGetDevice(&dev));
  if (dev >= kMaxDevices) return make_status(kInvalid, "device index out of range");
  static std::mutex mu;
  static SmemLimits cache[kMaxDevices];
  static bool have[kMaxDevices] = {};
  std::lock_guard<std::mutex> lk(mu);
  if (!have[dev]) {
    int per_sm = 0, reserved = 0, optin = 0;
    KD_CUDA_TRY(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
    KD_CUDA_TRY(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev));
    KD_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    cache[dev] = SmemLimits{per_sm, reserved, optin};
    have[dev] = true;
  }
  *out = cache[dev];
  return ok_status();
}

Status allow_dynamic_smem(const void* kernel, int device, size_t bytes) {
  constexpr size_t kDefault = 48u * 1024u;  // allowed without the attribute
  if (bytes <= kDefault) return ok_status();
  int dev = device;
  if (dev < 0) KD_CUDA_TRY(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> allowed;  // what the attribute is now
  std::lock_guard<std::mutex> lk(mu);
  const auto key = std::make_pair(kernel, dev);
  auto it = allowed.find(key);
  if (it != allowed.end() && it->second >= bytes) return ok_status();
  SmemLimits L;
  Status s = smem_limits(dev, &L);
  if (!s.ok()) return s;
  cudaFuncAttributes fa;
  KD_CUDA_TRY(cudaFuncGetAttributes(&fa, kernel));
  if (int64_t(bytes) > max_dynamic_smem(L, int64_t(fa.sharedSizeBytes)))
    return make_status(kUnsupported,
                       "this launch needs more shared memory per block than the GPU offers "
                       "(cudaDevAttrMaxSharedMemoryPerBlockOptin); use a smaller k or V on this GPU");
  KD_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  allowed[key] = bytes;
  return ok_status();
}

}  // namespace kd::cuda
