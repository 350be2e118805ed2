/**
 * skewKl: DistiLLM's skew KL. 'forward': KL(p ‖ λp + (1−λ)q); 'reverse':
 * KL(q ‖ (1−λ)p + λq), λ = skew ∈ [0, 1) (λ = 0 gives the plain KLs).
 */
import { expectSkew, runEngine, runEngineAsync, type LossOptions, type LossResult } from './divergence.js';
import type { Tensor } from './tensor.js';
import { expectOneOf } from './validate.js';

export interface SkewKlOptions extends LossOptions {
  /** λ ∈ [0, 1) (default 0.1, DistiLLM's). */
  skew?: number;
  direction?: 'forward' | 'reverse';
}

function spec(opts?: SkewKlOptions) {
  const direction = opts?.direction === undefined ? 'forward' : expectOneOf('direction', opts.direction, ['forward', 'reverse'] as const);
  return {
    op: 'skewKl',
    divergence: direction === 'forward' ? ('skew-forward-kl' as const) : ('skew-reverse-kl' as const),
    skew: expectSkew(opts?.skew),
  };
}

export function skewKl(student: Tensor, teacher: Tensor, opts?: SkewKlOptions): LossResult {
  return runEngine(student, teacher, opts, spec(opts), ['skew', 'direction']);
}

export function skewKlAsync(student: Tensor, teacher: Tensor, opts?: SkewKlOptions): Promise<LossResult> {
  return runEngineAsync(student, teacher, opts, spec(opts), ['skew', 'direction']);
}
