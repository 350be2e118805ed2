/**
 * Cases the fuzzer found, shrunk, kept as tests (paste new ones from its report).
 * `it.fails` marks a known issue (test/fuzz/known_issues.ts) run strictly: when the bug
 * is fixed the test starts passing, vitest reports that, and the known issue's entry
 * and relaxation are deleted (and `it.fails` becomes `it`).
 */
import { describe, expect, it } from 'vitest';
import { supportedIsas, withIsa } from '../helpers.js';
import { runCase, type FuzzCase } from './cases.js';

describe('fuzz regressions', () => {
  it('distillationLoss with N = 0 tokens (the empty labels array had a null data pointer and read as "no labels")', async () => {
    const c: FuzzCase = { family: 'distillationLoss', lead: [1, 0], v: 1, padS: 1, sDtype: 'f32', async: false, seed: 0, scale: 1, peaked: false, specials: [], vtExtra: 0, padT: 0, tDtype: 'f32', grad: 'new' };
    expect(await runCase(c)).toEqual([]);
    expect(await runCase({ ...c, async: true, lead: [0] })).toEqual([]);
  });

  it('teacher NaN where the student probability underflows: 0 · NaN is 0 (jsd β = 1, log-prob teacher)', async () => {
    const c: FuzzCase = {
      family: 'jsd', lead: [3, 8], v: 2, padS: 5, sDtype: 'f32', async: false, seed: 437926, scale: 1, peaked: true,
      specials: [{ side: 't', row: 2, col: 7, value: 'nan' }, { side: 's', row: 0, col: 0, value: '0' }],
      vtExtra: 0, padT: 0, tDtype: 'f32', teacher: 'logprobs', grad: 'new', beta: 1,
    };
    expect(await runCase(c)).toEqual([]);
  });

  it('skew forward KL at λ = 0 equals forward KL where q underflows (student logits of scale 1000)', async () => {
    const c: FuzzCase = {
      family: 'skewKl', lead: [1], v: 17, padS: 0, sDtype: 'f32', async: false, seed: 0, scale: 1000, peaked: false,
      specials: [{ side: 's', row: 0, col: 0, value: '0' }], vtExtra: 0, padT: 0, tDtype: 'f32', grad: 'new', skew: 0,
    };
    expect(await runCase(c)).toEqual([]);
  });

  it('distillationLoss soft = s·D before weights (it was multiplied by softWeight)', async () => {
    const c: FuzzCase = { family: 'distillationLoss', lead: [1], v: 2, padS: 0, sDtype: 'f32', async: false, seed: 0, scale: 1, peaked: false, specials: [], vtExtra: 0, padT: 0, tDtype: 'f32', grad: 'new' };
    expect(await runCase(c, { strict: true })).toEqual([]);
    expect(await runCase({ ...c, softWeight: 0.25, hardWeight: 2 }, { strict: true })).toEqual([]);
  });

  it('a CE-only distillationLoss (softWeight 0) ignores a NaN teacher; an f32 subnormal gradient is within half an ulp', async () => {
    const c: FuzzCase = {
      family: 'distillationLoss', lead: [1], v: 17, padS: 0, sDtype: 'f32', async: false, seed: 0, scale: 30, peaked: false,
      specials: [{ side: 't', row: 0, col: 0, value: 'nan' }], vtExtra: 0, padT: 0, tDtype: 'f32', gradScale: 0.001, grad: 'new', softWeight: 0,
    };
    expect(await runCase(c)).toEqual([]);
  });

  it('topk of an f16 row that overflowed to +inf: tailLogProb NaN (no distribution) or the −inf limit', async () => {
    const c: FuzzCase = { family: 'topk', lead: [8], v: 4, padS: 0, sDtype: 'f16', async: false, seed: 173106, scale: 30, peaked: true, specials: [], k: 1 };
    expect(await runCase(c)).toEqual([]);
  });

  it("sparseKlDiv 'bucket' gradient where the student's tail mass underflows f32 (q_j/q_t was formed from f32 q_j and q_t: 0 off the ids)", async () => {
    const c: FuzzCase = { family: 'sparseKlDiv', lead: [1], v: 10, padS: 0, sDtype: 'f32', async: false, seed: 0, scale: 1000, peaked: false, specials: [], grad: 'new', tail: 'bucket', k: 2, ids: 'random', valuesDtype: 'f32' };
    expect(await runCase(c, { strict: true })).toEqual([]);
  });

  it("sparseKlDiv 'bucket' where the student's tail mass is e^-99.4 on one token: the gradient element there is −1 (it was −inf)", async () => {
    const c: FuzzCase = { family: 'sparseKlDiv', lead: [29], v: 7357, padS: 0, sDtype: 'f32', async: false, seed: 646541, scale: 30, peaked: true, specials: [], grad: 'new', tail: 'bucket', k: 941, ids: 'random', valuesDtype: 'f32' };
    expect(await runCase(c)).toEqual([]);
  });

  // Found on a Zen 3 (AVX2, no AVX-512) machine: GCC 12 -O3 -mavx2 miscompiled the tail
  // sum's select on the uint8_t id mask (cpu/sparse_kl_div.cc), loss off by 9%. Run at
  // every ISA level the machine has, so an AVX-512 machine checks the AVX2 build too.
  it("sparseKlDiv 'bucket' with top-k ids at every CPU ISA level (the AVX2 build's tail sum was miscompiled)", async () => {
    const c: FuzzCase = { family: 'sparseKlDiv', lead: [1], v: 601, padS: 0, sDtype: 'f32', async: false, seed: 0, scale: 1, peaked: false, specials: [], grad: 'new', tail: 'bucket', k: 3, ids: 'topk', valuesDtype: 'f32' };
    const isas = supportedIsas();
    for (const isa of isas) expect(await withIsa(isa, () => runCase(c)), isa).toEqual([]);
    expect(isas).toContain('generic');
  });

  // Forward KL's loss from pass A (below AVX-512) skipped a block whose teacher exps sum
  // to 0, so a teacher row with no finite logit gave loss 0 instead of NaN.
  it('klDiv with a teacher row of only -inf is NaN at every CPU ISA level (forward KL from pass A gave 0)', async () => {
    const c: FuzzCase = {
      family: 'klDiv', lead: [1], v: 1, padS: 0, sDtype: 'f32', async: false, seed: 0, scale: 1, peaked: false,
      specials: [{ side: 't', row: 0, col: 0, value: '-inf' }, { side: 's', row: 0, col: 0, value: '0' }], vtExtra: 0, padT: 0, tDtype: 'f32', grad: 'new',
    };
    for (const isa of supportedIsas()) expect(await withIsa(isa, () => runCase(c)), isa).toEqual([]);
  });
});
