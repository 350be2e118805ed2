/**
 * What kdLoss and sparseKdLoss share across tf backends (lib/tfjs.ts on the CPU backend,
 * lib/tfjs_webgpu.ts on webgpu): the option checks and their errors, and the choice of
 * kd op that a set of options makes. One copy, so both backends accept, refuse and
 * compute the same; each adapter only says how it turns tf tensors into kd tensors.
 * No tfjs import here.
 */
import { DIVERGENCES, type DivergenceName } from './divergence.js';
import { KdTypeError } from './errors.js';
import { distillationLoss, jsd, klDiv, skewKl, tvd, type Tensor } from './index.js';
import { expectOneOf, expectOptions } from './validate.js';

export const KD_LOSS_KEYS = [
  'divergence', 'beta', 'skew', 'temperature', 'scaleByTemperatureSquared', 'teacher', 'labels', 'ignoreIndex',
  'mask', 'weights', 'reduction', 'normalizer', 'hardWeight', 'softWeight', 'labelSmoothing',
] as const;

export const SPARSE_KEYS = [
  'tail', 'temperature', 'scaleByTemperatureSquared', 'labels', 'ignoreIndex', 'mask', 'weights', 'reduction', 'normalizer', 'checkIds',
] as const;

/** kdLoss's options, checked. `distill`: any of hardWeight / softWeight / labelSmoothing (distillationLoss). */
export interface KdLossPlan {
  o: Record<string, unknown>;
  divergence: DivergenceName;
  distill: boolean;
}

/** One kd call with the adapter's per-call options (grad, gradScale) merged in. */
export type LossCall = (opts: Record<string, unknown>) => { loss: Tensor; grad?: Tensor };

const REDUCTIONS = ['sum', 'mean', 'batchmean'] as const; // 'none' has no scalar

/** Checks kdLoss's options (keys, divergence, reduction, beta / skew only where they apply). */
export function planKdLoss(op: string, options: unknown): KdLossPlan {
  const o = expectOptions(`${op} options`, options, KD_LOSS_KEYS) as Record<string, unknown>;
  const divergence = o.divergence === undefined ? 'forward-kl' : expectOneOf('divergence', o.divergence, DIVERGENCES);
  if (o.reduction !== undefined) expectOneOf('reduction', o.reduction, REDUCTIONS);
  const distill = o.hardWeight !== undefined || o.softWeight !== undefined || o.labelSmoothing !== undefined;
  if (!distill) {
    for (const k of ['beta', 'skew'] as const) {
      const uses = k === 'beta' ? divergence === 'jsd' : divergence.startsWith('skew');
      if (o[k] !== undefined && !uses) throw new KdTypeError(`${op}: option '${k}' does not apply to divergence '${divergence}'`);
    }
  }
  return { o, divergence, distill };
}

/** A null teacher is only plain cross-entropy ({ hardWeight, softWeight: 0, labels }). */
export function checkNullTeacher(op: string, plan: KdLossPlan, teacherLogits: unknown): void {
  if (teacherLogits === null && !(plan.distill && plan.o.softWeight === 0))
    throw new KdTypeError(`${op}: teacherLogits is null, which is only allowed for plain cross-entropy ({ hardWeight, softWeight: 0, labels })`);
}

/** The options passed through to kd as they are, without the undefined ones. */
function defined(r: Record<string, unknown>): Record<string, unknown> {
  for (const k of Object.keys(r)) if (r[k] === undefined) delete r[k];
  return r;
}

/**
 * The kd call kdLoss makes: distillationLoss when `distill`, else klDiv / jsd / tvd /
 * skewKl by divergence. `student` / `teacher` give the kd tensors (per call: the CPU
 * adapter makes fresh views); labels, mask and weights are already kd inputs.
 */
export function kdLossCall(
  op: string,
  plan: KdLossPlan,
  student: () => Tensor,
  teacher: () => Tensor,
  sides: { labels?: unknown; mask?: unknown; weights?: unknown }, // typed arrays or kd Tensors
): LossCall {
  const { o, divergence } = plan;
  const common = defined({
    temperature: o.temperature,
    scaleByTemperatureSquared: o.scaleByTemperatureSquared,
    teacher: o.teacher,
    ignoreIndex: o.ignoreIndex,
    mask: sides.mask,
    weights: sides.weights,
    reduction: o.reduction,
    normalizer: o.normalizer,
    gradDtype: 'f32',
  });
  const labels = sides.labels;
  if (plan.distill) {
    if (labels === undefined) throw new KdTypeError(`${op}: hardWeight / softWeight / labelSmoothing make this distillationLoss, which needs labels`);
    const extra = defined({ divergence, beta: o.beta, skew: o.skew, hardWeight: o.hardWeight, softWeight: o.softWeight, labelSmoothing: o.labelSmoothing });
    return (opts) => {
      const r = distillationLoss(student(), teacher(), labels as Int32Array, { ...common, ...extra, ...opts });
      r.hard.dispose();
      r.soft.dispose();
      r.total.dispose();
      return r;
    };
  }
  if (labels !== undefined) common.labels = labels;
  switch (divergence) {
    case 'forward-kl':
    case 'reverse-kl':
      return (opts) => klDiv(student(), teacher(), { ...common, direction: divergence === 'forward-kl' ? 'forward' : 'reverse', ...opts });
    case 'jsd':
      return (opts) => jsd(student(), teacher(), { ...common, ...(o.beta !== undefined ? { beta: o.beta as number } : {}), ...opts });
    case 'tvd':
      return (opts) => tvd(student(), teacher(), { ...common, ...opts });
    default:
      return (opts) =>
        skewKl(student(), teacher(), { ...common, direction: divergence === 'skew-forward-kl' ? 'forward' : 'reverse', ...(o.skew !== undefined ? { skew: o.skew as number } : {}), ...opts });
  }
}

/** Checks sparseKdLoss's options (a tail mode is required). */
export function planSparseKdLoss(op: string, options: unknown): Record<string, unknown> {
  if (options === undefined) throw new KdTypeError(`${op}: options with a tail mode are required, e.g. { tail: 'bucket' }`);
  const o = expectOptions(`${op} options`, options, SPARSE_KEYS) as Record<string, unknown>;
  if (o.reduction !== undefined) expectOneOf('reduction', o.reduction, REDUCTIONS);
  return o;
}

/** sparseKlDiv's options from sparseKdLoss's, with the adapter's labels / mask / weights. */
export function sparseCommon(o: Record<string, unknown>, sides: { labels?: unknown; mask?: unknown; weights?: unknown }): Record<string, unknown> {
  return defined({
    tail: o.tail,
    temperature: o.temperature,
    scaleByTemperatureSquared: o.scaleByTemperatureSquared,
    labels: sides.labels,
    ignoreIndex: o.ignoreIndex,
    mask: sides.mask,
    weights: sides.weights,
    reduction: o.reduction,
    normalizer: o.normalizer,
    checkIds: o.checkIds,
    gradDtype: 'f32',
  });
}
