/**
 * The one place where a validated, backend-neutral op description (OpArgs: dtype codes,
 * shapes, strides, options, and each tensor's memory) goes to its backend: the native
 * addon for the CPU and CUDA (which picks between them by the tensors' device), or the
 * WGSL implementation for WebGPU tensors. Each op's lib/ file validates once, builds the
 * OpArgs and calls dispatch(); nothing else branches on the backend.
 */
import type { OpArgs } from '../binding.js';
import { KdError } from './errors.js';
import { binding } from './native.js';
import { WEBGPU } from './tensor.js';
import { divergence as webgpuDivergence } from './webgpu/divergence.js';
import { tokenStats as webgpuTokenStats } from './webgpu/token_stats.js';
import { topk as webgpuTopk } from './webgpu/topk.js';
import { sparseKlDiv as webgpuSparseKlDiv } from './webgpu/sparse_kl_div.js';
import { sampleTeacher as webgpuSampleTeacher } from './webgpu/sample_teacher.js';

export type OpName = 'divergence' | 'tokenStats' | 'topk' | 'sampleTeacher' | 'sparseKlDiv';

/** The WebGPU implementations (lib/webgpu/<op>.ts): enqueue, return without waiting. */
const WEBGPU_OPS: Partial<Record<OpName, (args: OpArgs) => void>> = {
  divergence: webgpuDivergence,
  tokenStats: webgpuTokenStats,
  topk: webgpuTopk,
  sparseKlDiv: webgpuSparseKlDiv,
  sampleTeacher: webgpuSampleTeacher,
};

/**
 * Runs `op` on the backend of `device` (-1 CPU, N CUDA, WEBGPU). With args.async the
 * native path returns a promise (a worker thread); WebGPU work is always asynchronous
 * on the GPU queue, so its promise resolves once the work is enqueued.
 */
export function dispatch(op: OpName, args: OpArgs, device: number): undefined | Promise<void> {
  if (device === WEBGPU) {
    const impl = WEBGPU_OPS[op];
    if (!impl) throw new KdError(`${op} is not available on WebGPU yet`, 'KD_EUNSUPPORTED');
    impl(args);
    return args.async ? Promise.resolve() : undefined;
  }
  return binding()[op](args);
}
