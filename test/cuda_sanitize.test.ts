/**
 * Every CUDA kernel and launch path on few rows, for compute-sanitizer (memcheck and
 * racecheck slow kernels down 10-100x, so the full CUDA tests are too slow under them):
 * scripts/sanitize.sh --cuda and scripts/gpu_check.sh run this file under both tools.
 * Each case is also checked (against the float64 reference, or against the CPU path),
 * so it is a GPU test in the normal suite too; skipped, saying why, without a GPU.
 *
 * Paths, with the plans of native/common/cuda_plan.h on an H100 (test/cuda_plan.test.ts):
 *  divergence  V = 1271: one block per row, fully staged; f32 V = 32000: a 4-block
 *              cluster, fully staged; f32 V = 151936: an 8-block cluster, partly staged
 *              (re-reads from L2); row pitch not a multiple of 16 bytes (element loads, no
 *              cp.async); gradient in place; no gradient (nothing staged); CE only.
 *  tokenStats  sampled ids; topk: random rows, tie-heavy rows (radix refinement + cut);
 *  sampleTeacher; sparseKlDiv: the four tails, fed from topk / sampleTeacher on the GPU.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { check, type DivCase } from './divergence_cases.js';
import { CUDA, CUDA_SKIP_REASON } from './helpers.js';
import { compareArrays, randomLogits } from './reference/common.js';
import type { Divergence } from './reference/divergences.js';

const DIVS: { divergence: Divergence; beta?: number; skew?: number }[] = [
  { divergence: 'forward-kl' },
  { divergence: 'reverse-kl' },
  { divergence: 'jsd', beta: 0.5 },
  { divergence: 'tvd' },
  { divergence: 'skew-forward-kl', skew: 0.1 },
  { divergence: 'skew-reverse-kl', skew: 0.3 },
];

function pass(c: DivCase): void {
  const errs = check(c, 'cuda:0');
  if (errs.length) throw new Error(`CUDA ${JSON.stringify(c)}\n${errs.slice(0, 5).join('\n')}`);
}

function near(gpu: ArrayLike<number>, cpu: ArrayLike<number>, label: string, rtol = 2e-4, atol = 1e-5): void {
  const r = compareArrays(gpu, cpu, { rtol, atol, label });
  expect(r.ok, r.message).toBe(true);
}

describe.skipIf(!CUDA)(`every CUDA kernel on few rows (compute-sanitizer set) ${CUDA_SKIP_REASON}`, () => {
  it('divergence: one block, clusters fully and partly staged, unaligned rows, in place, no gradient, CE only', () => {
    for (const d of DIVS) {
      pass({ n: 3, v: 1271, sDtype: 'bf16', ...d, labels: 'some-ignored', hardWeight: 0.5, softWeight: 0.5 });
      pass({ n: 2, v: 32000, sDtype: 'f32', ...d, temperature: 1.5 });
      pass({ n: 2, v: 151936, sDtype: 'f32', ...d, reduction: 'none' });
      pass({ n: 2, v: 1271, vt: 1275, ldS: 1271, ldT: 1275, sDtype: 'f16', ...d, gradDtype: 'f32' });
      pass({ n: 2, v: 32000, sDtype: 'bf16', ...d, grad: 'inplace', negInf: true });
      pass({ n: 2, v: 32000, sDtype: 'bf16', ...d, grad: 'none' });
    }
    pass({ n: 3, v: 1271, sDtype: 'f32', divergence: 'forward-kl', softWeight: 0, hardWeight: 1, labels: 'some-ignored', labelSmoothing: 0.1 });
  });

  it('tokenStats, topk (random and tie-heavy rows), sampleTeacher, sparseKlDiv (four tails) vs the CPU', () => {
    const n = 2, v = 20000;
    const s = Float32Array.from(randomLogits(n, v, { seed: 71, scale: 2, peaked: true }));
    const t = Float32Array.from(randomLogits(n, v, { seed: 72, scale: 2, peaked: true }));
    const sampled = Int32Array.of(5, 19999);
    const on = (x: Float32Array) => kd.tensor(x, [n, v], { device: 'cuda:0' });
    const off = (x: Float32Array) => kd.tensor(x, [n, v]);

    const a = kd.tokenStats(off(s), off(t), { sampled, temperature: 1.3 });
    const b = kd.tokenStats(on(s), on(t), { sampled, temperature: 1.3 });
    for (const k of ['forwardKl', 'reverseKl', 'studentEntropy', 'teacherEntropy', 'studentLogProb', 'teacherLogProb'] as const)
      near(b[k]!.toFloat32Array(), a[k]!.toFloat32Array(), `tokenStats ${k}`);

    const ties = Float32Array.from({ length: n * v }, (_, i) => (i * 7919) % 3);
    for (const [x, k] of [[t, 64], [ties, 1024]] as const) {
      const c = kd.topk(off(x), k, { output: 'logprobs' });
      const g = kd.topk(on(x), k, { output: 'logprobs' });
      expect(Array.from(g.indices.toArray())).toEqual(Array.from(c.indices.toArray()));
      near(g.values.toFloat32Array(), c.values.toFloat32Array(), `topk k=${k} values`);
    }

    const sc = kd.sampleTeacher(off(t), 64, { seed: 9 });
    const sg = kd.sampleTeacher(on(t), 64, { seed: 9 });
    expect(Array.from(sg.indices.toArray())).toEqual(Array.from(sc.indices.toArray()));

    const topC = kd.topk(off(t), 64, { output: 'logprobs' });
    const topG = kd.topk(on(t), 64, { output: 'logprobs' });
    for (const tail of ['renormalize', 'bucket', 'conditional', 'sampled'] as const) {
      const [tc, tg] = tail === 'sampled' ? [sc, sg] : [topC, topG];
      const lc = kd.sparseKlDiv(off(s), tc, { tail });
      const lg = kd.sparseKlDiv(on(s), tg, { tail });
      near(lg.loss.toFloat32Array(), lc.loss.toFloat32Array(), `sparseKlDiv ${tail} loss`);
      near(lg.grad!.toFloat32Array(), lc.grad!.toFloat32Array(), `sparseKlDiv ${tail} grad`, 1e-3, 1e-7);
    }
  });
});
