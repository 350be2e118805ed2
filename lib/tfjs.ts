/**
 * kd-kernels/tfjs: the library's losses as TensorFlow.js ops.
 *
 * ```ts
 * import * as tf from '@tensorflow/tfjs';
 * import { kdLoss } from 'kd-kernels/tfjs';
 *
 * optimizer.minimize(() => {
 *   const logits = model.apply(x) as tf.Tensor3D;               // [B, T, V]
 *   return kdLoss(logits, teacherLogits, { divergence: 'jsd', labels, hardWeight: 0.5, softWeight: 0.5 });
 * });
 * ```
 *
 * `kdLoss` and `sparseKdLoss` return a `tf.Scalar` whose gradient with respect to the
 * student logits is the library's fused gradient, through `tf.customGrad`; they work
 * under `optimizer.minimize`, `tf.grad(s)` and `tf.variableGrads`, and compose with
 * other tf ops (the upstream gradient `dy` becomes the kernel's `gradScale`).
 *
 * Data path: the logits are read with `dataSync()` (on the CPU backend, a zero-copy
 * view of tf's own buffer; it is only read) and passed to the CPU kernels as `f32`
 * tensors. On tf's CPU backend the kernel writes the gradient into a buffer the adapter
 * reuses from step to step, and tf gets a tensor over that buffer without a copy; a
 * buffer is written again only after tf has released it (the gradient was disposed), so
 * a step costs the kernel plus a small constant. Other tf backends work too, at the
 * price of a download, a fresh gradient and an upload per call. On tfjs-backend-webgpu
 * ('webgpu') the logits never leave the GPU: see lib/tfjs_webgpu.ts.
 *
 * - The teacher is a constant (no gradient flows to it: a stop-gradient, as in every
 *   KD recipe). It is read when the loss is computed, so it may be disposed right after.
 * - While a gradient tape is recording (inside minimize / grad / variableGrads), the
 *   forward pass computes loss and gradient in one fused kernel call and keeps the
 *   gradient as a plain Float32Array (no tf tensor) until the backward pass. The
 *   backward hands it over as is when dy = 1 (a loss that is optimised directly), and
 *   otherwise reruns the kernel with gradScale = dy (e.g. `tf.mul(0.3, kdLoss(...))`).
 *   Outside a tape only the loss is computed.
 * - No tensor is left behind: `tf.memory().numTensors` is the same after each step.
 *
 * This module imports '@tensorflow/tfjs' (an optional peer dependency); the main
 * 'kd-kernels' entry point does not.
 */
import * as tf from '@tensorflow/tfjs';
import type { DivergenceName, Reduction } from './divergence.js';
import { KdError, KdRangeError, KdTypeError, describe } from './errors.js';
import {
  isTensor, sparseKlDiv, tensor,
  type SparseTail, type SparseTeacher, type Tensor,
} from './index.js';
import { checkNullTeacher, kdLossCall, planKdLoss, planSparseKdLoss, sparseCommon } from './tfjs_options.js';
import { kdLossWebGPU, onTfWebGPU, sparseKdLossWebGPU } from './tfjs_webgpu.js'; // webgpu backend: lib/tfjs_webgpu.ts

/** A per-token side input: a tf tensor or the typed array the library takes. */
export type TfLabels = tf.Tensor | Int32Array;
export type TfMask = tf.Tensor | Uint8Array;
export type TfWeights = tf.Tensor | Float32Array;

/** Options of the dense losses (see kd-kernels' LossOptions for the shared ones). */
export interface KdLossOptions {
  /** The divergence D(p, q) (default 'forward-kl'). */
  divergence?: DivergenceName;
  /** jsd's β (default 0.5). */
  beta?: number;
  /** The skew KLs' λ (default 0.1). */
  skew?: number;
  /** Softmax temperature of student and teacher (default 1). */
  temperature?: number;
  /** Multiply the divergence by T² (default true). */
  scaleByTemperatureSquared?: boolean;
  /** What the teacher holds (default 'logits'). */
  teacher?: 'logits' | 'logprobs';
  /** [N] or [B, T] int32 token labels (CE targets and token selection). */
  labels?: TfLabels;
  /** Labels equal to this are ignored (default −100). */
  ignoreIndex?: number;
  /** [N] or [B, T]: 0 excludes a token (bool, int32 or Uint8Array). */
  mask?: TfMask;
  /** [N] or [B, T] float32 per-token weights. */
  weights?: TfWeights;
  /** 'batchmean' (default), 'sum' or 'mean' ('none' has no scalar; use the library directly). */
  reduction?: Exclude<Reduction, 'none'>;
  /** Replaces the divisor of the reduction (TRL's num_items_in_batch). */
  normalizer?: number;
  /**
   * Any of hardWeight / softWeight / labelSmoothing makes the loss kd.distillationLoss:
   * hardWeight · CE(student, labels) + softWeight · D, fused (labels required; the
   * weights default to 0.5 each, as there). softWeight 0 is plain cross-entropy, and
   * then the teacher may be null.
   */
  hardWeight?: number;
  softWeight?: number;
  labelSmoothing?: number;
}


/** Options of sparseKdLoss: those of kd.sparseKlDiv that make sense for a tf scalar. */
export interface SparseKdLossOptions {
  /** Required: 'renormalize' | 'bucket' | 'conditional' | 'sampled' (see kd.sparseKlDiv). */
  tail: SparseTail;
  temperature?: number;
  scaleByTemperatureSquared?: boolean;
  labels?: TfLabels;
  ignoreIndex?: number;
  mask?: TfMask;
  weights?: TfWeights;
  reduction?: Exclude<Reduction, 'none'>;
  normalizer?: number;
  /** Check the teacher ids (default true; see kd.sparseKlDiv). */
  checkIds?: boolean;
}


/**
 * A sparse teacher whose slots are kd tensors (what topk, sampleTeacher and
 * SparseLogitsReader.read return) or tf tensors.
 */
export interface TfSparseTeacher {
  indices: Tensor | tf.Tensor;
  values?: Tensor | tf.Tensor;
  tailLogProb?: Tensor | tf.Tensor;
  weights?: Tensor | tf.Tensor;
}

// ---------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------

/**
 * A kd CPU tensor over a tf tensor's data (float32 → f32, int32 → i32, bool → u8).
 * On tf's CPU backend this is a zero-copy view of tf's buffer: read it, never write it.
 */
export function fromTf(x: tf.Tensor): Tensor {
  if (!(x instanceof tf.Tensor)) throw new KdTypeError(`fromTf: expected a tf.Tensor but received ${describe(x)}`);
  if (x.isDisposed) throw new KdError('fromTf: the tf.Tensor was disposed', 'KD_EDISPOSED');
  const data = x.dataSync();
  if (x.dtype === 'float32' || x.dtype === 'int32') return tensor(data as Float32Array | Int32Array, x.shape.slice());
  if (x.dtype === 'bool') return tensor(data instanceof Uint8Array ? data : Uint8Array.from(data as ArrayLike<number>), x.shape.slice());
  throw new KdTypeError(`fromTf: expected a float32, int32 or bool tf.Tensor but received dtype ${x.dtype}`, 'KD_EDTYPE');
}

/** A tf tensor holding a copy of a kd tensor's values (f16/bf16/u8 → float32 or as noted). */
export function toTf(x: Tensor): tf.Tensor {
  if (!isTensor(x)) throw new KdTypeError(`toTf: expected a kd Tensor but received ${describe(x)}`);
  const shape = x.shape.slice();
  if (x.dtype === 'i32') {
    const a = x.toArray() as Int32Array;
    return tf.tensor(x.isContiguous ? a.slice(0, x.numel) : Int32Array.from(x.toFloat32Array()), shape, 'int32');
  }
  return tf.tensor(x.toFloat32Array().slice(), shape, 'float32');
}

function studentData(op: string, x: unknown): { data: Float32Array; shape: number[] } {
  if (!(x instanceof tf.Tensor)) throw new KdTypeError(`${op}: expected a tf.Tensor for studentLogits but received ${describe(x)}`);
  if (x.isDisposed) throw new KdError(`${op}: studentLogits was disposed`, 'KD_EDISPOSED');
  if (x.dtype !== 'float32') throw new KdTypeError(`${op}: expected float32 studentLogits but received ${x.dtype}`, 'KD_EDTYPE');
  if (x.rank !== 2 && x.rank !== 3)
    throw new KdRangeError(`${op}: expected studentLogits of shape [N, V] or [B, T, V] but received [${x.shape.join(', ')}]`, 'KD_ESHAPE');
  return { data: x.dataSync() as Float32Array, shape: x.shape.slice() };
}

function side(op: string, name: string, x: unknown, kind: 'i32' | 'u8' | 'f32'): Int32Array | Uint8Array | Float32Array | undefined {
  if (x === undefined) return undefined;
  if (x instanceof tf.Tensor) {
    if (x.isDisposed) throw new KdError(`${op}: ${name} was disposed`, 'KD_EDISPOSED');
    const ok = kind === 'i32' ? x.dtype === 'int32' : kind === 'f32' ? x.dtype === 'float32' : x.dtype === 'bool' || x.dtype === 'int32';
    if (!ok) {
      const want = kind === 'i32' ? 'int32' : kind === 'f32' ? 'float32' : 'bool or int32';
      throw new KdTypeError(`${op}: expected a ${want} tf.Tensor for ${name} but received dtype ${x.dtype}`, 'KD_EDTYPE');
    }
    const d = x.dataSync();
    if (kind === 'u8') return d instanceof Uint8Array ? d : Uint8Array.from(d as Int32Array, (v) => (v !== 0 ? 1 : 0));
    return d as Int32Array | Float32Array;
  }
  // Typed arrays go to the library as they are (it checks their type and length).
  return x as Int32Array | Uint8Array | Float32Array;
}

function sparseSlot(op: string, name: string, x: unknown): Tensor | undefined {
  if (x === undefined) return undefined;
  if (x instanceof tf.Tensor) return fromTf(x);
  if (isTensor(x)) return x;
  throw new KdTypeError(`${op}: expected a kd Tensor or tf.Tensor for sparseTeacher.${name} but received ${describe(x)}`);
}

// ---------------------------------------------------------------------------------
// The custom gradient
// ---------------------------------------------------------------------------------

type Run = (grad: boolean | Tensor, gradScale: number) => { loss: Tensor; grad?: Tensor };

/** True while a gradient tape records (inside minimize / grad / variableGrads). */
function taping(): boolean {
  const state = (tf.engine() as unknown as { state?: { gradientDepth?: number } }).state;
  // Unknown engine internals: assume a tape (costs one gradient pass, never a wrong result).
  return state?.gradientDepth === undefined ? true : state.gradientDepth > 0;
}

// Gradient buffers, reused across steps. The backward pass hands tf a tensor over one of
// these arrays (no copy: tf's CPU backend keeps the array it is given). The array is
// written again only once tf has let go of it: its dataId is gone from the backend's
// storage (the user disposed the gradient, or tf's tape did). Until the backward pass
// has run, a buffer is busy (a tape may hold several kdLoss calls).
interface GradBuffer {
  data: Float32Array;
  /** The dataId of the tf tensor over `data`, while tf may hold it. */
  dataId?: object;
  busy: boolean;
}
/** Buffers kept for reuse: enough for a few losses per step, per shape. */
const MAX_GRAD_BUFFERS = 8;
const gradBuffers: GradBuffer[] = [];

/** Whether tf's backend still stores `dataId` (undefined: internals unknown). */
function backendHolds(dataId: object): boolean | undefined {
  const b = tf.backend() as unknown as { data?: { has?: (id: object) => boolean } };
  return typeof b.data?.has === 'function' ? b.data.has(dataId) : undefined;
}

/**
 * A gradient buffer of n floats tf does not hold, or undefined when it can't be known
 * (a backend other than 'cpu', whose storage we don't read): then the kernel writes a
 * fresh array, as without reuse.
 */
function takeGradBuffer(n: number): GradBuffer | undefined {
  if (tf.getBackend() !== 'cpu') return undefined;
  for (const g of gradBuffers) {
    if (g.busy || g.data.length !== n) continue;
    if (g.dataId !== undefined) {
      if (backendHolds(g.dataId) !== false) continue;
      g.dataId = undefined;
    }
    g.busy = true;
    return g;
  }
  const g: GradBuffer = { data: new Float32Array(n), busy: true };
  gradBuffers.push(g);
  if (gradBuffers.length > MAX_GRAD_BUFFERS) {
    // forget the oldest other buffer (whoever holds it keeps it alive; it is just not reused)
    gradBuffers.splice(gradBuffers.findIndex((x) => x !== g), 1);
  }
  return g;
}

function fused(student: tf.Tensor, run: Run): tf.Scalar {
  const shape = student.shape;
  const tape = taping();
  const buf = tape ? takeGradBuffer(student.size) : undefined;
  const into = (): boolean | Tensor => (buf ? tensor(buf.data, shape.slice()) : true);
  // The first kernel call happens here, outside tf's machinery: argument errors are
  // thrown to the caller before anything is recorded on the tape.
  let first: { loss: Tensor; grad?: Tensor };
  try {
    first = run(tape ? into() : false, 1);
  } catch (e) {
    if (buf) buf.busy = false;
    throw e;
  }
  const value = first.loss.item();
  first.loss.dispose();
  // Without a buffer (not the CPU backend) the gradient is a kd output: tf keeps its
  // array, so it is never disposed (that would detach it); GC frees it with tf's tensor.
  let cached = first.grad ? (first.grad.toArray() as Float32Array) : undefined;
  const f = tf.customGrad(() => ({
    value: tf.scalar(value),
    gradFunc: (dy: tf.Tensor) => {
      const scale = dy.dataSync()[0]!;
      let g: Float32Array;
      if (cached && scale === 1) {
        g = cached;
      } else {
        const r = run(into(), scale);
        g = r.grad!.toArray() as Float32Array;
        r.loss.dispose();
      }
      cached = undefined; // tf holds the array from here on: hand it over once
      const out = tf.tensor(g, shape, 'float32');
      if (buf && g === buf.data) {
        buf.dataId = out.dataId;
        buf.busy = false;
      }
      return out;
    },
  }));
  return f(student) as tf.Scalar;
}

/** @internal Tests: the adapter's gradient buffers (reuse across steps). */
export function _gradBufferCount(): number {
  return gradBuffers.length;
}

// ---------------------------------------------------------------------------------
// Public ops
// ---------------------------------------------------------------------------------

/**
 * A KD loss of student logits ([N, V] or [B, T, V], float32) against teacher logits
 * (a tf.Tensor or a kd Tensor with as many rows and V_teacher ≥ V; or null for plain
 * cross-entropy), as a tf.Scalar whose gradient is the library's fused gradient.
 *
 * - `{ divergence }` alone: that divergence (klDiv / jsd / tvd / skewKl).
 * - with hardWeight / softWeight / labelSmoothing: distillationLoss (CE + divergence).
 */
export function kdLoss(studentLogits: tf.Tensor, teacherLogits: tf.Tensor | Tensor | null, options?: KdLossOptions): tf.Scalar {
  if (onTfWebGPU()) return kdLossWebGPU(studentLogits, teacherLogits, options); // on tf's GPUDevice, no download
  const op = 'kdLoss';
  const plan = planKdLoss(op, options);
  const s = studentData(op, studentLogits);
  const student = (): Tensor => tensor(s.data, s.shape);
  let teacher: () => Tensor;
  checkNullTeacher(op, plan, teacherLogits);
  if (teacherLogits === null) {
    teacher = student; // not read by the kernel when softWeight is 0
  } else if (teacherLogits instanceof tf.Tensor) {
    if (teacherLogits.isDisposed) throw new KdError(`${op}: teacherLogits was disposed`, 'KD_EDISPOSED');
    if (teacherLogits.dtype !== 'float32') throw new KdTypeError(`${op}: expected float32 teacherLogits but received ${teacherLogits.dtype}`, 'KD_EDTYPE');
    const t = { data: teacherLogits.dataSync() as Float32Array, shape: teacherLogits.shape.slice() };
    teacher = () => tensor(t.data, t.shape);
  } else if (isTensor(teacherLogits)) {
    teacher = () => teacherLogits;
  } else {
    throw new KdTypeError(`${op}: expected a tf.Tensor, a kd Tensor or null for teacherLogits but received ${describe(teacherLogits)}`);
  }
  const o = plan.o;
  const labels = side(op, 'labels', o.labels, 'i32') as Int32Array | undefined;
  const mask = side(op, 'mask', o.mask, 'u8') as Uint8Array | undefined;
  const weights = side(op, 'weights', o.weights, 'f32') as Float32Array | undefined;
  const call = kdLossCall(op, plan, student, teacher, { labels, mask, weights });
  const run: Run = (grad, gradScale) => call({ grad, gradScale });
  return fused(studentLogits, run);
}

/**
 * Sparse KD (kd.sparseKlDiv) of student logits against k teacher slots per token
 * (top-k or sampled, e.g. read back from a SparseLogitsReader), as a tf.Scalar with
 * the fused gradient.
 */
export function sparseKdLoss(studentLogits: tf.Tensor, sparseTeacher: TfSparseTeacher | SparseTeacher, options: SparseKdLossOptions): tf.Scalar {
  if (onTfWebGPU()) return sparseKdLossWebGPU(studentLogits, sparseTeacher, options); // on tf's GPUDevice, no download
  const op = 'sparseKdLoss';
  const o = planSparseKdLoss(op, options);
  const s = studentData(op, studentLogits);
  if (sparseTeacher === null || typeof sparseTeacher !== 'object' || sparseTeacher instanceof tf.Tensor || isTensor(sparseTeacher))
    throw new KdTypeError(`${op}: expected a sparse teacher { indices, values?, tailLogProb?, weights? } but received ${describe(sparseTeacher)}`);
  const st = sparseTeacher as unknown as Record<string, unknown>;
  const teacher: Record<string, Tensor> = {};
  for (const key of Object.keys(st)) {
    const t = sparseSlot(op, key, st[key]);
    if (t) teacher[key] = t;
  }
  const common = sparseCommon(o, { labels: side(op, 'labels', o.labels, 'i32'), mask: side(op, 'mask', o.mask, 'u8'), weights: side(op, 'weights', o.weights, 'f32') });
  const run: Run = (grad, gradScale) =>
    sparseKlDiv(tensor(s.data, s.shape), teacher as unknown as SparseTeacher, { ...(common as unknown as { tail: SparseTail }), grad, gradScale });
  return fused(studentLogits, run);
}
