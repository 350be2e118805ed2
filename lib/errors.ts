/**
 * Errors thrown by kd-kernels. Argument mistakes are `TypeError` (wrong type) or
 * `RangeError` (a value outside what is allowed) with a `code`; everything else is a
 * `KdError`. Codes are stable and part of the API.
 */
export type KdErrorCode =
  | 'KD_EINVAL' // an invalid argument or option
  | 'KD_ESHAPE' // shapes, strides or lengths that do not fit together
  | 'KD_EDTYPE' // a dtype the op does not accept
  | 'KD_ERANGE' // an index (label, sampled id, token id) out of range
  | 'KD_EDEVICE' // CUDA unavailable, a missing device, or tensors on different devices
  | 'KD_ECUDA' // an error reported by the CUDA runtime
  | 'KD_EWEBGPU' // an error reported by WebGPU (validation, a failed readback)
  | 'KD_ENOMEM' // out of (device) memory
  | 'KD_EDISPOSED' // a disposed tensor or a detached ArrayBuffer
  | 'KD_EUNSUPPORTED' // not available in this build
  | 'KD_ELOAD' // the native addon could not be loaded
  | 'KD_EFORMAT' // a corrupt, truncated or incompatible file
  | 'KD_EIO'; // a file-system error

export class KdError extends Error {
  readonly code: KdErrorCode;
  constructor(message: string, code: KdErrorCode = 'KD_EINVAL') {
    super(message);
    this.name = 'KdError';
    this.code = code;
  }
}

export class KdTypeError extends TypeError {
  readonly code: KdErrorCode;
  constructor(message: string, code: KdErrorCode = 'KD_EINVAL') {
    super(message);
    this.name = 'TypeError';
    this.code = code;
  }
}

export class KdRangeError extends RangeError {
  readonly code: KdErrorCode;
  constructor(message: string, code: KdErrorCode = 'KD_EINVAL') {
    super(message);
    this.name = 'RangeError';
    this.code = code;
  }
}

/** Describes a received value for messages: `2000 of type number`, `an Int32Array`. */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return `${String(v)} of type ${typeof v}`;
  if (typeof v === 'string') return `'${v.length > 40 ? v.slice(0, 40) + '…' : v}' of type string`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name} of length ${(v as unknown as { length: number }).length}`;
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  if (typeof v === 'function') return 'a function';
  const name = (v as object).constructor?.name;
  return name && name !== 'Object' ? `a ${name}` : 'an object';
}
