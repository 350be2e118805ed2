/**
 * The default call path, beside the preallocated one (forward-kl / jsd with `grad: G`):
 *
 * - forward-kl-default: `kd.klDiv(s, t)` as a user writes it, a fresh gradient each call,
 *   the result dropped without dispose(). These loops never yield to the event loop, so
 *   finalizers never run: a block comes back when V8 has collected its ArrayBuffer (the
 *   pool watches them through weak references). Timed after 48 untimed calls
 *   (`steadyStateCalls`), once the pool holds the gradients V8 has yet to collect (a few:
 *   V8's scavenges find them, native/common/tuning.h kPoolV8FullBelow), as in a training
 *   loop after its first steps; the first calls fault in fresh pages.
 * - forward-kl-default-held: the same, but each result stays referenced until the next call
 *   has returned (as a top-level `const r = kd.klDiv(s, t)` in a loop body holds the previous
 *   step's result during the call): the young collection V8 runs in the next call (at its
 *   first output) finds it alive and may promote it, whose block then comes back only after
 *   a full collection.
 * - forward-kl-default-dispose: the same, disposing the result each call (the gradient's
 *   block goes straight back to the pool and is reused next call, not zero-filled).
 * - jsd-default: jsd β = 0.5 with dispose, as forward-kl-default-dispose.
 * - tfjs-kd-loss-step: a step of the tfjs adapter, `tf.variableGrads(() => kdLoss(v, t))`
 *   with the gradient disposed after the step, against `forward-kl` (the raw call it
 *   makes, into a preallocated gradient).
 *
 * f32 only, on all threads only (bench/run.ts `allThreadsOnly`). Traffic as forward KL.
 * Sampled 4× as long as a kernel case (`budgetScale`): their means include V8's
 * collections, which land on a few calls. Every case starts from a collected heap, and is
 * also timed in rounds alternating with its preallocated call (`pairedBaseline`): the
 * headline ratios come from those rounds.
 */
import * as kd from '../lib/index.js';
import { loadTfjs } from './contenders/tfjs.js';
import { disposeOutputs, lossTraffic, type CaseData, type OpSpec } from './harness.js';

type Tfjs = typeof import('@tensorflow/tfjs');
type Adapter = typeof import('../lib/tfjs.js');
// tfjs on its pure-JS 'cpu' backend (as the tfjs contender), and the adapter
let tfjs: { tf: Tfjs; adapter: Adapter } | string;
const loaded = await loadTfjs();
if (typeof loaded === 'string') tfjs = loaded;
else {
  try {
    tfjs = { tf: loaded as unknown as Tfjs, adapter: await import('../lib/tfjs.js') };
  } catch (e) {
    tfjs = `kd-kernels/tfjs could not be loaded: ${e instanceof Error ? e.message : String(e)}`;
  }
}

/**
 * What a call path does with each result: 'drop' lets it go out of scope at once, 'hold'
 * keeps it referenced until the next call has returned, 'dispose' disposes it.
 */
type AfterCall = 'drop' | 'hold' | 'dispose';

function defaultCall(fn: (d: CaseData) => kd.LossResult, after: AfterCall) {
  return (d: CaseData) => {
    let held: kd.LossResult | undefined;
    return {
      run() {
        const r = fn(d);
        if (after === 'dispose') disposeOutputs(r);
        else if (after === 'hold') held = r;
        d.sync();
      },
      value() {
        const r = fn(d);
        const v = r.loss.item();
        disposeOutputs(r);
        return v;
      },
      dispose() {
        held = undefined;
      },
    };
  };
}

export const ops: OpSpec[] = [
  {
    name: 'forward-kl-default',
    title: 'klDiv forward, default call: fresh grad, no dispose',
    suite: 'call_path',
    dtypes: ['f32'],
    allThreadsOnly: true,
    traffic: (s, dt) => lossTraffic(s, dt),
    make: defaultCall((d) => kd.klDiv(d.student, d.teacher), 'drop'),
    steadyStateCalls: 48,
    budgetScale: 4,
    pairedBaseline: 'forward-kl',
    contenders: { torch: 'forward-kl' },
  },
  {
    name: 'forward-kl-default-held',
    title: 'klDiv forward, default call: fresh grad, no dispose, held until the next call',
    suite: 'call_path',
    dtypes: ['f32'],
    allThreadsOnly: true,
    traffic: (s, dt) => lossTraffic(s, dt),
    make: defaultCall((d) => kd.klDiv(d.student, d.teacher), 'hold'),
    steadyStateCalls: 48,
    budgetScale: 4,
    pairedBaseline: 'forward-kl',
    contenders: { torch: 'forward-kl' },
  },
  {
    name: 'forward-kl-default-dispose',
    title: 'klDiv forward, default call + dispose()',
    suite: 'call_path',
    dtypes: ['f32'],
    allThreadsOnly: true,
    traffic: (s, dt) => lossTraffic(s, dt),
    make: defaultCall((d) => kd.klDiv(d.student, d.teacher), 'dispose'),
    budgetScale: 4,
    pairedBaseline: 'forward-kl',
    contenders: { torch: 'forward-kl' },
  },
  {
    name: 'jsd-default',
    title: 'jsd β=0.5, default call + dispose()',
    suite: 'call_path',
    dtypes: ['f32'],
    allThreadsOnly: true,
    traffic: (s, dt) => lossTraffic(s, dt),
    make: defaultCall((d) => kd.jsd(d.student, d.teacher, { beta: 0.5 }), 'dispose'),
    budgetScale: 4,
    pairedBaseline: 'jsd',
    contenders: { torch: 'jsd' },
  },
  {
    name: 'tfjs-kd-loss-step',
    title: 'tfjs adapter: variableGrads(kdLoss) step',
    suite: 'call_path',
    dtypes: ['f32'],
    allThreadsOnly: true,
    unavailable: () => (typeof tfjs === 'string' ? tfjs : d0(tfjs)),
    pairedBaseline: 'forward-kl',
    traffic: (s, dt) => lossTraffic(s, dt),
    make(d: CaseData) {
      const { tf, adapter } = tfjs as { tf: Tfjs; adapter: Adapter };
      const v = tf.variable(tf.tensor(d.host.student as Float32Array, [d.N, d.V], 'float32'));
      const step = () => {
        const { value, grads } = tf.variableGrads(() => adapter.kdLoss(v, d.teacher), [v]);
        const x = value.dataSync()[0]!;
        value.dispose();
        for (const g of Object.values(grads)) g.dispose();
        return x;
      };
      return { run: () => void step(), value: step, dispose: () => v.dispose() };
    },
  },
];

/** tf's backend must be the pure-JS CPU one the adapter targets. */
function d0(t: { tf: Tfjs }): string | undefined {
  return t.tf.getBackend() === 'cpu' ? undefined : `tf backend is '${t.tf.getBackend()}', not 'cpu'`;
}
