/// <reference types="@webgpu/types" />
/**
 * tokenStats on WebGPU: the launcher of wgsl/token_stats.wgsl.ts (the math and the
 * kernel's shape are in that file's header). Per chunk of rows (gpu_rows.ts: bindings
 * within the device's limit) one dispatch, a workgroup per token (2-D grid past 65535),
 * writes a [7, rows] scratch that is then copied into the op's outputs. Nothing is read
 * back: the call returns once the work is enqueued.
 */
import { KdRangeError } from '../errors.js';
import { bindRows, bindVec, checkExtent, checkRows, deviceOf, paramsBlock, rowsOf, rowsPerChunk, vecOf, dtypeBytes, type GpuRows, type GpuVec, type OpArgs, type TensorDesc } from './gpu_rows.js';
import { grid, pipeline, run, type Binding } from './runtime.js';
import { acquireScratch, releaseScratch } from './pool.js';
import { tokenStatsKey, tokenStatsWgsl } from './wgsl/token_stats.wgsl.js';

export interface TokenStatsGpuArgs {
  student: GpuRows;
  teacher: GpuRows;
  /** Teacher rows are log-probs (used as given at T = 1, renormalised otherwise). */
  teacherLogprobs: boolean;
  temperature: number;
  /** i32 [N] sampled ids; an id outside [0, V) gives NaN log-probs and rank -1 for its row. */
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
  const chunk = rowsPerChunk(device, n, [s.ld * dtypeBytes(s.dtype), t.ld * dtypeBytes(t.dtype), 7 * 4]);
  for (let r0 = 0; r0 < n; r0 += chunk) {
    const r1 = Math.min(n, r0 + chunk);
    const rows = r1 - r0;
    const sb = bindRows(device, s, r0, r1);
    const tb = bindRows(device, { ...t, v: s.v }, r0, r1);
    const sp = a.sampled ? bindVec(device, a.sampled, 4, r0, r1) : undefined;
    const scratch = acquireScratch(device, outs.length * rows * 4, false);
    try {
      const params = paramsBlock([rows, s.v, s.ld, t.ld, sb.elemOff, tb.elemOff, tRaw, { f32: 1 / a.temperature }, sp?.elemOff ?? 0]);
      const storage: Binding[] = [sb.binding, tb.binding, { buffer: scratch }];
      if (sp) storage.push(sp.binding);
      run(device, pipe, params, storage, grid(rows));
      const enc = device.createCommandEncoder();
      outs.forEach((k, i) => {
        const o = a.out[k]!;
        enc.copyBufferToBuffer(scratch, i * rows * 4, o.buffer, (o.offset + r0) * 4, rows * 4);
      });
      device.queue.submit([enc.finish()]);
    } finally {
      releaseScratch(device, scratch); // the submitted work runs before any later user
    }
  }
}

/** The WebGPU implementation of `binding().tokenStats(args)` (lib/token_stats.ts builds args). */
export function tokenStats(a: OpArgs): void {
  const op = 'tokenStats';
  const S = a.student as TensorDesc;
  const T = a.teacher as TensorDesc;
  const sampled = a.sampled as TensorDesc | undefined;
  const n = S.shape[0]!;
  const names = sampled ? OUT_ORDER : OUT_ORDER.slice(0, 4);
  const descs: Record<string, TensorDesc | undefined> = { student: S, teacher: T, sampled };
  for (const k of names) descs[k] = a[k] as TensorDesc;
  const device = deviceOf(op, descs);
  if (n === 0) return;
  const out = Object.fromEntries(names.map((k) => [k, vecOf(op, k, a[k] as TensorDesc, n, 4)])) as TokenStatsGpuArgs['out'];
  tokenStatsWebgpu(device, {
    student: rowsOf(op, 'student', S),
    teacher: rowsOf(op, 'teacher', T),
    teacherLogprobs: !!a.teacherLogprobs,
    temperature: a.temperature as number,
    sampled: sampled ? vecOf(op, 'sampled', sampled, n, 4) : undefined,
    out,
  });
}
