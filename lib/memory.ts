/**
 * Memory the library holds for its outputs, and its bound.
 *
 * CPU: outputs the ops allocate (gradients, per-token vectors, top-k results, sampled
 * ids; 64 KiB and larger) come from one native pool of reusable blocks that are not
 * zero-filled (every kernel writes every element it returns). `dispose()` hands a block
 * back at once (and detaches its ArrayBuffer); a tensor collected without dispose()
 * hands it back from its finalizer, which runs on a later turn of the event loop. The
 * pool keeps idle blocks for reuse up to its cap (idle + in use, default 1 GiB); an
 * output that would pass the cap is a plain ArrayBuffer instead (counted in `overCap`).
 * CUDA: the stream-ordered device pool, where the build has one.
 * WebGPU: storage buffers of outputs, uploads, kd.empty / kd.zeros and the ops'
 * workspaces, reused per size class on the current device (lib/webgpu/pool.ts), with the
 * same cap.
 */
import { binding } from './native.js';
import { hooks } from './tensor.js';
import { expectInt } from './validate.js';

export interface CpuMemory {
  /** Idle bytes kept for reuse. */
  pooledBytes: number;
  /** Bytes held by output tensors not yet disposed or finalized. */
  inUseBytes: number;
  /** Bound on pooledBytes + inUseBytes (kd.setMemoryLimit). */
  capBytes: number;
  /** Outputs smaller than this are plain ArrayBuffers. */
  minBytes: number;
  /** Outputs served from an idle block / from new memory / as plain arrays because of the cap. */
  reused: number;
  fresh: number;
  overCap: number;
  /**
   * Bytes of this thread's pooled outputs that V8's external-memory count leaves out. V8
   * starts a full GC whenever that count has grown by 64 MiB; the pool's cap already bounds
   * its blocks, so V8 is not shown them while the pool is under half its cap (all of them
   * above), and dropped outputs are reclaimed by V8's scavenges instead of a full GC every
   * few calls. Settled at the next pooled allocation after a block comes back.
   */
  v8HiddenBytes: number;
}

export interface CudaMemory {
  device: number;
  /** Device memory the stream-ordered pool holds (used + idle). */
  reservedBytes: number;
  usedBytes: number;
}

export interface WebGpuMemory {
  /** Idle bytes kept for reuse on the current device. */
  pooledBytes: number;
  /** Bytes of pooled buffers held by tensors not yet disposed or collected (and by a call in progress). */
  inUseBytes: number;
  /** Bound on pooledBytes + inUseBytes (kd.setMemoryLimit; the same value as the CPU's). */
  capBytes: number;
  /** Buffers served from an idle one / newly created (outputs, uploads, empty, zeros, the ops' workspaces). */
  reused: number;
  fresh: number;
}

export interface Memory {
  cpu: CpuMemory;
  /** Present when CUDA is available (one entry per device). */
  cuda?: CudaMemory[];
  /** Present when kd.webgpu has a current device. */
  webgpu?: WebGpuMemory;
}

function cudaDevices(): number[] {
  const c = binding().backends().cuda;
  return c.available ? c.devices.map((d) => d.index) : [];
}

/** What the output pools hold now. */
export function memory(): Memory {
  const b = binding();
  const r: Memory = { cpu: b.poolInfo() };
  const devs = cudaDevices();
  if (devs.length) r.cuda = devs.map((d) => ({ device: d, ...b.cudaPoolInfo(d) }));
  const gpu = hooks.memoryGpu?.();
  if (gpu) r.webgpu = gpu;
  return r;
}

/**
 * Caps the CPU output pool (idle + in-use bytes; default 1 GiB). Idle blocks beyond the
 * new cap are freed now; 0 turns pooling off (every output a plain ArrayBuffer). The
 * same cap holds for the WebGPU pool of each device: there a buffer given back beyond
 * it is destroyed (0: every buffer is new, and destroyed when given back).
 */
export function setMemoryLimit(bytes: number): void {
  const cap = expectInt('bytes', bytes, 0, Number.MAX_SAFE_INTEGER);
  binding().poolSetCap(cap);
  hooks.capGpu?.(cap);
}

/**
 * Frees idle pooled memory, keeping at most `keepBytes` (default 0) idle on the CPU, on
 * each CUDA device and on the current WebGPU device. Memory held by live tensors is not
 * touched.
 */
export function trimMemory(keepBytes = 0): void {
  const keep = expectInt('keepBytes', keepBytes, 0, Number.MAX_SAFE_INTEGER);
  const b = binding();
  b.poolTrim(keep);
  for (const d of cudaDevices()) b.cudaPoolTrim(d, keep);
  hooks.trimGpu?.(keep);
}
