/**
 * tokenStats: per-token statistics for on-policy distillation from one read of both
 * logit rows: forward KL(p‖q), reverse KL(q‖p), entropies H(q), H(p), and for the
 * sampled token s: log q_s, log p_s and the teacher's rank of s (0 = its argmax).
 */
import type { OpArgs } from '../binding.js';
import { asRows, disposeAll, flatDesc, sideInput } from './args.js';
import { KdError, KdRangeError } from './errors.js';
import { dispatch } from './dispatch.js';
import { Tensor, WEBGPU, deviceName, empty, output } from './tensor.js';
import { expectBool, expectNumber, expectOneOf, expectOptions } from './validate.js';

export interface TokenStatsOptions {
  /** i32 [N]: the token the student generated at each position. */
  sampled?: Tensor | Int32Array;
  temperature?: number;
  teacher?: 'logits' | 'logprobs';
  stream?: bigint;
  /**
   * CUDA: copy `sampled` to the host to range-check it (default true; syncs). WebGPU
   * cannot read synchronously: a WebGPU `sampled` tensor is not checked here, and an id
   * outside [0, V) gives its token NaN log-probs and rank -1 (an Int32Array is checked).
   */
  checkSampled?: boolean;
}

export interface TokenStats {
  forwardKl: Tensor;
  reverseKl: Tensor;
  studentEntropy: Tensor;
  teacherEntropy: Tensor;
  /** Present when `sampled` was given. */
  studentLogProb?: Tensor;
  teacherLogProb?: Tensor;
  /** i32: tokens the teacher ranks strictly above the sampled one. */
  teacherRank?: Tensor;
}

function prepare(student: unknown, teacher: unknown, opts: unknown) {
  const op = 'tokenStats';
  const o = expectOptions('tokenStats options', opts, ['sampled', 'temperature', 'teacher', 'stream', 'checkSampled']);
  const s = asRows('student', student, op);
  const t = asRows('teacher', teacher, op);
  if (s.t.deviceIndex !== t.t.deviceIndex) throw new KdError(`${op}: student is on ${s.t.device} but teacher is on ${t.t.device}`, 'KD_EDEVICE');
  if (t.n !== s.n) throw new KdRangeError(`${op}: student has ${s.n} tokens but teacher has ${t.n}`, 'KD_ESHAPE');
  if (t.v < s.v) throw new KdRangeError(`${op}: teacher vocabulary (${t.v}) is smaller than the student's (${s.v})`, 'KD_ESHAPE');
  const temperature = o.temperature === undefined ? 1 : expectNumber('temperature', o.temperature, (x) => x > 0 && Number.isFinite(x), 'a finite number > 0');
  const teacherKind = o.teacher === undefined ? 'logits' : expectOneOf('teacher', o.teacher, ['logits', 'logprobs'] as const);
  const check = o.checkSampled === undefined ? true : expectBool('checkSampled', o.checkSampled);
  const device = s.t.deviceIndex;
  const temps: Tensor[] = [];
  const sampled = sideInput('sampled', o.sampled, 'i32', s.n, device, op, temps);
  if (sampled) {
    const host = sampled.host ?? (check && device !== WEBGPU ? sampled.t.toArray() : undefined);
    if (host)
      for (let i = 0; i < host.length; i++)
        if (host[i]! < 0 || host[i]! >= s.v) throw new KdRangeError(`${op}: sampled[${i}] = ${host[i]} is outside [0, ${s.v})`, 'KD_ERANGE');
  }
  const dev = deviceName(device);
  const mk = (dtype: 'f32' | 'i32' = 'f32') => output(s.lead, dtype, dev);
  const r: TokenStats = { forwardKl: mk(), reverseKl: mk(), studentEntropy: mk(), teacherEntropy: mk() };
  if (sampled) Object.assign(r, { studentLogProb: mk(), teacherLogProb: mk(), teacherRank: mk('i32') });
  const args: OpArgs = {
    student: s.desc,
    teacher: t.desc,
    teacherLogprobs: teacherKind === 'logprobs',
    temperature,
    sampled: sampled ? flatDesc(sampled.t, 'sampled') : undefined,
    stream: o.stream as bigint | undefined,
  };
  for (const [k, v] of Object.entries(r)) args[k] = flatDesc(v as Tensor, k);
  return { args, r, temps, device };
}

export function tokenStats(student: Tensor, teacher: Tensor, opts?: TokenStatsOptions): TokenStats {
  const { args, r, temps, device } = prepare(student, teacher, opts);
  try {
    dispatch('tokenStats', args, device);
  } catch (e) {
    disposeAll(Object.values(r));
    throw e;
  } finally {
    disposeAll(temps);
  }
  return r;
}

export async function tokenStatsAsync(student: Tensor, teacher: Tensor, opts?: TokenStatsOptions): Promise<TokenStats> {
  const { args, r, temps, device } = prepare(student, teacher, opts);
  args.async = true;
  try {
    await dispatch('tokenStats', args, device);
  } catch (e) {
    disposeAll(Object.values(r));
    throw e;
  } finally {
    disposeAll(temps);
  }
  return r;
}
