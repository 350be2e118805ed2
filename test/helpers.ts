/** Shared test helpers: CUDA availability (with the reason to print when skipping). */
import { backends } from '../lib/index.js';

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
