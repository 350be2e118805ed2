/**
 * tokenStats with a sampled token: per-token forward / reverse KL, both entropies, the
 * sampled token's log-probs and teacher rank, from one read of both rows. No gradient:
 * traffic is the two inputs (+ sampled ids) read and seven [N] vectors written. The
 * check value is Σ forwardKl.
 */
import * as kd from '../lib/index.js';
import { disposeOutputs, type CaseData, type OpSpec, DTYPE_BYTES } from './harness.js';

export const ops: OpSpec[] = [
  {
    name: 'token-stats',
    title: 'tokenStats (+ sampled token): 7 per-token stats',
    suite: 'token_stats',
    aliases: ['tokenstats', 'stats'],
    dtypes: ['f32', 'bf16'],
    traffic: ({ N, V }, dt) => ({ read: 2 * N * V * DTYPE_BYTES[dt] + 4 * N, written: 7 * 4 * N }),
    make(d: CaseData) {
      const call = () => kd.tokenStats(d.student, d.teacher, { sampled: d.sampled, checkSampled: false });
      return {
        run() {
          disposeOutputs(call());
          d.sync();
        },
        value() {
          const r = call();
          const f = r.forwardKl.toArray() as Float32Array;
          let s = 0;
          for (let i = 0; i < f.length; i++) s += f[i]!;
          disposeOutputs(r);
          return s;
        },
      };
    },
    contenders: { js: 'token-stats' },
  },
];
