// The host output pool (pool.h) and its Node-API face: poolAlloc hands out a block as an
// external ArrayBuffer; poolRelease (Tensor.dispose) detaches that ArrayBuffer, so every
// view of it reads as length 0 and can never see the block's next use, and returns the
// block at once; the ArrayBuffer's finalizer returns it when a tensor is collected
// without dispose(). Each block handed out has one Lease; whichever of the two paths
// comes first returns the block, the other finds the lease returned and does nothing.
// V8 is not shown a pooled block's bytes while the pool is under half its cap (HideFromV8,
// tuning::kPoolV8FullBelow), so dropped outputs do not start a full GC every few calls.
#include "binding/pool.h"

#if defined(_WIN32)
#include <malloc.h>
#else
#include <sys/mman.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>  // mallocInfo (tests only): malloc_trim, mallinfo2
#endif

#include <napi.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>

#include "binding/args.h"
#include "common/tuning.h"

namespace kd::binding {

namespace {
// Blocks come straight from the OS (mmap, page-aligned; huge-page-aligned and advised as
// transparent huge pages from tuning::kPoolHugePageBytes up) rather than malloc: freeing or
// trimming one gives its pages back at once. From malloc, 128 KiB blocks (under glibc's
// mmap threshold once it has risen) lived in the heap, where a freed block between live
// ones keeps its pages: the leak test's RSS after kd.trimMemory() then depended on how
// the blocks of a dropped-output loop had interleaved (+16 MB in one quarter, once, in CI).
size_t MapBytes(size_t bytes) {
  const size_t page = 4096;
  return (bytes + page - 1) / page * page;
}
void* AllocBlock(size_t bytes) {
#if defined(_WIN32)
  return _aligned_malloc(bytes, size_t(tuning::kPoolAlign));
#else
  const size_t map = MapBytes(bytes);
  const size_t huge = size_t(tuning::kPoolHugePageBytes);
  if (huge == 0 || map < huge) {
    void* p = mmap(nullptr, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  // Over-map by one huge page, keep the huge-page-aligned `map` bytes inside, unmap the
  // rest (so FreeBlock's munmap(p, map) still frees exactly the block).
  void* raw = mmap(nullptr, map + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t r = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t a = (r + huge - 1) & ~uintptr_t(huge - 1);
  if (a > r) munmap(raw, a - r);
  munmap(reinterpret_cast<void*>(a + map), r + huge - a);  // the tail: a < r + huge, never empty
  void* p = reinterpret_cast<void*>(a);
#if defined(MADV_HUGEPAGE)
  madvise(p, map, MADV_HUGEPAGE);  // advice only: a kernel without THP ignores it
#endif
  return p;
#endif
}
void FreeBlock(void* p, size_t bytes) {
#if defined(_WIN32)
  (void)bytes;
  _aligned_free(p);
#else
  munmap(p, MapBytes(bytes));
#endif
}
}  // namespace

HostPool& HostPool::Get() {
  static HostPool* pool = new HostPool();  // intentionally never destroyed (see pool.h)
  return *pool;
}

HostPool::HostPool() {
  st_.cap = size_t(tuning::kPoolDefaultCapBytes);
  st_.min_bytes = size_t(tuning::kPoolMinBytes);
}

size_t HostPool::ClassBytes(size_t bytes) {
  const size_t align = size_t(tuning::kPoolAlign);
  if (bytes <= align) return align;
  // the smallest 2^k * (q / kPoolClassesPerOctave), q in [Q, 2Q), at least bytes
  const size_t q = size_t(tuning::kPoolClassesPerOctave);
  size_t pow = 1;
  while (pow * 2 <= bytes) pow *= 2;  // pow <= bytes < 2 pow
  size_t step = pow / q;
  if (step < align) step = align;
  size_t c = (bytes + step - 1) / step * step;
  return c;
}

void* HostPool::Acquire(size_t bytes, bool* oom, size_t* in_use, size_t* cap) {
  *oom = false;
  const size_t cls = ClassBytes(bytes);
  std::vector<Block> to_free;
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = idle_.find(cls);
    if (it != idle_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      st_.pooled -= cls;
      st_.in_use += cls;
      st_.reused++;
    } else {
      if (st_.in_use + cls > st_.cap) {
        st_.over_cap++;
        return nullptr;
      }
      // make room among the idle blocks of other classes
      if (st_.in_use + st_.pooled + cls > st_.cap) TrimLocked(st_.cap - st_.in_use - cls, &to_free);
      st_.in_use += cls;  // reserved; allocated below, outside the lock
      st_.fresh++;
    }
    *in_use = st_.in_use;
    *cap = st_.cap;
  }
  for (const Block& f : to_free) FreeBlock(f.p, f.bytes);
  if (!p) {
    p = AllocBlock(cls);
    if (!p) {
      std::lock_guard<std::mutex> lock(mu_);
      st_.in_use -= cls;
      st_.fresh--;
      *oom = true;
      return nullptr;
    }
  }
  int poison = poison_;
  if (poison >= 0) std::memset(p, poison, cls);
  return p;
}

void HostPool::Release(void* p, size_t bytes) {
  const size_t cls = ClassBytes(bytes);
  bool keep;
  {
    std::lock_guard<std::mutex> lock(mu_);
    st_.in_use -= cls;
    // Only the cap bounds what stays idle: a loop that drops its outputs needs as many
    // blocks as V8 leaves uncollected between two full GCs (a per-class limit of 32 made
    // it free and re-fault ~17 500 blocks per 25 000 calls of 128 KiB in the leak test).
    keep = st_.in_use + st_.pooled + cls <= st_.cap;
    if (keep) {
      idle_[cls].push_back(p);
      st_.pooled += cls;
    }
  }
  if (!keep) FreeBlock(p, cls);
}

void HostPool::TrimLocked(size_t keep, std::vector<Block>* to_free) {
  // largest classes first: the fewest frees for the most bytes
  for (auto it = idle_.rbegin(); it != idle_.rend() && st_.pooled > keep; ++it) {
    while (!it->second.empty() && st_.pooled > keep) {
      to_free->push_back({it->second.back(), it->first});
      it->second.pop_back();
      st_.pooled -= it->first;
    }
  }
}

void HostPool::Trim(size_t keep) {
  std::vector<Block> to_free;
  {
    std::lock_guard<std::mutex> lock(mu_);
    TrimLocked(keep, &to_free);
  }
  for (const Block& f : to_free) FreeBlock(f.p, f.bytes);
}

void HostPool::SetCap(size_t cap) {
  std::vector<Block> to_free;
  {
    std::lock_guard<std::mutex> lock(mu_);
    st_.cap = cap;
    TrimLocked(cap > st_.in_use ? cap - st_.in_use : 0, &to_free);
  }
  for (const Block& f : to_free) FreeBlock(f.p, f.bytes);
}

void HostPool::SetMinBytes(size_t b) {
  std::lock_guard<std::mutex> lock(mu_);
  st_.min_bytes = b;
}

HostPool::Stats HostPool::GetStats() {
  std::lock_guard<std::mutex> lock(mu_);
  return st_;
}

namespace {

// One block handed out as one ArrayBuffer.
struct Lease {
  void* ptr;
  size_t bytes;
  napi_env env;           // the JS environment (thread) that took it
  int64_t hidden = 0;     // bytes of it taken off V8's external-memory count (HideFromV8)
  bool returned = false;  // guarded by LeaseMutex()
  // Only on the thread (JS environment) that created it:
  napi_ref weak = nullptr;  // weak reference to the ArrayBuffer (reclaim, below)
  bool finalized = false;   // its finalizer ran
  bool listed = true;       // in this thread's Outstanding() list
};

// Leases handed out on this thread, oldest first, for reclaiming blocks of ArrayBuffers
// that V8 has collected but whose finalizers have not run yet. Node runs those
// finalizers from the event loop (an immediate), so a synchronous loop that drops its
// outputs without dispose() would otherwise take fresh memory every call until it
// yields. A collected ArrayBuffer clears its weak reference during GC: from then on no
// JS value can reach the block, and it is returned at once. Only where no ArrayBuffer
// transfer can move a pooled block's memory to another ArrayBuffer (the JS side probes
// this once: structuredClone / ArrayBuffer.prototype.transfer must copy), since a moved
// block would outlive the ArrayBuffer the reference watches.
struct Outstanding {
  std::deque<Lease*> q;
  bool reclaim = false;  // poolReclaim(true), after lib/tensor.ts's transfer probe
  ~Outstanding() {  // thread exit: the env's finalizers ran at its teardown
    for (Lease* l : q) {
      if (l->finalized) delete l;
      else l->listed = false;
    }
  }
};
thread_local Outstanding outstanding;

std::mutex& LeaseMutex() {
  static auto* m = new std::mutex();
  return *m;
}
// Live leases by block address: poolRelease finds the lease of an ArrayBuffer from its
// data pointer (a detached ArrayBuffer has none, so a stale one never matches).
std::unordered_map<void*, Lease*>& Leases() {
  static auto* m = new std::unordered_map<void*, Lease*>();
  return *m;
}

// The bytes of this thread's pooled blocks taken off V8's external-memory count
// (tuning::kPoolV8FullBelow): `held` by leases not yet returned, `applied` with
// napi_adjust_external_memory so far. A returned lease lowers `held` only; the difference
// is applied at the next pooled allocation, together with that block's bytes. Giving the
// bytes back at once (a positive adjustment at every dispose()) made V8 check its limit
// there and start a full GC per call even with dispose(), since V8 itself lowers its count
// only when it has swept the detached ArrayBuffer.
struct HiddenBytes {
  int64_t held = 0;
  int64_t applied = 0;
};
HiddenBytes& Hidden() {
  static thread_local HiddenBytes h;
  return h;
}

// Called by PoolAlloc once the lease's ArrayBuffer exists (V8 has counted its bytes), with
// the pool's in-use bytes and cap as Acquire left them.
void HideFromV8(napi_env env, Lease* l, size_t in_use, size_t cap) {
  if (double(in_use) <= tuning::kPoolV8FullBelow * double(cap)) l->hidden = int64_t(l->bytes);
  HiddenBytes& h = Hidden();
  h.held += l->hidden;
  const int64_t delta = h.held - h.applied;
  int64_t now = 0;
  if (delta != 0 && napi_adjust_external_memory(env, -delta, &now) == napi_ok) h.applied = h.held;
}

// Marks the lease returned and gives its block back; false if it already was.
bool ReturnLease(napi_env env, Lease* l) {
  {
    std::lock_guard<std::mutex> lock(LeaseMutex());
    if (l->returned) return false;
    l->returned = true;
    Leases().erase(l->ptr);
  }
  if (l->hidden && env == l->env) Hidden().held -= l->hidden;  // applied at the next PoolAlloc
  l->hidden = 0;
  HostPool::Get().Release(l->ptr, l->bytes);
  return true;
}

bool Collected(napi_env env, Lease* l) {
  napi_value v = nullptr;
  if (!l->weak || napi_get_reference_value(env, l->weak, &v) != napi_ok) return false;
  return v == nullptr;
}

// Looks at up to `budget` of the oldest leases of this thread: forgets those already
// returned, returns the blocks of collected ArrayBuffers, moves live ones to the back.
// Amortised O(1) per allocation, and the list stays as long as the live leases.
void Sweep(napi_env env, int budget) {
  auto& q = outstanding.q;
  for (int i = 0; i < budget && !q.empty(); ++i) {
    Lease* l = q.front();
    q.pop_front();
    bool returned;
    {
      std::lock_guard<std::mutex> lock(LeaseMutex());
      returned = l->returned;
    }
    if (!returned && outstanding.reclaim && Collected(env, l)) {
      ReturnLease(env, l);
      returned = true;
    }
    if (!returned) {
      q.push_back(l);
      continue;
    }
    l->listed = false;
    if (l->finalized) delete l;
  }
}

double SizeArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) Throw(info.Env(), "KD_EINVAL", std::string(what) + " must be a number of bytes");
  double b = info[i].As<Napi::Number>().DoubleValue();
  if (!(b >= 0 && b <= 9.0e15)) Throw(info.Env(), "KD_ERANGE", std::string(what) + " out of range");
  return b;
}

// poolAlloc(bytes) -> ArrayBuffer of exactly `bytes`, not zero-filled, or undefined
// (below the pool's minimum size, or over its cap: the caller allocates a plain one).
Napi::Value PoolAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t bytes = size_t(SizeArg(info, 0, "poolAlloc: bytes"));
  HostPool& pool = HostPool::Get();
  if (bytes == 0 || bytes < pool.GetStats().min_bytes) return env.Undefined();
  Sweep(env, tuning::kPoolSweepPerAlloc);
  bool oom = false;
  size_t in_use = 0, cap = 0;
  void* p = pool.Acquire(bytes, &oom, &in_use, &cap);
  if (oom) Throw(env, "KD_ENOMEM", "cannot allocate " + std::to_string(HostPool::ClassBytes(bytes)) + " bytes for an output");
  if (!p) return env.Undefined();
  auto* lease = new Lease{p, bytes, env};
  {
    std::lock_guard<std::mutex> lock(LeaseMutex());
    Leases()[p] = lease;
  }
  // The finalizer runs on this thread's event loop once V8 has freed the backing store
  // (or at environment teardown, e.g. worker termination).
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, p, bytes, [](Napi::Env env, void*, Lease* l) {
    ReturnLease(env, l);
    if (l->weak) napi_delete_reference(env, l->weak);
    l->weak = nullptr;
    l->finalized = true;
    if (!l->listed) delete l;
  }, lease);
  if (napi_create_reference(env, ab, 0, &lease->weak) != napi_ok) lease->weak = nullptr;
  outstanding.q.push_back(lease);
  HideFromV8(env, lease, in_use, cap);
  return ab;
}

// poolRelease(arrayBuffer) -> true if the ArrayBuffer held a pooled block, which is
// now detached and back in the pool; false for any other (or already detached) one.
Napi::Value PoolRelease(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) Throw(env, "KD_EINVAL", "poolRelease: expected an ArrayBuffer");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  if (ab.IsDetached()) return Napi::Boolean::New(env, false);
  void* p = ab.Data();
  Lease* l = nullptr;
  {
    std::lock_guard<std::mutex> lock(LeaseMutex());
    auto it = Leases().find(p);
    if (it != Leases().end() && it->second->bytes == ab.ByteLength()) l = it->second;
  }
  if (!l) return Napi::Boolean::New(env, false);
  ab.Detach();  // first: no view may see the block once it can be handed out again
  return Napi::Boolean::New(env, ReturnLease(env, l));
}

Napi::Value PoolInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HostPool::Stats s = HostPool::Get().GetStats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("pooledBytes", double(s.pooled));
  o.Set("inUseBytes", double(s.in_use));
  o.Set("capBytes", double(s.cap));
  o.Set("minBytes", double(s.min_bytes));
  o.Set("reused", double(s.reused));
  o.Set("fresh", double(s.fresh));
  o.Set("overCap", double(s.over_cap));
  o.Set("v8HiddenBytes", double(Hidden().applied));  // this thread's (HideFromV8)
  return o;
}

Napi::Value PoolSetCap(const Napi::CallbackInfo& info) {
  HostPool::Get().SetCap(size_t(SizeArg(info, 0, "capBytes")));
  return info.Env().Undefined();
}

Napi::Value PoolTrim(const Napi::CallbackInfo& info) {
  HostPool::Get().Trim(size_t(SizeArg(info, 0, "keepBytes")));
  return info.Env().Undefined();
}

// poolReclaim(enable): lets this thread return blocks of collected ArrayBuffers before
// their finalizers run (see Outstanding); lib/tensor.ts enables it after its probe.
Napi::Value PoolReclaim(const Napi::CallbackInfo& info) {
  outstanding.reclaim = info[0].ToBoolean().Value();
  return info.Env().Undefined();
}

// poolDebug(poisonByte, minBytes): tests only (poison -1 = off).
Napi::Value PoolDebug(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) Throw(env, "KD_EINVAL", "poolDebug: poison byte must be a number");
  int poison = info[0].As<Napi::Number>().Int32Value();
  if (poison < -1 || poison > 255) Throw(env, "KD_ERANGE", "poolDebug: poison byte must be -1..255");
  size_t min_bytes = size_t(SizeArg(info, 1, "poolDebug: minBytes"));
  HostPool::Get().SetPoison(poison);
  HostPool::Get().SetMinBytes(min_bytes);
  return env.Undefined();
}

// mallocInfo(): tests only (test/fixtures/leak_loop.ts). The C heap's bytes in use, summed
// over all of glibc's arenas, after it has given its free pages back (malloc_trim): the
// leak checks read RSS after the trim, so that what malloc keeps cached (freed V8 backing
// stores, worker-thread arenas: +-8 MiB between checkpoints on the CI VM) is not read as a
// leak, and hold the bytes in use to their own bound. undefined where the C library is not
// glibc >= 2.33.
Napi::Value MallocInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  malloc_trim(0);
  const struct mallinfo2 m = mallinfo2();
  return Napi::Number::New(env, double(m.uordblks + m.hblkhd));
#else
  return env.Undefined();
#endif
}

}  // namespace

Napi::Object InitPool(Napi::Env env, Napi::Object exports) {
  exports.Set("poolAlloc", Napi::Function::New(env, PoolAlloc));
  exports.Set("poolRelease", Napi::Function::New(env, PoolRelease));
  exports.Set("poolInfo", Napi::Function::New(env, PoolInfo));
  exports.Set("poolSetCap", Napi::Function::New(env, PoolSetCap));
  exports.Set("poolTrim", Napi::Function::New(env, PoolTrim));
  exports.Set("poolDebug", Napi::Function::New(env, PoolDebug));
  exports.Set("poolReclaim", Napi::Function::New(env, PoolReclaim));
  exports.Set("mallocInfo", Napi::Function::New(env, MallocInfo));
  return exports;
}

}  // namespace kd::binding
