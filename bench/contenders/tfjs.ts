/**
 * Contender: what a TS trainer does today without kd-kernels: write the loss with
 * @tensorflow/tfjs ops and let its autograd take the gradient (tf.valueAndGrad), on the
 * pure-JavaScript CPU backend (`tf.setBackend('cpu')`; no tfjs-node, no WASM).
 *
 * Per step the timed region does what the trainer would do each step: the teacher's
 * log-softmax (a constant for autograd), the loss, its gradient w.r.t. the student
 * logits, and reading both back (dataSync). The student and teacher tensors are made
 * once outside the timed region (the trainer already holds them as tf tensors).
 * Same semantics as the library at its defaults: temperature 1, 'batchmean'.
 * Prod mode is on (`tf.enableProdMode()`): it skips debug checks, as a tuned trainer would.
 */
import type * as TF from '@tensorflow/tfjs';

export type Tf = typeof TF;

let loaded: Promise<Tf | string> | undefined;

/** Loads tfjs on its CPU backend once; resolves to the module, or to why it can't be used. */
export function loadTfjs(): Promise<Tf | string> {
  loaded ??= (async () => {
    try {
      const tf = (await import('@tensorflow/tfjs')) as Tf;
      tf.enableProdMode();
      if (!(await tf.setBackend('cpu'))) return 'tfjs: the cpu backend failed to initialise';
      await tf.ready();
      return tf;
    } catch (e) {
      return `tfjs could not be loaded: ${e instanceof Error ? e.message : String(e)}`;
    }
  })();
  return loaded;
}

export function tfjsVersion(tf: Tf): string {
  return tf.version.tfjs;
}

export interface TfjsInputs {
  s: Float32Array;
  t: Float32Array;
  N: number;
  V: number;
  labels?: Int32Array;
}

export interface TfjsCase {
  /** One training step's worth: loss and gradient, read back. Returns the loss. */
  run(): number;
  /** The gradient of the last run (f32 [N·V]). */
  lastGrad(): Float32Array;
  dispose(): void;
}

type LossFn = (tf: Tf, z: TF.Tensor2D, lp: TF.Tensor2D, x: { N: number; V: number; onehot?: TF.Tensor2D }) => TF.Scalar;

const BETA = 0.5;
const SKEW = 0.1;

/** Per-op losses over the whole batch, 'batchmean'. lp is the teacher's log-softmax. */
export const TFJS_LOSSES: Record<string, LossFn> = {
  'forward-kl': (tf, z, lp, { N }) => tf.sum(tf.mul(tf.exp(lp), tf.sub(lp, tf.logSoftmax(z)))).div(N),
  'reverse-kl': (tf, z, lp, { N }) => {
    const lq = tf.logSoftmax(z);
    return tf.sum(tf.mul(tf.exp(lq), tf.sub(lq, lp))).div(N);
  },
  jsd: (tf, z, lp, { N }) => {
    const lq = tf.logSoftmax(z);
    const p = tf.exp(lp);
    const q = tf.exp(lq);
    const lm = tf.log(tf.add(tf.mul(p, BETA), tf.mul(q, 1 - BETA)));
    const kpm = tf.sum(tf.mul(p, tf.sub(lp, lm)));
    const kqm = tf.sum(tf.mul(q, tf.sub(lq, lm)));
    return tf.add(tf.mul(kpm, BETA), tf.mul(kqm, 1 - BETA)).div(N);
  },
  tvd: (tf, z, lp, { N }) => tf.sum(tf.abs(tf.sub(tf.exp(lp), tf.softmax(z)))).mul(0.5 / N),
  'skew-kl': (tf, z, lp, { N }) => {
    const p = tf.exp(lp);
    const r = tf.add(tf.mul(p, SKEW), tf.mul(tf.softmax(z), 1 - SKEW));
    return tf.sum(tf.mul(p, tf.sub(lp, tf.log(r)))).div(N);
  },
  'distillation-loss': (tf, z, lp, { N, onehot }) => {
    const lq = tf.logSoftmax(z);
    const ce = tf.neg(tf.sum(tf.mul(onehot!, lq)));
    const kl = tf.sum(tf.mul(tf.exp(lp), tf.sub(lp, lq)));
    return tf.add(tf.mul(ce, 0.5), tf.mul(kl, 0.5)).div(N);
  },
};

/** Builds a tfjs case for `op` over the given data (copied into tfjs tensors once). */
export function makeTfjsCase(tf: Tf, op: string, x: TfjsInputs): TfjsCase {
  const fn = TFJS_LOSSES[op];
  if (!fn) throw new Error(`tfjs: no contender for ${op}`);
  const z = tf.tensor2d(x.s.subarray(0, x.N * x.V), [x.N, x.V], 'float32');
  const t = tf.tensor2d(x.t.subarray(0, x.N * x.V), [x.N, x.V], 'float32');
  const labels = x.labels ? tf.tensor1d(x.labels.subarray(0, x.N), 'int32') : undefined;
  let grad: Float32Array = new Float32Array(0);
  return {
    run() {
      const { value, grads } = tf.tidy(() => {
        const lp = tf.logSoftmax(t) as TF.Tensor2D;
        const onehot = labels ? (tf.oneHot(labels, x.V).toFloat() as TF.Tensor2D) : undefined;
        const f = (zz: TF.Tensor2D) => fn(tf, zz, lp, { N: x.N, V: x.V, onehot });
        const r = tf.valueAndGrad(f)(z);
        return { value: r.value, grads: r.grad };
      });
      grad = grads.dataSync() as Float32Array;
      const loss = value.dataSync()[0]!;
      value.dispose();
      grads.dispose();
      return loss;
    },
    lastGrad: () => grad,
    dispose() {
      z.dispose();
      t.dispose();
      labels?.dispose();
    },
  };
}
