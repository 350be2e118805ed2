/**
 * topk (k = 64, log-probs out): the offline teacher-store extraction. Traffic: the
 * logits read once; values (f32), ids (i32) and tail log-mass written. Skipped, with a
 * note, while lib/index.ts does not export topk or the addon says it is not implemented.
 *
 * Input orderings, each its own case, so that no order of the vocabulary is slow unseen:
 *   topk             i.i.d. (the harness's random peaked teacher logits)
 *   topk-ascending   the same values sorted ascending along the vocabulary, per row
 *   topk-descending  the same values sorted descending
 *   topk-zipf        a frequency-sorted vocabulary: -1.1 log(rank) + N(0, 0.5²)
 *   topk-equal       every logit equal (ties everywhere: lower ids win)
 * Compare each ordering's time with the i.i.d. case at the same shape, dtype and threads.
 */
import * as kd from '../lib/index.js';
import type { Tensor } from '../lib/index.js';
import { TOPK_JS_K } from './contenders/js_loop.js';
import { disposeOutputs, fromBf16, mulberry32, optionalExport, toBf16, DTYPE_BYTES, type BenchDtype, type CaseData, type OpSpec } from './harness.js';

export const TOPK_K = TOPK_JS_K;
type TopkFn = (logits: Tensor, k: number, opts?: Record<string, unknown>) => Record<string, Tensor>;

export type TopkOrdering = 'iid' | 'ascending' | 'descending' | 'zipf' | 'equal';
export const TOPK_ORDERINGS: readonly TopkOrdering[] = ['iid', 'ascending', 'descending', 'zipf', 'equal'];

/**
 * N × V logits in the given ordering, in the case's dtype. 'ascending' / 'descending'
 * sort the i.i.d. case's own values (`iid`, the harness teacher) row by row, so the value
 * distribution is the same and only the order differs.
 */
export function orderedLogits(kind: TopkOrdering, iid: Float32Array | Uint16Array, N: number, V: number, dtype: BenchDtype, seed: number): Float32Array | Uint16Array {
  if (kind === 'iid') return iid;
  const out = dtype === 'f32' ? new Float32Array(N * V) : new Uint16Array(N * V);
  const row = new Float32Array(V);
  const rng = mulberry32(seed);
  for (let i = 0; i < N; i++) {
    if (kind === 'equal') row.fill(0.75);
    else if (kind === 'zipf') {
      for (let j = 0; j < V; j += 2) {
        // Box–Muller, two normals per pair of uniforms
        const r = Math.sqrt(-2 * Math.log(1 - rng()));
        const a = 2 * Math.PI * rng();
        row[j] = -1.1 * Math.log(j + 1) + 0.5 * r * Math.cos(a);
        if (j + 1 < V) row[j + 1] = -1.1 * Math.log(j + 2) + 0.5 * r * Math.sin(a);
      }
    } else {
      for (let j = 0; j < V; j++) row[j] = dtype === 'f32' ? iid[i * V + j]! : fromBf16(iid[i * V + j]!);
      row.sort();
      if (kind === 'descending') row.reverse();
    }
    if (out instanceof Float32Array) out.set(row, i * V);
    else for (let j = 0; j < V; j++) out[i * V + j] = toBf16(row[j]!);
  }
  return out;
}

function topkOp(kind: TopkOrdering): OpSpec {
  const name = kind === 'iid' ? 'topk' : `topk-${kind}`;
  return {
    name,
    title: `topk k=${TOPK_K} (log-probs + tail)${kind === 'iid' ? '' : `, ${kind} logits`}`,
    suite: 'topk',
    dtypes: ['f32', 'bf16'],
    unavailable: () => (optionalExport<TopkFn>('topk') ? undefined : 'topk is not exported by lib/index.ts in this build'),
    // i.i.d.: a size-k min-heap partial sort with the tail summed in the same pass
    // (js_loop.ts). Every ordering: torch.topk + logsumexp (bench/contenders/torch_bench.py),
    // on CUDA and, where /usr/bin/python3 or python3 has torch, on the CPU.
    contenders: kind === 'iid' ? { js: 'topk', torch: 'topk', torchCpu: 'topk' } : { torch: name, torchCpu: name },
    traffic: ({ N, V }, dt) => ({ read: N * V * DTYPE_BYTES[dt], written: N * Math.min(TOPK_K, V) * 8 + 4 * N }),
    make(d: CaseData) {
      const topk = optionalExport<TopkFn>('topk')!;
      const k = Math.min(TOPK_K, d.V);
      let logits = d.teacher;
      if (kind !== 'iid') {
        const data = orderedLogits(kind, d.host.teacher, d.N, d.V, d.dtype, 77);
        logits = kd.tensor(data, [d.N, d.V], { dtype: d.dtype, device: d.kdDevice });
      }
      const call = () => topk(logits, k, { output: 'logprobs' });
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
        dispose() {
          if (logits !== d.teacher) logits.dispose();
        },
      };
    },
  };
}

export const ops: OpSpec[] = TOPK_ORDERINGS.map(topkOp);
