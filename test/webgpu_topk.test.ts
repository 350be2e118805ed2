/**
 * topk on WebGPU (lib/webgpu/topk.ts, wgsl/topk.wgsl.ts) against the float64 reference
 * (a full sort per row) and against the CPU path, on the CPU tests' cases: odd shapes,
 * V = 1 … 151936, k = 1 … 1024 and k = V, tie-heavy rows, ±0, -inf, NaN, tiny tails,
 * row strides and element offsets, every values dtype. Skips (saying why) where no
 * WebGPU adapter exists.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { _setBindingLimit } from '../lib/webgpu/runtime.js';
import { topkWebgpu } from '../lib/webgpu/topk.js';
import { compareArrays, decodeDtype, encodeDtype, mulberry32, randomLogits, roundToDtype, type FloatDType } from './reference/common.js';
import { refTopk } from './reference/sparse.js';
import { TOPK_LOGPROB_TOL, TOPK_OUT_ROUNDING, TOPK_TAIL_TOL } from './tolerances.js';
import { errorOf } from './helpers.js';
import { GPU, GPU_SKIP_REASON, gpuOut, gpuRows, readF32, readI32, readU16 } from './webgpu_rows.js';

const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];

interface Case {
  n: number;
  v: number;
  k: number;
  dtype: FloatDType;
  data: Float64Array;
  temperature?: number;
  output?: 'logits' | 'logprobs';
  valuesDtype?: 'f32' | 'input';
  ld?: number;
  offset?: number;
}

/**
 * The public API on a WebGPU tensor: a borrowed buffer (kd.fromGPUBuffer) holding the
 * rows at element `offset` with row stride `ld`.
 */
async function runGpu(c: Case) {
  const dev = GPU!;
  const { n, v, k, dtype } = c;
  const ld = c.ld ?? v;
  const x = gpuRows(dev, c.data, n, v, dtype, ld, c.offset ?? 0);
  const t = kd.fromGPUBuffer(x.buffer, [n, v], { dtype, strides: [ld, 1], byteOffset: (c.offset ?? 0) * (dtype === 'f32' ? 4 : 2) });
  const outDtype: FloatDType = c.valuesDtype === 'input' ? dtype : 'f32';
  const r = kd.topk(t, k, { temperature: c.temperature, output: c.output, valuesDtype: c.valuesDtype });
  expect(r.values.device).toBe('webgpu');
  expect(r.indices.shape).toEqual([n, k]);
  expect(r.values.dtype).toBe(outDtype);
  const raw = await r.values.toArrayAsync();
  const vals = outDtype === 'f32' ? Float64Array.from(raw as Float32Array) : decodeDtype(raw as Uint16Array, outDtype);
  const ids = (await r.indices.toArrayAsync()) as Int32Array;
  const tl = (await r.tailLogProb.toArrayAsync()) as Float32Array;
  for (const o of [r.values, r.indices, r.tailLogProb]) o.dispose();
  x.buffer.destroy();
  return { vals, ids, tl, outDtype };
}

/** The launcher directly on GPUBuffers with element offsets (the outputs start mid-buffer too). */
async function runLauncher(c: Case) {
  const dev = GPU!;
  const { n, v, k, dtype } = c;
  const x = gpuRows(dev, c.data, n, v, dtype, c.ld ?? v, c.offset ?? 0);
  const outDtype: FloatDType = c.valuesDtype === 'input' ? dtype : 'f32';
  const vb = outDtype === 'f32' ? 4 : 2;
  const values = { ...gpuOut(dev, n * k, 3, vb), dtype: outDtype };
  const indices = gpuOut(dev, n * k, 1);
  const tail = gpuOut(dev, n, 2);
  topkWebgpu(dev, { logits: x, k, temperature: c.temperature ?? 1, outputLogprobs: c.output === 'logprobs', values, indices, tailLogProb: tail });
  const vals = outDtype === 'f32' ? Float64Array.from(await readF32(dev, values, n * k)) : decodeDtype(await readU16(dev, values, n * k), outDtype);
  const ids = await readI32(dev, indices, n * k);
  const tl = await readF32(dev, tail, n);
  for (const b of [x.buffer, values.buffer, indices.buffer, tail.buffer]) b.destroy();
  return { vals, ids, tl, outDtype };
}

async function check(c: Case, via: 'api' | 'launcher' = 'api'): Promise<void> {
  const { n, v, k, dtype } = c;
  const label = `webgpu topk ${n}x${v} k=${k} ${dtype} T=${c.temperature ?? 1} ${c.output ?? 'logits'} values=${c.valuesDtype ?? 'f32'}`;
  const g = via === 'api' ? await runGpu(c) : await runLauncher(c);
  const ref = refTopk(roundToDtype(c.data, dtype), n, v, k, { temperature: c.temperature, output: c.output });
  const ids = compareArrays(g.ids, ref.indices, { label: `${label} indices`, cols: k });
  expect(ids.ok, ids.message).toBe(true);
  const vt = c.output === 'logprobs' ? { atol: TOPK_LOGPROB_TOL.atol, rtol: TOPK_LOGPROB_TOL.rtol + TOPK_OUT_ROUNDING[g.outDtype] } : { atol: 0, rtol: 0 };
  const cv = compareArrays(g.vals, ref.values, { ...vt, label: `${label} values`, cols: k });
  expect(cv.ok, cv.message).toBe(true);
  const ct = compareArrays(g.tl, ref.tailLogProb, { ...TOPK_TAIL_TOL, label: `${label} tailLogProb` });
  expect(ct.ok, ct.message).toBe(true);

  // The CPU path on the same input: identical ids, values within the same bounds.
  const padded = new Float64Array(n * v);
  padded.set(c.data.subarray(0, n * v));
  const cpu = kd.topk(kd.tensor(encodeDtype(padded, dtype), [n, v], { dtype }), k, { temperature: c.temperature, output: c.output, valuesDtype: c.valuesDtype });
  expect(Array.from(g.ids), `${label} ids vs CPU`).toEqual(Array.from(cpu.indices.toArray()));
  const cpuVals = decodeDtype(cpu.values.toArray() as Float32Array | Uint16Array, g.outDtype);
  const cc = compareArrays(g.vals, cpuVals, { ...vt, label: `${label} values vs CPU`, cols: k });
  expect(cc.ok, cc.message).toBe(true);
  const ctc = compareArrays(g.tl, cpu.tailLogProb.toArray(), { ...TOPK_TAIL_TOL, label: `${label} tail vs CPU` });
  expect(ctc.ok, ctc.message).toBe(true);
}

function ties(n: number, v: number, m: number, seed: number): Float64Array {
  const rng = mulberry32(seed);
  return Float64Array.from({ length: n * v }, () => Math.floor(rng() * m));
}

function tinyTail(n: number, v: number, k: number, tail: number, seed: number): Float64Array {
  const rng = mulberry32(seed);
  const out = new Float64Array(n * v);
  const base = Math.log((tail * k) / (v - k));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < v; j++) out[i * v + j] = base + (rng() - 0.5);
    for (let c = 0; c < k; c++) out[i * v + Math.floor(rng() * v)] = rng() * 0.5;
  }
  return out;
}

describe.skipIf(!GPU)(`topk on WebGPU vs the float64 reference and the CPU ${GPU_SKIP_REASON}`, () => {
  for (const dtype of DTYPES) {
    it(`odd shapes, strides, offsets, ${dtype}`, async () => {
      await check({ n: 41, v: 1271, k: 17, dtype, data: randomLogits(41, 1271, { seed: 1, peaked: true }) });
      await check({ n: 41, v: 1271, k: 17, dtype, data: randomLogits(41, 1271, { seed: 2, scale: 3 }), output: 'logprobs', temperature: 2.5, offset: 5 });
      await check({ n: 7, v: 123, k: 7, dtype, data: randomLogits(7, 123, { seed: 3 }), output: 'logprobs', ld: 131, offset: 1 });
      await check({ n: 3, v: 32000, k: 64, dtype, data: randomLogits(3, 32000, { seed: 4, scale: 2 }), output: 'logprobs', valuesDtype: 'input' });
      await check({ n: 7, v: 123, k: 9, dtype, data: randomLogits(7, 123, { seed: 41 }), valuesDtype: 'input', offset: 3 });
    });

    it(`edge k and V, ${dtype}`, async () => {
      await check({ n: 4, v: 1, k: 1, dtype, data: randomLogits(4, 1, { seed: 6 }), output: 'logprobs' });
      await check({ n: 3, v: 123, k: 1, dtype, data: randomLogits(3, 123, { seed: 7 }), output: 'logprobs' });
      await check({ n: 3, v: 123, k: 123, dtype, data: randomLogits(3, 123, { seed: 8 }), output: 'logprobs' });
      await check({ n: 2, v: 1271, k: 1024, dtype, data: randomLogits(2, 1271, { seed: 9 }), output: 'logprobs' });
      await check({ n: 2, v: 32000, k: 1024, dtype, data: randomLogits(2, 32000, { seed: 10, scale: 4 }), temperature: 0.7 });
    });

    it(`tie-heavy inputs, ${dtype}`, async () => {
      await check({ n: 5, v: 1271, k: 17, dtype, data: ties(5, 1271, 5, 11), output: 'logprobs' });
      await check({ n: 3, v: 20000, k: 1024, dtype, data: ties(3, 20000, 3, 12) });
      await check({ n: 3, v: 5000, k: 100, dtype, data: new Float64Array(3 * 5000).fill(1.5), output: 'logprobs' });
      await check({ n: 2, v: 3000, k: 40, dtype, data: ties(2, 3000, 2, 13).map((x) => (x === 0 ? -0 : 0)) });
      await check({ n: 2, v: 6000, k: 64, dtype, data: Float64Array.from({ length: 12000 }, (_, i) => (i % 6000) * 1e-2) });
    });

    it(`-inf entries, peaked rows, tiny tails, ${dtype}`, async () => {
      await check({ n: 7, v: 1271, k: 31, dtype, data: randomLogits(7, 1271, { seed: 14, peaked: true, negInf: 100 }), output: 'logprobs' });
      await check({ n: 3, v: 200, k: 9, dtype, data: randomLogits(3, 200, { seed: 15, negInf: 195 }), output: 'logprobs' });
      await check({ n: 4, v: 5000, k: 8, dtype, data: tinyTail(4, 5000, 8, 1e-30, 16), output: 'logprobs' });
    });
  }

  it('V = 151936 (bf16 and f32)', async () => {
    await check({ n: 2, v: 151936, k: 64, dtype: 'bf16', data: randomLogits(2, 151936, { seed: 5, scale: 2, peaked: true }), output: 'logprobs' });
    await check({ n: 1, v: 151936, k: 64, dtype: 'f32', data: tinyTail(1, 151936, 64, 1e-30, 17), output: 'logprobs' });
  });

  it('rows without a distribution: NaN or only -inf give NaN tails and log-probs', async () => {
    const v = 50;
    const data = randomLogits(3, v, { seed: 19 });
    data[5] = NaN;
    for (let j = 0; j < v; j++) data[v + j] = -Infinity;
    await check({ n: 3, v, k: 4, dtype: 'f32', data, output: 'logprobs' });
    const g = await runGpu({ n: 3, v, k: 4, dtype: 'f32', data, output: 'logprobs' });
    expect(Number.isNaN(g.tl[0]!) && Number.isNaN(g.tl[1]!)).toBe(true);
    expect(Number.isFinite(g.tl[2]!)).toBe(true);
    expect(g.ids[0]).toBe(5);
  });

  it('the launcher on GPUBuffers with element offsets (inputs and outputs mid-buffer)', async () => {
    for (const dtype of DTYPES) {
      await check({ n: 7, v: 123, k: 9, dtype, data: randomLogits(7, 123, { seed: 42 }), output: 'logprobs', ld: 131, offset: 3 }, 'launcher');
      await check({ n: 5, v: 301, k: 7, dtype, data: randomLogits(5, 301, { seed: 43 }), valuesDtype: 'input', offset: 1 }, 'launcher');
    }
  });

  it('[B, T, V] logits give [B, T, k] outputs; N = 0 works', async () => {
    const data = randomLogits(6, 300, { seed: 20 });
    const t = kd.tensor(Float32Array.from(data), [2, 3, 300], { device: 'webgpu' });
    const r = kd.topk(t, 5, { output: 'logprobs' });
    expect(r.values.shape).toEqual([2, 3, 5]);
    expect(r.tailLogProb.shape).toEqual([2, 3]);
    const ref = refTopk(roundToDtype(data, 'f32'), 6, 300, 5);
    expect(Array.from((await r.indices.toArrayAsync()) as Int32Array)).toEqual(Array.from(ref.indices));
    const e = kd.topk(kd.empty([0, 10], { device: 'webgpu' }), 3);
    expect(e.values.shape).toEqual([0, 3]);
    expect(((await e.values.toArrayAsync()) as Float32Array).length).toBe(0);
  });

  it('topkAsync on WebGPU equals topk', async () => {
    const t = kd.tensor(Float32Array.from(randomLogits(3, 999, { seed: 44 })), [3, 999], { device: 'webgpu' });
    const a = kd.topk(t, 10, { output: 'logprobs' });
    const b = await kd.topkAsync(t, 10, { output: 'logprobs' });
    expect(Array.from((await b.values.toArrayAsync()) as Float32Array)).toEqual(Array.from((await a.values.toArrayAsync()) as Float32Array));
  });

  it('bad input gets the CPU errors (and sync reads of the results say to await)', () => {
    const t = kd.tensor(new Float32Array(2 * 10), [2, 10], { device: 'webgpu' });
    const cases: [() => unknown, string, string, RegExp][] = [
      [() => kd.topk(t, 0), 'RangeError', 'KD_EINVAL', /between 1 and 1024 for k/],
      [() => kd.topk(t, 11), 'RangeError', 'KD_ESHAPE', /exceeds the vocabulary size V = 10/],
      [() => kd.topk(t, 2, { temperature: 0 }), 'RangeError', 'KD_EINVAL', /temperature/],
      [() => kd.topk(t, 2, { output: 'probs' as 'logits' }), 'RangeError', 'KD_EINVAL', /for output/],
      [() => kd.topk(t, 2, { tempreature: 2 } as never), 'TypeError', 'KD_EINVAL', /Unknown option 'tempreature'/],
      [() => kd.topk(kd.tensor(new Int32Array(4), [2, 2], { device: 'webgpu' }), 1), 'TypeError', 'KD_EDTYPE', /f32, f16 or bf16/],
      [() => kd.topk(kd.tensor(new Float32Array(4), [4], { device: 'webgpu' }), 1), 'RangeError', 'KD_ESHAPE', /\[N, V\]/],
      [() => kd.topk(t, 2, { stream: 1n }), 'KdError', 'KD_EDEVICE', /stream/],
      [() => kd.topk(t, 2).values.toArray(), 'KdError', 'KD_EDEVICE', /toArrayAsync/],
    ];
    for (const [fn, cls, code, msg] of cases) {
      const e = errorOf(fn);
      expect([e.name, e.code], e.message).toEqual([cls, code]);
      expect(e.message).toMatch(msg);
    }
  });

  it('row chunks (bindings capped at 64 KiB: 5 dispatches) give the same bits as one dispatch', async () => {
    const c: Case = { n: 41, v: 1271, k: 17, dtype: 'f32', data: randomLogits(41, 1271, { seed: 45, scale: 2 }), output: 'logprobs', ld: 1280 };
    const whole = await runGpu(c);
    _setBindingLimit(64 * 1024);
    try {
      const chunked = await runGpu(c);
      expect(Array.from(chunked.ids)).toEqual(Array.from(whole.ids));
      expect(Array.from(chunked.vals)).toEqual(Array.from(whole.vals));
      expect(Array.from(chunked.tl)).toEqual(Array.from(whole.tl));
      await check({ ...c, valuesDtype: 'input', dtype: 'bf16' });
    } finally {
      _setBindingLimit(undefined);
    }
  });

  it('deterministic: two runs give the same bits', async () => {
    const c: Case = { n: 9, v: 20000, k: 100, dtype: 'bf16', data: randomLogits(9, 20000, { seed: 21, scale: 2 }), output: 'logprobs' };
    const a = await runGpu(c);
    const b = await runGpu(c);
    expect(Array.from(b.ids)).toEqual(Array.from(a.ids));
    expect(Array.from(b.vals)).toEqual(Array.from(a.vals));
    expect(Array.from(b.tl)).toEqual(Array.from(a.tl));
  });
});
