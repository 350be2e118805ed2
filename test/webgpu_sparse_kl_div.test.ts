/**
 * sparseKlDiv on WebGPU (lib/webgpu/sparse_kl_div.ts, wgsl/sparse_kl_div.wgsl.ts) through
 * the public API against the float64 reference (test/reference/sparse.ts) and the CPU
 * path: the CPU tests' cases (four tail modes × dtypes × options on 41 × 1271, k = V,
 * V = 1 … 151936, N = 0, all ignored, -inf, in place / given / f32 gradients), ids out of
 * range (NaN, never a wild access), determinism, errors. The sparse teachers are made on
 * the CPU (topk / sampleTeacher) and uploaded. Skips, saying why, without an adapter.
 * Also: the options that bind the most storage buffers on a device with WebGPU's default
 * limits (8 per stage), row chunks and borrowed per-token inputs at odd offsets there, and
 * (without a GPU) the storage bindings of every WGSL kernel variant in lib/webgpu/ <= 8.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { errorOf } from './helpers.js';
import { compareArrays, decodeDtype, encodeDtype, randomLogits, roundToDtype, type FloatDType, type Reduction } from './reference/common.js';
import { refSparseKl, type SparseTail } from './reference/sparse.js';
import { SPARSE_GRAD_ATOL_REL_MAX, SPARSE_GRAD_RTOL, SPARSE_LOSS_ATOL_PER_WEIGHT, SPARSE_LOSS_RTOL, TOPK_OUT_ROUNDING } from './tolerances.js';
import { USAGE, _setBindingLimit, createBuffer, gpuObject, write } from '../lib/webgpu/runtime.js';
import { SPARSE_TAIL, sparseAuxWgsl, sparseWgsl } from '../lib/webgpu/wgsl/sparse_kl_div.wgsl.js';
import { DIV, countWgsl, divergenceRowWgsl, reduceWgsl } from '../lib/webgpu/wgsl/divergence.wgsl.js';
import { tokenStatsWgsl } from '../lib/webgpu/wgsl/token_stats.wgsl.js';
import { topkWgsl } from '../lib/webgpu/wgsl/topk.wgsl.js';
import { sampleTeacherWgsl } from '../lib/webgpu/wgsl/sample_teacher.wgsl.js';
import type { WgslDType } from '../lib/webgpu/wgsl/common.wgsl.js';
import { GPU, GPU_SKIP_REASON } from './webgpu_rows.js';

const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];
const TAILS: SparseTail[] = ['renormalize', 'bucket', 'conditional', 'sampled'];

interface Case {
  n: number;
  v: number;
  k: number;
  dtype: FloatDType;
  tail: SparseTail;
  temperature?: number;
  scaleT2?: boolean;
  labels?: boolean;
  mask?: boolean;
  weights?: boolean;
  reduction?: Reduction;
  normalizer?: number;
  gradScale?: number;
  grad?: 'new' | 'inplace' | 'given' | 'none';
  gradDtype?: 'f32' | 'input';
  ld?: number;
  negInf?: boolean;
  valuesDtype?: 'f32' | 'input';
  seed?: number;
  /**
   * WebGPU labels, mask and weights as kd.webgpu.fromGPUBuffer views at odd offsets (labels
   * at element 1, the mask at byte 3, weights at element 2) of buffers without COPY_SRC.
   */
  borrowed?: boolean;
}

/** `data` at byte `byteOffset` of a new STORAGE | COPY_DST buffer (no COPY_SRC), borrowed as a kd tensor. */
function borrow(data: Int32Array | Uint8Array | Float32Array, dtype: 'i32' | 'u8' | 'f32', byteOffset: number): kd.Tensor {
  const dev = kd.webgpu.currentDevice()!;
  const bytes = new Uint8Array(Math.ceil((byteOffset + data.byteLength) / 4) * 4).fill(0xa5);
  bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), byteOffset);
  const buf = createBuffer(dev, bytes.byteLength, USAGE.STORAGE | USAGE.COPY_DST);
  write(dev, buf, 0, bytes);
  return kd.webgpu.fromGPUBuffer(buf, [data.length], { dtype, byteOffset });
}

function toGpu(t: kd.Tensor | undefined): kd.Tensor | undefined {
  if (!t) return undefined;
  return kd.tensor(t.toArray(), [...t.shape], { dtype: t.dtype, device: 'webgpu' });
}

/** The inputs of a case on the CPU (the sparse teacher from topk / sampleTeacher), and copies on WebGPU. */
function build(c: Case) {
  const { n, v, k, dtype } = c;
  const seed = c.seed ?? 1;
  const T = c.temperature ?? 1;
  const data = randomLogits(n, v, { seed, peaked: true, negInf: c.negInf ? Math.min(20, v - k) : 0 });
  const tdata = randomLogits(n, v, { seed: seed + 100, scale: 2, peaked: true });
  const ld = c.ld ?? v;
  const padded = new Float64Array(Math.max(0, (n - 1) * ld + v));
  for (let i = 0; i < n; i++) for (let j = 0; j < v; j++) padded[i * ld + j] = data[i * v + j]!;
  const enc = encodeDtype(padded, dtype);
  const mk = (device: 'cpu' | 'webgpu') => kd.tensor(device === 'cpu' ? enc : enc.slice(), [n, v], { dtype, strides: [ld, 1], device });
  const tlog = kd.tensor(encodeDtype(tdata, dtype), [n, v], { dtype });
  let host: kd.SparseTeacher;
  if (c.tail === 'sampled') {
    const s = kd.sampleTeacher(tlog, k, { seed: seed + 7, temperature: T, proposalPower: 0.5 });
    host = { indices: s.indices, weights: s.weights };
  } else {
    host = kd.topk(tlog, k, { output: 'logprobs', temperature: T, valuesDtype: c.valuesDtype });
  }
  const gpuTeacher: kd.SparseTeacher = { indices: toGpu(host.indices)! };
  for (const key of ['values', 'tailLogProb', 'weights'] as const) if (host[key]) gpuTeacher[key] = toGpu(host[key]);
  const labels = c.labels ? Int32Array.from({ length: n }, (_, i) => (i % 4 === 1 ? -100 : i % v)) : undefined;
  const mask = c.mask ? Uint8Array.from({ length: n }, (_, i) => (i % 5 === 2 ? 0 : 1)) : undefined;
  const weights = c.weights ? Float32Array.from({ length: n }, (_, i) => 0.25 + (i % 3)) : undefined;
  const opts = (device: 'cpu' | 'webgpu'): kd.SparseKlDivOptions => {
    const o: kd.SparseKlDivOptions = {
      tail: c.tail, temperature: c.temperature, scaleByTemperatureSquared: c.scaleT2, labels, mask, weights,
      reduction: c.reduction, normalizer: c.normalizer, gradScale: c.gradScale, gradDtype: c.gradDtype,
    };
    if (c.borrowed && device === 'webgpu') {
      if (labels) o.labels = borrow(labels, 'i32', 4);
      if (mask) o.mask = borrow(mask, 'u8', 3);
      if (weights) o.weights = borrow(weights, 'f32', 8);
    }
    if (c.grad === 'none') o.grad = false;
    if (c.grad === 'inplace') o.grad = 'inplace';
    if (c.grad === 'given') o.grad = kd.empty([n, v], { dtype: c.gradDtype === 'f32' ? 'f32' : dtype, device });
    return o;
  };
  return { mk, host, gpuTeacher, opts, rounded: roundToDtype(data, dtype), labels, mask, weights };
}

async function gpuArray(t: kd.Tensor): Promise<Float64Array> {
  const raw = await t.toArrayAsync();
  const d = t.dtype as FloatDType;
  const flat = d === 'f32' ? Float64Array.from(raw as Float32Array) : decodeDtype(raw as Uint16Array, d);
  if (t.isContiguous || t.ndim !== 2) return flat;
  const [n, v] = t.shape as [number, number];
  const ld = t.strides[0]!;
  const out = new Float64Array(n * v);
  for (let i = 0; i < n; i++) for (let j = 0; j < v; j++) out[i * v + j] = flat[i * ld + j]!;
  return out;
}

async function check(c: Case): Promise<void> {
  const { n, v, k } = c;
  const b = build(c);
  const student = b.mk('webgpu');
  const r = kd.sparseKlDiv(student, b.gpuTeacher, b.opts('webgpu'));
  expect(r.loss.device).toBe('webgpu');
  const T = c.temperature ?? 1;
  const hs = (t?: kd.Tensor) => (t ? decodeDtype(t.toArray() as Float32Array | Uint16Array, t.dtype as FloatDType) : undefined);
  const ref = refSparseKl(
    b.rounded, n, v,
    { k, indices: b.host.indices.toArray(), values: hs(b.host.values), tailLogProb: b.host.tailLogProb?.toArray(), weights: b.host.weights?.toArray() },
    { tail: c.tail, temperature: T, scaleByTemperatureSquared: c.scaleT2, labels: b.labels, mask: b.mask, weights: b.weights, reduction: c.reduction, normalizer: c.normalizer, gradScale: c.gradScale },
  );
  const cpu = kd.sparseKlDiv(b.mk('cpu'), b.host, b.opts('cpu'));
  const label = `webgpu ${JSON.stringify(c)}`;
  const unit = ((c.scaleT2 ?? true) ? T * T : 1) * (b.weights ? 2.25 : 1);
  const loss = (await r.loss.toArrayAsync()) as Float32Array;
  if ((c.reduction ?? 'batchmean') === 'none') {
    expect(r.loss.shape).toEqual([n]);
    const tol = { atol: SPARSE_LOSS_ATOL_PER_WEIGHT * unit, rtol: SPARSE_LOSS_RTOL };
    const cl = compareArrays(loss, ref.loss as Float64Array, { ...tol, label: `${label} loss` });
    expect(cl.ok, cl.message).toBe(true);
    const cc = compareArrays(loss, cpu.loss.toArray(), { ...tol, label: `${label} loss vs CPU` });
    expect(cc.ok, cc.message).toBe(true);
  } else {
    // the reduced loss: a sum over tokens of f32 totals; per-token errors add up
    const atol = (SPARSE_LOSS_ATOL_PER_WEIGHT * unit * n * Math.abs(c.gradScale ?? 1)) / Math.max(1, c.reduction === 'sum' ? 1 : n);
    const cl = compareArrays(loss, [ref.loss as number], { atol, rtol: SPARSE_LOSS_RTOL, label: `${label} loss` });
    expect(cl.ok, cl.message).toBe(true);
    const cc = compareArrays(loss, [cpu.loss.item()], { atol, rtol: SPARSE_LOSS_RTOL, label: `${label} loss vs CPU` });
    expect(cc.ok, cc.message).toBe(true);
  }
  if (c.grad === 'none') {
    expect(r.grad).toBeUndefined();
    return;
  }
  const g = r.grad!;
  if (c.grad === 'inplace') expect(g).toBe(student);
  const got = await gpuArray(g);
  let gmax = 0;
  for (const x of ref.grad) if (Number.isFinite(x)) gmax = Math.max(gmax, Math.abs(x));
  const gtol = { atol: SPARSE_GRAD_ATOL_REL_MAX * gmax, rtol: SPARSE_GRAD_RTOL + TOPK_OUT_ROUNDING[g.dtype as FloatDType] };
  const cg = compareArrays(got, ref.grad, { ...gtol, label: `${label} grad`, cols: v });
  expect(cg.ok, cg.message).toBe(true);
  const cpuGrad = cpu.grad!.toFloat32Array();
  // both sides rounded to a 16-bit gradient independently: one ulp (twice the unit roundoff) apart at most
  const ctol = { atol: gtol.atol, rtol: SPARSE_GRAD_RTOL + 2 * TOPK_OUT_ROUNDING[g.dtype as FloatDType] };
  const cc = compareArrays(got, cpuGrad, { ...ctol, label: `${label} grad vs CPU`, cols: v });
  expect(cc.ok, cc.message).toBe(true);
}

const SCENARIOS: Partial<Case>[] = [
  {},
  { temperature: 2, labels: true, reduction: 'sum' },
  { temperature: 0.5, scaleT2: false, mask: true, weights: true, reduction: 'none', gradScale: -0.7 },
  { reduction: 'mean', normalizer: 37, valuesDtype: 'input' },
  { gradDtype: 'f32', grad: 'given', ld: 1280, temperature: 1.5 },
  { negInf: true, labels: true, grad: 'inplace' },
  { grad: 'none', weights: true },
];

// lavapipe runs the kernels on the same CPU cores as the float64 references: on a loaded
// 2-core machine a group of cases can take minutes
const SLOW = { timeout: 600_000 };

describe.skipIf(!GPU)(`sparseKlDiv on WebGPU vs the float64 reference and the CPU ${GPU_SKIP_REASON}`, () => {
  for (const tail of TAILS)
    for (const dtype of DTYPES)
      it(`${tail} ${dtype}: every option on 41 × 1271`, SLOW, async () => {
        for (const sc of SCENARIOS) await check({ n: 41, v: 1271, k: 17, dtype, tail, ...sc });
      });

  for (const tail of TAILS)
    it(`${tail}: k = V, 3 × 32000, V = 1, 2 × 151936, N = 0`, SLOW, async () => {
      for (const dtype of DTYPES) {
        await check({ n: 7, v: 123, k: tail === 'sampled' ? 40 : 123, dtype, tail, reduction: 'none' });
        await check({ n: 3, v: 32000, k: 64, dtype, tail, temperature: 2 });
        await check({ n: 5, v: 1, k: 1, dtype, tail, reduction: 'none' });
      }
      await check({ n: 2, v: 151936, k: 64, dtype: 'bf16', tail, reduction: 'sum' });
      const z = (shape: number[], dtype: 'f32' | 'i32' = 'f32') => kd.empty(shape, { dtype, device: 'webgpu' });
      const e = kd.sparseKlDiv(z([0, 9]), { indices: z([0, 4], 'i32'), values: z([0, 4]), tailLogProb: z([0]), weights: z([0, 4]) }, { tail });
      expect(await e.loss.itemAsync()).toBe(0);
      expect(e.grad!.shape).toEqual([0, 9]);
    });

  it('row chunks (bindings capped at 64 KiB) match the reference and the CPU', SLOW, async () => {
    _setBindingLimit(64 * 1024);
    try {
      for (const tail of TAILS) await check({ n: 41, v: 1271, k: 17, dtype: 'f32', tail, labels: true, weights: true, ld: 1280, reduction: tail === 'bucket' ? 'none' : 'batchmean' });
    } finally {
      _setBindingLimit(undefined);
    }
  });

  it('all tokens ignored: loss 0 and gradient 0, never NaN', async () => {
    for (const tail of TAILS) {
      const b = build({ n: 6, v: 300, k: 9, dtype: 'f32', tail });
      const r = kd.sparseKlDiv(b.mk('webgpu'), b.gpuTeacher, { ...b.opts('webgpu'), labels: new Int32Array(6).fill(-100) });
      expect(await r.loss.itemAsync()).toBe(0);
      expect(((await r.grad!.toArrayAsync()) as Float32Array).every((x) => x === 0)).toBe(true);
    }
  });

  it('an id outside [0, V) makes only its token NaN (loss and gradient), never a wild access', async () => {
    const v = 50;
    const s = kd.tensor(Float32Array.from(randomLogits(3, v, { seed: 9 })), [3, v], { device: 'webgpu' });
    const ids = kd.tensor(new Int32Array([1, 2, 3, 4, 999, 6, 7, 8, 9]), [3, 3], { device: 'webgpu' });
    const values = kd.tensor(new Float32Array([-1, -2, -3, -1, -2, -3, -1, -2, -3]), [3, 3], { device: 'webgpu' });
    const r = kd.sparseKlDiv(s, { indices: ids, values }, { tail: 'renormalize', reduction: 'none' });
    const loss = (await r.loss.toArrayAsync()) as Float32Array;
    expect([Number.isFinite(loss[0]!), Number.isNaN(loss[1]!), Number.isFinite(loss[2]!)]).toEqual([true, true, true]);
    const g = (await r.grad!.toArrayAsync()) as Float32Array;
    expect(g.subarray(v, 2 * v).every(Number.isNaN)).toBe(true);
    expect(g.subarray(0, v).every(Number.isFinite) && g.subarray(2 * v).every(Number.isFinite)).toBe(true);
  });

  it('deterministic: two runs give the same bits (repeated sampled ids included)', SLOW, async () => {
    for (const tail of TAILS) {
      const b = build({ n: 9, v: 5000, k: 64, dtype: 'bf16', tail, weights: true });
      const student = b.mk('webgpu');
      const x = kd.sparseKlDiv(student, b.gpuTeacher, b.opts('webgpu'));
      const y = await kd.sparseKlDivAsync(student, b.gpuTeacher, b.opts('webgpu'));
      expect(await y.loss.itemAsync()).toBe(await x.loss.itemAsync());
      expect(Array.from((await y.grad!.toArrayAsync()) as Uint16Array)).toEqual(Array.from((await x.grad!.toArrayAsync()) as Uint16Array));
    }
  });

  it('bad input gets the CPU errors', () => {
    const s = kd.tensor(new Float32Array(20), [2, 10], { device: 'webgpu' });
    const ids = kd.tensor(new Int32Array([0, 1, 2, 3]), [2, 2], { device: 'webgpu' });
    const values = kd.tensor(new Float32Array(4), [2, 2], { device: 'webgpu' });
    const cases: [() => unknown, string, string, RegExp][] = [
      [() => kd.sparseKlDiv(s, { indices: ids, values }, undefined as never), 'TypeError', 'KD_EINVAL', /tail mode/],
      [() => kd.sparseKlDiv(s, { indices: ids }, { tail: 'bucket' }), 'TypeError', 'KD_EINVAL', /needs sparseTeacher.values/],
      [() => kd.sparseKlDiv(s, { indices: ids, values }, { tail: 'bucket' }), 'TypeError', 'KD_EINVAL', /tailLogProb/],
      [() => kd.sparseKlDiv(s, { indices: kd.tensor(new Int32Array(4), [2, 2]), values }, { tail: 'renormalize' }), 'KdError', 'KD_EDEVICE', /indices is on cpu/],
      [() => kd.sparseKlDiv(s, { indices: ids, values: kd.tensor(new Float32Array(6), [2, 3], { device: 'webgpu' }) }, { tail: 'renormalize' }), 'RangeError', 'KD_ESHAPE', /values of shape \[2, 2\]/],
      [() => kd.sparseKlDiv(s, { indices: ids, values }, { tail: 'renormalize', temperature: 0 }), 'RangeError', 'KD_EINVAL', /temperature/],
      [() => kd.sparseKlDiv(s, { indices: ids, values }, { tail: 'renormalize', labels: new Int32Array(3) }), 'RangeError', 'KD_ESHAPE', /labels/],
      [() => kd.sparseKlDiv(s, { indices: ids, values }, { tail: 'renormalize', grad: kd.empty([2, 10]) }), 'KdError', 'KD_EDEVICE', /grad is on cpu/],
      [() => kd.sparseKlDiv(s, { indices: ids, values }, { tail: 'renormalize' }).loss.item(), 'KdError', 'KD_EDEVICE', /itemAsync/],
    ];
    for (const [fn, cls, code, msg] of cases) {
      const e = errorOf(fn);
      expect([e.name, e.code], e.message).toEqual([cls, code]);
      expect(e.message).toMatch(msg);
    }
  });
});

/**
 * WebGPU's default maxStorageBuffersPerShaderStage is 8 (the device of tfjs-backend-webgpu,
 * or any caller's passed to kd.webgpu.setDevice); the library's own device requests the
 * adapter's maximum. Runs `fn` with a device requested with no requiredLimits as kd's
 * device, then restores the library's.
 */
async function onDefaultLimits(fn: () => Promise<void>): Promise<void> {
  const adapter = await gpuObject()!.requestAdapter();
  const dev = await adapter!.requestDevice();
  expect(dev.limits.maxStorageBuffersPerShaderStage).toBe(8);
  kd.webgpu.setDevice(dev);
  try {
    await fn();
  } finally {
    kd.webgpu.setDevice(GPU!);
    _setBindingLimit(undefined);
    dev.destroy();
  }
}

describe.skipIf(!GPU)(`sparseKlDiv on a device with the default limits (8 storage buffers per stage) ${GPU_SKIP_REASON}`, () => {
  // the most bindings: 'bucket' (tailLogProb and the bitmap), labels, mask, weights, a
  // gradient of its own and the per-row loss
  const ALL = { labels: true, mask: true, weights: true, reduction: 'none' } as const;

  it('every tail with labels, mask, weights, a separate gradient and reduction none', SLOW, async () => {
    await onDefaultLimits(async () => {
      for (const tail of TAILS) {
        await check({ n: 41, v: 1271, k: 17, dtype: 'f32', tail, ...ALL, grad: 'given', gradDtype: 'f32', temperature: 1.5 });
        await check({ n: 41, v: 1271, k: 17, dtype: 'bf16', tail, ...ALL, grad: 'given', gradDtype: 'input', valuesDtype: 'input' });
      }
      // fewer bindings, once (each variant costs lavapipe seconds of pipeline compilation)
      await check({ n: 41, v: 1271, k: 17, dtype: 'f16', tail: 'bucket', ...ALL, grad: 'inplace', gradScale: -0.7 });
      await check({ n: 41, v: 1271, k: 17, dtype: 'f32', tail: 'bucket', labels: true, mask: true, reduction: 'sum', grad: 'given', gradDtype: 'f32' });
    });
  });

  it('row chunks and borrowed inputs at odd offsets (the mask at byte 3), packed and alone', SLOW, async () => {
    await onDefaultLimits(async () => {
      // 6000-byte rows: 10 rows per 64 KiB chunk, so chunks start at rows 10, 20, 30 (mask bytes off a word)
      _setBindingLimit(64 * 1024);
      for (const tail of TAILS)
        await check({ n: 41, v: 1271, k: 17, dtype: 'f32', tail, ...ALL, grad: 'given', gradDtype: 'f32', ld: 1500, borrowed: true });
      await check({ n: 41, v: 1271, k: 17, dtype: 'f32', tail: 'bucket', mask: true, reduction: 'none', ld: 1500, borrowed: true, seed: 3 });
      _setBindingLimit(undefined);
      await check({ n: 41, v: 1271, k: 17, dtype: 'bf16', tail: 'conditional', ...ALL, grad: 'given', gradDtype: 'input', borrowed: true, seed: 5 });
    });
  });
});

/** The storage buffers a kernel binds: its `var<storage` declarations (layout 'auto'). */
function storageBindings(wgsl: string): number {
  return wgsl.match(/var<storage\b/g)?.length ?? 0;
}
const B = [false, true];
const FLOAT_DTYPES: WgslDType[] = ['f32', 'f16', 'bf16'];

describe('storage bindings of every WebGPU kernel stay within the default limit of 8', () => {
  it('sparseKlDiv: the row kernel (every tail, input, gradient and reduction) and the pack kernel', () => {
    let max = 0;
    for (const tail of Object.values(SPARSE_TAIL))
      for (const gDtype of [null, 'f32', 'bf16'] as const)
        for (const inplace of gDtype ? B : [false])
          for (const labels of B)
            for (const mask of B)
              for (const weights of B)
                for (const lossPerRow of B)
                  for (const sDtype of FLOAT_DTYPES) {
                    const c = { sDtype, vDtype: 'f32' as WgslDType, gDtype, inplace, tail, labels, mask, weights, lossPerRow };
                    const nb = storageBindings(sparseWgsl(c));
                    expect(nb, JSON.stringify(c)).toBeLessThanOrEqual(8);
                    max = Math.max(max, nb);
                  }
    // S, IDS, VALS, the per-token inputs, GR, WS, LOSS and the 'bucket' bitmap
    expect(max).toBe(8);
    for (const t of B) for (const labels of B) for (const weights of B) for (const mask of B)
      expect(storageBindings(sparseAuxWgsl({ tail: t, labels, weights, mask }))).toBeLessThanOrEqual(5);
  });

  it('divergence (rows, count, reduce), tokenStats, topk and sampleTeacher', () => {
    let max = 0;
    for (const div of Object.values(DIV))
      for (const gDtype of [null, 'f32', 'f16'] as const)
        for (const inplace of gDtype ? B : [false])
          for (const labels of B)
            for (const mask of B)
              for (const weights of B)
                for (const perToken of labels ? B : [false]) {
                  const ce = labels;
                  const c = {
                    div, sDtype: 'f32' as WgslDType, tDtype: 'bf16' as WgslDType, gDtype, inplace, tRaw: false, ce, ceOwn: ce && div !== DIV.none,
                    eps: false, labels, mask, weights, perToken, lossPerRow: !perToken, staged: true, wg: 256,
                  };
                  const nb = storageBindings(divergenceRowWgsl(c));
                  expect(nb, JSON.stringify(c)).toBeLessThanOrEqual(8);
                  max = Math.max(max, nb);
                }
    expect(max).toBe(7); // S, T, GR, LAB, MASK, WTS, WS
    for (const labels of B) for (const mask of B) expect(storageBindings(countWgsl(labels, mask))).toBeLessThanOrEqual(3);
    expect(storageBindings(reduceWgsl())).toBe(2);
    for (const sampled of B) expect(storageBindings(tokenStatsWgsl({ sDtype: 'bf16', tDtype: 'f32', sampled }))).toBeLessThanOrEqual(4);
    for (const valuesDtype of FLOAT_DTYPES) expect(storageBindings(topkWgsl({ xDtype: valuesDtype, valuesDtype }))).toBe(4);
    expect(storageBindings(sampleTeacherWgsl())).toBe(4); // logits, ids, weights, log-probs
  });
});
