/**
 * jsd: generalized Jensen-Shannon divergence as TRL's generalized_jsd_loss:
 * β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q; β = 0 is exactly forward KL(p‖q) and
 * β = 1 exactly reverse KL(q‖p).
 */
import { expectBeta, runEngine, runEngineAsync, type LossOptions, type LossResult } from './divergence.js';
import type { Tensor } from './tensor.js';

export interface JsdOptions extends LossOptions {
  /** Interpolation β ∈ [0, 1] (default 0.5). */
  beta?: number;
}

function spec(opts?: JsdOptions) {
  return { op: 'jsd', divergence: 'jsd' as const, beta: expectBeta(opts?.beta) };
}

export function jsd(student: Tensor, teacher: Tensor, opts?: JsdOptions): LossResult {
  return runEngine(student, teacher, opts, spec(opts), ['beta']);
}

export function jsdAsync(student: Tensor, teacher: Tensor, opts?: JsdOptions): Promise<LossResult> {
  return runEngineAsync(student, teacher, opts, spec(opts), ['beta']);
}
