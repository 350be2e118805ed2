/// <reference types="@webgpu/types" />
/**
 * The arguments of the token-level, top-k, sampling and sparse ops on WebGPU: storage
 * buffers with element offsets, and row strides. lib/<op>.ts validates and builds the
 * backend-neutral OpArgs; lib/webgpu/<op>.ts turns its descriptors into these (rowsOf,
 * vecOf) and the launchers only re-check what memory safety needs (extents).
 *
 * Bindings: a storage binding may not exceed maxStorageBufferBindingSize (128 MiB on
 * lavapipe and many GPUs: 256 × 151936 f32 logits are 155 MB), and its offset must be a
 * multiple of 256 bytes. So a launcher dispatches rows in chunks (rowsPerChunk), binds
 * each tensor's elements for those rows only (bindRows / bindVec: the byte offset aligned
 * down, the remainder passed to the kernel as an element offset), and the kernels index
 * every tensor from its element offset with the row index within the chunk.
 */
import type { OpArgs, TensorDesc } from '../../binding.js';
import { KdError, KdRangeError } from '../errors.js';
import type { GpuMem } from '../tensor.js';
import { bindRange, gpuOf } from './divergence.js';
import { bindingLimit, type Binding } from './runtime.js';
import type { WgslDType } from './wgsl/common.wgsl.js';

/** [n, v] logits with row stride ld, starting at element `offset` of `buffer`. */
export interface GpuRows {
  buffer: GPUBuffer;
  /** In elements of dtype. */
  offset: number;
  dtype: WgslDType;
  n: number;
  v: number;
  ld: number;
}

/** A flat run of elements starting at element `offset` (i32, f32, u8 or 16-bit data). */
export interface GpuVec {
  buffer: GPUBuffer;
  /** In elements. */
  offset: number;
}

const FLOAT_CODES: Record<number, WgslDType> = { 0: 'f32', 1: 'f16', 2: 'bf16' };
const BYTES: Record<string, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u32: 4, u8: 1 };

export function dtypeBytes(d: string): number {
  return BYTES[d]!;
}

/** Throws KD_ESHAPE when `count` elements of `bytesPer` from `offset` overrun `buf`. */
export function checkExtent(op: string, name: string, buf: GPUBuffer, offset: number, count: number, bytesPer: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new KdRangeError(`${op}: ${name} has an invalid element offset ${offset}`, 'KD_ESHAPE');
  const end = (offset + count) * bytesPer;
  if (count > 0 && end > buf.size)
    throw new KdRangeError(`${op}: ${name} needs ${end} bytes of its GPUBuffer but it has ${buf.size}`, 'KD_ESHAPE');
}

/** Checks that the rows fit their buffer. */
export function checkRows(op: string, name: string, r: GpuRows): void {
  if (r.n > 1 && r.ld < r.v) throw new KdRangeError(`${op}: rows of ${name} overlap (row stride ${r.ld} < V ${r.v})`, 'KD_ESHAPE');
  const extent = r.n === 0 ? 0 : (r.n - 1) * r.ld + r.v;
  checkExtent(op, name, r.buffer, r.offset, extent, BYTES[r.dtype]!);
}

/** Rows per dispatch so that every row-strided binding (bytes per row) fits the device limit. */
export function rowsPerChunk(device: GPUDevice, n: number, rowBytes: number[]): number {
  const limit = bindingLimit(device) - device.limits.minStorageBufferOffsetAlignment - 8;
  let rows = Math.max(n, 1);
  for (const rb of rowBytes) if (rb > 0) rows = Math.min(rows, Math.floor(limit / rb));
  if (rows < 1) throw new KdError(`WebGPU: one row (${Math.max(...rowBytes)} bytes) exceeds maxStorageBufferBindingSize of this device`, 'KD_ENOMEM');
  return rows;
}

function mem(device: GPUDevice, buffer: GPUBuffer, byteOffset: number): GpuMem {
  return { buffer, device, byteOffset, owned: false };
}

/** The binding of rows [r0, r1) of `r` and the element offset of row r0 within it. */
export function bindRows(device: GPUDevice, r: GpuRows, r0: number, r1: number): { binding: Binding; elemOff: number } {
  const es = BYTES[r.dtype]!;
  return bindRange(device, mem(device, r.buffer, r.offset * es), es, r0 * r.ld, (r1 - 1) * r.ld + r.v);
}

/** The binding of elements [first, end) of `x` (element size es) and the element offset of `first`. */
export function bindVec(device: GPUDevice, x: GpuVec, es: number, first: number, end: number): { binding: Binding; elemOff: number } {
  return bindRange(device, mem(device, x.buffer, x.offset * es), es, first, end);
}

/** A params block of u32 / f32 / i32 words (in order), padded to 16 bytes. */
export function paramsBlock(words: (number | { f32: number } | { i32: number })[]): ArrayBuffer {
  const buf = new ArrayBuffer(Math.max(1, Math.ceil(words.length / 4)) * 16);
  const view = new DataView(buf);
  words.forEach((w, i) => {
    if (typeof w === 'number') view.setUint32(i * 4, w >>> 0, true);
    else if ('f32' in w) view.setFloat32(i * 4, w.f32, true);
    else view.setInt32(i * 4, w.i32 | 0, true);
  });
  return buf;
}

// ---- from the validated OpArgs (lib/<op>.ts) ------------------------------------------

/** The GPUDevice of the op: the first tensor's; every other WebGPU tensor must share it. */
export function deviceOf(op: string, descs: Record<string, TensorDesc | undefined>): GPUDevice {
  let device: GPUDevice | undefined;
  for (const [name, d] of Object.entries(descs)) {
    if (!d) continue;
    const g = gpuOf(d, `${op}: ${name}`);
    if (!device) device = g.device;
    else if (g.device !== device) throw new KdError(`${op}: ${name} is on another GPUDevice than the other tensors`, 'KD_EDEVICE');
  }
  if (!device) throw new KdError(`${op}: no WebGPU tensor`, 'KD_EDEVICE');
  return device;
}

function elemOffset(op: string, name: string, g: GpuMem, es: number): number {
  if (g.byteOffset % es !== 0) throw new KdRangeError(`${op}: ${name} starts at byte ${g.byteOffset}, not a multiple of its element size ${es}`, 'KD_ESHAPE');
  return g.byteOffset / es;
}

/** A [n, v] float descriptor (shape [n, v], strides [ld, 1]) as GpuRows. */
export function rowsOf(op: string, name: string, d: TensorDesc): GpuRows {
  const dtype = FLOAT_CODES[d.dtype];
  if (!dtype) throw new KdRangeError(`${op}: ${name} must be f32, f16 or bf16`, 'KD_EDTYPE');
  const g = gpuOf(d, `${op}: ${name}`);
  const r: GpuRows = { buffer: g.buffer, offset: elemOffset(op, name, g, BYTES[dtype]!), dtype, n: d.shape[0]!, v: d.shape[1]!, ld: d.strides[0]! };
  checkRows(op, name, r);
  return r;
}

/** A contiguous descriptor of `count` elements of `es` bytes as a GpuVec. */
export function vecOf(op: string, name: string, d: TensorDesc, count: number, es: number): GpuVec {
  const g = gpuOf(d, `${op}: ${name}`);
  const v: GpuVec = { buffer: g.buffer, offset: elemOffset(op, name, g, es) };
  checkExtent(op, name, v.buffer, v.offset, count, es);
  return v;
}

/** The float dtype of a descriptor. */
export function floatDtype(d: TensorDesc): WgslDType {
  return FLOAT_CODES[d.dtype]!;
}

export type { OpArgs, TensorDesc };
