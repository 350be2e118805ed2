// CUDA runtime services: device discovery, one non-blocking stream per device,
// stream-ordered allocation (cudaMallocAsync: pool-backed, so per-call workspaces are
// cheap), host<->device copies. The runtime is linked statically; on a machine without
// a driver cudaGetDeviceCount fails (e.g. error 35, insufficient driver) and that text
// is what backends() reports.
#include <cuda_runtime.h>

#include <mutex>

#include "cuda/runtime.h"

namespace kd::cuda {
namespace {

constexpr int kMaxDevices = 64;
std::mutex g_mu;
cudaStream_t g_streams[kMaxDevices] = {};

Status err(cudaError_t e) { return make_status(kCuda, cudaGetErrorString(e)); }
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

Status malloc_async(int device, size_t bytes, void** ptr) {
  void* st;
  Status s = default_stream(device, &st);
  if (!s.ok()) return s;
  *ptr = nullptr;
  if (bytes == 0) return ok_status();
  cudaError_t e = cudaMallocAsync(ptr, bytes, static_cast<cudaStream_t>(st));
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

}  // namespace kd::cuda
