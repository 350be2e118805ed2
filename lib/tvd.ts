/** tvd: total variation distance ½ Σ |p − q|, with its (sub)gradient q ⊙ (h − Σ q h)/T, h = ½ sign(q − p). */
import { runEngine, runEngineAsync, type LossOptions, type LossResult } from './divergence.js';
import type { Tensor } from './tensor.js';

export function tvd(student: Tensor, teacher: Tensor, opts?: LossOptions): LossResult {
  return runEngine(student, teacher, opts, { op: 'tvd', divergence: 'tvd' });
}

export function tvdAsync(student: Tensor, teacher: Tensor, opts?: LossOptions): Promise<LossResult> {
  return runEngineAsync(student, teacher, opts, { op: 'tvd', divergence: 'tvd' });
}
