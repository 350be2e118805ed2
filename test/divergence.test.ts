/**
 * klDiv / jsd / tvd / skewKl on the CPU against the float64 references, per dtype and
 * option, on odd shapes and peaked inputs (CUDA: test/cuda_divergence.test.ts).
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { caseName, check, type DivCase } from './divergence_cases.js';
import type { Divergence } from './reference/divergences.js';
import { encodeDtype, type FloatDType } from './reference/common.js';
import { ISA_LEVELS, supportedIsas, withIsa } from './helpers.js';

const DIVS: { divergence: Divergence; beta?: number; skew?: number }[] = [
  { divergence: 'forward-kl' },
  { divergence: 'reverse-kl' },
  { divergence: 'jsd', beta: 0.5 },
  { divergence: 'jsd', beta: 0.1 },
  { divergence: 'jsd', beta: 0.9 },
  { divergence: 'jsd', beta: 0 },
  { divergence: 'jsd', beta: 1 },
  { divergence: 'tvd' },
  { divergence: 'skew-forward-kl', skew: 0.1 },
  { divergence: 'skew-reverse-kl', skew: 0.1 },
  { divergence: 'skew-forward-kl', skew: 0 },
  { divergence: 'skew-reverse-kl', skew: 0.5 },
];
const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];

/** Option scenarios applied to every divergence on the main odd shape. */
const SCENARIOS: Partial<DivCase>[] = [
  {},
  { temperature: 2, labels: 'some-ignored', reduction: 'sum' },
  { temperature: 0.5, scaleT2: false, mask: true, weights: true, reduction: 'none', gradScale: -0.7 },
  { teacherKind: 'logprobs', reduction: 'mean', normalizer: 37 },
  { teacherKind: 'logprobs', temperature: 2, gradDtype: 'f32', grad: 'given' },
  { negInf: true, labels: 'some-ignored', grad: 'inplace' },
  { vt: 1300, ldS: 1280, ldT: 1310, reduction: 'batchmean', gradScale: 3 },
];

function expectPass(c: DivCase): void {
  const errs = check(c);
  if (errs.length) throw new Error(`${caseName(c)}\n${errs.join('\n')}`);
}

describe('divergences × dtypes × options on 41×1271 (peaked)', () => {
  for (const d of DIVS)
    for (const dtype of DTYPES)
      it(`${d.divergence}${d.beta !== undefined ? ` beta=${d.beta}` : ''}${d.skew !== undefined ? ` skew=${d.skew}` : ''} ${dtype}`, () => {
        for (const sc of SCENARIOS) expectPass({ n: 41, v: 1271, sDtype: dtype, ...d, ...sc });
      });
});

describe('mixed student/teacher dtypes', () => {
  for (const [s, t] of [['bf16', 'f32'], ['f32', 'bf16'], ['f16', 'bf16']] as const)
    it(`${s} student, ${t} teacher`, () => {
      for (const d of DIVS.slice(0, 4)) expectPass({ n: 7, v: 123, sDtype: s, tDtype: t, ...d, temperature: 1.5 });
    });
});

describe('shapes: 7×123, 3×32000, 2×151936, V = 1, N = 0', () => {
  const shapes = [
    [7, 123],
    [3, 32000],
    [2, 151936],
    [5, 1],
    [1, 7],
  ] as const;
  for (const [n, v] of shapes)
    it(`${n}×${v}`, () => {
      for (const d of DIVS) for (const dtype of ['f32', 'bf16'] as const) expectPass({ n, v, sDtype: dtype, ...d });
    });

  it('N = 0 gives loss 0 and an empty gradient', () => {
    const s = kd.tensor(new Float32Array(0), [0, 17]);
    for (const fn of [kd.klDiv, kd.jsd, kd.tvd, kd.skewKl] as const) {
      const r = fn(s, s, {});
      expect(r.loss.item()).toBe(0);
      expect(r.grad!.shape).toEqual([0, 17]);
    }
  });

  it('[B, T, V] logits flatten to rows; reduction none returns [B, T]', () => {
    const v = 11;
    const data = Float32Array.from({ length: 2 * 3 * v }, (_, i) => Math.sin(i) * 3);
    const tdata = Float32Array.from({ length: 2 * 3 * v }, (_, i) => Math.cos(i) * 2);
    const r3 = kd.klDiv(kd.tensor(data, [2, 3, v]), kd.tensor(tdata, [2, 3, v]), { reduction: 'none' });
    const r2 = kd.klDiv(kd.tensor(data, [6, v]), kd.tensor(tdata, [6, v]), { reduction: 'none' });
    expect(r3.loss.shape).toEqual([2, 3]);
    expect(r3.grad!.shape).toEqual([2, 3, v]);
    expect(Array.from(r3.loss.toArray())).toEqual(Array.from(r2.loss.toArray()));
    expect(Array.from(r3.grad!.toArray())).toEqual(Array.from(r2.grad!.toArray()));
  });
});

describe('edge cases', () => {
  it('all tokens ignored: loss 0 and grad 0, never NaN', () => {
    for (const d of DIVS) for (const red of ['batchmean', 'mean', 'sum', 'none'] as const) expectPass({ n: 9, v: 57, sDtype: 'f32', ...d, labels: 'all-ignored', reduction: red });
    const s = kd.tensor(Float32Array.from({ length: 4 * 5 }, (_, i) => i % 7), [4, 5]);
    const r = kd.jsd(s, s, { labels: new Int32Array(4).fill(-100) });
    expect(r.loss.item()).toBe(0);
    expect(Array.from(r.grad!.toArray()).every((x) => x === 0)).toBe(true);
  });

  it('logits of magnitude 1e4', () => {
    for (const d of DIVS) expectPass({ n: 6, v: 301, sDtype: 'f32', ...d, scale: 1e4 / 4 });
  });

  it('-inf logits (banned tokens) never produce NaN', () => {
    for (const d of DIVS)
      for (const dtype of DTYPES) expectPass({ n: 11, v: 97, sDtype: dtype, ...d, negInf: true, temperature: 0.7 });
  });

  it('a NaN logit makes its own token NaN and nothing else', () => {
    const n = 4, v = 33;
    const s = Float32Array.from({ length: n * v }, (_, i) => Math.sin(i * 1.7) * 4);
    const t = Float32Array.from({ length: n * v }, (_, i) => Math.cos(i * 0.3) * 4);
    s[2 * v + 5] = NaN;
    for (const fn of [kd.klDiv, kd.jsd, kd.tvd, kd.skewKl] as const) {
      const r = fn(kd.tensor(s, [n, v]), kd.tensor(t, [n, v]), { reduction: 'none' });
      const loss = r.loss.toArray();
      const grad = r.grad!.toArray();
      expect(Number.isNaN(loss[2])).toBe(true);
      for (const i of [0, 1, 3]) {
        expect(Number.isFinite(loss[i])).toBe(true);
        for (let j = 0; j < v; j++) expect(Number.isFinite(grad[i * v + j])).toBe(true);
      }
    }
  });

  it('V = 1: every divergence is 0 with zero gradient', () => {
    const s = kd.tensor(new Float32Array([3, -2, 7]), [3, 1]);
    const t = kd.tensor(new Float32Array([1, 5, -9]), [3, 1]);
    for (const fn of [kd.klDiv, kd.jsd, kd.tvd, kd.skewKl] as const) {
      const r = fn(s, t, {});
      expect(r.loss.item()).toBe(0);
      expect(Array.from(r.grad!.toArray()).every((x) => x === 0)).toBe(true);
    }
  });

  it('grad: false skips the gradient; the loss is unchanged', () => {
    const b = { n: 5, v: 64, sDtype: 'f32' as const, divergence: 'jsd' as const };
    expectPass({ ...b, grad: 'none' });
  });
});

describe('jsd endpoints are exactly the KLs (TRL)', () => {
  it('beta = 0 is forward KL and beta = 1 reverse KL, bitwise', () => {
    const n = 13, v = 517;
    const s = kd.tensor(Float32Array.from({ length: n * v }, (_, i) => Math.sin(i * 0.37) * 5), [n, v]);
    const t = kd.tensor(Float32Array.from({ length: n * v }, (_, i) => Math.cos(i * 0.11) * 5), [n, v]);
    const j0 = kd.jsd(s, t, { beta: 0, temperature: 1.3 });
    const f = kd.klDiv(s, t, { temperature: 1.3 });
    const j1 = kd.jsd(s, t, { beta: 1, temperature: 1.3 });
    const r = kd.klDiv(s, t, { direction: 'reverse', temperature: 1.3 });
    expect(j0.loss.item()).toBe(f.loss.item());
    expect(j1.loss.item()).toBe(r.loss.item());
    expect(Buffer.from(j0.grad!.toArray().buffer).equals(Buffer.from(f.grad!.toArray().buffer))).toBe(true);
    expect(Buffer.from(j1.grad!.toArray().buffer).equals(Buffer.from(r.grad!.toArray().buffer))).toBe(true);
  });
});

describe('determinism', () => {
  it('bitwise identical across 1, 2 and 4 threads, and across runs', () => {
    const before = kd.backends().cpu.threads;
    const n = 37, v = 5003;
    const s = kd.tensor(Float32Array.from({ length: n * v }, (_, i) => Math.sin(i * 0.013) * 6), [n, v]);
    const t = kd.tensor(Float32Array.from({ length: n * v }, (_, i) => Math.cos(i * 0.007) * 6), [n, v]);
    const results: { loss: number; grad: Buffer }[] = [];
    for (const threads of [1, 2, 4, 2]) {
      kd.setThreads(threads);
      for (const fn of [kd.klDiv, kd.jsd, kd.tvd, kd.skewKl] as const) {
        const r = fn(s, t, { temperature: 1.7 });
        results.push({ loss: r.loss.item(), grad: Buffer.from(r.grad!.toArray().buffer) });
      }
    }
    kd.setThreads(before);
    for (let k = 4; k < results.length; k++) {
      expect(results[k]!.loss).toBe(results[k % 4]!.loss);
      expect(results[k]!.grad.equals(results[k % 4]!.grad)).toBe(true);
    }
  });

  it('async form gives the same bits as the sync form', async () => {
    const n = 9, v = 1001;
    const s = kd.tensor(Float32Array.from({ length: n * v }, (_, i) => Math.sin(i) * 3), [n, v]);
    const t = kd.tensor(Float32Array.from({ length: n * v }, (_, i) => Math.cos(i) * 3), [n, v]);
    const a = await kd.jsdAsync(s, t, { beta: 0.3 });
    const b = kd.jsd(s, t, { beta: 0.3 });
    expect(a.loss.item()).toBe(b.loss.item());
    expect(Buffer.from(a.grad!.toArray().buffer).equals(Buffer.from(b.grad!.toArray().buffer))).toBe(true);
  });
});

/**
 * Gradients of >= 16 MiB (tuning::kCpuStreamBytes) go out with streaming stores, block by
 * block, the partial lines at a row's ends with plain stores (row.h LineStream). Rows are
 * computed independently, so the same rows in calls below that size (plain stores) give
 * the reference bit for bit; the gradient array starts 0-15 elements off a 64-byte line
 * (V8 aligns a Float32Array's memory to 16 bytes only) and V is odd, so every row starts
 * at a different offset within a line. At AVX2 a forward KL f32 or bf16 gradient is
 * streamed straight from the registers (cpu/divergence.cc fkl_grad_stream; bf16 at odd
 * 2-byte offsets too): also in place.
 */
describe('streamed gradients (>= 16 MiB) at any alignment and in place equal the plain-store path bit for bit', () => {
  const N = 41;
  const V = 204_803; // 41 × 204 803 × 2 bytes = 16.8 MB (bf16), 33.6 MB (f32)
  const CHUNK = 13; // rows per reference call: 13 × V × 4 bytes = 10.6 MB, plain stores
  const rnd = (seed: number) => () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5) * 12;
  const sF32 = Float32Array.from({ length: N * V }, rnd(7));
  const tF32 = Float32Array.from({ length: N * V }, rnd(11));
  const input = { f32: [sF32, tF32], bf16: [encodeDtype(sF32, 'bf16'), encodeDtype(tF32, 'bf16')] } as const;
  const labels = Int32Array.from({ length: N }, (_, i) => (i * 7919) % V);
  type Call = (s: kd.Tensor, t: kd.Tensor, o: Record<string, unknown>, r0: number, r1: number) => kd.LossResult;
  const CASES: { name: string; call: Call }[] = [
    // reduction 'sum': a row's gradient does not depend on how many rows the call has
    { name: 'forward KL (pass B writes)', call: (s, t, o) => kd.klDiv(s, t, { reduction: 'sum', ...o }) },
    { name: 'jsd β = 0.3 (pass C writes)', call: (s, t, o) => kd.jsd(s, t, { beta: 0.3, reduction: 'sum', ...o }) },
    {
      name: 'distillationLoss, CE at T = 2 (staged blocks)',
      call: (s, t, o, r0, r1) =>
        kd.distillationLoss(s, t, labels.subarray(r0, r1), { temperature: 2, reduction: 'sum', ...o }),
    },
  ];
  const SENTINEL = { f32: -12345.5, bf16: 0x7fc1 };
  const tensorOf = (dtype: 'f32' | 'bf16', a: Float32Array | Uint16Array, r0: number, r1: number) =>
    kd.tensor(a.subarray(r0 * V, r1 * V), [r1 - r0, V], { dtype });
  for (const dtype of ['f32', 'bf16'] as const)
    for (const c of CASES)
      it(`${c.name}, ${dtype}`, () => {
        const [sa, ta] = input[dtype];
        const want: (Float32Array | Uint16Array)[] = [];
        for (let r0 = 0; r0 < N; r0 += CHUNK) {
          const r1 = Math.min(N, r0 + CHUNK);
          want.push((c.call(tensorOf(dtype, sa, r0, r1), tensorOf(dtype, ta, r0, r1), {}, r0, r1).grad!.toArray() as Float32Array).slice());
        }
        const expected = dtype === 'f32' ? new Float32Array(N * V) : new Uint16Array(N * V);
        want.forEach((w, k) => expected.set(w, k * CHUNK * V));
        const elems = N * V;
        expect(elems * (dtype === 'f32' ? 4 : 2)).toBeGreaterThanOrEqual(16 << 20);
        for (const off of dtype === 'f32' ? [0, 1, 3, 4, 13] : [0, 1, 7, 31]) {
          const backing = dtype === 'f32' ? new Float32Array(elems + 32) : new Uint16Array(elems + 32);
          backing.fill(SENTINEL[dtype]);
          const g = backing.subarray(off, off + elems);
          c.call(tensorOf(dtype, sa, 0, N), tensorOf(dtype, ta, 0, N), { grad: kd.tensor(g, [N, V], { dtype }) }, 0, N);
          const bad = g.findIndex((x, j) => !Object.is(x, expected[j]));
          if (bad >= 0)
            throw new Error(`offset ${off}: first mismatch at row ${Math.floor(bad / V)}, col ${bad % V}: got ${g[bad]}, want ${expected[bad]}`);
          const outside = [...backing.subarray(0, off), ...backing.subarray(off + elems)];
          expect(outside.every((x) => x === SENTINEL[dtype]), `offset ${off}: written outside the gradient`).toBe(true);
        }
        // In place: the student's own memory receives the streamed gradient.
        const own = sa.slice();
        const sIn = kd.tensor(own, [N, V], { dtype });
        expect(c.call(sIn, tensorOf(dtype, ta, 0, N), { grad: 'inplace' }, 0, N).grad).toBe(sIn);
        const bad = own.findIndex((x, j) => !Object.is(x, expected[j]));
        if (bad >= 0)
          throw new Error(`in place: first mismatch at row ${Math.floor(bad / V)}, col ${bad % V}: got ${own[bad]}, want ${expected[bad]}`);
      });
});

/**
 * The CPU kernels exist per ISA level (native/cpu: AVX-512, AVX2 and generic builds of
 * the same sources, with intrinsics paths at AVX-512 and AVX2 and, below AVX-512, forward
 * KL's loss from the first pass). The suite above runs the best level this machine has;
 * here every level it supports runs the divergence tables against the float64 reference.
 */
describe('every CPU ISA level (AVX-512, AVX2, generic) agrees with the reference', () => {
  const LEVEL_SCENARIOS: Partial<DivCase>[] = [
    {},
    { temperature: 2, labels: 'some-ignored', reduction: 'sum', weights: true },
    { teacherKind: 'logprobs', grad: 'given', gradDtype: 'f32' },
    { negInf: true, grad: 'inplace', temperature: 0.7 },
    { vt: 1300, ldS: 1280, ldT: 1310, reduction: 'none', gradScale: -2 },
  ];
  it('runs at least the generic level and the best one', () => {
    const l = supportedIsas();
    expect(l).toContain('generic');
    expect(l).toContain(kd.backends().cpu.simd);
  });

  for (const isa of ISA_LEVELS)
    for (const dtype of DTYPES)
      it(`${isa}: every divergence, ${dtype}, 9×1271 and 2×32000`, (ctx) => {
        if (!supportedIsas().includes(isa)) return ctx.skip();
        withIsa(isa, () => {
          for (const d of DIVS) {
            for (const sc of LEVEL_SCENARIOS) expectPass({ n: 9, v: 1271, sDtype: dtype, ...d, ...sc });
            expectPass({ n: 2, v: 32000, sDtype: dtype, ...d, temperature: 1.5 });
          }
          for (const d of DIVS.slice(0, 3)) expectPass({ n: 5, v: 777, sDtype: dtype, ...d, labels: 'some-ignored', hardWeight: 0.5, softWeight: 0.5, labelSmoothing: 0.1 });
        });
      });

  // The first pass at AVX2 takes a block's exps relative to the running max of the blocks
  // before it and its max in the same sweep, redoing a block whose max rises more than
  // 16 / max(1/T, 1) above that (cpu/divergence.cc kFusedBlockMax): rises kept and redone,
  // blocks 150 below the running max, and the CE's untempered exps at T = 2.
  it('block-wise steps of the logits (rises, drops) at every level, every divergence, T = 1, 0.5, 2', () => {
    for (const isa of supportedIsas())
      withIsa(isa, () => {
        for (const dtype of DTYPES)
          for (const d of DIVS)
            for (const temperature of [1, 0.5, 2]) expectPass({ n: 3, v: 8 * 1024 + 77, sDtype: dtype, ...d, temperature, blockSteps: true });
        for (const d of DIVS.slice(0, 3))
          expectPass({ n: 3, v: 8 * 1024 + 77, sDtype: 'f32', ...d, blockSteps: true, temperature: 2, labels: 'some-ignored', hardWeight: 0.5, softWeight: 0.5, labelSmoothing: 0.1 });
      });
  });

  // Forward KL's loss below AVX-512 is sum_b c_b (X_b / T + S_b K_b) from the first pass
  // (cpu/divergence.cc fkl_cross_block): for a teacher that is the student shifted by a
  // large constant, KL = 0 exactly, and the two parts must cancel to within f32 rounding
  // of the log-probs (not of the shift).
  it('forward KL of a shifted copy is 0 at every level, for shifts up to 2^12', () => {
    const n = 6, v = 3001;
    const s = Float32Array.from({ length: n * v }, (_, i) => Math.round(Math.sin(i * 0.37) * 256) / 64); // k/64 in [-4, 4]
    for (const isa of supportedIsas())
      withIsa(isa, () => {
        for (const c of [0, 1, 1000, 4096]) {
          const t = s.map((x) => x + c); // exact in f32 (17 significant bits)
          for (const T of [1, 2]) {
            const r = kd.klDiv(kd.tensor(s, [n, v]), kd.tensor(t, [n, v]), { temperature: T, reduction: 'none' });
            const tol = 64 * 2 ** -24 * (4 / T + Math.log(v) + 1) * T * T;
            for (const x of r.loss.toArray()) if (!(Math.abs(x) <= tol)) throw new Error(`${isa} shift ${c} T=${T}: per-token KL ${x}, want |KL| <= ${tol}`);
            const g = r.grad!.toArray();
            for (let j = 0; j < g.length; j++) if (!(Math.abs(g[j]!) <= 1e-6)) throw new Error(`${isa} shift ${c} T=${T}: grad[${j}] = ${g[j]}`);
          }
        }
      });
  });
});
