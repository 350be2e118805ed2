/**
 * sparseKlDiv in WGSL: KD against a sparse teacher (k slots per token: ids with teacher
 * log-probs, or sampled ids with importance weights) with the student's full-vocabulary
 * q = softmax(z/T). One workgroup per token. Losses and gradients (the tail modes of
 * native/common/sparse_kl_div.h; derivations in test/reference/sparse.ts), with P_k the
 * teacher weight at vocabulary id k (0 off the ids):
 *   renormalize  p~ = softmax(values) over the slots
 *                L = Σ p~ (log p~ − log q_id)                    dz = (q − P~)/T
 *   bucket       p = e^values, p_t = e^tailLogProb, q_t = Σ_{m ∉ ids} q_m (summed
 *                directly), S_p = Σ p + p_t
 *                L = Σ p log(p/q_id) + p_t log(p_t/q_t)
 *                dz_k = (q_k S_p − P_k)/T on the ids, (q_k/q_t)(S_p q_t − p_t)/T elsewhere
 *   conditional  q~ = softmax(z_ids/T) over the slots, p~ as above
 *                L = Σ p~ (log p~ − log q~)                      dz = (q~ − P~)/T on the
 *                ids, 0 elsewhere
 *   sampled      L = −Σ w log q_id (ids may repeat)              dz = (q W − W_k)/T
 * Terms with a zero teacher weight are left out (0 log 0 = 0). total = w_i · softWeight · L,
 * grad = gradScale/divisor · w_i · softWeight · dL/dz; unselected rows: 0.
 *
 * Shape (per row):
 *   0. 'bucket': the row's ids are marked in a zeroed bitmap (one bit per vocabulary id,
 *      a scratch the launcher allocates per chunk of rows; integer atomicOr), so that
 *   A. one sweep of z gives the online log-sum-exp of z/T over all V and, for 'bucket',
 *      over the non-id elements: log q_t = lse_tail − lse, never 1 − Σ q_ids (which
 *      cancels when the ids hold nearly all the mass). Fixed-order tree (wg_lse).
 *   S. the slots (thread l owns slots l, l + WG, ...: at most 16 each, in registers):
 *      log q at the ids (read before any gradient write, so grad may alias the student),
 *      the teacher side's row sums (fixed trees), the loss, and the final gradient value
 *      of each distinct id: the slot that holds an id first sums the corrections of all
 *      slots with that id in slot order (ids repeat only for 'sampled'; the scan makes
 *      the result deterministic for any ids). An id outside [0, V) (not checked on the
 *      host for WebGPU ids) makes the row's loss and gradient NaN, never a wild access.
 *   W. the gradient row, coefficient × q_j (from z again), then, after a storage
 *      barrier, the ids overwritten with their own values.
 * All sums f32, fixed order, no float atomics: bitwise reproducible.
 *
 * Bindings: at most 8 storage buffers (WebGPU's default per shader stage): S, IDS, VALS,
 * AUX, GR (not in place), WS, LOSS ('none'), BITS ('bucket'). AUX holds the per-token
 * inputs as u32 words read with bitcast (tailLogProb, labels, weights) and the mask as
 * bytes (4 per word), each from its own offset in P: either the one input bound as it is,
 * or the scratch the pack kernel (sparseAuxWgsl) fills from two or more.
 */
import { COMMON_WGSL, REDUCE_WGSL, TO16_WGSL, arrayType, loadFn, storeFn, type WgslDType } from './common.wgsl.js';

export const SPARSE_TAIL = { renormalize: 0, bucket: 1, conditional: 2, sampled: 3 } as const;

export interface SparseVariant {
  sDtype: WgslDType;
  /** Teacher values dtype (not 'sampled'). */
  vDtype: WgslDType;
  gDtype: WgslDType | null;
  inplace: boolean;
  tail: number;
  labels: boolean;
  mask: boolean;
  weights: boolean;
  lossPerRow: boolean;
}

export function sparseKey(c: SparseVariant): string {
  return `sparseKlDiv:${c.sDtype}:${c.vDtype}:${c.gDtype}:${c.inplace}:${c.tail}:${c.labels}:${c.mask}:${c.weights}:${c.lossPerRow}`;
}

/** Whether the row kernel reads per-token inputs (its AUX binding): 'bucket', labels, mask or weights. */
export function hasAux(c: Pick<SparseVariant, 'tail' | 'labels' | 'mask' | 'weights'>): boolean {
  return c.tail === SPARSE_TAIL.bucket || c.labels || c.mask || c.weights;
}

/** The per-token inputs the pack kernel gathers (at least two: one alone is bound as it is). */
export interface SparseAuxVariant {
  tail: boolean;
  labels: boolean;
  weights: boolean;
  mask: boolean;
}

export function sparseAuxKey(c: SparseAuxVariant): string {
  return `sparseKlDiv:aux:${c.tail}:${c.labels}:${c.weights}:${c.mask}`;
}

/** Threads per workgroup of the pack kernel. */
export const AUX_WG = 64;

/**
 * The pack kernel: copies rows [0, rows) of the chunk's per-token inputs into one buffer,
 * AUX = [tailLogProb | labels | weights] (32-bit words, each section `stride` words) then
 * the mask bytes (4 per word, in token order), so that the row kernel binds them once.
 * Thread t copies word t of each 32-bit section and assembles mask word t (tokens 4t ..
 * 4t + 3; 0 past `rows`). The bits are moved unchanged. Inputs are bound like the row
 * kernel's (any element offset: the mask may start at any byte) and need no COPY_SRC.
 */
export function sparseAuxWgsl(c: SparseAuxVariant): string {
  const decl: string[] = [];
  let b = 2;
  if (c.tail) decl.push(`@group(0) @binding(${b++}) var<storage, read> TLI: array<u32>;`);
  if (c.labels) decl.push(`@group(0) @binding(${b++}) var<storage, read> LABI: array<u32>;`);
  if (c.weights) decl.push(`@group(0) @binding(${b++}) var<storage, read> WI: array<u32>;`);
  if (c.mask) decl.push(`@group(0) @binding(${b++}) var<storage, read> MASKI: array<u32>;`);
  return /* wgsl */ `
const GRID_X: u32 = 65535u;
struct Params {
  rows: u32, tl_in: u32, lab_in: u32, w_in: u32,
  mask_in: u32, tl_out: u32, lab_out: u32, w_out: u32,
  mask_out: u32, pad0: u32, pad1: u32, pad2: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> AUX: array<u32>;
${decl.join('\n')}
@compute @workgroup_size(${AUX_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = (wid.x + wid.y * GRID_X) * ${AUX_WG}u + lid.x;
  if (t >= P.rows) { return; }
  ${c.tail ? 'AUX[P.tl_out + t] = TLI[P.tl_in + t];' : ''}
  ${c.labels ? 'AUX[P.lab_out + t] = LABI[P.lab_in + t];' : ''}
  ${c.weights ? 'AUX[P.w_out + t] = WI[P.w_in + t];' : ''}
  ${c.mask ? `if (t < (P.rows + 3u) / 4u) {
    var w = 0u;
    for (var k = 0u; k < 4u; k++) {
      let r = 4u * t + k;
      if (r < P.rows) {
        let e = P.mask_in + r;  // a byte index
        w |= ((MASKI[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu) << (8u * k);
      }
    }
    AUX[P.mask_out + t] = w;
  }` : ''}
}
`;
}

/** Slots per thread: SPARSE_MAX_SLOTS (4096) / WG. */
export const SLOTS_PER_THREAD = 16;

export function sparseWgsl(c: SparseVariant): string {
  const T = SPARSE_TAIL;
  const sampled = c.tail === T.sampled;
  const bucket = c.tail === T.bucket;
  const grad = c.gDtype !== null;
  const sAtomic = c.inplace && c.sDtype !== 'f32';
  const decl: string[] = [];
  let b = 1;
  decl.push(`@group(0) @binding(${b++}) var<storage, ${c.inplace ? 'read_write' : 'read'}> S: ${arrayType(c.sDtype, sAtomic)};`);
  decl.push(`@group(0) @binding(${b++}) var<storage, read> IDS: array<i32>;`);
  decl.push(`@group(0) @binding(${b++}) var<storage, read> VALS: ${sampled ? 'array<f32>' : arrayType(c.vDtype)};`);
  // the per-token inputs (tailLogProb, labels, weights, mask) as 32-bit words of one binding
  if (hasAux(c)) decl.push(`@group(0) @binding(${b++}) var<storage, read> AUX: array<u32>;`);
  if (grad && !c.inplace) decl.push(`@group(0) @binding(${b++}) var<storage, read_write> GR: ${arrayType(c.gDtype!, c.gDtype !== 'f32')};`);
  // the divergence engine's workspace: [count, divisor, gradScale / divisor, 0, per-row totals...]
  decl.push(`@group(0) @binding(${b++}) var<storage, read_write> WS: array<f32>;`);
  if (c.lossPerRow) decl.push(`@group(0) @binding(${b++}) var<storage, read_write> LOSS: array<f32>;`);
  if (bucket) decl.push(`@group(0) @binding(${b++}) var<storage, read_write> BITS: array<atomic<u32>>;`);
  const gArr = c.inplace ? 'S' : 'GR';

  return /* wgsl */ `
${COMMON_WGSL}
${REDUCE_WGSL}
${grad && c.gDtype !== 'f32' ? TO16_WGSL : ''}
struct Params {
  n: u32, v: u32, lds: u32, s_off: u32,
  k: u32, ids_off: u32, val_off: u32, tl_off: u32,
  lab_off: u32, mask_off: u32, w_off: u32, g_off: u32,
  ldg: u32, row0: u32, loss_off: u32, words: u32,
  ignore_index: i32, inv_t: f32, soft_weight: f32, pad0: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
${decl.join('\n')}
${loadFn('ld_s', 'S', c.sDtype, sAtomic)}
${sampled ? 'fn ld_v(e: u32) -> f32 { return VALS[e]; }' : loadFn('ld_v', 'VALS', c.vDtype)}
${grad ? storeFn('st_g', gArr, c.gDtype!) : ''}

const TAIL: u32 = ${c.tail}u;
const MAXU: u32 = ${SLOTS_PER_THREAD}u;
var<workgroup> bad_any: atomic<u32>;
var<workgroup> bad_u: u32;

fn id_at(e: u32, v: u32) -> u32 {  // a slot's id, or v when outside [0, V)
  let id = IDS[e];
  return select(v, u32(id), id >= 0 && u32(id) < v);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let i = group_index(wid);  // the row within this chunk
  if (i >= P.n) { return; }  // uniform: the whole workgroup leaves
  let tid = lid.x;
  let v = P.v;
  let K = P.k;
  let it = P.inv_t;
  var selected = true;
  ${c.labels ? 'if (bitcast<i32>(AUX[P.lab_off + i]) == P.ignore_index) { selected = false; }' : ''}
  ${c.mask ? 'let me = P.mask_off + i; if (((AUX[me >> 2u] >> ((me & 3u) * 8u)) & 0xffu) == 0u) { selected = false; }' : ''}
  let zb = P.s_off + i * P.lds;
  ${grad ? 'let gb = P.g_off + i * P.ldg;' : ''}
  let ib = P.ids_off + i * K;
  let vb = P.val_off + i * K;
  if (!selected) {
    ${grad ? 'for (var j = tid; j < v; j += WG) { st_g(gb + j, 0.0); }' : ''}
    if (tid == 0u) {
      WS[4u + P.row0 + i] = 0.0;
      ${c.lossPerRow ? 'LOSS[P.loss_off + i] = 0.0;' : ''}
    }
    return;
  }
  if (tid == 0u) { atomicStore(&bad_any, 0u); }
  workgroupBarrier();

  // ---- 0. 'bucket': mark the ids; any id out of range poisons the row -------------------
  var mybad = 0u;
  for (var s = tid; s < K; s += WG) {
    let id = id_at(ib + s, v);
    if (id == v) { mybad = 1u; }
    ${bucket ? 'else { atomicOr(&BITS[i * P.words + (id >> 5u)], 1u << (id & 31u)); }' : ''}
  }
  if (mybad != 0u) { atomicOr(&bad_any, 1u); }
  storageBarrier();
  workgroupBarrier();
  if (tid == 0u) { bad_u = atomicLoad(&bad_any); }
  let bad = workgroupUniformLoad(&bad_u) != 0u;

  // ---- A. log-sum-exp of z/T over the row (and over the non-ids for 'bucket') ----------
  var sa = lse_empty();
  var stl = lse_empty();
  for (var j = tid; j < v; j += WG) {
    let x = ld_s(zb + j) * it;
    sa = lse_push(sa, x);
    ${bucket ? 'if (((atomicLoad(&BITS[i * P.words + (j >> 5u)]) >> (j & 31u)) & 1u) == 0u) { stl = lse_push(stl, x); }' : ''}
  }
  let lse = lse_value(wg_lse(tid, sa));
  ${bucket ? 'let lqt = lse_value(wg_lse(tid, stl)) - lse;  // log q_t (-inf: no tail mass)' : ''}

  // ---- S. the slots -----------------------------------------------------------------------
  var lq: array<f32, MAXU>;
  var gv: array<f32, MAXU>;
  var va = lse_empty();   // renormalize / conditional: log-sum-exp of the values
  var qa = lse_empty();   // conditional: of log q at the ids
  var tw = 0.0;           // sampled: sum of the weights; bucket: sum of e^values
  for (var u = 0u; u < MAXU; u++) {
    let s = tid + u * WG;
    if (s >= K) { break; }
    let id = id_at(ib + s, v);
    lq[u] = ld_s(zb + select(id, 0u, id == v)) * it - lse;
    let val = ld_v(vb + s);
    ${sampled ? 'tw += val;' : bucket ? 'tw += exp(val);' : 'va = lse_push(va, val);'}
    ${c.tail === T.conditional ? 'qa = lse_push(qa, lq[u]);' : ''}
  }
  ${sampled || bucket ? 'let TW = wg_sum(tid, tw);' : ''}
  ${!sampled && !bucket ? 'let vl = lse_value(wg_lse(tid, va));' : ''}
  ${c.tail === T.conditional ? 'let ql = lse_value(wg_lse(tid, qa));' : ''}
  ${bucket ? `let lpt = bitcast<f32>(AUX[P.tl_off + i]);
  let pt = exp0(lpt);
  let sp = TW + pt;` : ''}
  // A: the ids' gradient is A q_id - (their corrections); a_all: everything else, a_all q_j
  ${sampled ? 'let A = TW * it; let a_all = A;' : bucket ? 'let A = sp * it;' : c.tail === T.conditional ? 'let A = 0.0;' : 'let A = it; let a_all = it;'}
  let wrow = ${c.weights ? 'bitcast<f32>(AUX[P.w_off + i])' : '1.0'};
  let f = WS[2] * wrow * P.soft_weight;
  var L = 0.0;
  for (var u = 0u; u < MAXU; u++) {
    let s = tid + u * WG;
    if (s >= K) { break; }
    let id = id_at(ib + s, v);
    let val = ld_v(vb + s);
    ${sampled ? 'L -= mul0(val, lq[u]);'
      : bucket ? 'L += mul0(exp0(val), val - lq[u]);'
      : c.tail === T.conditional ? 'let lp = val - vl; L += mul0(exp0(lp), lp - (lq[u] - ql));'
      : 'let lp = val - vl; L += mul0(exp0(lp), lp - lq[u]);'}
    // the first slot holding this id sums the corrections of all its slots, in slot order
    var first = true;
    for (var s2 = 0u; s2 < s; s2++) { if (id_at(ib + s2, v) == id) { first = false; break; } }
    var corr = 0.0;
    if (first) {
      for (var s2 = s; s2 < K; s2++) {
        if (id_at(ib + s2, v) != id) { continue; }
        let v2 = ld_v(vb + s2);
        ${sampled ? 'corr += v2 * it;'
          : bucket ? 'corr += exp0(v2) * it;'
          : c.tail === T.conditional ? 'corr += (exp0(v2 - vl) - exp0(lq[u] - ql)) * it;'
          : 'corr += exp0(v2 - vl) * it;'}
      }
    }
    gv[u] = select(0.0, f * select(A * exp0(lq[u]) - corr, -corr, A == 0.0), first);
  }
  L = wg_sum(tid, L);
  ${bucket ? 'L += mul0(pt, lpt - lqt);' : ''}
  if (tid == 0u) {
    let tot = select(wrow * P.soft_weight * L, f32_nan(), bad);
    WS[4u + P.row0 + i] = tot;
    ${c.lossPerRow ? 'LOSS[P.loss_off + i] = tot;' : ''}
  }
  ${grad ? `
  storageBarrier();   // every read of z (the ids included) before a gradient write (grad may alias z)
  workgroupBarrier();

  // ---- W. the gradient row ----------------------------------------------------------------
  ${bucket ? 'let tcoef = f * (sp * exp0(lqt) - pt) * it;  // off the ids: (q_j / q_t) tcoef' : c.tail === T.conditional ? '' : 'let fa = f * a_all;'}
  for (var j = tid; j < v; j += WG) {
    let lqj = ld_s(zb + j) * it - lse;
    var g = 0.0;
    ${bucket ? 'if (!is_neg_inf(lqt)) { g = mul0(exp0(lqj - lqt), tcoef); }'
      : c.tail === T.conditional ? ''
      : 'g = mul0(exp0(lqj), fa);'}
    st_g(gb + j, select(g, f32_nan(), bad));
  }
  storageBarrier();
  workgroupBarrier();
  for (var u = 0u; u < MAXU; u++) {
    let s = tid + u * WG;
    if (s >= K) { break; }
    let id = id_at(ib + s, v);
    var first = true;
    for (var s2 = 0u; s2 < s; s2++) { if (id_at(ib + s2, v) == id) { first = false; break; } }
    if (first && id != v && !bad) { st_g(gb + id, gv[u]); }  // a bad row stays all NaN
  }` : ''}
}
`;
}
