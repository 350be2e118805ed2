/**
 * klDiv, forward KL(p‖q) and reverse KL(q‖p): loss + gradient in one call, defaults
 * (T = 1, 'batchmean'), the gradient written into a preallocated tensor (`grad: G`, as
 * a training loop reuses its buffer). Traffic: read student and teacher, write the gradient.
 */
import * as kd from '../lib/index.js';
import { disposeOutputs, lossTraffic, type CaseData, type OpSpec } from './harness.js';

function klCase(direction: 'forward' | 'reverse') {
  return (d: CaseData) => {
    const keep = [d.grad];
    const call = () => kd.klDiv(d.student, d.teacher, { direction, grad: d.grad });
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
    name: 'forward-kl',
    title: 'klDiv forward: loss + grad',
    suite: 'kl_div',
    aliases: ['kl', 'kl-div', 'kldiv', 'fkl'],
    dtypes: ['f32', 'bf16'],
    traffic: (s, dt) => lossTraffic(s, dt),
    make: klCase('forward'),
    contenders: { js: 'forward-kl', tfjs: 'forward-kl', torch: 'forward-kl' },
  },
  {
    name: 'reverse-kl',
    title: 'klDiv reverse: loss + grad',
    suite: 'kl_div',
    aliases: ['kl', 'kl-div', 'kldiv', 'rkl'],
    dtypes: ['f32', 'bf16'],
    traffic: (s, dt) => lossTraffic(s, dt),
    make: klCase('reverse'),
    contenders: { js: 'reverse-kl', tfjs: 'reverse-kl', torch: 'reverse-kl' },
  },
];
