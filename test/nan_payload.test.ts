/**
 * A NaN logit makes its own token NaN, whatever the NaN's bits. The CPU exps scaled by
 * adding t << 23 into the result's exponent field, and a NaN input with payload bits in
 * t's low bits turned that add into a finite number: at the generic level a teacher NaN
 * 0x7fc000ff gave forward KL 0, and at every level a student NaN with a payload gave a
 * finite gradient (found 2026-12-07; row.h exp_f now scales by a multiply). JS writes
 * only the canonical NaN 0x7fc00000, which has no such bits, so every other NaN test
 * missed it. Here the NaN sits in a full vector group (column 17) and in a row's scalar
 * tail (column V - 3), in the student and in the teacher, at every CPU ISA level.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { supportedIsas, withIsa } from './helpers.js';

const N = 3, V = 301, ROW = 1; // the NaN goes in row 1; rows 0 and 2 must stay finite
const PAYLOADS = [0x7fc00000, 0x7fc00001, 0x7fc000ff, 0xffc00101, 0x7f800001, 0x7fffffff];

function logits(phase: number): Float32Array {
  return Float32Array.from({ length: N * V }, (_, i) => Math.sin(i * 0.37 + phase) * 4);
}
function withNaN(a: Float32Array, col: number, bits: number): Float32Array {
  const b = a.slice();
  new Uint32Array(b.buffer)[ROW * V + col] = bits >>> 0;
  return b;
}
const hex = (b: number) => `0x${(b >>> 0).toString(16)}`;

/** Row ROW of `rows` (per-token values) is NaN, the others finite. */
function expectRowNaN(what: string, rows: ArrayLike<number>, width = 1) {
  for (let i = 0; i < N; i++)
    for (let j = 0; j < width; j++) {
      const x = rows[i * width + j]!;
      if (i === ROW ? !Number.isNaN(x) : !Number.isFinite(x)) throw new Error(`${what}: row ${i}[${j}] = ${x}, want ${i === ROW ? 'NaN' : 'finite'}`);
    }
}

describe('a NaN logit with any payload makes its own token NaN, at every CPU ISA level', () => {
  const cases: { name: string; run: (s: Float32Array, t: Float32Array) => void }[] = [];
  for (const [name, fn, extra] of [
    ['forward KL', kd.klDiv, {}],
    ['reverse KL', kd.klDiv, { direction: 'reverse' }],
    ['forward KL, T = 2', kd.klDiv, { temperature: 2 }],
    ['jsd', kd.jsd, {}],
    ['tvd', kd.tvd, {}],
    ['skew KL', kd.skewKl, {}],
  ] as const)
    cases.push({
      name,
      run: (s, t) => {
        const r = (fn as typeof kd.klDiv)(kd.tensor(s, [N, V]), kd.tensor(t, [N, V]), { reduction: 'none', ...extra });
        expectRowNaN(`${name} loss`, r.loss.toArray());
        if (name === 'tvd' && t.some((x) => Number.isNaN(x))) {
          // tvd's gradient sees p only through sign(q - p) (DESIGN.md), and a comparison
          // with NaN is false: a teacher NaN gives that row a gradient of exactly 0 (its
          // loss is NaN); the CUDA and WGSL kernels use the same comparisons. Never a finite non-zero value.
          const g = r.grad!.toArray();
          for (let i = 0; i < N; i++)
            for (let j = 0; j < V; j++) {
              const x = g[i * V + j]!;
              if (i === ROW ? x !== 0 : !Number.isFinite(x)) throw new Error(`tvd grad: row ${i}[${j}] = ${x}, want ${i === ROW ? '0' : 'finite'}`);
            }
        } else {
          expectRowNaN(`${name} grad`, r.grad!.toArray(), V);
        }
      },
    });
  cases.push({
    name: 'distillationLoss (CE + forward KL, T = 2)',
    run: (s, t) => {
      const r = kd.distillationLoss(kd.tensor(s, [N, V]), kd.tensor(t, [N, V]), Int32Array.from([4, 9, 300]), { temperature: 2, reduction: 'none' });
      expectRowNaN('distillationLoss loss', r.loss.toArray());
      expectRowNaN('distillationLoss grad', r.grad!.toArray(), V);
    },
  });
  cases.push({
    name: 'tokenStats',
    run: (s, t) => {
      const st = kd.tokenStats(kd.tensor(s, [N, V]), kd.tensor(t, [N, V]), { sampled: Int32Array.from([1, 2, 3]) });
      for (const k of ['forwardKl', 'reverseKl'] as const) expectRowNaN(`tokenStats ${k}`, st[k].toArray());
    },
  });

  for (const isa of ['avx512', 'avx2', 'generic'])
    it(`${isa}: divergences, distillationLoss and tokenStats, NaN in student or teacher`, (ctx) => {
      if (!supportedIsas().includes(isa)) return ctx.skip();
      const s0 = logits(0), t0 = logits(0.4);
      withIsa(isa, () => {
        for (const c of cases)
          for (const bits of PAYLOADS)
            for (const col of [17, V - 3])
              for (const side of ['student', 'teacher'] as const) {
                try {
                  if (side === 'student') c.run(withNaN(s0, col, bits), t0);
                  else c.run(s0, withNaN(t0, col, bits));
                } catch (e) {
                  throw new Error(`${isa} ${c.name}, ${side} NaN ${hex(bits)} at column ${col}: ${(e as Error).message}`);
                }
              }
      });
    });

  it('sparseKlDiv and sampleTeacher: a student or teacher NaN with a payload, at every level', () => {
    const s0 = logits(0), t0 = logits(0.4);
    for (const isa of supportedIsas())
      withIsa(isa, () => {
        const top = kd.topk(kd.tensor(t0, [N, V]), 8, { output: 'logprobs' });
        for (const bits of PAYLOADS)
          for (const col of [17, V - 3]) {
            const where = `${isa}, NaN ${hex(bits)} at column ${col}`;
            for (const tail of ['bucket', 'renormalize'] as const) {
              const r = kd.sparseKlDiv(kd.tensor(withNaN(s0, col, bits), [N, V]), top, { tail, reduction: 'none' });
              try {
                expectRowNaN(`sparseKlDiv ${tail} loss`, r.loss.toArray());
                expectRowNaN(`sparseKlDiv ${tail} grad`, r.grad!.toArray(), V);
              } catch (e) {
                throw new Error(`${where}: ${(e as Error).message}`);
              }
            }
            const w = kd.sampleTeacher(kd.tensor(withNaN(t0, col, bits), [N, V]), 4, { seed: 3 }).weights.toArray();
            try {
              expectRowNaN('sampleTeacher weights', w, 4);
            } catch (e) {
              throw new Error(`${where}: ${(e as Error).message}`);
            }
          }
      });
    expect(supportedIsas()).toContain('generic');
  });
});
