// Backends, CPU threads, and CUDA memory for tensors: allocation (reported to V8 as
// external memory, freed by dispose() or a finalizer), borrowing a caller's pointer,
// copies and synchronisation.
#include <string>

#include "binding/args.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "cuda/runtime.h"

namespace kd::binding {
namespace {

void FreeMemory(Napi::Env env, DeviceMemory* m) {
  if (m->freed) return;
  m->freed = true;
  if (m->owned && m->ptr) {
    cuda::free_async(m->device, m->ptr);  // errors at teardown are not actionable
    Napi::MemoryManagement::AdjustExternalMemory(env, -int64_t(m->bytes));
  }
}

Napi::Value WrapMemory(Napi::Env env, DeviceMemory* m) {
  return Napi::External<DeviceMemory>::New(env, m, [](Napi::Env env, DeviceMemory* mem) {
    FreeMemory(env, mem);
    delete mem;
  });
}

int DeviceArg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) Throw(info.Env(), "KD_EINVAL", "device index must be a number");
  int d = info[i].As<Napi::Number>().Int32Value();
  const char* why = "";
  int count = cuda::device_count(&why);
  if (!cuda::compiled() || count == 0)
    Throw(info.Env(), "KD_EDEVICE", std::string("CUDA is not available: ") + why);
  if (d < 0 || d >= count)
    Throw(info.Env(), "KD_EDEVICE", "cuda:" + std::to_string(d) + " does not exist (" + std::to_string(count) + " device(s))");
  return d;
}

void Check(Napi::Env env, const Status& s, const char* what) {
  if (!s.ok()) ThrowStatus(env, s, what);
}

Napi::Value Backends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("threads", cpu::num_threads());
  cpu.Set("simd", cpu::isa_name());
  r.Set("cpu", cpu);

  Napi::Object c = Napi::Object::New(env);
  c.Set("compiled", cuda::compiled());
  Napi::Array devs = Napi::Array::New(env);
  const char* why = "";
  int n = cuda::compiled() ? cuda::device_count(&why) : 0;
  if (!cuda::compiled()) cuda::device_count(&why);
  c.Set("available", n > 0);
  if (n == 0) c.Set("reason", why);
  c.Set("runtimeVersion", cuda::runtime_version());
  c.Set("driverVersion", cuda::driver_version());
  for (int i = 0; i < n; ++i) {
    cuda::DeviceInfo di;
    Status s = cuda::device_info(i, &di);
    if (!s.ok()) continue;
    Napi::Object d = Napi::Object::New(env);
    d.Set("index", i);
    d.Set("name", di.name);
    d.Set("computeCapability", std::to_string(di.major) + "." + std::to_string(di.minor));
    d.Set("totalMemory", double(di.total_memory));
    d.Set("multiprocessors", di.multiprocessors);
    d.Set("l2CacheBytes", di.l2_cache_bytes);
    devs.Set(uint32_t(devs.Length()), d);
  }
  c.Set("devices", devs);
  r.Set("cuda", c);
  return r;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  int n = info[0].As<Napi::Number>().Int32Value();
  if (n < 1 || n > 1024) Throw(info.Env(), "KD_EINVAL", "threads must be between 1 and 1024");
  cpu::set_num_threads(n);
  return info.Env().Undefined();
}

Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  std::string name = info[0].As<Napi::String>().Utf8Value();
  return Napi::Boolean::New(info.Env(), cpu::set_isa(name.c_str()));
}

// cudaAlloc(device, bytes, zero) -> handle
Napi::Value CudaAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int d = DeviceArg(info, 0);
  double bytes = info[1].As<Napi::Number>().DoubleValue();
  if (!(bytes >= 0 && bytes < 1.0e15)) Throw(env, "KD_EINVAL", "allocation size out of range");
  auto* m = new DeviceMemory();
  m->device = d;
  m->bytes = size_t(bytes);
  Status s = cuda::malloc_async(d, m->bytes, &m->ptr);
  if (!s.ok()) { delete m; ThrowStatus(env, s, "cudaAlloc"); }
  if (info[2].ToBoolean().Value()) {
    s = cuda::memset_async(d, m->ptr, 0, m->bytes);
    if (!s.ok()) { cuda::free_async(d, m->ptr); delete m; ThrowStatus(env, s, "cudaAlloc"); }
  }
  Napi::MemoryManagement::AdjustExternalMemory(env, int64_t(m->bytes));
  return WrapMemory(env, m);
}

Napi::Value CudaFree(const Napi::CallbackInfo& info) {
  FreeMemory(info.Env(), UnwrapMemory(info.Env(), info[0], "cudaFree"));
  return info.Env().Undefined();
}

// A byte count: a non-negative integer below 2^53 (what a JS number holds exactly).
uint64_t BytesArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) Throw(info.Env(), "KD_EINVAL", std::string(what) + ": the byte count must be a number");
  const double b = info[i].As<Napi::Number>().DoubleValue();
  if (!(b >= 0 && b <= 9007199254740991.0 && b == double(uint64_t(b))))
    Throw(info.Env(), "KD_EINVAL", std::string(what) + ": the byte count must be an integer in [0, 2^53), got " + std::to_string(b));
  return uint64_t(b);
}

// cudaWrap(ptr: bigint, bytes, device) -> handle to borrowed memory
Napi::Value CudaWrap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsBigInt()) Throw(env, "KD_EINVAL", "fromDevicePointer: ptr must be a bigint");
  bool lossless = true;
  uint64_t p = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless || p == 0) Throw(env, "KD_EINVAL", "fromDevicePointer: ptr must be a non-zero 64-bit address");
  const uint64_t bytes = BytesArg(info, 1, "fromDevicePointer");
  int d = DeviceArg(info, 2);
  int where = -1;
  bool is_dev = false;
  Check(env, cuda::pointer_info(reinterpret_cast<void*>(uintptr_t(p)), &where, &is_dev), "fromDevicePointer");
  if (!is_dev) Throw(env, "KD_EDEVICE", "fromDevicePointer: ptr is not CUDA device memory");
  if (where != d)
    Throw(env, "KD_EDEVICE", "fromDevicePointer: ptr is on cuda:" + std::to_string(where) + ", not cuda:" + std::to_string(d));
  auto* m = new DeviceMemory();
  m->ptr = reinterpret_cast<void*>(uintptr_t(p));
  m->bytes = size_t(bytes);
  m->device = d;
  m->owned = false;
  return WrapMemory(env, m);
}

// cudaPoolInfo(device) -> { reservedBytes, usedBytes } of the library's memory pool.
Napi::Value CudaPoolInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int d = DeviceArg(info, 0);
  uint64_t reserved = 0, used = 0;
  Check(env, cuda::pool_info(d, &reserved, &used), "cudaPoolInfo");
  Napi::Object o = Napi::Object::New(env);
  o.Set("reservedBytes", double(reserved));
  o.Set("usedBytes", double(used));
  return o;
}

// cudaPoolTrim(device, keepBytes): waits for the device's library stream, then returns
// reserved memory to the driver until at most keepBytes stay reserved.
Napi::Value CudaPoolTrim(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t keep = BytesArg(info, 1, "cudaPoolTrim");  // argument errors first, then the device
  int d = DeviceArg(info, 0);
  Check(env, cuda::pool_trim(d, keep), "cudaPoolTrim");
  return env.Undefined();
}

Napi::Value MemInfo(const Napi::CallbackInfo& info) {
  DeviceMemory* m = UnwrapMemory(info.Env(), info[0], "memInfo");
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("ptr", Napi::BigInt::New(info.Env(), uint64_t(uintptr_t(m->ptr))));
  o.Set("bytes", double(m->bytes));
  o.Set("freed", m->freed);
  o.Set("owned", m->owned);
  return o;
}

// cudaCopy(handle, offsetBytes, typedArray, toDevice)
Napi::Value CudaCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceMemory* m = UnwrapMemory(env, info[0], "copy");
  if (m->freed) Throw(env, "KD_EDISPOSED", "copy: the tensor was disposed");
  double off = info[1].As<Napi::Number>().DoubleValue();
  Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
  bool to_device = info[3].ToBoolean().Value();
  if (ta.ArrayBuffer().IsDetached()) Throw(env, "KD_EDISPOSED", "copy: detached ArrayBuffer");
  size_t n = ta.ByteLength();
  if (!(off >= 0) || size_t(off) > m->bytes || n > m->bytes - size_t(off))
    Throw(env, "KD_ESHAPE", "copy: " + std::to_string(n) + " bytes at offset " + std::to_string(size_t(off)) +
                                " exceed the device buffer (" + std::to_string(m->bytes) + " bytes)");
  uint8_t* host = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  uint8_t* dev = static_cast<uint8_t*>(m->ptr) + size_t(off);
  Check(env, to_device ? cuda::copy_to_device(m->device, dev, host, n) : cuda::copy_to_host(m->device, host, dev, n), "copy");
  return env.Undefined();
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int d = DeviceArg(info, 0);
  if (info.Length() > 1 && info[1].IsBigInt()) {
    bool lossless = true;
    uint64_t st = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
    Check(env, cuda::stream_synchronize(d, reinterpret_cast<void*>(uintptr_t(st))), "synchronize");
  }
  Check(env, cuda::synchronize(d), "synchronize");
  return env.Undefined();
}

}  // namespace

void SetErrorClass(const Napi::CallbackInfo& info);

Napi::Object InitDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass));
  exports.Set("backends", Napi::Function::New(env, Backends));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa));
  exports.Set("cudaAlloc", Napi::Function::New(env, CudaAlloc));
  exports.Set("cudaFree", Napi::Function::New(env, CudaFree));
  exports.Set("cudaWrap", Napi::Function::New(env, CudaWrap));
  exports.Set("cudaCopy", Napi::Function::New(env, CudaCopy));
  exports.Set("memInfo", Napi::Function::New(env, MemInfo));
  exports.Set("cudaPoolInfo", Napi::Function::New(env, CudaPoolInfo));
  exports.Set("cudaPoolTrim", Napi::Function::New(env, CudaPoolTrim));
  exports.Set("synchronize", Napi::Function::New(env, Synchronize));
  return exports;
}

}  // namespace kd::binding
