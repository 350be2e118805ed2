// PLACEHOLDER until the op lands.
#include "binding/args.h"
namespace kd::binding {
Napi::Value Topk(const Napi::CallbackInfo& info) { Throw(info.Env(), "KD_EUNSUPPORTED", "topk is not implemented yet"); }
}
