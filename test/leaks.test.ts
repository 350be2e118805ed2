/**
 * Leaks: 100,000 small calls of every op (plus 10,000 async ones on the CPU) keep the
 * process's memory flat, and tensors that are dropped without dispose() are freed by
 * their finalizers. Each check runs in a child `node --expose-gc`
 * (test/fixtures/leak_loop.ts) so that it can force full GCs and measure undisturbed.
 *
 * Tolerances, measured after a full GC at each checkpoint:
 *  - external / arrayBuffers (every CPU tensor is an ArrayBuffer; CUDA memory is reported
 *    to V8 with AdjustExternalMemory) may grow by at most 64 KiB over 100,000 calls:
 *    a leak of a single byte per call would be 100 KB, of one result tensor ≥ 1.6 MB.
 *  - RSS is noisy (allocator arenas of the worker threads, heap growth): the run is split
 *    into four quarters of 25,000 calls and the median quarter may grow by at most 1 MiB.
 *    A steady native leak of ≥ 42 bytes per call (any malloc'd object, a std::string)
 *    grows every quarter by more than that; a one-off jump (a new arena) moves one.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CUDA, CUDA_SKIP_REASON } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXTERNAL_LIMIT = 64 * 1024;
const RSS_QUARTER_LIMIT = 2 ** 20;

function child(args: string[], timeout = 400_000): unknown {
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', 'test/fixtures/leak_loop.ts', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env },
    timeout,
    maxBuffer: 16 * 2 ** 20,
  });
  const context = `status ${r.status}, signal ${r.signal}\nstderr:\n${r.stderr.slice(-4000)}`;
  expect(r.signal, context).toBeNull();
  expect(r.status, context).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

interface OpMem { calls: number; asyncCalls: number; ms: number; rss: number; external: number; arrayBuffers: number; rssSteps: number[] }

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return (s[(s.length - 1) >> 1]! + s[s.length >> 1]!) / 2;
}

function checkOps(r: Record<string, OpMem>): void {
  const lines = Object.entries(r).map(
    ([op, m]) =>
      `${op.padEnd(20)} ${m.calls} sync + ${m.asyncCalls} async in ${(m.ms / 1000).toFixed(1)} s: external ${m.external} B, arrayBuffers ${m.arrayBuffers} B, RSS ${(m.rss / 1024).toFixed(0)} KiB (quarters ${m.rssSteps.map((x) => (x / 1024).toFixed(0)).join(' / ')} KiB)`,
  );
  console.log(`[leaks]\n${lines.join('\n')}`);
  for (const [op, m] of Object.entries(r)) {
    expect(m.external, `${op}: external memory growth`).toBeLessThanOrEqual(EXTERNAL_LIMIT);
    expect(m.arrayBuffers, `${op}: ArrayBuffer growth`).toBeLessThanOrEqual(EXTERNAL_LIMIT);
    expect(median(m.rssSteps), `${op}: median RSS growth per 25,000 calls (quarters ${m.rssSteps.join(', ')})`).toBeLessThanOrEqual(RSS_QUARTER_LIMIT);
  }
}

interface Finalized { count: number; finalized: number; rounds: number; heldBytes: number; held: { external: number }; afterGc: { external: number; arrayBuffers: number } }

function checkFinalizers(r: Finalized): void {
  console.log(`[leaks] finalizers: ${r.finalized}/${r.count} undisposed tensors collected in ${r.rounds} GC round(s); external ${r.held.external} B while held, ${r.afterGc.external} B after`);
  expect(r.held.external).toBeGreaterThanOrEqual(r.heldBytes); // the memory was really there...
  expect(r.finalized).toBe(r.count); // ...every tensor was collected...
  expect(r.afterGc.external).toBeLessThanOrEqual(EXTERNAL_LIMIT); // ...and its memory released
}

describe('leaks (CPU)', () => {
  it('100,000 calls of every op keep external memory and RSS flat', () => {
    checkOps(child(['ops', '100000', 'cpu'], 900_000) as Record<string, OpMem>);
  }, 900_000);

  it('undisposed tensors and op results are freed by their finalizers (node --expose-gc)', () => {
    checkFinalizers(child(['finalizers', 'cpu']) as Finalized);
  });
});

describe.skipIf(!CUDA)(`leaks (CUDA)${CUDA ? '' : ` — skipped: ${CUDA_SKIP_REASON}`}`, () => {
  it('100,000 calls of every op on cuda:0 keep external memory and RSS flat', () => {
    checkOps(child(['ops', '100000', 'cuda:0'], 900_000) as Record<string, OpMem>);
  }, 900_000);

  it('100,000 device allocations + dispose keep memory flat', () => {
    const r = child(['alloc', '100000', 'cuda:0']) as { calls: number; external: number; rss: number };
    console.log(`[leaks] CUDA alloc/free x${r.calls}: external ${r.external} B, RSS ${r.rss} B`);
    expect(r.external).toBeLessThanOrEqual(EXTERNAL_LIMIT);
    expect(r.rss).toBeLessThanOrEqual(8 * RSS_QUARTER_LIMIT);
  });

  it('undisposed CUDA tensors are freed by their finalizers', () => {
    checkFinalizers(child(['finalizers', 'cuda:0']) as Finalized);
  });
});
