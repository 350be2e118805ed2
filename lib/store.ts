/**
 * Offline store for sparse teacher logits: a teacher runs once over a corpus, its
 * top-k (or sampled) log-probs per token are written to shard files, and students
 * train later from them without the teacher.
 *
 * The byte-level format is specified in docs/STORE_FORMAT.md; the constants and
 * layout functions here are its single source of truth. In short: a directory with
 * `manifest.json` and `shard-00000.kdsl`, `shard-00001.kdsl`, ...; each shard is a
 * 128-byte header (magic, version, V, k, dtypes, id bit width, token count, block
 * size, CRC32C) followed by fixed-size blocks of `tokensPerBlock` tokens (only the
 * last one shorter), each block holding bit-packed (or i32) ids, values in
 * f32/f16/bf16, optional f32 weights (sampled kind), f32 tail log-mass, and a trailer
 * with its token count and CRC32C. Fixed block sizes make random access by token
 * offset O(1).
 *
 * Durability: a shard is written to a dot-named temp file whose header stays zero
 * until the shard is finished, then fsync'ed and renamed into place, then listed in
 * `manifest.json` (itself replaced by write-temp + fsync + rename). A crash at any
 * point leaves either a complete, verified shard or nothing that reads as a shard.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { open, mkdir, readFile, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { LITTLE_ENDIAN, crc32c, hex32 } from './crc32c.js';
import { bf16ToNumber, f16ToNumber, numberToF16, type TypedArray } from './dtype.js';
import { KdError, KdRangeError, KdTypeError, describe } from './errors.js';
import { Tensor, isDetached, tensor } from './tensor.js';
import { expectBool, expectInt, expectOneOf, expectOptions } from './validate.js';

// ---------------------------------------------------------------------------------
// Format constants and layout (docs/STORE_FORMAT.md)
// ---------------------------------------------------------------------------------

/** `\x89 K D S L \r \n \x1a`: non-ASCII first byte, then line-ending bytes that text-mode transfers would mangle. */
export const SHARD_MAGIC = Uint8Array.of(0x89, 0x4b, 0x44, 0x53, 0x4c, 0x0d, 0x0a, 0x1a);
export const FORMAT_VERSION = 1;
export const HEADER_BYTES = 128;
export const BLOCK_TRAILER_BYTES = 8;
export const MANIFEST_FILE = 'manifest.json';
export const MANIFEST_FORMAT = 'kd-sparse-logits';
const LOCK_FILE = '.kdsl.lock';
/** Largest encoded block we accept (keeps one block one read, and bit positions < 2^31). */
export const MAX_BLOCK_BYTES = 256 * 2 ** 20;
export const MAX_VOCAB_SIZE = 2 ** 31 - 1;

export type ValueDType = 'f32' | 'f16' | 'bf16';
export type IdEncoding = 'packed' | 'i32';
export type StoreKind = 'topk' | 'sampled';

const VALUE_DTYPES: readonly ValueDType[] = ['f32', 'f16', 'bf16'];
const ID_ENCODINGS: readonly IdEncoding[] = ['packed', 'i32'];
const KINDS: readonly StoreKind[] = ['topk', 'sampled'];
const VALUE_CODE: Record<ValueDType, number> = { f32: 0, f16: 1, bf16: 2 };
const VALUE_SIZE: Record<ValueDType, number> = { f32: 4, f16: 2, bf16: 2 };
const ID_CODE: Record<IdEncoding, number> = { packed: 0, i32: 1 };
const KIND_CODE: Record<StoreKind, number> = { topk: 0, sampled: 1 };

export const DEFAULT_TOKENS_PER_BLOCK = 256;
export const DEFAULT_TOKENS_PER_SHARD = 2 ** 20;

/** Bits per packed id: ceil(log2 V), at least 1 (V = 1 and V = 2 both use 1 bit). */
export function idBitsFor(vocabSize: number): number {
  return vocabSize <= 2 ? 1 : 32 - Math.clz32(vocabSize - 1);
}

const pad8 = (x: number): number => Math.ceil(x / 8) * 8;

/** What fixes the byte layout of a store's blocks. */
export interface StoreLayout {
  vocabSize: number;
  k: number;
  kind: StoreKind;
  valueDtype: ValueDType;
  idEncoding: IdEncoding;
  /** ceil(log2 V) (min 1) for 'packed', 32 for 'i32'. */
  idBits: number;
  tokensPerBlock: number;
}

export interface BlockSections {
  ids: number;
  values: number;
  weights: number;
  tail: number;
  /** Whole block, trailer included. */
  total: number;
}

/** Byte sizes of the sections of a block holding `n` tokens (each padded to 8 bytes). */
export function blockSections(layout: StoreLayout, n: number): BlockSections {
  const e = n * layout.k;
  const ids = pad8(layout.idEncoding === 'i32' ? e * 4 : Math.ceil((e * layout.idBits) / 8));
  const values = pad8(e * VALUE_SIZE[layout.valueDtype]);
  const weights = layout.kind === 'sampled' ? pad8(e * 4) : 0;
  const tail = pad8(n * 4);
  return { ids, values, weights, tail, total: ids + values + weights + tail + BLOCK_TRAILER_BYTES };
}

/** Size of a shard file holding `tokens` tokens. */
export function shardBytes(layout: StoreLayout, tokens: number): number {
  const B = layout.tokensPerBlock;
  const full = Math.floor(tokens / B);
  const rest = tokens - full * B;
  return HEADER_BYTES + full * blockSections(layout, B).total + (rest ? blockSections(layout, rest).total : 0);
}

/**
 * Bytes per token the format needs for a shard of `tokens` tokens (header included;
 * `tokens` = Infinity gives the limit: full blocks only, no header).
 */
export function bytesPerToken(layout: StoreLayout, tokens = Infinity): number {
  if (tokens === Infinity) return blockSections(layout, layout.tokensPerBlock).total / layout.tokensPerBlock;
  return shardBytes(layout, tokens) / tokens;
}

// ---------------------------------------------------------------------------------
// Shard header
// ---------------------------------------------------------------------------------

export interface ShardHeader extends StoreLayout {
  formatVersion: number;
  headerBytes: number;
  flags: number;
  tokenCount: number;
  firstToken: number;
  blockCount: number;
  shardIndex: number;
  /** 32 hex digits, identical in every shard of a store and in its manifest. */
  storeId: string;
  fileBytes: number;
  dataCrc32c: number;
  headerCrc32c: number;
}

function encodeHeader(h: Omit<ShardHeader, 'headerCrc32c' | 'formatVersion' | 'headerBytes' | 'flags'>): Uint8Array {
  const buf = new Uint8Array(HEADER_BYTES);
  const dv = new DataView(buf.buffer);
  buf.set(SHARD_MAGIC, 0);
  dv.setUint16(8, FORMAT_VERSION, true);
  dv.setUint16(10, HEADER_BYTES, true);
  dv.setUint32(12, 0, true);
  dv.setUint32(16, h.vocabSize, true);
  dv.setUint32(20, h.k, true);
  buf[24] = KIND_CODE[h.kind];
  buf[25] = VALUE_CODE[h.valueDtype];
  buf[26] = ID_CODE[h.idEncoding];
  buf[27] = h.idBits;
  dv.setUint32(28, h.tokensPerBlock, true);
  dv.setBigUint64(32, BigInt(h.tokenCount), true);
  dv.setBigUint64(40, BigInt(h.firstToken), true);
  dv.setUint32(48, h.blockCount, true);
  dv.setUint32(52, h.shardIndex, true);
  buf.set(hexToBytes(h.storeId), 56);
  dv.setBigUint64(72, BigInt(h.fileBytes), true);
  dv.setUint32(80, h.dataCrc32c, true);
  // 84..123 reserved, zero.
  dv.setUint32(124, crc32c(buf, 0, 0, 124), true);
  return buf;
}

const hexBytes = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(' ');
function hexToBytes(h: string): Uint8Array {
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function fmtErr(file: string, what: string): KdError {
  return new KdError(`${file}: ${what}`, 'KD_EFORMAT');
}

/** Parses and checks a header on its own (magic, version, checksum, field consistency). */
export function decodeHeader(buf: Uint8Array, file: string): ShardHeader {
  if (buf.length < HEADER_BYTES)
    throw fmtErr(file, `truncated header: expected ${HEADER_BYTES} bytes, found ${buf.length}`);
  const magic = buf.subarray(0, 8);
  if (!magic.every((b, i) => b === SHARD_MAGIC[i]))
    throw fmtErr(
      file,
      `bad magic: expected ${hexBytes(SHARD_MAGIC)}, found ${hexBytes(magic)}` +
        (magic.every((b) => b === 0) ? ' (an unfinished shard: its header is written last)' : ' (not a kd-kernels sparse-logits shard)'),
    );
  const dv = new DataView(buf.buffer, buf.byteOffset, HEADER_BYTES);
  const formatVersion = dv.getUint16(8, true);
  if (formatVersion !== FORMAT_VERSION)
    throw fmtErr(file, `unsupported format version: expected ${FORMAT_VERSION}, found ${formatVersion}` + (formatVersion > FORMAT_VERSION ? ' (written by a newer kd-kernels)' : ''));
  const stored = dv.getUint32(124, true);
  const computed = crc32c(buf, 0, 0, 124);
  if (stored !== computed)
    throw fmtErr(file, `header checksum mismatch: stored ${hex32(stored)}, computed ${hex32(computed)} (the header is corrupt)`);
  const headerBytes = dv.getUint16(10, true);
  const flags = dv.getUint32(12, true);
  if (headerBytes !== HEADER_BYTES) throw fmtErr(file, `header size: expected ${HEADER_BYTES}, found ${headerBytes}`);
  if (flags !== 0) throw fmtErr(file, `unsupported header flags: expected 0, found ${hex32(flags)}`);
  const kind = KINDS[buf[24]!];
  const valueDtype = VALUE_DTYPES[buf[25]!];
  const idEncoding = ID_ENCODINGS[buf[26]!];
  if (!kind) throw fmtErr(file, `unknown kind code ${buf[24]} (expected 0 topk or 1 sampled)`);
  if (!valueDtype) throw fmtErr(file, `unknown value dtype code ${buf[25]} (expected 0 f32, 1 f16 or 2 bf16)`);
  if (!idEncoding) throw fmtErr(file, `unknown id encoding code ${buf[26]} (expected 0 packed or 1 i32)`);
  const u64 = (off: number, name: string): number => {
    const v = dv.getBigUint64(off, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw fmtErr(file, `${name} ${v} exceeds 2^53`);
    return Number(v);
  };
  const h: ShardHeader = {
    formatVersion,
    headerBytes,
    flags,
    vocabSize: dv.getUint32(16, true),
    k: dv.getUint32(20, true),
    kind,
    valueDtype,
    idEncoding,
    idBits: buf[27]!,
    tokensPerBlock: dv.getUint32(28, true),
    tokenCount: u64(32, 'token count'),
    firstToken: u64(40, 'first token'),
    blockCount: dv.getUint32(48, true),
    shardIndex: dv.getUint32(52, true),
    storeId: Array.from(buf.subarray(56, 72), (x) => x.toString(16).padStart(2, '0')).join(''),
    fileBytes: u64(72, 'file size'),
    dataCrc32c: dv.getUint32(80, true),
    headerCrc32c: stored,
  };
  if (h.vocabSize < 1 || h.vocabSize > MAX_VOCAB_SIZE) throw fmtErr(file, `vocabSize ${h.vocabSize} is out of range 1..${MAX_VOCAB_SIZE}`);
  if (h.k < 1) throw fmtErr(file, 'k is 0');
  if (h.tokensPerBlock < 1) throw fmtErr(file, 'tokensPerBlock is 0');
  const bits = idEncoding === 'i32' ? 32 : idBitsFor(h.vocabSize);
  if (h.idBits !== bits) throw fmtErr(file, `id bit width: expected ${bits} for ${idEncoding} ids with vocabSize ${h.vocabSize}, found ${h.idBits}`);
  if (blockSections(h, h.tokensPerBlock).total > MAX_BLOCK_BYTES) throw fmtErr(file, `blocks of ${h.tokensPerBlock} tokens exceed ${MAX_BLOCK_BYTES} bytes`);
  const blocks = Math.ceil(h.tokenCount / h.tokensPerBlock);
  if (h.blockCount !== blocks) throw fmtErr(file, `block count: expected ${blocks} for ${h.tokenCount} tokens in blocks of ${h.tokensPerBlock}, found ${h.blockCount}`);
  const size = shardBytes(h, h.tokenCount);
  if (h.fileBytes !== size) throw fmtErr(file, `file size field: expected ${size} for ${h.tokenCount} tokens, found ${h.fileBytes}`);
  return h;
}

function layoutOf(h: StoreLayout): StoreLayout {
  return { vocabSize: h.vocabSize, k: h.k, kind: h.kind, valueDtype: h.valueDtype, idEncoding: h.idEncoding, idBits: h.idBits, tokensPerBlock: h.tokensPerBlock };
}

// ---------------------------------------------------------------------------------
// Block encoding / decoding
// ---------------------------------------------------------------------------------

/** Little-endian bit packing: id j occupies stream bits [j*b, (j+1)*b), stream bit i = bit (i % 32) of word i / 32. */
function packIds(ids: Int32Array, count: number, bits: number, out: Uint32Array): void {
  let pos = 0;
  for (let j = 0; j < count; j++, pos += bits) {
    const id = ids[j]!;
    const w = pos >>> 5;
    const off = pos & 31;
    out[w] = out[w]! | (id << off);
    if (off + bits > 32) out[w + 1] = out[w + 1]! | (id >>> (32 - off));
  }
}

function unpackIds(words: Uint32Array, first: number, count: number, bits: number, out: Int32Array, outOff: number): void {
  const mask = 2 ** bits - 1; // ToInt32 in `&` gives the right 31-bit (or less) mask
  let pos = first * bits;
  for (let j = 0; j < count; j++, pos += bits) {
    const w = pos >>> 5;
    const off = pos & 31;
    let v = words[w]! >>> off;
    if (off + bits > 32) v |= words[w + 1]! << (32 - off);
    out[outOff + j] = v & mask;
  }
}

interface Stage {
  n: number;
  ids: Int32Array;
  values: Float32Array | Uint16Array;
  weights: Float32Array | undefined;
  tail: Float32Array;
}

function encodeBlock(layout: StoreLayout, s: Stage): Uint8Array {
  const n = s.n;
  const e = n * layout.k;
  const sec = blockSections(layout, n);
  const buf = new Uint8Array(sec.total);
  let off = 0;
  if (layout.idEncoding === 'i32') new Int32Array(buf.buffer, off, e).set(s.ids.subarray(0, e));
  else packIds(s.ids, e, layout.idBits, new Uint32Array(buf.buffer, off, sec.ids / 4));
  off += sec.ids;
  const vs = VALUE_SIZE[layout.valueDtype];
  buf.set(new Uint8Array(s.values.buffer, s.values.byteOffset, e * vs), off);
  off += sec.values;
  if (s.weights) buf.set(new Uint8Array(s.weights.buffer, s.weights.byteOffset, e * 4), off);
  off += sec.weights;
  buf.set(new Uint8Array(s.tail.buffer, s.tail.byteOffset, n * 4), off);
  off += sec.tail;
  const dv = new DataView(buf.buffer);
  dv.setUint32(off, n, true);
  dv.setUint32(off + 4, crc32c(buf, 0, 0, off + 4), true);
  return buf;
}

/** Where a block's problem is, for messages. */
function blockWhere(file: string, b: number, B: number, n: number, firstToken: number): string {
  const t0 = b * B;
  return `${file} block ${b} (shard tokens ${t0}..${t0 + n - 1}, store tokens ${firstToken + t0}..${firstToken + t0 + n - 1})`;
}

/** Checks a block's trailer (token count, CRC32C). `buf` holds the block at `at`. */
function verifyBlock(layout: StoreLayout, buf: Uint8Array, at: number, n: number, where: () => string): void {
  const sec = blockSections(layout, n);
  const dv = new DataView(buf.buffer, buf.byteOffset + at, sec.total);
  const end = sec.total - BLOCK_TRAILER_BYTES;
  const stored = dv.getUint32(end + 4, true);
  const computed = crc32c(buf, 0, at, at + end + 4);
  if (stored !== computed) throw new KdError(`${where()}: checksum mismatch: stored ${hex32(stored)}, computed ${hex32(computed)} (the block is corrupt)`, 'KD_EFORMAT');
  const count = dv.getUint32(end, true);
  if (count !== n) throw new KdError(`${where()}: token count: expected ${n}, found ${count}`, 'KD_EFORMAT');
}

// ---------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------

export interface ShardInfo {
  file: string;
  index: number;
  firstToken: number;
  tokens: number;
  blocks: number;
  bytes: number;
  /** CRC32C of the file's bytes after the header (hex `0x........`). */
  dataCrc32c: string;
  headerCrc32c: string;
}

export interface Manifest extends StoreLayout {
  format: typeof MANIFEST_FORMAT;
  formatVersion: number;
  storeId: string;
  tokensPerShard: number;
  /** True once a writer closed the store; false while one writes or after a crash. */
  complete: boolean;
  tokens: number;
  bytes: number;
  metadata: Record<string, string>;
  shards: ShardInfo[];
  createdAt: string;
  updatedAt: string;
}

export function shardFileName(index: number): string {
  return `shard-${String(index).padStart(5, '0')}.kdsl`;
}
const SHARD_RE = /^shard-(\d{5,})\.kdsl$/;
const TEMP_RE = /^\.(shard-\d{5,}\.kdsl|manifest\.json)\.tmp$/;

function ioError(what: string, path: string, e: unknown): KdError {
  const err = new KdError(`${what} ${path}: ${e instanceof Error ? e.message : String(e)}`, 'KD_EIO');
  (err as { cause?: unknown }).cause = e;
  return err;
}

async function fsyncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // Some file systems cannot fsync a directory (EINVAL); the rename is then as durable as they allow.
  } finally {
    await fh?.close().catch(() => {});
  }
}

/** Writes `data` to `path` via `.name.tmp` + fsync + rename + fsync(dir). */
async function writeAtomic(dir: string, name: string, data: Uint8Array | string): Promise<void> {
  const tmp = join(dir, `.${name}.tmp`);
  const path = join(dir, name);
  try {
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    throw ioError('cannot write', path, e);
  }
  await fsyncDir(dir);
}

function parseManifest(text: string, path: string): Manifest {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new KdError(`${path}: not valid JSON (${(e as Error).message})`, 'KD_EFORMAT');
  }
  const bad = (what: string): never => {
    throw new KdError(`${path}: ${what}`, 'KD_EFORMAT');
  };
  if (m === null || typeof m !== 'object') bad('expected a JSON object');
  if (m.format !== MANIFEST_FORMAT) bad(`format: expected '${MANIFEST_FORMAT}', found ${describe(m.format)}`);
  if (m.formatVersion !== FORMAT_VERSION)
    bad(`unsupported format version: expected ${FORMAT_VERSION}, found ${describe(m.formatVersion)}` + (typeof m.formatVersion === 'number' && m.formatVersion > FORMAT_VERSION ? ' (written by a newer kd-kernels)' : ''));
  const int = (name: string, min = 0): void => {
    const v = m[name];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) bad(`${name}: expected an integer >= ${min}, found ${describe(v)}`);
  };
  for (const f of ['vocabSize', 'k', 'idBits', 'tokensPerBlock', 'tokensPerShard']) int(f, 1);
  int('tokens');
  int('bytes');
  if (!(KINDS as readonly unknown[]).includes(m.kind)) bad(`kind: expected 'topk' or 'sampled', found ${describe(m.kind)}`);
  if (!(VALUE_DTYPES as readonly unknown[]).includes(m.valueDtype)) bad(`valueDtype: expected 'f32', 'f16' or 'bf16', found ${describe(m.valueDtype)}`);
  if (!(ID_ENCODINGS as readonly unknown[]).includes(m.idEncoding)) bad(`idEncoding: expected 'packed' or 'i32', found ${describe(m.idEncoding)}`);
  if (typeof m.storeId !== 'string' || !/^[0-9a-f]{32}$/.test(m.storeId)) bad(`storeId: expected 32 hex digits, found ${describe(m.storeId)}`);
  if (typeof m.complete !== 'boolean') bad(`complete: expected a boolean, found ${describe(m.complete)}`);
  if (m.metadata === null || typeof m.metadata !== 'object' || Array.isArray(m.metadata) || !Object.values(m.metadata).every((v) => typeof v === 'string'))
    bad('metadata: expected an object of strings');
  if (!Array.isArray(m.shards)) bad('shards: expected an array');
  let next = 0;
  let bytes = 0;
  (m.shards as unknown[]).forEach((s, i) => {
    const e = s as Record<string, unknown>;
    const ok =
      e !== null &&
      typeof e === 'object' &&
      e.file === shardFileName(i) &&
      e.index === i &&
      e.firstToken === next &&
      [e.tokens, e.blocks, e.bytes].every((v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) &&
      typeof e.dataCrc32c === 'string' &&
      typeof e.headerCrc32c === 'string';
    if (!ok) bad(`shards[${i}]: expected { file: '${shardFileName(i)}', index: ${i}, firstToken: ${next}, tokens, blocks, bytes, dataCrc32c, headerCrc32c }, found ${JSON.stringify(s)}`);
    next += e.tokens as number;
    bytes += e.bytes as number;
  });
  if (m.tokens !== next) bad(`tokens: the shards hold ${next}, the manifest says ${String(m.tokens)}`);
  if (m.bytes !== bytes) bad(`bytes: the shards hold ${bytes}, the manifest says ${String(m.bytes)}`);
  const man = m as unknown as Manifest;
  const bits = man.idEncoding === 'i32' ? 32 : idBitsFor(man.vocabSize);
  if (man.idBits !== bits) bad(`idBits: expected ${bits}, found ${man.idBits}`);
  return man;
}

async function readManifest(dir: string): Promise<Manifest | undefined> {
  const path = join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError('cannot read', path, e);
  }
  return parseManifest(text, path);
}

/** Compares a shard header against what the manifest (or the store) expects. */
function checkHeaderAgainst(h: ShardHeader, file: string, layout: StoreLayout, storeId: string, entry: { index: number; firstToken: number; tokens?: number; bytes?: number }): void {
  const mismatch = (field: string, expected: unknown, found: unknown): never => {
    throw fmtErr(file, `${field}: manifest.json expects ${String(expected)}, the shard header says ${String(found)}`);
  };
  const fields: (keyof StoreLayout)[] = ['vocabSize', 'k', 'kind', 'valueDtype', 'idEncoding', 'idBits', 'tokensPerBlock'];
  for (const f of fields) if (h[f] !== layout[f]) mismatch(f, layout[f], h[f]);
  if (h.storeId !== storeId) mismatch('storeId (a shard from another store)', storeId, h.storeId);
  if (h.shardIndex !== entry.index) mismatch('shard index', entry.index, h.shardIndex);
  if (h.firstToken !== entry.firstToken) mismatch('first token', entry.firstToken, h.firstToken);
  if (entry.tokens !== undefined && h.tokenCount !== entry.tokens) mismatch('token count', entry.tokens, h.tokenCount);
  if (entry.bytes !== undefined && h.fileBytes !== entry.bytes) mismatch('file size', entry.bytes, h.fileBytes);
}

/** Opens a shard file and checks its header and size. */
async function openShard(path: string, file: string): Promise<{ fh: FileHandle; header: ShardHeader }> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw ioError('cannot open', path, e);
  }
  try {
    const size = (await fh.stat()).size;
    const buf = new Uint8Array(HEADER_BYTES);
    const { bytesRead } = await fh.read(buf, 0, HEADER_BYTES, 0);
    const header = decodeHeader(buf.subarray(0, bytesRead), file);
    if (size !== header.fileBytes) {
      const full = blockSections(header, header.tokensPerBlock).total;
      const whole = size >= HEADER_BYTES ? Math.floor((size - HEADER_BYTES) / full) : 0;
      throw fmtErr(
        file,
        size < header.fileBytes
          ? `truncated: the header says ${header.fileBytes} bytes (${header.tokenCount} tokens in ${header.blockCount} blocks), the file has ${size} (${Math.min(whole, header.blockCount)} whole blocks)`
          : `trailing bytes: the header says ${header.fileBytes} bytes (${header.tokenCount} tokens in ${header.blockCount} blocks), the file has ${size}`,
      );
    }
    return { fh, header };
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
}

/** Reads every block of an open shard, checking block checksums and the data checksum. */
async function verifyShardData(fh: FileHandle, h: ShardHeader, file: string, chunkBytes = 8 * 2 ** 20): Promise<void> {
  const B = h.tokensPerBlock;
  const full = blockSections(h, B).total;
  const perChunk = Math.max(1, Math.floor(chunkBytes / full));
  let crc = 0;
  for (let b = 0; b < h.blockCount; b += perChunk) {
    const nb = Math.min(perChunk, h.blockCount - b);
    const lastN = Math.min(B, h.tokenCount - (b + nb - 1) * B);
    const len = (nb - 1) * full + blockSections(h, lastN).total;
    const buf = new Uint8Array(len);
    const pos = HEADER_BYTES + b * full;
    const { bytesRead } = await fh.read(buf, 0, len, pos);
    if (bytesRead !== len) throw fmtErr(file, `truncated at block ${b + Math.floor(bytesRead / full)}: expected ${len} bytes at offset ${pos}, found ${bytesRead}`);
    for (let i = 0; i < nb; i++) {
      const n = Math.min(B, h.tokenCount - (b + i) * B);
      verifyBlock(h, buf, i * full, n, () => blockWhere(file, b + i, B, n, h.firstToken));
    }
    crc = crc32c(buf, crc);
  }
  if (crc !== h.dataCrc32c) throw fmtErr(file, `data checksum mismatch: the header says ${hex32(h.dataCrc32c)}, the blocks give ${hex32(crc)}`);
}

/**
 * Reads a shard file's header and, with `verify`, every block's checksum and the
 * data checksum. Throws KdError 'KD_EFORMAT' for anything that is not a complete,
 * intact shard. Useful for tools and tests; readers and writers use it internally.
 */
export async function inspectShard(path: string, opts: { verify?: boolean } = {}): Promise<ShardHeader> {
  if (typeof path !== 'string' || path === '') throw new KdTypeError(`Expected a file path for path but received ${describe(path)}`);
  const file = path.split('/').pop() ?? path;
  const { fh, header } = await openShard(path, file);
  try {
    if (opts.verify) await verifyShardData(fh, header, file);
    return header;
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------
// Input normalisation (write side)
// ---------------------------------------------------------------------------------

type FloatData = { data: Float32Array | Uint16Array; dtype: ValueDType };

/** Dense row-major raw data of a 2-D (or 1-D) tensor, on any device. */
function denseOf(t: Tensor, name: string, shape: number[]): TypedArray {
  t._desc(name); // a disposed or detached tensor: an error that names the argument
  if (t.ndim !== shape.length || t.shape.some((d, i) => d !== shape[i]))
    throw new KdRangeError(`Expected shape [${shape.join(', ')}] for ${name} but received [${t.shape.join(', ')}]`, 'KD_ESHAPE');
  const raw = t.toArray();
  const numel = t.numel;
  if (t.isContiguous) return raw.subarray(0, numel) as TypedArray;
  const out = new (raw.constructor as new (n: number) => TypedArray)(numel);
  const [rows, cols = 1] = shape;
  const [rs, cs = 1] = t.strides;
  for (let i = 0; i < rows!; i++) for (let j = 0; j < cols; j++) out[i * cols + j] = raw[i * rs! + j * cs]!;
  return out;
}

function notDetached(v: ArrayBufferView, name: string): void {
  if (isDetached(v.buffer)) throw new KdError(`the ArrayBuffer of ${name} was detached (transferred)`, 'KD_EDISPOSED');
}

function intsOf(v: unknown, name: string, n: number, k: number): Int32Array {
  if (v instanceof Tensor) {
    if (v.dtype !== 'i32') throw new KdTypeError(`Expected an i32 tensor for ${name} but received ${v.dtype}`, 'KD_EDTYPE');
    return denseOf(v, name, [n, k]) as Int32Array;
  }
  if (!(v instanceof Int32Array)) throw new KdTypeError(`Expected a Tensor or an Int32Array for ${name} but received ${describe(v)}`, 'KD_EDTYPE');
  notDetached(v, name);
  if (v.length < n * k) throw new KdRangeError(`Expected at least ${n * k} elements (n=${n} × k=${k}) in ${name} but received ${describe(v)}`, 'KD_ESHAPE');
  return v.subarray(0, n * k);
}

function floatsOf(v: unknown, name: string, shape: number[], rawU16Dtype: ValueDType | undefined): FloatData {
  const numel = shape.reduce((a, b) => a * b, 1);
  if (v instanceof Tensor) {
    if (!(VALUE_DTYPES as readonly string[]).includes(v.dtype)) throw new KdTypeError(`Expected an f32, f16 or bf16 tensor for ${name} but received ${v.dtype}`, 'KD_EDTYPE');
    return { data: denseOf(v, name, shape) as Float32Array | Uint16Array, dtype: v.dtype as ValueDType };
  }
  if (v instanceof Float32Array || v instanceof Uint16Array) {
    notDetached(v, name);
    if (v.length < numel) throw new KdRangeError(`Expected at least ${numel} elements in ${name} but received ${describe(v)}`, 'KD_ESHAPE');
    if (v instanceof Float32Array) return { data: v.subarray(0, numel), dtype: 'f32' };
    if (rawU16Dtype === undefined || rawU16Dtype === 'f32')
      throw new KdTypeError(`A Uint16Array for ${name} needs valuesDtype 'f16' or 'bf16' (the store holds ${rawU16Dtype ?? 'f32'})`, 'KD_EDTYPE');
    return { data: v.subarray(0, numel), dtype: rawU16Dtype };
  }
  throw new KdTypeError(`Expected a Tensor, Float32Array or Uint16Array for ${name} but received ${describe(v)}`, 'KD_EDTYPE');
}

/** Converts `count` values from src (at so) into dst (at dOff) in dst's dtype; bit-exact when the dtypes agree. */
function convertInto(dst: Float32Array | Uint16Array, dstDtype: ValueDType, dOff: number, src: FloatData, so: number, count: number): void {
  const s = src.data;
  if (src.dtype === dstDtype) {
    dst.set(s.subarray(so, so + count) as never, dOff);
    return;
  }
  if (dstDtype === 'f32') {
    const d = dst as Float32Array;
    if (src.dtype === 'bf16') {
      const d32 = new Uint32Array(d.buffer, d.byteOffset, d.length);
      for (let i = 0; i < count; i++) d32[dOff + i] = s[so + i]! << 16;
    } else for (let i = 0; i < count; i++) d[dOff + i] = f16ToNumber(s[so + i]!);
    return;
  }
  const d = dst as Uint16Array;
  if (dstDtype === 'bf16') {
    if (src.dtype === 'f32') {
      // Round to nearest even, NaN kept quiet: the same rule as numberToBf16 and native/common/dtype.h.
      const u = new Uint32Array(s.buffer, s.byteOffset, s.length);
      for (let i = 0; i < count; i++) {
        const x = u[so + i]!;
        d[dOff + i] = (x & 0x7fffffff) > 0x7f800000 ? ((x >>> 16) | 0x40) & 0xffff : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
      }
    } else {
      const tmp = new Float32Array(1);
      const tu = new Uint32Array(tmp.buffer);
      for (let i = 0; i < count; i++) {
        tmp[0] = f16ToNumber(s[so + i]!); // f16 → f32 is exact, then RNE to bf16
        const x = tu[0]!;
        d[dOff + i] = (x & 0x7fffffff) > 0x7f800000 ? ((x >>> 16) | 0x40) & 0xffff : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
      }
    }
    return;
  }
  // dst f16
  if (src.dtype === 'f32') for (let i = 0; i < count; i++) d[dOff + i] = numberToF16(s[so + i]!);
  else for (let i = 0; i < count; i++) d[dOff + i] = numberToF16(bf16ToNumber(s[so + i]!));
}

/** One batch for SparseLogitsWriter.write. */
export interface SparseBatchInput {
  /** Token ids, `[n, k]` i32, each in `[0, vocabSize)`. */
  indices: Tensor | Int32Array;
  /** Teacher log-probs `[n, k]`: f32, or f16/bf16 bits (a Uint16Array needs `valuesDtype` unless the store's dtype is f16/bf16). Converted (round to nearest even) to the store's dtype; stored bit-exact when the dtypes agree. */
  values: Tensor | Float32Array | Uint16Array;
  /** The dtype of a raw Uint16Array `values` (default: the store's valueDtype). */
  valuesDtype?: ValueDType;
  /** 'sampled' stores only: importance weights `[n, k]` f32. */
  weights?: Tensor | Float32Array;
  /** `[n]` log of the probability mass outside the k ids. Default: topk stores compute log(1 − Σ exp(values)) in float64 from the given values (-inf when Σ ≥ 1); sampled stores write NaN. */
  tailLogProb?: Tensor | Float32Array;
  /** Tokens in the batch. Required when indices and values are raw arrays (which may be longer than n·k); must agree with tensors' first dimension. */
  n?: number;
}

// ---------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------

export interface SparseLogitsWriterOptions {
  vocabSize: number;
  k: number;
  valueDtype: ValueDType;
  /** 'packed' (default): ceil(log2 V) bits per id; 'i32': 4 bytes per id. */
  idEncoding?: IdEncoding;
  /** Most tokens per shard file (default 2^20); a multiple of tokensPerBlock. */
  tokensPerShard?: number;
  /** Tokens per checksummed block, the unit of random access (default 256). */
  tokensPerBlock?: number;
  /** 'topk' (default) or 'sampled' (then every batch carries importance weights). */
  kind?: StoreKind;
  /** Free-form strings stored in manifest.json (teacher name, temperature, source file). */
  metadata?: Record<string, string>;
  /**
   * Continue the store already in `dir` after its last complete shard (its settings
   * must match; `metadata` keys must agree). Without it a directory that holds a store
   * is an error. `writer.tokens` then tells where the input should resume.
   */
  resume?: boolean;
}

export interface WriterSummary {
  dir: string;
  tokens: number;
  shards: number;
  bytes: number;
  /** Shard bytes per token (headers included, manifest.json excluded). */
  bytesPerToken: number;
}

/** Directories a writer in this process holds (a lock file with our own pid is stale otherwise). */
const heldDirs = new Set<string>();

async function acquireLock(dir: string): Promise<string> {
  const path = join(dir, LOCK_FILE);
  const me = JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString() });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, 'wx');
      try {
        await fh.writeFile(me);
      } finally {
        await fh.close();
      }
      heldDirs.add(dir);
      return path;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError('cannot create lock file', path, e);
    }
    let owner: { pid?: number; host?: string } = {};
    try {
      owner = JSON.parse(await readFile(path, 'utf8')) as typeof owner;
    } catch {
      /* unreadable or half-written lock: treat as stale below */
    }
    let alive = false;
    if (owner.host === hostname() && typeof owner.pid === 'number') {
      if (owner.pid === process.pid) alive = heldDirs.has(dir);
      else
        try {
          process.kill(owner.pid, 0);
          alive = true;
        } catch (e) {
          alive = (e as NodeJS.ErrnoException).code === 'EPERM';
        }
    } else if (owner.host !== undefined && owner.host !== hostname()) {
      throw new KdError(`${dir} is locked by a writer on host ${owner.host} (pid ${owner.pid}); if it is gone, delete ${path}`, 'KD_EIO');
    }
    if (alive)
      throw new KdError(
        `${dir} is locked by another writer (pid ${owner.pid}${owner.pid === process.pid ? ', this process: a writer that was not closed' : ''}); close it first, or delete ${path} if it is gone`,
        'KD_EIO',
      );
    await rm(path, { force: true });
  }
  throw new KdError(`cannot acquire the lock ${path}`, 'KD_EIO');
}

interface NormBatch {
  n: number;
  ids: Int32Array;
  values: FloatData;
  weights: Float32Array | undefined;
  tail: Float32Array;
}

interface OpenShard {
  index: number;
  firstToken: number;
  tokens: number;
  blocks: number;
  fh: FileHandle;
  tmp: string;
  pos: number;
  dataCrc: number;
  pending: Uint8Array[];
  pendingBytes: number;
}

const FLUSH_BYTES = 4 * 2 ** 20;

/**
 * Streams batches of sparse teacher logits into shard files. Await each write();
 * the batch's arrays must not change until it resolves. close() finishes the last
 * shard and marks the store complete; abort() drops the unfinished shard.
 */
export class SparseLogitsWriter implements AsyncDisposable {
  readonly dir: string;
  readonly layout: Readonly<StoreLayout>;
  readonly tokensPerShard: number;
  /** Tokens that were already stored when the writer opened (resume). */
  readonly resumedTokens: number;
  #m: Manifest;
  #stage: Stage;
  #shard: OpenShard | undefined;
  #queue: Promise<void> = Promise.resolve();
  #failed: unknown;
  #state: 'open' | 'closed' = 'open';
  #lock: string;

  private constructor(dir: string, m: Manifest, tokensPerShard: number, lock: string) {
    this.dir = dir;
    this.#m = m;
    this.layout = Object.freeze(layoutOf(m));
    this.tokensPerShard = tokensPerShard;
    this.resumedTokens = m.tokens;
    this.#lock = lock;
    const B = m.tokensPerBlock;
    const e = B * m.k;
    this.#stage = {
      n: 0,
      ids: new Int32Array(e),
      values: m.valueDtype === 'f32' ? new Float32Array(e) : new Uint16Array(e),
      weights: m.kind === 'sampled' ? new Float32Array(e) : undefined,
      tail: new Float32Array(B),
    };
  }

  static async create(dir: string, options: SparseLogitsWriterOptions): Promise<SparseLogitsWriter> {
    if (!LITTLE_ENDIAN) throw new KdError('the sparse-logits store needs a little-endian host', 'KD_EUNSUPPORTED');
    if (typeof dir !== 'string' || dir === '') throw new KdTypeError(`Expected a directory path for dir but received ${describe(dir)}`);
    const o = expectOptions('SparseLogitsWriter options', options, ['vocabSize', 'k', 'valueDtype', 'idEncoding', 'tokensPerShard', 'tokensPerBlock', 'kind', 'metadata', 'resume']);
    const vocabSize = expectInt('vocabSize', o.vocabSize, 1, MAX_VOCAB_SIZE);
    const k = expectInt('k', o.k, 1, 2 ** 24);
    const valueDtype = expectOneOf('valueDtype', o.valueDtype, VALUE_DTYPES);
    const idEncoding = o.idEncoding === undefined ? 'packed' : expectOneOf('idEncoding', o.idEncoding, ID_ENCODINGS);
    const kind = o.kind === undefined ? 'topk' : expectOneOf('kind', o.kind, KINDS);
    const resume = o.resume === undefined ? false : expectBool('resume', o.resume);
    const metadata: Record<string, string> = {};
    if (o.metadata !== undefined) {
      if (o.metadata === null || typeof o.metadata !== 'object' || Array.isArray(o.metadata)) throw new KdTypeError(`Expected an object of strings for metadata but received ${describe(o.metadata)}`);
      for (const [key, v] of Object.entries(o.metadata)) {
        if (typeof v !== 'string') throw new KdTypeError(`Expected a string for metadata.${key} but received ${describe(v)}`);
        metadata[key] = v;
      }
    }
    const absDir = resolve(dir);
    const tokensPerBlock = o.tokensPerBlock === undefined ? DEFAULT_TOKENS_PER_BLOCK : expectInt('tokensPerBlock', o.tokensPerBlock, 1, 2 ** 24);
    const layout: StoreLayout = { vocabSize, k, kind, valueDtype, idEncoding, idBits: idEncoding === 'i32' ? 32 : idBitsFor(vocabSize), tokensPerBlock };
    const blockBytes = blockSections(layout, tokensPerBlock).total;
    if (blockBytes > MAX_BLOCK_BYTES)
      throw new KdRangeError(`A block of tokensPerBlock=${tokensPerBlock} tokens with k=${k} takes ${blockBytes} bytes, more than ${MAX_BLOCK_BYTES}; use fewer tokens per block`);
    let tokensPerShard = DEFAULT_TOKENS_PER_SHARD;
    if (o.tokensPerShard !== undefined) {
      tokensPerShard = expectInt('tokensPerShard', o.tokensPerShard, 1, tokensPerBlock * 0xffffffff);
      // (resuming without tokensPerBlock: checked against the store's block size below)
      if (tokensPerShard % tokensPerBlock !== 0 && !(resume && o.tokensPerBlock === undefined))
        throw new KdRangeError(`Expected tokensPerShard to be a multiple of tokensPerBlock (${tokensPerBlock}) but received ${describe(tokensPerShard)}`);
    } else if (tokensPerShard % tokensPerBlock !== 0) tokensPerShard = Math.max(1, Math.round(tokensPerShard / tokensPerBlock)) * tokensPerBlock;

    try {
      await mkdir(absDir, { recursive: true });
    } catch (e) {
      throw ioError('cannot create', absDir, e);
    }
    const lock = await acquireLock(absDir);
    try {
      let m = await readManifest(absDir);
      let names: string[];
      try {
        names = await readdir(absDir);
      } catch (e) {
        throw ioError('cannot list', absDir, e);
      }
      if (!resume && (m || names.some((n) => SHARD_RE.test(n))))
        throw new KdError(
          `${absDir} already holds a sparse-logits store${m ? ` (${m.tokens} tokens in ${m.shards.length} shards${m.complete ? '' : ', unfinished'})` : ''}; pass resume: true to continue it, or use an empty directory`,
          'KD_EINVAL',
        );
      // Leftovers of a crashed writer: unfinished shards and manifests never renamed into place.
      for (const n of names) if (TEMP_RE.test(n)) await rm(join(absDir, n), { force: true });
      const now = new Date().toISOString();
      if (m) {
        const mine: Record<string, unknown> = { ...layout };
        for (const f of ['vocabSize', 'k', 'kind', 'valueDtype', 'idEncoding', 'tokensPerBlock'] as const) {
          if (f === 'tokensPerBlock' && o.tokensPerBlock === undefined) continue;
          if (m[f] !== mine[f]) throw new KdError(`cannot resume the store in ${absDir}: it has ${f} ${String(m[f])}, the writer was asked for ${String(mine[f])}`, 'KD_EINVAL');
        }
        for (const [key, v] of Object.entries(metadata)) {
          if (key in m.metadata && m.metadata[key] !== v)
            throw new KdError(`cannot resume the store in ${absDir}: metadata.${key} is '${m.metadata[key]}' there, the writer was given '${v}'`, 'KD_EINVAL');
        }
        m.metadata = { ...m.metadata, ...metadata };
        if (o.tokensPerShard === undefined) tokensPerShard = m.tokensPerShard;
        else if (tokensPerShard % m.tokensPerBlock !== 0)
          throw new KdRangeError(`Expected tokensPerShard to be a multiple of tokensPerBlock (${m.tokensPerBlock}, the store's) but received ${describe(tokensPerShard)}`);
        else m.tokensPerShard = tokensPerShard;
        // The listed shards must be intact at least as far as their headers and sizes.
        for (const s of m.shards) {
          const { fh, header } = await openShard(join(absDir, s.file), s.file);
          await fh.close();
          checkHeaderAgainst(header, s.file, m, m.storeId, s);
        }
        // A shard renamed into place just before a crash, before the manifest listed it: adopt it if it is intact.
        const next = shardFileName(m.shards.length);
        if (names.includes(next)) {
          try {
            const { fh, header } = await openShard(join(absDir, next), next);
            try {
              checkHeaderAgainst(header, next, m, m.storeId, { index: m.shards.length, firstToken: m.tokens });
              await verifyShardData(fh, header, next);
            } finally {
              await fh.close();
            }
            m.shards.push(shardInfo(header, next));
            m.tokens += header.tokenCount;
            m.bytes += header.fileBytes;
          } catch (e) {
            if (!(e instanceof KdError) || e.code !== 'KD_EFORMAT') throw e;
          }
        }
        for (const n of names) {
          const mm = SHARD_RE.exec(n);
          if (mm && Number(mm[1]) >= m.shards.length) await rm(join(absDir, n), { force: true });
        }
        m.complete = false;
        m.updatedAt = now;
      } else {
        if (names.some((n) => SHARD_RE.test(n)))
          throw new KdError(`${absDir} has shard files but no ${MANIFEST_FILE}; refusing to overwrite them (move them away or use another directory)`, 'KD_EINVAL');
        m = {
          format: MANIFEST_FORMAT,
          formatVersion: FORMAT_VERSION,
          storeId: randomBytes(16).toString('hex'),
          ...layout,
          tokensPerShard,
          complete: false,
          tokens: 0,
          bytes: 0,
          metadata,
          shards: [],
          createdAt: now,
          updatedAt: now,
        };
      }
      await writeAtomic(absDir, MANIFEST_FILE, JSON.stringify(m, null, 2) + '\n');
      return new SparseLogitsWriter(absDir, m, tokensPerShard, lock);
    } catch (e) {
      heldDirs.delete(absDir);
      await rm(lock, { force: true });
      throw e;
    }
  }

  get vocabSize(): number {
    return this.layout.vocabSize;
  }
  get k(): number {
    return this.layout.k;
  }
  /** Tokens accepted so far, those stored before a resume included. */
  get tokens(): number {
    return this.#m.tokens + (this.#shard?.tokens ?? 0) + this.#stage.n;
  }
  get metadata(): Readonly<Record<string, string>> {
    return this.#m.metadata;
  }
  /** What finished shards hold (what survives a crash now). */
  get stored(): { tokens: number; shards: number; bytes: number } {
    return { tokens: this.#m.tokens, shards: this.#m.shards.length, bytes: this.#m.bytes };
  }

  /** Appends a batch of n tokens. Validates synchronously-cheap things first (shapes, dtypes, id range). */
  write(batch: SparseBatchInput): Promise<void> {
    let norm: NormBatch;
    try {
      this.#checkOpen('write');
      norm = this.#normalize(batch);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#enqueue(() => this.#append(norm));
  }

  /**
   * Finishes the current shard even if it is not full (the store stays unfinished):
   * everything written so far survives a crash. The CLI calls it on Ctrl-C.
   */
  checkpoint(): Promise<void> {
    try {
      this.#checkOpen('checkpoint');
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#enqueue(() => this.#finishShard());
  }

  /** Finishes the last shard, marks the store complete and releases the directory. */
  async close(): Promise<WriterSummary> {
    this.#checkOpen('close');
    this.#state = 'closed';
    const run = this.#queue.then(async () => {
      if (this.#failed) throw this.#failed;
      await this.#finishShard();
      this.#m.complete = true;
      this.#m.updatedAt = new Date().toISOString();
      await writeAtomic(this.dir, MANIFEST_FILE, JSON.stringify(this.#m, null, 2) + '\n');
    });
    this.#queue = run.catch(() => {});
    try {
      await run;
    } catch (e) {
      await this.#dropShard();
      throw e;
    } finally {
      await this.#unlock();
    }
    const m = this.#m;
    return { dir: this.dir, tokens: m.tokens, shards: m.shards.length, bytes: m.bytes, bytesPerToken: m.tokens ? m.bytes / m.tokens : 0 };
  }

  /** Drops the unfinished shard (and staged tokens) and releases the directory; finished shards stay. */
  async abort(): Promise<void> {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    await this.#queue.catch(() => {});
    await this.#dropShard();
    await this.#unlock();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#state === 'open') await this.close();
  }

  #checkOpen(what: string): void {
    if (this.#state !== 'open') throw new KdError(`${what}: the writer is closed`, 'KD_EINVAL');
    if (this.#failed) throw this.#failed;
  }

  #enqueue(fn: () => Promise<void>): Promise<void> {
    const run = this.#queue.then(() => {
      if (this.#failed) throw this.#failed;
      return fn();
    });
    this.#queue = run.catch((e) => {
      this.#failed ??= e;
    });
    return run;
  }

  async #unlock(): Promise<void> {
    heldDirs.delete(this.dir);
    await rm(this.#lock, { force: true }).catch(() => {});
  }

  async #dropShard(): Promise<void> {
    const s = this.#shard;
    this.#shard = undefined;
    this.#stage.n = 0;
    if (!s) return;
    await s.fh.close().catch(() => {});
    await rm(s.tmp, { force: true }).catch(() => {});
  }

  /** Validates a batch; returns dense views. */
  #normalize(batch: SparseBatchInput): NormBatch {
    const { k, vocabSize, kind, valueDtype } = this.layout;
    const b = expectOptions('batch', batch, ['indices', 'values', 'valuesDtype', 'weights', 'tailLogProb', 'n']);
    let n: number | undefined = b.n === undefined ? undefined : expectInt('n', b.n, 0);
    for (const [name, v] of [['indices', b.indices], ['values', b.values]] as const) {
      if (v instanceof Tensor) {
        const rows = v.shape[0] ?? 0;
        if (n !== undefined && rows !== n) throw new KdRangeError(`Expected ${n} rows in ${name} but received shape [${v.shape.join(', ')}]`, 'KD_ESHAPE');
        n = rows;
      }
    }
    if (n === undefined) throw new KdTypeError('Expected n (the number of tokens) for a batch of raw arrays');
    const ids = intsOf(b.indices, 'indices', n, k);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id < 0 || id >= vocabSize)
        throw new KdRangeError(`Expected ids in [0, ${vocabSize}) but indices[${Math.floor(i / k)}, ${i % k}] is ${id}`, 'KD_ERANGE');
    }
    const valuesDtype = b.valuesDtype === undefined ? (valueDtype === 'f32' ? undefined : valueDtype) : expectOneOf('valuesDtype', b.valuesDtype, VALUE_DTYPES);
    const values = floatsOf(b.values, 'values', [n, k], valuesDtype);
    let weights: Float32Array | undefined;
    if (kind === 'sampled') {
      if (b.weights === undefined) throw new KdTypeError("Expected weights [n, k] for a 'sampled' store");
      weights = f32Of(b.weights, 'weights', [n, k]);
    } else if (b.weights !== undefined) throw new KdTypeError("weights are only stored by 'sampled' stores (create the writer with kind: 'sampled')");
    let tail: Float32Array;
    if (b.tailLogProb !== undefined) tail = f32Of(b.tailLogProb, 'tailLogProb', [n]);
    else {
      tail = new Float32Array(n);
      if (kind === 'sampled') tail.fill(NaN);
      else {
        const v = values.dtype === 'f32' ? (values.data as Float32Array) : toF32(values);
        for (let i = 0; i < n; i++) {
          let s = 0;
          for (let j = 0; j < k; j++) s += Math.exp(v[i * k + j]!);
          tail[i] = s >= 1 ? -Infinity : Math.log1p(-s);
        }
      }
    }
    return { n, ids, values, weights, tail };
  }

  async #append(b: NormBatch): Promise<void> {
    const { k, valueDtype, tokensPerBlock: B } = this.layout;
    const st = this.#stage;
    let t = 0;
    while (t < b.n) {
      const take = Math.min(B - st.n, b.n - t);
      st.ids.set(b.ids.subarray(t * k, (t + take) * k), st.n * k);
      convertInto(st.values, valueDtype, st.n * k, b.values, t * k, take * k);
      if (st.weights && b.weights) st.weights.set(b.weights.subarray(t * k, (t + take) * k), st.n * k);
      st.tail.set(b.tail.subarray(t, t + take), st.n);
      st.n += take;
      t += take;
      if (st.n === B) await this.#emitBlock();
    }
    // Finished blocks go to the temp file now (one write per batch); staged tokens wait for their block.
    if (this.#shard) await this.#flush(this.#shard);
  }

  async #emitBlock(): Promise<void> {
    const st = this.#stage;
    if (st.n === 0) return;
    const s = this.#shard ?? (await this.#startShard());
    const block = encodeBlock(this.layout, st);
    s.tokens += st.n;
    s.blocks += 1;
    st.n = 0;
    s.dataCrc = crc32c(block, s.dataCrc);
    s.pending.push(block);
    s.pendingBytes += block.length;
    if (s.pendingBytes >= FLUSH_BYTES) await this.#flush(s);
    if (s.tokens >= this.tokensPerShard) await this.#finishShard();
  }

  async #startShard(): Promise<OpenShard> {
    const index = this.#m.shards.length;
    const tmp = join(this.dir, `.${shardFileName(index)}.tmp`);
    let fh: FileHandle;
    try {
      fh = await open(tmp, 'w');
      // The header stays zero until the shard is complete: an unfinished file never has the magic.
      await fh.write(new Uint8Array(HEADER_BYTES), 0, HEADER_BYTES, 0);
    } catch (e) {
      throw ioError('cannot create', tmp, e);
    }
    this.#shard = { index, firstToken: this.#m.tokens, tokens: 0, blocks: 0, fh, tmp, pos: HEADER_BYTES, dataCrc: 0, pending: [], pendingBytes: 0 };
    return this.#shard;
  }

  async #flush(s: OpenShard): Promise<void> {
    if (s.pendingBytes === 0) return;
    const buf = s.pending.length === 1 ? s.pending[0]! : concat(s.pending, s.pendingBytes);
    try {
      let done = 0;
      while (done < buf.length) done += (await s.fh.write(buf, done, buf.length - done, s.pos + done)).bytesWritten;
    } catch (e) {
      throw ioError('cannot write', s.tmp, e);
    }
    s.pos += buf.length;
    s.pending = [];
    s.pendingBytes = 0;
  }

  /** Emits the staged partial block, then header + fsync + rename + manifest. */
  async #finishShard(): Promise<void> {
    await this.#emitBlock();
    const s = this.#shard;
    if (!s || s.tokens === 0) return;
    await this.#flush(s);
    const file = shardFileName(s.index);
    const header = encodeHeader({
      ...this.layout,
      tokenCount: s.tokens,
      firstToken: s.firstToken,
      blockCount: s.blocks,
      shardIndex: s.index,
      storeId: this.#m.storeId,
      fileBytes: s.pos,
      dataCrc32c: s.dataCrc,
    });
    if (s.pos !== shardBytes(this.layout, s.tokens)) throw new KdError(`internal: ${file} has ${s.pos} bytes, the layout says ${shardBytes(this.layout, s.tokens)}`);
    const final = join(this.dir, file);
    try {
      await s.fh.write(header, 0, HEADER_BYTES, 0);
      await s.fh.sync();
      await s.fh.close();
      await rename(s.tmp, final);
    } catch (e) {
      throw ioError('cannot finish', final, e);
    }
    this.#shard = undefined;
    await fsyncDir(this.dir);
    const h = decodeHeader(header, file);
    this.#m.shards.push(shardInfo(h, file));
    this.#m.tokens += s.tokens;
    this.#m.bytes += s.pos;
    this.#m.updatedAt = new Date().toISOString();
    await writeAtomic(this.dir, MANIFEST_FILE, JSON.stringify(this.#m, null, 2) + '\n');
  }
}

function shardInfo(h: ShardHeader, file: string): ShardInfo {
  return {
    file,
    index: h.shardIndex,
    firstToken: h.firstToken,
    tokens: h.tokenCount,
    blocks: h.blockCount,
    bytes: h.fileBytes,
    dataCrc32c: hex32(h.dataCrc32c),
    headerCrc32c: hex32(h.headerCrc32c),
  };
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function f32Of(v: unknown, name: string, shape: number[]): Float32Array {
  const numel = shape.reduce((a, b) => a * b, 1);
  if (v instanceof Tensor) {
    if (v.dtype !== 'f32') throw new KdTypeError(`Expected an f32 tensor for ${name} but received ${v.dtype}`, 'KD_EDTYPE');
    return denseOf(v, name, shape) as Float32Array;
  }
  if (!(v instanceof Float32Array)) throw new KdTypeError(`Expected a Tensor or a Float32Array for ${name} but received ${describe(v)}`, 'KD_EDTYPE');
  notDetached(v, name);
  if (v.length < numel) throw new KdRangeError(`Expected at least ${numel} elements in ${name} but received ${describe(v)}`, 'KD_ESHAPE');
  return v.subarray(0, numel);
}

function toF32(v: FloatData): Float32Array {
  const out = new Float32Array(v.data.length);
  convertInto(out, 'f32', 0, v, 0, v.data.length);
  return out;
}

// ---------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------

export interface SparseLogitsReaderOptions {
  /** Fail with KD_EFORMAT unless the store's vocabulary size is this (the student's V). */
  expectVocabSize?: number;
  expectK?: number;
  expectKind?: StoreKind;
  expectValueDtype?: ValueDType;
  /** Open a store whose writer has not closed it (still running, or crashed): only its finished shards are read. Default false. */
  allowIncomplete?: boolean;
  /** Check every block checksum and data checksum on open (reads everything). Default false: blocks are checked as they are read. */
  verify?: boolean;
  /** Shard files kept open at once (default 64). */
  maxOpenFiles?: number;
}

/**
 * Tokens read back: CPU tensors with exactly the keys of sparseKlDiv's sparse teacher,
 * so `sparseKlDiv(student, await reader.read(o, n), { tail: 'bucket' })` works as is.
 */
export interface SparseTeacherBatch {
  /** i32 [count, k]. */
  indices: Tensor;
  /** [count, k] in the store's valueDtype (f16/bf16 as Uint16Array bits). */
  values: Tensor;
  /** f32 [count]. */
  tailLogProb: Tensor;
  /** f32 [count, k], sampled stores only. */
  weights?: Tensor;
}

/** What SparseLogitsReader.batches yields. */
export interface SparseBatch {
  /** First token of the batch (store-wide offset). */
  offset: number;
  count: number;
  teacher: SparseTeacherBatch;
}

interface ReaderShard extends ShardInfo {
  header?: ShardHeader;
  fh?: FileHandle;
  opening?: Promise<FileHandle>;
  users: number;
  lastUse: number;
}

/** Reads a store written by SparseLogitsWriter, with random access by token offset. */
export class SparseLogitsReader implements AsyncDisposable {
  readonly dir: string;
  readonly manifest: Readonly<Manifest>;
  readonly layout: Readonly<StoreLayout>;
  #shards: ReaderShard[];
  #maxOpen: number;
  #clock = 0;
  #closed = false;
  /** The last block decoded, kept for reads that resume inside it. */
  #cache: { shard: number; block: number; buf: Uint8Array } | undefined;

  private constructor(dir: string, m: Manifest, maxOpen: number) {
    this.dir = dir;
    this.manifest = m;
    this.layout = Object.freeze(layoutOf(m));
    this.#shards = m.shards.map((s) => ({ ...s, users: 0, lastUse: 0 }));
    this.#maxOpen = maxOpen;
  }

  static async open(dir: string, options?: SparseLogitsReaderOptions): Promise<SparseLogitsReader> {
    if (!LITTLE_ENDIAN) throw new KdError('the sparse-logits store needs a little-endian host', 'KD_EUNSUPPORTED');
    if (typeof dir !== 'string' || dir === '') throw new KdTypeError(`Expected a directory path for dir but received ${describe(dir)}`);
    const o = expectOptions('SparseLogitsReader options', options, ['expectVocabSize', 'expectK', 'expectKind', 'expectValueDtype', 'allowIncomplete', 'verify', 'maxOpenFiles']);
    const absDir = resolve(dir);
    const m = await readManifest(absDir);
    if (!m) {
      let exists = true;
      try {
        await stat(absDir);
      } catch {
        exists = false;
      }
      throw new KdError(exists ? `${absDir} has no ${MANIFEST_FILE}: not a sparse-logits store (or its writer never started)` : `${absDir} does not exist`, 'KD_EIO');
    }
    const expect = (name: string, key: keyof StoreLayout, v: unknown, check: () => unknown): void => {
      if (v === undefined) return;
      check();
      if (m[key] !== v) throw new KdError(`${absDir}: the store has ${key} ${String(m[key])}, expected ${String(v)} (${name})`, 'KD_EFORMAT');
    };
    expect('expectVocabSize', 'vocabSize', o.expectVocabSize, () => expectInt('expectVocabSize', o.expectVocabSize, 1));
    expect('expectK', 'k', o.expectK, () => expectInt('expectK', o.expectK, 1));
    expect('expectKind', 'kind', o.expectKind, () => expectOneOf('expectKind', o.expectKind, KINDS));
    expect('expectValueDtype', 'valueDtype', o.expectValueDtype, () => expectOneOf('expectValueDtype', o.expectValueDtype, VALUE_DTYPES));
    const allowIncomplete = o.allowIncomplete === undefined ? false : expectBool('allowIncomplete', o.allowIncomplete);
    const verify = o.verify === undefined ? false : expectBool('verify', o.verify);
    const maxOpen = o.maxOpenFiles === undefined ? 64 : expectInt('maxOpenFiles', o.maxOpenFiles, 1, 65536);
    if (!m.complete && !allowIncomplete)
      throw new KdError(
        `${absDir}: the store is unfinished (its writer did not close it: still running, interrupted or crashed); ${m.tokens} tokens in ${m.shards.length} finished shards. Resume the writer, or pass allowIncomplete: true to read the finished shards`,
        'KD_EFORMAT',
      );
    const r = new SparseLogitsReader(absDir, m, maxOpen);
    try {
      // Headers and sizes of every shard, checked against the manifest now: a wrong or
      // truncated file fails here rather than in the middle of training.
      for (const s of r.#shards) {
        const { fh, header } = await openShard(join(absDir, s.file), s.file);
        try {
          checkHeaderAgainst(header, s.file, m, m.storeId, s);
          if (hex32(header.dataCrc32c) !== s.dataCrc32c) throw fmtErr(s.file, `data checksum: manifest.json expects ${s.dataCrc32c}, the shard header says ${hex32(header.dataCrc32c)}`);
          if (verify) await verifyShardData(fh, header, s.file);
        } finally {
          await fh.close();
        }
        s.header = header;
      }
    } catch (e) {
      await r.close();
      throw e;
    }
    return r;
  }

  get tokens(): number {
    return this.manifest.tokens;
  }
  get vocabSize(): number {
    return this.layout.vocabSize;
  }
  get k(): number {
    return this.layout.k;
  }
  get kind(): StoreKind {
    return this.layout.kind;
  }
  get valueDtype(): ValueDType {
    return this.layout.valueDtype;
  }
  get complete(): boolean {
    return this.manifest.complete;
  }
  get metadata(): Readonly<Record<string, string>> {
    return this.manifest.metadata;
  }
  get shards(): readonly ShardInfo[] {
    return this.manifest.shards;
  }
  /** Shard bytes per stored token (headers included). */
  get bytesPerToken(): number {
    return this.tokens ? this.manifest.bytes / this.tokens : 0;
  }

  /** Tokens [offset, offset + count), across shard boundaries. Every block read is checksum-verified. */
  async read(offset: number, count: number): Promise<SparseTeacherBatch> {
    if (this.#closed) throw new KdError('read: the reader is closed', 'KD_EINVAL');
    expectInt('offset', offset, 0);
    expectInt('count', count, 0);
    if (offset + count > this.tokens)
      throw new KdRangeError(`Expected offset + count <= ${this.tokens} (the store's tokens) but received offset ${offset} and count ${count}`, 'KD_ERANGE');
    const { k, kind, valueDtype, tokensPerBlock: B } = this.layout;
    const ids = new Int32Array(count * k);
    const values = valueDtype === 'f32' ? new Float32Array(count * k) : new Uint16Array(count * k);
    const tail = new Float32Array(count);
    const weights = kind === 'sampled' ? new Float32Array(count * k) : undefined;
    const out = { ids, values, tail, weights };
    let t = offset;
    let o = 0;
    while (o < count) {
      const si = this.#shardAt(t);
      const s = this.#shards[si]!;
      const h = s.header!;
      const local = t - s.firstToken;
      const take = Math.min(count - o, s.tokens - local);
      let b = Math.floor(local / B);
      const bLast = Math.floor((local + take - 1) / B);
      let pos = local; // shard-local token of the next row to copy
      const c = this.#cache;
      if (c && c.shard === si && c.block === b) {
        const n = Math.min(B, s.tokens - b * B);
        const r1 = Math.min(n, local + take - b * B);
        this.#decode(c.buf, 0, n, pos - b * B, r1, out, o, () => blockWhere(s.file, b, B, n, s.firstToken));
        o += r1 - (pos - b * B);
        pos = b * B + r1;
        b++;
      }
      if (b <= bLast) {
        const buf = await this.#readBlocks(si, b, bLast);
        const full = blockSections(h, B).total;
        for (let bi = b; bi <= bLast; bi++) {
          const n = Math.min(B, s.tokens - bi * B);
          const at = (bi - b) * full;
          const where = (): string => blockWhere(s.file, bi, B, n, s.firstToken);
          verifyBlock(h, buf, at, n, where);
          const r0 = pos - bi * B;
          const r1 = Math.min(n, local + take - bi * B);
          this.#decode(buf, at, n, r0, r1, out, o, where);
          o += r1 - r0;
          pos = bi * B + r1;
          if (bi === bLast) this.#cache = { shard: si, block: bi, buf: buf.slice(at, at + blockSections(h, n).total) };
        }
      }
      t = s.firstToken + pos;
    }
    return {
      indices: tensor(ids, [count, k]),
      values: tensor(values, [count, k], { dtype: valueDtype }),
      tailLogProb: tensor(tail, [count]),
      ...(weights ? { weights: tensor(weights, [count, k]) } : {}),
    };
  }

  /** Batches of `batchSize` tokens (the last one shorter) from `start` (default 0) to `end` (default all). */
  async *batches(batchSize: number, range: { start?: number; end?: number } = {}): AsyncGenerator<SparseBatch> {
    expectInt('batchSize', batchSize, 1);
    const r = expectOptions('batches range', range, ['start', 'end']);
    const start = r.start === undefined ? 0 : expectInt('start', r.start, 0, this.tokens);
    const end = r.end === undefined ? this.tokens : expectInt('end', r.end, start, this.tokens);
    for (let t = start; t < end; t += batchSize) {
      const count = Math.min(batchSize, end - t);
      yield { offset: t, count, teacher: await this.read(t, count) };
    }
  }

  /** Reads everything, checking every block checksum and every shard's data checksum. */
  async verify(): Promise<{ shards: number; tokens: number; bytes: number }> {
    for (let i = 0; i < this.#shards.length; i++) {
      const s = this.#shards[i]!;
      const fh = await this.#acquire(i);
      try {
        await verifyShardData(fh, s.header!, s.file);
      } finally {
        s.users--;
      }
    }
    return { shards: this.#shards.length, tokens: this.tokens, bytes: this.manifest.bytes };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#cache = undefined;
    for (const s of this.#shards) {
      const fh = s.fh;
      s.fh = undefined;
      await fh?.close().catch(() => {});
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #shardAt(t: number): number {
    const sh = this.#shards;
    let lo = 0;
    let hi = sh.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (sh[mid]!.firstToken <= t) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  async #acquire(si: number): Promise<FileHandle> {
    const s = this.#shards[si]!;
    s.users++;
    s.lastUse = ++this.#clock;
    if (s.fh) return s.fh;
    try {
      if (!s.opening) {
        s.opening = open(join(this.dir, s.file), 'r').catch((e) => {
          throw ioError('cannot open', join(this.dir, s.file), e);
        });
      }
      const fh = await s.opening;
      s.fh = fh;
      s.opening = undefined;
    } catch (e) {
      s.users--;
      s.opening = undefined;
      throw e;
    }
    // Keep at most maxOpen files open: close the least recently used idle ones. They are
    // chosen and detached synchronously (no await in between), so a handle another read
    // has just acquired is never closed under it; the closes happen afterwards.
    const fh = s.fh!;
    const idle = this.#shards.filter((x) => x.fh && x.users === 0).sort((a, b) => a.lastUse - b.lastUse);
    let count = this.#shards.filter((x) => x.fh).length;
    const closing: FileHandle[] = [];
    for (const x of idle) {
      if (count <= this.#maxOpen) break;
      closing.push(x.fh!);
      x.fh = undefined;
      count--;
    }
    await Promise.all(closing.map((h) => h.close().catch(() => {})));
    return fh;
  }

  async #readBlocks(si: number, b0: number, b1: number): Promise<Uint8Array> {
    const s = this.#shards[si]!;
    const h = s.header!;
    const B = h.tokensPerBlock;
    const full = blockSections(h, B).total;
    const lastN = Math.min(B, s.tokens - b1 * B);
    const len = (b1 - b0) * full + blockSections(h, lastN).total;
    const pos = HEADER_BYTES + b0 * full;
    const buf = new Uint8Array(len); // own ArrayBuffer: 8-byte aligned sections for the typed views
    const fh = await this.#acquire(si);
    let got = 0;
    try {
      while (got < len) {
        const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
    } catch (e) {
      throw ioError('cannot read', join(this.dir, s.file), e);
    } finally {
      s.users--;
    }
    if (got < len) {
      const bad = b0 + Math.floor(got / full);
      throw fmtErr(s.file, `truncated at block ${bad}: expected ${pos + len} bytes, the file ends at ${pos + got} (it was cut after the reader opened it)`);
    }
    return buf;
  }

  /** Copies rows [r0, r1) of a verified block at `at` in buf into the outputs at row `o`. */
  #decode(
    buf: Uint8Array,
    at: number,
    n: number,
    r0: number,
    r1: number,
    out: { ids: Int32Array; values: Float32Array | Uint16Array; tail: Float32Array; weights: Float32Array | undefined },
    o: number,
    where: () => string,
  ): void {
    const L = this.layout;
    const k = L.k;
    const sec = blockSections(L, n);
    const e0 = r0 * k;
    const e = (r1 - r0) * k;
    const base = buf.byteOffset + at;
    if (L.idEncoding === 'i32') out.ids.set(new Int32Array(buf.buffer, base + e0 * 4, e), o * k);
    else unpackIds(new Uint32Array(buf.buffer, base, sec.ids / 4), e0, e, L.idBits, out.ids, o * k);
    const V = L.vocabSize;
    for (let i = o * k; i < o * k + e; i++) {
      const id = out.ids[i]!;
      if (id < 0 || id >= V) {
        const row = Math.floor(i / k) - o + r0;
        throw new KdError(`${where()}: row ${row} of the block has id ${id}, outside [0, ${V}) (written by a faulty writer)`, 'KD_EFORMAT');
      }
    }
    let off = base + sec.ids;
    if (L.valueDtype === 'f32') out.values.set(new Float32Array(buf.buffer, off + e0 * 4, e), o * k);
    else out.values.set(new Uint16Array(buf.buffer, off + e0 * 2, e), o * k);
    off += sec.values;
    if (out.weights) out.weights.set(new Float32Array(buf.buffer, off + e0 * 4, e), o * k);
    off += sec.weights;
    out.tail.set(new Float32Array(buf.buffer, off + r0 * 4, r1 - r0), o);
  }
}
