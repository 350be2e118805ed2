/**
 * klDiv: forward KL(p‖q) = Σ p (log p − log q) (mode-covering, Hinton's KD), or
 * reverse KL(q‖p) = Σ q (log q − log p) (mode-seeking, MiniLLM), with
 * q = softmax(student/T), p = softmax(teacher/T). Loss and gradient in one pass.
 */
import { runEngine, runEngineAsync, type LossOptions, type LossResult } from './divergence.js';
import type { Tensor } from './tensor.js';
import { expectOneOf } from './validate.js';

export interface KlDivOptions extends LossOptions {
  /** 'forward' (default): KL(teacher ‖ student); 'reverse': KL(student ‖ teacher). */
  direction?: 'forward' | 'reverse';
}

function spec(opts?: KlDivOptions) {
  const direction = opts?.direction === undefined ? 'forward' : expectOneOf('direction', opts.direction, ['forward', 'reverse'] as const);
  return { op: 'klDiv', divergence: direction === 'forward' ? ('forward-kl' as const) : ('reverse-kl' as const) };
}

export function klDiv(student: Tensor, teacher: Tensor, opts?: KlDivOptions): LossResult {
  return runEngine(student, teacher, opts, spec(opts), ['direction']);
}

export function klDivAsync(student: Tensor, teacher: Tensor, opts?: KlDivOptions): Promise<LossResult> {
  return runEngineAsync(student, teacher, opts, spec(opts), ['direction']);
}
