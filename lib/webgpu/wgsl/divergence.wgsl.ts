/**
 * divergence (WGSL): the fused forward + backward engine behind klDiv, jsd, tvd, skewKl
 * and distillationLoss on WebGPU. Same semantics and formulas as native/cpu/divergence.cc
 * (see native/common/divergence_math.h); per row i, student z [V] (stride lds), teacher
 * t [V] (stride ldt), x = z / T:
 *   log q_j = (x_j - mx) - log Sx,   Sx = sum_j e^(x_j - mx)       (online max / sum)
 *   log p_j = likewise from t / T, or t itself (teacher log-probs at T = 1: p = e^t,
 *             not renormalised, sum_p = sum e^t)
 *   D       = sum_j term(j)                      forward  p (lp - lq)
 *                                                reverse  q (lq - lp)
 *                                                jsd      b p (lp - lm) + (1-b) q (lq - lm)
 *                                                tvd      |p - q| / 2
 *                                                skew     p (lp - lr) / q (lq - lr)
 *   G       = sum_j q_j g_j (jsd: KL(q||m); tvd: h = sign(q - p)/2; skew: dD/dq)
 *   dD/dz_j = forward (q_j sum_p - p_j)/T; reverse q_j (lq - lp - D)/T;
 *             jsd (1-b) q_j (lq - lm - G)/T; tvd / skew q_j (g_j - G)/T
 *   CE      = log S0 - (1-eps)(z_y - m0) - eps (mean z - m0)   (untempered, label y)
 *   dCE/dz_j = q0_j - (1-eps)[j = y] - eps/V
 *   total_i = w_i (hw CE + sw D); grad = coef w_i (hw dCE/dz + sw dD/dz), coef =
 *   gradScale / divisor (from the count pass); unselected rows: zeros.
 *
 * Shape and why:
 *  - One workgroup (WG lanes) per row, lane k owning elements k, k + WG, ... (adjacent
 *    lanes read adjacent elements: coalesced). Pass 1 keeps an online (max, sum) per
 *    lane for x and t/T, merged by a fixed tree (wg_lse): each input is read once and
 *    costs one exp. Pass 2 sums D (and G); pass 3 writes the gradient. Forward KL needs
 *    no row scalar for its gradient, so it writes it in pass 2 (two passes in all).
 *  - Rows of V <= STAGE_MAX_V are staged (widened to f32) in workgroup memory by pass 1,
 *    so passes 2 and 3 never touch the storage buffers again; longer rows are re-read
 *    (from the GPU's caches, when it has them).
 *  - Reductions are fixed trees, the scalar loss a second 1-workgroup pass over the
 *    per-row totals in row order: bitwise deterministic, no float atomics.
 *  - The mixture m of jsd / skew is clamped to >= 2^-100 (as the CPU's kTinyMixture):
 *    a p can underflow to 0 next to a subnormal p, and p / m would overflow.
 *  - NaN: a NaN logit poisons its row's (max, sum) state (common.wgsl.ts), so only that
 *    row's loss and gradient are NaN. -inf logits contribute exactly 0.
 *  - A label outside [0, V) on a row with a CE term cannot be reported from a kernel: its
 *    CE is NaN (never an out-of-bounds read); lib/ range-checks host labels before.
 */
import { REDUCE_WGSL, TO16_WGSL, arrayType, commonWgsl, loadFn, storeFn, type WgslDType } from './common.wgsl.js';
import { REDUCE_WG, STAGE_MAX_V, WG } from '../tuning.js';

/**
 * The f32 workspace of one call: [0, 4) STAT = [count, divisor, gradScale / divisor, 0];
 * [4, 4 + n) per-row totals (the 'none' loss and the `total` output); then, for
 * distillationLoss, [4 + n, 4 + 2n) hard and [4 + 2n, 4 + 3n) soft. The outputs are
 * copied out of it (copyBufferToBuffer).
 */
export function workspaceFloats(n: number, perToken: boolean): number {
  return 4 + n * (perToken ? 3 : 1);
}

/** Divergence codes (native/common/divergence.h). */
export const DIV = { forwardKl: 0, reverseKl: 1, jsd: 2, tvd: 3, skewForwardKl: 4, skewReverseKl: 5, none: 6 } as const;

export interface DivKernelConfig {
  div: number; // effective divergence (endpoints mapped to KLs), 6 = none (CE only)
  sDtype: WgslDType;
  tDtype: WgslDType;
  gDtype: WgslDType | null; // null: no gradient
  inplace: boolean; // the gradient overwrites the student (same binding)
  tRaw: boolean; // teacher log-probs at T = 1
  ce: boolean; // CE computed (labels and a hard term or the hard output)
  ceOwn: boolean; // CE needs its own untempered softmax (T != 1 with a divergence)
  eps: boolean; // label smoothing != 0
  labels: boolean;
  mask: boolean;
  weights: boolean;
  perToken: boolean; // hard / soft / total outputs
  lossPerRow: boolean; // reduction 'none': loss[i] = total_i
  staged: boolean; // V <= STAGE_MAX_V
  wg: number; // lanes per row (rowLanes(V))
}

/**
 * Lanes (threads) per row: WG (256), or for short rows the next power of two >= V (at
 * least 32), so that a row of 3 does not keep 253 idle lanes through every barrier (on
 * a CPU adapter like lavapipe the per-workgroup cost dominates short rows: 70001 x 3
 * took 13 s with 256 lanes).
 */
export function rowLanes(v: number): number {
  let w = 32;
  while (w < v && w < WG) w *= 2;
  return w;
}

export function divKernelKey(c: DivKernelConfig): string {
  return `divergence:${JSON.stringify(c)}`;
}

/** Uniform parameter block of the row kernel (16 x 4 bytes, in this order). */
export const ROW_PARAMS = [
  'n', 'v', 'lds', 'ldt', 's_off', 't_off', 'g_off', 'ldg',
  'row0', 'lab_off', 'mask_off', 'w_off', 'ignore_index', 'pad0', 'pad1', 'pad2',
  'inv_t', 'beta', 'skew', 'sw', 'soft_scale', 'hw', 'eps', 'pad3',
] as const;

/** The row kernel for one configuration. Bindings: see `bindingOrder`. */
export function divergenceRowWgsl(c: DivKernelConfig): string {
  const hasDiv = c.div !== DIV.none;
  const grad = c.gDtype !== null;
  const sAtomic = c.inplace && c.sDtype !== 'f32';
  const decl: string[] = [];
  let b = 1;
  const acc = (rw: boolean) => (rw ? 'read_write' : 'read');
  decl.push(`@group(0) @binding(${b++}) var<storage, ${acc(c.inplace)}> S: ${arrayType(c.sDtype, sAtomic)};`);
  if (hasDiv) decl.push(`@group(0) @binding(${b++}) var<storage, read> T: ${arrayType(c.tDtype)};`);
  if (grad && !c.inplace) decl.push(`@group(0) @binding(${b++}) var<storage, read_write> GR: ${arrayType(c.gDtype!, c.gDtype !== 'f32')};`);
  if (c.labels) decl.push(`@group(0) @binding(${b++}) var<storage, read> LAB: array<i32>;`);
  if (c.mask) decl.push(`@group(0) @binding(${b++}) var<storage, read> MASK: array<u32>;`);
  if (c.weights) decl.push(`@group(0) @binding(${b++}) var<storage, read> WTS: array<f32>;`);
  // The workspace (see WS_LAYOUT): the count pass's STAT, then per-row totals (and hard,
  // soft): one binding, so that the kernel needs at most 7 storage buffers (WebGPU's
  // default maxStorageBuffersPerShaderStage is 8; tfjs-backend-webgpu's device has that).
  decl.push(`@group(0) @binding(${b++}) var<storage, read_write> WS: array<f32>;`);
  const gArr = c.inplace ? 'S' : 'GR';
  const D = c.div;
  const needsG = D === DIV.jsd || D === DIV.tvd || D === DIV.skewForwardKl || D === DIV.skewReverseKl;
  const pass3 = hasDiv && D !== DIV.forwardKl; // needs a row scalar (L or G) before the gradient
  const stageN = c.staged ? STAGE_MAX_V : 1;

  return /* wgsl */ `
${commonWgsl(c.wg)}
${REDUCE_WGSL}
${grad && c.gDtype !== 'f32' ? TO16_WGSL : ''}
struct Params {
  n: u32, v: u32, lds: u32, ldt: u32,
  s_off: u32, t_off: u32, g_off: u32, ldg: u32,
  row0: u32, lab_off: u32, mask_off: u32, w_off: u32,
  ignore_index: i32, pad0: u32, pad1: u32, pad2: u32,
  inv_t: f32, beta: f32, skew: f32, sw: f32,
  soft_scale: f32, hw: f32, eps: f32, pad3: f32,
}
@group(0) @binding(0) var<uniform> P: Params;
${decl.join('\n')}
${loadFn('ld_s', 'S', c.sDtype, sAtomic)}
${hasDiv ? loadFn('ld_t', 'T', c.tDtype) : ''}
${grad ? storeFn('st_g', gArr, c.gDtype!) : ''}

const HAS_DIV: bool = ${hasDiv};
const STAGED: bool = ${c.staged};
const TINY_MIX: f32 = 7.8886091e-31; // 2^-100, see the header
var<workgroup> zs: array<f32, ${stageN}>;
var<workgroup> ts: array<f32, ${hasDiv ? stageN : 1}>;

fn zval(e: u32, j: u32) -> f32 {
  if (STAGED) { return zs[j]; }
  return ld_s(e + j);
}
${hasDiv ? `fn tval(e: u32, j: u32) -> f32 {
  if (STAGED) { return ts[j]; }
  return ld_t(e + j);
}` : ''}

fn mixture(p: f32, q: f32) -> f32 {
  var m: f32;
  ${D === DIV.jsd ? 'm = P.beta * p + (1.0 - P.beta) * q;' : D === DIV.skewForwardKl ? 'm = P.skew * p + (1.0 - P.skew) * q;' : 'm = (1.0 - P.skew) * p + P.skew * q;'}
  return select(m, TINY_MIX, m < TINY_MIX);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let i = P.row0 + group_index(wid);
  if (i >= P.n) { return; } // uniform: the whole workgroup leaves
  let tid = lid.x;
  let v = P.v;
  let inv_t = P.inv_t;
  var selected = true;
  ${c.labels ? 'let y = LAB[P.lab_off + i]; if (y == P.ignore_index) { selected = false; }' : ''}
  ${c.mask ? 'let me = P.mask_off + i; if (((MASK[me >> 2u] >> ((me & 3u) * 8u)) & 0xffu) == 0u) { selected = false; }' : ''}
  let zb = P.s_off + i * P.lds;
  ${hasDiv ? 'let tb = P.t_off + i * P.ldt;' : ''}
  ${grad ? 'let gb = P.g_off + i * P.ldg;' : ''}
  if (!selected) {
    ${grad ? 'for (var j = tid; j < v; j += WG) { st_g(gb + j, 0.0); }' : ''}
    if (tid == 0u) {
      WS[4u + i] = 0.0;
      ${c.perToken ? 'WS[4u + P.n + i] = 0.0; WS[4u + 2u * P.n + i] = 0.0;' : ''}
    }
    return;
  }

  // ---- pass 1: online (max, sum) of x = z/T and t/T (+ untempered z for CE) ----------
  var sq = lse_empty();
  var sp = lse_empty();
  var sp_raw = 0.0;  // teacher log-probs: sum e^t
  var s0 = lse_empty();
  var zsum = 0.0;
  for (var j = tid; j < v; j += WG) {
    let z = ld_s(zb + j);
    if (STAGED) { zs[j] = z; }
    sq = lse_push(sq, z * inv_t);
    ${c.ceOwn ? 's0 = lse_push(s0, z);' : ''}
    ${c.eps ? 'zsum += z;' : ''}
    ${hasDiv ? `let t = ld_t(tb + j);
    if (STAGED) { ts[j] = t; }
    ${c.tRaw ? 'sp_raw += exp0(t); if (is_nan(t)) { sp_raw = f32_nan(); }' : 'sp = lse_push(sp, t * inv_t);'}` : ''}
  }
  ${c.ce ? 'var zy = f32_nan(); if (y >= 0 && u32(y) < v) { zy = ld_s(zb + u32(y)); }' : ''}
  let rq = wg_lse(tid, sq);
  let mq = rq.x;
  let lsq = log(rq.y);
  ${hasDiv ? (c.tRaw ? 'let sum_p = wg_sum(tid, sp_raw); let mp = 0.0; let lsp = 0.0;' : 'let rp = wg_lse(tid, sp); let mp = rp.x; let lsp = log(rp.y); let sum_p = 1.0;') : ''}
  ${c.ceOwn ? 'let r0 = wg_lse(tid, s0); let m0 = r0.x; let ls0 = log(r0.y);' : 'let m0 = mq; let ls0 = lsq;'}
  ${c.eps ? 'let zmean = wg_sum(tid, zsum) / f32(v);' : ''}

  // ---- row factors ------------------------------------------------------------------
  ${c.weights ? 'let w = WTS[P.w_off + i];' : 'let w = 1.0;'}
  let coef = WS[2];
  let rowf = coef * w;
  let a1 = rowf * P.sw * inv_t;
  var ce = 0.0;
  ${c.ce ? `ce = ls0 - (1.0 - P.eps) * (zy - m0);
  ${c.eps ? 'ce = ce - P.eps * (zmean - m0);' : ''}` : ''}
  let a2 = rowf * P.hw;
  let a3 = -rowf * P.hw * P.eps / f32(v);
  let ay = rowf * P.hw * (1.0 - P.eps);
  let use_hard = ${c.ce ? 'P.hw != 0.0' : 'false'};
  let use_soft = ${hasDiv ? 'P.sw != 0.0' : 'false'};

  // ---- pass 2: D (and G); forward KL writes its gradient here ------------------------
  var acc = vec2<f32>(0.0, 0.0);  // (sum of terms, sum of q g)
  ${hasDiv ? `for (var j = tid; j < v; j += WG) {
    let z = zval(zb, j);
    let t = tval(tb, j);
    let lq = (z * inv_t - mq) - lsq;
    ${c.tRaw ? 'let lp = t; let p = exp0(t);' : 'let lp = (t * inv_t - mp) - lsp; let p = exp0(lp);'}
    let q = exp0(lq);
    ${termCode(D)}
    ${D === DIV.forwardKl && grad ? `var gv = 0.0;
    if (use_soft) { gv = a1 * (q * sum_p - p); }
    if (use_hard) { gv += a2 * exp0((z - m0) - ls0) + a3; if (i32(j) == ${c.labels ? 'y' : '-1'}) { gv -= ay; } }
    st_g(gb + j, gv);` : ''}
  }` : ''}
  ${needsG ? 'let rs = wg_sum2(tid, acc); let L = rs.x; let G = rs.y;' : hasDiv ? 'let L = wg_sum(tid, acc.x); let G = 0.0;' : 'let L = 0.0;'}

  // ---- pass 3: the gradient from the row scalars --------------------------------------
  ${grad && (pass3 || !hasDiv) ? `for (var j = tid; j < v; j += WG) {
    let z = zval(zb, j);
    var gv = 0.0;
    ${pass3 ? `if (use_soft) {
      let t = tval(tb, j);
      let lq = (z * inv_t - mq) - lsq;
      ${c.tRaw ? 'let lp = t; let p = exp0(t);' : 'let lp = (t * inv_t - mp) - lsp; let p = exp0(lp);'}
      let q = exp0(lq);
      ${gradCode(D)}
    }` : ''}
    if (use_hard) { gv += a2 * exp0((z - m0) - ls0) + a3; if (i32(j) == ${c.labels ? 'y' : '-1'}) { gv -= ay; } }
    st_g(gb + j, gv);
  }` : ''}

  // ---- per-row outputs ----------------------------------------------------------------
  if (tid == 0u) {
    let dv = select(0.0, L, HAS_DIV);
    var total = 0.0;
    if (use_hard) { total += P.hw * ce; }
    if (use_soft) { total += P.sw * dv; }
    total = w * total;
    WS[4u + i] = total;
    ${c.perToken ? 'WS[4u + P.n + i] = ce; WS[4u + 2u * P.n + i] = P.soft_scale * dv;' : ''}
  }
}
`;
}

/** Pass 2 body: acc.x += term, acc.y += q g (for the G divergences). */
function termCode(D: number): string {
  switch (D) {
    case DIV.forwardKl: return 'acc.x += mul0(p, lp - lq);';
    case DIV.reverseKl: return 'acc.x += mul0(q, lq - lp);';
    case DIV.tvd: return `acc.x += 0.5 * select(q - p, p - q, p > q);
    let h = select(select(0.0, -0.5, q < p), 0.5, q > p);
    acc.y += mul0(q, h);`;
    case DIV.jsd: return `let m = mixture(p, q);
    let lm = select(log(m), lq, lq == lp);
    acc.x += P.beta * mul0(p, lp - lm) + (1.0 - P.beta) * mul0(q, lq - lm);
    acc.y += mul0(q, lq - lm);`;
    case DIV.skewForwardKl: return `let m = mixture(p, q);
    let lm = select(log(m), lq, lq == lp);
    acc.x += mul0(p, lp - lm);
    let g = select(-(1.0 - P.skew) * p / m, 0.0, p == 0.0);
    acc.y += mul0(q, g);`;
    case DIV.skewReverseKl: return `let m = mixture(p, q);
    let lm = select(log(m), lq, lq == lp);
    acc.x += mul0(q, lq - lm);
    let g = select(lq - lm + 1.0 - P.skew * q / m, 0.0, q == 0.0);
    acc.y += mul0(q, g);`;
    default: return '';
  }
}

/** Pass 3 body: gv = a1 * dD/dz_j * T (a1 includes 1/T). */
function gradCode(D: number): string {
  switch (D) {
    case DIV.reverseKl: return 'gv = a1 * mul0(q, lq - lp - L);';
    case DIV.tvd: return `let h = select(select(0.0, -0.5, q < p), 0.5, q > p);
      gv = a1 * mul0(q, h - G);`;
    case DIV.jsd: return `let m = mixture(p, q);
      let lm = select(log(m), lq, lq == lp);
      gv = a1 * (1.0 - P.beta) * mul0(q, (lq - lm) - G);`;
    case DIV.skewForwardKl: return `let m = mixture(p, q);
      let g = select(-(1.0 - P.skew) * p / m, 0.0, p == 0.0);
      gv = a1 * mul0(q, g - G);`;
    case DIV.skewReverseKl: return `let m = mixture(p, q);
      let lm = select(log(m), lq, lq == lp);
      let g = select(lq - lm + 1.0 - P.skew * q / m, 0.0, q == 0.0);
      gv = a1 * mul0(q, g - G);`;
    default: return '';
  }
}

/**
 * The selected-row count (1 workgroup): STAT = [count, divisor, gradScale / divisor, 0]
 * with the divisor of native/common/select.h (0 when nothing is selected: loss 0, grad 0).
 * Integer sums, so any order gives the same count.
 */
export function countWgsl(labels: boolean, mask: boolean): string {
  return /* wgsl */ `
const CW: u32 = ${REDUCE_WG}u;
struct Params {
  n: u32, v: u32, reduction: u32, lab_off: u32,
  mask_off: u32, ignore_index: i32, normalizer: f32, grad_scale: f32,
}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> STAT: array<f32>; // the workspace's first 4
${labels ? '@group(0) @binding(2) var<storage, read> LAB: array<i32>;' : ''}
${mask ? `@group(0) @binding(${labels ? 3 : 2}) var<storage, read> MASK: array<u32>;` : ''}
var<workgroup> cnt: atomic<u32>;
@compute @workgroup_size(CW)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  var c = 0u;
  for (var i = lid.x; i < P.n; i += CW) {
    var sel = true;
    ${labels ? 'if (LAB[P.lab_off + i] == P.ignore_index) { sel = false; }' : ''}
    ${mask ? 'let me = P.mask_off + i; if (((MASK[me >> 2u] >> ((me & 3u) * 8u)) & 0xffu) == 0u) { sel = false; }' : ''}
    if (sel) { c += 1u; }
  }
  atomicAdd(&cnt, c);
  workgroupBarrier();
  if (lid.x == 0u) {
    let count = atomicLoad(&cnt);
    var divisor = 0.0;
    if (count > 0u) {
      if (P.normalizer > 0.0) { divisor = select(P.normalizer, 1.0, P.reduction == 0u); }
      else if (P.reduction == 3u) { divisor = f32(count); }
      else if (P.reduction == 2u) { divisor = f32(count) * f32(P.v); }
      else { divisor = 1.0; }
    }
    STAT[0] = f32(count);
    STAT[1] = divisor;
    STAT[2] = select(0.0, P.grad_scale / divisor, divisor > 0.0);
    STAT[3] = 0.0;
  }
}
`;
}

/**
 * The reduced loss (1 workgroup): sum of the per-row totals / divisor. Lane k sums rows
 * k, k + CW, ... (Kahan-compensated, in row order), then a fixed tree: deterministic.
 */
export function reduceWgsl(): string {
  return /* wgsl */ `
const CW: u32 = ${REDUCE_WG}u;
struct Params { n: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> WS: array<f32>;
@group(0) @binding(2) var<storage, read_write> LOSS: array<f32>;
var<workgroup> part: array<f32, CW>;
@compute @workgroup_size(CW)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  var s = 0.0;
  var comp = 0.0;
  for (var i = lid.x; i < P.n; i += CW) {
    let y = WS[4u + i] - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  part[lid.x] = s;
  workgroupBarrier();
  for (var k = CW / 2u; k > 0u; k = k >> 1u) {
    if (lid.x < k) { part[lid.x] = part[lid.x] + part[lid.x + k]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    let d = WS[1];
    LOSS[0] = select(0.0, part[0] / d, d > 0.0);
  }
}
`;
}
