// CUDA runtime services for the binding (devices, memory, streams), declared without
// CUDA headers so the binding compiles with a plain C++ compiler. Implemented in
// runtime.cu, or in runtime_stub.cc when CUDA is not compiled in.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_plan.h"
#include "common/status.h"

namespace kd::cuda {

struct DeviceInfo {
  int index = 0;
  char name[256] = {0};
  int major = 0, minor = 0;
  size_t total_memory = 0;
  int multiprocessors = 0;
  int memory_bus_width = 0;   // bits
  int l2_cache_bytes = 0;
};

// True when this binary contains the CUDA backend.
bool compiled();
// Number of usable devices; on failure returns 0 and sets *reason (static text).
int device_count(const char** reason);
Status device_info(int device, DeviceInfo* out);
int runtime_version();
int driver_version();  // 0 when no driver

// The library's stream for a device (created on first use, non-blocking).
Status default_stream(int device, void** stream);
// Make `waiter` wait for all work enqueued so far on `signaler` (event-based).
Status stream_wait(int device, void* signaler, void* waiter);
Status synchronize(int device);
Status stream_synchronize(int device, void* stream);

// Stream-ordered allocation on the device's default stream.
Status malloc_async(int device, size_t bytes, void** ptr);
Status free_async(int device, void* ptr);
Status memset_async(int device, void* ptr, int value, size_t bytes);
// Copies between host (pageable) and device memory; they return when the copy is done.
Status copy_to_device(int device, void* dst, const void* src, size_t bytes);
Status copy_to_host(int device, void* dst, const void* src, size_t bytes);

// What the pointer is: device memory of `*device` (true), or not device memory.
Status pointer_info(const void* ptr, int* device, bool* is_device);

// The library's memory pool of a device (cudaMemPoolCreate; every malloc_async comes
// from it): bytes reserved from the driver, and bytes of it in live allocations. Freed
// memory stays reserved for reuse up to the release threshold (tuning.h
// kCudaPoolReleaseFraction of the device's memory), so a training loop's per-step
// tensors do not pay a cudaMalloc each step.
Status pool_info(int device, uint64_t* reserved, uint64_t* used);
// Waits for the library's stream of the device (so pending frees have completed), then
// returns reserved memory to the driver until at most keep_bytes stay reserved
// (cudaMemPoolTrimTo).
Status pool_trim(int device, uint64_t keep_bytes);

// cudaGetErrorString, plus, for a sticky error (an illegal address, a kernel fault, an
// assert: the process's CUDA context is lost), that the process must be restarted.
// Static storage. `cuda_error` is a cudaError_t.
const char* error_message(int cuda_error);

// The shared-memory attributes of a device (< 0: the current one), cached per device.
Status smem_limits(int device, SmemLimits* out);

// Allows launches of `kernel` (a __global__ function's address) with `bytes` of dynamic
// shared memory on `device` (< 0: the current one): cudaFuncSetAttribute(
// MaxDynamicSharedMemorySize) when bytes > 48 KB, only ever raised, once per (kernel,
// device) and size, under a lock. kUnsupported when the device cannot give that much.
Status allow_dynamic_smem(const void* kernel, int device, size_t bytes);

}  // namespace kd::cuda
