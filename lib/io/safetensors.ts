/**
 * Streaming reader for safetensors files holding teacher logits.
 *
 * Layout (https://github.com/huggingface/safetensors): u64 little-endian header size N,
 * N bytes of JSON `{ name: { dtype, shape, data_offsets: [begin, end] }, ...,
 * "__metadata__"?: { string: string } }`, then the data; offsets are relative to byte
 * 8 + N. Accepted dtypes: F32, F16, BF16 (little-endian, C order as the format
 * defines). A tensor is picked by name; without a name, the only tensor, or one named
 * `logits`. Rows are read through a file handle, never loading the file.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { LITTLE_ENDIAN } from '../crc32c.js';
import { KdError, KdTypeError, describe } from '../errors.js';
import { expectOptions } from '../validate.js';
import { readExact, readRowRange, type RowDType, type RowSource } from './rows.js';

export interface SafetensorsEntry {
  name: string;
  dtype: string;
  shape: number[];
  /** Absolute file offsets [begin, end). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  tensors: SafetensorsEntry[];
  metadata: Record<string, string>;
  dataOffset: number;
}

const DTYPES: Record<string, RowDType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
const SIZES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1 };
/** The safetensors spec limits the header to 100 MB. */
const MAX_HEADER = 100_000_000;

/** Reads and checks a safetensors header (offsets inside the file, sizes matching shapes). */
export async function readSafetensorsHeader(fh: FileHandle, file: string): Promise<SafetensorsHeader> {
  const size = (await fh.stat()).size;
  if (size < 8) throw new KdError(`${file}: not a safetensors file (${size} bytes, less than the 8-byte header size)`, 'KD_EFORMAT');
  const pre = new Uint8Array(8);
  await readExact(fh, pre, 0, file);
  const n = new DataView(pre.buffer).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER) || Number(n) + 8 > size)
    throw new KdError(`${file}: not a safetensors file, or truncated: header size ${n} with a file of ${size} bytes`, 'KD_EFORMAT');
  const hbuf = new Uint8Array(Number(n));
  await readExact(fh, hbuf, 8, file);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(hbuf));
  } catch (e) {
    throw new KdError(`${file}: the safetensors header is not valid JSON (${(e as Error).message})`, 'KD_EFORMAT');
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new KdError(`${file}: the safetensors header is not a JSON object`, 'KD_EFORMAT');
  const dataOffset = 8 + Number(n);
  const tensors: SafetensorsEntry[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = (v ?? {}) as Record<string, string>;
      continue;
    }
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const bad = (what: string): never => {
      throw new KdError(`${file}: tensor '${name}': ${what}`, 'KD_EFORMAT');
    };
    if (typeof e?.dtype !== 'string') bad(`expected a dtype string, found ${describe(e?.dtype)}`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) bad(`bad shape ${JSON.stringify(e.shape)}`);
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[1] < off[0]) bad(`bad data_offsets ${JSON.stringify(off)}`);
    const [b, en] = off as [number, number];
    const shape = e.shape as number[];
    const item = SIZES[e.dtype as string];
    if (item !== undefined) {
      const need = shape.reduce((a, x) => a * x, 1) * item;
      if (en - b !== need) bad(`data_offsets [${b}, ${en}] hold ${en - b} bytes, shape [${shape.join(', ')}] of ${String(e.dtype)} needs ${need}`);
    }
    if (dataOffset + en > size) bad(`data ends at byte ${dataOffset + en}, the file has ${size} (truncated)`);
    tensors.push({ name, dtype: e.dtype as string, shape, begin: dataOffset + b, end: dataOffset + en });
  }
  return { tensors, metadata, dataOffset };
}

export interface SafetensorsOptions {
  /** The tensor to read; default: the only tensor, or the one named 'logits'. */
  tensor?: string;
}

/** One tensor of a safetensors file, read row by row. */
export class SafetensorsReader implements RowSource {
  readonly path: string;
  readonly header: SafetensorsHeader;
  readonly tensorName: string;
  readonly shape: readonly number[];
  readonly rows: number;
  readonly cols: number;
  readonly dtype: RowDType;
  #fh: FileHandle;
  #begin: number;

  private constructor(path: string, fh: FileHandle, header: SafetensorsHeader, entry: SafetensorsEntry, dtype: RowDType) {
    this.path = path;
    this.#fh = fh;
    this.header = header;
    this.tensorName = entry.name;
    this.shape = Object.freeze(entry.shape.slice());
    this.cols = entry.shape[entry.shape.length - 1]!;
    this.rows = entry.shape.slice(0, -1).reduce((a, b) => a * b, 1);
    this.dtype = dtype;
    this.#begin = entry.begin;
  }

  static async open(path: string, options?: SafetensorsOptions): Promise<SafetensorsReader> {
    if (!LITTLE_ENDIAN) throw new KdError('reading safetensors files needs a little-endian host', 'KD_EUNSUPPORTED');
    if (typeof path !== 'string' || path === '') throw new KdTypeError(`Expected a file path for path but received ${describe(path)}`);
    const o = expectOptions('SafetensorsReader options', options, ['tensor']);
    if (o.tensor !== undefined && typeof o.tensor !== 'string') throw new KdTypeError(`Expected a string for tensor but received ${describe(o.tensor)}`);
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      const err = new KdError(`cannot open ${path}: ${(e as Error).message}`, 'KD_EIO');
      (err as { cause?: unknown }).cause = e;
      throw err;
    }
    try {
      const h = await readSafetensorsHeader(fh, path);
      const list = h.tensors.map((t) => `${t.name} ${t.dtype} [${t.shape.join(', ')}]`).join('; ') || 'none';
      let entry: SafetensorsEntry | undefined;
      if (o.tensor !== undefined) {
        entry = h.tensors.find((t) => t.name === o.tensor);
        if (!entry) throw new KdError(`${path}: no tensor named '${o.tensor}'; the file has: ${list}`, 'KD_EINVAL');
      } else {
        entry = h.tensors.length === 1 ? h.tensors[0] : h.tensors.find((t) => t.name === 'logits');
        if (!entry) throw new KdError(`${path}: holds ${h.tensors.length} tensors and none is named 'logits'; choose one by name (--tensor): ${list}`, 'KD_EINVAL');
      }
      const dtype = DTYPES[entry.dtype];
      if (!dtype) throw new KdError(`${path}: tensor '${entry.name}' has dtype ${entry.dtype}; accepted: F32, F16, BF16`, 'KD_EFORMAT');
      if (entry.shape.length < 2) throw new KdError(`${path}: tensor '${entry.name}' has shape [${entry.shape.join(', ')}]; expected logits [N, V] or [B, T, V]`, 'KD_EFORMAT');
      return new SafetensorsReader(path, fh, h, entry, dtype);
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  readRows(start: number, count: number, out?: Float32Array | Uint16Array): Promise<Float32Array | Uint16Array> {
    return readRowRange(this.#fh, this.path, this.#begin, this, start, count, out);
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => {});
  }
}
