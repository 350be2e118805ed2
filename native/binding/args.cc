#include "binding/args.h"

#include <cmath>

#include "common/dtype.h"
#include "cuda/runtime.h"

namespace kd::binding {
namespace {

struct AddonData {
  Napi::FunctionReference kd_error;
};

AddonData* Data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

napi_typedarray_type ExpectedArrayType(int32_t dtype) {
  switch (dtype) {
    case kF32: return napi_float32_array;
    case kI32: return napi_int32_array;
    case kU8: return napi_uint8_array;
    default: return napi_uint16_array;
  }
}

const char* kDtypeNames[] = {"f32", "f16", "bf16", "i32", "u8"};

}  // namespace

int64_t TensorArg::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

void SetErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "setErrorClass expects a constructor");
  auto* d = Data(env);
  if (!d) {
    d = new AddonData();
    env.SetInstanceData(d);  // deleted with the env (worker_threads safe)
  }
  d->kd_error = Napi::Persistent(info[0].As<Napi::Function>());
}

void Throw(Napi::Env env, const char* code, const std::string& message) {
  auto* d = Data(env);
  if (d && !d->kd_error.IsEmpty()) {
    Napi::Object e = d->kd_error.New({Napi::String::New(env, message), Napi::String::New(env, code)});
    throw Napi::Error(env, e);
  }
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

const char* StatusCodeName(int code) {
  switch (code) {
    case kShape: return "KD_ESHAPE";
    case kDtype: return "KD_EDTYPE";
    case kRange: return "KD_ERANGE";
    case kCuda: return "KD_ECUDA";
    case kNoMem: return "KD_ENOMEM";
    case kUnsupported: return "KD_EUNSUPPORTED";
    default: return "KD_EINVAL";
  }
}

void ThrowStatus(Napi::Env env, const Status& s, const char* op) {
  Throw(env, StatusCodeName(s.code), std::string(op) + ": " + s.msg);
}

DeviceMemory* UnwrapMemory(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsExternal()) Throw(env, "KD_EINVAL", std::string(what) + ": not a device memory handle");
  return v.As<Napi::External<DeviceMemory>>().Data();
}

OpCall::OpCall(const Napi::CallbackInfo& info, const char* op) : env_(info.Env()), op_(op) {
  if (info.Length() < 1 || !info[0].IsObject()) Throw(env_, "KD_EINVAL", std::string(op) + ": expected an arguments object");
  args_ = info[0].As<Napi::Object>();
  keep_.push_back(args_);
}

TensorArg OpCall::Tensor(const char* name, uint32_t dtypes, int ndim, bool required) {
  TensorArg t;
  Napi::Value v = args_.Get(name);
  if (v.IsUndefined() || v.IsNull()) {
    if (required) Fail("KD_EINVAL", std::string(op_) + ": missing tensor '" + name + "'");
    return t;
  }
  if (!v.IsObject()) Fail("KD_EINVAL", std::string(op_) + ": '" + name + "' is not a tensor descriptor");
  Napi::Object d = v.As<Napi::Object>();
  t.present = true;
  t.dtype = d.Get("dtype").As<Napi::Number>().Int32Value();
  t.device = d.Get("device").As<Napi::Number>().Int32Value();
  if (t.dtype < 0 || t.dtype > 4) Fail("KD_EDTYPE", std::string(op_) + ": '" + name + "' has an unknown dtype");
  if (!(dtypes & (1u << t.dtype)))
    Fail("KD_EDTYPE", std::string(op_) + ": '" + name + "' may not have dtype " + kDtypeNames[t.dtype]);
  Napi::Array shape = d.Get("shape").As<Napi::Array>();
  Napi::Array strides = d.Get("strides").As<Napi::Array>();
  t.ndim = int(shape.Length());
  if (t.ndim > 8 || strides.Length() != shape.Length()) Fail("KD_ESHAPE", std::string(op_) + ": '" + name + "' has a bad shape/strides");
  if (ndim >= 0 && t.ndim != ndim)
    Fail("KD_ESHAPE", std::string(op_) + ": '" + name + "' must have " + std::to_string(ndim) + " dimensions, got " + std::to_string(t.ndim));
  // Extent in elements: 1 + sum (shape_i - 1) * stride_i, with overflow checks.
  bool empty = false;
  int64_t last = 0;
  for (int i = 0; i < t.ndim; ++i) {
    double sd = shape.Get(uint32_t(i)).As<Napi::Number>().DoubleValue();
    double st = strides.Get(uint32_t(i)).As<Napi::Number>().DoubleValue();
    if (!(sd >= 0 && sd <= 9.0e15 && std::floor(sd) == sd) || !(st >= 0 && st <= 9.0e15 && std::floor(st) == st))
      Fail("KD_ESHAPE", std::string(op_) + ": '" + name + "' has a negative, fractional or huge size/stride");
    t.shape[i] = int64_t(sd);
    t.strides[i] = int64_t(st);
    if (t.shape[i] == 0) empty = true;
    int64_t term;
    if (__builtin_mul_overflow(t.shape[i] > 0 ? t.shape[i] - 1 : 0, t.strides[i], &term) ||
        __builtin_add_overflow(last, term, &last))
      Fail("KD_ESHAPE", std::string(op_) + ": '" + name + "' extent overflows");
  }
  int64_t need_bytes = 0;
  if (!empty && __builtin_mul_overflow(last + 1, int64_t(dtype_size(t.dtype)), &need_bytes))
    Fail("KD_ESHAPE", std::string(op_) + ": '" + name + "' extent overflows");

  int64_t have_bytes = 0;
  if (t.device < 0) {
    Napi::Value data = d.Get("data");
    if (!data.IsTypedArray()) Fail("KD_EINVAL", std::string(op_) + ": '" + name + "' has no data");
    Napi::TypedArray ta = data.As<Napi::TypedArray>();
    if (ta.TypedArrayType() != ExpectedArrayType(t.dtype))
      Fail("KD_EDTYPE", std::string(op_) + ": '" + name + "' data array does not match its dtype");
    Napi::ArrayBuffer ab = ta.ArrayBuffer();
    if (ab.IsDetached()) Fail("KD_EDISPOSED", std::string(op_) + ": '" + name + "' uses a detached ArrayBuffer");
    t.data = static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset();
    have_bytes = int64_t(ta.ByteLength());
    keep_.push_back(data);
  } else {
    DeviceMemory* m = UnwrapMemory(env_, d.Get("mem"), name);
    if (m->freed) Fail("KD_EDISPOSED", std::string(op_) + ": '" + name + "' was disposed");
    if (m->device != t.device) Fail("KD_EDEVICE", std::string(op_) + ": '" + name + "' memory is on another device");
    double off = d.Get("offset").IsNumber() ? d.Get("offset").As<Napi::Number>().DoubleValue() : 0;
    if (!(off >= 0 && double(off) <= double(m->bytes))) Fail("KD_ESHAPE", std::string(op_) + ": '" + name + "' offset out of range");
    t.data = static_cast<uint8_t*>(m->ptr) + int64_t(off);
    have_bytes = int64_t(m->bytes) - int64_t(off);
    keep_.push_back(d.Get("mem"));
  }
  if (need_bytes > have_bytes)
    Fail("KD_ESHAPE", std::string(op_) + ": '" + name + "' needs " + std::to_string(need_bytes) +
                          " bytes but its memory has " + std::to_string(have_bytes));
  // A present tensor without elements may have no storage (an empty ArrayBuffer's data
  // is null); give it a non-null address, never dereferenced, so that kernels can tell
  // "empty" (e.g. labels of N = 0 tokens) from "absent".
  static uint8_t empty_storage[16];
  if (empty && !t.data) t.data = empty_storage;
  if (device_ == -2) device_ = t.device;
  else if (device_ != t.device)
    Fail("KD_EDEVICE", std::string(op_) + ": '" + name + "' is on another device than the other tensors");
  return t;
}

double OpCall::Number(const char* name, double fallback) const {
  Napi::Value v = args_.Get(name);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) Fail("KD_EINVAL", std::string(op_) + ": option '" + name + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t OpCall::Int(const char* name, int64_t fallback) const {
  double d = Number(name, double(fallback));
  if (!(std::floor(d) == d && std::fabs(d) < 9.0e15)) Fail("KD_EINVAL", std::string(op_) + ": option '" + name + "' must be an integer");
  return int64_t(d);
}

bool OpCall::Bool(const char* name, bool fallback) const {
  Napi::Value v = args_.Get(name);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  return v.ToBoolean().Value();
}

uint64_t OpCall::BigUint(const char* name, uint64_t fallback) const {
  Napi::Value v = args_.Get(name);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsBigInt()) Fail("KD_EINVAL", std::string(op_) + ": option '" + name + "' must be a bigint");
  bool lossless = true;
  uint64_t r = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) Fail("KD_EINVAL", std::string(op_) + ": option '" + name + "' does not fit in 64 bits");
  return r;
}

void* OpCall::Stream() {
  if (device_ < 0) return nullptr;
  if (!default_stream_) {
    Status s = cuda::default_stream(device_, &default_stream_);
    if (!s.ok()) ThrowStatus(env_, s, op_);
  }
  caller_stream_ = reinterpret_cast<void*>(uintptr_t(BigUint("stream", 0)));
  return caller_stream_ ? caller_stream_ : default_stream_;
}

namespace {

class OpWorker : public Napi::AsyncWorker {
 public:
  OpWorker(Napi::Env env, std::function<Status()> fn, std::vector<Napi::Value> keep, const char* op)
      : Napi::AsyncWorker(env, "kd-kernels"), fn_(std::move(fn)), deferred_(Napi::Promise::Deferred::New(env)), op_(op) {
    for (auto& v : keep)
      if (v.IsObject() || v.IsExternal()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { status_ = fn_(); }  // no JS values touched here
  void OnOK() override {
    Napi::Env env = Env();
    // When a worker_thread is terminated while this work was in flight, its environment
    // can no longer run JS: settling the promise then fails with a Napi::Error, and one
    // escaping from here would std::terminate the whole process (node-addon-api rethrows
    // it when it cannot throw into JS). Nobody is left to await the promise: drop it.
    try {
      if (status_.ok()) {
        deferred_.Resolve(env.Undefined());
        return;
      }
      Napi::Value err;
      try {
        ThrowStatus(env, status_, op_);
      } catch (const Napi::Error& e) {
        err = e.Value();
      }
      deferred_.Reject(err);
    } catch (const Napi::Error&) {
    }
  }

 private:
  std::function<Status()> fn_;
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> refs_;
  Status status_;
  const char* op_;
};

}  // namespace

Napi::Value OpCall::Run(std::function<Status()> fn) {
  bool async = Bool("async", false);
  if (async && device_ < 0) {
    auto* w = new OpWorker(env_, std::move(fn), keep_, op_);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }
  Status s;
  if (device_ >= 0 && caller_stream_ && caller_stream_ != default_stream_) {
    // Order the caller's stream after our allocations/uploads, and ours after the op:
    // also when the op failed part-way (a first kernel may already be enqueued on the
    // caller's stream), so that a free on our stream never overtakes work that reads the
    // memory. The op's error is the one reported.
    s = cuda::stream_wait(device_, default_stream_, caller_stream_);
    if (s.ok()) {
      s = fn();
      const Status back = cuda::stream_wait(device_, caller_stream_, default_stream_);
      if (s.ok()) s = back;
    }
  } else {
    s = fn();
  }
  if (!s.ok()) ThrowStatus(env_, s, op_);
  if (async) {
    auto d = Napi::Promise::Deferred::New(env_);
    d.Resolve(env_.Undefined());
    return d.Promise();
  }
  return env_.Undefined();
}

}  // namespace kd::binding
