/**
 * Tuning constants of the WGSL kernels, in one place (the native ones are in
 * native/common/tuning.h).
 */

/**
 * Threads per workgroup of the row kernels (one workgroup per row). 256 is the WebGPU
 * default limit of maxComputeInvocationsPerWorkgroup, so it runs on every adapter; a
 * row of V elements is swept in ceil(V / 256) strided steps (coalesced: lane k reads
 * element k, k + 256, ...).
 */
export const WG = 256;

/**
 * Largest V whose student and teacher rows (f32, widened) are staged in workgroup memory
 * by the divergence kernels, so the later passes read them from there instead of from
 * the storage buffer: 2 rows x 1536 x 4 B = 12 KiB, under the 16 KiB WebGPU default of
 * maxComputeWorkgroupStorageSize together with the 2 KiB of reduction scratch.
 */
export const STAGE_MAX_V = 1536;

/** Workgroup size of the 1-workgroup passes (the selected-row count, the loss sum). */
export const REDUCE_WG = 256;

/**
 * sampleTeacher: sub-chunks of the proposal's integer prefix sums per thread. The row is
 * split into WG × SAMPLE_SUBCHUNKS contiguous sub-chunks (1024: 8 KiB of u64 sums in
 * workgroup memory, 12 KiB with the scan and reduction scratch), and each draw rescans
 * one sub-chunk (V / 1024 elements) recomputing its fixed-point proposal. Integer sums
 * are exact, so this changes speed only, never the drawn ids.
 */
export const SAMPLE_SUBCHUNKS = 4;

/**
 * The WebGPU output pool (pool.ts): buffers are kept in size classes of 4 per octave
 * (at most 25% more than asked; the kernels bind what the tensor spans, never read the
 * buffer's length), the smallest 256 bytes (a scalar loss and a per-token vector of 64
 * rows share it). The cap bounds idle plus in-use bytes per device, as the CPU pool's
 * (kd.setMemoryLimit sets both); beyond it a released buffer is destroyed, not kept.
 */
export const POOL_CLASSES_PER_OCTAVE = 4;
export const POOL_MIN_BYTES = 256;
export const POOL_DEFAULT_CAP = 2 ** 30;
