/**
 * topk (k = 64, log-probs out): the offline teacher-store extraction. Traffic: the
 * logits read once; values (f32), ids (i32) and tail log-mass written. Skipped, with a
 * note, while lib/index.ts does not export topk or the addon says it is not implemented.
 */
import type { Tensor } from '../lib/index.js';
import { TOPK_JS_K } from './contenders/js_loop.js';
import { disposeOutputs, optionalExport, DTYPE_BYTES, type CaseData, type OpSpec } from './harness.js';

export const TOPK_K = TOPK_JS_K;
type TopkFn = (logits: Tensor, k: number, opts?: Record<string, unknown>) => Record<string, Tensor>;

export const ops: OpSpec[] = [
  {
    name: 'topk',
    title: `topk k=${TOPK_K} (log-probs + tail)`,
    suite: 'topk',
    dtypes: ['f32', 'bf16'],
    unavailable: () => (optionalExport<TopkFn>('topk') ? undefined : 'topk is not exported by lib/index.ts in this build'),
    // A size-k min-heap partial sort with the tail summed in the same pass (js_loop.ts);
    // on CUDA, torch.topk + logsumexp (bench/contenders/torch_bench.py).
    contenders: { js: 'topk', torch: 'topk' },
    traffic: ({ N, V }, dt) => ({ read: N * V * DTYPE_BYTES[dt], written: N * Math.min(TOPK_K, V) * 8 + 4 * N }),
    make(d: CaseData) {
      const topk = optionalExport<TopkFn>('topk')!;
      const k = Math.min(TOPK_K, d.V);
      const call = () => topk(d.teacher, k, { output: 'logprobs' });
      return {
        run() {
          disposeOutputs(call());
          d.sync();
        },
        value() {
          const r = call();
          const t = r.tailLogProb!.toArray() as Float32Array;
          let s = 0;
          for (let i = 0; i < t.length; i++) s += t[i]!;
          disposeOutputs(r);
          return s;
        },
      };
    },
  },
];
