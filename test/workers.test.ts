import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';

function runWorker(data: object): Promise<{ simd: string; loss: number; grad: Float32Array }> {
  return new Promise((resolve, reject) => {
    const entry = new URL('./fixtures/worker_load.ts', import.meta.url).href;
    const w = new Worker(new URL('./fixtures/ts_worker.mjs', import.meta.url), { workerData: { ...data, entry } });
    w.once('message', (m) => { resolve(m); void w.terminate(); });
    w.once('error', reject);
  });
}

describe('worker_threads', () => {
  it('two workers load the addon at once and compute what the main thread computes', async () => {
    const data = { n: 7, v: 123, seed: 42 };
    const [a, b] = await Promise.all([runWorker(data), runWorker(data)]);
    expect(a.simd).toBe(kd.backends().cpu.simd);
    let x = data.seed;
    const rnd = () => ((x = (x * 1103515245 + 12345) >>> 0) / 2 ** 32) * 8 - 4;
    const s = kd.tensor(Float32Array.from({ length: 7 * 123 }, rnd), [7, 123]);
    const t = kd.tensor(Float32Array.from({ length: 7 * 123 }, rnd), [7, 123]);
    const r = kd.klDiv(s, t);
    expect(Number.isFinite(r.loss.item())).toBe(true);
    expect(a.loss).toBe(r.loss.item());
    expect(b.loss).toBe(r.loss.item());
    expect(Buffer.from(a.grad.buffer).equals(Buffer.from((r.grad!.toArray() as Float32Array).buffer))).toBe(true);
    expect(Buffer.from(b.grad.buffer).equals(Buffer.from(a.grad.buffer))).toBe(true);
  });
});
