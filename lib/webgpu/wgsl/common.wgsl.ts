/**
 * WGSL shared by every kernel: fixed-order workgroup reductions, the online (max, sum)
 * merge of a log-sum-exp, special-value tests by bits, and element loads / stores for
 * f32, f16 and bf16 (16-bit data as packed u32 words).
 *
 * Why these shapes:
 *  - Reductions are a fixed tree over workgroup memory (WG lanes, halving each step), so
 *    a result depends only on the data and WG, never on scheduling: deterministic, and no
 *    float atomics anywhere.
 *  - NaN / -inf are tested on the bits: WGSL lets an implementation assume finite floats
 *    in comparisons and max(), so `x != x` may be folded away and max(NaN, y) may be y.
 *    A NaN logit must make its row NaN (the CPU's semantics), so the (max, sum) pairs
 *    carry NaN explicitly, and -inf contributes exactly 0 (no exp(-inf - -inf) = NaN).
 *  - 16-bit elements are read from u32 words (unpack2x16float for f16, a shift for bf16)
 *    so f16 inputs need no `shader-f16` feature at all, and any element offset / row
 *    stride works. 16-bit gradients are written with integer atomicAnd + atomicOr on the
 *    element's half of its word: two rows (workgroups) may share a word at a row edge
 *    (odd V or stride), and the two halves commute, so the result is exact and
 *    deterministic. f32 -> bf16 rounds to nearest even like native/common/dtype.h.
 */

/** Workgroup size of the row kernels (one workgroup per row); see tuning.ts. */
export { WG } from '../tuning.js';
import { WG } from '../tuning.js';

export type WgslDType = 'f32' | 'f16' | 'bf16';

/**
 * Special values, bit tests, the 2-D grid row index and the online log-sum-exp merge,
 * with `const WG` = wg lanes (a power of two; the reductions below assume it).
 */
export function commonWgsl(wg: number = WG): string {
  return COMMON_BODY.replace('const WG: u32 = WG_VALUE;', `const WG: u32 = ${wg}u;`);
}

const COMMON_BODY = /* wgsl */ `
const WG: u32 = WG_VALUE;
const GRID_X: u32 = 65535u;

// Special values from private variables: WGSL rejects a NaN / inf constant expression.
var<private> NAN_BITS: u32 = 0x7fc00000u;
var<private> NEG_INF_BITS: u32 = 0xff800000u;
var<private> INF_BITS: u32 = 0x7f800000u;
fn f32_nan() -> f32 { return bitcast<f32>(NAN_BITS); }
fn f32_neg_inf() -> f32 { return bitcast<f32>(NEG_INF_BITS); }
fn f32_inf() -> f32 { return bitcast<f32>(INF_BITS); }
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn is_neg_inf(x: f32) -> bool { return bitcast<u32>(x) == 0xff800000u; }
fn is_finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }

// The workgroup index over a 2-D grid (runtime.grid): more than 65535 rows need it.
fn group_index(wid: vec3<u32>) -> u32 { return wid.x + wid.y * GRID_X; }

// x * y with 0 * anything = 0 (0 log 0 = 0, p = 0 against a -inf log-ratio).
fn mul0(x: f32, y: f32) -> f32 { return select(x * y, 0.0, x == 0.0); }

// exp that maps -inf to exactly 0 (not exp(NaN) if the backend folds specials).
fn exp0(x: f32) -> f32 { return select(exp(x), 0.0, is_neg_inf(x)); }

// Online log-sum-exp state (m, s): the max and sum_j e^(x_j - m). Empty: (-inf, 0).
// NaN in either side makes the result (NaN, NaN).
fn lse_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  if (is_nan(a.x) || is_nan(b.x)) { return vec2<f32>(f32_nan(), f32_nan()); }
  if (is_neg_inf(b.x)) { return a; }
  if (is_neg_inf(a.x)) { return b; }
  if (a.x >= b.x) { return vec2<f32>(a.x, a.y + b.y * exp(b.x - a.x)); }
  return vec2<f32>(b.x, a.y * exp(a.x - b.x) + b.y);
}

// Adds one element x to the state (x = -inf adds nothing; NaN poisons it).
fn lse_push(a: vec2<f32>, x: f32) -> vec2<f32> {
  if (is_nan(x)) { return vec2<f32>(f32_nan(), f32_nan()); }
  if (is_neg_inf(x)) { return a; }
  if (is_neg_inf(a.x)) { return vec2<f32>(x, 1.0); }
  if (x <= a.x) { return vec2<f32>(a.x, a.y + exp(x - a.x)); }
  return vec2<f32>(x, a.y * exp(a.x - x) + 1.0);
}
fn lse_empty() -> vec2<f32> { return vec2<f32>(f32_neg_inf(), 0.0); }
// log sum e^x of a state: m + log s (-inf for an all -inf row, NaN stays NaN).
fn lse_value(a: vec2<f32>) -> f32 {
  if (is_nan(a.x)) { return f32_nan(); }
  if (is_neg_inf(a.x)) { return f32_neg_inf(); }
  return a.x + log(a.y);
}
`;

/** commonWgsl() with WG = 256 (tuning.ts). */
export const COMMON_WGSL = commonWgsl(WG);

/**
 * native/common/topk.h's topk_order_key on f32 bits, and its inverse: larger key = larger
 * value, every NaN above +inf, -0 as +0 (topk's radix select, sampleTeacher's row max).
 */
export const ORDER_KEY_WGSL = /* wgsl */ `
fn order_key(u0: u32) -> u32 {
  var u = u0;
  if ((u & 0x7fffffffu) > 0x7f800000u) { return 0xffffffffu; }
  if (u == 0x80000000u) { u = 0u; }
  return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}
fn key_bits(key: u32) -> u32 { return select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u); }
`;

/**
 * Fixed-order workgroup reductions (a halving tree over WG lanes). Each starts with a
 * barrier so the scratch can be reused back to back; every lane gets the result.
 * Must be called from uniform control flow by the whole workgroup.
 */
export const REDUCE_WGSL = /* wgsl */ `
var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;

fn wg_sum(tid: u32, v: f32) -> f32 {
  workgroupBarrier();
  red_a[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (tid < s) { red_a[tid] = red_a[tid] + red_a[tid + s]; }
    workgroupBarrier();
  }
  return red_a[0];
}

// Two sums in one tree (same order as two wg_sum calls, half the barriers).
fn wg_sum2(tid: u32, v: vec2<f32>) -> vec2<f32> {
  workgroupBarrier();
  red_a[tid] = v.x;
  red_b[tid] = v.y;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (tid < s) {
      red_a[tid] = red_a[tid] + red_a[tid + s];
      red_b[tid] = red_b[tid] + red_b[tid + s];
    }
    workgroupBarrier();
  }
  return vec2<f32>(red_a[0], red_b[0]);
}

// The row's (max, sum) from each lane's online state.
fn wg_lse(tid: u32, v: vec2<f32>) -> vec2<f32> {
  workgroupBarrier();
  red_a[tid] = v.x;
  red_b[tid] = v.y;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (tid < s) {
      let r = lse_merge(vec2<f32>(red_a[tid], red_b[tid]), vec2<f32>(red_a[tid + s], red_b[tid + s]));
      red_a[tid] = r.x;
      red_b[tid] = r.y;
    }
    workgroupBarrier();
  }
  return vec2<f32>(red_a[0], red_b[0]);
}
`;

/**
 * `fn <name>(e: u32) -> f32`: element e (counted in elements from the start of the
 * binding) of `array` widened to f32. `atomic`: the binding is array<atomic<u32>>
 * (a 16-bit tensor that is also written in place).
 */
export function loadFn(name: string, array: string, dtype: WgslDType, atomic = false): string {
  if (dtype === 'f32') return `fn ${name}(e: u32) -> f32 { return ${array}[e]; }\n`;
  const word = atomic ? `atomicLoad(&${array}[e >> 1u])` : `${array}[e >> 1u]`;
  if (dtype === 'f16') return `fn ${name}(e: u32) -> f32 { return unpack2x16float(${word})[e & 1u]; }\n`;
  return `fn ${name}(e: u32) -> f32 { let w = ${word}; return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (e & 1u) == 1u)); }\n`;
}

/** The WGSL type of a binding holding `dtype` elements. */
export function arrayType(dtype: WgslDType, atomic = false): string {
  if (dtype === 'f32') return 'array<f32>';
  return atomic ? 'array<atomic<u32>>' : 'array<u32>';
}

/** f32 -> 16-bit bits (in the low half of a u32). */
export const TO16_WGSL = /* wgsl */ `
fn f32_to_bf16(x: f32) -> u32 {
  let u = bitcast<u32>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) { return ((u >> 16u) | 0x40u) & 0xffffu; }
  return ((u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u) & 0xffffu;
}
fn f32_to_f16(x: f32) -> u32 { return pack2x16float(vec2<f32>(x, 0.0)) & 0xffffu; }
`;

/**
 * `fn <name>(e: u32, v: f32)`: stores v as element e of `array`. 16-bit: the element's
 * half of its word by atomicAnd + atomicOr (see the header); needs TO16_WGSL.
 */
export function storeFn(name: string, array: string, dtype: WgslDType): string {
  if (dtype === 'f32') return `fn ${name}(e: u32, v: f32) { ${array}[e] = v; }\n`;
  const conv = dtype === 'bf16' ? 'f32_to_bf16' : 'f32_to_f16';
  return `fn ${name}(e: u32, v: f32) {
  let sh = (e & 1u) * 16u;
  atomicAnd(&${array}[e >> 1u], ~(0xffffu << sh));
  atomicOr(&${array}[e >> 1u], ${conv}(v) << sh);
}\n`;
}

/** Element size in bytes. */
export function elemBytes(dtype: WgslDType | 'i32' | 'u8'): number {
  return dtype === 'f32' || dtype === 'i32' ? 4 : dtype === 'u8' ? 1 : 2;
}
