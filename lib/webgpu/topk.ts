/// <reference types="@webgpu/types" />
/**
 * topk on WebGPU: the launcher of wgsl/topk.wgsl.ts (radix select + bitonic sort per
 * row; the math and the shape are in that file's header). One dispatch, a workgroup per
 * row (2-D grid past 65535 rows); nothing is read back.
 */
import { KdRangeError } from '../errors.js';
import { checkExtent, checkRows, paramsBlock, type GpuRows, type GpuVec } from './gpu_rows.js';
import { grid, pipeline, run } from './runtime.js';
import type { WgslDType } from './wgsl/common.wgsl.js';
import { topkKey, topkWgsl } from './wgsl/topk.wgsl.js';

/** The kernel sorts the k winners in workgroup memory (8 KiB at k = 1024). */
export const WEBGPU_TOPK_MAX_K = 1024;

export interface TopkGpuArgs {
  logits: GpuRows;
  k: number;
  temperature: number;
  outputLogprobs: boolean;
  /** [n, k] contiguous, f32 or the logits' dtype. */
  values: GpuVec & { dtype: WgslDType };
  /** i32 [n, k] contiguous. */
  indices: GpuVec;
  /** f32 [n]. */
  tailLogProb: GpuVec;
}

export function topkWebgpu(device: GPUDevice, a: TopkGpuArgs): void {
  const op = 'topk';
  const x = a.logits;
  const n = x.n;
  if (n === 0) return;
  if (!Number.isInteger(a.k) || a.k < 1 || a.k > Math.min(x.v, WEBGPU_TOPK_MAX_K))
    throw new KdRangeError(`${op}: k = ${a.k} must be in [1, min(V = ${x.v}, ${WEBGPU_TOPK_MAX_K})]`, 'KD_ESHAPE');
  if (a.values.dtype !== 'f32' && a.values.dtype !== x.dtype)
    throw new KdRangeError(`${op}: values must be f32 or the logits' dtype (${x.dtype}), got ${a.values.dtype}`, 'KD_EDTYPE');
  checkRows(op, 'logits', x);
  checkExtent(op, 'values', a.values.buffer, a.values.offset, n * a.k, a.values.dtype === 'f32' ? 4 : 2);
  checkExtent(op, 'indices', a.indices.buffer, a.indices.offset, n * a.k, 4);
  checkExtent(op, 'tailLogProb', a.tailLogProb.buffer, a.tailLogProb.offset, n, 4);
  let kp2 = 1;
  while (kp2 < a.k) kp2 *= 2;
  const variant = { xDtype: x.dtype, valuesDtype: a.values.dtype };
  const pipe = pipeline(device, topkKey(variant), topkWgsl(variant));
  const params = paramsBlock([
    n, x.v, x.ld, x.offset,
    a.k, kp2, { f32: 1 / a.temperature }, a.outputLogprobs ? 1 : 0,
    a.values.offset, a.indices.offset, a.tailLogProb.offset, 0,
  ]);
  run(device, pipe, params, [x.buffer, a.values.buffer, a.indices.buffer, a.tailLogProb.buffer], grid(n));
}
