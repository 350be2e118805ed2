/**
 * The CPU output pool (native/binding/pool.cc, lib/memory.ts): outputs the ops allocate
 * come from reusable blocks that are not zero-filled.
 *
 * - Every kernel writes every element it returns: each op runs (with ignored rows, masks,
 *   per-token outputs, mixed dtypes) once with every pooled block poisoned with 0xFF
 *   bytes (NaN in f32 / f16 / bf16, -1 in i32) and once with 0x00; the outputs must be
 *   bitwise identical. An element a kernel skipped would differ.
 * - dispose() returns the block and detaches its ArrayBuffer (a kept view reads as
 *   length 0; the tensor says KD_EDISPOSED); a collected tensor returns it through its
 *   finalizer, or earlier when V8 has collected its ArrayBuffer (synchronous loops).
 * - The cap bounds idle + in-use bytes; beyond it outputs are plain arrays (counted).
 */
import v8 from 'node:v8';
import { PerformanceObserver, constants } from 'node:perf_hooks';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { _poolDebug } from '../lib/tensor.js';
import { numberToBf16 } from '../lib/dtype.js';
import { errorOf, firstDiffs, peakedLogits } from './helpers.js';

v8.setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const tick = () => new Promise((r) => setImmediate(r));

const DEFAULT_CAP = kd.memory().cpu.capBytes;
afterEach(() => {
  _poolDebug(-1);
  kd.setMemoryLimit(DEFAULT_CAP);
});

const N = 13, V = 1271, LD = 1300;
const sF = peakedLogits(N, V, 1, LD), tF = peakedLogits(N, V, 2, LD);
const s = kd.tensor(sF, [N, V], { strides: [LD, 1] });
const t = kd.tensor(tF, [N, V], { strides: [LD, 1] });
const sB = kd.tensor(Uint16Array.from(sF, numberToBf16), [N, V], { dtype: 'bf16', strides: [LD, 1] });
const tB = kd.tensor(Uint16Array.from(tF, numberToBf16), [N, V], { dtype: 'bf16', strides: [LD, 1] });
const labels = Int32Array.from({ length: N }, (_, i) => (i % 4 === 1 ? -100 : (i * 37) % V));
const allIgnored = new Int32Array(N).fill(-100);
const mask = Uint8Array.from({ length: N }, (_, i) => (i % 3 === 0 ? 0 : 1));
const weights = Float32Array.from({ length: N }, (_, i) => 0.5 + (i % 5) * 0.25);
const sampled = Int32Array.from({ length: N }, (_, i) => (i * 101) % V);
const K = 7;
const ids = Int32Array.from({ length: N * K }, (_, j) => ((j % K) * 97 + Math.floor(j / K)) % V);
const sparse = {
  indices: kd.tensor(ids, [N, K]),
  values: kd.tensor(Float32Array.from({ length: N * K }, (_, j) => -2 - (j % K) * 0.5), [N, K]),
  tailLogProb: kd.tensor(new Float32Array(N).fill(-0.9), [N]),
};
const sampledTeacher = { indices: kd.tensor(ids, [N, K]), weights: kd.tensor(Float32Array.from({ length: N * K }, (_, j) => 0.1 + (j % 3) * 0.2), [N, K]) };

type Outs = Record<string, kd.Tensor | undefined>;
const CASES: Record<string, () => Outs> = {
  'klDiv forward, labels': () => ({ ...kd.klDiv(s, t, { labels }) }),
  'klDiv forward, all ignored': () => ({ ...kd.klDiv(s, t, { labels: allIgnored }) }),
  'klDiv reverse, mask, none': () => ({ ...kd.klDiv(s, t, { direction: 'reverse', mask, reduction: 'none' }) }),
  'klDiv bf16, grad bf16': () => ({ ...kd.klDiv(sB, tB, { labels, temperature: 2 }) }),
  'klDiv bf16/f32, grad f32': () => ({ ...kd.klDiv(sB, t, { labels, gradDtype: 'f32' }) }),
  'jsd, weights, none': () => ({ ...kd.jsd(s, t, { beta: 0.3, weights, reduction: 'none', gradScale: 0.5 }) }),
  'tvd, mask': () => ({ ...kd.tvd(s, t, { mask }) }),
  'skewKl, all ignored, none': () => ({ ...kd.skewKl(s, t, { mask: new Uint8Array(N), reduction: 'none' }) }),
  'distillationLoss jsd': () => ({ ...kd.distillationLoss(s, t, labels, { divergence: 'jsd', labelSmoothing: 0.1, hardWeight: 0.5, softWeight: 0.5 }) }),
  'distillationLoss CE only, all ignored': () => ({ ...kd.distillationLoss(s, t, allIgnored, { divergence: 'forward-kl', softWeight: 0, hardWeight: 1 }) }),
  'tokenStats, sampled': () => ({ ...kd.tokenStats(s, t, { sampled }) }),
  'tokenStats, no sampled': () => ({ ...kd.tokenStats(sB, tB) }),
  'topk logprobs': () => ({ ...kd.topk(t, K, { output: 'logprobs' }) }),
  'topk bf16 logits': () => ({ ...kd.topk(tB, K) }),
  'topk k = V': () => ({ ...kd.topk(kd.tensor(tF.subarray(0, 3 * 40), [3, 40]), 40) }),
  sampleTeacher: () => ({ ...kd.sampleTeacher(t, 9, { seed: 7n, proposalPower: 0.5 }) }),
  'sparseKlDiv bucket, labels': () => ({ ...kd.sparseKlDiv(s, sparse, { tail: 'bucket', labels }) }),
  'sparseKlDiv sampled, none': () => ({ ...kd.sparseKlDiv(s, sampledTeacher, { tail: 'sampled', reduction: 'none', mask }) }),
};

/** The outputs' bytes (copies), each with its dtype. */
function snapshot(r: Outs): Record<string, { dtype: string; bytes: Buffer }> {
  const out: Record<string, { dtype: string; bytes: Buffer }> = {};
  for (const [k, v] of Object.entries(r)) {
    if (!v) continue;
    const a = v.toArray();
    out[k] = { dtype: v.dtype, bytes: Buffer.from(a.buffer, a.byteOffset, a.byteLength).subarray(0) };
    out[k]!.bytes = Buffer.from(out[k]!.bytes); // copy
  }
  return out;
}

describe('output pool: kernels write every element they return', () => {
  for (const [name, run] of Object.entries(CASES)) {
    it(name, () => {
      const before = kd.memory().cpu;
      _poolDebug(0xff, 1); // every output pooled, even the scalar loss
      const r1 = run();
      const poisoned = snapshot(r1);
      for (const v of Object.values(r1)) v?.dispose();
      _poolDebug(0x00, 1);
      const r0 = run();
      const zeroed = snapshot(r0);
      for (const v of Object.values(r0)) v?.dispose();
      const after = kd.memory().cpu;
      // the outputs really came from the pool
      const outputs = Object.keys(poisoned).length + Object.keys(zeroed).length;
      expect(after.reused + after.fresh - before.reused - before.fresh).toBeGreaterThanOrEqual(outputs);
      expect(Object.keys(poisoned).sort()).toEqual(Object.keys(zeroed).sort());
      const bad = Object.keys(poisoned).filter((k) => !poisoned[k]!.bytes.equals(zeroed[k]!.bytes));
      const detail = bad.map((k) => `${k}: ${firstDiffs(poisoned[k]!.bytes, zeroed[k]!.bytes, poisoned[k]!.dtype)}`).join('\n');
      expect(bad, `outputs that depend on the pooled memory's old contents (0xff vs 0x00):\n${detail}`).toEqual([]);
    });
  }
});

describe('output pool: dispose, finalizers, cap', () => {
  const big = { s: kd.tensor(peakedLogits(8, 4096, 3), [8, 4096]), t: kd.tensor(peakedLogits(8, 4096, 4), [8, 4096]) };
  const GRAD = 8 * 4096 * 4;

  it('dispose() returns the block at once and detaches the ArrayBuffer: a kept view reads as length 0', () => {
    const m0 = kd.memory().cpu;
    const r = kd.klDiv(big.s, big.t);
    const view = r.grad!.toArray();
    expect(view.length).toBe(8 * 4096);
    expect(kd.memory().cpu.inUseBytes - m0.inUseBytes).toBeGreaterThanOrEqual(GRAD);
    r.grad!.dispose();
    expect(view.length).toBe(0);
    expect(view[0]).toBeUndefined();
    expect(errorOf(() => r.grad!.toArray()).code).toBe('KD_EDISPOSED');
    expect(kd.memory().cpu.inUseBytes).toBe(m0.inUseBytes);
    // the next call reuses the block, and its result is right (same as a preallocated call)
    const m1 = kd.memory().cpu;
    const r2 = kd.klDiv(big.s, big.t);
    expect(kd.memory().cpu.reused).toBe(m1.reused + 1);
    const g = kd.zeros([8, 4096]);
    const r3 = kd.klDiv(big.s, big.t, { grad: g });
    expect(Buffer.from((r2.grad!.toArray() as Float32Array).buffer).equals(Buffer.from((g.toArray() as Float32Array).buffer))).toBe(true);
    expect(r2.loss.item()).toBe(r3.loss.item());
    r2.grad!.dispose();
  });

  it('a view kept past dispose() never sees the next output written into the same block', () => {
    const r = kd.klDiv(big.s, big.t);
    const kept = r.grad!.toArray();
    const keptBuf = kept.buffer;
    r.grad!.dispose();
    const r2 = kd.klDiv(big.s, big.t, { temperature: 3 });
    expect(kept.length).toBe(0);
    expect(keptBuf.byteLength).toBe(0);
    expect(r2.grad!.toArray().length).toBe(8 * 4096);
    r2.grad!.dispose();
  });

  it('tensors dropped without dispose() return their blocks (finalizer, or GC in a synchronous loop)', async () => {
    await tick();
    gc();
    await tick();
    const m0 = kd.memory().cpu;
    // a synchronous loop that never disposes: GC clears the dropped ArrayBuffers and the
    // pool reclaims their blocks without waiting for the finalizers
    for (let k = 0; k < 200; k++) {
      kd.klDiv(big.s, big.t);
      if (k % 10 === 9) gc();
    }
    const m1 = kd.memory().cpu;
    expect(m1.fresh - m0.fresh, `fresh blocks in 200 undisposed calls (reused ${m1.reused - m0.reused})`).toBeLessThanOrEqual(20);
    for (let r = 0; r < 4; r++) {
      gc();
      await tick();
    }
    expect(kd.memory().cpu.inUseBytes).toBe(m0.inUseBytes);
  });

  it('a default call whose gradients are disposed runs no young collection (its small outputs are made before the gradient)', async () => {
    // V8 runs a young collection at an external allocation made while a young ArrayBuffer
    // of >= 32 MiB is alive: a call that took its 41 MB gradient from the pool before
    // allocating its loss paid one per call (0.2-0.5 ms at 512 x 32000 on 2 cores).
    const n = 320, v = 32000;
    const s = kd.tensor(peakedLogits(n, v, 11), [n, v]);
    const t = kd.tensor(peakedLogits(n, v, 12), [n, v]);
    kd.klDiv(s, t).grad!.dispose(); // the block exists
    await tick();
    gc();
    await tick();
    const minor: number[] = [];
    const obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) minor.push((e as unknown as { detail?: { kind?: number } }).detail?.kind ?? -1);
    });
    obs.observe({ entryTypes: ['gc'] });
    const calls = 20;
    for (let k = 0; k < calls; k++) {
      const r = kd.klDiv(s, t);
      r.grad!.dispose();
    }
    await new Promise((r) => setTimeout(r, 50)); // gc entries are delivered asynchronously
    obs.disconnect();
    const young = minor.filter((kind) => kind === constants.NODE_PERFORMANCE_GC_MINOR).length;
    expect(young, `young collections in ${calls} disposed default calls (gc kinds seen: ${minor.join(', ') || 'none'})`).toBeLessThanOrEqual(2);
  });

  it('a rejected grad option gives back the outputs made before it (klDiv, distillationLoss per token, sparseKlDiv)', () => {
    // Ops make their small outputs before the gradient; with N = 20000 rows the per-row
    // losses (80 KB each) come from the pool, and a bad `grad` must not leave them in use.
    const n = 20000, v = 4, k = 2;
    const s = kd.tensor(peakedLogits(n, v, 21), [n, v]);
    const t = kd.tensor(peakedLogits(n, v, 22), [n, v]);
    const bad = kd.tensor(new Float32Array(n * (v + 1)), [n, v + 1]);
    const labels = new Int32Array(n).fill(1);
    const top = kd.topk(t, k, { output: 'logprobs' });
    const m0 = kd.memory().cpu;
    const calls: [string, () => unknown][] = [
      ['klDiv', () => kd.klDiv(s, t, { reduction: 'none', grad: bad })],
      ['distillationLoss', () => kd.distillationLoss(s, t, labels, { reduction: 'none', grad: bad })],
      ['sparseKlDiv', () => kd.sparseKlDiv(s, top, { tail: 'bucket', reduction: 'none', grad: bad })],
    ];
    try {
      for (const [name, call] of calls) {
        expect(errorOf(call), name).toMatchObject({ code: 'KD_ESHAPE' });
        expect(kd.memory().cpu.inUseBytes, `${name}: bytes in use after the rejected call`).toBe(m0.inUseBytes);
      }
    } finally {
      for (const x of Object.values(top)) x.dispose();
    }
  });

  it('the cap bounds pooled + in-use bytes; beyond it outputs are plain arrays, still right', () => {
    kd.trimMemory();
    expect(kd.memory().cpu.pooledBytes).toBe(0);
    kd.setMemoryLimit(GRAD); // one gradient
    const m0 = kd.memory().cpu;
    const a = kd.klDiv(big.s, big.t);
    const b = kd.klDiv(big.s, big.t); // over the cap: a plain array
    const m1 = kd.memory().cpu;
    expect(m1.overCap).toBe(m0.overCap + 1);
    expect(m1.inUseBytes + m1.pooledBytes).toBeLessThanOrEqual(GRAD);
    expect(Buffer.from((a.grad!.toArray() as Float32Array).buffer).equals(Buffer.from((b.grad!.toArray() as Float32Array).buffer))).toBe(true);
    const view = b.grad!.toArray();
    b.grad!.dispose(); // a plain array: dropped, not detached
    expect(view.length).toBe(8 * 4096);
    a.grad!.dispose();
    expect(kd.memory().cpu.pooledBytes).toBeLessThanOrEqual(GRAD);
    kd.setMemoryLimit(0);
    expect(kd.memory().cpu.pooledBytes).toBe(0);
    const c = kd.klDiv(big.s, big.t);
    expect(kd.memory().cpu.overCap).toBe(m1.overCap + 1);
    c.grad!.dispose();
  });

  it('trimMemory keeps at most keepBytes idle', () => {
    const rs = Array.from({ length: 4 }, () => kd.klDiv(big.s, big.t));
    for (const r of rs) r.grad!.dispose();
    expect(kd.memory().cpu.pooledBytes).toBeGreaterThanOrEqual(4 * GRAD);
    kd.trimMemory(2 * GRAD);
    expect(kd.memory().cpu.pooledBytes).toBeLessThanOrEqual(2 * GRAD);
    kd.trimMemory();
    expect(kd.memory().cpu.pooledBytes).toBe(0);
  });

  it('memory() has the CPU figures (and CUDA where the build has a pool)', () => {
    const m = kd.memory();
    for (const k of ['pooledBytes', 'inUseBytes', 'capBytes', 'minBytes', 'reused', 'fresh', 'overCap'] as const) expect(typeof m.cpu[k]).toBe('number');
    if (m.cuda) for (const d of m.cuda) expect(d.reservedBytes).toBeGreaterThanOrEqual(d.usedBytes);
  });

  it('bad arguments are errors that name the argument', () => {
    expect(errorOf(() => kd.setMemoryLimit(-1))).toMatchObject({ name: 'RangeError', message: expect.stringMatching(/bytes/) });
    expect(errorOf(() => kd.setMemoryLimit('1' as unknown as number))).toMatchObject({ name: 'TypeError', message: expect.stringMatching(/bytes/) });
    expect(errorOf(() => kd.trimMemory(1.5))).toMatchObject({ name: 'RangeError', message: expect.stringMatching(/keepBytes/) });
  });

  it('async calls: outputs are pooled and disposable like sync ones', async () => {
    const m0 = kd.memory().cpu;
    const rs = await Promise.all(Array.from({ length: 6 }, () => kd.klDivAsync(big.s, big.t)));
    expect(kd.memory().cpu.inUseBytes - m0.inUseBytes).toBeGreaterThanOrEqual(6 * GRAD);
    const ref = Buffer.from((rs[0]!.grad!.toArray() as Float32Array).slice().buffer);
    for (const r of rs) expect(Buffer.from((r.grad!.toArray() as Float32Array).buffer).equals(ref)).toBe(true);
    for (const r of rs) r.grad!.dispose();
    expect(kd.memory().cpu.inUseBytes).toBe(m0.inUseBytes);
  });
});
