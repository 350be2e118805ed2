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
