/**
 * tokenStats on WebGPU (lib/webgpu/token_stats.ts, wgsl/token_stats.wgsl.ts) against the
 * float64 reference and the CPU path, on the CPU tests' cases per dtype (odd shapes,
 * V = 1 … 151936, T ≠ 1, teacher log-probs, a wider teacher row, -inf, NaN, logits of
 * magnitude 2500, row strides and element offsets). Skips (saying why) without an adapter.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { _setBindingLimit } from '../lib/webgpu/runtime.js';
import { tokenStatsWebgpu } from '../lib/webgpu/token_stats.js';
import { compareArrays, decodeDtype, encodeDtype, logSoftmax, mulberry32, randomLogits, type FloatDType } from './reference/common.js';
import { refTokenStats } from './reference/distillation.js';
import { lossTol, maxAbsFinite } from './tolerances.js';
import { errorOf } from './helpers.js';
import { GPU, GPU_SKIP_REASON, gpuOut, gpuRows, readI32, uploadBytes } from './webgpu_rows.js';

interface Case { n: number; v: number; dtype: FloatDType; T?: number; sampled?: boolean; teacher?: 'logits' | 'logprobs'; vt?: number; negInf?: boolean; nan?: boolean; scale?: number; offset?: number }

const STATS = ['forwardKl', 'reverseKl', 'studentEntropy', 'teacherEntropy', 'studentLogProb', 'teacherLogProb'] as const;

async function run(c: Case): Promise<string[]> {
  const dev = GPU!;
  const vt = c.vt ?? c.v;
  const s64 = randomLogits(c.n, c.v, { seed: 21, scale: c.scale ?? 3, peaked: true });
  const t64 = randomLogits(c.n, vt, { seed: 22, scale: c.scale ?? 3, peaked: true });
  if (c.negInf && c.v > 2)
    for (let i = 0; i < c.n; i++) { s64[i * c.v + 1] = -Infinity; t64[i * vt + 1] = -Infinity; }
  if (c.nan && c.n > 1) s64[c.v + (c.v >> 1)] = NaN; // row 1 only
  if (c.teacher === 'logprobs') for (let i = 0; i < c.n; i++) t64.set(logSoftmax(t64.subarray(i * vt, (i + 1) * vt)), i * vt);
  const sEnc = encodeDtype(s64, c.dtype), tEnc = encodeDtype(t64, c.dtype);
  const sRef = decodeDtype(sEnc, c.dtype), tRef = decodeDtype(tEnc, c.dtype);
  const rng = mulberry32(9);
  let sampled: Int32Array | undefined;
  if (c.sampled) {
    sampled = new Int32Array(c.n);
    for (let i = 0; i < c.n; i++) {
      do sampled[i] = Math.floor(rng() * c.v); while (!Number.isFinite(sRef[i * c.v + sampled[i]!]!) && c.v > 1);
    }
  }
  const off = c.offset ?? 0;
  const es = c.dtype === 'f32' ? 4 : 2;
  // borrowed buffers (kd.fromGPUBuffer) with the rows at element `off`; the teacher keeps
  // its wider row stride vt (the padded-vocabulary case)
  const student = gpuRows(dev, sRef, c.n, c.v, c.dtype, c.v, off);
  const teacherRows = gpuRows(dev, tRef, c.n, vt, c.dtype, vt, off);
  const sT = kd.fromGPUBuffer(student.buffer, [c.n, c.v], { dtype: c.dtype, byteOffset: off * es });
  const tT = kd.fromGPUBuffer(teacherRows.buffer, [c.n, vt], { dtype: c.dtype, byteOffset: off * es });
  const sampledT = sampled ? kd.tensor(sampled, [c.n], { device: 'webgpu' }) : undefined;
  const got = kd.tokenStats(sT, tT, { sampled: sampledT, temperature: c.T, teacher: c.teacher });
  expect(got.forwardKl.device).toBe('webgpu');
  const ref = refTokenStats(sRef, tRef, c.n, c.v, { sampled, temperature: c.T, teacherKind: c.teacher, ldT: vt });
  const tol = lossTol(Math.max(maxAbsFinite(sRef), maxAbsFinite(tRef)), c.T ?? 1, c.v);
  const cpu = kd.tokenStats(kd.tensor(sEnc, [c.n, c.v], { dtype: c.dtype }), kd.tensor(tEnc, [c.n, vt], { dtype: c.dtype }), { sampled, temperature: c.T, teacher: c.teacher });
  const gotStats = got as unknown as Record<string, kd.Tensor>;
  const errs: string[] = [];
  for (const k of STATS) {
    if (!c.sampled && (k === 'studentLogProb' || k === 'teacherLogProb')) continue;
    const got = (await gotStats[k]!.toArrayAsync()) as Float32Array;
    let r = compareArrays(got, ref[k]!, { ...tol, label: `webgpu ${k}` });
    if (!r.ok) errs.push(r.message);
    r = compareArrays(got, cpu[k]!.toFloat32Array(), { ...tol, label: `webgpu ${k} vs CPU` });
    if (!r.ok) errs.push(r.message);
  }
  if (c.sampled) {
    const rank = (await got.teacherRank!.toArrayAsync()) as Int32Array;
    const r = compareArrays(rank, ref.teacherRank!, { label: 'webgpu teacherRank' });
    if (!r.ok) errs.push(r.message);
    expect(Array.from(rank)).toEqual(Array.from(cpu.teacherRank!.toArray()));
  }
  for (const t of Object.values(got)) t.dispose();
  sampledT?.dispose();
  for (const b of [student.buffer, teacherRows.buffer]) b.destroy();
  return errs;
}

describe.skipIf(!GPU)(`tokenStats on WebGPU vs the float64 reference and the CPU ${GPU_SKIP_REASON}`, () => {
  const cases: Case[] = [];
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    cases.push({ n: 41, v: 1271, dtype, sampled: true, offset: 3 });
    cases.push({ n: 7, v: 123, dtype, T: 2, sampled: true, vt: 130 });
    cases.push({ n: 7, v: 123, dtype, T: 0.5, teacher: 'logprobs', sampled: true });
    cases.push({ n: 7, v: 123, dtype, teacher: 'logprobs', sampled: true });
    cases.push({ n: 3, v: 32000, dtype, sampled: false });
    cases.push({ n: 5, v: 97, dtype, negInf: true, sampled: true, offset: 1 });
  }
  cases.push({ n: 2, v: 151936, dtype: 'bf16', sampled: true });
  cases.push({ n: 3, v: 1, dtype: 'f32', sampled: true });
  cases.push({ n: 4, v: 64, dtype: 'f32', sampled: true, scale: 2500 });
  cases.push({ n: 3, v: 300, dtype: 'f32', sampled: true, nan: true });
  for (const c of cases)
    it(`${c.n}×${c.v} ${c.dtype}${c.T ? ` T=${c.T}` : ''}${c.teacher === 'logprobs' ? ' logprobs' : ''}${c.sampled ? ' sampled' : ''}${c.negInf ? ' -inf' : ''}${c.nan ? ' NaN' : ''}${c.scale ? ` scale=${c.scale}` : ''}${c.offset ? ` offset=${c.offset}` : ''}`, async () => {
      const errs = await run(c);
      if (errs.length) throw new Error(errs.join('\n'));
    });

  it('[B, T, V] inputs, N = 0, an Int32Array of sampled ids, tokenStatsAsync', async () => {
    const e = kd.tokenStats(kd.empty([0, 9], { device: 'webgpu' }), kd.empty([0, 9], { device: 'webgpu' }));
    expect(e.forwardKl.shape).toEqual([0]);
    const s = kd.tensor(new Float32Array(30).map((_, i) => Math.sin(i)), [2, 3, 5], { device: 'webgpu' });
    const t = kd.tensor(new Float32Array(30).map((_, i) => Math.cos(i)), [2, 3, 5], { device: 'webgpu' });
    const st = kd.tokenStats(s, t, { sampled: new Int32Array([0, 1, 2, 3, 4, 0]) });
    expect(st.reverseKl.shape).toEqual([2, 3]);
    const cpu = kd.tokenStats(kd.tensor(new Float32Array(30).map((_, i) => Math.sin(i)), [2, 3, 5]), kd.tensor(new Float32Array(30).map((_, i) => Math.cos(i)), [2, 3, 5]), { sampled: new Int32Array([0, 1, 2, 3, 4, 0]) });
    expect(Array.from((await st.teacherRank!.toArrayAsync()) as Int32Array)).toEqual(Array.from(cpu.teacherRank!.toArray()));
    const r = compareArrays((await st.reverseKl.toArrayAsync()) as Float32Array, cpu.reverseKl.toArray(), { atol: 1e-6, rtol: 1e-5, label: 'reverseKl' });
    expect(r.ok, r.message).toBe(true);
    const a = await kd.tokenStatsAsync(s, t);
    expect(Array.from((await a.forwardKl.toArrayAsync()) as Float32Array)).toEqual(Array.from((await kd.tokenStats(s, t).forwardKl.toArrayAsync()) as Float32Array));
  });

  it('bad input gets the CPU errors; a WebGPU sampled id out of range gives NaN and rank -1', async () => {
    const s = kd.tensor(new Float32Array(10), [2, 5], { device: 'webgpu' });
    const cases: [() => unknown, string, string, RegExp][] = [
      [() => kd.tokenStats(s, kd.tensor(new Float32Array(10), [2, 5])), 'KdError', 'KD_EDEVICE', /teacher is on cpu/],
      [() => kd.tokenStats(s, kd.tensor(new Float32Array(15), [3, 5], { device: 'webgpu' })), 'RangeError', 'KD_ESHAPE', /teacher has 3/],
      [() => kd.tokenStats(s, s, { temperature: -1 }), 'RangeError', 'KD_EINVAL', /temperature/],
      [() => kd.tokenStats(s, s, { sampled: new Int32Array([0, 5]) }), 'RangeError', 'KD_ERANGE', /sampled\[1\] = 5/],
      [() => kd.tokenStats(s, s, { sampled: new Int32Array([0]) }), 'RangeError', 'KD_ESHAPE', /sampled/],
      [() => kd.tokenStats(s, s, { sampled: kd.tensor(new Int32Array(2), [2]) }), 'KdError', 'KD_EDEVICE', /sampled is on cpu/],
      [() => kd.tokenStats(s, s, { bogus: 1 } as never), 'TypeError', 'KD_EINVAL', /Unknown option 'bogus'/],
      [() => kd.tokenStats(s, s).forwardKl.toArray(), 'KdError', 'KD_EDEVICE', /toArrayAsync/],
    ];
    for (const [fn, cls, code, msg] of cases) {
      const e = errorOf(fn);
      expect([e.name, e.code], e.message).toEqual([cls, code]);
      expect(e.message).toMatch(msg);
    }
    const bad = kd.tokenStats(s, s, { sampled: kd.tensor(new Int32Array([1, 7]), [2], { device: 'webgpu' }) });
    const lp = (await bad.studentLogProb!.toArrayAsync()) as Float32Array;
    expect(Number.isFinite(lp[0]!) && Number.isNaN(lp[1]!)).toBe(true);
    expect(Array.from((await bad.teacherRank!.toArrayAsync()) as Int32Array)).toEqual([0, -1]);
  });

  it('row chunks (bindings capped at 64 KiB) match the reference and the CPU', async () => {
    _setBindingLimit(64 * 1024);
    try {
      const errs = await run({ n: 41, v: 1271, dtype: 'f32', sampled: true, vt: 1300, T: 1.5 });
      if (errs.length) throw new Error(errs.join('\n'));
    } finally {
      _setBindingLimit(undefined);
    }
  });

  it('rank counts strictly greater teacher values (ties do not count)', async () => {
    const dev = GPU!;
    const t = gpuRows(dev, Float64Array.from([1, 3, 3, 2, 3, 1, 3, 3, 2, 3, 1, 3, 3, 2, 3]), 3, 5, 'f32');
    const s = gpuRows(dev, new Float64Array(15), 3, 5, 'f32');
    const o = () => gpuOut(dev, 3);
    const rank = o();
    tokenStatsWebgpu(dev, {
      student: s, teacher: t, teacherLogprobs: false, temperature: 1, sampled: { buffer: uploadBytes(dev, new Int32Array([2, 3, 0])), offset: 0 },
      out: { forwardKl: o(), reverseKl: o(), studentEntropy: o(), teacherEntropy: o(), studentLogProb: o(), teacherLogProb: o(), teacherRank: rank },
    });
    expect(Array.from(await readI32(dev, rank, 3))).toEqual([0, 3, 4]);
  });
});
