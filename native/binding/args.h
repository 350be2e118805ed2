// Unpacking JS arguments into plain C++ for the compute layers, with the checks that
// memory safety needs (the friendly validation lives in lib/*.ts): every tensor's
// extent (shape x strides x element size) must lie inside the memory it names, device
// memory must not be freed, all tensors of a call must be on one device.
//
// A tensor arrives as a descriptor object built by lib/tensor.ts:
//   { dtype: int, device: int (-1 = cpu), shape: number[], strides: number[],
//     data?: TypedArray (cpu), mem?: External<DeviceMemory> (cuda), offset?: bytes }
#pragma once
#include <napi.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace kd::binding {

// Device memory owned by the library (malloc_async) or borrowed (fromDevicePointer).
struct DeviceMemory {
  void* ptr = nullptr;
  size_t bytes = 0;
  int device = 0;
  bool owned = true;
  bool freed = false;
};

struct TensorArg {
  bool present = false;
  void* data = nullptr;
  int32_t dtype = 0;
  int32_t device = -1;
  int ndim = 0;
  int64_t shape[8] = {0};
  int64_t strides[8] = {0};
  int64_t numel() const;
};

// Throws KdError(code, message) in `env` (the class registered by setErrorClass).
[[noreturn]] void Throw(Napi::Env env, const char* code, const std::string& message);
// Throws for a failed Status, mapping its code to a KD_* code.
[[noreturn]] void ThrowStatus(Napi::Env env, const Status& s, const char* op);
const char* StatusCodeName(int code);

// One op call: reads named tensors and options from the args object, keeps the JS
// objects alive for async work, and runs the compute function sync or async.
class OpCall {
 public:
  OpCall(const Napi::CallbackInfo& info, const char* op);

  // Reads tensor `name`; allowed dtypes as a bit mask (1 << DType). ndim must match
  // (or -1 for any). Missing + !required returns present=false.
  TensorArg Tensor(const char* name, uint32_t dtypes, int ndim, bool required);
  double Number(const char* name, double fallback) const;
  int64_t Int(const char* name, int64_t fallback) const;
  bool Bool(const char* name, bool fallback) const;
  uint64_t BigUint(const char* name, uint64_t fallback) const;

  int device() const { return device_; }
  // CUDA: the stream to launch on (the caller's `stream` or the device's default).
  void* Stream();
  [[noreturn]] void Fail(const char* code, const std::string& message) const { Throw(env_, code, message); }
  Napi::Env env() const { return env_; }

  // Runs fn now (sync) or on the libuv pool returning a Promise (args.async, CPU).
  Napi::Value Run(std::function<Status()> fn);

 private:
  Napi::Env env_;
  Napi::Object args_;
  const char* op_;
  int device_ = -2;  // -2: no tensor seen yet
  void* caller_stream_ = nullptr;
  void* default_stream_ = nullptr;
  std::vector<Napi::Value> keep_;
};

Napi::Object InitDevice(Napi::Env env, Napi::Object exports);
Napi::Object InitCudaDebug(Napi::Env env, Napi::Object exports);  // cuda_debug.cc (tests only)
Napi::Object InitOps(Napi::Env env, Napi::Object exports);
Napi::Object InitPool(Napi::Env env, Napi::Object exports);
DeviceMemory* UnwrapMemory(Napi::Env env, Napi::Value v, const char* what);

}  // namespace kd::binding
