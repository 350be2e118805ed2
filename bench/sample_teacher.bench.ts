/**
 * sampleTeacher (64 draws per token, Sparse Logit Sampling): ids and importance weights.
 * Traffic: the logits read once; ids, weights (and teacher log-probs) written. Skipped,
 * with a note, while lib/index.ts does not export it or the addon says it is not implemented.
 */
import type { Tensor } from '../lib/index.js';
import { disposeOutputs, optionalExport, DTYPE_BYTES, type CaseData, type OpSpec } from './harness.js';

export const SAMPLES = 64;
type SampleFn = (logits: Tensor, n: number, opts?: Record<string, unknown>) => Record<string, Tensor>;

export const ops: OpSpec[] = [
  {
    name: 'sample-teacher',
    title: `sampleTeacher n=${SAMPLES}`,
    suite: 'sample_teacher',
    aliases: ['sampleteacher', 'sample'],
    dtypes: ['f32', 'bf16'],
    unavailable: () => (optionalExport<SampleFn>('sampleTeacher') ? undefined : 'sampleTeacher is not exported by lib/index.ts in this build'),
    traffic: ({ N, V }, dt) => ({ read: N * V * DTYPE_BYTES[dt], written: N * SAMPLES * 12 }),
    make(d: CaseData) {
      const sampleTeacher = optionalExport<SampleFn>('sampleTeacher')!;
      const call = () => sampleTeacher(d.teacher, SAMPLES, { seed: 1 });
      return {
        run() {
          disposeOutputs(call());
          d.sync();
        },
        value() {
          const r = call();
          const w = r.weights!.toArray() as Float32Array;
          let s = 0;
          for (let i = 0; i < w.length; i++) s += w[i]!;
          disposeOutputs(r);
          return s;
        },
      };
    },
  },
];
