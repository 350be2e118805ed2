/// <reference types="@webgpu/types" />
/**
 * topk on WebGPU: the launcher of wgsl/topk.wgsl.ts (radix select + bitonic sort per
 * row; the math and the shape are in that file's header). Per chunk of rows (bindings
 * within the device's limit, gpu_rows.ts) one dispatch, a workgroup per row (2-D grid
 * past 65535 rows). Nothing is read back.
 */
import { KdRangeError } from '../errors.js';
import { bindRows, bindVec, checkExtent, checkRows, deviceOf, dtypeBytes, floatDtype, paramsBlock, rowsOf, rowsPerChunk, vecOf, type GpuRows, type GpuVec, type OpArgs, type TensorDesc } from './gpu_rows.js';
import { grid, pipeline, run } from './runtime.js';
import type { WgslDType } from './wgsl/common.wgsl.js';
import { topkKey, topkWgsl } from './wgsl/topk.wgsl.js';

/** The kernel sorts the k winners in workgroup memory (8 KiB at k = 1024): TOPK_MAX_K of lib/topk.ts. */
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
  const k = a.k;
  if (n === 0) return;
  if (!Number.isInteger(k) || k < 1 || k > Math.min(x.v, WEBGPU_TOPK_MAX_K))
    throw new KdRangeError(`${op}: k = ${k} must be in [1, min(V = ${x.v}, ${WEBGPU_TOPK_MAX_K})]`, 'KD_ESHAPE');
  if (a.values.dtype !== 'f32' && a.values.dtype !== x.dtype)
    throw new KdRangeError(`${op}: values must be f32 or the logits' dtype (${x.dtype}), got ${a.values.dtype}`, 'KD_EDTYPE');
  checkRows(op, 'logits', x);
  const vb = dtypeBytes(a.values.dtype);
  checkExtent(op, 'values', a.values.buffer, a.values.offset, n * k, vb);
  checkExtent(op, 'indices', a.indices.buffer, a.indices.offset, n * k, 4);
  checkExtent(op, 'tailLogProb', a.tailLogProb.buffer, a.tailLogProb.offset, n, 4);
  let kp2 = 1;
  while (kp2 < k) kp2 *= 2;
  const variant = { xDtype: x.dtype, valuesDtype: a.values.dtype };
  const pipe = pipeline(device, topkKey(variant), topkWgsl(variant));
  const chunk = rowsPerChunk(device, n, [x.ld * dtypeBytes(x.dtype), k * vb, k * 4]);
  for (let r0 = 0; r0 < n; r0 += chunk) {
    const r1 = Math.min(n, r0 + chunk);
    const xb = bindRows(device, x, r0, r1);
    const vbnd = bindVec(device, a.values, vb, r0 * k, r1 * k);
    const ib = bindVec(device, a.indices, 4, r0 * k, r1 * k);
    const tb = bindVec(device, a.tailLogProb, 4, r0, r1);
    const params = paramsBlock([
      r1 - r0, x.v, x.ld, xb.elemOff,
      k, kp2, { f32: 1 / a.temperature }, a.outputLogprobs ? 1 : 0,
      vbnd.elemOff, ib.elemOff, tb.elemOff, 0,
    ]);
    run(device, pipe, params, [xb.binding, vbnd.binding, ib.binding, tb.binding], grid(r1 - r0));
  }
}

/** The WebGPU implementation of `binding().topk(args)` (lib/topk.ts builds args). */
export function topk(a: OpArgs): void {
  const op = 'topk';
  const X = a.logits as TensorDesc;
  const V = a.values as TensorDesc;
  const I = a.indices as TensorDesc;
  const T = a.tailLogProb as TensorDesc;
  const device = deviceOf(op, { logits: X, values: V, indices: I, tailLogProb: T });
  const n = X.shape[0]!;
  const k = a.k as number;
  if (n === 0) return;
  const vd = floatDtype(V);
  topkWebgpu(device, {
    logits: rowsOf(op, 'logits', X),
    k,
    temperature: a.temperature as number,
    outputLogprobs: !!a.outputLogprobs,
    values: { ...vecOf(op, 'values', V, n * k, dtypeBytes(vd)), dtype: vd },
    indices: vecOf(op, 'indices', I, n * k, 4),
    tailLogProb: vecOf(op, 'tailLogProb', T, n, 4),
  });
}
