/**
 * sparseKlDiv: knowledge distillation against a sparse teacher, i.e. k teacher ids per
 * token (a top-k store from `topk(..., { output: 'logprobs' })`, or sampled ids from
 * `sampleTeacher`), with the student's full-vocabulary softmax q = softmax(z/T). Loss and
 * dLoss/dz in one pass over the student logits. Tail modes (what happens to the teacher
 * mass outside the ids):
 *
 * - 'renormalize' (DistillKit): the teacher renormalised over its k ids, p̃;
 *   L = Σ p̃ (log p̃ − log q_id), dL/dz = (q − P̃)/T. Biased: the gradient pushes the
 *   student's mass onto the ids.
 * - 'bucket' (TRL): one extra class for the tail; L = Σ p log(p/q_id) + p_t log(p_t/q_t),
 *   p_t = e^tailLogProb, q_t = the student's mass outside the ids (summed directly).
 * - 'conditional': both distributions renormalised over the ids; zero gradient elsewhere.
 * - 'sampled' (Sparse Logit Sampling): L = −Σ w log q_id over sampled ids with importance
 *   weights; E[dL/dz] is exactly the full forward-KL gradient (q − p)/T.
 *
 * The other options are those of the dense losses (lib/divergence.ts): temperature,
 * scaleByTemperatureSquared, labels/ignoreIndex/mask (token selection), weights,
 * reduction, normalizer, grad, gradDtype, gradScale, stream.
 */
import type { OpArgs, TensorDesc } from '../binding.js';
import { asRows, disposeAll, flatDesc, resolveGrad, sideInput } from './args.js';
import { REDUCTION_CODE, type LossOptions } from './divergence.js';
import { KdError, KdRangeError, KdTypeError, describe } from './errors.js';
import { dispatch } from './dispatch.js';
import { Tensor, WEBGPU, deviceName, empty, isTensor, output } from './tensor.js';
import { expectBool, expectInt, expectNumber, expectOneOf, expectOptions } from './validate.js';

export type SparseTail = 'renormalize' | 'bucket' | 'conditional' | 'sampled';
export const SPARSE_TAILS: readonly SparseTail[] = ['renormalize', 'bucket', 'conditional', 'sampled'];
const TAIL_CODE: Record<SparseTail, number> = { renormalize: 0, bucket: 1, conditional: 2, sampled: 3 };

/** The largest number of teacher slots per token (the CUDA kernel sorts a row's slots in shared memory). */
export const SPARSE_MAX_SLOTS = 4096;

/**
 * A sparse teacher: k slots per token, shaped [N, k] or [...lead, k] like the student's
 * leading dims. `topk(..., { output: 'logprobs' })` and `sampleTeacher` return exactly
 * this (topk's `values`; sampleTeacher's `weights`).
 */
export interface SparseTeacher {
  /** i32 [..., k]: teacher token ids in [0, V); distinct per token except for 'sampled'. */
  indices: Tensor;
  /** [..., k] teacher log-probs at temperature T at the ids (f32, f16 or bf16); not used by 'sampled'. */
  values?: Tensor;
  /** f32 [...]: log of the teacher mass outside the ids ('bucket'). */
  tailLogProb?: Tensor;
  /** f32 [..., k]: importance weights of sampled ids ('sampled'). */
  weights?: Tensor;
}

/** The options of every loss (token selection, reduction, gradient, stream), plus the tail. */
export interface SparseKlDivOptions extends Omit<LossOptions, 'teacher' | 'checkLabels'> {
  /** Required: what happens to the teacher mass outside the ids (see the module comment). */
  tail: SparseTail;
  /** Student softmax temperature (default 1); the teacher values must be log-probs at the same T. */
  temperature?: number;
  /**
   * Check that the teacher ids lie in [0, V) and (except for 'sampled') are distinct per
   * token (default true). CUDA: copies the ids to the host (a sync); with false, an id
   * out of range makes that token's loss and gradient NaN there (the CPU always
   * range-checks, as memory safety needs). WebGPU cannot read the ids synchronously: they
   * are not checked there, and an id out of range makes its token's loss and gradient NaN.
   */
  checkIds?: boolean;
}

export interface SparseKlDivResult {
  /** Scalar, or [...] per token for reduction 'none'. */
  loss: Tensor;
  /** dLoss/dStudentLogits, shaped as the student. */
  grad?: Tensor;
}

const OPTION_KEYS = [
  'tail', 'temperature', 'scaleByTemperatureSquared', 'labels', 'ignoreIndex', 'mask', 'weights',
  'reduction', 'normalizer', 'grad', 'gradDtype', 'gradScale', 'stream', 'checkIds',
] as const;
const TEACHER_KEYS = ['indices', 'values', 'tailLogProb', 'weights'] as const;

interface Prepared {
  args: OpArgs;
  device: number;
  result: SparseKlDivResult;
  temps: Tensor[];
  fresh: Tensor[];
}

/** A teacher slot tensor: [..., k] with N rows, contiguous, on the student's device. */
function slotTensor(name: string, x: unknown, dtypes: readonly string[], n: number, k: number | undefined, device: number, op: string): { t: Tensor; k: number; desc: TensorDesc } {
  if (!isTensor(x)) throw new KdTypeError(`${op}: expected a Tensor for sparseTeacher.${name} but received ${describe(x)}`);
  if (!dtypes.includes(x.dtype))
    throw new KdTypeError(`${op}: expected sparseTeacher.${name} of dtype ${dtypes.join(' or ')} but received ${x.dtype}`, 'KD_EDTYPE');
  if (x.deviceIndex !== device)
    throw new KdError(`${op}: sparseTeacher.${name} is on ${x.device} but the student is on ${deviceName(device)}`, 'KD_EDEVICE');
  const kk = x.ndim >= 2 ? x.shape[x.ndim - 1]! : -1;
  const rows = x.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  if (x.ndim < 2 || rows !== n || (k !== undefined && kk !== k) || !x.isContiguous)
    throw new KdRangeError(
      `${op}: expected sparseTeacher.${name} of shape [${n}${k !== undefined ? `, ${k}` : ', k'}] (one row of slots per student token, contiguous) but received [${x.shape.join(', ')}]`,
      'KD_ESHAPE',
    );
  return { t: x, k: kk, desc: { ...x._desc(name), shape: [n, kk], strides: [kk, 1] } };
}

function prepare(student: unknown, teacher: unknown, opts: unknown): Prepared {
  const op = 'sparseKlDiv';
  if (opts === undefined) throw new KdTypeError(`${op}: options with a tail mode are required, e.g. { tail: 'bucket' }`);
  const o = expectOptions(`${op} options`, opts, OPTION_KEYS);
  const s = asRows('student', student, op);
  const device = s.t.deviceIndex;
  if (o.tail === undefined) throw new KdTypeError(`${op}: options.tail is required: one of ${SPARSE_TAILS.map((t) => `'${t}'`).join(', ')}`);
  const tail = expectOneOf('tail', o.tail, SPARSE_TAILS);

  // ---- the sparse teacher ------------------------------------------------------------
  if (teacher === null || typeof teacher !== 'object' || isTensor(teacher) || Array.isArray(teacher))
    throw new KdTypeError(`${op}: expected a sparse teacher { indices, values?, tailLogProb?, weights? } but received ${describe(teacher)}`);
  const st = teacher as Record<string, unknown>;
  for (const key of Object.keys(st))
    if (!(TEACHER_KEYS as readonly string[]).includes(key))
      throw new KdTypeError(`Unknown key '${key}' in ${op} sparseTeacher; known keys: ${TEACHER_KEYS.join(', ')}`);
  const ids = slotTensor('indices', st.indices, ['i32'], s.n, undefined, device, op);
  const k = ids.k;
  if (s.n > 0 && (k < 1 || k > SPARSE_MAX_SLOTS))
    throw new KdRangeError(`${op}: expected 1 to ${SPARSE_MAX_SLOTS} teacher slots per token but sparseTeacher.indices has ${k}`, 'KD_ESHAPE');
  let values: ReturnType<typeof slotTensor> | undefined;
  let sampleWeights: ReturnType<typeof slotTensor> | undefined;
  let tailDesc: TensorDesc | undefined;
  if (tail === 'sampled') {
    if (st.weights === undefined) throw new KdTypeError(`${op}: tail 'sampled' needs sparseTeacher.weights (the importance weights from sampleTeacher)`);
    sampleWeights = slotTensor('weights', st.weights, ['f32'], s.n, k, device, op);
  } else {
    if (st.values === undefined) throw new KdTypeError(`${op}: tail '${tail}' needs sparseTeacher.values (teacher log-probs at the ids, e.g. topk(..., { output: 'logprobs' }).values)`);
    values = slotTensor('values', st.values, ['f32', 'f16', 'bf16'], s.n, k, device, op);
  }
  if (tail === 'bucket') {
    if (st.tailLogProb === undefined) throw new KdTypeError(`${op}: tail 'bucket' needs sparseTeacher.tailLogProb (f32 [N], e.g. from topk)`);
    const tl = st.tailLogProb;
    if (!isTensor(tl)) throw new KdTypeError(`${op}: expected a Tensor for sparseTeacher.tailLogProb but received ${describe(tl)}`);
    if (tl.dtype !== 'f32') throw new KdTypeError(`${op}: expected sparseTeacher.tailLogProb of dtype f32 but received ${tl.dtype}`, 'KD_EDTYPE');
    if (tl.deviceIndex !== device) throw new KdError(`${op}: sparseTeacher.tailLogProb is on ${tl.device} but the student is on ${deviceName(device)}`, 'KD_EDEVICE');
    if (tl.numel !== s.n || !tl.isContiguous)
      throw new KdRangeError(`${op}: expected sparseTeacher.tailLogProb with ${s.n} elements (one per token) but received shape [${tl.shape.join(', ')}]`, 'KD_ESHAPE');
    tailDesc = flatDesc(tl, 'tailLogProb');
  }

  // ---- options -----------------------------------------------------------------------
  const temperature = o.temperature === undefined ? 1 : expectNumber('temperature', o.temperature, (x) => x > 0 && Number.isFinite(x), 'a finite number > 0');
  const scaleT2 = o.scaleByTemperatureSquared === undefined ? true : expectBool('scaleByTemperatureSquared', o.scaleByTemperatureSquared);
  const ignoreIndex = o.ignoreIndex === undefined ? -100 : expectInt('ignoreIndex', o.ignoreIndex, -(2 ** 31), 2 ** 31 - 1);
  const reduction = o.reduction === undefined ? 'batchmean' : expectOneOf('reduction', o.reduction, ['none', 'sum', 'mean', 'batchmean'] as const);
  const normalizer = o.normalizer === undefined ? 0 : expectNumber('normalizer', o.normalizer, (x) => x > 0 && Number.isFinite(x), 'a finite number > 0');
  const gradScale = o.gradScale === undefined ? 1 : expectNumber('gradScale', o.gradScale, Number.isFinite, 'a finite number');
  const gradDtype = o.gradDtype === undefined ? 'input' : expectOneOf('gradDtype', o.gradDtype, ['f32', 'input'] as const);
  const checkIds = o.checkIds === undefined ? true : expectBool('checkIds', o.checkIds);
  if (o.stream !== undefined && typeof o.stream !== 'bigint') throw new KdRangeError(`${op}: stream must be a bigint (cudaStream_t)`);
  if (o.stream !== undefined && device < 0) throw new KdError(`${op}: a stream was given but the logits are on ${deviceName(device)}, not CUDA`, 'KD_EDEVICE');

  if (checkIds && s.n > 0 && device !== WEBGPU) {
    const host = ids.t.toArray() as Int32Array; // CPU: the view; CUDA: a copy (syncs)
    const seen = new Uint8Array(s.v);
    for (let i = 0; i < s.n; i++) {
      for (let j = 0; j < k; j++) {
        const id = host[i * k + j]!;
        if (id < 0 || id >= s.v) throw new KdRangeError(`${op}: sparseTeacher.indices[${i}, ${j}] = ${id} is outside [0, ${s.v})`, 'KD_ERANGE');
        if (tail !== 'sampled') {
          if (seen[id]) throw new KdRangeError(`${op}: sparseTeacher.indices[${i}] repeats id ${id}; ids must be distinct per token except for tail 'sampled'`, 'KD_ERANGE');
          seen[id] = 1;
        }
      }
      if (tail !== 'sampled') for (let j = 0; j < k; j++) seen[host[i * k + j]!] = 0;
    }
  }

  const temps: Tensor[] = [];
  const labels = sideInput('labels', o.labels, 'i32', s.n, device, op, temps);
  const mask = sideInput('mask', o.mask, 'u8', s.n, device, op, temps);
  const weights = sideInput('weights', o.weights, 'f32', s.n, device, op, temps);
  const dev = deviceName(device);
  // The loss before the gradient (see prepare in divergence.ts).
  const loss = reduction === 'none' ? output(s.lead, 'f32', dev) : output([], 'f32', dev);
  const fresh = [loss];
  const g = resolveGrad(o.grad, gradDtype, s, op, fresh);
  if (g.t && g.t !== s.t && (o.grad === undefined || o.grad === true)) fresh.push(g.t);
  let workspace: Tensor | undefined;
  if (device >= 0) {
    workspace = empty([(s.n + 4) * 8], { dtype: 'u8', device: dev });
    temps.push(workspace);
  }
  const args: OpArgs = {
    student: s.desc,
    ids: ids.desc,
    values: values?.desc,
    tailLogProb: tailDesc,
    sampleWeights: sampleWeights?.desc,
    tail: TAIL_CODE[tail],
    temperature,
    softWeight: scaleT2 ? temperature * temperature : 1,
    labels: labels ? flatDesc(labels.t, 'labels') : undefined,
    ignoreIndex,
    mask: mask ? flatDesc(mask.t, 'mask') : undefined,
    weights: weights ? flatDesc(weights.t, 'weights') : undefined,
    reduction: REDUCTION_CODE[reduction],
    normalizer,
    gradScale,
    grad: g.desc,
    loss: reduction === 'none' ? flatDesc(loss, 'loss') : loss._desc('loss'),
    workspace: workspace?._desc('workspace'),
    stream: o.stream as bigint | undefined,
  };
  const result: SparseKlDivResult = { loss };
  if (g.t) result.grad = g.t;
  return { args, result, temps, fresh, device };
}

/** Sparse KD loss and gradient (see the module comment); CUDA and WebGPU work is enqueued, not awaited. */
export function sparseKlDiv(student: Tensor, sparseTeacher: SparseTeacher, opts: SparseKlDivOptions): SparseKlDivResult {
  const p = prepare(student, sparseTeacher, opts);
  try {
    dispatch('sparseKlDiv', p.args, p.device);
  } catch (e) {
    disposeAll(p.fresh);
    throw e;
  } finally {
    disposeAll(p.temps);
  }
  return p.result;
}

/** sparseKlDiv on a worker thread (CPU); resolves when done. Inputs stay alive. */
export async function sparseKlDivAsync(student: Tensor, sparseTeacher: SparseTeacher, opts: SparseKlDivOptions): Promise<SparseKlDivResult> {
  const p = prepare(student, sparseTeacher, opts);
  p.args.async = true;
  try {
    await dispatch('sparseKlDiv', p.args, p.device);
  } catch (e) {
    disposeAll(p.fresh);
    throw e;
  } finally {
    disposeAll(p.temps);
  }
  return p.result;
}
