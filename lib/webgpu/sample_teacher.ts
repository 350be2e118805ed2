/// <reference types="@webgpu/types" />
/**
 * sampleTeacher on WebGPU: the launcher of wgsl/sample_teacher.wgsl.ts (the math, why the
 * ids are bitwise the CPU's, and the kernel's shape are in that file's header). Per chunk
 * of rows (bindings within the device's limit, gpu_rows.ts) one dispatch, a workgroup per
 * row (2-D grid past 65535 rows); the row counter of the randomness is the row's index in
 * the whole call, so chunking never changes a draw. The f32 scalars (c = tau / T, 1 / T)
 * and the seed's first splitmix64 round are computed here, as the CPU computes them.
 * Nothing is read back: the call returns once the work is enqueued.
 */
import { KdError, KdRangeError } from '../errors.js';
import { bindRows, bindVec, checkExtent, checkRows, deviceOf, dtypeBytes, paramsBlock, rowsOf, rowsPerChunk, vecOf, type GpuRows, type GpuVec, type OpArgs, type TensorDesc } from './gpu_rows.js';
import { grid, pipeline, run } from './runtime.js';
import { acquireScratch, releaseScratch } from './pool.js';
import { SAMPLE_SUBCHUNKS, WG } from './tuning.js';
import { SAMPLE_TEACHER_KEY, sampleTeacherWgsl } from './wgsl/sample_teacher.wgsl.js';

const DTYPE_CODE = { f32: 0, f16: 1, bf16: 2 } as const;

export interface SampleTeacherGpuArgs {
  logits: GpuRows;
  /** Draws per row (>= 1). */
  samples: number;
  /** In [0, 2^64). */
  seed: bigint;
  temperature: number;
  proposalPower: number;
  /** i32 [n, samples] contiguous. */
  indices: GpuVec;
  /** f32 [n, samples] contiguous. */
  weights: GpuVec;
  /** f32 [n, samples] contiguous (optional). */
  logprobs?: GpuVec;
}

const M64 = (1n << 64n) - 1n;
const GOLDEN = 0x9e3779b97f4a7c15n;

/** splitmix64's finaliser (native/common/sample_teacher.h sample_mix64). */
export function sampleMix64(z0: bigint): bigint {
  let z = z0 & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

/** sample_random(seed, row, draw) of native/common/sample_teacher.h (64 bits). */
export function sampleRandom(seed: bigint, row: bigint, draw: bigint): bigint {
  let h = sampleMix64(seed + GOLDEN);
  h = sampleMix64(h ^ ((row * 0xd1b54a32d192ed03n + 0x8cb92ba72f3d8dd7n) & M64));
  return sampleMix64(h + (((draw + 1n) * GOLDEN) & M64));
}

/** sample_fixed_shift(V): s = 63 − ceil(log2 V) (b capped at 62), so V·2^s ≤ 2^63. */
export function sampleFixedShift(v: number): number {
  let b = 0;
  while (b < 62 && 2 ** b < v) ++b;
  return 63 - b;
}

export function sampleTeacherWebgpu(device: GPUDevice, a: SampleTeacherGpuArgs): void {
  const op = 'sampleTeacher';
  const x = a.logits;
  const n = x.n;
  const ns = a.samples;
  if (!Number.isSafeInteger(ns) || ns < 1) throw new KdRangeError(`${op}: samples = ${ns} must be an integer >= 1`, 'KD_EINVAL');
  if (n > 0 && x.v < 1) throw new KdRangeError(`${op}: V must be >= 1`, 'KD_ESHAPE');
  if (x.v > 0x7fffffff) throw new KdRangeError(`${op}: V must fit in int32`, 'KD_ESHAPE');
  if (typeof a.seed !== 'bigint' || a.seed < 0n || a.seed > M64) throw new KdRangeError(`${op}: seed must be a bigint in [0, 2^64)`, 'KD_EINVAL');
  // The native layer's checks, on the f32 values the kernels use (e.g. T = 1e-46 is 0 in f32).
  const t32 = Math.fround(a.temperature);
  const tau32 = Math.fround(a.proposalPower);
  if (!(t32 > 0)) throw new KdError(`${op}: temperature must be > 0`, 'KD_EINVAL');
  if (!(t32 < Infinity)) throw new KdError(`${op}: temperature must be finite and > 0`, 'KD_EINVAL');
  if (!(tau32 >= 0 && tau32 < Infinity)) throw new KdError(`${op}: proposalPower must be finite and >= 0`, 'KD_EINVAL');
  if (n === 0) return;
  checkRows(op, 'logits', x);
  checkExtent(op, 'indices', a.indices.buffer, a.indices.offset, n * ns, 4);
  checkExtent(op, 'weights', a.weights.buffer, a.weights.offset, n * ns, 4);
  if (a.logprobs) checkExtent(op, 'logprobs', a.logprobs.buffer, a.logprobs.offset, n * ns, 4);
  // WebGPU rejects a buffer bound read-only and writable in one dispatch (usage rules).
  for (const [name, o] of [['indices', a.indices], ['weights', a.weights], ['logprobs', a.logprobs]] as const)
    if (o && o.buffer === x.buffer) throw new KdError(`${op}: ${name} shares a GPUBuffer with the logits`, 'KD_EINVAL');

  // The CPU's f32 scalars: an f32 division is the double quotient of the f32 operands
  // rounded to f32 (53 >= 2 * 24 + 2 bits: no double-rounding error).
  const c = Math.fround(tau32 / t32);
  const invT = Math.fround(1 / t32);
  const shift = sampleFixedShift(x.v);
  const chunkLen = Math.ceil(x.v / (WG * SAMPLE_SUBCHUNKS));
  const h0 = sampleMix64(a.seed + GOLDEN);
  const pipe = pipeline(device, SAMPLE_TEACHER_KEY, sampleTeacherWgsl());
  // Without log-probs binding 4 is a placeholder the kernel never writes (has_lp = 0).
  const placeholder = a.logprobs ? undefined : acquireScratch(device, 4, false);
  const chunk = rowsPerChunk(device, n, [x.ld * dtypeBytes(x.dtype), ns * 4]);
  try {
    for (let r0 = 0; r0 < n; r0 += chunk) {
      const r1 = Math.min(n, r0 + chunk);
      const xb = bindRows(device, x, r0, r1);
      const ib = bindVec(device, a.indices, 4, r0 * ns, r1 * ns);
      const wb = bindVec(device, a.weights, 4, r0 * ns, r1 * ns);
      const lb = a.logprobs ? bindVec(device, a.logprobs, 4, r0 * ns, r1 * ns) : undefined;
      const params = paramsBlock([
        r1 - r0, x.v, x.ld, xb.elemOff,
        ns, r0, shift, chunkLen,
        { f32: c }, c === Infinity ? 1 : 0, tau32 === 1 ? 1 : 0, { f32: invT },
        Number(h0 & 0xffffffffn), Number(h0 >> 32n), ib.elemOff, wb.elemOff,
        lb ? lb.elemOff : 0, lb ? 1 : 0, DTYPE_CODE[x.dtype], 0,
      ]);
      run(device, pipe, params, [xb.binding, ib.binding, wb.binding, lb ? lb.binding : placeholder!], grid(r1 - r0));
    }
  } finally {
    if (placeholder) releaseScratch(device, placeholder); // the submitted work runs before any later user
  }
}

/** The WebGPU implementation of `binding().sampleTeacher(args)` (lib/sample_teacher.ts builds args). */
export function sampleTeacher(a: OpArgs): void {
  const op = 'sampleTeacher';
  const X = a.logits as TensorDesc;
  const I = a.indices as TensorDesc;
  const W = a.weights as TensorDesc;
  const LP = a.logprobs as TensorDesc | undefined;
  const device = deviceOf(op, { logits: X, indices: I, weights: W, logprobs: LP });
  const n = X.shape[0]!;
  const ns = a.samples as number;
  sampleTeacherWebgpu(device, {
    logits: rowsOf(op, 'logits', X),
    samples: ns,
    seed: a.seed as bigint,
    temperature: a.temperature as number,
    proposalPower: a.proposalPower as number,
    indices: vecOf(op, 'indices', I, n * ns, 4),
    weights: vecOf(op, 'weights', W, n * ns, 4),
    logprobs: LP ? vecOf(op, 'logprobs', LP, n * ns, 4) : undefined,
  });
}
