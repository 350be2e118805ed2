/**
 * topk in WGSL: one workgroup per row. Per row (x [V], row stride ld), the k largest
 * entries sorted descending (ties: lower index first; NaN above everything; −0 == +0),
 * their ids, raw logits or log-probs log softmax(x/T) at the ids, and
 *
 *   tailLogProb = log Σ_{j ∉ top-k} softmax(x/T)_j = −log1p(S_top / S_tail),
 *
 * with S_tail summed over the tail elements themselves, never as 1 − Σ top-k (the
 * definitions and the order are native/common/topk.h's, the same on every backend).
 *
 * Why this shape (a GPU cannot keep the CPU's growing candidate buffer per row):
 *   1. radix select on the 32-bit order key (topk_order_key: larger key = ranked
 *      higher), 8 bits per pass from the top: a 256-bin histogram in workgroup memory
 *      (integer atomics: counts do not depend on the order of the adds), one thread then
 *      scans it for the digit holding the k-th largest key. Four passes give K, the k-th
 *      key, and how many of the elements equal to K belong to the top k. Pass 1 also
 *      finds the row max (an integer atomicMax of keys).
 *   2. only when more elements equal K than are needed (ties at the boundary), the same
 *      select over their indices, ascending (lower index wins), for the last index taken.
 *   3. one pass collects the exactly k winners into workgroup memory (slot order is
 *      arbitrary; the sort fixes it) and sums the tail with a per-thread online
 *      log-sum-exp of (x − max)/T (common lse_push), so a tail of mass 1e-30 keeps full
 *      precision; the threads' states meet in the fixed tree wg_lse.
 *   4. a bitonic sort of the k winners (k ≤ 1024: 8 KiB of keys + ids) on the 64-bit
 *      composite (key, −index), descending: deterministic whatever the collection order.
 * S_top is then a fixed-order f32 sum over the sorted winners. Logs are combined in log
 * space: tail = −(max(d, 0) + log1p(e^{−|d|})), d = log S_top − log S_tail, and
 * log S = log S_top + log1p(e^{log S_tail − log S_top}), with log1p by Kahan's
 * u = 1 + x trick (WGSL has none), so a tail log-prob of −1e-6 keeps its digits.
 * A row whose max is NaN or ±inf has no distribution: tail and log-probs NaN (k = V:
 * tail −inf first), as on the CPU.
 */
import { COMMON_WGSL, ORDER_KEY_WGSL, REDUCE_WGSL, TO16_WGSL, arrayType, loadFn, storeFn, type WgslDType } from './common.wgsl.js';

export interface TopkVariant {
  xDtype: WgslDType;
  valuesDtype: WgslDType;
}

export function topkKey(v: TopkVariant): string {
  return `topk:${v.xDtype}:${v.valuesDtype}`;
}

/** Params: 12 words (48 bytes), written by ../topk.ts. */
export function topkWgsl(v: TopkVariant): string {
  const v16 = v.valuesDtype !== 'f32';
  const rawCopy16 = v16 && v.valuesDtype === v.xDtype;
  return /* wgsl */ `
${COMMON_WGSL}
${ORDER_KEY_WGSL}
${REDUCE_WGSL}
${v16 ? TO16_WGSL : ''}
struct Params {
  n: u32, v: u32, ld: u32, x_off: u32,
  k: u32, kp2: u32, inv_t: f32, out_logprobs: u32,
  val_off: u32, idx_off: u32, tail_off: u32, _p0: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> xs: ${arrayType(v.xDtype)};
@group(0) @binding(2) var<storage, read_write> vals: ${arrayType(v.valuesDtype, true)};
@group(0) @binding(3) var<storage, read_write> idxs: array<i32>;
@group(0) @binding(4) var<storage, read_write> tails: array<f32>;
${loadFn('load_x', 'xs', v.xDtype)}
${v16 ? storeFn('store_val', 'vals', v.valuesDtype) : 'fn store_val(e: u32, x: f32) { vals[e] = x; }'}
${rawCopy16 ? `fn copy_bits(e: u32, src: u32) {
  let b = (xs[src >> 1u] >> ((src & 1u) * 16u)) & 0xffffu;
  let sh = (e & 1u) * 16u;
  atomicAnd(&vals[e >> 1u], ~(0xffffu << sh));
  atomicOr(&vals[e >> 1u], b << sh);
}` : ''}

const MAXK: u32 = 1024u;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> skey: array<u32, MAXK>;
var<workgroup> sidx: array<u32, MAXK>;
var<workgroup> sel: vec3<u32>;   // the chosen digit, the rank left, the digit's count
var<workgroup> kmax: atomic<u32>;
var<workgroup> cnt: atomic<u32>;

// (ka, ia) ranks above (kb, ib): larger key, or the same key and a lower index.
fn above(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
  return ka > kb || (ka == kb && ia < ib);
}
// log(1 + x) for x >= 0, accurate for tiny x (Kahan: log(u) * x / (u - 1), u = 1 + x).
fn log1p_pos(x: f32) -> f32 {
  let u = 1.0 + x;
  if (u == 1.0) { return x; }
  if (!is_finite(u)) { return log(u); }
  return log(u) * (x / (u - 1.0));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let row = group_index(wid);
  if (row >= P.n) { return; }  // the whole workgroup: row is uniform
  let V = P.v;
  let K = P.k;
  let it = P.inv_t;
  let xb = P.x_off + row * P.ld;
  if (tid == 0u) { atomicStore(&kmax, 0u); atomicStore(&cnt, 0u); }

  // ---- 1. radix select of the k-th largest order key, 8 bits per pass ----------------
  var prefix = 0u;
  var pmask = 0u;
  var need = K;       // rank of the wanted key among those matching the prefix
  var eq_count = 0u;  // elements equal to the final key
  for (var lvl = 0u; lvl < 4u; lvl++) {
    let shift = 24u - 8u * lvl;
    atomicStore(&hist[tid], 0u);
    workgroupBarrier();
    var lmax = 0u;
    for (var j = tid; j < V; j += WG) {
      let key = order_key(bitcast<u32>(load_x(xb + j)));
      lmax = max(lmax, key);
      if ((key & pmask) == prefix) { atomicAdd(&hist[(key >> shift) & 255u], 1u); }
    }
    if (lvl == 0u) { atomicMax(&kmax, lmax); }
    workgroupBarrier();
    if (tid == 0u) {
      var cum = 0u;
      var d = 255u;
      loop {
        let h = atomicLoad(&hist[d]);
        if (cum + h >= need || d == 0u) { sel = vec3<u32>(d, need - cum, h); break; }
        cum += h;
        d -= 1u;
      }
    }
    let s = workgroupUniformLoad(&sel);
    prefix |= s.x << shift;
    pmask |= 255u << shift;
    need = s.y;
    eq_count = s.z;
  }
  let kth = prefix;

  // ---- 2. ties at the boundary: the need-th smallest index among key == kth ----------
  var last = 0xffffffffu;  // take the elements equal to kth with index <= last
  if (need < eq_count) {
    var ip = 0u;
    var im = 0u;
    var nd = need;
    for (var lvl = 0u; lvl < 4u; lvl++) {
      let shift = 24u - 8u * lvl;
      if (((V - 1u) >> shift) == 0u) { im |= 255u << shift; continue; }  // digit 0 for every index
      atomicStore(&hist[tid], 0u);
      workgroupBarrier();
      for (var j = tid; j < V; j += WG) {
        if ((j & im) == ip && order_key(bitcast<u32>(load_x(xb + j))) == kth) { atomicAdd(&hist[(j >> shift) & 255u], 1u); }
      }
      workgroupBarrier();
      if (tid == 0u) {
        var cum = 0u;
        var d = 0u;
        loop {
          let h = atomicLoad(&hist[d]);
          if (cum + h >= nd || d == 255u) { sel = vec3<u32>(d, nd - cum, h); break; }
          cum += h;
          d += 1u;
        }
      }
      let s = workgroupUniformLoad(&sel);
      ip |= s.x << shift;
      im |= 255u << shift;
      nd = s.y;
    }
    last = ip;
  }

  // ---- 3. collect the k winners; online log-sum-exp of the tail ----------------------
  let m = bitcast<f32>(key_bits(atomicLoad(&kmax)));   // the row max (NaN if any NaN)
  let finite = is_finite(m);
  var tail = lse_empty();
  for (var j = tid; j < V; j += WG) {
    let x = load_x(xb + j);
    let key = order_key(bitcast<u32>(x));
    if (key > kth || (key == kth && j <= last)) {
      let slot = atomicAdd(&cnt, 1u);
      if (slot < MAXK) { skey[slot] = key; sidx[slot] = j; }
    } else if (finite) {
      tail = lse_push(tail, (x - m) * it);
    }
  }
  for (var s = K + tid; s < P.kp2; s += WG) { skey[s] = 0u; sidx[s] = 0xffffffffu; }  // padding sorts last
  workgroupBarrier();

  // ---- 4. bitonic sort, descending ------------------------------------------------------
  let kp2 = P.kp2;
  for (var size = 2u; size <= kp2; size = size << 1u) {
    for (var stride = size >> 1u; stride > 0u; stride = stride >> 1u) {
      for (var i = tid; i < kp2 / 2u; i += WG) {
        let lo = 2u * i - (i & (stride - 1u));
        let hi = lo + stride;
        let desc = (lo & size) == 0u;
        if (above(skey[lo], sidx[lo], skey[hi], sidx[hi]) != desc) {
          let tk = skey[lo]; skey[lo] = skey[hi]; skey[hi] = tk;
          let ti = sidx[lo]; sidx[lo] = sidx[hi]; sidx[hi] = ti;
        }
      }
      workgroupBarrier();
    }
  }

  // ---- S_top, the tail and log S ------------------------------------------------------
  var st = 0.0;
  if (finite) { for (var s = tid; s < K; s += WG) { st += exp0((bitcast<f32>(key_bits(skey[s])) - m) * it); } }
  let s_top = wg_sum(tid, st);
  let tl = wg_lse(tid, tail);
  let a = log(s_top);                 // >= 0: the max itself is in the top k
  let b = lse_value(tl);              // log S_tail relative to the max (-inf: no tail mass)
  var tail_lp: f32;
  var log_s: f32;
  if (K == V) { tail_lp = f32_neg_inf(); } else if (!finite) { tail_lp = f32_nan(); }
  else if (is_neg_inf(b)) { tail_lp = f32_neg_inf(); }
  else {
    let d = a - b;
    tail_lp = -(max(d, 0.0) + log1p_pos(exp(-abs(d))));
  }
  if (!finite) { log_s = f32_nan(); } else if (is_neg_inf(b)) { log_s = a; } else { log_s = a + log1p_pos(exp(b - a)); }

  // ---- outputs ------------------------------------------------------------------------
  let ob = row * K;
  for (var s = tid; s < K; s += WG) {
    let id = sidx[s];
    idxs[P.idx_off + ob + s] = i32(id);
    let e = P.val_off + ob + s;
    if (P.out_logprobs != 0u) {
      store_val(e, (load_x(xb + id) - m) * it - log_s);
    } else {
      ${rawCopy16 ? 'copy_bits(e, xb + id);' : 'store_val(e, load_x(xb + id));'}
    }
  }
  if (tid == 0u) { tails[P.tail_off + row] = tail_lp; }
}
`;
}
