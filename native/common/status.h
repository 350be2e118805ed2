// Compute code returns a Status; it never throws across the C boundary and never
// exits. `msg` points to static storage (a literal or cudaGetErrorString).
// Codes map to KdError codes in native/binding/args.cc.
#pragma once

namespace kd {

enum StatusCode : int {
  kOk = 0,
  kInvalid = 1,     // KD_EINVAL: an argument the TS layer should have caught
  kShape = 2,       // KD_ESHAPE
  kDtype = 3,       // KD_EDTYPE
  kRange = 4,       // KD_ERANGE: an index (label, id) out of range
  kCuda = 5,        // KD_ECUDA
  kNoMem = 6,       // KD_ENOMEM
  kUnsupported = 7  // KD_EUNSUPPORTED
};

struct Status {
  int code = kOk;
  const char* msg = "";
  bool ok() const { return code == kOk; }
};

inline Status ok_status() { return Status{}; }
inline Status make_status(int code, const char* msg) { return Status{code, msg}; }

}  // namespace kd
