/// <reference types="@webgpu/types" />
/**
 * sampleTeacher on WebGPU (lib/webgpu/sample_teacher.ts, wgsl/sample_teacher.wgsl.ts)
 * against the CPU path on the same data: the drawn ids bitwise equal, the weights and
 * log-probs within the tolerances derived below, over V = 1 … 151936, N = 0 … 65537,
 * 1 … 300 draws (more than a workgroup's 256 threads), temperatures 1 / 0.7 / 2,
 * proposal powers 1 / 0.5 / 0, peaked rows, -inf entries, invalid rows (NaN, +inf, all
 * -inf), row strides and element offsets, f32 / f16 / bf16, seeds up to 2^64 − 1, row
 * chunks. And the WGSL integer arithmetic the ids rest on, unit by unit: the soft fma
 * (fma_bits) against an exact reference, the fixed-point proposal (sample_prop) against a
 * port of native/common/sample_teacher.h's sample_exp, and the 64-bit splitmix64 stream
 * and mulhi against BigInt. Skips, saying why, without an adapter.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { _setBindingLimit, createBuffer, pipeline, readBuffer, run } from '../lib/webgpu/runtime.js';
import { sampleFixedShift, sampleMix64, sampleRandom, sampleTeacherWebgpu } from '../lib/webgpu/sample_teacher.js';
import { SAMPLE_FIXED_WGSL, SOFT_FMA_WGSL, U64_WGSL } from '../lib/webgpu/wgsl/sample_teacher.wgsl.js';
import { errorOf } from './helpers.js';
import { compareArrays, encodeDtype, mulberry32, randn, randomLogits, type FloatDType } from './reference/common.js';
import { TOPK_LOGPROB_TOL, U32 } from './tolerances.js';
import { GPU, GPU_SKIP_REASON, gpuOut, gpuRows, readF32, readI32, uploadBytes } from './webgpu_rows.js';

// ---- tolerances against the CPU path (defined once) ------------------------------------
// Ids: bitwise (the proposal is integer arithmetic on both sides; see the WGSL header).
// Log-probs (x − m)/T − log S: the quantity of topk's log-probs (TOPK_LOGPROB_TOL in
// tolerances.ts: S is an f32 sum on either backend, ~1e-6 relative). Here (x − m)·(1/T)
// is also evaluated in f32 (the CPU: double), adding ≤ 3u·|x − m|/T ≤ 1.8e-7·|log-prob|,
// inside its rtol, and log S is WGSL's f32 log (Vulkan: 2^-21 absolute on [0.5, 2],
// else 3 ulp of log S ≤ 12: ≤ 3e-6 absolute), inside its atol.
const LP_TOL = TOPK_LOGPROB_TOL;
// Weights e^logprob · Q / (n q_id): Q and q_id are the CPU's integers exactly, so the
// relative error is the log-prob's absolute error (bounded as above) plus the f32
// roundings of the ratio (three conversions and a division) and of e^f (≤ 4 ulp): 16u.
// A GPU may flush a weight below 2^-126 (f32's normal range) to 0: atol 2^-126.
const W_ROUNDING = 16 * U32;
const W_FLUSH = 2 ** -126;

function weightTol(cpuW: Float32Array, cpuLp: Float32Array) {
  const atolPer = Float64Array.from(cpuW, (w, i) => Math.abs(w) * (LP_TOL.atol + LP_TOL.rtol * Math.abs(cpuLp[i]!) + W_ROUNDING));
  return { atol: W_FLUSH, rtol: 0, atolPer };
}

const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];
const ES: Record<FloatDType, number> = { f32: 4, f16: 2, bf16: 2 };

interface Case {
  n: number;
  v: number;
  ns: number;
  dtype: FloatDType;
  data: Float64Array;
  seed: number | bigint;
  temperature?: number;
  proposalPower?: number;
  logprobs?: boolean;
  ld?: number;
  offset?: number;
}

function label(c: Case): string {
  return `webgpu sampleTeacher ${c.n}x${c.v} n=${c.ns} ${c.dtype} T=${c.temperature ?? 1} tau=${c.proposalPower ?? 1} seed=${c.seed}${c.ld ? ` ld=${c.ld}` : ''}`;
}

/** Through the public API on a borrowed buffer holding the rows at `offset` with stride `ld`. */
async function runGpu(c: Case) {
  const dev = GPU!;
  const ld = c.ld ?? c.v;
  const x = gpuRows(dev, c.data, c.n, c.v, c.dtype, ld, c.offset ?? 0);
  const t = kd.fromGPUBuffer(x.buffer, [c.n, c.v], { dtype: c.dtype, strides: [ld, 1], byteOffset: (c.offset ?? 0) * ES[c.dtype] });
  const r = kd.sampleTeacher(t, c.ns, { seed: c.seed, temperature: c.temperature, proposalPower: c.proposalPower, logprobs: c.logprobs });
  expect(r.indices.device).toBe('webgpu');
  expect(r.indices.shape).toEqual([c.n, c.ns]);
  expect(r.logprobs === undefined).toBe(c.logprobs === false);
  const ids = (await r.indices.toArrayAsync()) as Int32Array;
  const w = (await r.weights.toArrayAsync()) as Float32Array;
  const lp = r.logprobs ? ((await r.logprobs.toArrayAsync()) as Float32Array) : undefined;
  for (const o of [r.indices, r.weights, r.logprobs]) o?.dispose();
  x.buffer.destroy();
  return { ids, w, lp };
}

function runCpu(c: Case) {
  const t = kd.tensor(encodeDtype(c.data, c.dtype), [c.n, c.v], { dtype: c.dtype });
  const r = kd.sampleTeacher(t, c.ns, { seed: c.seed, temperature: c.temperature, proposalPower: c.proposalPower });
  return { ids: r.indices.toArray() as Int32Array, w: r.weights.toArray() as Float32Array, lp: r.logprobs!.toArray() as Float32Array };
}

/** The WebGPU result against the CPU's: ids bitwise, weights and log-probs within the bounds above. */
function expectMatch(c: Case, g: { ids: Int32Array; w: Float32Array; lp?: Float32Array }, cpu: ReturnType<typeof runCpu>, values = true): void {
  const l = label(c);
  const ci = compareArrays(g.ids, cpu.ids, { label: `${l} ids`, cols: c.ns });
  expect(ci.ok, ci.message).toBe(true);
  expect(g.ids).toEqual(cpu.ids);
  if (!values) return;
  const cw = compareArrays(g.w, cpu.w, { ...weightTol(cpu.w, cpu.lp), label: `${l} weights`, cols: c.ns });
  expect(cw.ok, cw.message).toBe(true);
  if (g.lp) {
    const cl = compareArrays(g.lp, cpu.lp, { ...LP_TOL, label: `${l} logprobs`, cols: c.ns });
    expect(cl.ok, cl.message).toBe(true);
  }
}

async function check(c: Case): Promise<void> {
  expectMatch(c, await runGpu(c), runCpu(c));
}

/** Random rows where row i has one logit `peak` above its largest other entry (0: no peak). */
function peakedRows(n: number, v: number, seed: number, peak: number, negInf = 0): Float64Array {
  const d = randomLogits(n, v, { seed, negInf });
  if (peak > 0 && v > 1) {
    const rng = mulberry32(seed + 99);
    for (let i = 0; i < n; i++) {
      const row = d.subarray(i * v, (i + 1) * v);
      let j = Math.floor(rng() * v);
      if (row[j] === -Infinity) j = row.findIndex((x) => x > -Infinity);
      row[j] = Math.max(...row) + peak;
    }
  }
  return d;
}

const SEEDS: (number | bigint)[] = [0, 1, 20250, 2n ** 53n + 12345n, 2n ** 64n - 1n];

describe.skipIf(!GPU)(`sampleTeacher on WebGPU draws the CPU's ids ${GPU_SKIP_REASON}`, () => {
  for (const dtype of DTYPES) {
    it(`V = 1, 2, 7, 1000, 32000; N odd; 1 … 300 draws; T and tau; ${dtype}`, async () => {
      const cases: [n: number, v: number, ns: number, T: number, tau: number, peak: number, negInf: number][] = [
        [5, 1, 8, 1, 1, 0, 0],
        [3, 2, 64, 0.7, 0.5, 0, 0],
        [9, 7, 300, 2, 0, 0, 0],
        [1, 7, 1, 1, 0.5, 30, 2],
        [33, 1000, 64, 0.7, 1, 30, 10],
        [7, 1000, 300, 2, 0.5, 0, 500],
        [5, 32000, 64, 1, 0.5, 30, 0],
        [3, 32000, 300, 2, 1, 0, 100],
        [2, 32000, 8, 0.7, 0, 30, 31000],
      ];
      for (const [k, [n, v, ns, T, tau, peak, negInf]] of cases.entries())
        await check({ n, v, ns, dtype, temperature: T, proposalPower: tau, seed: SEEDS[k % SEEDS.length]!, data: peakedRows(n, v, 10 * k + 1, peak, negInf) });
    });

    it(`every temperature x proposal power, peaked and flat rows, ${dtype}`, async () => {
      for (const T of [1, 0.7, 2])
        for (const tau of [1, 0.5, 0])
          for (const peak of [0, 30])
            await check({ n: 7, v: 1000, ns: 64, dtype, temperature: T, proposalPower: tau, seed: 2n ** 53n + BigInt(Math.round(T * 10 + tau * 100 + peak)), data: peakedRows(7, 1000, 5 + peak, peak, 20) });
    });

    it(`row strides and element offsets; logprobs: false, ${dtype}`, async () => {
      await check({ n: 7, v: 123, ns: 17, dtype, ld: 131, offset: 3, seed: 7, proposalPower: 0.5, data: peakedRows(7, 123, 3, 30, 5) });
      await check({ n: 33, v: 1000, ns: 64, dtype, ld: 1003, offset: 1, seed: 2n ** 60n, temperature: 0.7, data: randomLogits(33, 1000, { seed: 4, peaked: true, negInf: 9 }) });
      const c: Case = { n: 5, v: 301, ns: 9, dtype, ld: 310, seed: 11, logprobs: false, data: randomLogits(5, 301, { seed: 5 }) };
      expectMatch(c, await runGpu(c), runCpu(c));
    });
  }

  it('V = 151936 (f32 and bf16, tau 1 and 0.5)', async () => {
    await check({ n: 2, v: 151936, ns: 64, dtype: 'bf16', seed: 42n, data: randomLogits(2, 151936, { seed: 6, scale: 2, peaked: true, negInf: 7 }) });
    await check({ n: 1, v: 151936, ns: 300, dtype: 'f32', seed: 2n ** 64n - 1n, proposalPower: 0.5, temperature: 0.7, data: randomLogits(1, 151936, { seed: 7, scale: 2 }) });
  });

  it('invalid rows (NaN, +inf, all -inf) give ids 0 and NaN weights and log-probs, only in their row', async () => {
    const v = 50;
    for (const dtype of DTYPES) {
      const data = randomLogits(5, v, { seed: 8, negInf: 3 });
      data[3] = NaN;
      data[v + 7] = Infinity;
      for (let j = 0; j < v; j++) data[2 * v + j] = -Infinity;
      const c: Case = { n: 5, v, ns: 300, dtype, seed: 3, proposalPower: 0.5, data };
      const g = await runGpu(c);
      expectMatch(c, g, runCpu(c));
      for (let i = 0; i < 5; i++)
        for (let d = 0; d < c.ns; d++) {
          const e = i * c.ns + d;
          if (i < 3) expect([g.ids[e], Number.isNaN(g.w[e]!), Number.isNaN(g.lp![e]!)], `row ${i} draw ${d}`).toEqual([0, true, true]);
          else expect(Number.isFinite(g.w[e]!) && Number.isFinite(g.lp![e]!) && data[i * v + g.ids[e]!]! > -Infinity, `row ${i} draw ${d}`).toBe(true);
        }
    }
  });

  it('subnormal logits and signed zeros: ids exact (fma_bits keeps subnormals the driver may flush)', async () => {
    // m = 0 and the other logits subnormal (f32, bf16) or tiny: with T = 1e-38, (x − m)·c
    // spans [-0.1, 0], so the proposals differ and depend on every subnormal bit. Only the
    // ids are compared: the weights and log-probs at the ids use the driver's f32
    // arithmetic, which WGSL lets flush subnormal operands.
    for (const dtype of ['f32', 'bf16'] as const) {
      const n = 3, v = 2000;
      const rng = mulberry32(9);
      const data = Float64Array.from({ length: n * v }, () => -Math.floor(rng() * 700000) * 2 ** -149 * (dtype === 'bf16' ? 256 : 1));
      data[5] = 0;
      data[v + 1] = -0;
      data[2 * v + 2] = 0;
      data[2 * v + 3] = -0;
      for (const tau of [1, 0.5]) {
        const c: Case = { n, v, ns: 64, dtype, seed: 5, temperature: 1e-38, proposalPower: tau, data };
        const cpu = runCpu(c);
        expect(new Set(cpu.ids).size, 'the proposal is not flat').toBeGreaterThan(20);
        expectMatch(c, await runGpu(c), cpu, false);
      }
    }
  });

  it('tau / T overflowing f32 (every q = 0): ids V - 1 and NaN weights, as on the CPU', async () => {
    const c: Case = { n: 2, v: 10, ns: 5, dtype: 'f32', seed: 1, temperature: 1e-38, proposalPower: 10, data: randomLogits(2, 10, { seed: 10 }) };
    const g = await runGpu(c);
    const cpu = runCpu(c);
    expectMatch(c, g, cpu);
    expect(Array.from(g.ids)).toEqual(new Array(10).fill(9));
    expect(Array.from(g.w).every(Number.isNaN)).toBe(true);
  });

  it('N = 0, [B, T, V] logits, N > 65535 (2-D grid), sampleTeacherAsync', async () => {
    const e = kd.sampleTeacher(kd.empty([0, 10], { device: 'webgpu' }), 3, { seed: 0 });
    expect(e.indices.shape).toEqual([0, 3]);
    expect(((await e.weights.toArrayAsync()) as Float32Array).length).toBe(0);
    const data = randomLogits(6, 300, { seed: 11 });
    const t = kd.tensor(Float32Array.from(data), [2, 3, 300], { device: 'webgpu' });
    const r = kd.sampleTeacher(t, 5, { seed: 4 });
    expect(r.weights.shape).toEqual([2, 3, 5]);
    const cpu = kd.sampleTeacher(kd.tensor(Float32Array.from(data), [2, 3, 300]), 5, { seed: 4 });
    expect((await r.indices.toArrayAsync()) as Int32Array).toEqual(cpu.indices.toArray());
    const a = await kd.sampleTeacherAsync(t, 5, { seed: 4 });
    expect((await a.indices.toArrayAsync()) as Int32Array).toEqual(cpu.indices.toArray());
    expect(Buffer.from(((await a.weights.toArrayAsync()) as Float32Array).buffer).equals(Buffer.from(((await r.weights.toArrayAsync()) as Float32Array).buffer))).toBe(true);
    await check({ n: 65537, v: 3, ns: 2, dtype: 'f32', seed: 2n ** 53n + 1n, proposalPower: 0.5, data: randomLogits(65537, 3, { seed: 12 }) });
  });

  it('row chunks (bindings capped at 64 KiB) give the same bits as one dispatch, and the CPU ids', async () => {
    const c: Case = { n: 41, v: 1271, ns: 64, dtype: 'bf16', ld: 1280, seed: 2n ** 63n + 5n, proposalPower: 0.5, data: randomLogits(41, 1271, { seed: 13, peaked: true }) };
    const whole = await runGpu(c);
    _setBindingLimit(64 * 1024);
    try {
      const chunked = await runGpu(c);
      expect(chunked.ids).toEqual(whole.ids);
      expect(Array.from(chunked.w)).toEqual(Array.from(whole.w));
      expect(Array.from(chunked.lp!)).toEqual(Array.from(whole.lp!));
      expectMatch(c, chunked, runCpu(c));
    } finally {
      _setBindingLimit(undefined);
    }
  });

  it('the launcher on GPUBuffers with element offsets (inputs and outputs mid-buffer)', async () => {
    const dev = GPU!;
    for (const dtype of DTYPES) {
      const c: Case = { n: 7, v: 123, ns: 9, dtype, ld: 127, offset: 3, seed: 77n, temperature: 2, proposalPower: 0.5, data: randomLogits(7, 123, { seed: 14 }) };
      const x = gpuRows(dev, c.data, c.n, c.v, dtype, c.ld, c.offset);
      const indices = gpuOut(dev, c.n * c.ns, 1);
      const weights = gpuOut(dev, c.n * c.ns, 2);
      const logprobs = gpuOut(dev, c.n * c.ns, 5);
      sampleTeacherWebgpu(dev, { logits: x, samples: c.ns, seed: 77n, temperature: 2, proposalPower: 0.5, indices, weights, logprobs });
      const g = { ids: await readI32(dev, indices, c.n * c.ns), w: await readF32(dev, weights, c.n * c.ns), lp: await readF32(dev, logprobs, c.n * c.ns) };
      expectMatch(c, g, runCpu(c));
      for (const b of [x.buffer, indices.buffer, weights.buffer, logprobs.buffer]) b.destroy();
    }
  });

  it('deterministic: two runs give the same bits; another seed other ids', async () => {
    const c: Case = { n: 9, v: 20000, ns: 64, dtype: 'bf16', seed: 21, proposalPower: 0.5, data: randomLogits(9, 20000, { seed: 15, scale: 2 }) };
    const a = await runGpu(c);
    const b = await runGpu(c);
    expect(b.ids).toEqual(a.ids);
    expect(Array.from(b.w)).toEqual(Array.from(a.w));
    expect(Array.from(b.lp!)).toEqual(Array.from(a.lp!));
    const d = await runGpu({ ...c, seed: 22 });
    expect(Array.from(d.ids)).not.toEqual(Array.from(a.ids));
  });

  it('bad input gets the CPU errors', async () => {
    const t = kd.tensor(new Float32Array(2 * 10), [2, 10], { device: 'webgpu' });
    const cases: [() => unknown, string, string, RegExp][] = [
      [() => kd.sampleTeacher(t, 0, { seed: 1 }), 'RangeError', 'KD_EINVAL', /between 1 and 4096 for n/],
      [() => kd.sampleTeacher(t, 4, {} as never), 'TypeError', 'KD_EINVAL', /seed is required/],
      [() => kd.sampleTeacher(t, 4, { seed: 1n << 64n }), 'RangeError', 'KD_EINVAL', /\[0, 2\^64\)/],
      [() => kd.sampleTeacher(t, 4, { seed: 1, temperature: 0 }), 'RangeError', 'KD_EINVAL', /temperature/],
      [() => kd.sampleTeacher(t, 4, { seed: 1, temperature: 1e-46 }), 'KdError', 'KD_EINVAL', /temperature must be > 0/],
      [() => kd.sampleTeacher(t, 4, { seed: 1, temperature: 1e39 }), 'KdError', 'KD_EINVAL', /temperature must be finite and > 0/],
      [() => kd.sampleTeacher(t, 4, { seed: 1, proposalPower: 1e39 }), 'KdError', 'KD_EINVAL', /proposalPower must be finite and >= 0/],
      [() => kd.sampleTeacher(t, 4, { seed: 1, stream: 1n }), 'KdError', 'KD_EDEVICE', /stream/],
      [() => kd.sampleTeacher(kd.tensor(new Int32Array(4), [2, 2], { device: 'webgpu' }), 1, { seed: 1 }), 'TypeError', 'KD_EDTYPE', /f32, f16 or bf16/],
      [() => kd.sampleTeacher(t, 4, { seed: 1 }).indices.toArray(), 'KdError', 'KD_EDEVICE', /toArrayAsync/],
    ];
    const cpuT = kd.tensor(new Float32Array(2 * 10), [2, 10]);
    for (const [fn, cls, code, msg] of cases) {
      const e = errorOf(fn);
      expect([e.name, e.code], e.message).toEqual([cls, code]);
      expect(e.message).toMatch(msg);
    }
    // the same calls on the CPU fail the same way (type and code)
    for (const o of [{ temperature: 1e-46 }, { temperature: 1e39 }, { proposalPower: 1e39 }]) {
      const g = errorOf(() => kd.sampleTeacher(t, 4, { seed: 1, ...o }));
      const c = errorOf(() => kd.sampleTeacher(cpuT, 4, { seed: 1, ...o }));
      expect([g.name, g.code]).toEqual([c.name, c.code]);
    }
    await expect(kd.sampleTeacherAsync(t, 0, { seed: 1 })).rejects.toMatchObject({ code: 'KD_EINVAL' });
  });
});

// ---- the WGSL integer arithmetic, unit by unit -----------------------------------------

const f32v = new Float32Array(1);
const u32v = new Uint32Array(f32v.buffer);
const f64v = new Float64Array(1);
const u64v = new BigUint64Array(f64v.buffer);
function bitsOf(x: number): number {
  f32v[0] = x;
  return u32v[0]!;
}
function fromBits(b: number): number {
  u32v[0] = b >>> 0;
  return f32v[0]!;
}

/**
 * The correctly rounded f32 fma, independently of the WGSL: a·b is exact in double
 * (24 + 24 bits), a TwoSum gives p + c = s + err exactly, and rounding s to odd when
 * err ≠ 0 makes the final double → f32 rounding (Math.fround) correct, subnormal
 * results included (53 ≥ 24 + 2; Boldo & Melquiond). The f32 inputs are finite.
 */
function fmaRef(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  if (s === 0 || !Number.isFinite(s)) return Math.fround(s);
  const bb = s - p;
  const err = (p - (s - bb)) + (c - bb);
  f64v[0] = s;
  if (err !== 0 && (u64v[0]! & 1n) === 0n) u64v[0] = err > 0 === s > 0 ? u64v[0]! + 1n : u64v[0]! - 1n;
  return Math.fround(f64v[0]!);
}

/** native/common/sample_teacher.h's sample_exp, step by step with fmaRef and Math.fround. */
function sampleExpRef(a: number): number {
  if (!(a > -87)) return 0;
  const t = fmaRef(a, Math.fround(1.44269504088896341), 12582912);
  const n = t - 12582912; // exact
  let f = fmaRef(n, -0.693359375, a);
  f = fmaRef(n, Math.fround(2.1219444e-4), f);
  const z = Math.fround(f * f);
  let y = Math.fround(1.98756915e-4);
  for (const k of [1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1]) y = fmaRef(y, f, Math.fround(k));
  y = fmaRef(y, z, f);
  y = fmaRef(y, 1, 1);
  return Math.fround(y * 2 ** n);
}

/** Runs `body` (WGSL using `inp` / `outp`, one invocation per output item of `outWords` words). */
async function runUnit(key: string, wgsl: string, input: Uint32Array, items: number, outWords: number): Promise<Uint32Array> {
  const dev = GPU!;
  const inp = uploadBytes(dev, input);
  const out = createBuffer(dev, items * outWords * 4);
  const code = `${U64_WGSL}\n${SOFT_FMA_WGSL}\n${SAMPLE_FIXED_WGSL}
@group(0) @binding(0) var<storage, read> inp: array<u32>;
@group(0) @binding(1) var<storage, read_write> outp: array<u32>;
const ITEMS: u32 = ${items}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * 65535u * 64u;
  if (i >= ITEMS) { return; }
${wgsl}
}`;
  const groups = Math.ceil(items / 64);
  run(dev, pipeline(dev, `test:${key}:${items}`, code), null, [inp, out], [Math.min(groups, 65535), Math.ceil(groups / 65535)]);
  const r = new Uint32Array(await readBuffer(dev, out, 0, items * outWords * 4));
  inp.destroy();
  out.destroy();
  return r;
}

function hex(b: number): string {
  return '0x' + (b >>> 0).toString(16).padStart(8, '0');
}

/** Random f32 bits: sign, an exponent field in [elo, ehi] (0: subnormal), random mantissa. */
function randBits(rng: () => number, elo: number, ehi: number): number {
  const e = elo + Math.floor(rng() * (ehi - elo + 1));
  return ((rng() < 0.5 ? 0x80000000 : 0) | (e << 23) | Math.floor(rng() * 0x800000)) >>> 0;
}

describe.skipIf(!GPU)(`the WGSL integer arithmetic of sampleTeacher ${GPU_SKIP_REASON}`, () => {
  it('fma_bits is the correctly rounded f32 fma: cancellation, ties to even, exponent gaps, zeros, subnormals, overflow', async () => {
    const triples: [number, number, number, string][] = [];
    const add = (a: number, b: number, c: number, why: string) => triples.push([bitsOf(a), bitsOf(b), bitsOf(c), why]);
    const addBits = (a: number, b: number, c: number, why: string) => triples.push([a >>> 0, b >>> 0, c >>> 0, why]);
    const rng = mulberry32(2024);
    // ties to even in the result: 4097² = 2^24 + 8193; − 8192 → 2^24 + 1 (tie → 2^24), − 8190 → 2^24 + 3 (tie → 2^24 + 4)
    add(4097, 4097, -8192, 'tie down to even');
    add(4097, 4097, -8190, 'tie up to even');
    add(4097, 4097, -8191, 'exact 2^24 + 2');
    for (let k = -140; k <= 100; k += 7) {
      add(4097 * 2 ** k, 4097, -8192 * 2 ** k, `tie scaled 2^${k}`);
      add(4097 * 2 ** k, -4097, 8190 * 2 ** k, `negative tie scaled 2^${k}`);
    }
    // the addend decides a tie through the sticky bit far below: 1 + 2^-24 is a tie, ± 2^-60 breaks it
    add(2 ** -12, 2 ** -12, 1, '1 + 2^-24: tie to 1');
    add(2 ** -12 + 2 ** -35, 2 ** -12, 1, '1 + 2^-24 + 2^-47: up');
    add(2 ** -12, -(2 ** -13), 1, '1 - 2^-25: tie to 1');
    add(2 ** -12 + 2 ** -35, -(2 ** -13), 1, '1 - 2^-25 - tiny: down to 1 - 2^-24');
    add(2 ** -60, 2 ** -60, 1, 'tiny product, big addend');
    add(2 ** -60, -(2 ** -60), 1, 'tiny negative product, big addend');
    add(1, 1, 2 ** -80, 'big product, tiny addend');
    add(1 + 2 ** -23, 1 - 2 ** -24, -(2 ** -90), 'sticky in the addend below the product');
    add(3, 1 + 2 ** -23, -(2 ** -30), 'product bits beyond 24, small negative addend');
    // cancellation: c = −round(a·b) leaves the product's rounding error, exactly
    for (let i = 0; i < 200; i++) {
      const a = fromBits(randBits(rng, 100, 150));
      const b = fromBits(randBits(rng, 100, 150));
      add(a, b, -Math.fround(a * b), 'cancellation');
      add(a, -b, Math.fround(a * b), 'cancellation (negated)');
      add(a, b, -Math.fround(a * b) * (1 + 2 ** -23), 'near cancellation');
    }
    add(3, 5, -15, 'exact cancellation: +0');
    add(-3, 5, 15, 'exact cancellation: +0 (negative product)');
    // signed zeros
    for (const [a, b, c] of [[0, 5, 0], [0, 5, -0], [-0, 5, -0], [0, -5, -0], [-0, -5, -0], [0, 5, 3], [-0, 0, -2], [2, 3, -0], [2, -3, 0], [2 ** -100, 2 ** -100, -0], [-(2 ** -100), 2 ** -100, 0]])
      add(a, b, c, 'zeros');
    // subnormal inputs and results, rounding into the least normal, underflow to zero
    add(2 ** -140, 2 ** -5, 0, 'subnormal product');
    add(2 ** -140 * 1.5, 2 ** -9.0, -0, 'subnormal product, rounded');
    add(2 ** -126 * (1 - 2 ** -24), 1, -0, 'rounds up into the least normal');
    add(fromBits(0x007fffff), 1 + 2 ** -23, 0, 'largest subnormal times 1 + ulp');
    add(fromBits(0x00000001), 0.5, 0, 'least subnormal / 2: tie to 0');
    add(fromBits(0x00000003), 0.5, 0, '3 least subnormals / 2: tie to 2');
    add(fromBits(0x00000001), 0.75, 0, 'least subnormal * 0.75: up');
    add(fromBits(0x00400000), fromBits(0x00400000), fromBits(0x00000005), 'subnormal operands');
    add(fromBits(0x80012345), 3.5, fromBits(0x00054321), 'subnormal operands and result');
    add(1e-30, 1e-30, fromBits(0x00000010), 'product far below a subnormal addend');
    // overflow
    add(3e38, 2, 0, 'overflow to inf');
    add(-3e38, 2, 1e38, 'overflow to -inf');
    add(fromBits(0x7f7fffff), 1 + 2 ** -23, -fromBits(0x7f7fffff), 'large cancellation near the top');
    add(fromBits(0x7f7fffff), 1, fromBits(0x73000000), 'max + half an ulp: tie to even = inf');
    add(fromBits(0x7f7fffff), 1, fromBits(0x72ffffff), 'max + just under half an ulp');
    // the kernel's own operations: x − m, (x − m)·c, y + 1
    for (let i = 0; i < 300; i++) {
      const x = Math.fround(randn(rng) * 8);
      const m = Math.fround(Math.abs(randn(rng)) * 8 + x);
      add(x, 1, -m, 'x - m');
      add(Math.fround(x - m), Math.fround(rng()), -0, '(x - m) c');
      add(Math.fround(rng() - 0.5), 1, 1, 'y + 1');
    }
    // random triples over the whole finite range, and over nearby exponents (the cancelling cases)
    for (let i = 0; i < 4000; i++) addBits(randBits(rng, 0, 254), randBits(rng, 0, 254), randBits(rng, 0, 254), 'random');
    for (let i = 0; i < 4000; i++) addBits(randBits(rng, 120, 134), randBits(rng, 120, 134), randBits(rng, 115, 140), 'random, close exponents');
    for (let i = 0; i < 2000; i++) addBits(randBits(rng, 0, 40), randBits(rng, 80, 120), randBits(rng, 0, 10), 'random, subnormal range');

    const input = new Uint32Array(triples.length * 3);
    triples.forEach(([a, b, c], i) => input.set([a, b, c], 3 * i));
    const got = await runUnit('fma', '  outp[i] = fma_bits(inp[3u * i], inp[3u * i + 1u], inp[3u * i + 2u]);', input, triples.length, 1);
    const bad: string[] = [];
    triples.forEach(([a, b, c, why], i) => {
      const want = bitsOf(fmaRef(fromBits(a), fromBits(b), fromBits(c)));
      if (got[i] !== want && bad.length < 10)
        bad.push(`  [${i}] ${why}: fma(${hex(a)}, ${hex(b)}, ${hex(c)}) = ${hex(got[i]!)} (${fromBits(got[i]!)}), expected ${hex(want)} (${fromBits(want)})`);
    });
    expect(bad, `fma_bits: first mismatches of ${triples.length}\n${bad.join('\n')}`).toEqual([]);
    // the reference itself on cases whose answer is known by hand
    expect(fmaRef(4097, 4097, -8192)).toBe(2 ** 24);
    expect(fmaRef(4097, 4097, -8190)).toBe(2 ** 24 + 4);
    expect(fmaRef(2 ** -12 + 2 ** -35, -(2 ** -13), 1)).toBe(1 - 2 ** -24);
    expect(Object.is(fmaRef(3, 5, -15), 0)).toBe(true);
  });

  it('sample_prop gives q = floor(sample_exp(a) 2^s) exactly (a port of sample_exp as the reference)', async () => {
    const rng = mulberry32(77);
    const as: number[] = [0, -0, -87, -86.99999, -87.00001, -1e-30, -(2 ** -149), -(2 ** -130), -0.3466, -0.34657359, -0.5 * Math.LN2, -Math.LN2 * 1.5, -1e-8, -86.5, -80, -43.6, -20];
    for (let i = 0; i < 100000; i++) as.push(Math.fround(-rng() * 88));
    for (let i = 0; i < 20000; i++) as.push(Math.fround(-rng() * 2));
    for (let i = 0; i < 300; i++) as.push(fromBits(randBits(rng, 0, 126) | 0x80000000)); // tiny and subnormal a < 0
    for (let k = -125; k <= 0; k++) as.push(Math.fround(k * Math.LN2), Math.fround((k - 0.5) * Math.LN2)); // reduction boundaries
    const aBits = Uint32Array.from(as, bitsOf);
    for (const s of [32, 45, 63]) {
      const got = await runUnit(`prop${s}`, `  let p = sample_prop(inp[i], ${s}u);\n  outp[2u * i] = p.q.x;\n  outp[2u * i + 1u] = p.q.y;`, aBits, as.length, 2);
      const bad: string[] = [];
      for (let i = 0; i < as.length; i++) {
        const r = sampleExpRef(fromBits(aBits[i]!));
        const want = BigInt(Math.floor(r * 2 ** s));
        const g = (BigInt(got[2 * i + 1]!) << 32n) | BigInt(got[2 * i]!);
        if (g !== want && bad.length < 10) bad.push(`  a = ${fromBits(aBits[i]!)} (${hex(aBits[i]!)}): q = ${g}, expected ${want} (r = ${r})`);
      }
      expect(bad, `sample_prop s = ${s}: first mismatches of ${as.length}\n${bad.join('\n')}`).toEqual([]);
    }
    expect(sampleExpRef(0)).toBe(1);
    expect(Math.abs(sampleExpRef(-1) / Math.exp(-1) - 1)).toBeLessThan(3e-7);
  });

  it("sample_prop's constants are the bits of sample_exp's f32 literals in native/common/sample_teacher.h", () => {
    // A one-ulp slip in a polynomial coefficient changes q only near a rounding boundary
    // (rarely hit by random a), so the constants are checked as bits, literal by literal.
    const header = readFileSync(join(import.meta.dirname, '../native/common/sample_teacher.h'), 'utf8');
    const body = header.slice(header.indexOf('KD_HD float sample_exp(float a)'), header.indexOf('KD_HD int sample_fixed_shift'));
    const literals = [...body.matchAll(/(-?)(\d+\.\d*(?:e[-+]?\d+)?)f\b/g)].map((m) => Number(m[1]! + m[2]!)).filter((x) => x !== 0);
    expect(literals.length).toBeGreaterThanOrEqual(12);
    let pos = 0;
    for (const x of literals) {
      // decimal -> double -> f32 equals decimal -> f32 unless the double is an f32 midpoint
      f64v[0] = x;
      expect((u64v[0]! & ((1n << 29n) - 1n)) !== 1n << 28n, `${x} is not an f32 midpoint in double`).toBe(true);
      const bits = hex(bitsOf(x));
      if (x === 1) {
        expect(SAMPLE_FIXED_WGSL).toContain('fma_bits(y, F_ONE, F_ONE)');
        continue;
      }
      // present, and in the C++ order (each after the previous one)
      const at = SAMPLE_FIXED_WGSL.indexOf(`${bits}u`, pos);
      expect(at, `sample_exp's literal ${x} (${bits}) in SAMPLE_FIXED_WGSL, in order`).toBeGreaterThanOrEqual(0);
      pos = at;
    }
  });

  it('splitmix64, mulhi and the draw bits match BigInt (and the known splitmix64 output)', async () => {
    // splitmix64 seeded with 0 outputs 0xe220a8397b1dcdaf first: mix64(0 + golden)
    expect(sampleMix64(0x9e3779b97f4a7c15n)).toBe(0xe220a8397b1dcdafn);
    const rng = mulberry32(5);
    const r64 = () => (BigInt(Math.floor(rng() * 2 ** 32)) << 32n) | BigInt(Math.floor(rng() * 2 ** 32));
    const items: { h0: bigint; row: number; draw: number; seed: bigint; a: bigint; b: bigint }[] = [];
    for (let i = 0; i < 500; i++) {
      const seed = i < 3 ? [0n, 2n ** 64n - 1n, 2n ** 53n + 1n][i]! : r64();
      const a = i < 4 ? [0n, 2n ** 64n - 1n, 1n, 2n ** 63n][i]! : r64();
      const b = i < 4 ? [2n ** 64n - 1n, 2n ** 64n - 1n, 2n ** 63n, 3n][i]! : r64() >> BigInt(Math.floor(rng() * 64));
      items.push({ seed, h0: sampleMix64(seed + 0x9e3779b97f4a7c15n), row: Math.floor(rng() * 2 ** 32), draw: Math.floor(rng() * 5000), a, b });
    }
    const lo = (x: bigint) => Number(x & 0xffffffffn);
    const hi = (x: bigint) => Number(x >> 32n);
    const input = new Uint32Array(items.length * 8);
    items.forEach((t, i) => input.set([lo(t.h0), hi(t.h0), t.row, t.draw, lo(t.a), hi(t.a), lo(t.b), hi(t.b)], 8 * i));
    const got = await runUnit(
      'u64',
      `  let b = 8u * i;
  let r = sample_draw_bits(sample_row_key(vec2<u32>(inp[b], inp[b + 1u]), vec2<u32>(inp[b + 2u], 0u)), inp[b + 3u]);
  let h = u64_mul_hi(vec2<u32>(inp[b + 4u], inp[b + 5u]), vec2<u32>(inp[b + 6u], inp[b + 7u]));
  let l = u64_mul_lo(vec2<u32>(inp[b + 4u], inp[b + 5u]), vec2<u32>(inp[b + 6u], inp[b + 7u]));
  outp[6u * i] = r.x; outp[6u * i + 1u] = r.y; outp[6u * i + 2u] = h.x; outp[6u * i + 3u] = h.y; outp[6u * i + 4u] = l.x; outp[6u * i + 5u] = l.y;`,
      input,
      items.length,
      6,
    );
    const bad: string[] = [];
    const M64 = (1n << 64n) - 1n;
    items.forEach((t, i) => {
      const word = (k: number) => (BigInt(got[6 * i + k + 1]!) << 32n) | BigInt(got[6 * i + k]!);
      const want = [sampleRandom(t.seed, BigInt(t.row), BigInt(t.draw)), (t.a * t.b) >> 64n, (t.a * t.b) & M64];
      const have = [word(0), word(2), word(4)];
      for (const k of [0, 1, 2])
        if (have[k] !== want[k] && bad.length < 10) bad.push(`  [${i}] ${['random', 'mulhi', 'mullo'][k]}: ${have[k]!.toString(16)} expected ${want[k]!.toString(16)}`);
    });
    expect(bad, `u64 arithmetic: first mismatches\n${bad.join('\n')}`).toEqual([]);
    expect(sampleFixedShift(1)).toBe(63);
    expect(sampleFixedShift(151936)).toBe(45);
    expect(sampleFixedShift(2 ** 31 - 1)).toBe(32);
  });
});
