/**
 * sampleTeacher: the random-sampling estimator of Sparse Logit Sampling (Anshumann et
 * al., ACL 2025). Per token, `n` ids are drawn with replacement from the proposal
 * r ∝ p^τ (p = softmax(logits/T), τ = proposalPower), and each draw of id j carries the
 * importance weight p_j / (n · r_j), so that for every id i
 *
 *   E[Σ_{draws at i} w] = p_i,
 *
 * and −Σ w log q_id is an unbiased estimate of the forward-KL cross-entropy
 * (`sparseKlDiv(student, teacher, { tail: 'sampled' })`). τ = 1 samples from p itself
 * (all weights ≈ 1/n); τ < 1 flattens the proposal to reach rarer tokens.
 *
 * Deterministic: the draws use counter-based randomness keyed by (seed, row index in this
 * call, draw index), and the proposal is built from correctly rounded operations in
 * fixed point, so the same seed gives the same ids on the CPU (any thread count, any
 * ISA) and on CUDA (native/common/sample_teacher.h). Weights and log-probs agree across
 * backends to float rounding.
 */
import type { OpArgs } from '../binding.js';
import { asRows } from './args.js';
import { KdError, KdRangeError, KdTypeError, describe } from './errors.js';
import { dispatch } from './dispatch.js';
import { Tensor, deviceName, output } from './tensor.js';
import { slotDesc } from './topk.js';
import { expectBool, expectInt, expectNumber, expectOptions } from './validate.js';

/** The largest number of draws per token (the slot limit of sparseKlDiv). */
export const SAMPLE_MAX_N = 4096;

export interface SampleTeacherOptions {
  /** Required: a non-negative safe integer or a bigint in [0, 2^64). */
  seed: number | bigint;
  /** Softmax temperature of the teacher (default 1). */
  temperature?: number;
  /** τ of the proposal r ∝ p^τ (default 1; 0 = uniform over the tokens with p > 0). */
  proposalPower?: number;
  /** Also return log p at the drawn ids (default true). */
  logprobs?: boolean;
  /** CUDA: the caller's stream (cudaStream_t as bigint). */
  stream?: bigint;
}

export interface SampledTeacher {
  /** i32 [..., n]: drawn ids (with replacement, so ids may repeat). */
  indices: Tensor;
  /** f32 [..., n]: importance weights p_id / (n · r_id). */
  weights: Tensor;
  /** f32 [..., n]: log p at the ids (when requested). */
  logprobs?: Tensor;
}

function expectSeed(v: unknown): bigint {
  if (typeof v === 'bigint') {
    if (v < 0n || v >= 1n << 64n) throw new KdRangeError(`Expected a bigint in [0, 2^64) for seed but received ${describe(v)}`);
    return v;
  }
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0)
      throw new KdRangeError(`Expected a non-negative safe integer (or a bigint) for seed but received ${describe(v)}`);
    return BigInt(v);
  }
  if (v === undefined) throw new KdTypeError('sampleTeacher: options.seed is required (a number or bigint): the draws are deterministic per seed');
  throw new KdTypeError(`Expected a number or bigint for seed but received ${describe(v)}`);
}

function prepare(logits: unknown, n: unknown, opts: unknown): { args: OpArgs; result: SampledTeacher; device: number } {
  const op = 'sampleTeacher';
  if (opts === undefined) throw new KdTypeError('sampleTeacher: options with a seed are required, e.g. { seed: 0 }');
  const o = expectOptions('sampleTeacher options', opts, ['seed', 'temperature', 'proposalPower', 'logprobs', 'stream']);
  const x = asRows('logits', logits, op);
  const samples = expectInt('n', n, 1, SAMPLE_MAX_N);
  if (x.v < 1) throw new KdRangeError(`${op}: logits [${x.t.shape.join(', ')}] have no vocabulary to sample from`, 'KD_ESHAPE');
  const seed = expectSeed(o.seed);
  const temperature = o.temperature === undefined ? 1 : expectNumber('temperature', o.temperature, (t) => t > 0 && Number.isFinite(t), 'a finite number > 0');
  const proposalPower = o.proposalPower === undefined ? 1 : expectNumber('proposalPower', o.proposalPower, (t) => t >= 0 && Number.isFinite(t), 'a finite number >= 0');
  const wantLogprobs = o.logprobs === undefined ? true : expectBool('logprobs', o.logprobs);
  const device = x.t.deviceIndex;
  if (o.stream !== undefined && typeof o.stream !== 'bigint') throw new KdRangeError(`${op}: stream must be a bigint (cudaStream_t)`);
  if (o.stream !== undefined && device < 0) throw new KdError(`${op}: a stream was given but the logits are on ${deviceName(device)}, not CUDA`, 'KD_EDEVICE');

  const dev = deviceName(device);
  const shape = [...x.lead, samples];
  const result: SampledTeacher = {
    indices: output(shape, 'i32', dev),
    weights: output(shape, 'f32', dev),
  };
  if (wantLogprobs) result.logprobs = output(shape, 'f32', dev);
  const args: OpArgs = {
    logits: x.desc,
    samples,
    seed,
    temperature,
    proposalPower,
    indices: slotDesc(result.indices, 'indices', x.n, samples),
    weights: slotDesc(result.weights, 'weights', x.n, samples),
    logprobs: result.logprobs ? slotDesc(result.logprobs, 'logprobs', x.n, samples) : undefined,
    stream: o.stream as bigint | undefined,
  };
  return { args, result, device };
}

function disposeResult(r: SampledTeacher): void {
  r.indices.dispose();
  r.weights.dispose();
  r.logprobs?.dispose();
}

/** Draws n teacher ids per token with importance weights (see the module comment). */
export function sampleTeacher(logits: Tensor, n: number, opts: SampleTeacherOptions): SampledTeacher {
  const p = prepare(logits, n, opts);
  try {
    dispatch('sampleTeacher', p.args, p.device);
  } catch (e) {
    disposeResult(p.result);
    throw e;
  }
  return p.result;
}

/** sampleTeacher on a worker thread (CPU); resolves when done. */
export async function sampleTeacherAsync(logits: Tensor, n: number, opts: SampleTeacherOptions): Promise<SampledTeacher> {
  const p = prepare(logits, n, opts);
  p.args.async = true;
  try {
    await dispatch('sampleTeacher', p.args, p.device);
  } catch (e) {
    disposeResult(p.result);
    throw e;
  }
  return p.result;
}
