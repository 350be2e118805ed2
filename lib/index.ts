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
export * as webgpu from './webgpu/index.js';
export { fromGPUBuffer, type FromGPUBufferOptions } from './webgpu/index.js';
export { backends, setThreads, synchronize, type Backends, type CudaDeviceInfo } from './backends.js';
export { memory, setMemoryLimit, trimMemory, type Memory, type CpuMemory, type CudaMemory, type WebGpuMemory } from './memory.js';
export { type LossOptions, type LossResult, type Reduction, type DivergenceName } from './divergence.js';
export { klDiv, klDivAsync, type KlDivOptions } from './kl_div.js';
export { jsd, jsdAsync, type JsdOptions } from './jsd.js';
export { tvd, tvdAsync } from './tvd.js';
export { skewKl, skewKlAsync, type SkewKlOptions } from './skew_kl.js';
export { distillationLoss, distillationLossAsync, type DistillationLossOptions, type DistillationLossResult } from './distillation_loss.js';
export { tokenStats, tokenStatsAsync, type TokenStats, type TokenStatsOptions } from './token_stats.js';
export { crc32c } from './crc32c.js';
export {
  SparseLogitsWriter, SparseLogitsReader, inspectShard,
  type SparseLogitsWriterOptions, type SparseLogitsReaderOptions, type SparseBatchInput, type SparseBatch, type SparseTeacherBatch, type WriterSummary,
  type ShardHeader, type ShardInfo, type Manifest as SparseStoreManifest, type StoreLayout, type ValueDType, type IdEncoding, type StoreKind,
} from './store.js';
export { NpyReader, type NpyOptions } from './io/npy.js';
export { SafetensorsReader, type SafetensorsOptions } from './io/safetensors.js';
export { type RowSource, type RowDType } from './io/rows.js';
export { topk, topkAsync, TOPK_MAX_K, type TopkOptions, type TopkResult } from './topk.js';
export { sampleTeacher, sampleTeacherAsync, SAMPLE_MAX_N, type SampleTeacherOptions, type SampledTeacher } from './sample_teacher.js';
export { sparseKlDiv, sparseKlDivAsync, SPARSE_TAILS, SPARSE_MAX_SLOTS, type SparseTail, type SparseTeacher, type SparseKlDivOptions, type SparseKlDivResult } from './sparse_kl_div.js';
