/**
 * Streaming reader for NumPy `.npy` files (format versions 1.0, 2.0 and 3.0) holding
 * teacher logits, read row by row through a file handle (the file is never loaded).
 *
 * Accepted:
 * - `descr` `'<f4'` (f32), `'<f2'` (f16), and bf16 stored as 2-byte raw words:
 *   `'<u2'` (what `tensor.view(torch.uint16).numpy()` or `.view(np.uint16)` saves) and
 *   `'|V2'` / `'<V2'` (what `np.save` writes for an `ml_dtypes.bfloat16` array). A `'<u2'`
 *   file can be read as f16 instead with `{ u2As: 'f16' }`. `'|f2'`-style byte order
 *   marks other than `<` (or `|` for V2) are rejected: big-endian data is not converted.
 * - `fortran_order: False` only (C order).
 * - shape `(N, V)` or `(B, T, V)` and more: rows = product of all but the last axis.
 * Version 1.0 has a 2-byte header length, 2.0 and 3.0 a 4-byte one; 3.0's header is
 * UTF-8 (the others Latin-1). The header is a Python dict literal, parsed here without eval.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { LITTLE_ENDIAN } from '../crc32c.js';
import { KdError, KdTypeError, describe } from '../errors.js';
import { expectOneOf, expectOptions } from '../validate.js';
import { ROW_ITEM_SIZE, readExact, readRowRange, type RowDType, type RowSource } from './rows.js';

export const NPY_MAGIC = Uint8Array.of(0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59); // \x93NUMPY

type PyValue = string | number | boolean | null | PyValue[] | { [k: string]: PyValue };

/** Parses the Python literal subset np.save writes: dicts, strings, ints, True/False/None, tuples, lists. */
export function parsePyLiteral(text: string): PyValue {
  let i = 0;
  const ws = (): void => {
    while (i < text.length && /\s/.test(text[i]!)) i++;
  };
  const fail = (what: string): never => {
    throw new Error(`${what} at character ${i} of ${JSON.stringify(text.length > 120 ? text.slice(0, 120) + '…' : text)}`);
  };
  const value = (): PyValue => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const out: Record<string, PyValue> = {};
      for (;;) {
        ws();
        if (text[i] === '}') {
          i++;
          return out;
        }
        const key = value();
        if (typeof key !== 'string') fail('expected a string key');
        ws();
        if (text[i] !== ':') fail("expected ':'");
        i++;
        out[key as string] = value();
        ws();
        if (text[i] === ',') i++;
        else if (text[i] !== '}') fail("expected ',' or '}'");
      }
    }
    if (c === '(' || c === '[') {
      const close = c === '(' ? ')' : ']';
      i++;
      const out: PyValue[] = [];
      for (;;) {
        ws();
        if (text[i] === close) {
          i++;
          return out;
        }
        out.push(value());
        ws();
        if (text[i] === ',') i++;
        else if (text[i] !== close) fail(`expected ',' or '${close}'`);
      }
    }
    if (c === "'" || c === '"') {
      const end = text.indexOf(c, i + 1);
      if (end < 0) fail('unterminated string');
      const s = text.slice(i + 1, end);
      i = end + 1;
      return s;
    }
    const m = /^(-?\d+)L?|^(True|False|None)/.exec(text.slice(i, i + 32));
    if (!m) return fail('unexpected token');
    i += m[0].length;
    if (m[2]) return m[2] === 'True' ? true : m[2] === 'False' ? false : null;
    return Number(m[1]);
  };
  const v = value();
  ws();
  if (i !== text.length) fail('trailing characters');
  return v;
}

export interface NpyHeader {
  version: string;
  descr: string;
  fortranOrder: boolean;
  shape: number[];
  dataOffset: number;
}

export interface NpyOptions {
  /** How to read `'<u2'` data: 'bf16' (default) or 'f16'. */
  u2As?: 'bf16' | 'f16';
}

function dtypeOfDescr(descr: string, u2As: 'bf16' | 'f16', file: string): RowDType {
  switch (descr) {
    case '<f4':
      return 'f32';
    case '<f2':
      return 'f16';
    case '<u2':
      return u2As;
    case '|V2':
    case '<V2':
      return 'bf16';
  }
  const big = descr.startsWith('>');
  throw new KdError(
    `${file}: unsupported dtype descr '${descr}'${big ? ' (big-endian data is not converted)' : ''}; accepted: '<f4' (f32), '<f2' (f16), '<u2', '|V2' or '<V2' (bf16 bits)`,
    'KD_EFORMAT',
  );
}

/** Reads and parses the header of a .npy file. */
export async function readNpyHeader(fh: FileHandle, file: string): Promise<NpyHeader> {
  const pre = new Uint8Array(12);
  const { bytesRead } = await fh.read(pre, 0, 12, 0);
  if (bytesRead < 10 || !NPY_MAGIC.every((b, i) => pre[i] === b))
    throw new KdError(`${file}: not a .npy file (expected the magic \\x93NUMPY)`, 'KD_EFORMAT');
  const major = pre[6]!;
  const minor = pre[7]!;
  if (major < 1 || major > 3) throw new KdError(`${file}: unsupported .npy format version ${major}.${minor} (expected 1.0, 2.0 or 3.0)`, 'KD_EFORMAT');
  const dv = new DataView(pre.buffer);
  const lenBytes = major === 1 ? 2 : 4;
  if (bytesRead < 8 + lenBytes) throw new KdError(`${file}: truncated .npy header`, 'KD_EFORMAT');
  const hlen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  if (hlen > 2 ** 24) throw new KdError(`${file}: implausible .npy header length ${hlen}`, 'KD_EFORMAT');
  const hbuf = new Uint8Array(hlen);
  await readExact(fh, hbuf, 8 + lenBytes, file);
  const text = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(hbuf).trim();
  let dict: PyValue;
  try {
    dict = parsePyLiteral(text);
  } catch (e) {
    throw new KdError(`${file}: cannot parse the .npy header: ${(e as Error).message}`, 'KD_EFORMAT');
  }
  if (dict === null || typeof dict !== 'object' || Array.isArray(dict)) throw new KdError(`${file}: the .npy header is not a dict: ${text}`, 'KD_EFORMAT');
  const { descr, fortran_order: fo, shape } = dict;
  if (typeof descr !== 'string') throw new KdError(`${file}: unsupported dtype descr ${JSON.stringify(descr)} (structured arrays are not logits)`, 'KD_EFORMAT');
  if (typeof fo !== 'boolean') throw new KdError(`${file}: the .npy header lacks fortran_order: ${text}`, 'KD_EFORMAT');
  if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0))
    throw new KdError(`${file}: bad shape in the .npy header: ${text}`, 'KD_EFORMAT');
  return { version: `${major}.${minor}`, descr, fortranOrder: fo, shape: shape as number[], dataOffset: 8 + lenBytes + hlen };
}

/** A .npy file of logits, read row by row. */
export class NpyReader implements RowSource {
  readonly path: string;
  readonly header: NpyHeader;
  readonly shape: readonly number[];
  readonly rows: number;
  readonly cols: number;
  readonly dtype: RowDType;
  #fh: FileHandle;

  private constructor(path: string, fh: FileHandle, header: NpyHeader, dtype: RowDType) {
    this.path = path;
    this.#fh = fh;
    this.header = header;
    this.shape = Object.freeze(header.shape.slice());
    this.cols = header.shape[header.shape.length - 1]!;
    this.rows = header.shape.slice(0, -1).reduce((a, b) => a * b, 1);
    this.dtype = dtype;
  }

  static async open(path: string, options?: NpyOptions): Promise<NpyReader> {
    if (!LITTLE_ENDIAN) throw new KdError('reading .npy files needs a little-endian host', 'KD_EUNSUPPORTED');
    if (typeof path !== 'string' || path === '') throw new KdTypeError(`Expected a file path for path but received ${describe(path)}`);
    const o = expectOptions('NpyReader options', options, ['u2As']);
    const u2As = o.u2As === undefined ? 'bf16' : expectOneOf('u2As', o.u2As, ['bf16', 'f16'] as const);
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      const err = new KdError(`cannot open ${path}: ${(e as Error).message}`, 'KD_EIO');
      (err as { cause?: unknown }).cause = e;
      throw err;
    }
    try {
      const h = await readNpyHeader(fh, path);
      const dtype = dtypeOfDescr(h.descr, u2As, path);
      if (h.fortranOrder) throw new KdError(`${path}: Fortran-order arrays are not supported; save a C-order array (np.ascontiguousarray)`, 'KD_EFORMAT');
      if (h.shape.length < 2) throw new KdError(`${path}: expected logits of shape (N, V) or (B, T, V), found (${h.shape.join(', ')}${h.shape.length === 1 ? ',' : ''})`, 'KD_EFORMAT');
      const numel = h.shape.reduce((a, b) => a * b, 1);
      const need = h.dataOffset + numel * ROW_ITEM_SIZE[dtype];
      const size = (await fh.stat()).size;
      if (size < need) throw new KdError(`${path}: truncated: shape (${h.shape.join(', ')}) of ${h.descr} needs ${need} bytes, the file has ${size}`, 'KD_EFORMAT');
      return new NpyReader(path, fh, h, dtype);
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  readRows(start: number, count: number, out?: Float32Array | Uint16Array): Promise<Float32Array | Uint16Array> {
    return readRowRange(this.#fh, this.path, this.header.dataOffset, this, start, count, out);
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => {});
  }
}
