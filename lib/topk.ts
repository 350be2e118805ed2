/**
 * topk: per token (row), the k largest logits sorted descending (ties broken by the
 * lower index, NaN first, as torch.topk), their ids, and
 *
 *   tailLogProb = log Σ_{j ∉ top-k} softmax(x/T)_j
 *
 * summed directly over the tail (accurate even when the tail mass is 1e-30, where
 * log(1 − Σ top-k probs) would cancel to nothing). With `output: 'logprobs'` the values
 * are log softmax(x/T) at the ids, and the result is directly a sparse teacher for
 * `sparseKlDiv` (`{ indices, values, tailLogProb }`). One streaming pass per row on the
 * CPU; a single-pass radix select per row on CUDA (native/{cpu,cuda}/topk.*); a radix
 * select and a bitonic sort per row on WebGPU (lib/webgpu/topk.ts).
 */
import type { OpArgs, TensorDesc } from '../binding.js';
import { asRows, flatDesc } from './args.js';
import { KdError, KdRangeError } from './errors.js';
import { dispatch } from './dispatch.js';
import { Tensor, deviceName, empty, output as outputTensor } from './tensor.js';
import { expectInt, expectNumber, expectOneOf, expectOptions } from './validate.js';

/** The largest k topk accepts (the CUDA kernel sorts the survivors in shared memory). */
export const TOPK_MAX_K = 1024;

export interface TopkOptions {
  /** Softmax temperature for `tailLogProb` and log-prob values (default 1). */
  temperature?: number;
  /** 'logits' (default): the raw logits at the ids; 'logprobs': log softmax(x/T) there. */
  output?: 'logits' | 'logprobs';
  /** dtype of `values`: 'f32' (default) or 'input' (the logits' dtype). */
  valuesDtype?: 'f32' | 'input';
  /** CUDA: the caller's stream (cudaStream_t as bigint). */
  stream?: bigint;
}

export interface TopkResult {
  /** [..., k] sorted descending per row. */
  values: Tensor;
  /** i32 [..., k]: the column ids of `values`. */
  indices: Tensor;
  /** f32 [...]: log of the probability mass outside the top k (−Infinity when k = V). */
  tailLogProb: Tensor;
}

/** A [n, k] descriptor of a contiguous [..., k] output. */
export function slotDesc(t: Tensor, name: string, n: number, k: number): TensorDesc {
  return { ...t._desc(name), shape: [n, k], strides: [k, 1] };
}

function prepare(logits: unknown, k: unknown, opts: unknown): { args: OpArgs; result: TopkResult; device: number } {
  const op = 'topk';
  const o = expectOptions('topk options', opts, ['temperature', 'output', 'valuesDtype', 'stream']);
  const x = asRows('logits', logits, op);
  const kk = expectInt('k', k, 1, TOPK_MAX_K);
  if (kk > x.v) throw new KdRangeError(`topk: k = ${kk} exceeds the vocabulary size V = ${x.v} of logits [${x.t.shape.join(', ')}]`, 'KD_ESHAPE');
  const temperature = o.temperature === undefined ? 1 : expectNumber('temperature', o.temperature, (t) => t > 0 && Number.isFinite(t), 'a finite number > 0');
  const output = o.output === undefined ? 'logits' : expectOneOf('output', o.output, ['logits', 'logprobs'] as const);
  const valuesDtype = o.valuesDtype === undefined ? 'f32' : expectOneOf('valuesDtype', o.valuesDtype, ['f32', 'input'] as const);
  const device = x.t.deviceIndex;
  if (o.stream !== undefined && typeof o.stream !== 'bigint') throw new KdRangeError(`${op}: stream must be a bigint (cudaStream_t)`);
  if (o.stream !== undefined && device < 0) throw new KdError(`${op}: a stream was given but the logits are on ${deviceName(device)}, not CUDA`, 'KD_EDEVICE');

  const dev = deviceName(device);
  const tailLogProb = outputTensor(x.lead, 'f32', dev);  // the smallest first (see prepare in divergence.ts)
  const values = outputTensor([...x.lead, kk], valuesDtype === 'f32' ? 'f32' : x.t.dtype, dev);
  const indices = outputTensor([...x.lead, kk], 'i32', dev);
  const args: OpArgs = {
    logits: x.desc,
    k: kk,
    temperature,
    outputLogprobs: output === 'logprobs',
    values: slotDesc(values, 'values', x.n, kk),
    indices: slotDesc(indices, 'indices', x.n, kk),
    tailLogProb: flatDesc(tailLogProb, 'tailLogProb'),
    stream: o.stream as bigint | undefined,
  };
  return { args, result: { values, indices, tailLogProb }, device };
}

function disposeResult(r: TopkResult): void {
  r.values.dispose();
  r.indices.dispose();
  r.tailLogProb.dispose();
}

/** Top-k of each row of `logits` ([N, V] or [B, T, V]); CUDA and WebGPU work is enqueued, not awaited. */
export function topk(logits: Tensor, k: number, opts?: TopkOptions): TopkResult {
  const p = prepare(logits, k, opts);
  try {
    dispatch('topk', p.args, p.device);
  } catch (e) {
    disposeResult(p.result);
    throw e;
  }
  return p.result;
}

/** topk on a worker thread (CPU); resolves when done. */
export async function topkAsync(logits: Tensor, k: number, opts?: TopkOptions): Promise<TopkResult> {
  const p = prepare(logits, k, opts);
  p.args.async = true;
  try {
    await dispatch('topk', p.args, p.device);
  } catch (e) {
    disposeResult(p.result);
    throw e;
  }
  return p.result;
}
