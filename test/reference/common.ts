// Shared float64 helpers for the reference implementations and for the tests that
// compare the native kernels against them.
//
// Everything here is written for clarity, not speed: plain loops over numbers, float64
// throughout. Nothing in this file depends on the native addon or on vitest.

// ---------------------------------------------------------------------------------
// Log-softmax and logsumexp
// ---------------------------------------------------------------------------------

/**
 * log(Σ_j exp(x_j / T)), computed stably as m + log Σ exp(x_j/T − m), m = max_j x_j/T.
 *
 * - `-Infinity` entries contribute exp(−inf) = 0.
 * - All entries `-Infinity` (or an empty input): returns `-Infinity`.
 * - A NaN entry: returns NaN.
 * - A `+Infinity` entry: returns `+Infinity`.
 */
export function logsumexp(x: ArrayLike<number>, T = 1): number {
  let m = -Infinity;
  for (let j = 0; j < x.length; j++) {
    const y = x[j]! / T;
    if (Number.isNaN(y)) return NaN;
    if (y > m) m = y;
  }
  if (m === -Infinity) return -Infinity;
  if (m === Infinity) return Infinity;
  let s = 0;
  for (let j = 0; j < x.length; j++) s += Math.exp(x[j]! / T - m);
  return m + Math.log(s);
}

/**
 * log softmax(x / T), stable. `-Infinity` entries give `-Infinity` (probability 0) and
 * never NaN. The result is NaN everywhere only when every entry is `-Infinity` (the
 * distribution is undefined) or when some entry is NaN.
 */
export function logSoftmax(x: ArrayLike<number>, T = 1): Float64Array {
  const out = new Float64Array(x.length);
  let m = -Infinity;
  for (let j = 0; j < x.length; j++) {
    const y = x[j]! / T;
    m = Number.isNaN(y) || Number.isNaN(m) ? NaN : Math.max(m, y);
  }
  if (!Number.isFinite(m)) {
    // all -inf, NaN present, or +inf present: no meaningful distribution.
    out.fill(NaN);
    return out;
  }
  let s = 0;
  for (let j = 0; j < x.length; j++) s += Math.exp(x[j]! / T - m);
  // (y − m) − log s rather than y − lse: no rounding of the large lse = m + log s.
  const logS = Math.log(s);
  for (let j = 0; j < x.length; j++) out[j] = x[j]! / T - m - logS;
  return out;
}

/** softmax(x / T) = exp(logSoftmax(x, T)). */
export function softmax(x: ArrayLike<number>, T = 1): Float64Array {
  return logSoftmax(x, T).map(Math.exp);
}

/** log(exp(a) + exp(b)), stable, with log(0) = −inf handled (logaddexp(−inf, b) = b). */
export function logaddexp(a: number, b: number): number {
  if (Number.isNaN(a) || Number.isNaN(b)) return NaN;
  const m = Math.max(a, b);
  if (m === -Infinity) return -Infinity;
  if (m === Infinity) return Infinity;
  return m + Math.log(Math.exp(a - m) + Math.exp(b - m));
}

/** Columns [0, V) of row `i` of a row-major matrix with row stride `ld`, as a copy. */
export function row(data: ArrayLike<number>, i: number, V: number, ld: number = V): Float64Array {
  const out = new Float64Array(V);
  const base = i * ld;
  for (let j = 0; j < V; j++) out[j] = data[base + j]!;
  return out;
}

/** Throws unless `data` holds an N × V matrix with row stride ld ≥ V. */
export function checkMatrix(name: string, data: ArrayLike<number>, N: number, V: number, ld: number): void {
  if (!Number.isInteger(N) || N < 0) throw new RangeError(`${name}: N must be an integer >= 0, got ${N}`);
  if (!Number.isInteger(V) || V < 1) throw new RangeError(`${name}: V must be an integer >= 1, got ${V}`);
  if (!Number.isInteger(ld) || ld < V) throw new RangeError(`${name}: row stride ${ld} must be an integer >= V = ${V}`);
  const need = N === 0 ? 0 : (N - 1) * ld + V;
  if (data.length < need) throw new RangeError(`${name}: needs at least ${need} elements, got ${data.length}`);
}

// ---------------------------------------------------------------------------------
// Token selection and reduction (identical semantics for every loss)
// ---------------------------------------------------------------------------------

export type Reduction = 'none' | 'sum' | 'mean' | 'batchmean';

export interface SelectionOptions {
  /** [N] labels; a token whose label equals `ignoreIndex` is not selected. */
  labels?: ArrayLike<number>;
  /** Default −100 (PyTorch / TRL). */
  ignoreIndex?: number;
  /** [N]; nonzero = selected. */
  mask?: ArrayLike<number>;
}

export interface ReductionOptions {
  /** Default 'batchmean'. */
  reduction?: Reduction;
  /** If given (must be > 0), replaces the divisor of 'sum' / 'mean' / 'batchmean'. */
  normalizer?: number;
}

/**
 * selected[i] = (labels absent or labels[i] != ignoreIndex) and (mask absent or mask[i] != 0).
 */
export function selectTokens(N: number, opts: SelectionOptions): boolean[] {
  const ignoreIndex = opts.ignoreIndex ?? -100;
  if (opts.labels !== undefined && opts.labels.length < N) throw new RangeError(`labels: need ${N} entries`);
  if (opts.mask !== undefined && opts.mask.length < N) throw new RangeError(`mask: need ${N} entries`);
  const selected: boolean[] = [];
  for (let i = 0; i < N; i++) {
    const byLabel = opts.labels === undefined || opts.labels[i] !== ignoreIndex;
    const byMask = opts.mask === undefined || opts.mask[i] !== 0;
    selected.push(byLabel && byMask);
  }
  return selected;
}

/**
 * The number the summed per-token loss is divided by:
 *   'none' → 1 (the loss is the per-token vector; its gradient is that of the sum),
 *   'sum' → normalizer ?? 1, 'batchmean' → normalizer ?? count, 'mean' → normalizer ?? count·V.
 * Returns 0 when no token is selected: callers then report loss 0 and gradient 0.
 */
export function lossDivisor(reduction: Reduction, count: number, V: number, normalizer?: number): number {
  if (normalizer !== undefined && !(normalizer > 0 && Number.isFinite(normalizer))) {
    throw new RangeError(`normalizer must be a finite number > 0, got ${normalizer}`);
  }
  if (count === 0) return 0;
  switch (reduction) {
    case 'none':
      return 1;
    case 'sum':
      return normalizer ?? 1;
    case 'batchmean':
      return normalizer ?? count;
    case 'mean':
      return normalizer ?? count * V;
    default:
      throw new RangeError(`unknown reduction ${String(reduction)}`);
  }
}

/** Σ perToken / divisor (0 when divisor is 0, i.e. nothing selected), or a copy for 'none'. */
export function reduceLoss(perToken: Float64Array, reduction: Reduction, divisor: number): number | Float64Array {
  if (reduction === 'none') return Float64Array.from(perToken);
  if (divisor === 0) return 0;
  let sum = 0;
  for (const x of perToken) sum += x;
  return sum / divisor;
}

// ---------------------------------------------------------------------------------
// Seeded randomness and random logits
// ---------------------------------------------------------------------------------

/** mulberry32: a tiny, well-known 32-bit PRNG. Returns () => uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A standard normal sample (Box–Muller) from a uniform [0, 1) generator. */
export function randn(rng: () => number): number {
  const u1 = 1 - rng(); // (0, 1]: log is finite
  const u2 = rng();
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

/** A uniform integer in [0, n). */
export function randint(rng: () => number, n: number): number {
  return Math.min(n - 1, Math.floor(rng() * n));
}

export interface RandomLogitsOptions {
  seed?: number;
  /** Standard deviation of the logits (default 1). */
  scale?: number;
  /**
   * In the spirit of llm.c's test data: per row, 1–3 random entries are multiplied by
   * about 20, as x ← 20·(|x| + 0.5·scale) (x already carries the scale, so the result
   * is at least 10·scale): the softmax has a few dominant tokens instead of being flat.
   */
  peaked?: boolean;
  /** Number of entries per row set to −Infinity (banned tokens); capped at V − 1. */
  negInf?: number;
}

/** N × V (row-major, stride V) random logits in float64: scale · N(0, 1). */
export function randomLogits(n: number, v: number, opts: RandomLogitsOptions = {}): Float64Array {
  const rng = mulberry32(opts.seed ?? 1);
  const scale = opts.scale ?? 1;
  const out = new Float64Array(n * v);
  for (let i = 0; i < n * v; i++) out[i] = scale * randn(rng);
  for (let i = 0; i < n; i++) {
    if (opts.peaked) {
      const count = Math.min(v, 1 + randint(rng, 3));
      for (let c = 0; c < count; c++) {
        const j = randint(rng, v);
        out[i * v + j] = 20 * (Math.abs(out[i * v + j]!) + 0.5 * scale);
      }
    }
    const nInf = Math.min(opts.negInf ?? 0, v - 1);
    for (let c = 0; c < nInf; c++) {
      // pick a column that is still finite so exactly nInf entries end up -inf
      let j = randint(rng, v);
      while (out[i * v + j] === -Infinity) j = (j + 1) % v;
      out[i * v + j] = -Infinity;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------
// Low-precision rounding: f32, f16 (IEEE binary16), bf16
// ---------------------------------------------------------------------------------

export type FloatDType = 'f32' | 'f16' | 'bf16';

/**
 * Rounds a float64 to the nearest value of a binary floating-point format with
 * `mantBits` stored fraction bits and normal exponents in [minExp, maxExp], using
 * round-to-nearest-even, gradual underflow (subnormals) and overflow to ±Infinity.
 * NaN, ±Infinity and ±0 are returned unchanged. The rounding is done once, directly
 * from the float64 value (no double rounding through f32).
 */
export function roundToFormat(x: number, mantBits: number, minExp: number, maxExp: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  // Guard against log2 being off by one ulp near powers of two.
  if (2 ** e > a) e -= 1;
  else if (2 ** (e + 1) <= a) e += 1;
  if (e < minExp) e = minExp; // subnormal range: the quantum stays at 2^(minExp − mantBits)
  const quantum = 2 ** (e - mantBits);
  const y = a / quantum; // exact: division by a power of two
  let r = Math.floor(y);
  const frac = y - r; // exact
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r += 1;
  const rounded = r * quantum;
  if (rounded >= 2 ** (maxExp + 1)) return x > 0 ? Infinity : -Infinity;
  return x < 0 ? -rounded : rounded;
}

const F16 = { mant: 10, minExp: -14, maxExp: 15 } as const;
const BF16 = { mant: 7, minExp: -126, maxExp: 127 } as const;

/** IEEE binary16 bits of x, round-to-nearest-even, subnormals, ±inf; NaN → 0x7e00. */
export function toF16Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const v = roundToFormat(x, F16.mant, F16.minExp, F16.maxExp);
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a === Infinity) return sign | 0x7c00;
  if (a === 0) return sign;
  if (a < 2 ** F16.minExp) return sign | (a / 2 ** (F16.minExp - F16.mant)); // subnormal: integer 1..1023
  const e = Math.floor(Math.log2(a)); // exact: a is a normal f16 value
  const mant = a / 2 ** (e - F16.mant) - 1024;
  return sign | ((e + 15) << 10) | mant;
}

/** The value of IEEE binary16 bits. */
export function fromF16Bits(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** bfloat16 bits of x, round-to-nearest-even (from the float64 value); NaN → 0x7fc0. */
export function toBf16Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  const v = roundToFormat(x, BF16.mant, BF16.minExp, BF16.maxExp);
  f32Scratch[0] = v; // exact: every bf16 value is an f32 value
  return u32Scratch[0]! >>> 16;
}

/** The value of bfloat16 bits. */
export function fromBf16Bits(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0]!;
}

/** Each element rounded to the dtype (and returned as float64). f32 uses Math.fround. */
export function roundToDtype(arr: ArrayLike<number>, dtype: FloatDType): Float64Array {
  const out = new Float64Array(arr.length);
  for (let i = 0; i < arr.length; i++) {
    const x = arr[i]!;
    out[i] =
      dtype === 'f32' ? Math.fround(x) : dtype === 'f16' ? fromF16Bits(toF16Bits(x)) : fromBf16Bits(toBf16Bits(x));
  }
  return out;
}

/** Encodes values as the storage the native API takes: Float32Array (f32) or Uint16Array bits (f16, bf16). */
export function encodeDtype(arr: ArrayLike<number>, dtype: FloatDType): Float32Array | Uint16Array {
  if (dtype === 'f32') return Float32Array.from(arr);
  const out = new Uint16Array(arr.length);
  for (let i = 0; i < arr.length; i++) out[i] = dtype === 'f16' ? toF16Bits(arr[i]!) : toBf16Bits(arr[i]!);
  return out;
}

/** Decodes storage from {@link encodeDtype} (or a kernel's output) to float64. */
export function decodeDtype(data: Float32Array | Uint16Array, dtype: FloatDType): Float64Array {
  if (dtype === 'f32') {
    if (!(data instanceof Float32Array)) throw new TypeError('f32 data must be a Float32Array');
    return Float64Array.from(data);
  }
  if (!(data instanceof Uint16Array)) throw new TypeError(`${dtype} data must be a Uint16Array of bits`);
  const out = new Float64Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = dtype === 'f16' ? fromF16Bits(data[i]!) : fromBf16Bits(data[i]!);
  return out;
}

// ---------------------------------------------------------------------------------
// Array comparison with readable failure messages
// ---------------------------------------------------------------------------------

export interface CompareOptions {
  /** Absolute tolerance (default 0). */
  atol?: number;
  /** Relative tolerance, relative to |expected| (default 0). */
  rtol?: number;
  /** Prefix of the message, e.g. 'jsd grad f16 T=2'. */
  label?: string;
  /** If given, mismatches are also reported as (row, col) of a matrix with this many columns. */
  cols?: number;
  /** How many mismatches to list (default 10). */
  maxReport?: number;
  /** Per-element absolute tolerance, added to atol (error scales that vary by element). */
  atolPer?: ArrayLike<number>;
}

export interface CompareResult {
  ok: boolean;
  /** One line when ok; otherwise a summary plus the first mismatches with their indices. */
  message: string;
  /** Elements that disagree (all kinds). */
  mismatches: number;
  /** Elements where exactly one side is NaN. */
  nanMismatches: number;
  /** Elements where neither is NaN, at least one is ±inf, and they differ. */
  infMismatches: number;
  /** Over pairs of finite values. */
  maxAbsErr: number;
  /** Over pairs of finite values with expected ≠ 0. */
  maxRelErr: number;
}

function fmt(x: number): string {
  return Number.isFinite(x) ? x.toPrecision(10) : String(x);
}

/**
 * Element-wise check |actual − expected| ≤ atol + rtol·|expected| (PyTorch's allclose
 * rule, asymmetric in `expected`). NaN equals NaN; +inf equals +inf and −inf equals −inf;
 * any other pairing with NaN or inf is a mismatch. A length difference is a failure.
 */
export function compareArrays(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  opts: CompareOptions = {},
): CompareResult {
  const atol = opts.atol ?? 0;
  const rtol = opts.rtol ?? 0;
  const label = opts.label ?? 'compare';
  const maxReport = opts.maxReport ?? 10;
  if (!(atol >= 0) || !(rtol >= 0)) throw new RangeError(`tolerances must be >= 0 (atol=${atol}, rtol=${rtol})`);

  const result: CompareResult = {
    ok: true,
    message: '',
    mismatches: 0,
    nanMismatches: 0,
    infMismatches: 0,
    maxAbsErr: 0,
    maxRelErr: 0,
  };
  if (actual.length !== expected.length) {
    result.ok = false;
    result.mismatches = Math.max(actual.length, expected.length);
    result.message = `${label}: length mismatch: actual has ${actual.length} elements, expected ${expected.length}`;
    return result;
  }

  const where = (i: number): string =>
    opts.cols !== undefined && opts.cols > 0 ? `[${i}] (row ${Math.floor(i / opts.cols)}, col ${i % opts.cols})` : `[${i}]`;
  const lines: string[] = [];
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    let bad = false;
    let why = '';
    if (Number.isNaN(a) || Number.isNaN(e)) {
      if (!(Number.isNaN(a) && Number.isNaN(e))) {
        bad = true;
        result.nanMismatches++;
        why = 'NaN disagreement';
      }
    } else if (!Number.isFinite(a) || !Number.isFinite(e)) {
      if (a !== e) {
        bad = true;
        result.infMismatches++;
        why = 'inf disagreement';
      }
    } else {
      const diff = Math.abs(a - e);
      const allowed = atol + (opts.atolPer ? opts.atolPer[i]! : 0) + rtol * Math.abs(e);
      result.maxAbsErr = Math.max(result.maxAbsErr, diff);
      if (e !== 0) result.maxRelErr = Math.max(result.maxRelErr, diff / Math.abs(e));
      if (!(diff <= allowed)) {
        bad = true;
        why = `|diff|=${diff.toExponential(3)} > allowed ${allowed.toExponential(3)}`;
      }
    }
    if (bad) {
      result.mismatches++;
      if (lines.length < maxReport) lines.push(`  ${where(i)}: actual=${fmt(a)} expected=${fmt(e)}  ${why}`);
    }
  }

  const stats = `maxAbsErr=${result.maxAbsErr.toExponential(3)} maxRelErr=${result.maxRelErr.toExponential(3)}`;
  if (result.mismatches === 0) {
    result.message = `${label}: OK (${expected.length} elements, atol=${atol}, rtol=${rtol}, ${stats})`;
    return result;
  }
  result.ok = false;
  const header =
    `${label}: ${result.mismatches} of ${expected.length} elements differ (atol=${atol}, rtol=${rtol}); ` +
    `NaN disagreements: ${result.nanMismatches}, inf disagreements: ${result.infMismatches}; ${stats} (finite pairs)`;
  const more = result.mismatches > lines.length ? `\n  ... and ${result.mismatches - lines.length} more` : '';
  result.message = `${header}\n${lines.join('\n')}${more}`;
  return result;
}
