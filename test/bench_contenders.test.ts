// The benchmark's contenders compute what the library computes (a benchmark of a wrong
// computation is worthless): on small peaked cases, each hand-written JS loop
// (bench/contenders/js_loop.ts) and each tfjs autograd loss (bench/contenders/tfjs.ts)
// gives the loss and gradient that the library gives through the very calls the bench
// suites time (bench/*.bench.ts). Not a timing test.
//
// Tolerances. All three read the same f32 logits. The JS loops carry everything in
// float64 and round once (the gradient, to f32): the float64 answer to ~1e-7. The
// library accumulates in f32 with its own exp/log (native/cpu/row.h); tfjs computes in
// f32 through log-softmax. Measured on these cases, every op: loss within 2e-6
// relative (largest where the loss is small and Σ p (log p − log q) cancels); gradient
// entries (≤ 1/N = 0.2) within 5e-8 absolute on the bench's own data, and within 6e-7
// on the independent llm.c-style rows, where reverse KL's q (log q − log p − L) cancels
// terms near 600 in f32 (the library's own rounding, 600 · 6e-8 · q, also there in the
// float64 reference comparison). We allow 1e-5 relative + 1e-6 absolute on the loss and
// 2e-6 absolute + 1e-4 relative on each gradient entry: a few times the rounding seen,
// while a wrong formula (a missing term or factor, a sign, a missing 1/N) is off by
// 1e-3 or more.
import { beforeAll, describe, expect, it } from 'vitest';
import { JS_CONTENDERS, TOPK_JS_K, tokenStatsJs, topkJs } from '../bench/contenders/js_loop.js';
import { loadTfjs, makeTfjsCase, TFJS_LOSSES, type Tf } from '../bench/contenders/tfjs.js';
import { makeCaseData, randomLogitPair, type CaseData, type OpSpec } from '../bench/harness.js';
import { ops as klOps } from '../bench/kl_div.bench.js';
import { ops as jsdOps } from '../bench/jsd.bench.js';
import { ops as tvdOps } from '../bench/tvd.bench.js';
import { ops as skewOps } from '../bench/skew_kl.bench.js';
import { ops as dlOps } from '../bench/distillation_loss.bench.js';
import { ops as tsOps } from '../bench/token_stats.bench.js';
import { ops as topkOps } from '../bench/topk.bench.js';
import * as kd from '../lib/index.js';
import { randomLogits } from './reference/common.js';

const N = 5;
const V = 37;
const SUITE_OPS: OpSpec[] = [...klOps, ...jsdOps, ...tvdOps, ...skewOps, ...dlOps];

/** Two datasets: the bench's own (student near the teacher), and independent peaked rows (llm.c style). */
function datasets(): { name: string; d: CaseData }[] {
  const own = makeCaseData('cpu', 'f32', { N, V }, 7);
  const indep = makeCaseData('cpu', 'f32', { N, V }, 8);
  const s = Float32Array.from(randomLogits(N, V, { seed: 11, scale: 2, peaked: true }));
  const t = Float32Array.from(randomLogits(N, V, { seed: 12, scale: 2, peaked: true }));
  (indep.host.student as Float32Array).set(s);
  (indep.host.teacher as Float32Array).set(t);
  return [
    { name: 'student near teacher', d: own },
    { name: 'independent peaked rows', d: indep },
  ];
}

/** The library's loss and gradient through the suite's own call. */
function library(op: OpSpec, d: CaseData): { loss: number; grad: Float32Array } {
  const loss = op.make(d).value();
  return { loss, grad: Float32Array.from(d.grad.toArray() as Float32Array) };
}

function expectClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  const bad: string[] = [];
  for (let i = 0; i < want.length; i++) {
    const a = got[i]!;
    const b = want[i]!;
    if (!(Math.abs(a - b) <= atol + rtol * Math.abs(b))) bad.push(`[${i}] ${a} vs ${b} (diff ${Math.abs(a - b).toExponential(2)})`);
  }
  expect(bad.slice(0, 5), `${what}: ${bad.length} of ${want.length} entries outside atol ${atol} + rtol ${rtol}`).toEqual([]);
}

describe('bench data', () => {
  it('is peaked, overlapping and never zero', () => {
    const { student, teacher } = randomLogitPair(64, 32000, 'f32', 1);
    let zeros = 0;
    for (let i = 0; i < student.length; i++) if (student[i] === 0 || teacher[i] === 0) zeros++;
    expect(zeros).toBe(0);
    const d = makeCaseData('cpu', 'f32', { N: 64, V: 32000 }, 1);
    const jsd = kd.jsd(d.student, d.teacher, { grad: false }).loss.item();
    const tvd = kd.tvd(d.student, d.teacher, { grad: false }).loss.item();
    // Not the degenerate extremes (disjoint supports: JSD = log 2, TVD = 1; equal: 0).
    expect(jsd).toBeGreaterThan(0.01);
    expect(jsd).toBeLessThan(0.6);
    expect(tvd).toBeGreaterThan(0.05);
    expect(tvd).toBeLessThan(0.9);
    // The teacher's top token holds a real share of the mass (peaked, not flat, not one-hot).
    const stats = kd.tokenStats(d.student, d.teacher);
    const h = stats.teacherEntropy.toArray() as Float32Array;
    const mean = h.reduce((a, b) => a + b, 0) / h.length;
    expect(mean).toBeGreaterThan(0.5);
    expect(mean).toBeLessThan(Math.log(32000) - 1);
  });
});

describe('JS loop contenders match the library', () => {
  for (const { name, d } of datasets()) {
    for (const op of SUITE_OPS) {
      it(`${op.name} (${name})`, () => {
        const fn = JS_CONTENDERS[op.contenders!.js!]!;
        const lib = library(op, d);
        const g = new Float32Array(N * V);
        const loss = fn({ s: d.host.student as Float32Array, t: d.host.teacher as Float32Array, N, V, labels: d.host.labels, sampled: d.host.sampled }, g);
        expect(Math.abs(loss - lib.loss), `loss ${loss} vs library ${lib.loss}`).toBeLessThanOrEqual(1e-6 + 1e-5 * Math.abs(lib.loss));
        expectClose(`${op.name} grad`, g, lib.grad, 2e-6, 1e-4);
      });
    }
    it(`token-stats (${name})`, () => {
      const r = kd.tokenStats(d.student, d.teacher, { sampled: d.sampled });
      const js = tokenStatsJs({ s: d.host.student as Float32Array, t: d.host.teacher as Float32Array, N, V, sampled: d.host.sampled });
      for (const k of ['forwardKl', 'reverseKl', 'studentEntropy', 'teacherEntropy', 'studentLogProb', 'teacherLogProb'] as const)
        expectClose(`tokenStats.${k}`, js[k], r[k]!.toArray() as Float32Array, 1e-6, 1e-5);
      expect(Array.from(js.teacherRank)).toEqual(Array.from(r.teacherRank!.toArray() as Int32Array));
      // And the suite's check value is Σ forwardKl.
      const sum = Array.from(js.forwardKl).reduce((a, b) => a + b, 0);
      expect(tsOps[0]!.make(d).value()).toBeCloseTo(sum, 4);
    });
  }
});

describe('JS topk contender matches the library', () => {
  // V > k (k = 64): the heap's threshold filter, the tail sum and the tie order all matter.
  const TV = 700;
  const cases: { name: string; d: CaseData }[] = [
    { name: 'bench data', d: makeCaseData('cpu', 'f32', { N, V: TV }, 9) },
    (() => {
      // Logits rounded to 0.25: many ties, broken by the lower index.
      const base = makeCaseData('cpu', 'f32', { N, V: TV }, 10);
      const t = Float32Array.from(randomLogits(N, TV, { seed: 13, scale: 3, peaked: true }), (x) => Math.round(x * 4) / 4);
      const d: CaseData = { ...base, teacher: kd.tensor(t, [N, TV]), host: { ...base.host, teacher: t } };
      return { name: 'ties', d };
    })(),
  ];
  for (const { name, d } of cases) {
    it(`topk (${name})`, () => {
      const t = d.host.teacher as Float32Array;
      const r = kd.topk(d.teacher, TOPK_JS_K, { output: 'logprobs' });
      const js = topkJs(t, N, TV, TOPK_JS_K);
      expect(Array.from(js.indices)).toEqual(Array.from(r.indices.toArray() as Int32Array));
      expectClose('topk values', js.values, r.values.toArray() as Float32Array, 1e-6, 1e-5);
      expectClose('topk tailLogProb', js.tailLogProb, r.tailLogProb!.toArray() as Float32Array, 1e-6, 1e-5);
      // And the suite's check value is Σ tailLogProb, the contender's return value.
      const sum = Array.from(js.tailLogProb).reduce((a, b) => a + b, 0);
      const fn = JS_CONTENDERS[topkOps[0]!.contenders!.js!]!;
      expect(fn({ s: t, t, N, V: TV }, new Float32Array(0))).toBeCloseTo(sum, 10);
      expect(topkOps[0]!.make(d).value()).toBeCloseTo(sum, 4);
    });
  }
});

describe('tfjs contenders match the library', () => {
  let tf: Tf | string;
  beforeAll(async () => {
    tf = await loadTfjs();
  });
  for (const { name, d } of datasets()) {
    for (const op of SUITE_OPS.filter((o) => o.contenders?.tfjs && TFJS_LOSSES[o.contenders.tfjs])) {
      it(`${op.name} (${name})`, () => {
        if (typeof tf === 'string') throw new Error(tf); // tfjs is a devDependency: it must load
        const lib = library(op, d);
        const c = makeTfjsCase(tf, op.contenders!.tfjs!, { s: d.host.student as Float32Array, t: d.host.teacher as Float32Array, N, V, labels: d.host.labels });
        try {
          const loss = c.run();
          expect(Math.abs(loss - lib.loss), `loss ${loss} vs library ${lib.loss}`).toBeLessThanOrEqual(1e-6 + 1e-5 * Math.abs(lib.loss));
          expectClose(`${op.name} grad`, c.lastGrad(), lib.grad, 2e-6, 1e-4);
        } finally {
          c.dispose();
        }
      });
    }
  }
});
