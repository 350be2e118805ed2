/**
 * distillationLoss: the token-level objective
 *   total_i = w_i · (hardWeight · CE(z_i, y_i) + softWeight · s · D(p_i, q_i)),  s = T² or 1
 * fused in one pass over the logits. CE is PyTorch's cross_entropy on the untempered
 * logits (with label smoothing); D uses the tempered ones. Labels equal to ignoreIndex
 * mask both terms (as TRL does).
 */
import { DIVERGENCES, expectBeta, expectSkew, runEngine, runEngineAsync, type DivergenceName, type LossOptions, type Reduction } from './divergence.js';
import { KdRangeError } from './errors.js';
import type { Tensor } from './tensor.js';
import { expectNumber, expectOneOf } from './validate.js';

export interface DistillationLossOptions extends Omit<LossOptions, 'labels'> {
  /** The soft term (default 'forward-kl'). */
  divergence?: DivergenceName;
  /** jsd's β (default 0.5). */
  beta?: number;
  /** skew KLs' λ (default 0.1). */
  skew?: number;
  /** Weight of the CE term (default 0.5). */
  hardWeight?: number;
  /** Weight of the divergence (default 0.5). */
  softWeight?: number;
  /** CE label smoothing ε ∈ [0, 1] (default 0). */
  labelSmoothing?: number;
}

export interface DistillationLossResult {
  /** The reduced total (or [N] for reduction 'none'). */
  loss: Tensor;
  grad?: Tensor;
  /** Per token CE_i (0 for ignored tokens), before weights. */
  hard: Tensor;
  /** Per token s · D_i (s = T² when scaled), before weights. */
  soft: Tensor;
  /** Per token w_i (hardWeight · hard_i + softWeight · soft_i): what the reduction sums. */
  total: Tensor;
}

const EXTRA = ['divergence', 'beta', 'skew', 'hardWeight', 'softWeight', 'labelSmoothing'];

function spec(labels: unknown, opts?: DistillationLossOptions) {
  const divergence = opts?.divergence === undefined ? 'forward-kl' : expectOneOf('divergence', opts.divergence, DIVERGENCES);
  const hardWeight = opts?.hardWeight === undefined ? 0.5 : expectNumber('hardWeight', opts.hardWeight, (x) => x >= 0 && Number.isFinite(x), 'a finite number >= 0');
  const softWeight = opts?.softWeight === undefined ? 0.5 : expectNumber('softWeight', opts.softWeight, (x) => x >= 0 && Number.isFinite(x), 'a finite number >= 0');
  if (hardWeight === 0 && softWeight === 0) throw new KdRangeError('distillationLoss: hardWeight and softWeight are both 0; the loss would be identically 0');
  const labelSmoothing = opts?.labelSmoothing === undefined ? 0 : expectNumber('labelSmoothing', opts.labelSmoothing, (x) => x >= 0 && x <= 1, 'a number in [0, 1]');
  if (labels === undefined || labels === null) throw new KdRangeError('distillationLoss: labels are required (i32 [N]; use ignoreIndex for tokens without a label)');
  return {
    op: 'distillationLoss',
    // softWeight 0: CE only; the divergence is not computed (soft reports 0).
    divergence: softWeight === 0 ? ('none' as const) : (divergence as DivergenceName),
    beta: expectBeta(opts?.beta),
    skew: expectSkew(opts?.skew),
    hardWeight,
    softWeight,
    labelSmoothing,
    labels,
    perToken: true,
  };
}

export function distillationLoss(student: Tensor, teacher: Tensor, labels: Tensor | Int32Array, opts?: DistillationLossOptions): DistillationLossResult {
  return runEngine(student, teacher, opts, spec(labels, opts), EXTRA) as DistillationLossResult;
}

export function distillationLossAsync(student: Tensor, teacher: Tensor, labels: Tensor | Int32Array, opts?: DistillationLossOptions): Promise<DistillationLossResult> {
  return runEngineAsync(student, teacher, opts, spec(labels, opts), EXTRA) as Promise<DistillationLossResult>;
}

export type { Reduction };
