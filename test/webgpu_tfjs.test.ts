/**
 * kd-kernels/tfjs on tfjs-backend-webgpu (lib/tfjs_webgpu.ts): a training step with
 * kdLoss reads the logits through dataToGPU on tf's own GPUDevice and hands the
 * gradient back as a tf GPU tensor: the backend's reads (read / readSync, what
 * data() / dataSync() use) do not move during the step. Values are compared with the
 * CPU path on the same data. Skips, saying why, without an adapter.
 */
import { afterAll, describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { compareArrays } from './reference/common.js';

let tf: typeof import('@tensorflow/tfjs') | undefined;
let tfjs: typeof import('../lib/tfjs.js') | undefined;
let reason = '';
try {
  const webgpu = (await import('webgpu')) as { create: (f: string[]) => GPU; globals: Record<string, unknown> };
  const g = globalThis as { navigator?: { gpu?: GPU } };
  if (!g.navigator?.gpu) Object.defineProperty(globalThis, 'navigator', { value: { gpu: webgpu.create([]) }, configurable: true, writable: true });
  for (const [k, v] of Object.entries(webgpu.globals)) if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  tf = await import('@tensorflow/tfjs');
  await import('@tensorflow/tfjs-backend-webgpu');
  if (!(await tf.setBackend('webgpu'))) throw new Error("tf.setBackend('webgpu') failed");
  await tf.ready();
  kd.webgpu.setDevice((tf.backend() as unknown as { device: GPUDevice }).device);
  tfjs = await import('../lib/tfjs.js');
} catch (e) {
  reason = `no WebGPU adapter for tfjs-backend-webgpu: ${(e as Error).message}`;
  tf = undefined;
}
if (reason) console.log(`[kd-kernels tests] WebGPU tfjs cases skipped: ${reason}`);

/** Counts the backend's downloads (read: data(), readSync: dataSync()) while fn runs. */
function countReads<T>(fn: () => T): { value: T; reads: number } {
  const b = tf!.backend() as unknown as Record<string, (...a: unknown[]) => unknown>;
  let reads = 0;
  const orig = { read: b.read!, readSync: b.readSync! };
  b.read = (...a: unknown[]) => (reads++, orig.read.apply(b, a));
  b.readSync = (...a: unknown[]) => (reads++, orig.readSync.apply(b, a));
  try {
    return { value: fn(), reads };
  } finally {
    b.read = orig.read;
    b.readSync = orig.readSync;
  }
}

/**
 * A tensor whose data lives on the GPU, as a model's output does (tf.tensor keeps its
 * values on the host until an op uploads them; tensors under 1000 elements stay there).
 */
function onGpu(x: import('@tensorflow/tfjs').Tensor): import('@tensorflow/tfjs').Tensor {
  return tf!.tidy(() => tf!.mul(x, 1));
}

function data(n: number, v: number, seed: number): Float32Array {
  return Float32Array.from({ length: n * v }, (_, i) => Math.sin(i * 0.37 + seed) * 3 + (i % v === (seed * 7) % v ? 6 : 0));
}

describe.skipIf(!tf)(`kdLoss on tfjs-backend-webgpu ${reason}`, { timeout: 600_000 }, () => {
  afterAll(() => tf?.disposeVariables());

  it('a training step reads nothing back; loss and gradient match the CPU path', async () => {
    const n = 48, v = 1500;
    const s = data(n, v, 1), t = data(n, v, 2);
    const labels = Int32Array.from({ length: n }, (_, i) => (i % 5 === 0 ? -100 : (i * 37) % v));
    const student = tf!.variable(tf!.tensor2d(s, [n, v]));
    const teacher = onGpu(tf!.tensor2d(t, [n, v]));
    onGpu(student).dispose(); // uploads the variable (an upload, not a read)
    const before = tf!.memory().numTensors;
    // The logits as a model produces them: the output of a tf op on the GPU.
    const { value: step, reads } = countReads(() =>
      tf!.variableGrads(() => tfjs!.kdLoss(tf!.mul(student, 1), teacher, { divergence: 'jsd', beta: 0.3, temperature: 1.5, labels, hardWeight: 0.4, softWeight: 0.6 })),
    );
    expect(reads).toBe(0);
    const grad = step.grads[student.name]!;
    const cpu = kd.distillationLoss(kd.tensor(s, [n, v]), kd.tensor(t, [n, v]), labels, { divergence: 'jsd', beta: 0.3, temperature: 1.5, hardWeight: 0.4, softWeight: 0.6 });
    const cl = compareArrays([(await step.value.data())[0]!], [cpu.loss.item()], { rtol: 2e-4, atol: 1e-6, label: 'tf webgpu loss' });
    expect(cl.ok, cl.message).toBe(true);
    const gc = cpu.grad!.toFloat32Array();
    const scale = gc.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    const cg = compareArrays(await grad.data(), gc, { rtol: 2e-4, atol: 1e-5 * scale, label: 'tf webgpu grad', cols: v });
    expect(cg.ok, cg.message).toBe(true);
    step.value.dispose();
    grad.dispose();
    expect(tf!.memory().numTensors).toBe(before);
    teacher.dispose();
  });

  it('optimizer.minimize steps and an upstream gradient (0.3 · kdLoss): no reads, the loss goes down', async () => {
    const n = 40, v = 1200;
    const student = tf!.variable(tf!.tensor2d(data(n, v, 3), [n, v]));
    const teacher = onGpu(tf!.tensor2d(data(n, v, 4), [n, v]));
    onGpu(student).dispose();
    const opt = tf!.train.sgd(50);
    const losses: number[] = [];
    for (let k = 0; k < 3; k++) {
      const { value, reads } = countReads(() => opt.minimize(() => tfjs!.kdLoss(tf!.mul(student, 1), teacher, { divergence: 'forward-kl' }), true)!);
      expect(reads).toBe(0);
      losses.push((await value.data())[0]!);
      value.dispose();
    }
    expect(losses[2]!).toBeLessThan(losses[0]!);
    const x0 = onGpu(student);
    const g1 = tf!.grad((x: import('@tensorflow/tfjs').Tensor) => tfjs!.kdLoss(x, teacher, { divergence: 'tvd' }))(x0);
    const { value: g3, reads } = countReads(() => tf!.grad((x: import('@tensorflow/tfjs').Tensor) => tf!.mul(0.3, tfjs!.kdLoss(x, teacher, { divergence: 'tvd' })))(x0));
    expect(reads).toBe(0);
    const a = await g1.data(), b = await g3.data();
    const r = compareArrays(b, Float32Array.from(a, (x) => 0.3 * x), { rtol: 1e-6, atol: 1e-12, label: 'upstream 0.3' });
    expect(r.ok, r.message).toBe(true);
    tf!.dispose([g1, g3, teacher, x0]);
  });

  it('kd tensors as teacher, [B, T, V] logits, and the same errors as the CPU path', async () => {
    const b = 2, t = 20, v = 1100;
    const s = data(b * t, v, 5), te = data(b * t, v, 6);
    const student = tf!.tensor3d(s, [b, t, v]);
    const teacher = kd.tensor(te, [b * t, v], { device: 'webgpu' });
    const loss = tfjs!.kdLoss(student, teacher, { divergence: 'reverse-kl', reduction: 'sum' });
    const cpu = kd.klDiv(kd.tensor(s, [b * t, v]), kd.tensor(te, [b * t, v]), { direction: 'reverse', reduction: 'sum', grad: false });
    const r = compareArrays([(await loss.data())[0]!], [cpu.loss.item()], { rtol: 2e-4, atol: 1e-6, label: 'kd teacher' });
    expect(r.ok, r.message).toBe(true);
    expect(() => tfjs!.kdLoss(student, teacher, { divergence: 'tvd', beta: 0.5 })).toThrow(/does not apply/);
    expect(() => tfjs!.kdLoss(tf!.tensor2d(s.subarray(0, 20 * v), [20, v]), teacher)).toThrow(/tokens/);
    expect(() => tfjs!.kdLoss(student, null)).toThrow(/only allowed for plain cross-entropy/);
    tf!.dispose([student, loss]);
  });
});
