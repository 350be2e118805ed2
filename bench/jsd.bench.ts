/** jsd (β = 0.5, TRL's generalized JSD): loss + gradient, defaults, preallocated gradient. */
import * as kd from '../lib/index.js';
import { disposeOutputs, lossTraffic, type CaseData, type OpSpec } from './harness.js';

export const ops: OpSpec[] = [
  {
    name: 'jsd',
    title: 'jsd β=0.5: loss + grad',
    suite: 'jsd',
    dtypes: ['f32', 'bf16'],
    traffic: (s, dt) => lossTraffic(s, dt),
    make(d: CaseData) {
      const keep = [d.grad];
      const call = () => kd.jsd(d.student, d.teacher, { beta: 0.5, grad: d.grad });
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
    // JSD / forward KL is a headline ratio (its target is <= 1.2): also timed in rounds
    // alternating with forward KL on the same data, since two cases timed minutes apart on
    // this shared machine gave 1.58 and 1.90 for the same sources.
    pairedBaseline: 'forward-kl',
    contenders: { js: 'jsd', tfjs: 'jsd', torch: 'jsd' },
  },
];
