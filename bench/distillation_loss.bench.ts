/**
 * distillationLoss at its defaults: ½ CE(z, labels) + ½ forward KL, fused; loss +
 * gradient + the per-token hard / soft / total. And the case issue #4 names: ½ CE + ½ JSD
 * (β = 0.5), to hold against `jsd` alone (the CE term should ride in the same pass).
 * Traffic: student, teacher and labels read, the gradient and three [N] f32 vectors written.
 */
import * as kd from '../lib/index.js';
import { disposeOutputs, lossTraffic, type CaseData, type OpCase, type OpSpec } from './harness.js';

/** distillationLoss with its per-token outputs; the gradient goes to the preallocated d.grad. */
function dlCase(opts: kd.DistillationLossOptions) {
  return (d: CaseData): OpCase => {
    const keep = [d.grad];
    const call = () => kd.distillationLoss(d.student, d.teacher, d.labels, { ...opts, grad: d.grad, checkLabels: false });
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
  };
}

export const ops: OpSpec[] = [
  {
    name: 'distillation-loss',
    title: 'distillationLoss (½ CE + ½ fwd KL): loss + grad',
    suite: 'distillation_loss',
    aliases: ['distillation', 'distillationloss', 'dl', 'ce'],
    dtypes: ['f32', 'bf16'],
    traffic: (s, dt) => lossTraffic(s, dt, 4 * s.N, 12 * s.N),
    make: dlCase({}),
    contenders: { js: 'distillation-loss', tfjs: 'distillation-loss' },
  },
  {
    name: 'distillation-loss-jsd',
    title: 'distillationLoss (½ CE + ½ JSD β=0.5): loss + grad',
    suite: 'distillation_loss',
    aliases: ['dl-jsd', 'ce-jsd'],
    dtypes: ['f32', 'bf16'],
    traffic: (s, dt) => lossTraffic(s, dt, 4 * s.N, 12 * s.N),
    make: dlCase({ divergence: 'jsd', beta: 0.5, hardWeight: 0.5, softWeight: 0.5 }),
    contenders: { js: 'distillation-loss-jsd' },
  },
];
