/**
 * distillationLoss at its defaults: ½ CE(z, labels) + ½ forward KL, fused; loss +
 * gradient + the per-token hard / soft / total. Traffic: student, teacher and labels
 * read, the gradient and three [N] f32 vectors written.
 */
import * as kd from '../lib/index.js';
import { disposeOutputs, lossTraffic, type CaseData, type OpSpec } from './harness.js';

export const ops: OpSpec[] = [
  {
    name: 'distillation-loss',
    title: 'distillationLoss (½ CE + ½ fwd KL): loss + grad',
    suite: 'distillation_loss',
    aliases: ['distillation', 'distillationloss', 'dl', 'ce'],
    dtypes: ['f32', 'bf16'],
    traffic: (s, dt) => lossTraffic(s, dt, 4 * s.N, 12 * s.N),
    make(d: CaseData) {
      const keep = [d.grad];
      const call = () => kd.distillationLoss(d.student, d.teacher, d.labels, { grad: d.grad, checkLabels: false });
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
    contenders: { js: 'distillation-loss', tfjs: 'distillation-loss' },
  },
];
