/**
 * Leaks: 100,000 small calls of every op (plus 10,000 async ones on the CPU) keep the
 * process's memory flat, and tensors that are dropped without dispose() are freed by
 * their finalizers. Each check runs in a child `node --expose-gc`
 * (test/fixtures/leak_loop.ts) so that it can force full GCs and measure undisturbed.
 *
 * Tolerances, measured after a full GC at each checkpoint:
 *  - external / arrayBuffers (every CPU tensor is an ArrayBuffer; CUDA memory is reported
 *    to V8 with AdjustExternalMemory) may grow by at most 64 KiB over 100,000 calls:
 *    a leak of a single byte per call would be 100 KB, of one result tensor ≥ 1.6 MB
 *    (a native reference that outlived its call would pin that call's outputs).
 *  - the V8 heap (heapUsed) by at most 1 MiB: ~10 bytes per call of JS objects.
 *  - RSS, measured after the C heap has given its free pages back (malloc_trim): the run
 *    is split into quarters of 25,000 calls; the first settles, and the last three together
 *    (75,000 calls) may grow by at most 4 MiB. A steady native leak of >= 56 bytes per call
 *    (a malloc'd struct, a std::string) exceeds it. The child runs with V8's young
 *    generation at a fixed size (YOUNG_GEN): by default V8 doubles it when it sees many
 *    survivors and touches the new pages over the next quarter, +8 MiB of RSS and of
 *    heapTotal at a time (seen in CI in the trimmed pool loop: quarters +0.6, +8.1, +0.1,
 *    +0.0 MiB; here +6.3 to +8.9 MiB over the last three quarters in 3 of 3 runs). With it
 *    fixed and the C heap trimmed, the last three quarters measured -15.6 to +1.5 MiB
 *    (the drops: V8 and malloc giving back pages), 5 runs of the pool loops, 2 of the rest.
 *  - the C heap's bytes in use (glibc's mallinfo2 over all arenas, after the trim) by at
 *    most 1 MiB over those 75,000 calls: measured -0.46 to +0.10 MiB (with and without
 *    the fixed young generation), so a leak of any malloc'd object per call (glibc's
 *    smallest chunk is 32 bytes) exceeds it, even behind the largest drop seen. Checked by
 *    a malloc per divergence call put in and taken out again: of 56 bytes, both checks
 *    failed (RSS +5.3 MB); of 24 bytes, this one (+2.8 MB; RSS +3.4 MB passed).
 *    (Not measured where the C library is not glibc.)
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CUDA, CUDA_SKIP_REASON } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXTERNAL_LIMIT = 64 * 1024;
const HEAP_LIMIT = 2 ** 20;
const RSS_LIMIT = 4 * 2 ** 20;
const MALLOC_LIMIT = 2 ** 20;
/** V8's semi-spaces held at 8 MB (its default maximum on 64-bit): see the header. */
const YOUNG_GEN = ['--min-semi-space-size=8', '--max-semi-space-size=8'];

function child(args: string[], timeout = 400_000): unknown {
  const r = spawnSync(process.execPath, ['--expose-gc', ...YOUNG_GEN, '--import', 'tsx', 'test/fixtures/leak_loop.ts', ...args], {
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

interface OpMem {
  calls: number; asyncCalls: number; ms: number; rss: number; external: number; arrayBuffers: number; heapUsed: number; rssSteps: number[];
  /** V8's committed heap, and the C heap's bytes in use (glibc; empty elsewhere), per quarter. */
  heapTotalSteps: number[]; mallocSteps: number[];
  /** The output pool's bytes (idle + in use) and fresh blocks, per quarter. */
  poolSteps: number[]; freshSteps: number[];
  /** The pool: bytes left off V8's external-memory count at each checkpoint (pool mode). */
  hiddenSteps: number[];
}

function checkOps(r: Record<string, OpMem>): void {
  const lines = Object.entries(r).map(
    ([op, m]) =>
      `${op.padEnd(20)} ${m.calls} sync + ${m.asyncCalls} async in ${(m.ms / 1000).toFixed(1)} s: external ${m.external} B, arrayBuffers ${m.arrayBuffers} B, heap ${m.heapUsed} B, RSS quarters ${m.rssSteps.map((x) => (x / 1024).toFixed(0)).join(' / ')} KiB` +
      ` (heapTotal ${m.heapTotalSteps.map((x) => (x / 1024).toFixed(0)).join(' / ')}), malloc in use ${m.mallocSteps.length ? m.mallocSteps.map((x) => (x / 1024).toFixed(1)).join(' / ') + ' KiB' : 'not measured'}` +
      `, pool quarters ${m.poolSteps.map((x) => (x / 1024).toFixed(0)).join(' / ')} KiB (fresh blocks ${m.freshSteps.join(' / ')})`,
  );
  console.log(`[leaks]\n${lines.join('\n')}`);
  for (const [op, m] of Object.entries(r)) {
    expect(m.external, `${op}: external memory growth`).toBeLessThanOrEqual(EXTERNAL_LIMIT);
    expect(m.arrayBuffers, `${op}: ArrayBuffer growth`).toBeLessThanOrEqual(EXTERNAL_LIMIT);
    expect(m.heapUsed, `${op}: V8 heap growth`).toBeLessThanOrEqual(HEAP_LIMIT);
    const late = m.rssSteps.slice(1).reduce((a, b) => a + b, 0);
    expect(late, `${op}: RSS growth over the last 75,000 calls (quarters ${m.rssSteps.join(', ')})`).toBeLessThanOrEqual(RSS_LIMIT);
    if (m.mallocSteps.length) {
      const lateMalloc = m.mallocSteps.slice(1).reduce((a, b) => a + b, 0);
      expect(lateMalloc, `${op}: C heap bytes in use, growth over the last 75,000 calls (quarters ${m.mallocSteps.join(', ')})`).toBeLessThanOrEqual(MALLOC_LIMIT);
    }
    // the pool's own memory (not seen by V8's counters) is held to the same bound
    const latePool = m.poolSteps.slice(1).reduce((a, b) => a + b, 0);
    expect(latePool, `${op}: output pool growth over the last 75,000 calls (quarters ${m.poolSteps.join(', ')})`).toBeLessThanOrEqual(RSS_LIMIT);
  }
}

interface Finalized {
  count: number; finalized: number; rounds: number; heldBytes: number; held: { external: number }; afterGc: { external: number; arrayBuffers: number };
  /** In-use bytes of the CPU output pool while held and after. */
  heldPooled: number; pooledAfter: number;
}

function checkFinalizers(r: Finalized, cpu: boolean): void {
  console.log(`[leaks] finalizers: ${r.finalized}/${r.count} undisposed tensors collected in ${r.rounds} GC round(s); external ${r.held.external} B while held, ${r.afterGc.external} B after`);
  expect(r.held.external).toBeGreaterThanOrEqual(r.heldBytes); // the memory was really there...
  if (cpu) expect(r.heldPooled).toBeGreaterThanOrEqual(32 * 2 ** 20); // (the 32 op results: pooled blocks)
  expect(r.finalized).toBe(r.count); // ...every tensor was collected...
  expect(r.afterGc.external).toBeLessThanOrEqual(EXTERNAL_LIMIT); // ...and its memory released
  expect(r.pooledAfter).toBeLessThanOrEqual(0); // (the pool's blocks back, idle)
}

describe('leaks (CPU)', () => {
  it('100,000 calls of every op keep external memory and RSS flat', () => {
    checkOps(child(['ops', '100000', 'cpu'], 900_000) as Record<string, OpMem>);
  }, 900_000);

  it('the output pool: 100,000 calls with 128 KiB gradients, disposed, dropped, and with the pool trimmed, keep memory flat', () => {
    const r = child(['pool', '100000'], 900_000) as Record<string, OpMem>;
    checkOps(r);
    // V8 is not shown pooled blocks under half the cap (native/binding/pool.cc HideFromV8);
    // what is taken off its count comes back with the block: after a GC and one disposed
    // call, only that call's 128 KiB block is still off, never more
    for (const [op, m] of Object.entries(r))
      for (const h of m.hiddenSteps) expect(h, `${op}: bytes left off V8's count at a checkpoint`).toBeLessThanOrEqual(128 * 1024);
    // disposed outputs are reused: each quarter starts from a trimmed pool, so it takes at
    // most the 16 blocks of its 16 async calls in flight; its 25,000 sync calls none more
    for (const f of r['pool: klDiv + dispose']!.freshSteps) expect(f, 'fresh blocks in a quarter of disposed calls').toBeLessThanOrEqual(16);
  }, 900_000);

  it('the check itself sees a leak of 64 bytes per call', () => {
    const r = child(['selftest', '100000']) as Record<string, OpMem>;
    expect(() => checkOps(r)).toThrow(/ArrayBuffer growth|external memory growth/);
  });

  it('undisposed tensors and op results are freed by their finalizers (node --expose-gc)', () => {
    checkFinalizers(child(['finalizers', 'cpu']) as Finalized, true);
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
    expect(r.rss).toBeLessThanOrEqual(2 * RSS_LIMIT);
  });

  it('undisposed CUDA tensors are freed by their finalizers', () => {
    checkFinalizers(child(['finalizers', 'cuda:0']) as Finalized, false);
  });
});
