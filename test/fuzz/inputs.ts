/**
 * Input builders for the differential fuzzer (test/fuzz/): compact, JSON-serialisable
 * case descriptions turn into tensors (in a dtype, with row strides) plus the float64
 * values the references see. Bulk logits come from a seed; the fuzzer's interesting
 * values (±1e4, −inf, subnormals, NaN) are placed by `specials`, so a shrunk case stays
 * a few lines long and can be pasted into a test.
 *
 * Padding (row stride beyond the used columns, and a teacher's extra vocabulary) is
 * filled with NaN: a kernel that reads past V shows up as a NaN where the reference has
 * a number.
 */
import * as kd from '../../lib/index.js';
import { decodeDtype, encodeDtype, logSoftmax, randomLogits, type FloatDType } from '../reference/common.js';
import { maxAbsFinite } from '../tolerances.js';

/** Values the fuzzer plants in inputs. 'sub' is a subnormal of the input dtype. */
export type SpecialValue = '1e4' | '-1e4' | '-inf' | 'sub' | 'nan' | '0';
export const SPECIAL_VALUES: readonly SpecialValue[] = ['0', '1e4', '-1e4', '-inf', 'sub', 'nan'];

/** One planted value; row and col are taken modulo the matrix's rows and used columns. */
export interface Special {
  /** 's': the student (or the op's only input), 't': the teacher (or its sparse slots). */
  side: 's' | 't';
  row: number;
  col: number;
  value: SpecialValue;
}

export function specialNumber(v: SpecialValue, dtype: FloatDType): number {
  switch (v) {
    case '0': return 0;
    case '1e4': return 1e4;
    case '-1e4': return -1e4;
    case '-inf': return -Infinity;
    case 'nan': return NaN;
    case 'sub': return dtype === 'f16' ? 3e-6 : 1e-40; // below 2^-14 (f16) / 2^-126 (f32, bf16)
  }
}

export interface MatrixSpec {
  rows: number;
  /** Columns the op uses (the loss reads these). */
  used: number;
  /** Columns that exist in the tensor's last dimension (>= used; the rest are poison). */
  width: number;
  /** Row stride (>= width). */
  ld: number;
  dtype: FloatDType;
  seed: number;
  scale: number;
  peaked: boolean;
  /** Turn the used columns of every row into log-probabilities (a teacher emitting log-probs). */
  logprobs?: boolean;
  specials: Special[];
}

export interface Matrix {
  /** Encoded storage (Float32Array or Uint16Array bits), rows × ld. */
  data: Float32Array | Uint16Array;
  /** The decoded values (what the kernel sees), rows × ld, float64. */
  ref: Float64Array;
  /** max |finite value| over the used columns. */
  maxAbs: number;
}

export function buildMatrix(m: MatrixSpec, side: 's' | 't'): Matrix {
  const { rows, used, ld } = m;
  const x = randomLogits(rows, ld, { seed: m.seed, scale: m.scale, peaked: m.peaked && used > 1 });
  for (let i = 0; i < rows; i++) {
    if (m.logprobs && used > 0) x.set(logSoftmax(x.subarray(i * ld, i * ld + used), 1), i * ld);
    for (let j = used; j < ld; j++) x[i * ld + j] = NaN; // poison: never read
  }
  if (rows > 0 && used > 0)
    for (const s of m.specials) {
      if (s.side !== side) continue;
      // a log-prob teacher only gets values that are log-probabilities (<= 0)
      if (m.logprobs && s.value === '1e4') continue;
      x[(s.row % rows) * ld + (s.col % used)] = specialNumber(s.value, m.dtype);
    }
  const data = encodeDtype(x, m.dtype);
  const ref = decodeDtype(data, m.dtype);
  let maxAbs = 0;
  for (let i = 0; i < rows; i++) maxAbs = Math.max(maxAbs, maxAbsFinite(ref.subarray(i * ld, i * ld + used)));
  return { data, ref, maxAbs };
}

/** A CPU tensor over the matrix: shape [...lead, width], row stride ld (lead = [N] or [B, T]). */
export function matrixTensor(mx: Matrix, lead: number[], width: number, ld: number, dtype: FloatDType): kd.Tensor {
  const shape = [...lead, width];
  const strides = lead.length === 1 ? [ld, 1] : [lead[1]! * ld, ld, 1];
  return kd.tensor(mx.data, shape, { dtype, strides });
}

/** Rows of a [N] or [B, T] lead. */
export function rowsOf(lead: number[]): number {
  return lead.reduce((a, b) => a * b, 1);
}

/** A dense float32 copy of columns [0, used) of a rows × ld matrix, row stride `used`. */
export function denseRows(ref: Float64Array, rows: number, used: number, ld: number): Float64Array {
  const out = new Float64Array(rows * used);
  for (let i = 0; i < rows; i++) for (let j = 0; j < used; j++) out[i * used + j] = ref[i * ld + j]!;
  return out;
}

/** Raw storage of a dtype filled with NaN (to see that every element gets written). */
export function nanFilled(dtype: 'f32' | 'f16' | 'bf16', length: number): Float32Array | Uint16Array {
  if (dtype === 'f32') return new Float32Array(length).fill(NaN);
  return new Uint16Array(length).fill(dtype === 'f16' ? 0x7e00 : 0x7fc0);
}

/** Bitwise equality of two typed arrays (NaN payloads included). */
export function sameBits(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}
