// Every tuning constant of the native code, in one place, each with its reason.
#pragma once
#include <cstdint>

namespace kd::tuning {

// CPU: accumulator lanes for row reductions. 16 f32 lanes = one AVX-512 register or
// two AVX2 registers; the reduction order depends only on this constant and the row
// length, so results are bitwise identical for any thread count.
constexpr int kCpuLanes = 16;

// CPU: rows handed to a thread at a time. Rows are independent; a small chunk keeps
// the 2-16 core machines we target balanced when N is small (N=128 rows over 16 threads).
constexpr int64_t kCpuRowGrain = 1;

// CPU: below this many elements per call, run on the calling thread (waking the pool
// costs ~5-20 us, more than the work).
constexpr int64_t kCpuSerialElems = 1 << 15;

// CPU: elements per block of the row passes (native/cpu/row.h). A block of both inputs
// plus the gradient staged as f32 (3 x 4 KiB) stays in the 32 KiB L1 while pass one runs
// its max and exp over it; each block has its own max shift (per-block softmax scales).
// Must be a multiple of kCpuLanes; it fixes the summation order (determinism).
constexpr int64_t kCpuRowBlock = 1024;

// CPU: independent accumulator groups of kCpuLanes lanes in the row sums (cpu/row.h), i.e.
// element j goes to lane j % (kCpuLanes * kCpuRowChains). One group is a single chain of
// dependent vector adds (~3 cycles each); four let them pipeline (measured: a 16-lane sum
// over an L1 block cost as much as the exp that produced it). Fixes the order, as above.
// (cpu/token_stats.cc sums in one group of kCpuLanes lanes: two exps per element separate
// the adds to each of its six accumulators, and six x four groups would not fit in registers.)
constexpr int kCpuRowChains = 4;

// CPU: how many row blocks (kCpuRowBlock) ahead the row kernels prefetch the inputs,
// spread over the exp loop of the current block. Measured (forward KL, 512 x 32000 f32,
// one thread): none 1.60, 1 block 1.27, 2 blocks 1.06, 4 blocks ~1.1 ns/element. Also
// the best for tokenStats' single pass (512 x 32000 f32, one thread, CPU time, three
// alternating runs on a loaded machine): 1 block 10.5-10.9 ms, 2 blocks 9.1-9.5, 3 10.2-10.5,
// 4 10.6-10.8, 6 10.6-10.7.
constexpr int64_t kCpuPrefetchBlocks = 2;

// CPU: row kernels hand each thread runs of about n / (threads * this) rows (at least
// kCpuRowGrain), so a thread knows its next row and can prefetch its first blocks; 32
// keeps the tail imbalance around 1/32 of a thread's share.
constexpr int64_t kCpuRowRunsPerThread = 32;

// CPU: gradients of at least this many bytes are written with streaming (non-temporal)
// stores: they could not stay in the caches anyway, and skipping the read-for-ownership
// saves a quarter of the fused kernel's memory traffic. Smaller ones stay in cache for the
// caller's next op.
constexpr int64_t kCpuStreamBytes = int64_t(16) << 20;

// CUDA: threads per block for the one-block-per-row kernels. 512 threads x 16-byte
// loads cover 4096 bf16 per sweep; with V=151936 a row takes ~37 sweeps per input.
constexpr int kCudaRowThreads = 512;

// CUDA: threads for the final deterministic (fixed-order tree) loss reduction.
constexpr int kCudaReduceThreads = 1024;

// ---- top-k, sampleTeacher, sparseKlDiv (native/{cpu,cuda}/{topk,sample_teacher,sparse_kl_div}) ----

// CPU topk: candidate buffer slack beyond k. The streaming pass keeps up to k + slack
// candidates and compacts (nth_element, O(k + slack)) when full, so a compaction costs
// O(1) per accepted element; 256 keeps the buffer (<= 10 KiB for k = 1024) in L1.
// Measured (2026-11-29, EPYC AVX-512, bench data 256 x 151936 f32, k = 64, one thread,
// thread CPU time, machine shared): slack 128: 13.0-13.3 ms, 256: 13.1-13.4 ms, 512:
// 14.3-14.4 ms. About 1260 candidates per row at 256 (800 at 64, 1740 at 512), ~4
// compactions; 128 and 256 are within the noise, 512 loses ~8%.
constexpr int64_t kCpuTopkSlack = 256;

// CPU topk: the sampled prefilter threshold (native/cpu/topk.cc, sample_threshold). A row
// is sampled at kCpuTopkSampleRuns runs of kCpuTopkSampleRun consecutive elements, one at
// a pseudo-random place in each of as many equal strata (4096 elements); the threshold is
// the sample's r-th largest, r = ceil(kCpuTopkOversample * k * f) + kCpuTopkSampleMargin
// for the sampled fraction f. About kCpuTopkOversample * k + kCpuTopkSampleMargin / f
// elements then pass it (~400 at k = 64, V = 151936: one compaction); fewer than k (the
// row is redone without it) with probability P(Poisson(k f) >= r) on i.i.d. rows, ~2e-6
// there. Runs of 128 rather than 256 runs of 16: the scattered lines' TLB and cache misses
// cost more than the rest of the sampling (the next row's runs are also prefetched during
// the current row's sweep). Measured (2026-12-06, 32 x 151936 f32, k = 64, one thread,
// min of 40, machine shared): i.i.d. 1.23-1.31 ms, sorted / Zipf / all-equal / sawtooth
// 0.94-1.18 ms (the running-threshold pass alone: 1.67-1.78 and up to 50 ms ascending).
constexpr int64_t kCpuTopkSampleRuns = 32;
constexpr int64_t kCpuTopkSampleRun = 128;
constexpr int64_t kCpuTopkOversample = 4;
constexpr int64_t kCpuTopkSampleMargin = 4;

// CUDA topk: threads per row block (one block per row), and the shared-memory candidate
// capacity of the fast path. Pass 1 histograms the top 11 key bits; when the bucket
// holding the k-th largest plus everything above it fits in kCudaTopkCandidates
// (8 bytes each: 32 KiB), pass 2 gathers those candidates and a bitonic sort finishes;
// otherwise (tie-heavy rows) the radix refinement runs over the row in global memory.
constexpr int kCudaTopkThreads = 512;
constexpr int kCudaTopkCandidates = 4096;

// CUDA sampleTeacher: threads per row block (16 warps; a warp scans one 1024-element
// chunk of the proposal per draw).
constexpr int kCudaSampleThreads = 512;

// sampleTeacher: elements per chunk of the integer prefix sums of the proposal (CPU and
// CUDA). Integer sums are exact, so this changes speed only, never the drawn ids.
constexpr int64_t kSampleChunk = 1024;

// CUDA sparseKlDiv: threads per row block.
constexpr int kCudaSparseThreads = 512;

// ---- CUDA divergence / token statistics / triad (native/cuda/{divergence,token_stats,triad}.cu) ----

// CUDA divergence: the largest thread-block cluster a row is split over (sm_90+). A row's
// slice is staged in shared memory so the gradient pass never re-reads DRAM: bf16
// V = 151936 is 608 KB of student + teacher per row, 76 KB per block at 8 blocks. 8 is the
// portable maximum cluster size (H100/H200 allow 16 as a non-portable opt-in).
constexpr int kCudaMaxClusterBlocks = 8;

// CUDA divergence: resident row blocks per SM the shared-memory staging budget is sized
// for (budget = (smem per SM - reserved) / 2 per block, ~113 KB on H100/H200). Two blocks
// of 512 threads at <= 64 registers per thread (__launch_bounds__(512, 2)) use the whole
// register file; while one block waits at a barrier or computes, the other streams.
constexpr int kCudaRowBlocksPerSm = 2;

// CUDA triad: threads per block and resident blocks per SM of the grid-stride loop
// (enough 16-byte loads in flight to saturate HBM; more blocks only add scheduling).
constexpr int kCudaTriadThreads = 256;
constexpr int kCudaTriadBlocksPerSm = 8;

// ---- host output pool (native/binding/pool.cc) ----

// Outputs (gradients, per-token vectors, top-k results) of at least this many bytes come
// from the pool of reusable, not zero-filled blocks; smaller ones are plain ArrayBuffers.
// A pooled output costs a native call, an external ArrayBuffer, a weak reference and a
// finalizer. Measured (2026-12-06, this project's 2-core dev machine, heavily shared;
// allocate, write the last element, then dispose / drop; us per output):
//   bytes             64     1 Ki   4 Ki   16 Ki   64 Ki
//   plain array       1.7    10.9   23.4   15.6    80.1
//   pooled, dispose   10.6   6.0    7.8    6.2     8.8
//   pooled, dropped   15.9   16.6   16.2   27.7    31.5
// Dropped without dispose() (the common case) a pooled output costs more than a plain
// one up to 16 KiB and less from 64 KiB; the scalar loss and per-token vectors of a
// few hundred tokens stay plain.
constexpr int64_t kPoolMinBytes = int64_t(64) << 10;

// Default cap of the pool: idle plus in-use bytes. Beyond it an output is a plain
// ArrayBuffer (counted in kd.memory().cpu.overCap), so memory stays bounded when tensors
// are dropped faster than their finalizers run. 1 GiB holds three 512 x 151936 f32
// gradients (311 MB each) or fifteen 512 x 32000 ones; kd.setMemoryLimit changes it.
constexpr int64_t kPoolDefaultCapBytes = int64_t(1) << 30;

// Size classes: four per power of two (2^k x 1, 1.25, 1.5, 1.75), so a block wastes at
// most 25% and a training loop's few shapes map to a few classes.
constexpr int kPoolClassesPerOctave = 4;

// Pool: leases the allocation path looks at per call for blocks whose ArrayBuffers were
// collected before their finalizers ran (pool.cc Sweep). Each call adds one lease; a few
// more than one keep the list as short as the live leases, at ~20 ns a look.
constexpr int kPoolSweepPerAlloc = 4;

// What V8 is told of a pooled output (pool.cc). V8 counts an external ArrayBuffer's bytes
// as external memory and starts incremental marking, then a full GC, once that count has
// grown by 64 MiB from its lowest point since the last one: 512 x 32000 f32 gradients
// (62.5 MiB) dropped without dispose() cost a mark-compact every ~3 calls, with
// concurrent marking on the cores the kernel runs on. The pool's cap already bounds these
// blocks, so while its in-use bytes stay at or below kPoolV8FullBelow x cap, a pooled
// block is taken off V8's count (napi_adjust_external_memory, settled at the next pooled
// allocation after the block comes back); above, V8 sees all of it and collects dropped
// outputs before the cap is reached. Dropped outputs are then found by the scavenges V8
// runs anyway (their ArrayBuffers die young), not by full GCs. Measured (2026-12-06,
// node --trace-gc, 200 dropped forward KL calls at 512 x 32000 f32, 2 threads, after 60
// warm-up calls): V8 told everything: 66 mark-compacts, 179 ms of main-thread GC, 8.09 ms
// per call; told 1/8 of each block: 31-39 mark-compacts, 79-101 ms, 6.4-6.7 ms per call;
// told nothing below half the cap: 0 mark-compacts, 26-46 ms, 5.3-6.4 ms per call, 3 fresh
// blocks instead of 8. A single block over 64 MiB still starts a GC per call, disposed or
// not: V8 adds its whole size when the ArrayBuffer is created and checks its limit then.
constexpr double kPoolV8FullBelow = 0.5;

// Alignment of pooled blocks: a cache line (and an AVX-512 register).
constexpr int64_t kPoolAlign = 64;

// Pooled blocks of at least this many bytes are mapped at this alignment and advised as
// transparent huge pages (Linux madvise MADV_HUGEPAGE, which THP's default "madvise" mode
// honours; elsewhere plain advice that may be ignored); 0 turns it off. A fresh block's
// first touch is what a pool miss costs, and 4 KiB pages fault one by one: 16 000 faults
// for a 512 x 32000 f32 gradient. Measured (2026-12-07, the 2-core Zen 5 VM, whose page
// faults are slow: a fresh 65 MB mapping takes 240-255 ms to touch at 4 KiB, 7-150 ms
// advised): the first default forward KL call at 512 x 32000 (a fresh gradient block)
// 117-123 ms -> 15-85 ms; in 500 dropped default calls, the slowest call (a fresh block
// while V8 marks) 127-159 -> 90-97 ms; /proc/self/smaps_rollup showed the block's 64 MiB
// as AnonHugePages. Steady-state calls (reused blocks) measured the same either way.
constexpr int64_t kPoolHugePageBytes = int64_t(2) << 20;

// CUDA memory pool (native/cuda/runtime.cu): the library's own pool per device keeps up to
// 1/this of the device's memory reserved across synchronisations (release threshold), so
// the tensors a training step allocates and frees again (gradients, workspaces) are reused
// without a cudaMalloc / page mapping each step (tens of us to ms for GB-sized buffers),
// while most of the device stays free for the trainer's own allocator. cudaPoolTrim
// (kd.trimMemory) gives the rest back on demand.
constexpr int kCudaPoolReleaseFraction = 4;

}  // namespace kd::tuning
