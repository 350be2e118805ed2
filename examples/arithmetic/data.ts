/**
 * The task: multi-digit addition and subtraction as token sequences, every number
 * written least-significant digit first, the answer generated digit by digit.
 *
 *   347 + 85  →  "7430+5800="  then  "23400"     (432 reversed, zero-padded)
 *   912 − 68  →  "2190-8600="  then  "44800"     (844)
 *
 * Layout (fixed width): a (D digits) · op · b (D digits) · '=' · answer (D + 1 digits),
 * all zero-padded and reversed. Operands have 2..D digits (the digit count drawn
 * uniformly, then the number uniformly among numbers with that many digits); for '−'
 * the larger operand comes first, so the answer is never negative.
 *
 * Why reversed: with the least significant digit first, answer digit j is
 * (a_j ± b_j ± carry_j) mod 10 and carry_j is decided by a_{j−1}, b_{j−1} and the digit
 * the model has just written: a short chain the model must carry from one step to the
 * next. In the usual order every digit depends on all the carries to its right, which
 * small models learn far more slowly (Lee et al., "Teaching Arithmetic to Small
 * Transformers", 2023). Reversing the operands as well puts a_j, b_j, a_{j−1}, b_{j−1}
 * and the previous answer digit at the same *relative* offsets from every answer
 * position, so a relative-position attention (model.ts) can reuse one circuit for all
 * digits (cf. McLeish et al., "Transformers Can Do Arithmetic with the Right
 * Embeddings", 2024). The carry/borrow chain remains the whole difficulty: an error
 * in one carry propagates to every later digit.
 *
 * The vocabulary is padded to 64 tokens (ids 13..63 are reserved and never appear), as
 * a real LM's vocabulary is larger than what any position needs: it makes top-k with
 * k = 8 and k = 32 proper sparsifications of the teacher (k < V).
 */

export const PLUS = 10;
export const MINUS = 11;
export const EQUALS = 12;
export const VOCAB = 64;
export const TOKEN_TEXT = (t: number): string => (t < 10 ? String(t) : t === PLUS ? '+' : t === MINUS ? '-' : t === EQUALS ? '=' : `<${t}>`);

/** Sequence geometry for operands of up to `digits` digits. */
export interface Layout {
  digits: number;
  /** Prompt tokens: a, op, b, '='. */
  promptLen: number;
  /** Answer tokens (digits + 1). */
  answerLen: number;
  /** Full sequence. */
  seqLen: number;
  /** Model input length (seqLen − 1: the last token is only a target). */
  inputLen: number;
  /** Input position whose output predicts the first answer token (promptLen − 1). */
  firstPred: number;
}

export function layout(digits: number): Layout {
  const promptLen = 2 * digits + 2;
  const answerLen = digits + 1;
  return { digits, promptLen, answerLen, seqLen: promptLen + answerLen, inputLen: promptLen + answerLen - 1, firstPred: promptLen - 1 };
}

/** splitmix32-style generator: deterministic, seedable, fast. Returns floats in [0, 1). */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  nextU32(): number {
    let z = (this.#s = (this.#s + 0x9e3779b9) >>> 0);
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    return (z ^ (z >>> 15)) >>> 0;
  }
  next(): number {
    return this.nextU32() / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [a[i], a[j]] = [a[j]!, a[i]!];
    }
    return a;
  }
}

export interface Problem {
  a: number;
  b: number;
  op: '+' | '-';
}

export function answerOf(p: Problem): number {
  return p.op === '+' ? p.a + p.b : p.a - p.b;
}

function operand(rng: Rng, digits: number): number {
  const d = 2 + rng.int(digits - 1); // 2..digits
  const lo = 10 ** (d - 1);
  return lo + rng.int(9 * lo);
}

/** Operations to draw from: '+-' (both, equally likely), '+' or '-'. */
export type Ops = '+-' | '+' | '-';

export function randomProblem(rng: Rng, digits: number, ops: Ops = '+-'): Problem {
  let a = operand(rng, digits);
  let b = operand(rng, digits);
  const op = ops === '+-' ? (rng.next() < 0.5 ? '+' : '-') : ops;
  if (op === '-' && a < b) [a, b] = [b, a];
  return { a, b, op };
}

/** Writes the full token sequence of `p` into out[off .. off + seqLen). */
export function encode(p: Problem, L: Layout, out: Int32Array, off = 0): void {
  const D = L.digits;
  for (let i = 0; i < D; i++) {
    out[off + i] = Math.floor(p.a / 10 ** i) % 10;
    out[off + D + 1 + i] = Math.floor(p.b / 10 ** i) % 10;
  }
  out[off + D] = p.op === '+' ? PLUS : MINUS;
  out[off + 2 * D + 1] = EQUALS;
  const ans = answerOf(p);
  for (let j = 0; j < L.answerLen; j++) out[off + L.promptLen + j] = Math.floor(ans / 10 ** j) % 10;
}

export function render(tokens: ArrayLike<number>): string {
  return Array.from(tokens, TOKEN_TEXT).join('');
}

/** A set of problems as one [n, seqLen] i32 matrix. */
export class Dataset {
  readonly n: number;
  readonly tokens: Int32Array;
  constructor(readonly problems: Problem[], readonly L: Layout) {
    this.n = problems.length;
    this.tokens = new Int32Array(this.n * L.seqLen);
    problems.forEach((p, i) => encode(p, L, this.tokens, i * L.seqLen));
  }
  /** Answer tokens [n, answerLen] (the targets). */
  answers(): Int32Array {
    const { seqLen, promptLen, answerLen } = this.L;
    const out = new Int32Array(this.n * answerLen);
    for (let i = 0; i < this.n; i++) out.set(this.tokens.subarray(i * seqLen + promptLen, (i + 1) * seqLen), i * answerLen);
    return out;
  }
}

function key(p: Problem): string {
  return `${p.a}${p.op}${p.b}`;
}

/** Disjoint train and held-out sets, deterministic per seed. */
export function makeSplits(seed: number, digits: number, nTrain: number, nTest: number, ops: Ops = '+-'): { train: Dataset; test: Dataset } {
  const rng = new Rng(seed ^ 0x5eed);
  const L = layout(digits);
  const seen = new Set<string>();
  const draw = (n: number): Problem[] => {
    const out: Problem[] = [];
    while (out.length < n) {
      const p = randomProblem(rng, digits, ops);
      const k = key(p);
      if (seen.has(k)) continue;
      seen.add(k);
      out.push(p);
    }
    return out;
  };
  const test = draw(nTest);
  const train = draw(nTrain);
  return { train: new Dataset(train, L), test: new Dataset(test, L) };
}
