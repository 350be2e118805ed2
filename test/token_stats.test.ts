/** tokenStats on the CPU against the float64 reference, per dtype, on odd shapes. */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { ISA_LEVELS, supportedIsas, withIsa } from './helpers.js';
import { compareArrays, decodeDtype, encodeDtype, logSoftmax, mulberry32, randomLogits, type FloatDType } from './reference/common.js';
import { refTokenStats } from './reference/distillation.js';
import { lossTol, maxAbsFinite } from './tolerances.js';

interface Case { n: number; v: number; dtype: FloatDType; T?: number; sampled?: boolean; teacher?: 'logits' | 'logprobs'; vt?: number; negInf?: boolean; scale?: number }

function run(c: Case): string[] {
  const vt = c.vt ?? c.v;
  const s64 = randomLogits(c.n, c.v, { seed: 21, scale: c.scale ?? 3, peaked: true });
  const t64 = randomLogits(c.n, vt, { seed: 22, scale: c.scale ?? 3, peaked: true });
  if (c.negInf && c.v > 2)
    for (let i = 0; i < c.n; i++) { s64[i * c.v + 1] = -Infinity; t64[i * vt + 1] = -Infinity; }
  if (c.teacher === 'logprobs') for (let i = 0; i < c.n; i++) t64.set(logSoftmax(t64.subarray(i * vt, (i + 1) * vt)), i * vt);
  const sEnc = encodeDtype(s64, c.dtype), tEnc = encodeDtype(t64, c.dtype);
  const sRef = decodeDtype(sEnc, c.dtype), tRef = decodeDtype(tEnc, c.dtype);
  const rng = mulberry32(9);
  let sampled: Int32Array | undefined;
  if (c.sampled) {
    sampled = new Int32Array(c.n);
    for (let i = 0; i < c.n; i++) {
      do sampled[i] = Math.floor(rng() * c.v); while (!Number.isFinite(sRef[i * c.v + sampled[i]!]!));
    }
  }
  const got = kd.tokenStats(kd.tensor(sEnc, [c.n, c.v], { dtype: c.dtype }), kd.tensor(tEnc, [c.n, vt], { dtype: c.dtype }), { sampled, temperature: c.T, teacher: c.teacher });
  const ref = refTokenStats(sRef, tRef, c.n, c.v, { sampled, temperature: c.T, teacherKind: c.teacher, ldT: vt });
  const tol = lossTol(Math.max(maxAbsFinite(sRef), maxAbsFinite(tRef)), c.T ?? 1, c.v);
  const errs: string[] = [];
  for (const k of ['forwardKl', 'reverseKl', 'studentEntropy', 'teacherEntropy', 'studentLogProb', 'teacherLogProb'] as const) {
    if (!c.sampled && (k === 'studentLogProb' || k === 'teacherLogProb')) {
      if (got[k] !== undefined) errs.push(`${k} present without sampled`);
      continue;
    }
    const r = compareArrays(got[k]!.toFloat32Array(), ref[k]!, { ...tol, label: k });
    if (!r.ok) errs.push(r.message);
  }
  if (c.sampled) {
    const r = compareArrays(got.teacherRank!.toArray() as Int32Array, ref.teacherRank!, { label: 'teacherRank' });
    if (!r.ok) errs.push(r.message);
  }
  return errs;
}

// The suite above runs the best ISA level this machine has; here every level it supports
// (the AVX-512, AVX2 and generic builds of the same sources).
describe('tokenStats at every CPU ISA level this machine supports', () => {
  for (const isa of ISA_LEVELS)
    it(`${isa}`, (ctx) => {
      if (!supportedIsas().includes(isa)) return ctx.skip();
      withIsa(isa, () => {
        const errs: string[] = [];
        for (const dtype of ['f32', 'f16', 'bf16'] as const)
          for (const c of [
            { n: 9, v: 1271, dtype, sampled: true },
            { n: 7, v: 123, dtype, T: 0.5, teacher: 'logprobs' as const, sampled: true, vt: 130 },
            { n: 5, v: 97, dtype, negInf: true, sampled: true },
            { n: 2, v: 32000, dtype, T: 2, sampled: false },
          ])
            errs.push(...run(c).map((e) => `${isa} ${JSON.stringify(c)}: ${e}`));
        if (errs.length) throw new Error(errs.join('\n'));
      });
    });
});

describe('tokenStats vs reference', () => {
  const cases: Case[] = [];
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    cases.push({ n: 41, v: 1271, dtype, sampled: true });
    cases.push({ n: 7, v: 123, dtype, T: 2, sampled: true, vt: 130 });
    cases.push({ n: 7, v: 123, dtype, T: 0.5, teacher: 'logprobs', sampled: true });
    cases.push({ n: 3, v: 32000, dtype, sampled: false });
    cases.push({ n: 5, v: 97, dtype, negInf: true, sampled: true });
  }
  cases.push({ n: 2, v: 151936, dtype: 'bf16', sampled: true });
  cases.push({ n: 3, v: 1, dtype: 'f32', sampled: true });
  cases.push({ n: 4, v: 64, dtype: 'f32', sampled: true, scale: 2500 });
  for (const c of cases)
    it(`${c.n}×${c.v} ${c.dtype}${c.T ? ` T=${c.T}` : ''}${c.teacher === 'logprobs' ? ' logprobs' : ''}${c.sampled ? ' sampled' : ''}${c.negInf ? ' -inf' : ''}${c.scale ? ` scale=${c.scale}` : ''}`, () => {
      const errs = run(c);
      if (errs.length) throw new Error(errs.join('\n'));
    });

  it('rank counts strictly greater teacher values (ties do not count)', () => {
    const t = kd.tensor(new Float32Array([1, 3, 3, 2, 3]), [1, 5]);
    const s = kd.tensor(new Float32Array([0, 0, 0, 0, 0]), [1, 5]);
    expect(kd.tokenStats(s, t, { sampled: new Int32Array([2]) }).teacherRank!.toArray()[0]).toBe(0);
    expect(kd.tokenStats(s, t, { sampled: new Int32Array([3]) }).teacherRank!.toArray()[0]).toBe(3);
    expect(kd.tokenStats(s, t, { sampled: new Int32Array([0]) }).teacherRank!.toArray()[0]).toBe(4);
  });

  it('N = 0 and [B, T, V] inputs', () => {
    const e = kd.tokenStats(kd.empty([0, 9]), kd.empty([0, 9]));
    expect(e.forwardKl.shape).toEqual([0]);
    const st = kd.tokenStats(kd.tensor(new Float32Array(2 * 3 * 5).map((_, i) => Math.sin(i)), [2, 3, 5]), kd.tensor(new Float32Array(30).map((_, i) => Math.cos(i)), [2, 3, 5]));
    expect(st.reverseKl.shape).toEqual([2, 3]);
  });
});
