// PLACEHOLDER until the op lands.
#include "binding/args.h"
namespace kd::binding {
Napi::Value SparseKlDiv(const Napi::CallbackInfo& info) { Throw(info.Env(), "KD_EUNSUPPORTED", "sparseKlDiv is not implemented yet"); }
}
