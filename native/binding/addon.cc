// Entry point: registers the device and pool functions and one function per op. Nothing else.
#include <napi.h>

#include "binding/args.h"

namespace kd::binding {
Napi::Value Triad(const Napi::CallbackInfo& info);
Napi::Value Divergence(const Napi::CallbackInfo& info);
Napi::Value TokenStats(const Napi::CallbackInfo& info);
Napi::Value Topk(const Napi::CallbackInfo& info);
Napi::Value SampleTeacher(const Napi::CallbackInfo& info);
Napi::Value SparseKlDiv(const Napi::CallbackInfo& info);
}  // namespace kd::binding

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace kd::binding;
  InitDevice(env, exports);
  InitPool(env, exports);
  InitCudaDebug(env, exports);
  exports.Set("triad", Napi::Function::New(env, Triad));
  exports.Set("divergence", Napi::Function::New(env, Divergence));
  exports.Set("tokenStats", Napi::Function::New(env, TokenStats));
  exports.Set("topk", Napi::Function::New(env, Topk));
  exports.Set("sampleTeacher", Napi::Function::New(env, SampleTeacher));
  exports.Set("sparseKlDiv", Napi::Function::New(env, SparseKlDiv));
  return exports;
}

NODE_API_MODULE(kd_kernels, Init)
