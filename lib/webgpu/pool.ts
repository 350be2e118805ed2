/// <reference types="@webgpu/types" />
/**
 * The WebGPU output pool: the storage buffers of op outputs, kd.empty / kd.zeros and
 * uploads (kd.tensor(..., { device: 'webgpu' })) are reused across calls instead of
 * created per call. dispose() returns a tensor's buffer at once, a collected tensor's
 * buffer comes back through a FinalizationRegistry. What is idle is bounded by the cap
 * (idle + in use, per device; tuning.ts) and freed by kd.trimMemory().
 *
 * Why reuse is safe without waiting for the GPU: one device has one queue, and WebGPU
 * runs its submissions in order, so a buffer's next user (a kernel, a writeBuffer, a
 * clearBuffer) is submitted after every command that used it before; everything the
 * library encodes is submitted at once (runtime.ts run / copy / readBuffer), never left
 * in an open encoder that a later submission could overtake.
 *
 * Reused buffers are not cleared (every kernel writes every element it returns; tested
 * by poisoning them, test/webgpu_pool.test.ts); kd.zeros clears its buffer on the queue.
 * The ops' per-call workspaces come from the same pool (acquireScratch / releaseScratch),
 * poisoned alike in the tests; the one that must start at zero (sparseKlDiv's bucket bits)
 * asks for it.
 */
import type { WebGpuMemory } from '../memory.js';
import type { GpuMem, Tensor } from '../tensor.js';
import { checkDevice, createBuffer } from './runtime.js';
import { POOL_CLASSES_PER_OCTAVE, POOL_DEFAULT_CAP, POOL_MIN_BYTES } from './tuning.js';

interface DevicePool {
  idle: Map<number, GPUBuffer[]>;
  pooled: number;
  inUse: number;
  reused: number;
  fresh: number;
}

const pools = new WeakMap<GPUDevice, DevicePool>();
let cap = POOL_DEFAULT_CAP;
let poison = -1;

function poolOf(device: GPUDevice): DevicePool {
  let p = pools.get(device);
  if (!p) pools.set(device, (p = { idle: new Map(), pooled: 0, inUse: 0, reused: 0, fresh: 0 }));
  return p;
}

/** The buffer size for `bytes`: its size class, or the bytes (4-aligned) where the class would pass a device limit. */
export function classBytes(device: GPUDevice, bytes: number): number {
  const b = Math.max(POOL_MIN_BYTES, Math.ceil(bytes / 4) * 4);
  const octave = 2 ** Math.floor(Math.log2(b));
  const step = octave / POOL_CLASSES_PER_OCTAVE;
  const cls = octave === b ? b : Math.ceil(b / step) * step;
  // a buffer that fits one storage binding must stay one: kernels bind such a tensor whole
  const limit = Math.min(device.limits.maxBufferSize, device.limits.maxStorageBufferBindingSize);
  return cls > limit && b <= limit ? b : cls;
}

/**
 * A pooled storage buffer of at least `bytes`: an idle one, or a new one. `zero`: cleared
 * (on the queue) if reused; otherwise its contents are whatever it last held. Also what an
 * op takes for its own per-call workspaces, given back by releaseScratch as soon as the
 * call has submitted its work: a later user is submitted after it, like an output's.
 */
export function acquireScratch(device: GPUDevice, bytes: number, zero: boolean): GPUBuffer {
  checkDevice(device); // a lost device is KD_EDEVICE here, idle buffers or not
  const p = poolOf(device);
  const size = classBytes(device, bytes);
  const idle = p.idle.get(size);
  let buffer = idle?.pop();
  if (buffer) {
    p.pooled -= size;
    p.reused++;
    if (zero) {
      const enc = device.createCommandEncoder();
      enc.clearBuffer(buffer);
      device.queue.submit([enc.finish()]);
    }
  } else {
    buffer = createBuffer(device, size); // new buffers are zeroed by WebGPU
    p.fresh++;
  }
  p.inUse += size;
  if (poison >= 0 && !zero) device.queue.writeBuffer(buffer, 0, new Uint8Array(size).fill(poison));
  return buffer;
}

/** The same buffer as a tensor's memory (outputs, uploads, kd.empty / kd.zeros). */
export function acquire(device: GPUDevice, bytes: number, zero: boolean): GpuMem {
  return { buffer: acquireScratch(device, bytes, zero), device, byteOffset: 0, owned: true, pooled: true };
}

/** Returns a pooled buffer: kept idle while idle + in use stay under the cap, else destroyed. */
export function releaseScratch(device: GPUDevice, buffer: GPUBuffer): void {
  const p = poolOf(device);
  const size = buffer.size;
  p.inUse -= size;
  if (p.inUse + p.pooled + size <= cap) {
    let list = p.idle.get(size);
    if (!list) p.idle.set(size, (list = []));
    list.push(buffer);
    p.pooled += size;
  } else {
    buffer.destroy(); // freed once the queue is past its last use
  }
}

function giveBack(mem: GpuMem): void {
  releaseScratch(mem.device, mem.buffer);
}

// A tensor collected without dispose() returns its buffer here (the held value keeps the
// GPUBuffer object alive until then; the tensor itself is not referenced).
const registry = new FinalizationRegistry<GpuMem>(giveBack);

/** Called by the Tensor constructor for pooled memory. */
export function track(t: Tensor, mem: GpuMem): void {
  registry.register(t, mem, t);
}

/** Called by Tensor.dispose for pooled memory. */
export function release(t: Tensor, mem: GpuMem): void {
  registry.unregister(t);
  giveBack(mem);
}

/** Frees idle buffers (largest first) until at most `keep` bytes stay idle on `device`. */
export function trim(device: GPUDevice, keep: number): void {
  const p = poolOf(device);
  const sizes = [...p.idle.keys()].sort((a, b) => b - a);
  for (const size of sizes) {
    const list = p.idle.get(size)!;
    while (list.length && p.pooled > keep) {
      list.pop()!.destroy();
      p.pooled -= size;
    }
    if (!list.length) p.idle.delete(size);
  }
}

export function setCap(bytes: number, device: GPUDevice | undefined): void {
  cap = bytes;
  if (device) {
    const p = poolOf(device);
    trim(device, Math.max(0, cap - p.inUse));
  }
}

export function info(device: GPUDevice): WebGpuMemory {
  const p = poolOf(device);
  return { pooledBytes: p.pooled, inUseBytes: p.inUse, capBytes: cap, reused: p.reused, fresh: p.fresh };
}

/** @internal Tests: fill every buffer handed out (not by kd.zeros) with `byte` (-1: off). */
export function _webgpuPoolDebug(byte: number): void {
  poison = byte;
}
