/// <reference types="@webgpu/types" />
/**
 * Test helpers for the WebGPU token-level / top-k / sampling / sparse kernels: the
 * device (or the reason there is none, printed once when the tests skip), rows uploaded
 * in a dtype with a row stride and an element offset, and typed readbacks.
 */
import { requestDevice, readBuffer, createBuffer, write } from '../lib/webgpu/runtime.js';
import type { GpuRows, GpuVec } from '../lib/webgpu/gpu_rows.js';
import { encodeDtype, type FloatDType } from './reference/common.js';

let device: GPUDevice | undefined;
let reason = '';
try {
  device = await requestDevice();
} catch (e) {
  reason = `no WebGPU adapter: ${(e as Error).message}`;
}
export const GPU = device;
export const GPU_SKIP_REASON = reason;
if (!device && !(globalThis as { __kdGpuSkipNoted?: boolean }).__kdGpuSkipNoted) {
  (globalThis as { __kdGpuSkipNoted?: boolean }).__kdGpuSkipNoted = true;
  console.log(`[kd-kernels tests] WebGPU cases skipped: ${reason}`);
}

/** A buffer holding `bytes` (padded to a multiple of 4). */
export function uploadBytes(dev: GPUDevice, data: ArrayBufferView): GPUBuffer {
  const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const padded = new Uint8Array(Math.max(4, Math.ceil(src.byteLength / 4) * 4));
  padded.set(src);
  const buf = createBuffer(dev, padded.byteLength);
  write(dev, buf, 0, padded);
  return buf;
}

/**
 * [n, v] rows of `data` (float64, row-major, n × v) encoded in `dtype`, stored with row
 * stride `ld` after `offset` leading elements (filled with 7: never read).
 */
export function gpuRows(dev: GPUDevice, data: Float64Array, n: number, v: number, dtype: FloatDType, ld = v, offset = 0): GpuRows {
  const total = offset + Math.max(0, (n - 1) * ld + v);
  const padded = new Float64Array(total).fill(7);
  for (let i = 0; i < n; i++) for (let j = 0; j < v; j++) padded[offset + i * ld + j] = data[i * v + j]!;
  return { buffer: uploadBytes(dev, encodeDtype(padded, dtype)), offset, dtype, n, v, ld };
}

/** An output run of `count` 4-byte (or 2-byte) elements after `offset` elements. */
export function gpuOut(dev: GPUDevice, count: number, offset = 0, bytes = 4): GpuVec {
  return { buffer: createBuffer(dev, (offset + count) * bytes), offset };
}

export async function readF32(dev: GPUDevice, o: GpuVec, count: number): Promise<Float32Array> {
  return new Float32Array(await readBuffer(dev, o.buffer, o.offset * 4, count * 4));
}
export async function readI32(dev: GPUDevice, o: GpuVec, count: number): Promise<Int32Array> {
  return new Int32Array(await readBuffer(dev, o.buffer, o.offset * 4, count * 4));
}
/** 16-bit elements (readBuffer widens the read to whole words and slices). */
export async function readU16(dev: GPUDevice, o: GpuVec, count: number): Promise<Uint16Array> {
  return new Uint16Array(await readBuffer(dev, o.buffer, o.offset * 2, count * 2));
}
