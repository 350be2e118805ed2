/**
 * fast-check arbitraries for the fuzzer's cases (test/fuzz/cases.ts). Every choice lists
 * its simplest value first and optional options shrink to "not given", so a failure
 * shrinks to a small case with few options. Large vocabularies are rare (5% of cases
 * draw V in 8193..70000) and the rows are capped so rows × V stays under a budget
 * (KD_FUZZ_MAX_ELEMS, default 2^18), which bounds the float64 references' time.
 */
import fc from 'fast-check';
import type { FloatDType } from '../reference/common.js';
import { DIVERGENCES } from '../reference/divergences.js';
import type { DivergenceCase, Family, FuzzCase, LossCaseOptions, SampleTeacherCase, SparseKlDivCase, TokenStatsCase, TopkCase } from './cases.js';
import { SPECIAL_VALUES, type Special } from './inputs.js';

export const DEFAULT_MAX_ELEMS = 2 ** 18;

export function maxElems(): number {
  const e = Number(process.env.KD_FUZZ_MAX_ELEMS);
  return Number.isFinite(e) && e > 0 ? e : DEFAULT_MAX_ELEMS;
}

const dtype = fc.constantFrom<FloatDType>('f32', 'bf16', 'f16');

const vocab = fc.oneof(
  { weight: 40, arbitrary: fc.integer({ min: 1, max: 16 }) },
  { weight: 40, arbitrary: fc.integer({ min: 17, max: 600 }) },
  { weight: 15, arbitrary: fc.integer({ min: 601, max: 8192 }) },
  { weight: 5, arbitrary: fc.integer({ min: 8193, max: 70000 }) },
);

const lead = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 64 }).map((n) => [n]) },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: 16 })).map(([b, t]) => [b, t]) },
);

/** [lead, V] with rows × (V + pad) under the element budget (rows are cut, V kept). */
function shape(budget: number) {
  return fc.record({ lead, v: vocab, pad: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 40 }) }) }).map(({ lead, v, pad }) => {
    const maxRows = Math.max(1, Math.floor(budget / (v + pad)));
    let l = lead;
    if (l.length === 1 && l[0]! > maxRows) l = [maxRows];
    if (l.length === 2 && l[0]! * l[1]! > maxRows) l = [Math.min(l[0]!, maxRows), Math.floor(maxRows / Math.min(l[0]!, maxRows))];
    return { lead: l, v, padS: pad };
  });
}

const special: fc.Arbitrary<Special> = fc.record({
  side: fc.constantFrom<'s' | 't'>('s', 't'),
  row: fc.nat(63),
  col: fc.nat(69999),
  value: fc.constantFrom(...SPECIAL_VALUES),
});
const specials = fc.oneof({ weight: 3, arbitrary: fc.constant<Special[]>([]) }, { weight: 2, arbitrary: fc.array(special, { minLength: 1, maxLength: 4 }) });

/** Bulk values: peaks only at moderate scales (20× a 1000-scale logit overflows f16). */
const values = fc
  .record({ seed: fc.nat(1_000_000), scale: fc.constantFrom(1, 3, 0, 30, 1000), peaked: fc.boolean() })
  .map((v) => ({ ...v, peaked: v.peaked && v.scale <= 30 }));

const opt = <T>(a: fc.Arbitrary<T>, freq = 2) => fc.option(a, { nil: undefined, freq });
const temperature = opt(fc.constantFrom(2, 0.5, 4, 0.25, 1.7, 0.1));

function base(budget: number) {
  return fc.record({ shape: shape(budget), sDtype: dtype, async: fc.boolean(), values, specials }).map((b) => ({ ...b.shape, sDtype: b.sDtype, async: b.async, ...b.values, specials: b.specials }));
}

function lossOptions(): fc.Arbitrary<LossCaseOptions> {
  return fc
    .record({
      temperature,
      scaleT2: opt(fc.boolean()),
      labels: opt(fc.constantFrom('random' as const, 'some-ignored' as const, 'all-ignored' as const)),
      ignoreIndex: opt(fc.constantFrom(-1, 0, 3, -(2 ** 31))),
      mask: opt(fc.boolean()),
      weights: opt(fc.boolean()),
      reduction: opt(fc.constantFrom('sum' as const, 'none' as const, 'mean' as const, 'batchmean' as const)),
      normalizer: opt(fc.constantFrom(1, 37, 0.5, 1e-3, 4096)),
      gradScale: opt(fc.constantFrom(-0.7, 0, 3, 1e-3, 1e3)),
      gradDtype: opt(fc.constantFrom('f32' as const, 'input' as const)),
      grad: fc.constantFrom('new' as const, 'none' as const, 'inplace' as const, 'given' as const),
    })
    .map((o) => {
      // grad 'inplace' writes the student's dtype; 'f32' is only possible for f32 students (see lib/args.ts)
      if (o.grad === 'inplace') delete o.gradDtype;
      return stripUndefined(o);
    });
}

function stripUndefined<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}

function teacherSide() {
  return fc.record({
    vtExtra: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 50 }) }),
    padT: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 40 }) }),
    tDtype: dtype,
    teacher: opt(fc.constantFrom('logprobs' as const, 'logits' as const), 3),
  });
}

function divergence(family: DivergenceCase['family'], budget: number): fc.Arbitrary<FuzzCase> {
  const extra =
    family === 'klDiv' || family === 'skewKl'
      ? fc.record({ direction: opt(fc.constantFrom('reverse' as const, 'forward' as const)), skew: family === 'skewKl' ? opt(fc.constantFrom(0, 0.1, 0.5, 0.9, 0.999)) : fc.constant(undefined) })
      : family === 'jsd'
        ? fc.record({ beta: opt(fc.constantFrom(0, 1, 0.5, 0.1, 0.9, 1e-3)) })
        : family === 'distillationLoss'
          ? fc.record({
              divergence: opt(fc.constantFrom(...DIVERGENCES)),
              beta: opt(fc.constantFrom(0, 1, 0.5, 0.1)),
              skew: opt(fc.constantFrom(0, 0.1, 0.5)),
              hardWeight: opt(fc.constantFrom(1, 0, 0.5, 2)),
              softWeight: opt(fc.constantFrom(1, 0, 0.5, 2)),
              labelSmoothing: opt(fc.constantFrom(0.1, 0, 1)),
            })
          : fc.constant({});
  return fc.tuple(base(budget), teacherSide(), lossOptions(), extra).map(([b, t, o, e]) => {
    const c = stripUndefined({ family, ...b, ...t, ...o, ...(e as object) }) as DivergenceCase;
    if (family === 'distillationLoss' && (c.hardWeight ?? 0.5) === 0 && (c.softWeight ?? 0.5) === 0) c.hardWeight = 1;
    return c;
  });
}

function tokenStats(budget: number): fc.Arbitrary<FuzzCase> {
  return fc.tuple(base(budget), teacherSide(), fc.record({ temperature, sampled: fc.boolean() })).map(([b, t, o]) => stripUndefined({ family: 'tokenStats', ...b, ...t, ...o }) as TokenStatsCase);
}

function topk(budget: number): fc.Arbitrary<FuzzCase> {
  const k = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 64 }) }, { weight: 1, arbitrary: fc.integer({ min: 65, max: 1024 }) });
  return fc
    .tuple(base(budget), fc.record({ k, temperature, output: opt(fc.constantFrom('logprobs' as const, 'logits' as const)), valuesDtype: opt(fc.constantFrom('input' as const, 'f32' as const)) }))
    .map(([b, o]) => stripUndefined({ family: 'topk', ...b, ...o }) as TopkCase);
}

function sampleTeacher(budget: number): fc.Arbitrary<FuzzCase> {
  const samples = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 64 }) }, { weight: 1, arbitrary: fc.integer({ min: 65, max: 4096 }) });
  return fc
    .tuple(
      base(budget),
      fc.record({ samples, drawSeed: fc.nat(), temperature, proposalPower: opt(fc.constantFrom(0, 0.5, 1, 0.25, 2)), logprobs: opt(fc.boolean()) }),
    )
    .map(([b, o]) => {
      const c = stripUndefined({ family: 'sampleTeacher', ...b, ...o }) as SampleTeacherCase;
      // keep rows × samples within the budget too (the check loops over every draw)
      const rows = c.lead.reduce((a, x) => a * x, 1);
      if (rows * c.samples > budget) c.samples = Math.max(1, Math.floor(budget / Math.max(rows, 1)));
      return c;
    });
}

function sparseKlDiv(budget: number): fc.Arbitrary<FuzzCase> {
  const k = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 32 }) }, { weight: 1, arbitrary: fc.integer({ min: 33, max: 4096 }) });
  return fc
    .tuple(
      base(budget),
      lossOptions(),
      fc.record({
        tail: fc.constantFrom('renormalize' as const, 'bucket' as const, 'conditional' as const, 'sampled' as const),
        k,
        ids: fc.constantFrom('topk' as const, 'random' as const),
        valuesDtype: dtype,
      }),
    )
    .map(([b, o, t]) => stripUndefined({ family: 'sparseKlDiv', ...b, ...o, ...t }) as SparseKlDivCase);
}

export function arbitraryFor(family: Family, budget = maxElems()): fc.Arbitrary<FuzzCase> {
  switch (family) {
    case 'tokenStats': return tokenStats(budget);
    case 'topk': return topk(budget);
    case 'sampleTeacher': return sampleTeacher(budget);
    case 'sparseKlDiv': return sparseKlDiv(budget);
    default: return divergence(family, budget);
  }
}
