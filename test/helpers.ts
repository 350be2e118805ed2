/** Shared test helpers: CUDA availability (with the reason to print when skipping). */
import { backends } from '../lib/index.js';
import { binding } from '../lib/native.js';

const b = backends();
export const CUDA = b.cuda.available;
export const CUDA_SKIP_REASON = CUDA ? '' : `CUDA not available: ${b.cuda.reason ?? 'unknown'}`;
if (!CUDA && !(globalThis as { __kdSkipNoted?: boolean }).__kdSkipNoted) {
  (globalThis as { __kdSkipNoted?: boolean }).__kdSkipNoted = true;
  console.log(`[kd-kernels tests] CUDA cases skipped: ${CUDA_SKIP_REASON}`);
}

/** Expects fn to throw an error of `cls` with `code`, whose message matches `re`. */
export function errorOf(fn: () => unknown): { name: string; code?: string; message: string } {
  try {
    fn();
  } catch (e) {
    const err = e as { name: string; code?: string; message: string };
    return { name: err.name, code: err.code, message: err.message };
  }
  throw new Error('expected the call to throw');
}

/** The CPU ISA levels the addon is built for (the same sources compiled three times). */
export const ISA_LEVELS = ['avx512', 'avx2', 'generic'] as const;

/** The ISA levels this machine runs (the best one and those below it). */
export function supportedIsas(): string[] {
  const best = backends().cpu.simd;
  const out = ISA_LEVELS.filter((isa) => binding().setIsa(isa));
  binding().setIsa(best);
  return out;
}

/**
 * Runs fn with the CPU kernels at ISA level `isa` (which must be supported here), then
 * goes back to the best level, also when fn throws or its promise rejects.
 */
export function withIsa<T>(isa: string, fn: () => T): T {
  const best = backends().cpu.simd;
  if (!binding().setIsa(isa)) throw new Error(`CPU ISA level ${isa} is not supported on this machine`);
  let r: T;
  try {
    r = fn();
  } catch (e) {
    binding().setIsa(best);
    throw e;
  }
  if (r instanceof Promise) return r.finally(() => binding().setIsa(best)) as T;
  binding().setIsa(best);
  return r;
}

/**
 * Odd-shaped peaked logits for the output-pool tests: N x V in [-3, 3) from an LCG, row i
 * raised to 14 at column 11 i mod V, with row stride ld >= V.
 */
export function peakedLogits(n: number, v: number, seed: number, ld = v): Float32Array {
  let x = seed >>> 0;
  const a = new Float32Array(n * ld);
  for (let i = 0; i < a.length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    a[i] = (x / 2 ** 32) * 6 - 3;
  }
  for (let i = 0; i < n; i++) a[i * ld + ((i * 11) % v)] = 14;
  return a;
}

/** The first (up to 5) elements where two output snapshots differ, as hex, for a failure message. */
export function firstDiffs(a: Buffer, b: Buffer, dtype: string): string {
  const size = dtype === 'f32' || dtype === 'i32' ? 4 : dtype === 'u8' ? 1 : 2;
  const out: string[] = [];
  for (let i = 0; i < a.length && out.length < 5; i += size) {
    if (!a.subarray(i, i + size).equals(b.subarray(i, i + size)))
      out.push(`[${i / size}] 0x${a.subarray(i, i + size).toString('hex')} vs 0x${b.subarray(i, i + size).toString('hex')}`);
  }
  return out.join(', ');
}
