/** Element types. f16/bf16 data lives in `Uint16Array`s holding the raw bits. */
import { KdTypeError, describe } from './errors.js';
import { expectOneOf } from './validate.js';

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u8';
export type FloatDType = 'f32' | 'f16' | 'bf16';
export type TypedArray = Float32Array | Uint16Array | Int32Array | Uint8Array;

/** Codes shared with native/common/dtype.h. */
export const DTYPE_CODE: Record<DType, number> = { f32: 0, f16: 1, bf16: 2, i32: 3, u8: 4 };
export const DTYPE_SIZE: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u8: 1 };
export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'u8'];
export const FLOAT_DTYPES: readonly FloatDType[] = ['f32', 'f16', 'bf16'];

export function arrayTypeFor(dtype: DType): string {
  return dtype === 'f32' ? 'Float32Array' : dtype === 'i32' ? 'Int32Array' : dtype === 'u8' ? 'Uint8Array' : 'Uint16Array';
}

export function allocArray(dtype: DType, length: number): TypedArray {
  switch (dtype) {
    case 'f32': return new Float32Array(length);
    case 'i32': return new Int32Array(length);
    case 'u8': return new Uint8Array(length);
    default: return new Uint16Array(length);
  }
}

/** The dtype a TypedArray implies, or undefined (Uint16Array needs an explicit dtype). */
export function dtypeOfArray(a: ArrayBufferView): DType | undefined {
  if (a instanceof Float32Array) return 'f32';
  if (a instanceof Int32Array) return 'i32';
  if (a instanceof Uint8Array) return 'u8';
  return undefined;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** bf16 bits → number. */
export function bf16ToNumber(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0]!;
}
/** number → bf16 bits, round-to-nearest-even (same as native/common/dtype.h). */
export function numberToBf16(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
/** IEEE half bits → number. */
export function f16ToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  if (e === 0) return s * m * 2 ** -24;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
/** number → IEEE half bits, round-to-nearest-even. */
export function numberToF16(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00;
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a < 0x38800000) {
    const v = f32[0]! * (sign ? -1 : 1) * 16777216;
    let m = Math.floor(v);
    const rem = v - m;
    if (rem > 0.5 || (rem === 0.5 && (m & 1))) m++;
    return sign | m;
  }
  return (sign | (((a + 0xc8000fff + ((a >>> 13) & 1)) >>> 0) >>> 13)) & 0xffff;
}

/** Converts raw data of `dtype` to a Float32Array (copy). */
export function toFloat32(data: TypedArray, dtype: DType): Float32Array {
  expectOneOf('dtype', dtype, DTYPES);
  if (!ArrayBuffer.isView(data) || data instanceof DataView) throw new KdTypeError(`Expected a TypedArray for data but received ${describe(data)}`);
  if (data.constructor.name !== arrayTypeFor(dtype))
    throw new KdTypeError(`Expected a ${arrayTypeFor(dtype)} for dtype '${dtype}' but received ${describe(data)}`, 'KD_EDTYPE');
  if (dtype === 'f32') return Float32Array.from(data as Float32Array);
  if (dtype === 'bf16') {
    const out = new Float32Array(data.length);
    const o32 = new Uint32Array(out.buffer);
    for (let i = 0; i < data.length; i++) o32[i] = data[i]! << 16;
    return out;
  }
  if (dtype === 'f16') return Float32Array.from(data as Uint16Array, f16ToNumber);
  return Float32Array.from(data as ArrayLike<number>);
}

/** Converts numbers to the raw storage of `dtype`. */
export function fromNumbers(values: ArrayLike<number>, dtype: DType): TypedArray {
  expectOneOf('dtype', dtype, DTYPES);
  if (values === null || typeof values !== 'object' || typeof values.length !== 'number')
    throw new KdTypeError(`Expected an array of numbers for values but received ${describe(values)}`);
  const out = allocArray(dtype, values.length);
  if (dtype === 'bf16') for (let i = 0; i < values.length; i++) out[i] = numberToBf16(values[i]!);
  else if (dtype === 'f16') for (let i = 0; i < values.length; i++) out[i] = numberToF16(values[i]!);
  else for (let i = 0; i < values.length; i++) out[i] = values[i]!;
  return out;
}
