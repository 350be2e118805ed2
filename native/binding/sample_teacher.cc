// PLACEHOLDER until the op lands.
#include "binding/args.h"
namespace kd::binding {
Napi::Value SampleTeacher(const Napi::CallbackInfo& info) { Throw(info.Env(), "KD_EUNSUPPORTED", "sampleTeacher is not implemented yet"); }
}
