/**
 * A launch that fails after an op took its outputs from the pool gives them back: every
 * op, sync and async. On the CPU the public API rejects bad input before the outputs are
 * made, and a native failure there (out of memory, a CUDA error) cannot be provoked on
 * demand, so dispatch() is replaced by one that fails when told to.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import * as kd from '../lib/index.js';
import { peakedLogits } from './helpers.js';

const failing = { on: false };
vi.mock('../lib/dispatch.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../lib/dispatch.js')>();
  const fail = (op: string) => Object.assign(new Error(`injected launch failure in ${op}`), { code: 'KD_EINJECTED' });
  return {
    ...real,
    dispatch: (op: Parameters<typeof real.dispatch>[0], args: Parameters<typeof real.dispatch>[1], device: number) => {
      if (!failing.on) return real.dispatch(op, args, device);
      if (args.async) return Promise.reject(fail(op));
      throw fail(op);
    },
  };
});

// N = 20000 rows: every per-token output (80 KB) and every gradient comes from the pool.
const n = 20000, v = 8, k = 2;
const s = kd.tensor(peakedLogits(n, v, 41), [n, v]);
const t = kd.tensor(peakedLogits(n, v, 42), [n, v]);
const labels = new Int32Array(n).fill(3);
const sampled = new Int32Array(n).fill(5);
const top = kd.topk(t, k, { output: 'logprobs' });

type Call = [string, () => unknown, () => Promise<unknown>];
const calls: Call[] = [
  ['klDiv', () => kd.klDiv(s, t, { reduction: 'none' }), () => kd.klDivAsync(s, t, { reduction: 'none' })],
  ['jsd', () => kd.jsd(s, t), () => kd.jsdAsync(s, t)],
  ['distillationLoss', () => kd.distillationLoss(s, t, labels, { reduction: 'none' }), () => kd.distillationLossAsync(s, t, labels, { reduction: 'none' })],
  ['tokenStats', () => kd.tokenStats(s, t, { sampled }), () => kd.tokenStatsAsync(s, t, { sampled })],
  ['topk', () => kd.topk(t, k, { output: 'logprobs' }), () => kd.topkAsync(t, k, { output: 'logprobs' })],
  ['sampleTeacher', () => kd.sampleTeacher(t, 4, { seed: 1 }), () => kd.sampleTeacherAsync(t, 4, { seed: 1 })],
  ['sparseKlDiv', () => kd.sparseKlDiv(s, top, { tail: 'bucket', reduction: 'none' }), () => kd.sparseKlDivAsync(s, top, { tail: 'bucket', reduction: 'none' })],
];

function disposeResult(r: unknown): void {
  for (const x of Object.values(r as Record<string, kd.Tensor>)) x.dispose();
}

describe('a failed launch gives back its pooled outputs', () => {
  afterEach(() => {
    failing.on = false;
  });

  it.each(calls)('%s', async (name, sync, async_) => {
    // The op takes pooled outputs when it succeeds (so the check below is not vacuous).
    const m0 = kd.memory().cpu.inUseBytes;
    const ok = sync();
    expect(kd.memory().cpu.inUseBytes, `${name}: its outputs come from the pool`).toBeGreaterThan(m0);
    disposeResult(ok);
    expect(kd.memory().cpu.inUseBytes).toBe(m0);

    failing.on = true;
    expect(sync, name).toThrow(/injected launch failure/);
    expect(kd.memory().cpu.inUseBytes, `${name}: bytes in use after the failed call`).toBe(m0);
    await expect(async_(), `${name} (async)`).rejects.toThrow(/injected launch failure/);
    expect(kd.memory().cpu.inUseBytes, `${name}: bytes in use after the failed async call`).toBe(m0);
  });
});
