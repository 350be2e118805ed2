/// <reference types="@webgpu/types" />
/**
 * The backend-neutral arguments of the token-level, top-k, sampling and sparse ops on
 * WebGPU: storage buffers with element offsets (binding offsets would have to be
 * multiples of 256 bytes, so the kernels take the offset in their params block instead)
 * and row strides. The lib/<op>.ts files validate and build these; the launchers in
 * lib/webgpu/<op>.ts only re-check what memory safety needs.
 */
import { KdRangeError } from '../errors.js';
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

/** A flat run of elements starting at element `offset` (i32, f32 or u8 side data). */
export interface GpuVec {
  buffer: GPUBuffer;
  /** In elements. */
  offset: number;
}

const BYTES: Record<string, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u32: 4, u8: 1 };

/** Throws KD_ESHAPE when `count` elements of `bytesPer` from `offset` overrun `buf`. */
export function checkExtent(op: string, name: string, buf: GPUBuffer, offset: number, count: number, bytesPer: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new KdRangeError(`${op}: ${name} has an invalid element offset ${offset}`, 'KD_ESHAPE');
  const end = (offset + count) * bytesPer;
  if (count > 0 && end > buf.size)
    throw new KdRangeError(`${op}: ${name} needs ${end} bytes of its GPUBuffer but it has ${buf.size}`, 'KD_ESHAPE');
}

/** Checks that the rows fit their buffer and that the element indices fit in u32. */
export function checkRows(op: string, name: string, r: GpuRows): void {
  if (r.n > 1 && r.ld < r.v) throw new KdRangeError(`${op}: rows of ${name} overlap (row stride ${r.ld} < V ${r.v})`, 'KD_ESHAPE');
  const extent = r.n === 0 ? 0 : (r.n - 1) * r.ld + r.v;
  checkExtent(op, name, r.buffer, r.offset, extent, BYTES[r.dtype]!);
  if (r.offset + extent > 2 ** 32 - 1) throw new KdRangeError(`${op}: ${name} has more than 2^32 - 1 elements (WGSL indexes with u32)`, 'KD_ESHAPE');
}

/** A params block of u32 / f32 words: u32 for integers, f32 for reals (in order). */
export function paramsBlock(words: (number | { f32: number })[]): ArrayBuffer {
  const buf = new ArrayBuffer(Math.ceil(words.length / 4) * 16);
  const u = new Uint32Array(buf);
  const f = new Float32Array(buf);
  words.forEach((w, i) => {
    if (typeof w === 'number') u[i] = w >>> 0;
    else f[i] = w.f32;
  });
  return buf;
}
