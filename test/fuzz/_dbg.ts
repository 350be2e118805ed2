import * as kd from '../../lib/index.js';
import { buildMatrix } from './inputs.js';
import { logSoftmax, logsumexp, mulberry32 } from '../reference/common.js';
import { sparseRowLoss } from '../reference/sparse.js';
const v = 17, n = 28, k = 3;
const sm = buildMatrix({ rows: n, used: v, width: v, ld: v, dtype: 'f32', seed: 1, scale: 3, peaked: true, specials: [] }, 's');
const tm = buildMatrix({ rows: n, used: v, width: v, ld: v, dtype: 'f32', seed: 2, scale: 3, peaked: true, specials: [] }, 't');
const rng = mulberry32(11);
for (let i = 0; i < n; i++) {
  const t = tm.ref.subarray(i * v, (i + 1) * v);
  const logp = logSoftmax(t, 1);
  const perm = Array.from({ length: v }, (_, j) => j);
  for (let j = 0; j < k; j++) { const r = j + Math.floor(rng() * (v - j)); [perm[j], perm[r]] = [perm[r]!, perm[j]!]; }
  const ids = perm.slice(0, k);
  if (i !== 12) continue;
  const vals = ids.map((id) => Math.fround(logp[id]!));
  const rest: number[] = []; for (let j = 0; j < v; j++) if (!ids.includes(j)) rest.push(logp[j]!);
  const tail = Math.fround(logsumexp(rest));
  const z = Array.from(sm.ref.subarray(i * v, (i + 1) * v));
  console.log('z', z.map(x => x.toFixed(2)).join(' '));
  console.log('logq', Array.from(logSoftmax(z)).map(x => x.toFixed(1)).join(' '));
  console.log('ids', ids, 'vals', vals, 'tail', tail);
  const ref = sparseRowLoss(z, ids, 'bucket', 1, { values: vals, tailLogProb: tail });
  const r = kd.sparseKlDiv(kd.tensor(Float32Array.from(z), [1, v]), { indices: kd.tensor(Int32Array.from(ids), [1, k]), values: kd.tensor(Float32Array.from(vals), [1, k]), tailLogProb: kd.tensor(Float32Array.of(tail), [1]) }, { tail: 'bucket' });
  console.log('native', r.loss.item(), Array.from(r.grad!.toArray()).map(x => x.toExponential(2)).join(' '));
  console.log('ref   ', ref.loss, Array.from(ref.grad).map(x => x.toExponential(2)).join(' '));
}
