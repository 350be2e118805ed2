// The host output pool: reusable, not zero-filled memory for the CPU outputs the
// library allocates (gradients, per-token vectors, top-k results, sampled ids). No
// Node-API here: pool.cc wraps blocks in external ArrayBuffers.
//
// Why: a fresh 65 MB Float32Array costs about as much as the fused kernel that fills it
// (calloc's zero-fill plus a page fault per 4 KiB on first touch). Every kernel writes
// every element it returns, so a block handed back by dispose() (or a finalizer) can be
// handed out again as it is: already resident, nothing to clear.
//
// One pool per process, shared by the main thread and every worker (a block may be
// freed on another thread than the one that took it): one mutex around a free list per
// size class. Sizes round up to a class (tuning::kPoolClassesPerOctave per power of two).
// The cap bounds idle + in-use bytes; an allocation that would pass it returns nullptr
// and the caller uses a plain ArrayBuffer instead (counted in Stats::over_cap).
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>
#include <map>

namespace kd::binding {

class HostPool {
 public:
  struct Stats {
    size_t pooled = 0;   // idle bytes, ready for reuse
    size_t in_use = 0;   // bytes of blocks held by live (or not yet finalized) tensors
    size_t cap = 0;      // bound on pooled + in_use
    size_t min_bytes = 0;
    uint64_t reused = 0;    // allocations served from an idle block
    uint64_t fresh = 0;     // allocations that took new memory
    uint64_t over_cap = 0;  // allocations refused because of the cap (plain ArrayBuffers)
  };

  // The process-wide pool (never destroyed: workers may still return blocks at exit).
  static HostPool& Get();
  // The class size a request of `bytes` rounds up to (a multiple of tuning::kPoolAlign).
  static size_t ClassBytes(size_t bytes);

  // A block of ClassBytes(bytes) bytes, or nullptr when the cap does not allow it.
  // Sets *oom when the system allocator failed (the caller reports KD_ENOMEM), and
  // *in_use / *cap to the in-use bytes (this block included) and the cap.
  void* Acquire(size_t bytes, bool* oom, size_t* in_use, size_t* cap);
  // Returns a block taken with Acquire(bytes): kept idle if the cap allows, else freed.
  void Release(void* p, size_t bytes);
  // Frees idle blocks until at most keep bytes stay idle.
  void Trim(size_t keep);
  void SetCap(size_t cap);
  Stats GetStats();
  // Tests: fill every block handed out with this byte (-1: off), to prove that
  // kernels write every element they return.
  void SetPoison(int byte) { poison_ = byte; }
  void SetMinBytes(size_t b);

 private:
  HostPool();
  struct Block {
    void* p;
    size_t bytes;  // its class size
  };
  void TrimLocked(size_t keep, std::vector<Block>* to_free);
  std::mutex mu_;
  std::map<size_t, std::vector<void*>> idle_;  // class bytes -> idle blocks
  Stats st_;
  int poison_ = -1;
};

}  // namespace kd::binding
