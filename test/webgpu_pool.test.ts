/**
 * The WebGPU output pool (lib/webgpu/pool.ts): op outputs, uploads and kd.empty /
 * kd.zeros take storage buffers that are reused across calls and not cleared.
 *
 * - Every WGSL kernel writes every element it returns: each op runs (ignored rows, masks,
 *   per-token outputs, 16-bit inputs) once with every buffer it is handed filled with
 *   0xFF bytes (NaN in f32 / bf16, -1 in i32) and once with 0x00; the outputs must be
 *   bitwise identical. An element a kernel skipped, or a kernel that counted on WebGPU's
 *   zeroed new buffers, would differ.
 * - dispose() gives a buffer back at once, a collected tensor through its finalizer; the
 *   next call of the same shapes reuses it (500 disposed calls take no new buffer, 500
 *   dropped ones all come back after GC); kd.zeros clears a reused buffer; uploads are
 *   exact; kd.trimMemory and kd.setMemoryLimit bound what stays idle. (Checked against
 *   mutations of pool.ts: without the give-back in dispose, 4 tests fail; without the
 *   finalizer registration, 2.)
 * Skips, saying why, without an adapter.
 */
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { numberToBf16 } from '../lib/dtype.js';
import { _webgpuPoolDebug, classBytes } from '../lib/webgpu/pool.js';
import { firstDiffs, peakedLogits } from './helpers.js';
import { GPU, GPU_SKIP_REASON } from './webgpu_rows.js';

v8.setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const tick = () => new Promise((r) => setImmediate(r));
/** Collects what earlier tests dropped, so that it comes back before a baseline is taken. */
async function settle(): Promise<void> {
  for (let r = 0; r < 4; r++) {
    gc();
    await tick();
  }
}

type Outs = Record<string, kd.Tensor | undefined>;

async function snapshot(r: Outs): Promise<Record<string, { dtype: string; bytes: Buffer }>> {
  const out: Record<string, { dtype: string; bytes: Buffer }> = {};
  for (const [k, v] of Object.entries(r)) {
    if (!v) continue;
    const a = await v.toArrayAsync();
    out[k] = { dtype: v.dtype, bytes: Buffer.from(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)) };
  }
  return out;
}

describe('WebGPU pool: buffer size classes', () => {
  const dev = (maxBufferSize: number, maxStorageBufferBindingSize: number) => ({ limits: { maxBufferSize, maxStorageBufferBindingSize } }) as unknown as GPUDevice;
  const big = dev(2 ** 40, 2 ** 40);
  it('4 classes per octave from 256 bytes, never smaller than asked, at most 25% larger', () => {
    expect([0, 1, 4, 256].map((b) => classBytes(big, b))).toEqual([256, 256, 256, 256]);
    expect(classBytes(big, 257)).toBe(320);
    expect(classBytes(big, 2 ** 20)).toBe(2 ** 20);
    expect(classBytes(big, 2 ** 20 + 1)).toBe(2 ** 20 + 2 ** 18);
    for (let b = 1; b < 5e7; b = Math.ceil(b * 1.37) + 3) {
      const c = classBytes(big, b);
      expect(c).toBeGreaterThanOrEqual(b);
      expect(c % 4).toBe(0);
      if (b > 256) expect(c / b).toBeLessThanOrEqual(1.25);
    }
  });
  it('a size that fits one storage binding is not rounded past it', () => {
    const d = dev(2 ** 28, 2 ** 27);
    expect(classBytes(d, 2 ** 27 - 100)).toBe(2 ** 27);
    expect(classBytes(d, 2 ** 27 - 2 ** 24 + 4)).toBe(2 ** 27); // the class is the limit itself
    const odd = dev(2 ** 28, 2 ** 27 - 2 ** 20);
    expect(classBytes(odd, 2 ** 27 - 2 ** 21)).toBe(2 ** 27 - 2 ** 21); // the class (2^27) would pass the limit
    expect(classBytes(odd, 2 ** 27 + 1)).toBe(2 ** 27 + 2 ** 25); // beyond one binding anyway (row chunks)
  });
});

describe.skipIf(!GPU)(`WebGPU pool ${GPU_SKIP_REASON}`, { timeout: 300_000 }, () => {
  const W = { device: 'webgpu' } as const;
  const DEFAULT_CAP = kd.memory().cpu.capBytes;
  afterEach(() => {
    _webgpuPoolDebug(-1);
    kd.setMemoryLimit(DEFAULT_CAP);
  });
  const gpuMem = () => kd.memory().webgpu!;

  const N = 13, V = 1271, K = 7;
  const sF = peakedLogits(N, V, 1), tF = peakedLogits(N, V, 2);
  const mk = () => {
    const s = kd.tensor(sF, [N, V], W), t = kd.tensor(tF, [N, V], W);
    const sB = kd.tensor(Uint16Array.from(sF, numberToBf16), [N, V], { ...W, dtype: 'bf16' });
    const tB = kd.tensor(Uint16Array.from(tF, numberToBf16), [N, V], { ...W, dtype: 'bf16' });
    const labels = kd.tensor(Int32Array.from({ length: N }, (_, i) => (i % 4 === 1 ? -100 : (i * 37) % V)), [N], W);
    const allIgnored = kd.tensor(new Int32Array(N).fill(-100), [N], W);
    const mask = kd.tensor(Uint8Array.from({ length: N }, (_, i) => (i % 3 === 0 ? 0 : 1)), [N], W);
    const weights = kd.tensor(Float32Array.from({ length: N }, (_, i) => 0.5 + (i % 5) * 0.25), [N], W);
    const sampled = kd.tensor(Int32Array.from({ length: N }, (_, i) => (i * 101) % V), [N], W);
    const ids = Int32Array.from({ length: N * K }, (_, j) => ((j % K) * 97 + Math.floor(j / K)) % V);
    const sparse = {
      indices: kd.tensor(ids, [N, K], W),
      values: kd.tensor(Float32Array.from({ length: N * K }, (_, j) => -2 - (j % K) * 0.5), [N, K], W),
      tailLogProb: kd.tensor(new Float32Array(N).fill(-0.9), [N], W),
    };
    const sampledTeacher = { indices: kd.tensor(ids, [N, K], W), weights: kd.tensor(Float32Array.from({ length: N * K }, (_, j) => 0.1 + (j % 3) * 0.2), [N, K], W) };
    return { s, t, sB, tB, labels, allIgnored, mask, weights, sampled, sparse, sampledTeacher };
  };
  type In = ReturnType<typeof mk>;
  const CASES: Record<string, (x: In) => Outs> = {
    'klDiv forward, labels': (x) => ({ ...kd.klDiv(x.s, x.t, { labels: x.labels }) }),
    'klDiv forward, all ignored': (x) => ({ ...kd.klDiv(x.s, x.t, { labels: x.allIgnored }) }),
    'klDiv reverse, mask, none': (x) => ({ ...kd.klDiv(x.s, x.t, { direction: 'reverse', mask: x.mask, reduction: 'none' }) }),
    'klDiv bf16, grad bf16': (x) => ({ ...kd.klDiv(x.sB, x.tB, { labels: x.labels, temperature: 2 }) }),
    'klDiv bf16, grad f32': (x) => ({ ...kd.klDiv(x.sB, x.tB, { labels: x.labels, gradDtype: 'f32' }) }),
    'jsd, weights, none': (x) => ({ ...kd.jsd(x.s, x.t, { beta: 0.3, weights: x.weights, reduction: 'none', gradScale: 0.5 }) }),
    'tvd, mask': (x) => ({ ...kd.tvd(x.s, x.t, { mask: x.mask }) }),
    'skewKl, none': (x) => ({ ...kd.skewKl(x.s, x.t, { reduction: 'none' }) }),
    'distillationLoss jsd': (x) => ({ ...kd.distillationLoss(x.s, x.t, x.labels, { divergence: 'jsd', labelSmoothing: 0.1, hardWeight: 0.5, softWeight: 0.5 }) }),
    'tokenStats, sampled': (x) => ({ ...kd.tokenStats(x.s, x.t, { sampled: x.sampled }) }),
    'tokenStats bf16, no sampled': (x) => ({ ...kd.tokenStats(x.sB, x.tB) }),
    'topk logprobs': (x) => ({ ...kd.topk(x.t, K, { output: 'logprobs' }) }),
    'topk bf16 logits': (x) => ({ ...kd.topk(x.tB, K) }),
    sampleTeacher: (x) => ({ ...kd.sampleTeacher(x.t, 9, { seed: 7n, proposalPower: 0.5 }) }),
    'sparseKlDiv bucket, labels': (x) => ({ ...kd.sparseKlDiv(x.s, x.sparse, { tail: 'bucket', labels: x.labels }) }),
    'sparseKlDiv sampled, none': (x) => ({ ...kd.sparseKlDiv(x.s, x.sampledTeacher, { tail: 'sampled', reduction: 'none', mask: x.mask }) }),
  };

  // The poison also fills each op's per-call workspaces (acquireScratch): an op that read
  // one before writing it would differ between the two runs as well.
  describe('every kernel writes every element it returns', () => {
    for (const [name, run] of Object.entries(CASES)) {
      it(name, async () => {
        const x = mk(); // inputs uploaded before the poison: their buffers hold their data
        const before = gpuMem();
        _webgpuPoolDebug(0xff);
        const r1 = run(x);
        const poisoned = await snapshot(r1);
        for (const v of Object.values(r1)) v?.dispose();
        _webgpuPoolDebug(0x00);
        const r0 = run(x);
        const zeroed = await snapshot(r0);
        for (const v of Object.values(r0)) v?.dispose();
        const after = gpuMem();
        // the outputs really came from the pool
        const outputs = Object.keys(poisoned).length + Object.keys(zeroed).length;
        expect(outputs).toBeGreaterThan(0);
        expect(after.reused + after.fresh - before.reused - before.fresh).toBeGreaterThanOrEqual(outputs);
        expect(Object.keys(poisoned).sort()).toEqual(Object.keys(zeroed).sort());
        const bad = Object.keys(poisoned).filter((k) => !poisoned[k]!.bytes.equals(zeroed[k]!.bytes));
        const detail = bad.map((k) => `${k}: ${firstDiffs(poisoned[k]!.bytes, zeroed[k]!.bytes, poisoned[k]!.dtype)}`).join('\n');
        expect(bad, `outputs that depend on the pooled buffers' old contents (0xff vs 0x00):\n${detail}`).toEqual([]);
        for (const v of Object.values(x)) if (v instanceof kd.Tensor) v.dispose();
      });
    }
  });

  it('every op takes its outputs and workspaces from the pool: a second call of the same shapes creates no buffer', async () => {
    const x = mk();
    for (const [name, run] of Object.entries(CASES)) {
      for (const v of Object.values(run(x))) v?.dispose(); // warm: the buffers this call needs exist
      const m0 = gpuMem();
      const r = run(x);
      const m1 = gpuMem();
      expect(m1.fresh - m0.fresh, `${name}: new buffers in the second call`).toBe(0);
      expect(m1.reused - m0.reused, `${name}: buffers reused`).toBeGreaterThanOrEqual(Object.keys(r).length);
      await snapshot(r);
      for (const v of Object.values(r)) v?.dispose();
      expect(gpuMem().inUseBytes, `${name}: bytes in use once its outputs are disposed`).toBe(m0.inUseBytes);
    }
    for (const v of Object.values(x)) if (v instanceof kd.Tensor) v.dispose();
  });

  it('dispose() gives the buffer back at once; the next call of the same shapes reuses it', async () => {
    const x = mk();
    const warm = kd.klDiv(x.s, x.t);
    await warm.loss.itemAsync();
    warm.loss.dispose();
    warm.grad!.dispose();
    const m0 = gpuMem();
    const r = kd.klDiv(x.s, x.t);
    const m1 = gpuMem();
    expect(m1.fresh).toBe(m0.fresh); // loss, gradient and the call's workspace from idle buffers
    expect(m1.reused - m0.reused).toBe(3);
    // the workspace is back once the call has submitted its work; the outputs are in use
    expect(m1.inUseBytes - m0.inUseBytes).toBe(classBytes(GPU!, N * V * 4) + classBytes(GPU!, 4));
    const loss = await r.loss.itemAsync();
    r.grad!.dispose();
    r.loss.dispose();
    expect(gpuMem().inUseBytes).toBe(m0.inUseBytes);
    expect(gpuMem().pooledBytes).toBe(m0.pooledBytes);
    // the disposed tensor cannot be read; the loss was right (the CPU path's, within f32 rounding)
    await expect(r.grad!.toArrayAsync()).rejects.toMatchObject({ code: 'KD_EDISPOSED' });
    const cpu = kd.klDiv(kd.tensor(sF, [N, V]), kd.tensor(tF, [N, V]), { grad: false }).loss.item();
    expect(Math.abs(loss - cpu)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(cpu)));
  });

  it('kd.zeros clears a reused buffer; kd.empty and uploads take one', async () => {
    _webgpuPoolDebug(0xff);
    const e = kd.empty([1000], W); // the poison reaches the buffers handed out: NaN
    expect(new Uint32Array((await e.toArrayAsync()).buffer).every((v) => v === 0xffffffff)).toBe(true);
    e.dispose(); // a poisoned buffer, now idle
    _webgpuPoolDebug(-1);
    const m0 = gpuMem();
    const z = kd.zeros([1000], W);
    expect(gpuMem().reused - m0.reused).toBe(1);
    expect([...(await z.toArrayAsync())].every((v) => v === 0)).toBe(true);
    z.dispose();
    // an upload into a poisoned reused buffer, of a length that is no multiple of 4 bytes
    _webgpuPoolDebug(0xff);
    kd.empty([3], { ...W, dtype: 'u8' }).dispose();
    const m1 = gpuMem();
    const data = Uint8Array.from([7, 0, 200]);
    const u = kd.tensor(data, [3], W);
    expect(gpuMem().reused - m1.reused).toBe(1);
    expect([...(await u.toArrayAsync())]).toEqual([7, 0, 200]);
    u.dispose();
  });

  it('a tensor collected without dispose() gives its buffer back through its finalizer', async () => {
    const x = mk();
    await kd.webgpu.flush();
    await settle();
    const base = gpuMem().inUseBytes;
    // in a separate function, so no stack slot here keeps a result alive
    const drop = () => {
      for (let k = 0; k < 8; k++) kd.jsd(x.s, x.t);
    };
    drop();
    expect(gpuMem().inUseBytes).toBeGreaterThan(base);
    for (let r = 0; r < 10 && gpuMem().inUseBytes > base; r++) {
      gc();
      await tick();
    }
    expect(gpuMem().inUseBytes).toBe(base);
    for (const v of Object.values(x)) if (v instanceof kd.Tensor) v.dispose();
  });

  it('500 calls: disposed ones take no new buffer after the first; dropped ones all come back after GC', async () => {
    const x = mk();
    const once = kd.jsd(x.s, x.t, { reduction: 'none' });
    once.loss.dispose();
    once.grad!.dispose();
    await kd.webgpu.flush();
    await settle();
    const m0 = gpuMem();
    for (let k = 0; k < 500; k++) {
      const r = kd.jsd(x.s, x.t, { reduction: 'none' });
      r.loss.dispose();
      r.grad!.dispose();
    }
    await kd.webgpu.flush();
    const m1 = gpuMem();
    expect(m1.fresh - m0.fresh, 'new buffers in 500 disposed calls').toBe(0);
    expect(m1.reused - m0.reused).toBe(1500); // loss, gradient, workspace
    expect(m1.inUseBytes).toBe(m0.inUseBytes);
    expect(m1.pooledBytes).toBe(m0.pooledBytes);
    const drop = () => {
      for (let k = 0; k < 500; k++) kd.jsd(x.s, x.t, { reduction: 'none' });
    };
    drop();
    await kd.webgpu.flush();
    for (let r = 0; r < 10 && gpuMem().inUseBytes > m0.inUseBytes; r++) {
      gc();
      await tick();
    }
    const m2 = gpuMem();
    expect(m2.inUseBytes, 'bytes in use after the dropped results were collected').toBe(m0.inUseBytes);
    // what came back stays bounded by the cap and is freed by a trim
    expect(m2.pooledBytes + m2.inUseBytes).toBeLessThanOrEqual(m2.capBytes);
    kd.trimMemory();
    expect(gpuMem().pooledBytes).toBe(0);
    for (const v of Object.values(x)) if (v instanceof kd.Tensor) v.dispose();
  });

  it('kd.trimMemory frees idle buffers; kd.setMemoryLimit bounds idle + in use', async () => {
    const x = mk();
    for (let k = 0; k < 3; k++) {
      const r = kd.klDiv(x.s, x.t);
      r.loss.dispose();
      r.grad!.dispose();
    }
    expect(gpuMem().pooledBytes).toBeGreaterThan(0);
    kd.trimMemory();
    expect(gpuMem().pooledBytes).toBe(0);
    // a cap below what is in use: everything given back is destroyed, nothing kept idle
    const inUse = gpuMem().inUseBytes;
    kd.setMemoryLimit(inUse + 1024);
    expect(gpuMem().capBytes).toBe(inUse + 1024);
    const r = kd.klDiv(x.s, x.t);
    r.grad!.dispose(); // 66 KiB: over the cap, destroyed
    r.loss.dispose(); // 256 B: kept
    expect(gpuMem().pooledBytes).toBe(256);
    expect(gpuMem().inUseBytes).toBe(inUse);
    kd.setMemoryLimit(0); // idle buffers beyond the cap go now
    expect(gpuMem().pooledBytes).toBe(0);
    const again = kd.klDiv(x.s, x.t);
    await again.loss.itemAsync(); // the results still right from new buffers
    again.loss.dispose();
    again.grad!.dispose();
    expect(gpuMem().pooledBytes).toBe(0);
    for (const v of Object.values(x)) if (v instanceof kd.Tensor) v.dispose();
  });
});
