/**
 * A tiny decoder-only transformer in raw tfjs ops: pre-LayerNorm blocks with causal
 * multi-head attention and a ReLU MLP, no biases, LayerNorm without affine parameters
 * (a gain in front of a linear map is redundant with it). Positions: learned absolute
 * embeddings plus a learned relative-position bias per head and offset in every
 * attention layer (T5-style), which lets one attention pattern serve every answer
 * digit (data.ts writes numbers so that the digits an answer digit needs sit at fixed
 * offsets from it).
 * Weights are initialised from our own seeded generator, so a run is bit-reproducible
 * on the tfjs CPU backend. Teacher and students are this code at two sizes.
 *
 * Written for the speed of tfjs's pure-JS CPU backend, which matters here (every
 * method trains a model):
 * - Activations are feature-major, [d, N] with N = B·T tokens as columns: LayerNorm
 *   then reduces over axis 0 and broadcasts over trailing dims, the only broadcast
 *   with a fast path on that backend (a keepDims [N, 1] operand costs a per-element
 *   index computation), and W·X matmuls run ~2x faster than X·W there.
 * - The matmuls are tfjs ops; three small element-wise pieces are custom ops
 *   (tf.customGrad) with forward and backward as plain JS loops, each several times
 *   faster than the chain of tfjs kernels it replaces: the embedding (the backend's
 *   gradient of tf.gather, UnsortedSegmentSum, is O(V·N·d)), LayerNorm, and the
 *   causal softmax of the attention (tf.softmax and tf.mean's gradient broadcast over
 *   a leading axis, which takes a per-element index computation on that backend).
 */
import * as tf from '@tensorflow/tfjs';
import { Rng, VOCAB, type Layout } from './data.js';

export interface ModelConfig {
  dModel: number;
  nLayers: number;
  nHeads: number;
  dFF: number;
}

interface Block {
  /** Query, key and value projections stacked: [3d, d]. */
  wqkv: tf.Variable;
  wo: tf.Variable;
  w1: tf.Variable;
  w2: tf.Variable;
  /** Attention bias per head and query−key offset: [H, T]. */
  rel: tf.Variable;
}

export class Transformer {
  /** Token embeddings [d, V], positions [d, T] and digit significance [d, digits + 3]. */
  readonly tokEmb: tf.Variable;
  readonly posEmb: tf.Variable;
  readonly sigEmb: tf.Variable;
  /** Per input position: the significance of the digit there (see significance()). */
  readonly sig: Int32Array;
  readonly blocks: Block[] = [];
  /** Output layer [V, d]. */
  readonly wout: tf.Variable;
  readonly variables: tf.Variable[] = [];

  constructor(readonly cfg: ModelConfig, readonly L: Layout, seed: number, readonly name = 'model') {
    const rng = new Rng(seed);
    const d = cfg.dModel;
    if (d % cfg.nHeads !== 0) throw new Error(`dModel ${d} is not a multiple of nHeads ${cfg.nHeads}`);
    let k = 0;
    const T = L.inputLen;
    const v = (shape: number[], std: number): tf.Variable => {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = std * rng.normal();
      const init = tf.tensor(data, shape);
      const x = tf.variable(init, true, `${name}/${k++}`);
      init.dispose();
      this.variables.push(x);
      return x;
    };
    // Weights [out, in] ~ N(0, 1/in); residual outputs scaled down by sqrt(2·layers).
    const fan = (n: number) => 1 / Math.sqrt(n);
    const resid = 1 / Math.sqrt(2 * cfg.nLayers);
    this.tokEmb = v([d, VOCAB], 1);
    this.posEmb = v([d, T], 1);
    this.sig = significance(L);
    this.sigEmb = v([d, L.digits + 3], 1);
    for (let l = 0; l < cfg.nLayers; l++) {
      this.blocks.push({
        wqkv: v([3 * d, d], fan(d)),
        wo: v([d, d], fan(d) * resid),
        w1: v([cfg.dFF, d], fan(d)),
        w2: v([d, cfg.dFF], fan(cfg.dFF) * resid),
        rel: v([cfg.nHeads, T], 0),
      });
    }
    this.wout = v([VOCAB, d], fan(d));
  }

  get parameterCount(): number {
    return this.variables.reduce((a, x) => a + x.size, 0);
  }

  /**
   * Logits for the answer tokens, [B, answerLen, V], from inputs [B, inputLen] (the
   * sequence without its last token): position firstPred + j predicts answer token j.
   */
  forward(tokens: Int32Array, B: number): tf.Tensor3D {
    return tf.tidy(() => {
      const T = this.L.inputLen;
      const N = B * T;
      const { dModel: d, nHeads: H } = this.cfg;
      const dh = d / H;
      let x = embed(tokens, B, T, this.tokEmb, this.posEmb, this.sigEmb, this.sig); // [d, N]
      for (const blk of this.blocks) {
        const h = layerNorm(x);
        // [3d, N] → [3, H, dh, B, T] → [3, B, H, T, dh]: q, k, v per (example, head).
        const qkv = tf.transpose(tf.reshape(tf.matMul(blk.wqkv as tf.Tensor2D, h), [3, H, dh, B, T]), [0, 3, 1, 4, 2]);
        const [q, k, vv] = tf.unstack(tf.reshape(qkv, [3, B * H, T, dh])) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
        const att = causalSoftmax(tf.matMul(q, k, false, true), 1 / Math.sqrt(dh), blk.rel); // [B·H, T, T]
        const o = tf.reshape(tf.transpose(tf.reshape(tf.matMul(att, vv), [B, H, T, dh]), [1, 3, 0, 2]), [d, N]) as tf.Tensor2D;
        x = tf.add(x, tf.matMul(blk.wo as tf.Tensor2D, o));
        const h2 = layerNorm(x);
        x = tf.add(x, tf.matMul(blk.w2 as tf.Tensor2D, tf.relu(tf.matMul(blk.w1 as tf.Tensor2D, h2))));
      }
      const A = this.L.answerLen;
      const xa = tf.reshape(tf.slice(tf.reshape(x, [d, B, T]), [0, 0, this.L.firstPred], [d, B, A]), [d, B * A]) as tf.Tensor2D;
      const logits = tf.matMul(this.wout as tf.Tensor2D, layerNorm(xa)); // [V, B·A]
      return tf.reshape(tf.transpose(logits), [B, A, VOCAB]) as tf.Tensor3D;
    });
  }

  /** Logits [B, answerLen, V] as a Float32Array, outside any gradient tape. */
  logitsOf(tokens: Int32Array, B: number): Float32Array {
    return tf.tidy(() => this.forward(tokens, B).dataSync() as Float32Array);
  }

  /**
   * Generates the answers of the prompts in `seqs` ([B, seqLen]; the answer slots are
   * overwritten in a copy) digit by digit: greedy, or sampled from
   * softmax(logits / temperature) with `rng`. Returns the completed sequences.
   */
  generate(seqs: Int32Array, B: number, opts: { temperature?: number; rng?: Rng } = {}): Int32Array {
    const { seqLen, inputLen, promptLen, answerLen: A } = this.L;
    const out = seqs.slice(0, B * seqLen);
    for (let i = 0; i < B; i++) out.fill(0, i * seqLen + promptLen, (i + 1) * seqLen);
    const input = new Int32Array(B * inputLen);
    const temp = opts.temperature ?? 0;
    for (let j = 0; j < A; j++) {
      for (let i = 0; i < B; i++) input.set(out.subarray(i * seqLen, i * seqLen + inputLen), i * inputLen);
      const logits = this.logitsOf(input, B);
      for (let i = 0; i < B; i++) {
        const row = logits.subarray((i * A + j) * VOCAB, (i * A + j + 1) * VOCAB);
        out[i * seqLen + promptLen + j] = temp > 0 ? sample(row, temp, opts.rng!) : argmax(row);
      }
    }
    return out;
  }

  dispose(): void {
    for (const v of this.variables) v.dispose();
  }
}

/** LayerNorm over the features (axis 0) of [d, N], no affine parameters. */
function layerNorm(x: tf.Tensor2D): tf.Tensor2D {
  const [d, N] = x.shape;
  // The inputs are read from the closure (customGrad passes them too, typed loosely).
  const f = tf.customGrad(() => {
    const xv = x.dataSync() as Float32Array;
    const y = new Float32Array(d * N);
    const rstd = new Float32Array(N);
    const mean = new Float64Array(N);
    const sq = new Float64Array(N);
    for (let c = 0; c < d; c++) for (let n = 0; n < N; n++) mean[n]! += xv[c * N + n]!;
    for (let n = 0; n < N; n++) mean[n]! /= d;
    for (let c = 0; c < d; c++)
      for (let n = 0; n < N; n++) {
        const u = xv[c * N + n]! - mean[n]!;
        sq[n]! += u * u;
      }
    for (let n = 0; n < N; n++) rstd[n] = 1 / Math.sqrt(sq[n]! / d + 1e-5);
    for (let c = 0; c < d; c++) for (let n = 0; n < N; n++) y[c * N + n] = (xv[c * N + n]! - mean[n]!) * rstd[n]!;
    return {
      value: tf.tensor2d(y, [d, N]),
      gradFunc: (dy: tf.Tensor) => {
        // dx = rstd · (dy − mean(dy) − y · mean(dy · y)), per column.
        const g = dy.dataSync() as Float32Array;
        const mg = new Float64Array(N);
        const mgy = new Float64Array(N);
        for (let c = 0; c < d; c++)
          for (let n = 0; n < N; n++) {
            mg[n]! += g[c * N + n]!;
            mgy[n]! += g[c * N + n]! * y[c * N + n]!;
          }
        const dx = new Float32Array(d * N);
        for (let c = 0; c < d; c++)
          for (let n = 0; n < N; n++) dx[c * N + n] = rstd[n]! * (g[c * N + n]! - mg[n]! / d - (y[c * N + n]! * mgy[n]!) / d);
        return tf.tensor2d(dx, [d, N]);
      },
    };
  });
  return f(x) as tf.Tensor2D;
}

/**
 * softmax(scale · s_ij + rel[h, i − j]) over the last axis of [B·H, T, T] with causal
 * masking (j > i gets 0); rows are (example, head, query i).
 */
function causalSoftmax(s: tf.Tensor3D, scale: number, rel: tf.Variable): tf.Tensor3D {
  const [M, T] = s.shape;
  const H = rel.shape[0]!;
  const f = tf.customGrad(() => {
    const sv = s.dataSync() as Float32Array;
    const rv = rel.dataSync() as Float32Array;
    const y = new Float32Array(M * T * T);
    for (let r = 0; r < M * T; r++) {
      const i = r % T;
      const rb = (Math.floor(r / T) % H) * T + i; // rel[h, i − j] = rv[rb − j]
      const o = r * T;
      let m = -Infinity;
      for (let j = 0; j <= i; j++) m = Math.max(m, (y[o + j] = scale * sv[o + j]! + rv[rb - j]!));
      let z = 0;
      for (let j = 0; j <= i; j++) z += y[o + j] = Math.exp(y[o + j]! - m);
      for (let j = 0; j <= i; j++) y[o + j]! /= z;
    }
    return {
      value: tf.tensor3d(y, [M, T, T]),
      gradFunc: (dy: tf.Tensor) => {
        // d(logit) = y ⊙ (dy − Σ_j y_j dy_j) per row; ds = scale · d(logit), drel sums it per (h, i − j).
        const g = dy.dataSync() as Float32Array;
        const ds = new Float32Array(M * T * T);
        const dr = new Float32Array(H * T);
        for (let r = 0; r < M * T; r++) {
          const i = r % T;
          const rb = (Math.floor(r / T) % H) * T + i;
          const o = r * T;
          let dot = 0;
          for (let j = 0; j <= i; j++) dot += y[o + j]! * g[o + j]!;
          for (let j = 0; j <= i; j++) {
            const dl = y[o + j]! * (g[o + j]! - dot);
            ds[o + j] = scale * dl;
            dr[rb - j] += dl;
          }
        }
        return [tf.tensor3d(ds, [M, T, T]), tf.tensor2d(dr, [H, T])];
      },
    };
  });
  return f(s, rel) as tf.Tensor3D;
}

/**
 * The significance of the digit at each input position, shared by both operands and
 * the answer ("abacus" embeddings, McLeish et al., 2024): a_j and b_j get j, the answer
 * digit c_j (an input from the next position on) gets j; '+'/'−' get digits + 1 and
 * '=' digits + 2. Digits that must be combined thus share an embedding, and finding
 * them is a content match instead of a position lookup to be learned per digit.
 */
export function significance(L: Layout): Int32Array {
  const D = L.digits;
  const sig = new Int32Array(L.inputLen);
  for (let t = 0; t < L.inputLen; t++) {
    if (t < D) sig[t] = t;
    else if (t === D) sig[t] = D + 1;
    else if (t <= 2 * D) sig[t] = t - D - 1;
    else if (t === 2 * D + 1) sig[t] = D + 2;
    else sig[t] = t - L.promptLen;
  }
  return sig;
}

/**
 * x[:, n] = E[:, token n] + P[:, n mod T] + S[:, sig[n mod T]] as [d, N], with the
 * gradient computed by scatter-adding dy's columns in JS.
 */
function embed(tokens: Int32Array, B: number, T: number, E: tf.Variable, P: tf.Variable, S: tf.Variable, sig: Int32Array): tf.Tensor2D {
  const [d, V] = E.shape as [number, number];
  const nS = S.shape[1]!;
  const N = B * T;
  const f = tf.customGrad(() => {
    const ev = E.dataSync();
    const pv = P.dataSync();
    const sv = S.dataSync();
    const out = new Float32Array(d * N);
    for (let c = 0; c < d; c++) {
      const o = c * N;
      for (let n = 0; n < N; n++) {
        const t = n % T;
        out[o + n] = ev[c * V + tokens[n]!]! + pv[c * T + t]! + sv[c * nS + sig[t]!]!;
      }
    }
    return {
      value: tf.tensor2d(out, [d, N]),
      gradFunc: (dy: tf.Tensor) => {
        const g = dy.dataSync();
        const de = new Float32Array(d * V);
        const dp = new Float32Array(d * T);
        const ds = new Float32Array(d * nS);
        for (let c = 0; c < d; c++) {
          const o = c * N;
          for (let n = 0; n < N; n++) {
            const t = n % T;
            de[c * V + tokens[n]!] += g[o + n]!;
            dp[c * T + t] += g[o + n]!;
            ds[c * nS + sig[t]!] += g[o + n]!;
          }
        }
        return [tf.tensor2d(de, [d, V]), tf.tensor2d(dp, [d, T]), tf.tensor2d(ds, [d, nS])];
      },
    };
  });
  return f(E, P, S) as tf.Tensor2D;
}

export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let j = 1; j < row.length; j++) if (row[j]! > row[best]!) best = j;
  return best;
}

export function sample(row: ArrayLike<number>, temperature: number, rng: Rng): number {
  let m = -Infinity;
  for (let j = 0; j < row.length; j++) m = Math.max(m, row[j]!);
  let z = 0;
  const p = new Float64Array(row.length);
  for (let j = 0; j < row.length; j++) z += p[j] = Math.exp((row[j]! - m) / temperature);
  let u = rng.next() * z;
  for (let j = 0; j < row.length; j++) if ((u -= p[j]!) < 0) return j;
  return row.length - 1;
}
