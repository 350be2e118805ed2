/**
 * The CUDA kernels' GPU-independent logic, run on the CPU through the debug binding
 * (native/binding/cuda_debug.cc), which calls the very functions the kernels call
 * (native/common/cuda_plan.h, cuda_rowstats.h):
 *  - the divergence rows kernel's plan (cluster size, staged sweeps, dynamic shared
 *    memory) for the shared-memory attributes of every architecture the build targets,
 *    the slices of a row over a cluster and the staging layout;
 *  - the sparse kernels' dynamic shared memory against every architecture's limit;
 *  - the online softmax statistics of a row (pair_update / pair_merge / row_results) in
 *    the kernels' own chunk order and reduction tree, for clusters of 1 to 8 blocks,
 *    against the float64 reference (test/reference/distillation.ts refTokenStats).
 * Runs in every build, with or without CUDA: none of this needs a GPU.
 */
import { describe, expect, it } from 'vitest';
import { binding } from '../lib/native.js';
import { errorOf } from './helpers.js';
import { compareArrays, mulberry32, randomLogits } from './reference/common.js';
import { refTokenStats } from './reference/distillation.js';
import { lossTol, maxAbsFinite } from './tolerances.js';

const F32 = 0, F16 = 1, BF16 = 2;

/**
 * Shared-memory attributes per compute capability (CUDA C++ Programming Guide, "Technical
 * Specifications per Compute Capability": shared memory per SM, per block with opt-in,
 * 1 KB reserved per block), for every architecture of the default build
 * (80-real;86-real;89-real;90-real;100-real;120-real). Clusters: compute capability 9.0+.
 */
const ARCHS = [
  { arch: 'sm_80 (A100)', perSm: 164 * 1024, reservedPerBlock: 1024, optinPerBlock: 163 * 1024, clusters: false },
  { arch: 'sm_86 (RTX 30, A10)', perSm: 100 * 1024, reservedPerBlock: 1024, optinPerBlock: 99 * 1024, clusters: false },
  { arch: 'sm_89 (L4, L40, RTX 40)', perSm: 100 * 1024, reservedPerBlock: 1024, optinPerBlock: 99 * 1024, clusters: false },
  { arch: 'sm_90 (H100, H200)', perSm: 228 * 1024, reservedPerBlock: 1024, optinPerBlock: 227 * 1024, clusters: true },
  { arch: 'sm_100 (B200)', perSm: 228 * 1024, reservedPerBlock: 1024, optinPerBlock: 227 * 1024, clusters: true },
  { arch: 'sm_120 (RTX 50)', perSm: 100 * 1024, reservedPerBlock: 1024, optinPerBlock: 99 * 1024, clusters: true },
] as const;
type Arch = (typeof ARCHS)[number];

const VS = [1, 7, 8, 9, 123, 1271, 4096, 4097, 8192, 16384, 32000, 98304, 98305, 128256, 151936, 196608, 262144, 1 << 20];
const PAIRS = [
  { name: 'f32/f32', sDtype: F32, tDtype: F32, teacher: true },
  { name: 'bf16/bf16', sDtype: BF16, tDtype: BF16, teacher: true },
  { name: 'f16/f32', sDtype: F16, tDtype: F32, teacher: true },
  { name: 'bf16, no teacher (CE only)', sDtype: BF16, tDtype: F32, teacher: false },
];

function plan(a: Arch, v: number, p: (typeof PAIRS)[number], restage = true) {
  const r = binding().cudaDebugPlan({ op: 'divergence', v, ...p, restage, ...a });
  return r as Required<typeof r>;
}

const words = (dt: number): number => (dt === F32 ? 2 : 1);

describe('CUDA divergence row plan (common/cuda_plan.h) on every target architecture', () => {
  it('slices tile the row in whole, 16-byte aligned chunks; staging fits two blocks per SM; cl is independent of the gradient', () => {
    const bad: string[] = [];
    for (const a of ARCHS)
      for (const p of PAIRS)
        for (const v of VS) {
          const r = plan(a, v, p);
          const where = `${a.arch} ${p.name} V=${v}`;
          const fail = (what: string): void => void (bad.length < 20 && bad.push(`${where}: ${what} (${JSON.stringify({ ...r, slices: r.slices.length })})`));
          if (![1, 2, 4, 8].includes(r.cl)) fail(`cl = ${r.cl} is not a power of two <= 8`);
          if (!a.clusters && r.cl !== 1) fail('a cluster on an architecture without clusters');
          // slices: contiguous, cover [0, V), each starts at a multiple of 8 elements
          let col = 0;
          for (const [c0, c1, nchunks, sweeps] of r.slices) {
            if (c0 !== col) fail(`slice starts at ${c0}, expected ${col}`);
            if (c0 % 8 !== 0 && c0 !== v) fail(`slice start ${c0} is not a whole chunk`);
            if (nchunks !== Math.ceil((c1 - c0) / 8) || sweeps !== Math.ceil(nchunks / r.rowThreads)) fail('chunk / sweep counts');
            if (r.cl > 1 && c1 === c0) fail('an empty slice in a cluster');
            col = c1;
          }
          if (col !== v) fail(`slices end at ${col}, not V`);
          // shared memory: the layout ends exactly at smem, two blocks per SM fit
          const sw0 = r.slices[0]![3];
          if (r.stageSweeps > sw0) fail('more staged sweeps than the slice has');
          if (r.smem !== r.scratch + r.stageSweeps * r.perSweep) fail('smem != scratch + staged sweeps');
          if (r.perSweep !== r.rowThreads * 16 * (words(p.sDtype) + (p.teacher ? words(p.tDtype) : 0))) fail('bytes per sweep');
          if (r.teacherStageOffset + (p.teacher ? r.stageSweeps * r.rowThreads * 16 * words(p.tDtype) : 0) !== r.smem)
            fail('the teacher staging area does not end at smem');
          if (r.smem > r.residentDynamicSmem) fail(`smem ${r.smem} > ${r.residentDynamicSmem}: ${r.blocksPerSm} blocks per SM do not fit`);
          if (2 * (r.smem + a.reservedPerBlock) > a.perSm) fail('two blocks (with the reserved 1 KB each) exceed the SM');
          // minimality: a fully staged plan uses the smallest cluster that fully stages
          if (r.stageSweeps === sw0 && r.cl > 1) {
            const half = binding().cudaDebugPlan({ op: 'divergence', v, ...p, ...a, maxCluster: r.cl / 2 }) as Required<typeof r>;
            if (half.stageSweeps === half.slices[0]![3]) fail(`cl = ${r.cl / 2} would have staged everything`);
          }
          // the loss must not depend on whether a gradient is asked for: same cl, nothing staged
          const nograd = plan(a, v, p, false);
          if (nograd.cl !== r.cl) fail(`cl ${nograd.cl} without a gradient vs ${r.cl} with`);
          if (nograd.stageSweeps !== 0 || nograd.smem !== r.scratch) fail('a plan without re-reads stages something');
        }
    expect(bad, bad.join('\n')).toEqual([]);
  });

  it('the limits quoted in native/cuda/divergence.cu: fully staged up to these V, re-read from L2 beyond', () => {
    const [a100, , , h100] = [ARCHS[0], ARCHS[1], ARCHS[2], ARCHS[3]];
    const f32 = PAIRS[0]!, bf16 = PAIRS[1]!;
    const full = (a: Arch, v: number, p: (typeof PAIRS)[number]) => {
      const r = plan(a, v, p);
      return { cl: r.cl, full: r.stageSweeps === r.slices[0]![3] };
    };
    // H100 / H200: 8-block clusters hold f32 rows up to 98304 and bf16 rows up to 196608
    expect(full(h100, 98304, f32)).toEqual({ cl: 8, full: true });
    expect(full(h100, 98305, f32)).toEqual({ cl: 8, full: false });
    expect(full(h100, 196608, bf16)).toEqual({ cl: 8, full: true });
    expect(full(h100, 196609, bf16)).toEqual({ cl: 8, full: false });
    expect(full(h100, 151936, bf16)).toEqual({ cl: 8, full: true }); // the docs' bf16 V = 151936 example
    // A100 (no clusters): one block holds f32 rows up to 8192, bf16 up to 16384
    expect(full(a100, 8192, f32)).toEqual({ cl: 1, full: true });
    expect(full(a100, 8193, f32)).toEqual({ cl: 1, full: false });
    expect(full(a100, 16384, bf16)).toEqual({ cl: 1, full: true });
    expect(full(a100, 16385, bf16)).toEqual({ cl: 1, full: false });
    // sm_86 / sm_89 (100 KB per SM): half of that budget
    expect(full(ARCHS[1], 4096, f32)).toEqual({ cl: 1, full: true });
    expect(full(ARCHS[1], 4097, f32)).toEqual({ cl: 1, full: false });
  });

  it('a partly staged plan uses the widest cluster that runs; where clusters cannot run at all, cl = 1', () => {
    const h100 = ARCHS[3];
    const r = plan(h100, 1 << 20, PAIRS[0]!);
    expect(r.cl).toBe(8);
    expect(r.stageSweeps).toBe(Math.floor(r.budget / r.perSweep));
    // occupancy says no cluster fits (e.g. a MIG slice or a busy GPC): one block per row, staging what fits
    const none = binding().cudaDebugPlan({ op: 'divergence', v: 1 << 20, ...PAIRS[0]!, ...h100, maxCluster: 1 }) as Required<typeof r>;
    expect(none.cl).toBe(1);
    expect(none.smem).toBeLessThanOrEqual(none.residentDynamicSmem);
  });

  it('staging layout: each (sweep, word, thread) has its own 16-byte slot; a warp reads 512 contiguous bytes', () => {
    const b = binding();
    const T = 512;
    for (const W of [1, 2]) {
      const seen = new Set<number>();
      const sweeps = 3;
      for (let sw = 0; sw < sweeps; sw++)
        for (let w = 0; w < W; w++) {
          for (let tid = 0; tid < T; tid++) {
            const off = b.cudaDebugStageOffset(sw, w, W, tid);
            expect(off % 16).toBe(0);
            expect(seen.has(off)).toBe(false);
            seen.add(off);
          }
          for (let warp = 0; warp < T / 32; warp++) {
            const first = b.cudaDebugStageOffset(sw, w, W, warp * 32);
            expect(b.cudaDebugStageOffset(sw, w, W, warp * 32 + 31)).toBe(first + 31 * 16); // conflict-free ld.shared.v4
          }
        }
      expect(Math.max(...seen) + 16).toBe(sweeps * W * T * 16); // dense: nothing outside the planned bytes
    }
    expect(errorOf(() => b.cudaDebugStageOffset(0, 2, 2, 0)).code).toBe('KD_EINVAL');
  });
});

describe('CUDA sparse kernels: dynamic shared memory fits every target architecture', () => {
  it('sparseKlDiv (k <= 4096, all tails) and sampleTeacher (V <= 1M)', () => {
    const b = binding();
    // static shared memory of sparse_rows / sample_rows: < 1 KB (33-entry scratch arrays); 2 KB allowed
    const staticAllowance = 2048;
    for (const k of [1, 2, 3, 64, 100, 1000, 1024, 4095, 4096])
      for (const bucket of [false, true]) {
        const r = b.cudaDebugPlan({ op: 'sparse', k, bucket }) as Required<ReturnType<typeof b.cudaDebugPlan>>;
        expect(r.p2 >= Math.max(k, 2) && (r.p2 & (r.p2 - 1)) === 0 && r.p2 < 2 * Math.max(k, 2)).toBe(true);
        if (bucket) expect(r.hsize >= Math.max(2 * k, 64) && (r.hsize & (r.hsize - 1)) === 0).toBe(true);
        expect(r.bytes).toBe(r.p2 * 12 + (bucket ? r.hsize * 4 : 0));
        for (const a of ARCHS) expect(r.bytes + staticAllowance, `${a.arch} k=${k}`).toBeLessThanOrEqual(a.optinPerBlock);
      }
    for (const v of [1, 1024, 1025, 151936, 1 << 20]) {
      const r = b.cudaDebugPlan({ op: 'sample', v }) as Required<ReturnType<typeof b.cudaDebugPlan>>;
      expect(r.chunks).toBe(Math.ceil(v / 1024));
      expect(r.bytes).toBe((r.chunks + 1) * 8);
      expect(r.bytes).toBeLessThanOrEqual(48 * 1024); // V <= 1M needs no opt-in on any architecture
    }
  });
});

describe('CUDA online softmax statistics (common/cuda_rowstats.h) in the kernels\' order, vs float64', () => {
  const KEYS = ['forwardKl', 'reverseKl', 'studentEntropy', 'teacherEntropy'] as const;

  function emulate(s: Float64Array, t: Float64Array, v: number, cl: number, temperature: number, teacherLogprobs = false) {
    return binding().cudaDebugRowStats({ s: Float32Array.from(s), t: Float32Array.from(t), v, cl, temperature, teacherLogprobs });
  }

  it('forward / reverse KL and both entropies per row, clusters of 1, 2, 4, 8 blocks, odd V, peaked rows, -inf, T != 1, raw log-probs', () => {
    const errs: string[] = [];
    let seed = 100;
    for (const v of [1, 7, 123, 1271, 4097, 32000, 151936])
      for (const sc of [
        { scale: 2, peaked: true, negInf: 0, T: 1, logprobs: false },
        { scale: 3, peaked: true, negInf: Math.min(5, v - 1), T: 2, logprobs: false },
        { scale: 1, peaked: false, negInf: 0, T: 0.7, logprobs: false },
        { scale: 2, peaked: true, negInf: 0, T: 1, logprobs: true },
        { scale: 300, peaked: false, negInf: 0, T: 1, logprobs: false },
      ]) {
        seed++;
        const s = Float64Array.from(randomLogits(1, v, { seed, scale: sc.scale, peaked: sc.peaked, negInf: sc.negInf }), Math.fround);
        let t = Float64Array.from(randomLogits(1, v, { seed: seed + 1000, scale: sc.scale, peaked: sc.peaked }), Math.fround);
        if (sc.logprobs) {
          // teacher log-probs (normalised in float64, then rounded to f32, as a store would hold them)
          let m = -Infinity;
          for (const x of t) m = Math.max(m, x);
          let z = 0;
          for (const x of t) z += Math.exp(x - m);
          t = Float64Array.from(t, (x) => Math.fround(x - m - Math.log(z)));
        }
        const ref = refTokenStats(s, t, 1, v, { temperature: sc.T, teacherKind: sc.logprobs ? 'logprobs' : 'logits' });
        const tol = lossTol(Math.max(maxAbsFinite(s), maxAbsFinite(t)), sc.T, v);
        for (const cl of [1, 2, 4, 8]) {
          const got = emulate(s, t, v, cl, sc.T, sc.logprobs);
          for (const k of KEYS) {
            const r = compareArrays([got[k]], [ref[k][0]!], { ...tol, label: `V=${v} cl=${cl} ${JSON.stringify(sc)} ${k}` });
            if (!r.ok) errs.push(r.message);
          }
        }
      }
    expect(errs.slice(0, 12), errs.slice(0, 12).join('\n')).toEqual([]);
  });

  it('a NaN logit makes its own quantities NaN only; a row that is all -inf but one has zero entropy; empty slices merge as identities', () => {
    const v = 1000;
    const rng = mulberry32(5);
    const s = Float64Array.from({ length: v }, () => Math.fround(rng() * 4 - 2));
    const t = Float64Array.from({ length: v }, () => Math.fround(rng() * 4 - 2));
    const sn = s.slice();
    sn[777] = NaN;
    for (const cl of [1, 8]) {
      const r = emulate(sn, t, v, cl, 1);
      expect([r.forwardKl, r.reverseKl, r.studentEntropy].every(Number.isNaN)).toBe(true);
      expect(Number.isFinite(r.teacherEntropy)).toBe(true);
      // one finite entry: q and p are one-hot, KLs and entropies exactly 0, never NaN
      const one = new Float64Array(v).fill(-Infinity);
      one[333] = 1.5;
      const r1 = emulate(one, one, v, cl, 1.3);
      for (const k of KEYS) expect(r1[k]).toBe(0);
    }
    // V = 1 over 8 blocks: seven empty slices
    const r = emulate(Float64Array.of(3), Float64Array.of(-2), 1, 8, 1);
    for (const k of KEYS) expect(r[k]).toBe(0);
  });

  it('rejects bad debug arguments with KD_EINVAL', () => {
    const b = binding();
    expect(errorOf(() => b.cudaDebugRowStats({ s: new Float32Array(4), t: new Float32Array(4), v: 4, cl: 3 })).code).toBe('KD_EINVAL');
    expect(errorOf(() => b.cudaDebugRowStats({ s: new Float32Array(2), t: new Float32Array(4), v: 4 })).code).toBe('KD_ESHAPE');
    expect(errorOf(() => b.cudaDebugPlan({ op: 'divergence', v: 0, perSm: 1, reservedPerBlock: 0, optinPerBlock: 1 })).code).toBe('KD_EINVAL');
  });
});
