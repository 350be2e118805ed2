/**
 * `npm run bench -- --device webgpu`: the WGSL kernels against what a tfjs-webgpu user has
 * today (the same loss written with tf ops and tf.valueAndGrad on the webgpu backend),
 * side by side in one run on ONE GPUDevice (tf's; kd is pointed at it), plus a
 * copyBufferToBuffer over the bytes an ideal fused pass moves (student + teacher read,
 * gradient written): the copy floor, measured in the same run.
 *
 * Timed region, both contenders: one training step's GPU work (loss and gradient w.r.t.
 * the student logits; tfjs also its teacher log-softmax, which autograd treats as a
 * constant) and the wait for the queue to drain (tfjs: its pending commands submitted
 * first). Nothing is read back in the timed region. Median of the runs after warm-up.
 *
 * On a software adapter (lavapipe: the "GPU" is the same CPU cores) only the ratios
 * between contenders mean anything; on a real GPU the fraction of the copy floor does too.
 *
 * The default call path: the same kd step with a new gradient per call (disposed, as a
 * loop that frees its results does) against the preallocated `grad` above, with the
 * WebGPU output pool on and off (kd.setMemoryLimit(0): a new buffer per output,
 * destroyed at dispose, as before the pool), in alternating rounds.
 *
 *   npm run bench -- --device webgpu [--shape 64x32000,...] [--op forward-kl,jsd] [--time ms] [--quick]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import * as kd from '../lib/index.js';
import { ROOT } from './harness.js';

type Tf = typeof import('@tensorflow/tfjs');

export interface WebGPUBenchArgs {
  quick: boolean;
  shapes?: string[];
  ops?: string[];
  timeMs?: number;
  out?: string;
}

const OPS = ['forward-kl', 'jsd'] as const;
type Op = (typeof OPS)[number];

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function timeIt(fn: () => Promise<void>, budgetMs: number, minRuns = 3): Promise<{ median: number; runs: number; p10: number; p90: number }> {
  await fn(); // warm-up (pipelines compiled, buffers pooled)
  const xs: number[] = [];
  const t0 = performance.now();
  while (xs.length < minRuns || (performance.now() - t0 < budgetMs && xs.length < 200)) {
    const a = performance.now();
    await fn();
    xs.push(performance.now() - a);
  }
  const s = xs.slice().sort((a, b) => a - b);
  return { median: median(xs), runs: xs.length, p10: s[Math.floor(0.1 * (s.length - 1))]!, p90: s[Math.ceil(0.9 * (s.length - 1))]! };
}

export async function runWebGPUBench(a: WebGPUBenchArgs): Promise<void> {
  const g = globalThis as { navigator?: { gpu?: GPU } };
  if (!g.navigator?.gpu) {
    const webgpu = (await import('webgpu')) as { create: (f: string[]) => GPU; globals: Record<string, unknown> };
    Object.defineProperty(globalThis, 'navigator', { value: { gpu: webgpu.create([]) }, configurable: true, writable: true });
    for (const [k, v] of Object.entries(webgpu.globals)) if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  }
  const tf = (await import('@tensorflow/tfjs')) as Tf;
  await import('@tensorflow/tfjs-backend-webgpu');
  tf.enableProdMode();
  if (!(await tf.setBackend('webgpu'))) throw new Error("tf.setBackend('webgpu') failed: no WebGPU adapter (install Mesa's lavapipe, see README)");
  await tf.ready();
  const backend = tf.backend() as unknown as { device: GPUDevice; submitQueue(): void; endComputePassEncoder(): void };
  const device = backend.device;
  kd.webgpu.setDevice(device);
  const adapterInfo = (device as unknown as { adapterInfo?: GPUAdapterInfo }).adapterInfo;
  const adapter = adapterInfo ? `${adapterInfo.vendor} ${adapterInfo.architecture} ${adapterInfo.description}`.trim() : 'unknown';

  const shapes = (a.shapes ?? [a.quick ? '64x32000' : '256x32000']).map((s) => s.split('x').map(Number) as [number, number]);
  const ops = (a.ops ?? OPS) as Op[];
  for (const op of ops) if (!OPS.includes(op)) throw new Error(`--op: the WebGPU bench has ${OPS.join(', ')}, not ${op}`);
  const budget = a.timeMs ?? (a.quick ? 300 : 2000);
  const drain = () => device.queue.onSubmittedWorkDone();

  console.log(`WebGPU bench on ${adapter} (tf ${tf.version.tfjs}, tfjs-backend-webgpu), ${os.cpus().length} CPU cores, load ${os.loadavg()[0]!.toFixed(1)}`);
  console.log('op          N×V          kd ms (p10–p90)      tfjs-webgpu ms       copy floor ms   kd vs tfjs   of copy floor   |loss kd − tf|');
  const rows: Record<string, unknown>[] = [];
  const defaults: string[] = [];
  for (const [N, V] of shapes) {
    const s = Float32Array.from({ length: N * V }, (_, i) => Math.sin(i * 0.37) * 3);
    const t = Float32Array.from({ length: N * V }, (_, i) => Math.cos(i * 0.11) * 3);
    const S = kd.tensor(s, [N, V], { device: 'webgpu' });
    const T = kd.tensor(t, [N, V], { device: 'webgpu' });
    const G = kd.empty([N, V], { device: 'webgpu' });
    const z = tf.tidy(() => tf.mul(tf.tensor2d(s, [N, V]), 1)); // on the GPU, as a model's output
    const tt = tf.tidy(() => tf.mul(tf.tensor2d(t, [N, V]), 1));
    // Copy floor: one copy of 1.5 N V f32 moves 3 N V x 4 bytes (read + write), the
    // traffic of an ideal fused pass (read z and t, write the gradient).
    const bytes = Math.ceil((N * V * 4 * 3) / 2 / 4) * 4;
    const src = device.createBuffer({ size: bytes, usage: GPUBufferUsage.COPY_SRC });
    const dst = device.createBuffer({ size: bytes, usage: GPUBufferUsage.COPY_DST });
    const copyT = await timeIt(async () => {
      const enc = device.createCommandEncoder();
      enc.copyBufferToBuffer(src, 0, dst, 0, bytes);
      device.queue.submit([enc.finish()]);
      await drain();
    }, budget);
    for (const op of ops) {
      const kdRun = () => (op === 'jsd' ? kd.jsd(S, T, { beta: 0.5, grad: G }) : kd.klDiv(S, T, { grad: G }));
      const kdT = await timeIt(async () => {
        kdRun().loss.dispose();
        await drain();
      }, budget);
      const lossFn = (zz: import('@tensorflow/tfjs').Tensor2D, lp: import('@tensorflow/tfjs').Tensor2D) => {
        if (op === 'forward-kl') return tf.sum(tf.mul(tf.exp(lp), tf.sub(lp, tf.logSoftmax(zz)))).div(N) as import('@tensorflow/tfjs').Scalar;
        const lq = tf.logSoftmax(zz);
        const p = tf.exp(lp), q = tf.exp(lq);
        const lm = tf.log(tf.add(tf.mul(p, 0.5), tf.mul(q, 0.5)));
        return tf.add(tf.mul(tf.sum(tf.mul(p, tf.sub(lp, lm))), 0.5), tf.mul(tf.sum(tf.mul(q, tf.sub(lq, lm))), 0.5)).div(N) as import('@tensorflow/tfjs').Scalar;
      };
      const tfStep = () =>
        tf.tidy(() => {
          const lp = tf.logSoftmax(tt) as import('@tensorflow/tfjs').Tensor2D;
          const r = tf.valueAndGrad((zz: import('@tensorflow/tfjs').Tensor2D) => lossFn(zz, lp))(z as import('@tensorflow/tfjs').Tensor2D);
          return [r.value, r.grad] as const;
        });
      const tfT = await timeIt(async () => {
        const [v, gr] = tfStep();
        backend.endComputePassEncoder(); // what tfjs does before its own submits
        backend.submitQueue();
        await drain();
        v.dispose();
        gr.dispose();
      }, budget);
      // The two losses agree (read outside the timed regions).
      const kdLoss = await kdRun().loss.itemAsync();
      const [v, gr] = tfStep();
      const tfLoss = (await v.data())[0]!;
      tf.dispose([v, gr]);
      const row = {
        op, N, V, adapter,
        kdMs: kdT.median, kdP10: kdT.p10, kdP90: kdT.p90, kdRuns: kdT.runs,
        tfjsMs: tfT.median, tfjsP10: tfT.p10, tfjsP90: tfT.p90, tfjsRuns: tfT.runs,
        copyFloorMs: copyT.median, copyGBs: (2 * bytes) / (copyT.median * 1e6),
        kdVsTfjs: tfT.median / kdT.median, ofCopyFloor: copyT.median / kdT.median,
        lossKd: kdLoss, lossTfjs: tfLoss,
      };
      rows.push(row);
      const f = (x: number) => x.toFixed(x < 10 ? 2 : 1);
      console.log(
        `${op.padEnd(11)} ${`${N}×${V}`.padEnd(12)} ${`${f(kdT.median)} (${f(kdT.p10)}–${f(kdT.p90)})`.padEnd(20)} ${`${f(tfT.median)} (${f(tfT.p10)}–${f(tfT.p90)})`.padEnd(20)} ${f(copyT.median).padEnd(15)} ${`${row.kdVsTfjs.toFixed(1)}×`.padEnd(12)} ${`${(100 * row.ofCopyFloor).toFixed(0)}%`.padEnd(15)} ${Math.abs(kdLoss - tfLoss).toExponential(1)}`,
      );
    }
    for (const op of ops) {
      const pre = () => (op === 'jsd' ? kd.jsd(S, T, { beta: 0.5, grad: G }) : kd.klDiv(S, T, { grad: G }));
      const def = () => (op === 'jsd' ? kd.jsd(S, T, { beta: 0.5 }) : kd.klDiv(S, T));
      const defaultStep = async () => {
        const r = def();
        r.loss.dispose();
        r.grad!.dispose();
        await drain();
      };
      // [step, pool cap while it runs]: the pool is switched off around its rounds, not per call
      const cap = kd.memory().cpu.capBytes;
      const variants = {
        preallocated: [async () => {
          pre().loss.dispose();
          await drain();
        }, cap],
        default: [defaultStep, cap],
        'default, pool off': [defaultStep, 0],
      } as const;
      const ROUNDS = 5;
      const samples: Record<string, number[]> = {};
      for (let round = 0; round < ROUNDS; round++)
        for (const [name, [fn, limit]] of Object.entries(variants)) {
          kd.setMemoryLimit(limit);
          try {
            const t = await timeIt(fn, budget / ROUNDS, 3);
            (samples[name] ??= []).push(t.median);
          } finally {
            kd.setMemoryLimit(cap);
          }
        }
      const m = Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, median(xs)])) as Record<keyof typeof variants, number>;
      const row = {
        op, N, V, adapter, kind: 'default call path', rounds: ROUNDS,
        preallocatedMs: m.preallocated, defaultMs: m.default, defaultPoolOffMs: m['default, pool off'],
        defaultVsPreallocated: m.default / m.preallocated, poolOffVsOn: m['default, pool off'] / m.default,
      };
      rows.push(row);
      defaults.push(
        `${op.padEnd(11)} ${`${N}×${V}`.padEnd(12)} ${m.preallocated.toFixed(2).padEnd(12)} ${m.default.toFixed(2).padEnd(14)} ${m['default, pool off'].toFixed(2).padEnd(16)} ${`${row.defaultVsPreallocated.toFixed(2)}×`.padEnd(18)} ${row.poolOffVsOn.toFixed(2)}×`,
      );
    }
    src.destroy();
    dst.destroy();
    tf.dispose([z, tt]);
    S.dispose();
    T.dispose();
    G.dispose();
  }
  console.log('default call path (a new gradient per call, disposed; medians of 5 alternating rounds):');
  console.log('op          N×V          prealloc ms  default ms     pool off ms      default / prealloc  pool off / on');
  for (const l of defaults) console.log(l);
  console.log('note: kd vs tfjs = tfjs time / kd time (same device, same run); of copy floor = copy time of the same bytes / kd time.');
  console.log('note: on a software adapter (llvmpipe) only the ratios between contenders mean anything.');
  const outDir = a.out ?? join(ROOT, 'bench/results');
  mkdirSync(outDir, { recursive: true });
  const doc = { kind: 'kd-kernels webgpu bench', date: new Date().toISOString(), adapter, tfjs: tf.version.tfjs, cpus: os.cpus()[0]?.model, loadavg: os.loadavg(), rows };
  writeFileSync(join(outDir, 'webgpu-latest.json'), JSON.stringify(doc, null, 2));
  console.log(`wrote ${join(outDir, 'webgpu-latest.json')}`);
}
