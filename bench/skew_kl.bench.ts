/** skewKl (DistiLLM), forward KL(p ‖ λp + (1−λ)q) at λ = 0.1: loss + gradient, preallocated gradient. */
import * as kd from '../lib/index.js';
import { disposeOutputs, lossTraffic, type CaseData, type OpSpec } from './harness.js';

export const ops: OpSpec[] = [
  {
    name: 'skew-kl',
    title: 'skewKl forward λ=0.1: loss + grad',
    suite: 'skew_kl',
    aliases: ['skew', 'skewkl', 'skew-forward-kl'],
    dtypes: ['f32', 'bf16'],
    traffic: (s, dt) => lossTraffic(s, dt),
    make(d: CaseData) {
      const keep = [d.grad];
      const call = () => kd.skewKl(d.student, d.teacher, { skew: 0.1, direction: 'forward', grad: d.grad });
      return {
        run() {
          disposeOutputs(call(), keep);
          d.sync();
        },
        value() {
          const r = call();
          const v = r.loss.item();
          disposeOutputs(r, keep);
          return v;
        },
      };
    },
    contenders: { js: 'skew-kl', tfjs: 'skew-kl' },
  },
];
