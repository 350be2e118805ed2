/// <reference types="@webgpu/types" />
/**
 * `kd-kernels/browser`: the ops on WebGPU tensors for browsers (and any bundle without
 * Node.js): no native addon, no file system. Bundlers that honour package.json's
 * "browser" field (webpack, esbuild --platform=browser, Vite, Rollup's node-resolve with
 * browser: true) replace the Node-only modules; see README "WebGPU".
 *
 *   import * as kd from 'kd-kernels/browser';
 *   await kd.webgpu.device();               // navigator.gpu
 *   const s = kd.tensor(logits, [N, V], { device: 'webgpu' });
 */
export { KdError, KdTypeError, KdRangeError, type KdErrorCode } from './errors.js';
export { type DType, type FloatDType, type TypedArray, bf16ToNumber, numberToBf16, f16ToNumber, numberToF16, toFloat32, fromNumbers } from './dtype.js';
export { Tensor, tensor, empty, zeros, isTensor, type Device, type TensorOptions } from './tensor.js';
export * as webgpu from './webgpu/index.js';
export { fromGPUBuffer, type FromGPUBufferOptions } from './webgpu/index.js';
export { type LossOptions, type LossResult, type Reduction, type DivergenceName } from './divergence.js';
export { klDiv, klDivAsync, type KlDivOptions } from './kl_div.js';
export { jsd, jsdAsync, type JsdOptions } from './jsd.js';
export { tvd, tvdAsync } from './tvd.js';
export { skewKl, skewKlAsync, type SkewKlOptions } from './skew_kl.js';
export { distillationLoss, distillationLossAsync, type DistillationLossOptions, type DistillationLossResult } from './distillation_loss.js';
export { tokenStats, tokenStatsAsync, type TokenStats, type TokenStatsOptions } from './token_stats.js';
export { topk, topkAsync, TOPK_MAX_K, type TopkOptions, type TopkResult } from './topk.js';
export { sampleTeacher, sampleTeacherAsync, SAMPLE_MAX_N, type SampleTeacherOptions, type SampledTeacher } from './sample_teacher.js';
export { sparseKlDiv, sparseKlDivAsync, SPARSE_TAILS, SPARSE_MAX_SLOTS, type SparseTail, type SparseTeacher, type SparseKlDivOptions, type SparseKlDivResult } from './sparse_kl_div.js';
