/** tvd: ½ Σ |p − q| and its (sub)gradient, defaults, preallocated gradient. */
import * as kd from '../lib/index.js';
import { disposeOutputs, lossTraffic, type CaseData, type OpSpec } from './harness.js';

export const ops: OpSpec[] = [
  {
    name: 'tvd',
    title: 'tvd: loss + grad',
    suite: 'tvd',
    dtypes: ['f32', 'bf16'],
    traffic: (s, dt) => lossTraffic(s, dt),
    make(d: CaseData) {
      const keep = [d.grad];
      const call = () => kd.tvd(d.student, d.teacher, { grad: d.grad });
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
    contenders: { js: 'tvd', tfjs: 'tvd' },
  },
];
