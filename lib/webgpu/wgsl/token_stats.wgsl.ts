/**
 * tokenStats in WGSL: one workgroup per token (row), no gradient, no selection.
 *
 * Per row, q = softmax(z/T) and p = softmax(t/T) (teacher log-probs at T = 1: log p = t
 * as given, not renormalised: the rule of the CPU engine, native/cpu/token_stats.cc):
 *   forwardKl      = Σ p (log p − log q)        reverseKl      = Σ q (log q − log p)
 *   studentEntropy = −Σ q log q                  teacherEntropy = −Σ p log p
 * (a term is 0 where its weight is 0: −inf logits give 0 log 0 = 0), and with a sampled
 * id s: log q_s, log p_s and teacherRank = #{j : t_j > t_s} (strictly; on the raw
 * values, since T > 0 keeps the order).
 *
 * Shape: WG threads per row; thread l owns the columns j ≡ l (mod WG) (coalesced).
 *   pass 1: per thread an online (max, Σ e^{(x−max)/T}) for both rows (common lse_push,
 *           on x/T), combined by the fixed pairwise tree wg_lse: m and log S per side;
 *   pass 2: the row again (the statistics need the row's log-normaliser first; a second
 *           read of a row still in cache), per element lq = x/T − lse_q, lp likewise,
 *           four f32 sums and the rank count, each reduced by a fixed tree. No float
 *           atomics: bitwise the same result on every run. Per-element log-probs keep
 *           each term's error at u·(|x|/T + log V), the bound test/tolerances.ts allows.
 * The seven outputs go to one [7, N] u32 scratch (f32 bits; the rank as i32 bits) that
 * the launcher copies into the op's tensors: fewer storage bindings than the 8 per
 * stage that every WebGPU adapter offers.
 */
import { COMMON_WGSL, REDUCE_WGSL, arrayType, loadFn, type WgslDType } from './common.wgsl.js';

export interface TokenStatsVariant {
  sDtype: WgslDType;
  tDtype: WgslDType;
  sampled: boolean;
}

export function tokenStatsKey(v: TokenStatsVariant): string {
  return `tokenStats:${v.sDtype}:${v.tDtype}:${v.sampled ? 'sampled' : '-'}`;
}

/** Params: 12 words (48 bytes), written by ../token_stats.ts. */
export function tokenStatsWgsl(v: TokenStatsVariant): string {
  return /* wgsl */ `
${COMMON_WGSL}
${REDUCE_WGSL}
struct Params {
  n: u32, v: u32, lds: u32, ldt: u32,
  s_off: u32, t_off: u32, t_raw: u32, inv_t: f32,
  samp_off: u32, _p0: u32, _p1: u32, _p2: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> zs: ${arrayType(v.sDtype)};
@group(0) @binding(2) var<storage, read> tt: ${arrayType(v.tDtype)};
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
${v.sampled ? '@group(0) @binding(4) var<storage, read> sampled: array<i32>;' : ''}
${loadFn('load_z', 'zs', v.sDtype)}
${loadFn('load_t', 'tt', v.tDtype)}

var<workgroup> red_u: array<u32, WG>;
fn wg_sum_u32(tid: u32, x: u32) -> u32 {
  workgroupBarrier();
  red_u[tid] = x;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (tid < s) { red_u[tid] = red_u[tid] + red_u[tid + s]; }
    workgroupBarrier();
  }
  return red_u[0];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let row = group_index(wid);
  if (row >= P.n) { return; }  // the whole workgroup: row is uniform
  let V = P.v;
  let it = P.inv_t;
  let zb = P.s_off + row * P.lds;
  let tb = P.t_off + row * P.ldt;
  let raw = P.t_raw != 0u;
  let ip = select(it, 1.0, raw);

  // ---- pass 1: online (max, sum) of x/T per thread, then the fixed tree ------------------
  var aq = lse_empty();
  var ap = lse_empty();
  for (var j = tid; j < V; j += WG) {
    aq = lse_push(aq, load_z(zb + j) * it);
    ap = lse_push(ap, load_t(tb + j) * it);
  }
  let lse_q = lse_value(wg_lse(tid, aq));
  let lse_p = select(lse_value(wg_lse(tid, ap)), 0.0, raw);  // raw log-probs: not renormalised

  // ---- pass 2: the statistics ---------------------------------------------------------
  ${v.sampled ? `let sid = sampled[P.samp_off + row];
  let sok = sid >= 0 && u32(sid) < V;       // the TS layer range-checks; never a wild read
  let s_at = u32(select(0, sid, sok));
  let ts = load_t(tb + s_at);` : ''}
  var F = 0.0; var R = 0.0; var HQ = 0.0; var HP = 0.0;
  var rank = 0u;
  for (var j = tid; j < V; j += WG) {
    let z = load_z(zb + j);
    let t = load_t(tb + j);
    let lq = z * it - lse_q;
    let lp = t * ip - lse_p;
    let q = exp0(lq);
    let p = exp0(lp);
    F += mul0(p, lp - lq);
    HP -= mul0(p, lp);
    R += mul0(q, lq - lp);
    HQ -= mul0(q, lq);
    ${v.sampled ? 'if (t > ts) { rank += 1u; }' : ''}
  }
  let fr = wg_sum2(tid, vec2<f32>(F, R));
  let hh = wg_sum2(tid, vec2<f32>(HQ, HP));
  ${v.sampled ? 'let rk = wg_sum_u32(tid, rank);' : ''}
  if (tid == 0u) {
    let n = P.n;
    out[row] = bitcast<u32>(fr.x);
    out[n + row] = bitcast<u32>(fr.y);
    out[2u * n + row] = bitcast<u32>(hh.x);
    out[3u * n + row] = bitcast<u32>(hh.y);
    ${v.sampled ? `out[4u * n + row] = bitcast<u32>(select(f32_nan(), load_z(zb + s_at) * it - lse_q, sok));
    out[5u * n + row] = bitcast<u32>(select(f32_nan(), ts * ip - lse_p, sok));
    out[6u * n + row] = bitcast<u32>(select(-1, i32(rk), sok));` : ''}
  }
}
`;
}
