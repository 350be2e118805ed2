/**
 * The divergence engine and tokenStats on CUDA: the same cases as the CPU tests, each
 * compared with the float64 reference (same tolerances) AND with the CPU path, plus
 * determinism across runs and a caller stream. Skipped, saying why, without a GPU.
 */
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { DIVERGENCE_TABLE, build, caseName, check, lossOptions, runNative, type DivCase } from './divergence_cases.js';
import { CUDA, CUDA_SKIP_REASON } from './helpers.js';
import { compareArrays, type FloatDType } from './reference/common.js';

const DIVS = DIVERGENCE_TABLE;
const SCENARIOS: Partial<DivCase>[] = [
  {},
  { temperature: 2, labels: 'some-ignored', reduction: 'sum' },
  { temperature: 0.5, scaleT2: false, mask: true, weights: true, reduction: 'none', gradScale: -0.7 },
  { teacherKind: 'logprobs', reduction: 'mean', normalizer: 37 },
  { negInf: true, labels: 'some-ignored', grad: 'inplace' },
  { vt: 1300, ldS: 1280, ldT: 1310, gradDtype: 'f32' },
  { hardWeight: 0.5, softWeight: 0.5, labels: 'some-ignored', labelSmoothing: 0.1, temperature: 1.5 },
];

function expectPass(c: DivCase): void {
  const errs = check(c, 'cuda:0');
  if (errs.length) throw new Error(`CUDA ${caseName(c)}\n${errs.join('\n')}`);
}

/** CUDA result vs CPU result on the same inputs (both f32-accumulating kernels). */
function expectMatchesCpu(c: DivCase): void {
  const cpu = runNative(c, build(c, 'cpu'));
  const gpu = runNative(c, build(c, 'cuda:0'));
  const lossC = typeof cpu.loss === 'number' ? [cpu.loss] : cpu.loss;
  const lossG = typeof gpu.loss === 'number' ? [gpu.loss] : gpu.loss;
  const r = compareArrays(lossG, lossC, { rtol: 2e-4, atol: 1e-6, label: `CUDA vs CPU loss ${caseName(c)}` });
  if (!r.ok) throw new Error(r.message);
  if (cpu.grad) {
    const scale = cpu.grad.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    const out: FloatDType = c.gradDtype === 'f32' ? 'f32' : c.sDtype;
    const rt = out === 'bf16' ? 2 ** -7 : out === 'f16' ? 2 ** -10 : 2e-4;
    const g = compareArrays(gpu.grad!, cpu.grad, { rtol: rt, atol: 1e-5 * scale, label: `CUDA vs CPU grad ${caseName(c)}`, cols: c.v });
    if (!g.ok) throw new Error(g.message);
  }
}

describe.skipIf(!CUDA)(`CUDA divergences ${CUDA_SKIP_REASON}`, () => {
  for (const d of DIVS)
    for (const dtype of ['f32', 'f16', 'bf16'] as const)
      it(`${d.divergence}${d.beta !== undefined ? ` beta=${d.beta}` : ''} ${dtype} vs reference and CPU`, () => {
        for (const sc of SCENARIOS) {
          const c: DivCase = { n: 41, v: 1271, sDtype: dtype, ...d, ...sc };
          expectPass(c);
          expectMatchesCpu(c);
        }
      });

  it('shapes 7×123, 3×32000, 2×151936, V = 1, 1×1M, N = 0', () => {
    for (const [n, v] of [[7, 123], [3, 32000], [2, 151936], [5, 1], [1, 1 << 20]] as const)
      for (const d of DIVS) for (const dtype of ['f32', 'bf16'] as const) expectPass({ n, v, sDtype: dtype, ...d });
    const e = kd.empty([0, 17], { device: 'cuda:0' });
    expect(kd.klDiv(e, e).loss.item()).toBe(0);
  });

  it('all tokens ignored, -inf logits, a NaN row, logits of magnitude 1e4', () => {
    for (const d of DIVS) {
      expectPass({ n: 9, v: 57, sDtype: 'f32', ...d, labels: 'all-ignored' });
      expectPass({ n: 11, v: 97, sDtype: 'bf16', ...d, negInf: true, temperature: 0.7 });
      expectPass({ n: 6, v: 301, sDtype: 'f32', ...d, scale: 2500 });
    }
    const n = 4, v = 33;
    const s = Float32Array.from({ length: n * v }, (_, i) => Math.sin(i * 1.7) * 4);
    s[2 * v + 5] = NaN;
    const t = Float32Array.from({ length: n * v }, (_, i) => Math.cos(i * 0.3) * 4);
    const r = kd.jsd(kd.tensor(s, [n, v], { device: 'cuda:0' }), kd.tensor(t, [n, v], { device: 'cuda:0' }), { reduction: 'none' });
    const loss = r.loss.toArray();
    expect(Number.isNaN(loss[2])).toBe(true);
    expect([0, 1, 3].every((i) => Number.isFinite(loss[i]))).toBe(true);
  });

  it('bitwise deterministic across runs; a caller stream gives the same bits', () => {
    const c: DivCase = { n: 64, v: 32000, sDtype: 'bf16', divergence: 'jsd', beta: 0.5, temperature: 1.3 };
    const b = build(c, 'cuda:0');
    const runs = [0, 1, 2].map(() => kd.jsd(b.student, b.teacher, { ...lossOptions(c, b), beta: 0.5 }));
    const bits = runs.map((r) => Buffer.from(r.grad!.toArray().buffer));
    for (const r of runs) expect(r.loss.item()).toBe(runs[0]!.loss.item());
    for (const x of bits) expect(x.equals(bits[0]!)).toBe(true);
  });

  it('two worker threads launching plans of different shared-memory sizes at once: no launch error, same bits', async () => {
    // f32 V = 151936: an 8-block cluster with ~113 KB per block on an H100; V = 8192: one
    // block with ~66 KB. Both need the dynamic shared-memory attribute of the same kernel;
    // it must never be lowered under the other thread's launch (docs/CUDA_REVIEW.md #1).
    const run = (data: object) =>
      new Promise<{ loss?: number; same?: boolean; error?: string }>((resolve, reject) => {
        const entry = new URL('./fixtures/cuda_smem_worker.ts', import.meta.url).href;
        const w = new Worker(new URL('./fixtures/ts_worker.mjs', import.meta.url), { workerData: { ...data, entry } });
        w.once('message', (m) => { resolve(m); void w.terminate(); });
        w.once('error', reject);
      });
    const shapes = [{ n: 4, v: 151936, reps: 40, seed: 3 }, { n: 16, v: 8192, reps: 40, seed: 4 }];
    const got = await Promise.all(shapes.map(run));
    for (const [i, g] of got.entries()) {
      expect(g.error, JSON.stringify(shapes[i])).toBeUndefined();
      expect(g.same).toBe(true);
      expect(Number.isFinite(g.loss)).toBe(true);
    }
  });

  it('tokenStats matches the CPU path', () => {
    const n = 41, v = 1271;
    const s = Float32Array.from({ length: n * v }, (_, i) => Math.sin(i * 0.13) * 5);
    const t = Float32Array.from({ length: n * v }, (_, i) => Math.cos(i * 0.07) * 5);
    const sampled = Int32Array.from({ length: n }, (_, i) => (i * 31) % v);
    const cpu = kd.tokenStats(kd.tensor(s, [n, v]), kd.tensor(t, [n, v]), { sampled, temperature: 1.5 });
    const gpu = kd.tokenStats(kd.tensor(s, [n, v], { device: 'cuda:0' }), kd.tensor(t, [n, v], { device: 'cuda:0' }), { sampled, temperature: 1.5 });
    for (const k of ['forwardKl', 'reverseKl', 'studentEntropy', 'teacherEntropy', 'studentLogProb', 'teacherLogProb'] as const) {
      const r = compareArrays(gpu[k]!.toFloat32Array(), cpu[k]!.toFloat32Array(), { rtol: 1e-4, atol: 1e-5, label: k });
      if (!r.ok) throw new Error(r.message);
    }
    expect(Array.from(gpu.teacherRank!.toArray())).toEqual(Array.from(cpu.teacherRank!.toArray()));
  });
});
