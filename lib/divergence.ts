/**
 * The fused divergence engine (native/{cpu,cuda}/divergence.*) behind klDiv, jsd,
 * tvd, skewKl and distillationLoss: option parsing shared by all of them, one native
 * call per op, sync or async. The math is in native/common/divergence_math.h.
 */
import type { OpArgs } from '../binding.js';
import { disposeAll, flatDesc, resolveGrad, sideInput, asRows, type GradOption } from './args.js';
import { KdError, KdRangeError } from './errors.js';
import { dispatch } from './dispatch.js';
import { Tensor, WEBGPU, deviceName, empty, output } from './tensor.js';
import { expectBool, expectInt, expectNumber, expectOneOf, expectOptions } from './validate.js';

export type Reduction = 'none' | 'sum' | 'mean' | 'batchmean';
export type DivergenceName = 'forward-kl' | 'reverse-kl' | 'jsd' | 'tvd' | 'skew-forward-kl' | 'skew-reverse-kl';

export const DIVERGENCES: readonly DivergenceName[] = ['forward-kl', 'reverse-kl', 'jsd', 'tvd', 'skew-forward-kl', 'skew-reverse-kl'];
const DIV_CODE: Record<DivergenceName | 'none', number> = {
  'forward-kl': 0, 'reverse-kl': 1, jsd: 2, tvd: 3, 'skew-forward-kl': 4, 'skew-reverse-kl': 5, none: 6,
};
export const REDUCTION_CODE: Record<Reduction, number> = { none: 0, sum: 1, mean: 2, batchmean: 3 };

/** Options every loss accepts. */
export interface LossOptions {
  /** Softmax temperature for student and teacher (default 1). */
  temperature?: number;
  /** Multiply the divergence by T² (Hinton; default true). TRL and Liger don't. */
  scaleByTemperatureSquared?: boolean;
  /** What the teacher tensor holds (default 'logits'). Log-probs at T = 1 are used as is. */
  teacher?: 'logits' | 'logprobs';
  /** i32 [N] token labels; tokens equal to ignoreIndex are excluded. */
  labels?: Tensor | Int32Array;
  ignoreIndex?: number;
  /** u8 [N]: 0 excludes a token. */
  mask?: Tensor | Uint8Array;
  /** f32 [N]: per-token loss weights. */
  weights?: Tensor | Float32Array;
  /** Default 'batchmean' = sum over selected tokens / their count; 'mean' also divides by V. */
  reduction?: Reduction;
  /** Replaces the divisor of the reduction (TRL's num_items_in_batch). */
  normalizer?: number;
  /** true (new tensor, default), false, 'inplace' (overwrite the student), or a Tensor. */
  grad?: GradOption;
  /** Gradient dtype: the student's ('input', default) or 'f32'. */
  gradDtype?: 'f32' | 'input';
  /** Multiplies the gradient (the upstream gradient; default 1). */
  gradScale?: number;
  /** CUDA: the caller's stream (cudaStream_t as bigint). */
  stream?: bigint;
  /** CUDA: copy labels to the host to range-check them (default true; syncs). */
  checkLabels?: boolean;
}

export interface LossResult {
  /** Scalar, or [N] (leading dims of the logits) for reduction 'none'. */
  loss: Tensor;
  /** dLoss/dStudentLogits, shaped as the student. */
  grad?: Tensor;
}

export interface EngineResult extends LossResult {
  hard?: Tensor;
  soft?: Tensor;
  total?: Tensor;
}

export const LOSS_OPTION_KEYS = [
  'temperature', 'scaleByTemperatureSquared', 'teacher', 'labels', 'ignoreIndex', 'mask', 'weights',
  'reduction', 'normalizer', 'grad', 'gradDtype', 'gradScale', 'stream', 'checkLabels',
] as const;

export interface EngineSpec {
  op: string;
  divergence: DivergenceName | 'none';
  beta?: number;
  skew?: number;
  hardWeight?: number;
  softWeight?: number;
  labelSmoothing?: number;
  /** Labels passed positionally (distillationLoss): required. */
  labels?: unknown;
  perToken?: boolean;
}

interface Prepared {
  args: OpArgs;
  device: number;
  result: EngineResult;
  /** Inputs we uploaded and workspaces: disposed after the call. */
  temps: Tensor[];
  /** Outputs we allocated: disposed if the call fails. */
  fresh: Tensor[];
}

function prepare(student: unknown, teacher: unknown, o: Record<string, unknown>, spec: EngineSpec): Prepared {
  const op = spec.op;
  const s = asRows('student', student, op);
  const t = asRows('teacher', teacher, op);
  if (s.t.deviceIndex !== t.t.deviceIndex)
    throw new KdError(`${op}: student is on ${s.t.device} but teacher is on ${t.t.device}`, 'KD_EDEVICE');
  if (t.n !== s.n)
    throw new KdRangeError(`${op}: student has ${s.n} tokens (shape [${s.t.shape.join(', ')}]) but teacher has ${t.n} (shape [${t.t.shape.join(', ')}])`, 'KD_ESHAPE');
  if (t.v < s.v)
    throw new KdRangeError(`${op}: teacher vocabulary (${t.v}) is smaller than the student's (${s.v}); a larger teacher vocabulary is allowed, a smaller one is not`, 'KD_ESHAPE');
  const device = s.t.deviceIndex;
  const temperature = o.temperature === undefined ? 1 : expectNumber('temperature', o.temperature, (x) => x > 0 && Number.isFinite(x), 'a finite number > 0');
  const scaleT2 = o.scaleByTemperatureSquared === undefined ? true : expectBool('scaleByTemperatureSquared', o.scaleByTemperatureSquared);
  const teacherKind = o.teacher === undefined ? 'logits' : expectOneOf('teacher', o.teacher, ['logits', 'logprobs'] as const);
  const ignoreIndex = o.ignoreIndex === undefined ? -100 : expectInt('ignoreIndex', o.ignoreIndex, -(2 ** 31), 2 ** 31 - 1);
  const reduction = o.reduction === undefined ? 'batchmean' : expectOneOf('reduction', o.reduction, ['none', 'sum', 'mean', 'batchmean'] as const);
  const normalizer = o.normalizer === undefined ? 0 : expectNumber('normalizer', o.normalizer, (x) => x > 0 && Number.isFinite(x), 'a finite number > 0');
  const gradScale = o.gradScale === undefined ? 1 : expectNumber('gradScale', o.gradScale, Number.isFinite, 'a finite number');
  const gradDtype = o.gradDtype === undefined ? 'input' : expectOneOf('gradDtype', o.gradDtype, ['f32', 'input'] as const);
  const checkLabels = o.checkLabels === undefined ? true : expectBool('checkLabels', o.checkLabels);
  if (o.stream !== undefined && typeof o.stream !== 'bigint') throw new KdRangeError(`${op}: stream must be a bigint (cudaStream_t)`);
  if (o.stream !== undefined && device < 0) throw new KdError(`${op}: a stream was given but the logits are on ${device === -1 ? 'the CPU' : deviceName(device)}, not CUDA`, 'KD_EDEVICE');

  const temps: Tensor[] = [];
  const labelsIn = spec.labels !== undefined ? spec.labels : o.labels;
  if (spec.labels !== undefined && o.labels !== undefined) throw new KdError(`${op}: labels given twice (argument and option)`, 'KD_EINVAL');
  const labels = sideInput('labels', labelsIn, 'i32', s.n, device, op, temps);
  const mask = sideInput('mask', o.mask, 'u8', s.n, device, op, temps);
  const weights = sideInput('weights', o.weights, 'f32', s.n, device, op, temps);
  if (spec.hardWeight && !labels) throw new KdError(`${op}: a cross-entropy term needs labels`, 'KD_EINVAL');
  if (labels) {
    let host = labels.host;
    // WebGPU labels cannot be read synchronously: there a label out of range gives its
    // row a NaN CE (lib/webgpu/wgsl/divergence.wgsl.ts), never an out-of-bounds read.
    if (!host && checkLabels && device !== WEBGPU) host = labels.t.toArray();
    if (host) {
      for (let i = 0; i < host.length; i++) {
        const l = host[i]!;
        if (l !== ignoreIndex && (l < 0 || l >= s.v))
          throw new KdRangeError(`${op}: labels[${i}] = ${l} is outside [0, ${s.v}) and is not ignoreIndex (${ignoreIndex})`, 'KD_ERANGE');
      }
    }
  }
  if (o.grad === 'inplace' && (s.t === t.t)) throw new KdError(`${op}: grad 'inplace' with the same tensor as student and teacher`, 'KD_EINVAL');

  const dev = deviceName(device);
  // The loss and per-token outputs before the gradient: a small output's memory is an
  // external allocation (tensor.ts output), and V8 runs a young collection at one made
  // while a large young ArrayBuffer is alive, here the gradient this call takes from the
  // pool. Made first, they cost nothing when the previous gradient was disposed; when it
  // was dropped instead, that collection runs before the gradient is taken, so the
  // dropped block can be reused at once.
  const loss = reduction === 'none' ? output(s.lead, 'f32', device) : output([], 'f32', device);
  const perToken = spec.perToken === true;
  const hard = perToken ? output(s.lead, 'f32', device) : undefined;
  const soft = perToken ? output(s.lead, 'f32', device) : undefined;
  const total = perToken ? output(s.lead, 'f32', device) : undefined;
  const fresh = [loss, hard, soft, total].filter((x): x is Tensor => x !== undefined);
  const g = resolveGrad(o.grad, gradDtype, s, op, fresh);
  if (g.t && g.t !== s.t && (o.grad === undefined || o.grad === true)) fresh.push(g.t);
  let workspace: Tensor | undefined;
  if (device >= 0) {
    workspace = empty([(s.n + 4) * 8], { dtype: 'u8', device: dev });
    temps.push(workspace);
  }
  const softWeight = (spec.softWeight ?? 1) * (scaleT2 ? temperature * temperature : 1);
  const args: OpArgs = {
    student: s.desc,
    teacher: t.desc,
    teacherLogprobs: teacherKind === 'logprobs',
    labels: labels ? flatDesc(labels.t, 'labels') : undefined,
    ignoreIndex,
    mask: mask ? flatDesc(mask.t, 'mask') : undefined,
    weights: weights ? flatDesc(weights.t, 'weights') : undefined,
    divergence: DIV_CODE[spec.divergence],
    beta: spec.beta ?? 0.5,
    skew: spec.skew ?? 0.1,
    temperature,
    softWeight: spec.divergence === 'none' ? 0 : softWeight,
    softScale: scaleT2 ? temperature * temperature : 1,
    hardWeight: spec.hardWeight ?? 0,
    labelSmoothing: spec.labelSmoothing ?? 0,
    reduction: REDUCTION_CODE[reduction],
    normalizer,
    gradScale,
    grad: g.desc,
    loss: reduction === 'none' ? flatDesc(loss, 'loss') : loss._desc('loss'),
    hard: hard ? flatDesc(hard, 'hard') : undefined,
    soft: soft ? flatDesc(soft, 'soft') : undefined,
    total: total ? flatDesc(total, 'total') : undefined,
    workspace: workspace?._desc('workspace'),
    stream: o.stream as bigint | undefined,
  };
  const result: EngineResult = { loss };
  if (g.t) result.grad = g.t;
  if (perToken) Object.assign(result, { hard, soft, total });
  return { args, result, temps, fresh, device };
}

/** Runs the engine synchronously (CUDA: enqueued on the stream). */
export function runEngine(student: unknown, teacher: unknown, opts: unknown, spec: EngineSpec, extraKeys: readonly string[] = []): EngineResult {
  const o = expectOptions(`${spec.op} options`, opts, [...LOSS_OPTION_KEYS, ...extraKeys]);
  const p = prepare(student, teacher, o, spec);
  try {
    dispatch('divergence', p.args, p.device);
  } catch (e) {
    disposeAll(p.fresh);
    throw e;
  } finally {
    disposeAll(p.temps);
  }
  return p.result;
}

/** Runs the engine on a worker thread (CPU); resolves when done. Inputs stay alive. */
export async function runEngineAsync(student: unknown, teacher: unknown, opts: unknown, spec: EngineSpec, extraKeys: readonly string[] = []): Promise<EngineResult> {
  const o = expectOptions(`${spec.op} options`, opts, [...LOSS_OPTION_KEYS, ...extraKeys]);
  const p = prepare(student, teacher, o, spec);
  p.args.async = true;
  try {
    await dispatch('divergence', p.args, p.device);
  } catch (e) {
    disposeAll(p.fresh);
    throw e;
  } finally {
    disposeAll(p.temps);
  }
  return p.result;
}

export function expectBeta(v: unknown): number {
  return v === undefined ? 0.5 : expectNumber('beta', v, (x) => x >= 0 && x <= 1, 'a number in [0, 1]');
}
export function expectSkew(v: unknown): number {
  return v === undefined ? 0.1 : expectNumber('skew', v, (x) => x >= 0 && x < 1, 'a number in [0, 1)');
}
