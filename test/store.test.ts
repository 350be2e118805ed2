/**
 * The sparse-logits store: bit-exact round trips across block and shard boundaries
 * (every value dtype, both id encodings, V from 1 to 2^31-1), random access,
 * truncation at every byte of the last block, flipped bits, version / vocab / store
 * mismatches, and atomicity (a writer SIGKILLed mid-shard, or never closed).
 */
import { spawn } from 'node:child_process';
import { copyFile, mkdtemp, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SparseLogitsReader, SparseLogitsWriter, crc32c, fromNumbers, inspectShard, tensor, type IdEncoding, type SparseTeacherBatch, type StoreKind, type ValueDType } from '../lib/index.js';
import * as kd from '../lib/index.js';
import { HEADER_BYTES, blockSections, bytesPerToken, idBitsFor, shardBytes, shardFileName, type StoreLayout } from '../lib/store.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../..');
let TMP: string;
beforeAll(async () => {
  TMP = await mkdtemp(join(tmpdir(), 'kd-store-test-'));
});
afterAll(async () => {
  await rm(TMP, { recursive: true, force: true });
});
let dirCount = 0;
const newDir = (): string => join(TMP, `store-${dirCount++}`);

/** mulberry32: a small seeded PRNG. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Ref {
  ids: Int32Array;
  /** Raw bits as stored: u32 for f32, u16 for f16/bf16. */
  bits: Uint32Array | Uint16Array;
  tail: Uint32Array;
  weights?: Uint32Array;
}

/**
 * n tokens of random data: ids spread over [0, V) with 0 and V-1 included; values as
 * raw random bit patterns (NaN payloads, infinities and subnormals included: the
 * store must not touch them).
 */
function makeData(n: number, k: number, V: number, dtype: ValueDType, kind: StoreKind, seed: number): Ref {
  const r = rng(seed);
  const ids = new Int32Array(n * k);
  for (let i = 0; i < ids.length; i++) ids[i] = i % 7 === 0 ? V - 1 : i % 11 === 0 ? 0 : Math.floor(r() * V);
  const bits = dtype === 'f32' ? new Uint32Array(n * k) : new Uint16Array(n * k);
  for (let i = 0; i < bits.length; i++) bits[i] = Math.floor(r() * (dtype === 'f32' ? 2 ** 32 : 2 ** 16));
  const tail = new Uint32Array(n);
  for (let i = 0; i < n; i++) tail[i] = Math.floor(r() * 2 ** 32);
  const weights = kind === 'sampled' ? new Uint32Array(n * k).map(() => Math.floor(r() * 2 ** 32)) : undefined;
  return { ids, bits, tail, weights };
}

const f32View = (u: Uint32Array): Float32Array => new Float32Array(u.buffer, u.byteOffset, u.length);

/** Writes `ref` in batches of the given sizes (cycled), alternating raw arrays and tensors. */
async function writeAll(w: SparseLogitsWriter, ref: Ref, n: number, k: number, dtype: ValueDType, sizes: number[]): Promise<void> {
  let t = 0;
  for (let b = 0; t < n; b++) {
    const m = Math.min(sizes[b % sizes.length]!, n - t);
    const ids = ref.ids.subarray(t * k, (t + m) * k);
    const vals = dtype === 'f32' ? f32View((ref.bits as Uint32Array).subarray(t * k, (t + m) * k)) : (ref.bits as Uint16Array).subarray(t * k, (t + m) * k);
    const tail = f32View(ref.tail.subarray(t, t + m));
    const weights = ref.weights ? f32View(ref.weights.subarray(t * k, (t + m) * k)) : undefined;
    if (b % 2 === 0) await w.write({ indices: ids, values: vals, tailLogProb: tail, ...(weights ? { weights } : {}), n: m });
    else
      await w.write({
        indices: tensor(ids, [m, k]),
        values: tensor(vals, [m, k], { dtype }),
        tailLogProb: tensor(tail, [m]),
        ...(weights ? { weights: tensor(weights, [m, k]) } : {}),
      });
    t += m;
  }
}

/** Compares a read batch with the reference, bit for bit, reporting the first mismatch. */
function expectBatch(b: SparseTeacherBatch, ref: Ref, offset: number, count: number, k: number, dtype: ValueDType): void {
  // exactly the keys of sparseKlDiv's sparse teacher (it rejects unknown keys)
  expect(Object.keys(b).sort()).toEqual(ref.weights ? ['indices', 'tailLogProb', 'values', 'weights'] : ['indices', 'tailLogProb', 'values']);
  expect(b.indices.shape).toEqual([count, k]);
  expect(b.indices.dtype).toBe('i32');
  expect(b.values.dtype).toBe(dtype);
  expect(b.values.shape).toEqual([count, k]);
  expect(b.tailLogProb.shape).toEqual([count]);
  const first = (got: ArrayLike<number>, want: ArrayLike<number>, what: string): void => {
    for (let i = 0; i < want.length; i++)
      if (got[i] !== want[i]) throw new Error(`${what}: first mismatch at element ${i} (token ${offset + Math.floor(i / k)}): got ${got[i]}, want ${want[i]}`);
  };
  first(b.indices.toArray(), ref.ids.subarray(offset * k, (offset + count) * k), 'ids');
  const v = b.values.toArray();
  const vbits = dtype === 'f32' ? new Uint32Array(v.buffer, v.byteOffset, v.length) : (v as Uint16Array);
  first(vbits, ref.bits.subarray(offset * k, (offset + count) * k), 'value bits');
  const t = b.tailLogProb.toArray();
  first(new Uint32Array(t.buffer, t.byteOffset, t.length), ref.tail.subarray(offset, offset + count), 'tail bits');
  if (ref.weights) {
    const w = b.weights!.toArray();
    first(new Uint32Array(w.buffer, w.byteOffset, w.length), ref.weights.subarray(offset * k, (offset + count) * k), 'weight bits');
  } else expect(b.weights).toBeUndefined();
}

async function expectFormatError(p: Promise<unknown>, re?: RegExp): Promise<Error & { code?: string }> {
  let err: (Error & { code?: string }) | undefined;
  try {
    await p;
  } catch (e) {
    err = e as Error & { code?: string };
  }
  expect(err, 'expected a KD_EFORMAT error').toBeDefined();
  expect(err!.code, err!.message).toBe('KD_EFORMAT');
  if (re) expect(err!.message).toMatch(re);
  return err!;
}

/** Opens and reads everything (what a training run does). */
async function readEverything(dir: string, opts: { allowIncomplete?: boolean } = {}): Promise<void> {
  const r = await SparseLogitsReader.open(dir, opts);
  try {
    await r.read(0, r.tokens);
  } finally {
    await r.close();
  }
}

describe('crc32c', () => {
  it('matches the standard check value and is incremental', () => {
    expect(crc32c(new TextEncoder().encode('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(0))).toBe(0);
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa); // RFC 3720 B.4: 32 bytes of zeros
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43); // RFC 3720 B.4: 32 bytes of 0xff
    const data = new Uint8Array(1000).map((_, i) => (i * 31 + 7) & 255);
    for (const cut of [0, 1, 3, 8, 9, 500, 999, 1000]) expect(crc32c(data.subarray(cut), crc32c(data.subarray(0, cut)))).toBe(crc32c(data));
    // unaligned views take the byte-wise head path
    expect(crc32c(data.subarray(3, 700))).toBe(crc32c(Uint8Array.from(data.subarray(3, 700))));
  });
});

describe('format layout', () => {
  it('packs ids in ceil(log2 V) bits, at least 1', () => {
    const cases: [number, number][] = [[1, 1], [2, 1], [3, 2], [4, 2], [5, 3], [32000, 15], [32768, 15], [32769, 16], [151936, 18], [2 ** 20, 20], [2 ** 20 + 1, 21], [2 ** 31 - 1, 31]];
    for (const [V, bits] of cases) expect([V, idBitsFor(V)]).toEqual([V, bits]);
  });
  it('writes the packed-id example of docs/STORE_FORMAT.md byte for byte, and the header fields at their offsets', async () => {
    const dir = newDir();
    const w = await SparseLogitsWriter.create(dir, { vocabSize: 3, k: 5, valueDtype: 'bf16' });
    await w.write({ indices: Int32Array.of(2, 0, 1, 1, 2), values: new Uint16Array(5), tailLogProb: Float32Array.of(-1), n: 1 });
    await w.close();
    const f = await readFile(join(dir, shardFileName(0)));
    expect(Array.from(f.subarray(HEADER_BYTES, HEADER_BYTES + 8))).toEqual([0x52, 0x02, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(f.subarray(0, 8))).toEqual([0x89, 0x4b, 0x44, 0x53, 0x4c, 0x0d, 0x0a, 0x1a]);
    expect([f.readUInt16LE(8), f.readUInt16LE(10), f.readUInt32LE(12), f.readUInt32LE(16), f.readUInt32LE(20)]).toEqual([1, 128, 0, 3, 5]);
    expect([f[24], f[25], f[26], f[27], f.readUInt32LE(28)]).toEqual([0, 2, 0, 2, 256]);
    expect([f.readBigUInt64LE(32), f.readBigUInt64LE(40), f.readUInt32LE(48), f.readUInt32LE(52), f.readBigUInt64LE(72)]).toEqual([1n, 0n, 1, 0, BigInt(f.length)]);
    expect(f.readUInt32LE(80)).toBe(crc32c(f.subarray(HEADER_BYTES)));
    expect(f.readUInt32LE(124)).toBe(crc32c(f.subarray(0, 124)));
    // block: ids 8, values pad8(10) = 16, tail 8, trailer (n = 1, CRC)
    expect(f.length).toBe(HEADER_BYTES + 8 + 16 + 8 + 8);
    expect(f.readFloatLE(HEADER_BYTES + 24)).toBe(-1);
    expect(f.readUInt32LE(f.length - 8)).toBe(1);
    expect(f.readUInt32LE(f.length - 4)).toBe(crc32c(f.subarray(HEADER_BYTES, f.length - 4)));
    const m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as { storeId: string };
    expect(f.subarray(56, 72).toString('hex')).toBe(m.storeId);
  });
  it('computes section sizes padded to 8 bytes', () => {
    const L: StoreLayout = { vocabSize: 32000, k: 3, kind: 'topk', valueDtype: 'bf16', idEncoding: 'packed', idBits: 15, tokensPerBlock: 5 };
    // 5 tokens × 3 ids × 15 bits = 225 bits → 29 bytes → 32; values 30 → 32; tail 20 → 24; trailer 8.
    expect(blockSections(L, 5)).toEqual({ ids: 32, values: 32, weights: 0, tail: 24, total: 96 });
    expect(shardBytes(L, 7)).toBe(HEADER_BYTES + 96 + blockSections(L, 2).total);
  });
});

const VALUE_DTYPES: ValueDType[] = ['f32', 'f16', 'bf16'];
const ENCODINGS: IdEncoding[] = ['packed', 'i32'];

describe('round trip', () => {
  // Shards of 24 tokens in blocks of 8: 101 tokens make 5 shards, the last one with a partial block.
  const N = 101;
  const opts = { tokensPerBlock: 8, tokensPerShard: 24 };
  for (const dtype of VALUE_DTYPES)
    for (const enc of ENCODINGS)
      for (const kind of ['topk', 'sampled'] as StoreKind[])
        it(`${dtype} values, ${enc} ids, ${kind}: bit-exact across block and shard boundaries, random access`, async () => {
          const V = 151936;
          const k = 5;
          const ref = makeData(N, k, V, dtype, kind, 17);
          const dir = newDir();
          const w = await SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: dtype, idEncoding: enc, kind, ...opts, metadata: { teacher: 'test' } });
          await writeAll(w, ref, N, k, dtype, [1, 7, 13, 30, 50]);
          expect(w.tokens).toBe(N);
          const summary = await w.close();
          expect(summary).toMatchObject({ tokens: N, shards: 5 });
          const files = (await readdir(dir)).sort();
          expect(files).toEqual(['manifest.json', ...[0, 1, 2, 3, 4].map(shardFileName)]);

          const r = await SparseLogitsReader.open(dir, { expectVocabSize: V, expectK: k, expectKind: kind, expectValueDtype: dtype, verify: true });
          expect([r.tokens, r.vocabSize, r.k, r.kind, r.valueDtype, r.complete]).toEqual([N, V, k, kind, dtype, true]);
          expect(r.metadata).toEqual({ teacher: 'test' });
          expect(r.shards.map((s) => [s.firstToken, s.tokens])).toEqual([[0, 24], [24, 24], [48, 24], [72, 24], [96, 5]]);
          expectBatch(await r.read(0, N), ref, 0, N, k, dtype);
          // Random access: arbitrary offsets and counts, crossing blocks and shards.
          const rand = rng(5);
          for (let i = 0; i < 60; i++) {
            const off = Math.floor(rand() * N);
            const cnt = Math.floor(rand() * (N - off + 1));
            expectBatch(await r.read(off, cnt), ref, off, cnt, k, dtype);
          }
          for (const [off, cnt] of [[23, 2], [24, 0], [7, 1], [8, 1], [95, 6], [100, 1], [0, 1], [N, 0]]) expectBatch(await r.read(off!, cnt!), ref, off!, cnt!, k, dtype);
          // Sequential batches (the training loop)
          let seen = 0;
          for await (const b of r.batches(17)) {
            expect(b.offset).toBe(seen);
            expectBatch(b.teacher, ref, seen, b.count, k, dtype);
            seen += b.count;
          }
          expect(seen).toBe(N);
          let ranged = 0;
          for await (const b of r.batches(10, { start: 20, end: 50 })) ranged += b.count;
          expect(ranged).toBe(30);
          expect(await r.verify()).toEqual({ shards: 5, tokens: N, bytes: summary.bytes });
          await r.close();
          // Concurrent random reads through a one-file handle cache.
          const r1 = await SparseLogitsReader.open(dir, { maxOpenFiles: 1 });
          const offs = Array.from({ length: 30 }, (_, i) => (i * 37) % (N - 9));
          const got = await Promise.all(offs.map((o) => r1.read(o, 9)));
          got.forEach((b, i) => expectBatch(b, ref, offs[i]!, 9, k, dtype));
          await r1.close();
          await expect(r1.read(0, 1)).rejects.toThrow(/the reader is closed/);
        });

  const VOCABS = [1, 2, 3, 32000, 151936, 2 ** 20, 2 ** 31 - 1];
  for (const V of VOCABS)
    for (const enc of ENCODINGS)
      it(`V=${V}, ${enc} ids (${enc === 'packed' ? idBitsFor(V) : 32} bits), k in {1, 3, 64}`, async () => {
        for (const k of [1, 3, 64]) {
          const n = 37;
          const ref = makeData(n, k, V, 'bf16', 'topk', V + k);
          const dir = newDir();
          const w = await SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: 'bf16', idEncoding: enc, tokensPerBlock: 4, tokensPerShard: 16 });
          await writeAll(w, ref, n, k, 'bf16', [5, 11]);
          await w.close();
          const r = await SparseLogitsReader.open(dir, { verify: true });
          expectBatch(await r.read(0, n), ref, 0, n, k, 'bf16');
          expectBatch(await r.read(13, 9), ref, 13, 9, k, 'bf16');
          await r.close();
        }
      });

  it('converts f32 input to the stored dtype with round-to-nearest-even (and f16/bf16 input to f32 exactly)', async () => {
    const n = 9;
    const k = 4;
    const vals = Float32Array.from({ length: n * k }, (_, i) => (i % 9 === 0 ? -Infinity : -0.1 * i - 1e-3 * i * i + (i % 5 === 0 ? NaN : 0)));
    const ids = Int32Array.from({ length: n * k }, (_, i) => i);
    for (const dtype of ['f16', 'bf16'] as const) {
      const dir = newDir();
      const w = await SparseLogitsWriter.create(dir, { vocabSize: 100, k, valueDtype: dtype });
      await w.write({ indices: ids, values: vals, n });
      await w.close();
      const r = await SparseLogitsReader.open(dir);
      const got = (await r.read(0, n)).values.toArray();
      const want = fromNumbers(vals, dtype);
      for (let i = 0; i < want.length; i++) {
        if (Number.isNaN(vals[i]!)) expect((got[i]! & 0x7fff) > (dtype === 'f16' ? 0x7c00 : 0x7f80), `NaN stays NaN at ${i}`).toBe(true);
        else expect(got[i], `element ${i}`).toBe(want[i]);
      }
      await r.close();
      // and back: f16/bf16 bits into an f32 store are exact
      const dir2 = newDir();
      const w2 = await SparseLogitsWriter.create(dir2, { vocabSize: 100, k, valueDtype: 'f32' });
      await w2.write({ indices: ids, values: want as Uint16Array, valuesDtype: dtype, n });
      await w2.close();
      const r2 = await SparseLogitsReader.open(dir2);
      const back = (await r2.read(0, n)).values.toFloat32Array();
      const exact = tensor(want, [n, k], { dtype }).toFloat32Array();
      expect(Array.from(back)).toEqual(Array.from(exact));
      await r2.close();
    }
  });

  it('accepts strided tensors and computes the tail when it is not given', async () => {
    const n = 6;
    const k = 3;
    const ld = 5; // row stride > k
    const vals = new Float32Array(n * ld).fill(99);
    const ids = new Int32Array(n * ld).fill(-1);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < k; j++) {
        vals[i * ld + j] = Math.log(0.1 * (j + 1)) - i * 0.01;
        ids[i * ld + j] = i * 10 + j;
      }
    vals[5 * ld] = 0; // p = 1: the tail is empty → -inf
    const dir = newDir();
    const w = await SparseLogitsWriter.create(dir, { vocabSize: 100, k, valueDtype: 'f32' });
    await w.write({ indices: tensor(ids, [n, k], { strides: [ld, 1] }), values: tensor(vals, [n, k], { strides: [ld, 1] }) });
    await w.close();
    const r = await SparseLogitsReader.open(dir);
    const b = await r.read(0, n);
    expect(Array.from(b.indices.toArray())).toEqual(Array.from({ length: n * k }, (_, x) => Math.floor(x / k) * 10 + (x % k)));
    const tail = b.tailLogProb.toArray();
    for (let i = 0; i < 5; i++) {
      let s = 0;
      for (let j = 0; j < k; j++) s += Math.exp(Math.fround(Math.log(0.1 * (j + 1)) - i * 0.01));
      expect(tail[i]).toBeCloseTo(Math.log1p(-s), 6);
    }
    expect(tail[5]).toBe(-Infinity);
    await r.close();
  });

  it('many concurrent random reads through a small file-handle cache (50 shards, 1 to 3 open files)', async () => {
    const k = 4;
    const n = 400;
    const ref = makeData(n, k, 1000, 'f32', 'topk', 21);
    const dir = newDir();
    const w = await SparseLogitsWriter.create(dir, { vocabSize: 1000, k, valueDtype: 'f32', tokensPerBlock: 4, tokensPerShard: 8 });
    await writeAll(w, ref, n, k, 'f32', [64]);
    await w.close();
    for (let rep = 0; rep < 12; rep++) {
      const r = await SparseLogitsReader.open(dir, { maxOpenFiles: 1 + (rep % 3) });
      const offs = Array.from({ length: 200 }, (_, i) => (i * 97 + rep * 13) % (n - 9));
      const got = await Promise.all(offs.map((o) => r.read(o, 9)));
      got.forEach((b, i) => expectBatch(b, ref, offs[i]!, 9, k, 'f32'));
      await r.close();
    }
  });

  it('an empty store opens and reads', async () => {
    const dir = newDir();
    const w = await SparseLogitsWriter.create(dir, { vocabSize: 10, k: 2, valueDtype: 'f16' });
    expect(await w.close()).toMatchObject({ tokens: 0, shards: 0, bytes: 0 });
    const r = await SparseLogitsReader.open(dir);
    expect(r.tokens).toBe(0);
    const b = await r.read(0, 0);
    expect(b.indices.shape).toEqual([0, 2]);
    let batches = 0;
    for await (const _ of r.batches(4)) batches++;
    expect(batches).toBe(0);
    await r.close();
  });
});

describe('feeds sparseKlDiv', () => {
  // sparseKlDiv needs the native kernel; say why when this build lacks it.
  const probe = (() => {
    try {
      kd.sparseKlDiv(tensor(Float32Array.of(0, 1), [1, 2]), { indices: tensor(Int32Array.of(1), [1, 1]), values: tensor(Float32Array.of(-0.5), [1, 1]), tailLogProb: tensor(Float32Array.of(-1), [1]) }, { tail: 'bucket' });
      return '';
    } catch (e) {
      return `kd.sparseKlDiv is not usable in this build: ${(e as Error).message}`;
    }
  })();
  it.skipIf(probe !== '')(`a batch read back is a sparse teacher as is, with the same loss as the tensors written${probe && ` (skipped: ${probe})`}`, async () => {
    const n = 40;
    const V = 300;
    const k = 16;
    const r = rng(4);
    const student = Float32Array.from({ length: n * V }, () => r() * 6 - 3);
    const ids = new Int32Array(n * k);
    const vals = new Float32Array(n * k);
    const tail = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const p = Array.from({ length: k }, () => r() + 0.1);
      const z = p.reduce((a, b) => a + b) / 0.9; // the k ids hold 90% of the mass
      for (let j = 0; j < k; j++) {
        ids[i * k + j] = (i * 37 + j * 11) % V;
        vals[i * k + j] = Math.log(p[j]! / z);
      }
      tail[i] = Math.log(0.1);
    }
    const dir = newDir();
    const w = await SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: 'f32', tokensPerBlock: 8, tokensPerShard: 16 });
    await w.write({ indices: ids, values: vals, tailLogProb: tail, n });
    await w.close();
    const rd = await SparseLogitsReader.open(dir, { expectVocabSize: V });
    const s = tensor(student, [n, V]);
    const direct = kd.sparseKlDiv(s, { indices: tensor(ids, [n, k]), values: tensor(vals, [n, k]), tailLogProb: tensor(tail, [n]) }, { tail: 'bucket', grad: false });
    const stored = kd.sparseKlDiv(s, await rd.read(0, n), { tail: 'bucket', grad: false });
    expect(stored.loss.item()).toBe(direct.loss.item());
    let sum = 0;
    for await (const b of rd.batches(13)) sum += kd.sparseKlDiv(tensor(student.subarray(b.offset * V, (b.offset + b.count) * V), [b.count, V]), b.teacher, { tail: 'bucket', reduction: 'sum', grad: false }).loss.item();
    expect(sum / n).toBeCloseTo(direct.loss.item(), 5);
    await rd.close();

    // docs/STORE_FORMAT.md's snippet: topk's result written as is, read back, fed to sparseKlDiv.
    const teacherLogits = tensor(Float32Array.from({ length: n * V }, () => r() * 8), [n, V]);
    const top = kd.topk(teacherLogits, k, { output: 'logprobs' });
    const dir2 = newDir();
    const w2 = await SparseLogitsWriter.create(dir2, { vocabSize: V, k, valueDtype: 'f32' });
    await w2.write(top);
    await w2.close();
    const rd2 = await SparseLogitsReader.open(dir2, { expectVocabSize: V });
    for await (const { offset, count, teacher } of rd2.batches(n)) {
      expect([offset, count]).toEqual([0, n]);
      const a = kd.sparseKlDiv(s, teacher, { tail: 'bucket', grad: false }).loss.item();
      expect(a).toBe(kd.sparseKlDiv(s, top, { tail: 'bucket', grad: false }).loss.item());
    }
    await rd2.close();
  });
});

describe('argument errors', () => {
  it('rejects bad batches with clear messages', async () => {
    const dir = newDir();
    const w = await SparseLogitsWriter.create(dir, { vocabSize: 50, k: 2, valueDtype: 'f32' });
    const ids = Int32Array.of(1, 2, 3, 50);
    const vals = new Float32Array(4);
    await expect(w.write({ indices: ids, values: vals, n: 2 })).rejects.toMatchObject({ code: 'KD_ERANGE', message: 'Expected ids in [0, 50) but indices[1, 1] is 50' });
    await expect(w.write({ indices: ids, values: vals })).rejects.toThrow(/Expected n/);
    await expect(w.write({ indices: ids.subarray(0, 2), values: vals, n: 2 })).rejects.toMatchObject({ code: 'KD_ESHAPE' });
    await expect(w.write({ indices: Int32Array.of(1, 2), values: new Uint16Array(2), n: 1 })).rejects.toMatchObject({ code: 'KD_EDTYPE' });
    await expect(w.write({ indices: Int32Array.of(1, 2), values: new Float32Array(2), weights: new Float32Array(2), n: 1 })).rejects.toThrow(/only stored by 'sampled' stores/);
    await expect(w.write({ indices: tensor(Int32Array.of(1, 2), [1, 2]), values: tensor(new Float32Array(4), [2, 2]) })).rejects.toMatchObject({ code: 'KD_ESHAPE' });
    await expect(w.write({ indices: Int32Array.of(1, 2), values: new Float32Array(2), n: 1, bogus: 1 } as never)).rejects.toThrow(/Unknown option 'bogus'/);
    await w.write({ indices: Int32Array.of(1, 2), values: new Float32Array(2), n: 1 }); // still usable after rejected batches
    await w.close();
    await expect(w.write({ indices: Int32Array.of(1, 2), values: new Float32Array(2), n: 1 })).rejects.toThrow(/the writer is closed/);
    await expect(SparseLogitsWriter.create(newDir(), { vocabSize: 0, k: 2, valueDtype: 'f32' })).rejects.toThrow(/vocabSize/);
    await expect(SparseLogitsWriter.create(newDir(), { vocabSize: 10, k: 2, valueDtype: 'f64' as never })).rejects.toThrow(/valueDtype/);
    await expect(SparseLogitsWriter.create(newDir(), { vocabSize: 10, k: 2, valueDtype: 'f32', tokensPerBlock: 8, tokensPerShard: 12 })).rejects.toThrow(/multiple of tokensPerBlock/);
    const sampled = await SparseLogitsWriter.create(newDir(), { vocabSize: 10, k: 1, valueDtype: 'f32', kind: 'sampled' });
    await expect(sampled.write({ indices: Int32Array.of(1), values: new Float32Array(1), n: 1 })).rejects.toThrow(/Expected weights/);
    await sampled.abort();
  });

  it('refuses to overwrite a store without resume, and to resume with other settings', async () => {
    const dir = newDir();
    const w = await SparseLogitsWriter.create(dir, { vocabSize: 50, k: 2, valueDtype: 'f32', metadata: { teacher: 'a' } });
    await w.write({ indices: Int32Array.of(1, 2), values: new Float32Array(2), n: 1 });
    await w.close();
    await expect(SparseLogitsWriter.create(dir, { vocabSize: 50, k: 2, valueDtype: 'f32' })).rejects.toMatchObject({ code: 'KD_EINVAL', message: expect.stringMatching(/already holds a sparse-logits store \(1 tokens in 1 shards\); pass resume: true/) });
    await expect(SparseLogitsWriter.create(dir, { vocabSize: 50, k: 3, valueDtype: 'f32', resume: true })).rejects.toThrow(/it has k 2, the writer was asked for 3/);
    await expect(SparseLogitsWriter.create(dir, { vocabSize: 50, k: 2, valueDtype: 'bf16', resume: true })).rejects.toThrow(/valueDtype f32.*bf16/);
    await expect(SparseLogitsWriter.create(dir, { vocabSize: 50, k: 2, valueDtype: 'f32', resume: true, metadata: { teacher: 'b' } })).rejects.toThrow(/metadata.teacher is 'a' there, the writer was given 'b'/);
    // tokensPerShard is checked against the store's block size (256 here) when resuming
    await expect(SparseLogitsWriter.create(dir, { vocabSize: 50, k: 2, valueDtype: 'f32', resume: true, tokensPerShard: 100 })).rejects.toThrow(/multiple of tokensPerBlock \(256, the store's\)/);
    const w2 = await SparseLogitsWriter.create(dir, { vocabSize: 50, k: 2, valueDtype: 'f32', resume: true, metadata: { teacher: 'a', more: 'x' }, tokensPerShard: 512 });
    expect(w2.resumedTokens).toBe(1);
    await w2.write({ indices: Int32Array.of(3, 4), values: new Float32Array(2), n: 1 });
    await w2.close();
    const r = await SparseLogitsReader.open(dir);
    expect(Array.from((await r.read(0, 2)).indices.toArray())).toEqual([1, 2, 3, 4]);
    expect(r.metadata).toEqual({ teacher: 'a', more: 'x' });
    await expect(r.read(1, 2)).rejects.toMatchObject({ code: 'KD_ERANGE' });
    await r.close();
  });
});

/** A closed store with a few shards, for the damage tests. */
async function smallStore(opts: { tokens?: number; k?: number; V?: number; dtype?: ValueDType; enc?: IdEncoding } = {}) {
  const n = opts.tokens ?? 44;
  const k = opts.k ?? 4;
  const V = opts.V ?? 32000;
  const dtype = opts.dtype ?? 'bf16';
  const ref = makeData(n, k, V, dtype, 'topk', 3);
  const dir = newDir();
  const w = await SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: dtype, idEncoding: opts.enc, tokensPerBlock: 8, tokensPerShard: 32 });
  await writeAll(w, ref, n, k, dtype, [9]);
  await w.close();
  return { dir, ref, n, k, V, dtype };
}

describe('damage is detected', () => {
  it('a shard cut at every byte offset of its last block', async () => {
    const { dir, n } = await smallStore();
    const file = join(dir, shardFileName(1)); // tokens 32..43: blocks of 8 and 4
    const orig = await readFile(file);
    const h = await inspectShard(file, { verify: true });
    expect(h.tokenCount).toBe(n - 32);
    const lastStart = HEADER_BYTES + blockSections(h, 8).total;
    expect(orig.length).toBe(lastStart + blockSections(h, 4).total);
    let detected = 0;
    for (let cut = lastStart; cut < orig.length; cut++) {
      await writeFile(file, orig.subarray(0, cut));
      const e = await expectFormatError(readEverything(dir), /shard-00001\.kdsl: truncated: the header says \d+ bytes \(12 tokens in 2 blocks\), the file has \d+ \(1 whole blocks\)/);
      expect(e.message).toContain(`the file has ${cut}`);
      await expectFormatError(inspectShard(file));
      detected++;
    }
    expect(detected).toBe(orig.length - lastStart);
    // Cut while a reader has it open: the block read comes up short.
    await writeFile(file, orig);
    const r = await SparseLogitsReader.open(dir);
    for (let cut = lastStart; cut < orig.length; cut += 3) {
      await truncate(file, cut);
      await expectFormatError(r.read(40, 4), /shard-00001\.kdsl: truncated at block 1/);
      await writeFile(file, orig);
    }
    await r.close();
    // A cut exactly at a block boundary (whole blocks only) is detected too: the header records the size.
    await writeFile(file, orig.subarray(0, lastStart));
    await expectFormatError(inspectShard(file), /truncated/);
  });

  it('a flipped bit anywhere in a shard (every header byte, 400 sampled data bits)', async () => {
    const { dir } = await smallStore({ enc: 'packed' });
    const file = join(dir, shardFileName(0));
    const orig = await readFile(file);
    const rand = rng(99);
    const positions: number[] = [];
    for (let byte = 0; byte < HEADER_BYTES; byte++) positions.push(byte * 8 + Math.floor(rand() * 8));
    for (let i = 0; i < 400; i++) positions.push(HEADER_BYTES * 8 + Math.floor(rand() * (orig.length - HEADER_BYTES) * 8));
    positions.push(orig.length * 8 - 1); // the last CRC bit
    const messages = new Set<string>();
    for (const bit of positions) {
      const bad = Buffer.from(orig);
      bad[bit >>> 3]! ^= 1 << (bit & 7);
      await writeFile(file, bad);
      const e = await expectFormatError(readEverything(dir));
      expect(e.message).toContain('shard-00000.kdsl');
      messages.add(e.message.replace(/0x[0-9a-f]{8}|\d+/g, '#'));
      if (bit >= HEADER_BYTES * 8) {
        // the per-block check says which block
        expect(e.message).toMatch(/shard-00000\.kdsl block \d+ \(shard tokens \d+\.\.\d+, store tokens \d+\.\.\d+\): checksum mismatch: stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}/);
        await expectFormatError(inspectShard(file, { verify: true }));
      }
    }
    await writeFile(file, orig);
    await readEverything(dir);
    expect([...messages].some((m) => m.includes('header checksum mismatch'))).toBe(true);
    expect([...messages].some((m) => m.includes('bad magic'))).toBe(true);
  });

  it('format version, vocabulary, k and store mismatches', async () => {
    const { dir, V } = await smallStore();
    await expectFormatError(SparseLogitsReader.open(dir, { expectVocabSize: 151936 }), new RegExp(`the store has vocabSize ${V}, expected 151936 \\(expectVocabSize\\)`));
    await expectFormatError(SparseLogitsReader.open(dir, { expectK: 64 }), /the store has k 4, expected 64/);
    await expectFormatError(SparseLogitsReader.open(dir, { expectValueDtype: 'f32' }), /valueDtype bf16, expected f32/);

    // A shard from a newer format version (header checksum recomputed so the version check itself fires).
    const file = join(dir, shardFileName(0));
    const orig = await readFile(file);
    const v2 = Buffer.from(orig);
    v2.writeUInt16LE(2, 8);
    v2.writeUInt32LE(crc32c(v2.subarray(0, 124)), 124);
    await writeFile(file, v2);
    await expectFormatError(readEverything(dir), /shard-00000\.kdsl: unsupported format version: expected 1, found 2 \(written by a newer kd-kernels\)/);
    // A shard whose header disagrees with the manifest (vocabulary patched within the same id width, checksum fixed).
    const vb = Buffer.from(orig);
    vb.writeUInt32LE(32001, 16);
    vb.writeUInt32LE(crc32c(vb.subarray(0, 124)), 124);
    await writeFile(file, vb);
    await expectFormatError(readEverything(dir), /shard-00000\.kdsl: vocabSize: manifest.json expects 32000, the shard header says 32001/);
    // With a different id width the layout no longer matches the file size.
    vb.writeUInt32LE(151936, 16);
    vb.writeUInt8(18, 27);
    vb.writeUInt32LE(crc32c(vb.subarray(0, 124)), 124);
    await writeFile(file, vb);
    await expectFormatError(readEverything(dir), /shard-00000\.kdsl: file size field: expected \d+ for 32 tokens, found \d+/);
    await writeFile(file, orig);

    // Manifest from a newer version
    const mpath = join(dir, 'manifest.json');
    const m = JSON.parse(await readFile(mpath, 'utf8')) as Record<string, unknown>;
    await writeFile(mpath, JSON.stringify({ ...m, formatVersion: 2 }));
    await expectFormatError(SparseLogitsReader.open(dir), /manifest\.json: unsupported format version: expected 1, found 2/);
    await writeFile(mpath, '{"format": "kd-sparse-logits", ');
    await expectFormatError(SparseLogitsReader.open(dir), /manifest\.json: not valid JSON/);
    await writeFile(mpath, JSON.stringify(m));

    // A shard of another store dropped into this one
    const other = await smallStore();
    await copyFile(join(other.dir, shardFileName(0)), file);
    await expectFormatError(readEverything(dir), /storeId \(a shard from another store\)/);
    await writeFile(file, orig);
    await readEverything(dir);

    // Not a store at all
    await expect(SparseLogitsReader.open(join(TMP, 'nope'))).rejects.toMatchObject({ code: 'KD_EIO', message: expect.stringMatching(/does not exist/) });
  });
});

describe('atomicity and resume', () => {
  const CHILD = `
    import { SparseLogitsWriter } from ${JSON.stringify(join(ROOT, 'lib/store.ts'))};
    const [dir, n, k, V] = process.argv.slice(2).map((x, i) => (i ? Number(x) : x));
    const w = await SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: 'bf16', tokensPerBlock: 8, tokensPerShard: 32, resume: true });
    const ids = new Int32Array(n * k).map((_, i) => (i * 2654435761) % V);
    const vals = new Uint16Array(n * k).map((_, i) => (i * 40503) & 0xffff);
    const tail = new Float32Array(n).map((_, i) => -i);
    for (let t = 0; t < n; t += 10) {
      const m = Math.min(10, n - t);
      await w.write({ indices: ids.subarray(t * k), values: vals.subarray(t * k), tailLogProb: tail.subarray(t), n: m });
    }
    process.stdout.write('written ' + w.tokens + '\\n');
    setInterval(() => {}, 1000); // wait to be killed, never closing
  `;
  const expected = (n: number, k: number, V: number): Ref => ({
    ids: new Int32Array(n * k).map((_, i) => (i * 2654435761) % V),
    bits: new Uint16Array(n * k).map((_, i) => (i * 40503) & 0xffff),
    tail: new Uint32Array(new Float32Array(n).map((_, i) => -i).buffer),
  });

  it('a writer SIGKILLed mid-shard leaves only complete shards; resume continues after them', async () => {
    const dir = newDir();
    const script = join(TMP, 'child-writer.mts');
    await writeFile(script, CHILD);
    const n = 90; // 2 shards of 32 finished, 26 tokens in an unfinished third (3 blocks flushed + 2 staged)
    const k = 6;
    const V = 50000;
    const child = spawn(process.execPath, ['--import', 'tsx', script, dir, String(n), String(k), String(V)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    await new Promise<void>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`child did not report: ${out} ${err}`)), 60_000);
      child.stdout.on('data', () => {
        if (out.includes('written')) {
          clearTimeout(timer);
          res();
        }
      });
      child.on('exit', (code) => rej(new Error(`child exited with ${code}: ${err}`)));
    });
    expect(out).toContain(`written ${n}`);
    child.kill('SIGKILL');
    await new Promise((res) => child.on('exit', res));

    const files = (await readdir(dir)).sort();
    expect(files).toEqual(['.kdsl.lock', '.shard-00002.kdsl.tmp', 'manifest.json', shardFileName(0), shardFileName(1)]);
    // The unfinished shard holds data, but never reads as a shard.
    const tmp = join(dir, '.shard-00002.kdsl.tmp');
    const tmpBytes = await readFile(tmp);
    expect(tmpBytes.length).toBe(HEADER_BYTES + 3 * blockSections((await inspectShard(join(dir, shardFileName(0)))), 8).total);
    await expectFormatError(inspectShard(tmp), /bad magic: expected 89 4b 44 53 4c 0d 0a 1a, found 00 00 00 00 00 00 00 00 \(an unfinished shard: its header is written last\)/);
    // Even renamed to a shard name, it is not part of the store (the manifest lists 2 shards) and fails on its own.
    await copyFile(tmp, join(dir, shardFileName(2)));
    await expectFormatError(inspectShard(join(dir, shardFileName(2))));
    await expectFormatError(SparseLogitsReader.open(dir), /the store is unfinished.*64 tokens in 2 finished shards/);
    const r = await SparseLogitsReader.open(dir, { allowIncomplete: true, verify: true });
    expect([r.tokens, r.complete]).toEqual([64, false]);
    const ref = expected(n, k, V);
    expectBatch(await r.read(0, 64), ref, 0, 64, k, 'bf16');
    await r.close();

    // Resume (the dead child's lock is stale): continues at token 64; the temp file and the bogus shard go.
    const w = await SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: 'bf16', resume: true });
    expect(w.tokens).toBe(64);
    expect((await readdir(dir)).sort()).toEqual(['.kdsl.lock', 'manifest.json', shardFileName(0), shardFileName(1)]);
    await writeAll(w, { ...ref, ids: ref.ids.subarray(64 * k), bits: ref.bits.subarray(64 * k), tail: ref.tail.subarray(64) }, n - 64, k, 'bf16', [7]);
    await w.close();
    expect((await readdir(dir)).sort()).toEqual(['manifest.json', shardFileName(0), shardFileName(1), shardFileName(2)]);
    const r2 = await SparseLogitsReader.open(dir, { verify: true });
    expectBatch(await r2.read(0, n), ref, 0, n, k, 'bf16');
    await r2.close();
  });

  it('a writer never closed (same process): readers see only finished shards; the directory stays locked', async () => {
    const dir = newDir();
    const k = 3;
    const V = 1000;
    const ref = makeData(80, k, V, 'f16', 'topk', 8);
    const w = await SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: 'f16', tokensPerBlock: 8, tokensPerShard: 32 });
    await writeAll(w, ref, 80, k, 'f16', [20]);
    expect(w.stored).toMatchObject({ tokens: 64, shards: 2 });
    const r = await SparseLogitsReader.open(dir, { allowIncomplete: true });
    expect(r.tokens).toBe(64);
    expectBatch(await r.read(0, 64), ref, 0, 64, k, 'f16');
    await r.close();
    await expectFormatError(inspectShard(join(dir, '.shard-00002.kdsl.tmp')), /unfinished shard/);
    await expect(SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: 'f16', resume: true })).rejects.toMatchObject({ code: 'KD_EIO', message: expect.stringMatching(/locked by another writer \(pid \d+, this process: a writer that was not closed\)/) });
    // checkpoint() makes the staged tokens durable without closing
    await w.checkpoint();
    expect(w.stored).toMatchObject({ tokens: 80, shards: 3 });
    await w.abort();
    const w2 = await SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: 'f16', resume: true });
    expect(w2.tokens).toBe(80);
    await w2.close();
    const r2 = await SparseLogitsReader.open(dir, { verify: true });
    expectBatch(await r2.read(0, 80), ref, 0, 80, k, 'f16');
    await r2.close();
  });

  it('a crash between renaming a shard and updating the manifest: resume adopts the shard if intact, drops it if not', async () => {
    for (const corrupt of [false, true]) {
      const { dir, ref, n, k, dtype } = await smallStore({ tokens: 70 }); // shards of 32, 32, 6
      const mpath = join(dir, 'manifest.json');
      const m = JSON.parse(await readFile(mpath, 'utf8')) as { shards: { tokens: number; bytes: number }[]; tokens: number; bytes: number; complete: boolean };
      const last = m.shards.pop()!;
      m.tokens -= last.tokens;
      m.bytes -= last.bytes;
      m.complete = false;
      await writeFile(mpath, JSON.stringify(m));
      if (corrupt) {
        const f = join(dir, shardFileName(2));
        const b = await readFile(f);
        b[b.length - 20]! ^= 4;
        await writeFile(f, b);
      }
      const r = await SparseLogitsReader.open(dir, { allowIncomplete: true });
      expect(r.tokens).toBe(64); // the unlisted shard is not part of the store
      await r.close();
      const w = await SparseLogitsWriter.create(dir, { vocabSize: 32000, k, valueDtype: dtype, resume: true });
      expect(w.tokens).toBe(corrupt ? 64 : n);
      if (corrupt) await writeAll(w, { ...ref, ids: ref.ids.subarray(64 * k), bits: ref.bits.subarray(64 * k), tail: ref.tail.subarray(64) }, n - 64, k, dtype, [4]);
      await w.close();
      const r2 = await SparseLogitsReader.open(dir, { verify: true });
      expectBatch(await r2.read(0, n), ref, 0, n, k, dtype);
      await r2.close();
    }
  });
});

describe('bytes per token', () => {
  // Measured from real files: 4096 tokens of k = 64 in one shard, default 256-token blocks.
  it('k = 64: measured from written shards, equal to the format formula, and in docs/STORE_FORMAT.md', async () => {
    const T = 4096;
    const k = 64;
    const rows: string[] = [];
    const doc = await readFile(join(ROOT, 'docs/STORE_FORMAT.md'), 'utf8');
    for (const V of [32000, 151936])
      for (const enc of ENCODINGS)
        for (const dtype of VALUE_DTYPES) {
          const dir = newDir();
          const ref = makeData(T, k, V, dtype, 'topk', 1);
          const w = await SparseLogitsWriter.create(dir, { vocabSize: V, k, valueDtype: dtype, idEncoding: enc });
          await writeAll(w, ref, T, k, dtype, [1000]);
          const s = await w.close();
          const bytes = (await readFile(join(dir, shardFileName(0)))).length;
          expect(s.bytes).toBe(bytes);
          const layout: StoreLayout = { vocabSize: V, k, kind: 'topk', valueDtype: dtype, idEncoding: enc, idBits: enc === 'i32' ? 32 : idBitsFor(V), tokensPerBlock: 256 };
          expect(bytes).toBe(shardBytes(layout, T));
          const measured = bytes / T;
          const limit = bytesPerToken(layout);
          const row = `| ${V} | ${enc} | ${dtype} | ${limit.toFixed(3)} | ${measured.toFixed(3)} |`;
          rows.push(row);
          expect(doc, `docs/STORE_FORMAT.md should contain the measured row\n${row}`).toContain(row);
          await rm(dir, { recursive: true });
        }
    console.log(['| V | ids | values | bytes/token (format, full blocks) | measured, 4096 tokens in one shard |', ...rows].join('\n'));
  });
});
