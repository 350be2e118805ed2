/**
 * sparseKlDiv against a top-64 teacher (tail 'bucket'): the student's full-vocabulary
 * softmax, loss + gradient. The sparse teacher comes from topk in the setup (untimed).
 * Traffic: student read, teacher ids / log-probs / tail read, gradient written. Skipped,
 * with a note, while lib/index.ts does not export sparseKlDiv and topk or the addon says
 * they are not implemented.
 */
import type { Tensor } from '../lib/index.js';
import { disposeOutputs, optionalExport, DTYPE_BYTES, type CaseData, type OpSpec } from './harness.js';
import { TOPK_K } from './topk.bench.js';

type TopkFn = (logits: Tensor, k: number, opts?: Record<string, unknown>) => Record<string, Tensor>;
type SparseFn = (student: Tensor, teacher: Record<string, Tensor>, opts?: Record<string, unknown>) => Record<string, Tensor>;

export const ops: OpSpec[] = [
  {
    name: 'sparse-kl-div',
    title: `sparseKlDiv top-${TOPK_K} bucket: loss + grad`,
    suite: 'sparse_kl_div',
    aliases: ['sparsekldiv', 'sparse-kl', 'sparse'],
    dtypes: ['f32', 'bf16'],
    unavailable: () =>
      !optionalExport<SparseFn>('sparseKlDiv')
        ? 'sparseKlDiv is not exported by lib/index.ts in this build'
        : !optionalExport<TopkFn>('topk')
          ? 'sparseKlDiv needs topk (for its teacher), which is not exported in this build'
          : undefined,
    traffic: ({ N, V }, dt) => {
      const k = Math.min(TOPK_K, V);
      return { read: N * V * DTYPE_BYTES[dt] + N * k * 8 + 4 * N, written: N * V * DTYPE_BYTES[dt] };
    },
    make(d: CaseData) {
      const topk = optionalExport<TopkFn>('topk')!;
      const sparseKlDiv = optionalExport<SparseFn>('sparseKlDiv')!;
      const teacher = topk(d.teacher, Math.min(TOPK_K, d.V), { output: 'logprobs' });
      const keep = [d.grad];
      // checkIds: false: the ids come from topk (a trusted store); the check is O(N·k) JS.
      const call = () => sparseKlDiv(d.student, teacher, { tail: 'bucket', grad: d.grad, checkIds: false });
      return {
        run() {
          disposeOutputs(call(), keep);
          d.sync();
        },
        value() {
          const r = call();
          const v = r.loss!.item();
          disposeOutputs(r, keep);
          return v;
        },
        dispose: () => disposeOutputs(teacher),
      };
    },
  },
];
