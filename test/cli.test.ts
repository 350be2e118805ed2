/**
 * `kd-kernels topk`: the command logic end to end on small .npy / safetensors files
 * (with a float64 reference topk injected, and kd.topk itself where it is exported),
 * interruption and --resume, progress output, argument parsing, and the binary.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { SparseLogitsReader, SparseLogitsWriter, fromNumbers, tensor } from '../lib/index.js';
import { ProgressBar, parseTopkArgs, runTopk, type TopkFn, type TopkResult } from '../lib/cli/topk.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../..');

/** Why kd.topk cannot run in this build ('' when it can): the native kernel may not be built yet. */
const TOPK_MISSING = await (async () => {
  try {
    await kd.topkAsync(tensor(Float32Array.of(1, 2, 3), [1, 3]), 2, { output: 'logprobs' });
    return '';
  } catch (e) {
    return `kd.topk is not usable in this build: ${(e as Error).message}`;
  }
})();
let TMP: string;
beforeAll(async () => {
  TMP = await mkdtemp(join(tmpdir(), 'kd-cli-test-'));
});
afterAll(async () => {
  await rm(TMP, { recursive: true, force: true });
});
let count = 0;
const tmpPath = (name: string): string => join(TMP, `${count++}-${name}`);

/** Float64 reference: log-softmax(x / T), top k by descending value, tail = log of the rest (no cancellation). */
const referenceTopk: TopkFn = (logits, k, { temperature = 1 }) => {
  const [n, V] = logits.shape as [number, number];
  const x = logits.toFloat32Array();
  const values = new Float32Array(n * k);
  const indices = new Int32Array(n * k);
  const tail = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const row = Array.from(x.subarray(i * V, (i + 1) * V), (v) => v / temperature);
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
    const order = row.map((_, j) => j).sort((a, b) => row[b]! - row[a]! || a - b);
    let rest = 0;
    for (let j = k; j < V; j++) rest += Math.exp(row[order[j]!]! - m);
    for (let j = 0; j < k; j++) {
      indices[i * k + j] = order[j]!;
      values[i * k + j] = row[order[j]!]! - lse;
    }
    tail[i] = rest > 0 ? Math.log(rest) + m - lse : -Infinity;
  }
  return { values: tensor(values, [n, k]), indices: tensor(indices, [n, k]), tailLogProb: tensor(tail, [n]) };
};

/** Distinct logits (no ties), peaked so the top-k hold most of the mass. */
function logits(rows: number, V: number): Float32Array {
  return Float32Array.from({ length: rows * V }, (_, i) => {
    const r = Math.floor(i / V);
    const j = i % V;
    return ((j * 7919 + r * 104729) % V) / (V / 12) + (j === r % V ? 5 : 0) + j * 1e-4;
  });
}

function npy(descr: string, shape: number[], data: Uint8Array): Uint8Array {
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}), }`;
  header += ' '.repeat((64 - ((10 + header.length + 1) % 64)) % 64) + '\n';
  const out = new Uint8Array(10 + header.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, header.length & 0xff, header.length >> 8]);
  out.set(new TextEncoder().encode(header), 10);
  out.set(data, 10 + header.length);
  return out;
}
const bytes = (a: Float32Array | Uint16Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** A fake stderr that records writes. */
function sink(isTTY: boolean): { write(s: string): boolean; isTTY: boolean; columns: number; text: () => string } {
  const parts: string[] = [];
  return { write: (s: string) => (parts.push(s), true), isTTY, columns: 100, text: () => parts.join('') };
}

/** Every token of a store as plain arrays. */
async function readStore(dir: string, opts: { allowIncomplete?: boolean } = {}) {
  const r = await SparseLogitsReader.open(dir, { ...opts, verify: true });
  const b = await r.read(0, r.tokens);
  const out = { tokens: r.tokens, complete: r.complete, metadata: r.metadata, ids: Array.from(b.indices.toArray()), values: Array.from(b.values.toArray()), tail: Array.from(b.tailLogProb.toArray()), valueDtype: r.valueDtype };
  await r.close();
  return out;
}

describe('kd-kernels topk (command logic)', () => {
  const ROWS = 300;
  const V = 50;
  const K = 8;
  const x = logits(ROWS, V);

  it('.npy f32 → store: ids, bf16 values and tails equal the reference; one summary line off a TTY', async () => {
    const input = tmpPath('logits.npy');
    await writeFile(input, npy('<f4', [3, 100, V], bytes(x)));
    const out = tmpPath('store');
    const err = sink(false);
    const res = await runTopk({ input, out, k: K, temperature: 2, batch: 64, tokensPerShard: 128, tokensPerBlock: 16, topk: referenceTopk, stderr: err });
    expect(res).toMatchObject({ rows: ROWS, vocabSize: V, k: K, written: ROWS, skipped: 0, tokens: ROWS, shards: 3, interrupted: false });
    const lines = err.text().split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^topk: wrote 300 tokens of 300 from \d+-logits\.npy to .* in \d+\.\d s, [\d.]+k? tok\/s; k=8, V=50, 3 shards, [\d.]+ bytes\/token$/);
    const ref = referenceTopk(tensor(x, [ROWS, V]), K, { temperature: 2, output: 'logprobs' }) as TopkResult;
    const s = await readStore(out);
    expect(s.tokens).toBe(ROWS);
    expect(s.complete).toBe(true);
    expect(s.valueDtype).toBe('bf16');
    expect(s.metadata).toMatchObject({ producer: 'kd-kernels topk', temperature: '2', sourceShape: '[3, 100, 50]', sourceDtype: 'f32', output: 'logprobs' });
    expect(s.ids).toEqual(Array.from(ref.indices.toArray()));
    expect(s.values).toEqual(Array.from(fromNumbers(ref.values.toArray() as Float32Array, 'bf16')));
    expect(s.tail).toEqual(Array.from(ref.tailLogProb.toArray()));
    expect(res.bytesPerToken).toBeCloseTo(res.bytes / ROWS, 10);
  });

  it('interrupted after two batches, then --resume: the same store as one uninterrupted run', async () => {
    const raw = Uint16Array.from(new Uint32Array(x.buffer), (u) => u >>> 16); // bf16 bits (truncated; fine for a test input)
    const input = tmpPath('logits-bf16.npy');
    await writeFile(input, npy('<u2', [ROWS, V], bytes(raw)));
    const ac = new AbortController();
    const out = tmpPath('store');
    const common = { input, out, k: K, batch: 50, tokensPerShard: 64, tokensPerBlock: 16, valueDtype: 'f32' as const, topk: referenceTopk };
    const first = await runTopk({ ...common, stderr: sink(false), signal: ac.signal, onBatch: (done) => done >= 100 && ac.abort() });
    expect(first).toMatchObject({ interrupted: true, written: 100, skipped: 0, tokens: 100 });
    const partial = await readStore(out, { allowIncomplete: true });
    expect([partial.tokens, partial.complete]).toEqual([100, false]);
    await expect(SparseLogitsReader.open(out)).rejects.toMatchObject({ code: 'KD_EFORMAT', message: expect.stringMatching(/unfinished/) });

    // Without --resume the directory is refused, with a hint.
    await expect(runTopk({ ...common, stderr: sink(false) })).rejects.toMatchObject({ code: 'KD_EINVAL', message: expect.stringMatching(/already holds a sparse-logits store \(100 tokens in 2 shards, unfinished\); pass --resume to continue it, or choose another --out/) });
    // A different temperature is a different store.
    await expect(runTopk({ ...common, temperature: 3, resume: true, stderr: sink(false) })).rejects.toThrow(/metadata.temperature is '1' there, the writer was given '3'/);

    let seen = 0;
    const second = await runTopk({ ...common, resume: true, stderr: sink(false), onBatch: () => seen++ });
    expect(second).toMatchObject({ interrupted: false, written: 200, skipped: 100, tokens: ROWS });
    expect(seen).toBe(4); // only the remaining rows went through topk
    const resumed = await readStore(out);

    const once = tmpPath('store-once');
    await runTopk({ ...common, out: once, stderr: sink(false) });
    const whole = await readStore(once);
    expect(resumed.complete).toBe(true);
    expect(resumed.ids).toEqual(whole.ids);
    expect(resumed.values).toEqual(whole.values);
    expect(resumed.tail).toEqual(whole.tail);
    expect(resumed.metadata).toEqual(whole.metadata);

    // Resuming a finished store writes nothing.
    const again = await runTopk({ ...common, resume: true, stderr: sink(false) });
    expect(again).toMatchObject({ written: 0, skipped: ROWS, tokens: ROWS });
  });

  it('safetensors input by tensor name, f16 values, i32 ids', async () => {
    const header = JSON.stringify({ other: { dtype: 'F32', shape: [1, 2], data_offsets: [0, 8] }, teacher_logits: { dtype: 'F32', shape: [ROWS, V], data_offsets: [8, 8 + x.byteLength] } });
    const h = header + ' '.repeat((8 - (header.length % 8)) % 8);
    const file = new Uint8Array(8 + h.length + 8 + x.byteLength);
    new DataView(file.buffer).setBigUint64(0, BigInt(h.length), true);
    file.set(new TextEncoder().encode(h), 8);
    file.set(bytes(x), 8 + h.length + 8);
    const input = tmpPath('logits.safetensors');
    await writeFile(input, file);
    const out = tmpPath('store');
    await expect(runTopk({ input, out, k: K, topk: referenceTopk, stderr: sink(false) })).rejects.toThrow(/choose one by name \(--tensor\)/);
    const res = await runTopk({ input, out, k: K, tensor: 'teacher_logits', valueDtype: 'f16', idEncoding: 'i32', topk: referenceTopk, progress: 'none', stderr: sink(false) });
    expect(res.tokens).toBe(ROWS);
    const s = await readStore(out);
    const ref = referenceTopk(tensor(x, [ROWS, V]), K, { output: 'logprobs' }) as TopkResult;
    expect(s.ids).toEqual(Array.from(ref.indices.toArray()));
    expect(s.values).toEqual(Array.from(fromNumbers(ref.values.toArray() as Float32Array, 'f16')));
    expect(s.metadata.source).toMatch(/logits\.safetensors:teacher_logits$/);
  });

  it('draws a progress bar on a TTY (tokens done/total, tokens/s, ETA)', async () => {
    const input = tmpPath('logits.npy');
    await writeFile(input, npy('<f4', [ROWS, V], bytes(x)));
    let clock = 0;
    const err = sink(true);
    await runTopk({ input, out: tmpPath('store'), k: K, batch: 30, topk: referenceTopk, stderr: err, now: () => (clock += 250) });
    const text = err.text();
    const frames = text.split('\r\x1b[2K').filter(Boolean);
    expect(frames.length).toBeGreaterThan(5);
    expect(frames[0]).toMatch(/^topk \[-+\]   0% 0\/300 tokens/);
    expect(text).toMatch(/topk \[#+-+\]  50% 150\/300 tokens  [\d.]+ tok\/s  ETA \d+:\d\d/);
    expect(text).toContain('100% 300/300 tokens');
    expect(text.trimEnd().split('\n').pop()).toMatch(/^topk: wrote 300 tokens/);
    // the bar fits the terminal
    const bar = new ProgressBar({ write: () => true, columns: 60 }, 1_000_000, 0, () => 0);
    expect(bar.line(123_456).length).toBeLessThanOrEqual(80);
  });

  it('rejects k > V, resuming from another input, and a store with more tokens than the input', async () => {
    const input = tmpPath('logits.npy');
    await writeFile(input, npy('<f4', [ROWS, V], bytes(x)));
    await expect(runTopk({ input, out: tmpPath('store'), k: V + 1, topk: referenceTopk, stderr: sink(false) })).rejects.toThrow(/Expected k <= 50/);
    const out = tmpPath('store');
    await runTopk({ input, out, k: K, topk: referenceTopk, stderr: sink(false) });
    const small = tmpPath('small.npy');
    await writeFile(small, npy('<f4', [10, V], bytes(x.subarray(0, 10 * V))));
    await expect(runTopk({ input: small, out, k: K, resume: true, topk: referenceTopk, stderr: sink(false) })).rejects.toThrow(/metadata.sourceShape is '\[300, 50\]' there, the writer was given '\[10, 50\]'/);
    // A store written through the API (no source metadata) with more tokens than the input.
    const api = tmpPath('store-api');
    const w = await SparseLogitsWriter.create(api, { vocabSize: V, k: K, valueDtype: 'bf16' });
    await w.write({ indices: new Int32Array(20 * K), values: new Float32Array(20 * K), n: 20 });
    await w.close();
    await expect(runTopk({ input: small, out: api, k: K, resume: true, topk: referenceTopk, stderr: sink(false) })).rejects.toThrow(/already holds 20 tokens, more than the 10 rows of .*small\.npy: not the same input\?/);
  });

  it.skipIf(TOPK_MISSING !== '')(`with kd.topk itself${TOPK_MISSING && ` (skipped: ${TOPK_MISSING})`}`, async () => {
    const input = tmpPath('logits.npy');
    await writeFile(input, npy('<f4', [ROWS, V], bytes(x)));
    const out = tmpPath('store');
    await runTopk({ input, out, k: K, valueDtype: 'f32', stderr: sink(false) }); // default topk = kd.topk
    const s = await readStore(out);
    const ref = referenceTopk(tensor(x, [ROWS, V]), K, { output: 'logprobs' }) as TopkResult;
    expect(s.ids).toEqual(Array.from(ref.indices.toArray()));
    const rv = ref.values.toArray();
    for (let i = 0; i < rv.length; i++) expect(Math.abs(s.values[i]! - rv[i]!)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(rv[i]!)));
    const rt = ref.tailLogProb.toArray();
    for (let i = 0; i < rt.length; i++) expect(Math.abs(s.tail[i]! - rt[i]!)).toBeLessThanOrEqual(1e-4 * (1 + Math.abs(rt[i]!)));
  });
});

describe('kd-kernels topk (arguments)', () => {
  it('parses flags', () => {
    expect(parseTopkArgs(['in.npy', '--out', 'o', '--k', '64'])).toEqual({ options: { input: 'in.npy', out: 'o', k: 64, resume: false, progress: 'auto' }, json: false, help: false });
    const p = parseTopkArgs(['-o', 'o', '--k=4', 'in.safetensors', '--tensor', 'logits', '--temperature', '2.5', '--value-dtype', 'f16', '--id-encoding', 'i32', '--batch', '128', '--resume', '--tokens-per-shard', '4096', '--tokens-per-block', '64', '--u2-as', 'f16', '--device', 'cuda:1', '--no-progress', '--json']);
    expect(p).toEqual({
      options: { input: 'in.safetensors', out: 'o', k: 4, tensor: 'logits', temperature: 2.5, valueDtype: 'f16', idEncoding: 'i32', batch: 128, resume: true, tokensPerShard: 4096, tokensPerBlock: 64, u2As: 'f16', device: 'cuda:1', progress: 'none' },
      json: true,
      help: false,
    });
    expect(parseTopkArgs(['--help']).help).toBe(true);
  });
  it('explains bad flags', () => {
    const cases: [string[], RegExp][] = [
      [['--out', 'o', '--k', '4'], /missing the input file/],
      [['a.npy', 'b.npy', '--out', 'o', '--k', '4'], /expected one input file, got 2/],
      [['a.npy', '--k', '4'], /missing --out/],
      [['a.npy', '--out', 'o'], /missing --k/],
      [['a.npy', '--out', 'o', '--k', 'many'], /--k expects a positive integer, got 'many'/],
      [['a.npy', '--out', 'o', '--k', '4', '--value-dtype', 'f64'], /--value-dtype expects one of f32, f16, bf16, got 'f64'/],
      [['a.npy', '--out', 'o', '--k', '4', '--temperature', '0'], /--temperature expects a number > 0/],
      [['a.npy', '--out', 'o', '--k', '4', '--fast'], /unknown option --fast/],
      [['a.npy', '--out'], /--out needs a value/],
    ];
    for (const [argv, re] of cases) expect(() => parseTopkArgs(argv)).toThrow(re);
  });
});

describe('kd-kernels binary', () => {
  const run = (args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/kd-kernels.ts'), ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env } });
  it('topk: usage errors exit 2 with the usage; info still works', () => {
    const bad = run(['topk', 'x.npy']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('kd-kernels topk: missing --out <dir>');
    expect(bad.stderr).toContain('usage: kd-kernels topk');
    const help = run(['topk', '--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('--resume');
    const info = run(['info']);
    expect(info.status).toBe(0);
    expect(info.stdout).toMatch(/^kd-kernels \d+\.\d+\.\d+/);
  });
  it('topk: runs on a .npy (or says kd.topk is missing from this build)', async () => {
    const input = tmpPath('bin.npy');
    const V = 20;
    await writeFile(input, npy('<f4', [40, V], bytes(logits(40, V))));
    const out = tmpPath('bin-store');
    const res = run(['topk', input, '--out', out, '--k', '4', '--json']);
    if (TOPK_MISSING) {
      // The command fails cleanly, naming the cause.
      expect(res.status).toBe(1);
      expect(res.stderr).toMatch(/^kd-kernels topk: .*\[KD_[A-Z]+\]\n$/);
      return;
    }
    expect(res.status, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toMatchObject({ tokens: 40, k: 4, vocabSize: V, interrupted: false });
    expect(res.stderr).toMatch(/^topk: wrote 40 tokens/);
  });
});
