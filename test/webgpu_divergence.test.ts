/**
 * The divergence engine (klDiv, jsd, tvd, skewKl, distillationLoss) on WebGPU through the
 * public API (device 'webgpu'): the CPU tests' cases, each compared with the float64
 * reference (the same tolerances as the CPU) AND with the CPU path on the same inputs;
 * odd shapes, V = 1 … 151936, N = 0 and N > 65535 (the 2-D grid), tensors larger than
 * one storage binding (row chunks), -inf, NaN, peaked rows, every option, borrowed
 * buffers with offsets, determinism, and the errors. Skips, saying why, without an
 * adapter.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { DIVERGENCE_TABLE, build, caseName, checkAsync, gradMagnitude, lossOptions, runNative, runNativeAsync, type DivCase } from './divergence_cases.js';
import { gradTol, lossTol } from './tolerances.js';
import { errorOf } from './helpers.js';
import { compareArrays, type FloatDType } from './reference/common.js';
import { GPU, GPU_SKIP_REASON } from './webgpu_rows.js';
import { USAGE, _setBindingLimit, gpuObject } from '../lib/webgpu/runtime.js';

const DIVS = DIVERGENCE_TABLE;
const SCENARIOS: Partial<DivCase>[] = [
  {},
  { temperature: 2, labels: 'some-ignored', reduction: 'sum' },
  { temperature: 0.5, scaleT2: false, mask: true, weights: true, reduction: 'none', gradScale: -0.7 },
  { teacherKind: 'logprobs', reduction: 'mean', normalizer: 37 },
  { negInf: true, labels: 'some-ignored', grad: 'inplace' },
  { vt: 1300, ldS: 1280, ldT: 1310, gradDtype: 'f32' },
  { grad: 'given', temperature: 1.3, reduction: 'mean' },
  { grad: 'none', weights: true },
  { hardWeight: 0.5, softWeight: 0.5, labels: 'some-ignored', labelSmoothing: 0.1, temperature: 1.5 },
  { hardWeight: 1, softWeight: 0.25, labels: 'some-ignored', mask: true, reduction: 'none' },
];

async function expectPass(c: DivCase): Promise<void> {
  const errs = await checkAsync(c, 'webgpu');
  if (errs.length) throw new Error(`WebGPU ${caseName(c)}\n${errs.join('\n')}`);
}

/**
 * WebGPU result vs CPU result on the same inputs (both f32-accumulating kernels). Each
 * may differ from the exact value by the reference tolerance (test/tolerances.ts), so
 * they may differ from each other by twice that: per element for the gradient (a
 * saturated JSD's gradient elements of 1e-12 come from cancelling O(1e-4) terms, in
 * different orders on the two backends), never by a loosened global tolerance.
 */
async function expectMatchesCpu(c: DivCase): Promise<void> {
  const cb = build(c, 'cpu');
  const cpu = runNative(c, cb);
  const gpu = await runNativeAsync(c, build(c, 'webgpu'));
  const lossC = typeof cpu.loss === 'number' ? [cpu.loss] : cpu.loss;
  const lossG = typeof gpu.loss === 'number' ? [gpu.loss] : gpu.loss;
  const T = c.temperature ?? 1;
  const wScale = ((c.scaleT2 ?? true) ? T * T : 1) * (c.weights ? 2.25 : 1) * Math.max(1, Math.abs(c.gradScale ?? 1));
  const lt = lossTol(cb.maxAbs, T, c.v, wScale);
  const r = compareArrays(lossG, lossC, { atol: 2 * lt.atol, rtol: 2 * lt.rtol, label: `WebGPU vs CPU loss ${caseName(c)}` });
  if (!r.ok) throw new Error(r.message);
  if (cpu.grad) {
    const out: FloatDType = c.gradDtype === 'f32' ? 'f32' : c.sDtype;
    const gt = gradTol(out, cb.maxAbs, T, c.v, gradMagnitude(c, cb));
    const atolPer = gt.atolPer.map((x) => 2 * x);
    const g = compareArrays(gpu.grad!, cpu.grad, { atol: 2 * gt.atol, atolPer, rtol: 2 * gt.rtol, label: `WebGPU vs CPU grad ${caseName(c)}`, cols: c.v });
    if (!g.ok) throw new Error(g.message);
  }
  for (const k of ['hard', 'soft', 'total'] as const) {
    if (!cpu[k]) continue;
    const x = compareArrays(gpu[k]!, cpu[k]!, { atol: 2 * lt.atol, rtol: 2 * lt.rtol, label: `WebGPU vs CPU ${k} ${caseName(c)}` });
    if (!x.ok) throw new Error(x.message);
  }
}

/** 16-bit inputs: the scenarios whose code paths differ by dtype (loads, 16-bit stores). */
const SCENARIOS_16 = [0, 3, 4, 5, 6, 8].map((i) => SCENARIOS[i]!);

// lavapipe runs the kernels on the CPU cores the tests share: allow for a loaded machine.
describe.skipIf(!GPU)(`WebGPU divergences ${GPU_SKIP_REASON}`, { timeout: 600_000 }, () => {
  for (const d of DIVS)
    for (const dtype of ['f32', 'f16', 'bf16'] as const)
      it(`${d.divergence}${d.beta !== undefined ? ` beta=${d.beta}` : ''} ${dtype} vs reference and CPU`, async () => {
        for (const sc of dtype === 'f32' ? SCENARIOS : SCENARIOS_16) {
          const c: DivCase = { n: 19, v: 1271, sDtype: dtype, ...d, ...sc };
          await expectPass(c);
          await expectMatchesCpu(c);
        }
      });

  it('mixed dtypes: f32 student, bf16 teacher; f16 student, f32 teacher; staged rows (V = 300)', async () => {
    for (const d of DIVS) {
      await expectPass({ n: 13, v: 1271, sDtype: 'f32', tDtype: 'bf16', ...d });
      await expectPass({ n: 13, v: 300, sDtype: 'f16', tDtype: 'f32', ...d, temperature: 1.7, grad: 'inplace' });
      await expectMatchesCpu({ n: 13, v: 300, sDtype: 'bf16', ...d, labels: 'some-ignored', weights: true });
    }
  });

  it('shapes 7×123, 3×32000, 2×151936, V = 1, V = 2, N = 0', async () => {
    for (const [n, v] of [[7, 123], [5, 1], [4, 2]] as const)
      for (const d of DIVS) for (const dtype of ['f32', 'bf16'] as const) await expectPass({ n, v, sDtype: dtype, ...d });
    for (const d of DIVS) await expectPass({ n: 3, v: 32000, sDtype: 'f32', ...d });
    for (const d of [DIVS[0]!, DIVS[2]!, DIVS[5]!]) await expectPass({ n: 2, v: 151936, sDtype: 'bf16', ...d, temperature: 1.5 });
    await expectPass({ n: 2, v: 151936, sDtype: 'f32', divergence: 'reverse-kl', hardWeight: 0.5, labels: 'some-ignored' });
    const e = kd.empty([0, 17], { device: 'webgpu' });
    const r = kd.klDiv(e, e);
    expect(await r.loss.itemAsync()).toBe(0);
    expect(r.grad!.shape).toEqual([0, 17]);
    const none = kd.jsd(e, e, { reduction: 'none' });
    expect((await none.loss.toArrayAsync()).length).toBe(0);
  });

  it('more than 65535 rows (2-D grid)', async () => {
    await expectMatchesCpu({ n: 70001, v: 3, sDtype: 'f32', divergence: 'jsd', beta: 0.5, labels: 'some-ignored', reduction: 'none' });
    await expectMatchesCpu({ n: 70001, v: 5, sDtype: 'bf16', divergence: 'forward-kl' });
  });

  it('tensors larger than one storage binding: row chunks (binding limit capped to 64 KiB here)', async () => {
    // The real case (151936 x 256 f32 = 155 MB > 128 MiB) takes minutes on lavapipe;
    // the same code path runs here with a 64 KiB cap: 41 x 1271 f32 rows are 12 chunks.
    _setBindingLimit(64 * 1024);
    try {
      for (const d of [DIVS[0]!, DIVS[2]!, DIVS[7]!]) {
        await expectPass({ n: 41, v: 1271, sDtype: 'f32', ...d, vt: 1300, ldS: 1280, ldT: 1310, labels: 'some-ignored' });
        await expectPass({ n: 41, v: 1271, sDtype: 'bf16', ...d, grad: 'inplace', weights: true, reduction: 'none' });
        await expectMatchesCpu({ n: 41, v: 1271, sDtype: 'f16', ...d, hardWeight: 0.5, labels: 'some-ignored', gradDtype: 'f32' });
      }
      const big = kd.empty([1, 20000], { device: 'webgpu' }); // one row of 80 KB > the cap
      expect(errorOf(() => kd.klDiv(big, big)).code).toBe('KD_ENOMEM');
    } finally {
      _setBindingLimit(undefined);
    }
  });

  it('all tokens ignored, -inf logits, a NaN row, logits of magnitude 1e4', async () => {
    for (const d of DIVS) {
      await expectPass({ n: 9, v: 57, sDtype: 'f32', ...d, labels: 'all-ignored' });
      await expectPass({ n: 11, v: 97, sDtype: 'bf16', ...d, negInf: true, temperature: 0.7 });
      await expectPass({ n: 5, v: 2000, sDtype: 'f16', ...d, negInf: true });
      await expectPass({ n: 6, v: 301, sDtype: 'f32', ...d, scale: 2500 });
    }
    const n = 4, v = 33;
    const s = Float32Array.from({ length: n * v }, (_, i) => Math.sin(i * 1.7) * 4);
    s[2 * v + 5] = NaN;
    const t = Float32Array.from({ length: n * v }, (_, i) => Math.cos(i * 0.3) * 4);
    for (const name of ['jsd', 'klDiv', 'tvd'] as const) {
      const r = kd[name](kd.tensor(s, [n, v], { device: 'webgpu' }), kd.tensor(t, [n, v], { device: 'webgpu' }), { reduction: 'none' });
      const loss = await r.loss.toArrayAsync();
      expect(Number.isNaN(loss[2]), `${name} NaN row`).toBe(true);
      expect([0, 1, 3].every((i) => Number.isFinite(loss[i])), `${name} other rows finite`).toBe(true);
      const g = await r.grad!.toArrayAsync();
      expect(Array.from(g.subarray(0, 2 * v)).every(Number.isFinite)).toBe(true);
    }
  });

  it('bitwise deterministic across runs', async () => {
    const c: DivCase = { n: 64, v: 32000, sDtype: 'bf16', divergence: 'jsd', beta: 0.5, temperature: 1.3 };
    const b = build(c, 'webgpu');
    const runs = [0, 1, 2].map(() => kd.jsd(b.student, b.teacher, { ...lossOptions(c, b), beta: 0.5 }));
    const losses = await Promise.all(runs.map((r) => r.loss.itemAsync()));
    const bits = await Promise.all(runs.map(async (r) => Buffer.from((await r.grad!.toArrayAsync()).buffer)));
    for (const l of losses) expect(l).toBe(losses[0]);
    for (const x of bits) expect(x.equals(bits[0]!)).toBe(true);
  });

  it('borrowed GPUBuffers (fromGPUBuffer) with byte offsets and strides, grad into a borrowed buffer', async () => {
    const dev = GPU!;
    const n = 5, v = 77, ld = 80;
    const s = Float32Array.from({ length: n * ld }, (_, i) => Math.sin(i * 0.37) * 3);
    const t = Float32Array.from({ length: n * ld }, (_, i) => Math.cos(i * 0.11) * 3);
    const buf = dev.createBuffer({ size: 4096 + (s.length + t.length) * 4, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST });
    dev.queue.writeBuffer(buf, 256, s);
    dev.queue.writeBuffer(buf, 256 + s.length * 4 + 12, t);
    const gbuf = dev.createBuffer({ size: n * v * 4 + 8, usage: USAGE.STORAGE | USAGE.COPY_SRC });
    const S = kd.fromGPUBuffer(buf, [n, v], { dtype: 'f32', strides: [ld, 1], byteOffset: 256 });
    const T = kd.fromGPUBuffer(buf, [n, v], { dtype: 'f32', strides: [ld, 1], byteOffset: 256 + s.length * 4 + 12, device: dev });
    const G = kd.fromGPUBuffer(gbuf, [n, v], { dtype: 'f32', byteOffset: 8 });
    const r = kd.skewKl(S, T, { skew: 0.2, grad: G, temperature: 1.5 });
    expect(r.grad).toBe(G);
    const cpu = kd.skewKl(kd.tensor(s, [n, v], { strides: [ld, 1] }), kd.tensor(t, [n, v], { strides: [ld, 1] }), { skew: 0.2, temperature: 1.5 });
    const cl = compareArrays([await r.loss.itemAsync()], [cpu.loss.item()], { rtol: 2e-4, atol: 1e-6, label: 'borrowed loss' });
    expect(cl.ok, cl.message).toBe(true);
    const cg = compareArrays(await G.toFloat32ArrayAsync(), cpu.grad!.toFloat32Array(), { rtol: 2e-4, atol: 1e-7, label: 'borrowed grad', cols: v });
    expect(cg.ok, cg.message).toBe(true);
    S.dispose();
    expect(buf.size).toBeGreaterThan(0); // borrowed: dispose() does not destroy the caller's buffer
    expect((await T.toArrayAsync()).length).toBe((n - 1) * ld + v);
    buf.destroy();
    gbuf.destroy();
  });

  it('labels, mask and weights as WebGPU tensors; the async API', async () => {
    const c: DivCase = { n: 23, v: 411, sDtype: 'f32', divergence: 'reverse-kl', labels: 'some-ignored', mask: true, weights: true, reduction: 'batchmean' };
    const b = build(c, 'webgpu');
    const o = lossOptions(c, b);
    const onGpu = {
      ...o,
      labels: kd.tensor(b.labels!, [c.n], { device: 'webgpu' }),
      mask: kd.tensor(b.mask!, [c.n], { device: 'webgpu' }),
      weights: kd.tensor(b.weights!, [c.n], { device: 'webgpu' }),
    };
    const a = kd.klDiv(b.student, b.teacher, { ...o, direction: 'reverse' });
    const g = await kd.klDivAsync(b.student, b.teacher, { ...onGpu, direction: 'reverse' });
    expect(await g.loss.itemAsync()).toBe(await a.loss.itemAsync());
    expect(Buffer.from((await g.grad!.toArrayAsync()).buffer).equals(Buffer.from((await a.grad!.toArrayAsync()).buffer))).toBe(true);
    const d = await kd.distillationLossAsync(b.student, b.teacher, onGpu.labels, { hardWeight: 0.3, softWeight: 0.7 });
    expect(Number.isFinite(await d.loss.itemAsync())).toBe(true);
  });

  it('bad input gets the CPU errors; sync reads and mixed devices are KD_EDEVICE', async () => {
    const s = kd.tensor(new Float32Array(12), [3, 4], { device: 'webgpu' });
    const t = kd.tensor(new Float32Array(15), [3, 5], { device: 'webgpu' });
    const small = kd.tensor(new Float32Array(9), [3, 3], { device: 'webgpu' });
    const cpuT = kd.tensor(new Float32Array(12), [3, 4]);
    const same = (fn: (dev: 'cpu' | 'webgpu') => unknown) => {
      const a = errorOf(() => fn('cpu'));
      const b = errorOf(() => fn('webgpu'));
      expect(b.name).toBe(a.name);
      expect(b.code).toBe(a.code);
      expect(b.message).toBe(a.message);
    };
    const mk = (dev: 'cpu' | 'webgpu', shape: number[], dtype: kd.DType = 'f32') =>
      kd.tensor(dtype === 'i32' ? new Int32Array(shape.reduce((x, y) => x * y, 1)) : new Float32Array(shape.reduce((x, y) => x * y, 1)), shape, { device: dev });
    same((d) => kd.klDiv(mk(d, [3, 4]), mk(d, [2, 4])));
    same((d) => kd.klDiv(mk(d, [3, 4]), mk(d, [3, 3])));
    same((d) => kd.jsd(mk(d, [3, 4]), mk(d, [3, 4]), { beta: 2 }));
    same((d) => kd.klDiv(mk(d, [3, 4]), mk(d, [3, 4]), { temperature: 0 }));
    same((d) => kd.klDiv(mk(d, [3, 4]), mk(d, [3, 4]), { reduction: 'avg' as kd.Reduction }));
    same((d) => kd.klDiv(mk(d, [3, 4]), mk(d, [3, 4], 'i32')));
    same((d) => kd.klDiv(mk(d, [3, 4]), mk(d, [3, 4]), { labels: new Int32Array([0, 1, 9]) }));
    same((d) => kd.klDiv(mk(d, [3, 4]), mk(d, [3, 4]), { mask: new Uint8Array(2) }));
    same((d) => kd.klDiv(mk(d, [3, 4]), mk(d, [3, 4]), { grad: mk(d, [3, 5]) }));
    same((d) => kd.distillationLoss(mk(d, [3, 4]), mk(d, [3, 4]), new Int32Array(3), { hardWeight: 0, softWeight: 0 }));
    expect(errorOf(() => kd.klDiv(s, cpuT)).code).toBe('KD_EDEVICE');
    expect(errorOf(() => kd.klDiv(s, t, { weights: kd.tensor(new Float32Array(3), [3]) })).code).toBe('KD_EDEVICE');
    expect(errorOf(() => kd.klDiv(s, small)).code).toBe('KD_ESHAPE');
    const r = kd.klDiv(s, t);
    const sync = errorOf(() => r.loss.item());
    expect(sync.code).toBe('KD_EDEVICE');
    expect(sync.message).toMatch(/itemAsync/);
    expect(errorOf(() => r.grad!.toArray()).code).toBe('KD_EDEVICE');
    expect(errorOf(() => r.grad!.toArray()).message).toMatch(/toArrayAsync/);
    expect(await r.loss.itemAsync()).toBe(0);
    s.dispose();
    expect(errorOf(() => kd.klDiv(s, t)).code).toBe('KD_EDISPOSED');
    await expect(s.toArrayAsync()).rejects.toMatchObject({ code: 'KD_EDISPOSED' });
    expect(errorOf(() => kd.fromGPUBuffer({} as GPUBuffer, [2], { dtype: 'f32' })).name).toBe('TypeError');
    const tiny = GPU!.createBuffer({ size: 16, usage: USAGE.STORAGE });
    expect(errorOf(() => kd.fromGPUBuffer(tiny, [2, 4], { dtype: 'f32' })).code).toBe('KD_ESHAPE');
    expect(errorOf(() => kd.fromGPUBuffer(tiny, [2], { dtype: 'f32', byteOffset: 2 })).code).toBe('KD_EINVAL');
    tiny.destroy();
  });

  it('a lost device is a KdError (KD_EDEVICE), never a hang', async () => {
    const adapter = await navigatorGpu().requestAdapter();
    const other = await adapter!.requestDevice();
    const before = kd.webgpu.currentDevice()!;
    try {
      kd.webgpu.setDevice(other);
      const x = kd.tensor(new Float32Array(8), [2, 4], { device: 'webgpu' });
      const r = kd.klDiv(x, x, { grad: false });
      other.destroy();
      await expect(r.loss.itemAsync()).rejects.toMatchObject({ code: 'KD_EDEVICE' });
      expect(errorOf(() => kd.klDiv(x, x)).code).toBe('KD_EDEVICE');
      expect(errorOf(() => kd.tensor(new Float32Array(4), [1, 4], { device: 'webgpu' })).code).toBe('KD_EDEVICE');
    } finally {
      kd.webgpu.setDevice(before);
    }
  });
});

/** The GPU object kd.webgpu requested its device from (navigator.gpu or the webgpu package). */
function navigatorGpu(): GPU {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  return gpuObject()!;
}
