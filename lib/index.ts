/**
 * kd-kernels: fused knowledge-distillation losses and gradients for TypeScript
 * trainers, on CPU (C++, SIMD, threads) and CUDA.
 */
import { KdError } from './errors.js';
import { binding } from './native.js';

// Native errors are thrown as KdError with the same code (better-sqlite3's pattern).
binding().setErrorClass(KdError as unknown as new (message: string, code: string) => Error);

export { KdError, KdTypeError, KdRangeError, type KdErrorCode } from './errors.js';
export { type DType, type FloatDType, type TypedArray, bf16ToNumber, numberToBf16, f16ToNumber, numberToF16, toFloat32, fromNumbers } from './dtype.js';
export { Tensor, tensor, empty, zeros, fromDevicePointer, isTensor, type Device, type TensorOptions } from './tensor.js';
export { backends, setThreads, synchronize, type Backends, type CudaDeviceInfo } from './backends.js';
export { type LossOptions, type LossResult, type Reduction, type DivergenceName } from './divergence.js';
export { klDiv, klDivAsync, type KlDivOptions } from './kl_div.js';
export { jsd, jsdAsync, type JsdOptions } from './jsd.js';
export { tvd, tvdAsync } from './tvd.js';
export { skewKl, skewKlAsync, type SkewKlOptions } from './skew_kl.js';
export { distillationLoss, distillationLossAsync, type DistillationLossOptions, type DistillationLossResult } from './distillation_loss.js';
export { tokenStats, tokenStatsAsync, type TokenStats, type TokenStatsOptions } from './token_stats.js';
