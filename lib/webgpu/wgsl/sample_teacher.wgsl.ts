/**
 * sampleTeacher in WGSL: one workgroup per row, drawing the same ids as the CPU and CUDA
 * kernels bit for bit (the algorithm is native/common/sample_teacher.h's):
 *
 *   m      = max_j x_j; a row with a NaN, a +inf or no finite entry is invalid: ids 0,
 *            weights and log-probs NaN
 *   c      = tau / T (one f32 division, done on the host: Math.fround of the double
 *            quotient of two f32 values is the correctly rounded f32 quotient)
 *   r_j    = sample_exp((x_j - m) * c)   (0 for x_j = -inf)
 *   q_j    = floor(r_j 2^s), s = 63 - ceil(log2 V)      (uint64 fixed point)
 *   Q      = sum_j q_j                                  (exact integer adds)
 *   draw d : u = sample_random(seed, row, d), t = floor(u Q / 2^64),
 *            id = the smallest j with q_0 + ... + q_j > t
 *   logprob= (x_id - m)/T - log S, S = sum_j e^{(x_j - m)/T}  (= sum_j r_j when tau = 1)
 *   weight = e^logprob Q / (n q_id)
 *
 * Why the ids are bitwise the CPU's. WGSL has no 64-bit integers, its fma() need not be
 * fused, a Vulkan driver may contract a*b + c into an fma and may flush subnormal
 * operands and results of float operations. So nothing that feeds q_j is a float
 * operation:
 *  - 64-bit integers are vec2<u32> (lo, hi): add, sub, xor, shifts, compare, the low
 *    64 bits of a 64x64 product (splitmix64) and the high 64 bits (t = mulhi(u, Q)),
 *    built from 16-bit partial products (every u32 product below is exact).
 *  - the logits are read as raw bits (f32 as u32; f16 widened to f32 bits by integer
 *    code, exact for subnormals too; bf16 by a shift); the row max is an integer max of
 *    order keys (the sign of a zero max is immaterial: x - (+0) = x - (-0) for x != 0,
 *    and for x = +-0 the proposal is sample_exp(+-0) = 1 either way).
 *  - every f32 operation of the chain (x - m = fma(x, 1, -m), (x - m) * c =
 *    fma(d, c, -0), the Cody-Waite reduction, the polynomial, z = f * f, y + 1) is
 *    fma_bits: a correctly rounded f32 fma in integer arithmetic (unpack sign, exponent
 *    and 24-bit significand, normalise subnormal inputs, the exact 48-bit product, align
 *    the addend in a 64-bit frame shifting right with a sticky bit, add or subtract,
 *    normalise, round to nearest even, with gradual underflow to subnormal results and
 *    overflow to inf). Nothing is flushed: subnormal inputs and results are exact IEEE
 *    (they do occur: a subnormal f32 logit, or (x - m) * c with a tiny c). It is written
 *    branch-free where lanes would disagree (shifts, alignment, add / subtract, rounding:
 *    every case computed, select() picks), ~1.5x faster on lavapipe than with branches.
 *    Why one sticky bit suffices: both significands sit in [2^60, 2^62) of the frame with
 *    bit 0 clear; the addend loses bits only when shifted more than 37 places (the
 *    product more than 14), and then the larger operand dominates so the sum is >= 2^59
 *    and is rounded at bit 36 or above; the jammed sum is odd and the exact sum lies in
 *    the open interval around it between two even integers, where no rounding boundary
 *    (a multiple of 2^35) falls, so both round alike.
 *  - the integer n of the reduction (t - 1.5 2^23, exact) is read off t's bits as on the
 *    CPU; n as an f32 is built from its bits.
 *  - the last two steps, r = y 2^n and q = floor(r 2^s), are one integer shift of y's
 *    significand by (exponent of y) + n + s. Equal to the CPU's float product and
 *    float -> u64 conversion: where y 2^n is a normal f32 both products are exact; where it
 *    is subnormal (r < 2^-126) the CPU's q is floor(r 2^s) = 0 (s <= 63) and so is the
 *    shift, which drops every bit of a value below 2^-63.
 *  - two degenerate cases follow the CPU: x - m overflowing to -inf, and c = +inf (tau/T
 *    overflows f32), give r = 0 (sample_exp maps -inf and NaN to 0); when every q_j is 0
 *    (only possible for c = +inf) each draw is id V - 1 with a NaN weight, as on the CPU.
 *    (Where 1/T itself overflows f32, T < 2.9e-39, the log-probs are f32 garbage, NaN
 *    here and +inf on the CPU, whose 1/T is a double.)
 * So r_j, q_j, the prefix sums, t and the search are the CPU's exactly, on any driver.
 * The weights and log-probs go through S, an f32 sum whose last bits depend on the
 * summation order, and through f32 (not double) arithmetic at the ids: they match the
 * CPU to a tolerance (test/webgpu_sample_teacher.test.ts), never bitwise.
 *
 * Kernel shape (WG threads, one workgroup per row; row chunks and a 2-D grid past 65535
 * rows in ../sample_teacher.ts):
 *   1. the row max: strided, coalesced loads, an integer atomicMax of order keys (order
 *      free: deterministic), which also finds NaN / +inf / all -inf rows.
 *   2. the row is split into WG * SUB contiguous sub-chunks of L = ceil(V / (WG SUB))
 *      elements; thread k owns sub-chunks k SUB ... k SUB + SUB - 1 (a contiguous range).
 *      Per element it computes q_j (integer sum per sub-chunk, kept in workgroup memory)
 *      and the term of S (f32: groups of 16 summed, then the groups, then the sub-chunks,
 *      then the fixed tree wg_sum over threads: deterministic, ~20 sequential adds per
 *      rounding chain at V = 151936).
 *   3. a Hillis-Steele scan of the threads' totals (u64, exact) turns the sub-chunk sums
 *      into inclusive prefix sums; the last is Q.
 *   4. draws d = k, k + WG, ...: t = mulhi(u, Q), a binary search over the WG SUB prefix
 *      sums for the first one > t, then a scan of that sub-chunk recomputing q_j until the
 *      prefix passes t; weight and log-prob at the id in f32 (the exponential split as
 *      2^k e^f so that a weight above f32's range of e^logprob is not lost).
 * Reads: the row twice plus at most one sub-chunk per draw. Workgroup memory: WG SUB
 * + WG u64 prefix sums and the 2 KiB reduction scratch (12 KiB at WG = 256, SUB = 4).
 */
import { SAMPLE_SUBCHUNKS } from '../tuning.js';
import { COMMON_WGSL, ORDER_KEY_WGSL, REDUCE_WGSL } from './common.wgsl.js';

/** The pipeline cache key: one pipeline for every dtype and output set (see below). */
export const SAMPLE_TEACHER_KEY = 'sampleTeacher';

/**
 * 64-bit integers as vec2<u32> (x = low word, y = high word) and the splitmix64 stream of
 * native/common/sample_teacher.h. Shift counts are taken modulo 32 by WGSL, so every
 * shift by a variable amount is split by hand.
 */
export const U64_WGSL = /* wgsl */ `
fn u64_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  let lo = a.x + b.x;
  return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}
fn u64_sub(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}
fn u64_lt(a: vec2<u32>, b: vec2<u32>) -> bool { return a.y < b.y || (a.y == b.y && a.x < b.x); }
fn u64_is_zero(a: vec2<u32>) -> bool { return (a.x | a.y) == 0u; }
// a >> k and a << k for k in [0, 63], branch-free (lanes of a SIMD group need not agree
// on k): (w << (31 - s)) << 1 is w << (32 - s) for s in [1, 31] and 0 for s = 0.
fn u64_shr(a: vec2<u32>, k: u32) -> vec2<u32> {
  let s = k & 31u;
  let hi = a.y >> s;
  return select(vec2<u32>((a.x >> s) | ((a.y << (31u - s)) << 1u), hi), vec2<u32>(hi, 0u), k >= 32u);
}
fn u64_shl(a: vec2<u32>, k: u32) -> vec2<u32> {
  let s = k & 31u;
  let lo = a.x << s;
  return select(vec2<u32>(lo, (a.y << s) | ((a.x >> (31u - s)) >> 1u)), vec2<u32>(0u, lo), k >= 32u);
}
fn u64_clz(a: vec2<u32>) -> u32 {
  if (a.y != 0u) { return countLeadingZeros(a.y); }
  return 32u + countLeadingZeros(a.x);
}
// The full 64-bit product of two u32 (16-bit partial products: each exact in u32).
fn mul32_wide(a: u32, b: u32) -> vec2<u32> {
  let a0 = a & 0xffffu; let a1 = a >> 16u;
  let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0; let p11 = a1 * b1;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);  // < 3 * 2^16
  return vec2<u32>((p00 & 0xffffu) | (mid << 16u), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}
// The low 64 bits of a * b.
fn u64_mul_lo(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  let p = mul32_wide(a.x, b.x);
  return vec2<u32>(p.x, p.y + a.x * b.y + a.y * b.x);
}
// floor(a * b / 2^64) (sample_mulhi).
fn u64_mul_hi(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  let p00 = mul32_wide(a.x, b.x);
  let p01 = mul32_wide(a.x, b.y);
  let p10 = mul32_wide(a.y, b.x);
  let p11 = mul32_wide(a.y, b.y);
  // bits 32..63 of the product: p00.hi + p01.lo + p10.lo, whose carries go up
  let s1 = p00.y + p01.x;
  let c1 = select(0u, 1u, s1 < p00.y);
  let s2 = s1 + p10.x;
  let c2 = select(0u, 1u, s2 < s1);
  var hi = u64_add(p11, vec2<u32>(p01.y, 0u));
  hi = u64_add(hi, vec2<u32>(p10.y, 0u));
  return u64_add(hi, vec2<u32>(c1 + c2, 0u));
}
fn u64_xor_shr(a: vec2<u32>, k: u32) -> vec2<u32> { return a ^ u64_shr(a, k); }

// splitmix64 finaliser (sample_mix64).
fn sample_mix64(z0: vec2<u32>) -> vec2<u32> {
  var z = u64_mul_lo(u64_xor_shr(z0, 30u), vec2<u32>(0x1ce4e5b9u, 0xbf58476du));
  z = u64_mul_lo(u64_xor_shr(z, 27u), vec2<u32>(0x133111ebu, 0x94d049bbu));
  return u64_xor_shr(z, 31u);
}
const GOLDEN: vec2<u32> = vec2<u32>(0x7f4a7c15u, 0x9e3779b9u);
// The per-row key of sample_random: mix64(mix64(seed + golden) ^ (row * C1 + C2)), with
// h0 = mix64(seed + golden) computed on the host.
fn sample_row_key(h0: vec2<u32>, row: vec2<u32>) -> vec2<u32> {
  let k = u64_add(u64_mul_lo(row, vec2<u32>(0xd192ed03u, 0xd1b54a32u)), vec2<u32>(0x2f3d8dd7u, 0x8cb92ba7u));
  return sample_mix64(h0 ^ k);
}
// sample_random(seed, row, draw) given the row key.
fn sample_draw_bits(hrow: vec2<u32>, draw: u32) -> vec2<u32> {
  let d1 = u64_add(vec2<u32>(draw, 0u), vec2<u32>(1u, 0u));
  return sample_mix64(u64_add(hrow, u64_mul_lo(d1, GOLDEN)));
}
`;

/**
 * fma_bits(a, b, c): the correctly rounded (to nearest, ties to even) f32 a * b + c of
 * the f32 values with bits a, b, c (finite: zeros and subnormals included), as bits, in
 * integer arithmetic only (see the header: subnormal results exact, overflow to inf).
 */
export const SOFT_FMA_WGSL = /* wgsl */ `
// x * 2^e, x in (0, 2^63) (u64), rounded to an f32 with sign bit sign (to nearest even;
// gradual underflow; overflow to inf). Branch-free: every case is computed, select picks.
fn f32_round_pack(sign: u32, x: vec2<u32>, e: i32) -> u32 {
  let msb = 63 - i32(u64_clz(x));
  let be = msb + e + 127;                 // the biased exponent if the result is normal
  // bits below the result's last place (subnormal: the last place is 2^-149)
  let sh = select(msb - 23, -149 - e, be < 1);
  // sh <= 0: x < 2^24, shifted left exactly
  let exact = x.x << u32(clamp(-sh, 0, 31));
  // 1 <= sh <= 63: the top bits and round to nearest even on the remainder
  let s = u32(clamp(sh, 1, 63));
  let q = u64_shr(x, s);                  // < 2^24 when sh is in range
  let rem = u64_sub(x, u64_shl(q, s));
  let half = u64_shl(vec2<u32>(1u, 0u), s - 1u);
  let up = u64_lt(half, rem) || (all(rem == half) && (q.x & 1u) == 1u);
  var mant = select(q.x + select(0u, 1u, up), exact, sh <= 0);
  mant = select(mant, 0u, sh >= 64);      // x < 2^63 <= half the last place: 0
  // normal: a carry to 2^24 bumps the exponent (254 -> inf); subnormal: a carry to 2^23
  // is the least normal
  var bits = select((u32(be - 1) << 23u) + mant, mant, be < 1);
  bits = select(bits, 0x7f800000u, be > 254);
  return sign | bits;
}

// a >> k with the bits shifted out ORed into bit 0 (any k >= 0), branch-free.
fn u64_shr_jam(a: vec2<u32>, k: u32) -> vec2<u32> {
  let kk = min(k, 63u);
  let r = u64_shr(a, kk);
  let lost = any(u64_shl(r, kk) != a);
  let big = k >= 64u;                     // everything shifted out
  let res = select(r, vec2<u32>(0u, 0u), big);
  return vec2<u32>(res.x | select(0u, 1u, select(lost, !u64_is_zero(a), big)), res.y);
}

fn fma_bits(a: u32, b: u32, c: u32) -> u32 {
  let sp = (a ^ b) & 0x80000000u;
  let sc = c & 0x80000000u;
  var ea = i32((a >> 23u) & 0xffu);
  var eb = i32((b >> 23u) & 0xffu);
  var ec = i32((c >> 23u) & 0xffu);
  var ma = a & 0x7fffffu;
  var mb = b & 0x7fffffu;
  var mc = c & 0x7fffffu;
  if (ea == 0) { ea = 1; } else { ma |= 0x800000u; }
  if (eb == 0) { eb = 1; } else { mb |= 0x800000u; }
  if (ec == 0) { ec = 1; } else { mc |= 0x800000u; }
  if (ma == 0u || mb == 0u) {
    if (mc == 0u) { return sp & sc; }     // (+-0) + (+-0): -0 only if both are -0
    return c;                             // 0 + c = c exactly
  }
  // significands to [2^23, 2^24) (subnormal inputs)
  let la = countLeadingZeros(ma) - 8u;
  let lb = countLeadingZeros(mb) - 8u;
  ma = ma << la;
  mb = mb << lb;
  ea -= i32(la);
  eb -= i32(lb);
  let prod = mul32_wide(ma, mb);          // in [2^46, 2^48): a * b = prod * 2^(ea + eb - 300)
  if (mc == 0u) { return f32_round_pack(sp, prod, ea + eb - 300); }  // p + (+-0) = p
  let lc = countLeadingZeros(mc) - 8u;
  mc = mc << lc;
  ec -= i32(lc);
  // a 64-bit frame: p in [2^60, 2^62), q = c's significand in [2^60, 2^61)
  var p = u64_shl(prod, 14u);
  var q = vec2<u32>(0u, mc << 5u);
  let ep = ea + eb - 314;
  let eq = ec - 187;
  // align the smaller exponent to the larger (one of the two shifts is by 0)
  q = u64_shr_jam(q, u32(max(ep - eq, 0)));
  p = u64_shr_jam(p, u32(max(eq - ep, 0)));
  let e = max(ep, eq);
  // add (same signs) or subtract the smaller magnitude from the larger
  let q_lt_p = u64_lt(q, p);
  let same = sp == sc;
  let x = select(select(u64_sub(q, p), u64_sub(p, q), q_lt_p), u64_add(p, q), same);
  if (u64_is_zero(x)) { return 0u; }      // exact cancellation: +0
  return f32_round_pack(select(select(sc, sp, q_lt_p), sp, same), x, e);
}
`;

/**
 * q_j = floor(sample_exp(a) 2^s) and the f32 r_j (for S when tau = 1), from the bits of
 * a = (x - m) c; sample_exp of native/common/sample_teacher.h step by step in fma_bits.
 */
export const SAMPLE_FIXED_WGSL = /* wgsl */ `
const F_ONE: u32 = 0x3f800000u;
const F_NEG_ZERO: u32 = 0x80000000u;

struct Prop { q: vec2<u32>, r: f32 }

// The f32 bits of the integer k in [-126, 0] (exact).
fn small_int_bits(k: i32) -> u32 {
  if (k == 0) { return 0u; }
  let u = u32(-k);
  let p = 31u - countLeadingZeros(u);
  return 0x80000000u | ((p + 127u) << 23u) | ((u << (23u - p)) & 0x7fffffu);
}

const A_MIN: u32 = 0xc2ae0000u;  // -87.0f

// Domain: a <= 0 (a = (x - m) c with x <= m and c >= 0), so n <= 0.
fn sample_prop(a: u32, shift: u32) -> Prop {
  // zero = !(a > -87): a NaN, or a <= -87
  let nan = (a & 0x7fffffffu) > 0x7f800000u;
  if (nan || ((a & 0x80000000u) != 0u && (a & 0x7fffffffu) >= (A_MIN & 0x7fffffffu))) { return Prop(vec2<u32>(0u, 0u), 0.0); }
  // a = +-0 (the max itself; every element when tau = 0): the steps below give t = 1.5 2^23,
  // n = 0, f = +0, y = 0 + 1 = 1 exactly, so r = 1 and q = 2^s; taken as a shortcut.
  if ((a & 0x7fffffffu) == 0u) { return Prop(u64_shl(vec2<u32>(1u, 0u), shift), 1.0); }
  let t = fma_bits(a, 0x3fb8aa3bu, 0x4b400000u);         // fma(a, 1.44269504088896341f, 12582912.0f)
  let ni = i32(t) - i32(0x4b400000u);                    // in [-126, 0]
  let n = small_int_bits(ni);
  var f = fma_bits(n, 0xbf318000u, a);                   // fma(n, -0.693359375f, a)
  f = fma_bits(n, 0x395e8083u, f);                       // fma(n, 2.12194440e-4f, f)
  let z = fma_bits(f, f, F_NEG_ZERO);                    // f * f
  var y = 0x39506967u;                                   // 1.9875691500e-4f
  y = fma_bits(y, f, 0x3ab743ceu);                       // 1.3981999507e-3f
  y = fma_bits(y, f, 0x3c088908u);                       // 8.3334519073e-3f
  y = fma_bits(y, f, 0x3d2aa9c1u);                       // 4.1665795894e-2f
  y = fma_bits(y, f, 0x3e2aaaaau);                       // 1.6666665459e-1f
  y = fma_bits(y, f, 0x3f000000u);                       // 5.0000001201e-1f
  y = fma_bits(y, z, f);
  y = fma_bits(y, F_ONE, F_ONE);                         // y + 1: in [0.5, 2)
  // q = floor(y 2^ni 2^s) = floor(my 2^(ey - 150 + ni + s)): exact (see the header)
  let my = (y & 0x7fffffu) | 0x800000u;
  let sh = i32((y >> 23u) & 0xffu) - 150 + ni + i32(shift);
  var q = vec2<u32>(0u, 0u);
  if (sh >= 0) { q = u64_shl(vec2<u32>(my, 0u), u32(sh)); } else if (sh > -32) { q = vec2<u32>(my >> u32(-sh), 0u); }
  // r as an f32 (for S only): y * 2^ni, a normal scale factor for ni >= -126
  let r = bitcast<f32>(y) * bitcast<f32>(u32(ni + 127) << 23u);
  return Prop(q, r);
}
`;

/**
 * The kernel. One pipeline serves f32 / f16 / bf16 logits and the optional log-probs
 * (a uniform `dtype` and `has_lp`): the work per element is dozens of integer soft-float
 * operations, so a uniform branch per load costs nothing measurable, while each separate
 * variant costs a software Vulkan driver ~10 s to compile. Params: 20 words (80 bytes),
 * written by ../sample_teacher.ts; binding 4 is a 4-byte placeholder without log-probs.
 */
export function sampleTeacherWgsl(): string {
  return /* wgsl */ `
${COMMON_WGSL}
${ORDER_KEY_WGSL}
${REDUCE_WGSL}
${U64_WGSL}
${SOFT_FMA_WGSL}
${SAMPLE_FIXED_WGSL}
struct Params {
  n: u32, v: u32, ld: u32, x_off: u32,
  ns: u32, row0: u32, shift: u32, chunk_len: u32,
  c_bits: u32, c_inf: u32, tau_one: u32, inv_t: f32,
  h0_lo: u32, h0_hi: u32, idx_off: u32, w_off: u32,
  lp_off: u32, has_lp: u32, dtype: u32, _p0: u32,   // dtype: 0 f32, 1 f16, 2 bf16
}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> xs: array<u32>;
@group(0) @binding(2) var<storage, read_write> idxs: array<i32>;
@group(0) @binding(3) var<storage, read_write> wts: array<f32>;
@group(0) @binding(4) var<storage, read_write> lps: array<f32>;

// IEEE half bits -> f32 bits, exact (subnormal halves are normal f32 values).
fn f16_bits_to_f32_bits(h: u32) -> u32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 31u) { return s | 0x7f800000u | (m << 13u); }
  if (e == 0u) {
    if (m == 0u) { return s; }
    let p = 31u - countLeadingZeros(m);                  // value m 2^-24 = 2^(p - 24) (m / 2^p)
    return s | ((p + 103u) << 23u) | ((m << (23u - p)) & 0x7fffffu);
  }
  return s | ((e + 112u) << 23u) | (m << 13u);
}
// Element e (from the binding's start) as f32 bits.
fn load_bits(e: u32) -> u32 {
  if (P.dtype == 0u) { return xs[e]; }
  let h = (xs[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu;
  if (P.dtype == 2u) { return h << 16u; }
  return f16_bits_to_f32_bits(h);
}


// q_j of an element (bits xb) given the row max m and c (bits); r_j as an f32.
fn element_prop(xb: u32, m: u32) -> Prop {
  if (xb == 0xff800000u || P.c_inf != 0u) { return Prop(vec2<u32>(0u, 0u), 0.0); }
  let d = fma_bits(xb, F_ONE, m ^ 0x80000000u);          // x - m
  if (d == 0xff800000u) { return Prop(vec2<u32>(0u, 0u), 0.0); }  // overflowed: (-inf) c -> r = 0
  return sample_prop(fma_bits(d, P.c_bits, F_NEG_ZERO), P.shift);  // (x - m) * c
}

// The term of S = sum e^{(x - m)/T} (an f32 tolerance path; -inf adds exactly 0).
fn s_term(xb: u32, mf: f32, pr: Prop) -> f32 {
  if (P.tau_one != 0u) { return pr.r; }
  if (xb == 0xff800000u) { return 0.0; }
  return exp((bitcast<f32>(xb) - mf) * P.inv_t);
}

// e^lp * ratio (lp <= 0 up to rounding) without losing a result that is an f32 while
// e^lp alone would underflow: 2^k e^f, |f| <= ln2/2, and the 2^k applied last in steps.
fn exp_times(lp: f32, ratio: f32) -> f32 {
  if (is_neg_inf(lp) || lp < -208.0) { return 0.0; }   // e^lp ratio < 2^-300 2^64 * 2: 0 in f32
  let kf = floor(lp * 1.44269504 + 0.5);               // |k| <= 301: k * 0.693359375 is exact
  let f = (lp - kf * 0.693359375) + kf * 2.12194440e-4;
  var w = exp(f) * ratio;
  var k = i32(kf);
  for (var it = 0; it < 4 && k < 0; it++) {
    let step = max(k, -100);
    w = w * bitcast<f32>(u32(step + 127) << 23u);
    k -= step;
  }
  return w;
}

const SUB: u32 = ${SAMPLE_SUBCHUNKS}u;
const NCH: u32 = WG * SUB;
var<workgroup> csum: array<vec2<u32>, NCH>;   // per sub-chunk: the sum of q, then the inclusive prefix sum
var<workgroup> scan: array<vec2<u32>, WG>;
var<workgroup> kmax: atomic<u32>;
var<workgroup> kmax_plain: u32;

fn u64_to_f32(a: vec2<u32>) -> f32 { return f32(a.y) * 4294967296.0 + f32(a.x); }

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let row = group_index(wid);
  if (row >= P.n) { return; }  // the whole workgroup: row is uniform
  let V = P.v;
  let ns = P.ns;
  let xb0 = P.x_off + row * P.ld;
  let ob = row * ns;

  // ---- 1. the row max (order keys) and validity ---------------------------------------
  if (tid == 0u) { atomicStore(&kmax, 0u); }
  workgroupBarrier();
  var lmax = 0u;
  for (var j = tid; j < V; j += WG) { lmax = max(lmax, order_key(load_bits(xb0 + j))); }
  atomicMax(&kmax, lmax);
  workgroupBarrier();
  if (tid == 0u) { kmax_plain = atomicLoad(&kmax); }
  let K = workgroupUniformLoad(&kmax_plain);
  // valid: key(-inf) = 0x007fffff < K < key(+inf) = 0xff800000 (NaN: 0xffffffff)
  if (K <= 0x007fffffu || K >= 0xff800000u) {
    for (var d = tid; d < ns; d += WG) {
      idxs[P.idx_off + ob + d] = 0;
      wts[P.w_off + ob + d] = f32_nan();
      if (P.has_lp != 0u) { lps[P.lp_off + ob + d] = f32_nan(); }
    }
    return;
  }
  let m = key_bits(K);
  let mf = bitcast<f32>(m);

  // ---- 2. q per sub-chunk (exact), S (fixed order) -------------------------------------
  let L = P.chunk_len;
  var tot = vec2<u32>(0u, 0u);
  var s_mine = 0.0;
  for (var k = 0u; k < SUB; k++) {
    let ci = tid * SUB + k;
    let j0 = min(ci * L, V);
    let j1 = min(j0 + L, V);
    var qs = vec2<u32>(0u, 0u);
    var s_chunk = 0.0;
    var s_group = 0.0;
    var cnt = 0u;
    for (var j = j0; j < j1; j++) {
      let xb = load_bits(xb0 + j);
      let pr = element_prop(xb, m);
      qs = u64_add(qs, pr.q);
      s_group += s_term(xb, mf, pr);
      cnt += 1u;
      if (cnt == 16u) { s_chunk += s_group; s_group = 0.0; cnt = 0u; }
    }
    s_chunk += s_group;
    csum[ci] = qs;
    tot = u64_add(tot, qs);
    s_mine += s_chunk;
  }
  let S = wg_sum(tid, s_mine);

  // ---- 3. inclusive prefix sums (Hillis-Steele over the threads' totals) ---------------
  scan[tid] = tot;
  for (var off = 1u; off < WG; off = off << 1u) {
    workgroupBarrier();
    var acc = scan[tid];
    if (tid >= off) { acc = u64_add(acc, scan[tid - off]); }
    workgroupBarrier();
    scan[tid] = acc;
  }
  workgroupBarrier();
  var run = u64_sub(scan[tid], tot);  // exclusive prefix of this thread
  for (var k = 0u; k < SUB; k++) {
    let ci = tid * SUB + k;
    run = u64_add(run, csum[ci]);
    csum[ci] = run;
  }
  workgroupBarrier();
  let Q = csum[NCH - 1u];

  // ---- 4. draws -----------------------------------------------------------------------
  let log_s = log(S);
  let hrow = sample_row_key(vec2<u32>(P.h0_lo, P.h0_hi), vec2<u32>(P.row0 + row, 0u));
  let qf = u64_to_f32(Q);
  let nsf = f32(ns);
  for (var d = tid; d < ns; d += WG) {
    let t = u64_mul_hi(sample_draw_bits(hrow, d), Q);
    var id = V - 1u;
    var qid = vec2<u32>(0u, 0u);
    if (!u64_is_zero(Q)) {
      // the first sub-chunk whose inclusive prefix sum exceeds t (csum[NCH - 1] = Q > t)
      var lo = 0u;
      var hi = NCH - 1u;
      while (lo < hi) {
        let mid = (lo + hi) >> 1u;
        if (u64_lt(t, csum[mid])) { hi = mid; } else { lo = mid + 1u; }
      }
      var base = vec2<u32>(0u, 0u);
      if (lo > 0u) { base = csum[lo - 1u]; }
      let j0 = min(lo * L, V);
      let j1 = min(j0 + L, V);
      for (var j = j0; j < j1; j++) {
        let q = element_prop(load_bits(xb0 + j), m).q;
        let next = u64_add(base, q);
        if (u64_lt(t, next)) { id = j; qid = q; break; }
        base = next;
      }
    }
    let lp = (bitcast<f32>(load_bits(xb0 + id)) - mf) * P.inv_t - log_s;
    var w = f32_nan();  // Q = 0: 0 / 0, as on the CPU
    if (!u64_is_zero(qid)) { w = exp_times(lp, qf / (nsf * u64_to_f32(qid))); }
    idxs[P.idx_off + ob + d] = i32(id);
    wts[P.w_off + ob + d] = w;
    if (P.has_lp != 0u) { lps[P.lp_off + ob + d] = lp; }
  }
}
`;
}
