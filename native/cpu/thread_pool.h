// A process-wide pool of CPU worker threads shared by every op, every JS realm
// (main thread and worker_threads) and every async call.
//
// parallel_for hands out fixed-size chunks of [0, n) to whichever thread is free.
// Kernels keep results deterministic by making each chunk's output depend only on its
// own rows and reducing per-row results afterwards in row order; which thread ran a
// chunk never matters. If the pool is already running another parallel_for (two async
// calls, or two worker_threads), the second caller runs its loop on its own thread
// rather than queueing: same results, no deadlock, no oversubscription surprise.
#pragma once
#include <cstdint>
#include <functional>

namespace kd::cpu {

// Threads used by parallel_for, including the caller. Default: KD_NUM_THREADS if set,
// else std::thread::hardware_concurrency().
int num_threads();
// n >= 1. Takes effect for the next parallel_for; running loops are not disturbed.
void set_num_threads(int n);

// Calls fn(begin, end) for chunks of at most `grain` items covering [0, n).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace kd::cpu
