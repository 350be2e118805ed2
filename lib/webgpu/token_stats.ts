/// <reference types="@webgpu/types" />
/**
 * tokenStats on WebGPU: the launcher of wgsl/token_stats.wgsl.ts (the math and the
 * kernel's shape are in that file's header). One dispatch (a workgroup per token, 2-D
 * grid over more than 65535 tokens) writes a [7, N] scratch that is then copied into
 * the op's outputs; nothing is read back, so the call returns without waiting.
 */
import { KdRangeError } from '../errors.js';
import { checkExtent, checkRows, paramsBlock, type GpuRows, type GpuVec } from './gpu_rows.js';
import { createBuffer, grid, pipeline, run } from './runtime.js';
import { tokenStatsKey, tokenStatsWgsl } from './wgsl/token_stats.wgsl.js';

export interface TokenStatsGpuArgs {
  student: GpuRows;
  teacher: GpuRows;
  /** Teacher rows are log-probs (used as given at T = 1, renormalised otherwise). */
  teacherLogprobs: boolean;
  temperature: number;
  /** i32 [N] sampled ids, each in [0, V) (range-checked by the caller). */
  sampled?: GpuVec;
  /** f32 [N] outputs (and i32 [N] teacherRank), each a buffer + element offset. */
  out: {
    forwardKl: GpuVec;
    reverseKl: GpuVec;
    studentEntropy: GpuVec;
    teacherEntropy: GpuVec;
    studentLogProb?: GpuVec;
    teacherLogProb?: GpuVec;
    teacherRank?: GpuVec;
  };
}

const OUT_ORDER = ['forwardKl', 'reverseKl', 'studentEntropy', 'teacherEntropy', 'studentLogProb', 'teacherLogProb', 'teacherRank'] as const;

export function tokenStatsWebgpu(device: GPUDevice, a: TokenStatsGpuArgs): void {
  const op = 'tokenStats';
  const { student: s, teacher: t } = a;
  const n = s.n;
  if (t.n !== n || t.v < s.v) throw new KdRangeError(`${op}: teacher [${t.n}, ${t.v}] does not fit student [${n}, ${s.v}]`, 'KD_ESHAPE');
  if (n === 0) return;
  if (s.v < 1) throw new KdRangeError(`${op}: V must be >= 1`, 'KD_ESHAPE');
  checkRows(op, 'student', s);
  checkRows(op, 'teacher', t);
  const outs = OUT_ORDER.slice(0, a.sampled ? 7 : 4);
  for (const k of outs) {
    const o = a.out[k];
    if (!o) throw new KdRangeError(`${op}: missing output ${k}`);
    checkExtent(op, k, o.buffer, o.offset, n, 4);
  }
  if (a.sampled) checkExtent(op, 'sampled', a.sampled.buffer, a.sampled.offset, n, 4);

  const variant = { sDtype: s.dtype, tDtype: t.dtype, sampled: a.sampled !== undefined };
  const pipe = pipeline(device, tokenStatsKey(variant), tokenStatsWgsl(variant));
  const tRaw = a.teacherLogprobs && a.temperature === 1 ? 1 : 0;
  const params = paramsBlock([n, s.v, s.ld, t.ld, s.offset, t.offset, tRaw, { f32: 1 / a.temperature }, a.sampled?.offset ?? 0]);
  const scratch = createBuffer(device, outs.length * n * 4);
  try {
    const storage: (GPUBuffer | { buffer: GPUBuffer })[] = [s.buffer, t.buffer, scratch];
    if (a.sampled) storage.push(a.sampled.buffer);
    run(device, pipe, params, storage, grid(n));
    const enc = device.createCommandEncoder();
    outs.forEach((k, i) => {
      const o = a.out[k]!;
      enc.copyBufferToBuffer(scratch, i * n * 4, o.buffer, o.offset * 4, n * 4);
    });
    device.queue.submit([enc.finish()]);
  } finally {
    scratch.destroy(); // freed by WebGPU once the submitted work is done
  }
}
