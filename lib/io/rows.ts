/**
 * A file of logits read row by row (one row = one token's V logits): what the .npy and
 * safetensors readers return, so the CLI can stream `[rows, V]` without loading the file.
 */
import type { FileHandle } from 'node:fs/promises';
import { KdError, KdRangeError, KdTypeError, describe } from '../errors.js';
import { expectInt } from '../validate.js';

export type RowDType = 'f32' | 'f16' | 'bf16';

export interface RowSource {
  readonly path: string;
  /** The array's shape as stored (e.g. [B, T, V]); rows = product of all but the last. */
  readonly shape: readonly number[];
  readonly rows: number;
  /** Row length (V). */
  readonly cols: number;
  /** f16/bf16 rows come back as Uint16Array bits; wrap with tensor(data, [n, cols], { dtype }). */
  readonly dtype: RowDType;
  /**
   * Rows [start, start + count) as one dense array: a fresh one, or a view of `out`
   * (Float32Array for f32, Uint16Array for f16/bf16, at least count·cols long). Reusing
   * buffers matters: first-touch page faults make fresh 32 MB arrays ~4× slower to fill.
   */
  readRows(start: number, count: number, out?: Float32Array | Uint16Array): Promise<Float32Array | Uint16Array>;
  close(): Promise<void>;
}

export const ROW_ITEM_SIZE: Record<RowDType, number> = { f32: 4, f16: 2, bf16: 2 };

/** Reads exactly buf.length bytes at `pos` (looping over short reads); KD_EFORMAT if the file ends first. */
export async function readExact(fh: FileHandle, buf: Uint8Array, pos: number, file: string): Promise<void> {
  let got = 0;
  while (got < buf.length) {
    let n: number;
    try {
      n = (await fh.read(buf, got, Math.min(buf.length - got, 2 ** 30), pos + got)).bytesRead;
    } catch (e) {
      const err = new KdError(`cannot read ${file}: ${(e as Error).message}`, 'KD_EIO');
      (err as { cause?: unknown }).cause = e;
      throw err;
    }
    if (n === 0) throw new KdError(`${file}: truncated: expected ${buf.length} bytes at offset ${pos}, the file ends at ${pos + got}`, 'KD_EFORMAT');
    got += n;
  }
}

/** The shared readRows body: range checks, one positioned read into a fresh buffer. */
export async function readRowRange(
  fh: FileHandle,
  file: string,
  dataOffset: number,
  src: Pick<RowSource, 'rows' | 'cols' | 'dtype'>,
  start: number,
  count: number,
  into?: Float32Array | Uint16Array,
): Promise<Float32Array | Uint16Array> {
  expectInt('start', start, 0);
  expectInt('count', count, 0);
  if (start + count > src.rows) throw new KdRangeError(`Expected start + count <= ${src.rows} (rows in ${file}) but received start ${start} and count ${count}`, 'KD_ERANGE');
  const size = ROW_ITEM_SIZE[src.dtype];
  const n = count * src.cols;
  if (n * size > 2 ** 31) throw new KdRangeError(`${count} rows of ${src.cols} take more than 2 GiB; read fewer rows at a time`, 'KD_ERANGE');
  let out: Float32Array | Uint16Array;
  if (into === undefined) out = src.dtype === 'f32' ? new Float32Array(n) : new Uint16Array(n);
  else {
    const want = src.dtype === 'f32' ? Float32Array : Uint16Array;
    if (!(into instanceof want)) throw new KdTypeError(`Expected a ${want.name} for out (${src.dtype} rows) but received ${describe(into)}`, 'KD_EDTYPE');
    if (into.length < n) throw new KdRangeError(`Expected out to hold at least ${n} elements (${count} rows of ${src.cols}) but received ${describe(into)}`, 'KD_ESHAPE');
    out = into.subarray(0, n);
  }
  await readExact(fh, new Uint8Array(out.buffer, out.byteOffset, out.byteLength), dataOffset + start * src.cols * size, file);
  return out;
}
