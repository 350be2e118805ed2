/**
 * distillationLoss (CE + divergence fused) against the float64 references, and the
 * references against TRL's generalized_jsd_loss and PyTorch's cross_entropy, written
 * here from those libraries' definitions.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { DIVERGENCE_TABLE, caseName, check, type DivCase } from './divergence_cases.js';
import { compareArrays, logSoftmax, mulberry32, randomLogits } from './reference/common.js';
import { refDistillationLoss } from './reference/distillation.js';

function expectPass(c: DivCase): void {
  const errs = check(c);
  if (errs.length) throw new Error(`${caseName(c)}\n${errs.join('\n')}`);
}

const DIVS = DIVERGENCE_TABLE;

describe('distillationLoss vs reference: divergences × dtypes × options', () => {
  const scenarios: Partial<DivCase>[] = [
    { hardWeight: 0.5, softWeight: 0.5 },
    { hardWeight: 1, softWeight: 2, temperature: 2, labels: 'some-ignored', labelSmoothing: 0.1 },
    { hardWeight: 0.3, softWeight: 0.7, temperature: 0.5, mask: true, weights: true, reduction: 'none', gradScale: 0.25 },
    { hardWeight: 1, softWeight: 1, teacherKind: 'logprobs', reduction: 'sum', normalizer: 11, scaleT2: false },
    { hardWeight: 2, softWeight: 0.5, negInf: true, labels: 'some-ignored', gradDtype: 'f32' },
    { hardWeight: 1, softWeight: 1, temperature: 1.5, grad: 'inplace', reduction: 'mean' },
  ];
  for (const d of DIVS)
    for (const dtype of ['f32', 'f16', 'bf16'] as const)
      it(`${d.divergence}${d.beta !== undefined ? ` beta=${d.beta}` : ''} ${dtype}`, () => {
        for (const sc of scenarios) expectPass({ n: 23, v: 517, sDtype: dtype, ...d, ...sc });
      });

  it('odd shapes 41×1271, 3×32000, 2×151936, V=1', () => {
    for (const [n, v] of [[41, 1271], [3, 32000], [2, 151936], [4, 1]] as const)
      for (const d of [DIVS[0]!, DIVS[2]!]) expectPass({ n, v, sDtype: 'bf16', ...d, hardWeight: 0.5, softWeight: 0.5, temperature: 2 });
  });

  it('all tokens ignored: loss 0 and grad 0', () => {
    expectPass({ n: 6, v: 40, sDtype: 'f32', divergence: 'jsd', hardWeight: 1, softWeight: 1, labels: 'all-ignored' });
  });

  it('softWeight 0 is cross-entropy alone; hardWeight 0 is the divergence alone', () => {
    const n = 9, v = 77;
    const sd = Float32Array.from(randomLogits(n, v, { seed: 3, scale: 2 }));
    const td = Float32Array.from(randomLogits(n, v, { seed: 4, scale: 2 }));
    const labels = Int32Array.from({ length: n }, (_, i) => (i * 7) % v);
    const s = kd.tensor(sd, [n, v]);
    const t = kd.tensor(td, [n, v]);
    const ce = kd.distillationLoss(s, t, labels, { hardWeight: 1, softWeight: 0 });
    const ref = refDistillationLoss(sd, td, labels, n, v, { divergence: 'forward-kl', hardWeight: 1, softWeight: 0 });
    expect(compareArrays([ce.loss.item()], [ref.loss as number], { rtol: 1e-5, label: 'CE only' }).ok).toBe(true);
    const kl = kd.distillationLoss(s, t, labels, { hardWeight: 0, softWeight: 1, divergence: 'jsd', beta: 0.3 });
    const j = kd.jsd(s, t, { beta: 0.3, labels });
    expect(kl.loss.item()).toBeCloseTo(j.loss.item(), 6);
  });
});

/**
 * TRL's generalized_jsd_loss (trl/trainer/gkd_trainer.py), transcribed in float64:
 *   s = log_softmax(z/T), t = log_softmax(x/T)
 *   beta == 0: jsd = kl_div(s, t, log_target) = Σ e^t (t − s)
 *   beta == 1: jsd = kl_div(t, s, log_target) = Σ e^s (s − t)
 *   else: m = logsumexp([s + log(1−β), t + log β]); jsd = β Σ e^t (t − m) + (1−β) Σ e^s (s − m)
 *   jsd = jsd[labels != -100]; 'batchmean': sum / mask.sum() (or / num_items_in_batch)
 * No T² factor.
 */
function trlGeneralizedJsd(z: Float64Array, x: Float64Array, labels: Int32Array, n: number, v: number, beta: number, T: number, numItems?: number): number {
  let sum = 0;
  let count = 0;
  for (let i = 0; i < n; i++) {
    if (labels[i] === -100) continue;
    count++;
    const s = logSoftmax(z.subarray(i * v, (i + 1) * v), T);
    const t = logSoftmax(x.subarray(i * v, (i + 1) * v), T);
    for (let j = 0; j < v; j++) {
      if (beta === 0) sum += Math.exp(t[j]!) * (t[j]! - s[j]!);
      else if (beta === 1) sum += Math.exp(s[j]!) * (s[j]! - t[j]!);
      else {
        const a = s[j]! + Math.log(1 - beta), b = t[j]! + Math.log(beta);
        const mx = Math.max(a, b);
        const m = mx + Math.log(Math.exp(a - mx) + Math.exp(b - mx));
        sum += beta * Math.exp(t[j]!) * (t[j]! - m) + (1 - beta) * Math.exp(s[j]!) * (s[j]! - m);
      }
    }
  }
  return sum / (numItems ?? count);
}

/** PyTorch F.cross_entropy(z, y, ignore_index=-100, label_smoothing=ε), reduction 'mean'. */
function torchCrossEntropy(z: Float64Array, y: Int32Array, n: number, v: number, eps: number): number {
  let sum = 0;
  let count = 0;
  for (let i = 0; i < n; i++) {
    if (y[i] === -100) continue;
    count++;
    const lq = logSoftmax(z.subarray(i * v, (i + 1) * v), 1);
    let smooth = 0;
    for (let j = 0; j < v; j++) smooth -= lq[j]!;
    sum += (1 - eps) * -lq[y[i]!]! + (eps * smooth) / v;
  }
  return sum / count;
}

describe('matches TRL generalized_jsd_loss and PyTorch cross_entropy', () => {
  const n = 17, v = 311;
  const z = randomLogits(n, v, { seed: 11, scale: 2.5, peaked: true });
  const x = randomLogits(n, v, { seed: 12, scale: 2.5, peaked: true });
  const rng = mulberry32(5);
  const labels = Int32Array.from({ length: n }, (_, i) => (i % 4 === 0 ? -100 : Math.floor(rng() * v)));
  const s = kd.tensor(Float32Array.from(z), [n, v]);
  const t = kd.tensor(Float32Array.from(x), [n, v]);

  for (const beta of [0, 0.1, 0.5, 0.9, 1])
    for (const T of [0.5, 1, 2])
      for (const numItems of [undefined, 40])
        it(`soft term: beta=${beta} T=${T}${numItems ? ' num_items_in_batch=40' : ''}`, () => {
          const want = trlGeneralizedJsd(z, x, labels, n, v, beta, T, numItems);
          const ref = refDistillationLoss(z, x, labels, n, v, { divergence: 'jsd', beta, temperature: T, scaleByTemperatureSquared: false, hardWeight: 0, softWeight: 1, normalizer: numItems });
          expect(Math.abs((ref.loss as number) - want)).toBeLessThanOrEqual(1e-12 * Math.abs(want) + 1e-14);
          const got = kd.distillationLoss(s, t, labels, { divergence: 'jsd', beta, temperature: T, scaleByTemperatureSquared: false, hardWeight: 0, softWeight: 1, normalizer: numItems });
          expect(Math.abs(got.loss.item() - want)).toBeLessThanOrEqual(1e-4 * Math.abs(want) + 1e-6);
        });

  for (const eps of [0, 0.1, 0.3])
    it(`hard term: cross_entropy ignore_index=-100 label_smoothing=${eps}`, () => {
      const want = torchCrossEntropy(z, labels, n, v, eps);
      const ref = refDistillationLoss(z, x, labels, n, v, { divergence: 'forward-kl', hardWeight: 1, softWeight: 0, labelSmoothing: eps });
      expect(Math.abs((ref.loss as number) - want)).toBeLessThanOrEqual(1e-12 * Math.abs(want));
      const got = kd.distillationLoss(s, t, labels, { hardWeight: 1, softWeight: 0, labelSmoothing: eps });
      expect(Math.abs(got.loss.item() - want)).toBeLessThanOrEqual(1e-5 * Math.abs(want));
    });
});
