/**
 * topk on the CPU (and CUDA against the CPU) vs the float64 reference
 * (test/reference/sparse.ts: a full sort of each row), per dtype, on odd shapes,
 * tie-heavy, peaked, -inf and tiny-tail inputs; determinism; bad arguments.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { CUDA, CUDA_SKIP_REASON, errorOf, supportedIsas, withIsa } from './helpers.js';
import { compareArrays, decodeDtype, encodeDtype, mulberry32, randomLogits, roundToDtype, type FloatDType } from './reference/common.js';
import { refTopk } from './reference/sparse.js';
import { TOPK_LOGPROB_TOL, TOPK_OUT_ROUNDING, TOPK_TAIL_TOL } from './tolerances.js';

// Tolerances: test/tolerances.ts (TOPK_*, justified there; shared with the WebGPU tests).
const LOGPROB_TOL = TOPK_LOGPROB_TOL;
const OUT_ROUNDING = TOPK_OUT_ROUNDING;
const TAIL_TOL = TOPK_TAIL_TOL;

const DTYPES: FloatDType[] = ['f32', 'f16', 'bf16'];

interface Case {
  n: number;
  v: number;
  k: number;
  dtype: FloatDType;
  data: Float64Array; // n × v logits (float64, rounded to dtype before use)
  temperature?: number;
  output?: 'logits' | 'logprobs';
  valuesDtype?: 'f32' | 'input';
  ld?: number; // row stride (>= v)
  device?: kd.Device;
}

function makeTensor(data: Float64Array, n: number, v: number, dtype: FloatDType, ld = v, device: kd.Device = 'cpu'): kd.Tensor {
  const padded = new Float64Array(Math.max(0, (n - 1) * ld + v));
  for (let i = 0; i < n; i++) for (let j = 0; j < v; j++) padded[i * ld + j] = data[i * v + j]!;
  return kd.tensor(encodeDtype(padded, dtype), [n, v], { dtype, strides: [ld, 1], device });
}

function check(c: Case): void {
  const { n, v, k, dtype } = c;
  const rounded = roundToDtype(c.data, dtype);
  const t = makeTensor(c.data, n, v, dtype, c.ld ?? v, c.device ?? 'cpu');
  const r = kd.topk(t, k, { temperature: c.temperature, output: c.output, valuesDtype: c.valuesDtype });
  const ref = refTopk(rounded, n, v, k, { temperature: c.temperature, output: c.output });
  const label = `topk ${n}x${v} k=${k} ${dtype} T=${c.temperature ?? 1} ${c.output ?? 'logits'} values=${c.valuesDtype ?? 'f32'}`;
  expect(r.indices.shape).toEqual([n, k]);
  expect(r.values.dtype).toBe(c.valuesDtype === 'input' ? dtype : 'f32');
  const ids = compareArrays(r.indices.toArray(), ref.indices, { label: `${label} indices`, cols: k });
  expect(ids.ok, ids.message).toBe(true);
  const outDtype: FloatDType = c.valuesDtype === 'input' ? dtype : 'f32';
  const vals = decodeDtype(r.values.toArray() as Float32Array | Uint16Array, outDtype);
  const vt = c.output === 'logprobs' ? { atol: LOGPROB_TOL.atol, rtol: LOGPROB_TOL.rtol + OUT_ROUNDING[outDtype] } : { atol: 0, rtol: 0 };
  const cv = compareArrays(vals, ref.values, { ...vt, label: `${label} values`, cols: k });
  expect(cv.ok, cv.message).toBe(true);
  const ct = compareArrays(r.tailLogProb.toArray(), ref.tailLogProb, { ...TAIL_TOL, label: `${label} tailLogProb` });
  expect(ct.ok, ct.message).toBe(true);
}

/** Small integers in [0, m): every value is tied with ~V/m others. */
function ties(n: number, v: number, m: number, seed: number): Float64Array {
  const rng = mulberry32(seed);
  return Float64Array.from({ length: n * v }, () => Math.floor(rng() * m));
}

/**
 * Rows whose top-k ids (random positions, logits near 0) hold all but `tail` of the
 * probability mass: the other V - k logits sit around log(tail · k / (V - k)).
 */
function tinyTail(n: number, v: number, k: number, tail: number, seed: number): Float64Array {
  const rng = mulberry32(seed);
  const out = new Float64Array(n * v);
  const base = Math.log((tail * k) / (v - k));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < v; j++) out[i * v + j] = base + (rng() - 0.5);
    for (let c = 0; c < k; c++) out[i * v + Math.floor(rng() * v)] = rng() * 0.5;
  }
  return out;
}

describe('topk vs a full float64 sort', () => {
  for (const dtype of DTYPES) {
    it(`odd shapes, ${dtype}`, () => {
      check({ n: 41, v: 1271, k: 17, dtype, data: randomLogits(41, 1271, { seed: 1, peaked: true }) });
      check({ n: 41, v: 1271, k: 17, dtype, data: randomLogits(41, 1271, { seed: 2, scale: 3 }), output: 'logprobs', temperature: 2.5 });
      check({ n: 7, v: 123, k: 7, dtype, data: randomLogits(7, 123, { seed: 3 }), output: 'logprobs', ld: 130 });
      check({ n: 3, v: 32000, k: 64, dtype, data: randomLogits(3, 32000, { seed: 4, scale: 2 }), output: 'logprobs', valuesDtype: 'input' });
      check({ n: 2, v: 151936, k: 64, dtype, data: randomLogits(2, 151936, { seed: 5, scale: 2, peaked: true }), output: 'logprobs' });
    });

    it(`edge k and V, ${dtype}`, () => {
      check({ n: 4, v: 1, k: 1, dtype, data: randomLogits(4, 1, { seed: 6 }), output: 'logprobs' }); // V = 1: tail empty
      check({ n: 3, v: 123, k: 1, dtype, data: randomLogits(3, 123, { seed: 7 }), output: 'logprobs' });
      check({ n: 3, v: 123, k: 123, dtype, data: randomLogits(3, 123, { seed: 8 }), output: 'logprobs' }); // k = V
      check({ n: 2, v: 1271, k: 1024, dtype, data: randomLogits(2, 1271, { seed: 9 }), output: 'logprobs' });
      check({ n: 2, v: 32000, k: 1024, dtype, data: randomLogits(2, 32000, { seed: 10, scale: 4 }), temperature: 0.7 });
    });

    it(`tie-heavy inputs, ${dtype}`, () => {
      check({ n: 5, v: 1271, k: 17, dtype, data: ties(5, 1271, 5, 11), output: 'logprobs' });
      check({ n: 3, v: 20000, k: 1024, dtype, data: ties(3, 20000, 3, 12) });
      check({ n: 3, v: 5000, k: 100, dtype, data: new Float64Array(3 * 5000).fill(1.5), output: 'logprobs' }); // all equal
      check({ n: 2, v: 3000, k: 40, dtype, data: ties(2, 3000, 2, 13).map((x) => (x === 0 ? -0 : 0)) }); // only ±0
      check({ n: 2, v: 6000, k: 64, dtype, data: Float64Array.from({ length: 12000 }, (_, i) => (i % 6000) * 1e-2) }); // ascending
    });

    it(`-inf entries, peaked rows, ${dtype}`, () => {
      check({ n: 7, v: 1271, k: 31, dtype, data: randomLogits(7, 1271, { seed: 14, peaked: true, negInf: 100 }), output: 'logprobs' });
      const fewFinite = randomLogits(3, 200, { seed: 15, negInf: 195 }); // 5 finite entries, k = 9
      check({ n: 3, v: 200, k: 9, dtype, data: fewFinite, output: 'logprobs' });
    });

    it(`tail mass 1e-30 (and 1e-45) within 1e-5 relative, ${dtype}`, () => {
      check({ n: 4, v: 5000, k: 8, dtype, data: tinyTail(4, 5000, 8, 1e-30, 16), output: 'logprobs' });
      check({ n: 2, v: 32000, k: 64, dtype, data: tinyTail(2, 32000, 64, 1e-45, 17), output: 'logprobs' });
    });
  }

  it('a tiny tail keeps its precision where log(1 - sum of top-k probs) cannot', () => {
    const data = tinyTail(1, 5000, 8, 1e-30, 18);
    const r = kd.topk(makeTensor(data, 1, 5000, 'f32'), 8, { output: 'logprobs' });
    const ref = refTopk(roundToDtype(data, 'f32'), 1, 5000, 8);
    // 1 - sum of the top-k probabilities cancels completely (it is 0, a rounding error,
    // or negative), so its log is off by tens of nats or NaN.
    const viaComplement = Math.log(1 - r.values.toFloat32Array().reduce((s, x) => s + Math.exp(x), 0));
    expect(Math.abs(viaComplement - ref.tailLogProb[0]!) < 1).toBe(false);
    expect(Math.abs(r.tailLogProb.item() / ref.tailLogProb[0]! - 1)).toBeLessThan(TAIL_TOL.rtol);
    expect(Math.abs(ref.tailLogProb[0]! - Math.log(1e-30))).toBeLessThan(2);
  });

  it('rows without a distribution: NaN or only -inf give NaN tails and log-probs', () => {
    const v = 50;
    const data = randomLogits(3, v, { seed: 19 });
    data[5] = NaN; // row 0 has a NaN: it ranks first (as torch.topk)
    for (let j = 0; j < v; j++) data[v + j] = -Infinity; // row 1: all -inf
    check({ n: 3, v, k: 4, dtype: 'f32', data, output: 'logprobs' });
    const r = kd.topk(makeTensor(data, 3, v, 'f32'), 4, { output: 'logprobs' });
    const tail = r.tailLogProb.toArray();
    expect(Number.isNaN(tail[0]!) && Number.isNaN(tail[1]!)).toBe(true);
    expect(Number.isFinite(tail[2]!)).toBe(true);
    expect(r.indices.toArray()[0]).toBe(5);
  });

  it('[B, T, V] logits give [B, T, k] outputs; N = 0 works', () => {
    const data = randomLogits(6, 300, { seed: 20 });
    const t = kd.tensor(Float32Array.from(data), [2, 3, 300]);
    const r = kd.topk(t, 5, { output: 'logprobs' });
    expect(r.values.shape).toEqual([2, 3, 5]);
    expect(r.indices.shape).toEqual([2, 3, 5]);
    expect(r.tailLogProb.shape).toEqual([2, 3]);
    const ref = refTopk(roundToDtype(data, 'f32'), 6, 300, 5);
    expect(Array.from(r.indices.toArray())).toEqual(Array.from(ref.indices));
    const e = kd.topk(kd.tensor(new Float32Array(0), [0, 10]), 3);
    expect(e.values.shape).toEqual([0, 3]);
  });
});

// ---- input orderings ---------------------------------------------------------------------
// The CPU kernel's speed used to depend on the order of a row (a running threshold let
// every element of an ascending row into its buffer); its results never may. Each
// ordering, per dtype, against the float64 reference, with a row stride, and bitwise
// equal for 1 and 2 threads.
const ORDERINGS = ['iid', 'ascending', 'descending', 'zipf', 'equal', 'sawtooth', 'threshold-ties'] as const;
type Ordering = (typeof ORDERINGS)[number];

/**
 * n rows of v logits in the given order: i.i.d. 2·N(0,1); the same values sorted
 * ascending / descending along the vocabulary; Zipf-like (a frequency-sorted vocabulary:
 * -1.1 log(rank) + N(0, 0.5²)); all equal; a sawtooth of period 1000 (ascending runs);
 * and rows whose k-th largest value is shared by many ids (integers 0..9 with ~k/2 nines
 * and ~V/9 eights: the k-th largest is an eight, tied with thousands of later ids).
 */
function ordered(kind: Ordering, n: number, v: number, k: number, seed: number): Float64Array {
  const rng = mulberry32(seed);
  const out = new Float64Array(n * v);
  for (let i = 0; i < n; i++) {
    const r = out.subarray(i * v, (i + 1) * v);
    for (let j = 0; j < v; j++) {
      const g = Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
      if (kind === 'zipf') r[j] = -1.1 * Math.log(j + 1) + 0.5 * g;
      else if (kind === 'equal') r[j] = 0.75;
      else if (kind === 'sawtooth') r[j] = (j % 1000) / 100;
      else if (kind === 'threshold-ties') r[j] = Math.floor(rng() * 9);
      else r[j] = 2 * g;
    }
    if (kind === 'threshold-ties') for (let c = 0; c < Math.max(1, k >> 1); c++) r[Math.floor(rng() * v)] = 9;
    if (kind === 'ascending') r.sort();
    if (kind === 'descending') r.sort().reverse();
  }
  return out;
}

describe('every input ordering gives the reference result', () => {
  for (const dtype of DTYPES)
    it(`ascending, descending, Zipf-like, all equal, i.i.d., sawtooth, ties at the threshold, ${dtype}`, () => {
      let seed = 100;
      for (const kind of ORDERINGS) {
        check({ n: 2, v: 151936, k: 64, dtype, data: ordered(kind, 2, 151936, 64, seed++), output: 'logprobs' });
        check({ n: 4, v: 32000, k: 1024, dtype, data: ordered(kind, 4, 32000, 1024, seed++), output: 'logprobs', temperature: 0.7, ld: 32005 });
        check({ n: 5, v: 5003, k: 1, dtype, data: ordered(kind, 5, 5003, 1, seed++), output: 'logprobs' });
        check({ n: 7, v: 1271, k: 17, dtype, data: ordered(kind, 7, 1271, 17, seed++), valuesDtype: 'input' });
      }
    });

  it('a row whose top k all lie in one sampled run (the prefilter admits < k) is redone exactly', () => {
    // White-box: mirrors plan_sample in native/cpu/topk.cc (32 runs of 128 at murmur3-mixed
    // places in 32 strata). The 64 largest logits fill the first sampled run, so the
    // sampled threshold (the 11th largest of the sample) lets only 11 elements through and
    // the kernel must redo the row without it. Whatever the placement, the result must be
    // the reference's.
    const v = 151936, k = 64, L = 128;
    const mix32 = (h: number): number => {
      h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35);
      return (h ^ (h >>> 16)) >>> 0;
    };
    const slots = Math.floor(v / L), hi = Math.floor(slots / 32);
    const start = (mix32((0 ^ 0x9e3779b9) >>> 0) % hi) * L;
    for (const dtype of DTYPES) {
      const data = ordered('iid', 2, v, k, 7);
      for (let i = 0; i < 2; i++) for (let c = 0; c < k; c++) data[i * v + start + c] = 20 + c / 8;
      check({ n: 2, v, k, dtype, data, output: 'logprobs' });
    }
  });

  it('1 and 2 threads give bitwise identical results for every ordering', () => {
    const before = kd.backends().cpu.threads;
    try {
      let seed = 200;
      for (const kind of ORDERINGS) {
        const t = makeTensor(ordered(kind, 12, 40000, 64, seed++), 12, 40000, 'f32');
        const run = (threads: number) => {
          kd.setThreads(threads);
          const r = kd.topk(t, 64, { output: 'logprobs' });
          return [r.indices, r.values, r.tailLogProb].map((x) => Buffer.from(x.toArray().buffer));
        };
        const [a, b] = [run(1), run(2)];
        for (let j = 0; j < 3; j++) expect(b[j]!.equals(a[j]!), `${kind}: output ${j} differs between 1 and 2 threads`).toBe(true);
      }
    } finally {
      kd.setThreads(before);
    }
  });
});

describe('every CPU ISA level (AVX-512, AVX2, generic) agrees with the reference', () => {
  it('topk, sampleTeacher and sparseKlDiv at each level this machine supports', () => {
    const data = randomLogits(5, 5000, { seed: 60, scale: 2 });
    const t = makeTensor(data, 5, 5000, 'bf16');
    let firstIds: number[] | undefined;
    for (const isa of supportedIsas())
      withIsa(isa, () => {
        check({ n: 5, v: 5000, k: 33, dtype: 'bf16', data, output: 'logprobs' });
        check({ n: 3, v: 20000, k: 1024, dtype: 'f32', data: ties(3, 20000, 3, 61) });
        check({ n: 3, v: 20000, k: 64, dtype: 'f16', data: ordered('ascending', 3, 20000, 64, 63), output: 'logprobs' });
        check({ n: 4, v: 5000, k: 8, dtype: 'f16', data: tinyTail(4, 5000, 8, 1e-30, 62), output: 'logprobs' });
        // The sampled ids do not depend on the ISA level either (common/sample_teacher.h).
        const ids = Array.from(kd.sampleTeacher(t, 64, { seed: 5, proposalPower: 0.5 }).indices.toArray());
        if (firstIds) expect(ids, `sampleTeacher ids at ${isa}`).toEqual(firstIds);
        firstIds = ids;
      });
  });
});

describe('determinism and async', () => {
  it('1 and 2 threads give bitwise identical results; topkAsync equals topk', async () => {
    const t = makeTensor(randomLogits(16, 32000, { seed: 21, scale: 2 }), 16, 32000, 'bf16');
    const run = () => kd.topk(t, 64, { output: 'logprobs' });
    const before = kd.backends().cpu.threads;
    try {
      kd.setThreads(1);
      const a = run();
      kd.setThreads(2);
      const b = run();
      expect(Buffer.from(b.values.toArray().buffer).equals(Buffer.from(a.values.toArray().buffer))).toBe(true);
      expect(Array.from(b.indices.toArray())).toEqual(Array.from(a.indices.toArray()));
      expect(Buffer.from(b.tailLogProb.toArray().buffer).equals(Buffer.from(a.tailLogProb.toArray().buffer))).toBe(true);
      const c = await kd.topkAsync(t, 64, { output: 'logprobs' });
      expect(Buffer.from(c.values.toArray().buffer).equals(Buffer.from(a.values.toArray().buffer))).toBe(true);
    } finally {
      kd.setThreads(before);
    }
  });

  it("the 'logprobs' result is directly a sparse teacher for sparseKlDiv", () => {
    const teacher = makeTensor(randomLogits(4, 500, { seed: 22 }), 4, 500, 'f32');
    const student = makeTensor(randomLogits(4, 500, { seed: 23 }), 4, 500, 'f32');
    const top = kd.topk(teacher, 20, { output: 'logprobs' });
    for (const tail of ['renormalize', 'bucket', 'conditional'] as const) {
      const r = kd.sparseKlDiv(student, top, { tail });
      expect(Number.isFinite(r.loss.item())).toBe(true);
    }
  });
});

describe('topk argument errors', () => {
  const t = kd.tensor(new Float32Array(2 * 10), [2, 10]);
  const cases: { name: string; fn: () => unknown; cls: string; code: string; msg: RegExp }[] = [
    { name: 'k = 0', fn: () => kd.topk(t, 0), cls: 'RangeError', code: 'KD_EINVAL', msg: /between 1 and 1024 for k/ },
    { name: 'k > 1024', fn: () => kd.topk(t, 1025), cls: 'RangeError', code: 'KD_EINVAL', msg: /for k/ },
    { name: 'k > V', fn: () => kd.topk(t, 11), cls: 'RangeError', code: 'KD_ESHAPE', msg: /exceeds the vocabulary size V = 10/ },
    { name: 'fractional k', fn: () => kd.topk(t, 2.5), cls: 'RangeError', code: 'KD_EINVAL', msg: /integer/ },
    { name: 'k as a string', fn: () => kd.topk(t, '3' as unknown as number), cls: 'TypeError', code: 'KD_EINVAL', msg: /integer for k/ },
    { name: 'temperature 0', fn: () => kd.topk(t, 2, { temperature: 0 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /temperature/ },
    { name: 'temperature NaN', fn: () => kd.topk(t, 2, { temperature: NaN }), cls: 'RangeError', code: 'KD_EINVAL', msg: /temperature/ },
    { name: 'bad output', fn: () => kd.topk(t, 2, { output: 'probs' as 'logits' }), cls: 'RangeError', code: 'KD_EINVAL', msg: /'logits', 'logprobs' for output/ },
    { name: 'bad valuesDtype', fn: () => kd.topk(t, 2, { valuesDtype: 'f64' as 'f32' }), cls: 'RangeError', code: 'KD_EINVAL', msg: /valuesDtype/ },
    { name: 'unknown option', fn: () => kd.topk(t, 2, { tempreature: 2 } as never), cls: 'TypeError', code: 'KD_EINVAL', msg: /Unknown option 'tempreature'/ },
    { name: 'not a tensor', fn: () => kd.topk(new Float32Array(4) as never, 2), cls: 'TypeError', code: 'KD_EINVAL', msg: /expected a Tensor for logits/ },
    { name: 'i32 logits', fn: () => kd.topk(kd.tensor(new Int32Array(4), [2, 2]), 1), cls: 'TypeError', code: 'KD_EDTYPE', msg: /f32, f16 or bf16/ },
    { name: '1-D logits', fn: () => kd.topk(kd.tensor(new Float32Array(4), [4]), 1), cls: 'RangeError', code: 'KD_ESHAPE', msg: /\[N, V\]/ },
    { name: 'stream on the CPU', fn: () => kd.topk(t, 2, { stream: 1n }), cls: 'KdError', code: 'KD_EDEVICE', msg: /stream/ },
  ];
  for (const c of cases)
    it(c.name, () => {
      const e = errorOf(c.fn);
      expect(e.name).toBe(c.cls);
      expect(e.code).toBe(c.code);
      expect(e.message).toMatch(c.msg);
    });
});

describe.skipIf(!CUDA)(`topk on CUDA equals the CPU ${CUDA_SKIP_REASON}`, () => {
  function same(data: Float64Array, n: number, v: number, k: number, dtype: FloatDType, opts: kd.TopkOptions = {}): void {
    const cpu = kd.topk(makeTensor(data, n, v, dtype), k, opts);
    const gpu = kd.topk(makeTensor(data, n, v, dtype, v, 'cuda:0'), k, opts);
    const label = `cuda topk ${n}x${v} k=${k} ${dtype}`;
    expect(Array.from(gpu.indices.toArray()), `${label} indices`).toEqual(Array.from(cpu.indices.toArray()));
    const outDtype: FloatDType = opts.valuesDtype === 'input' ? dtype : 'f32';
    const tol = opts.output === 'logprobs' ? { atol: LOGPROB_TOL.atol, rtol: LOGPROB_TOL.rtol + OUT_ROUNDING[outDtype] } : { atol: 0, rtol: 0 };
    const cv = compareArrays(
      decodeDtype(gpu.values.toArray() as Float32Array | Uint16Array, outDtype),
      decodeDtype(cpu.values.toArray() as Float32Array | Uint16Array, outDtype),
      { ...tol, label: `${label} values` },
    );
    expect(cv.ok, cv.message).toBe(true);
    const ct = compareArrays(gpu.tailLogProb.toArray(), cpu.tailLogProb.toArray(), { ...TAIL_TOL, label: `${label} tail` });
    expect(ct.ok, ct.message).toBe(true);
  }
  for (const dtype of DTYPES)
    it(`random, tie-heavy, peaked, -inf, tiny tails, ${dtype}`, () => {
      same(randomLogits(41, 1271, { seed: 30, peaked: true }), 41, 1271, 17, dtype, { output: 'logprobs' });
      same(randomLogits(3, 32000, { seed: 31, scale: 2 }), 3, 32000, 64, dtype, { output: 'logprobs', valuesDtype: 'input' });
      same(randomLogits(2, 151936, { seed: 32, scale: 2 }), 2, 151936, 64, dtype, { temperature: 2, output: 'logprobs' });
      same(randomLogits(3, 123, { seed: 33 }), 3, 123, 123, dtype, { output: 'logprobs' });
      same(randomLogits(3, 1, { seed: 34 }), 3, 1, 1, dtype, { output: 'logprobs' });
      same(ties(3, 20000, 3, 35), 3, 20000, 1024, dtype, { output: 'logprobs' });
      same(ties(2, 40000, 5, 36), 2, 40000, 300, dtype);
      same(new Float64Array(2 * 9000).fill(0.25), 2, 9000, 33, dtype, { output: 'logprobs' });
      same(Float64Array.from({ length: 100000 }, (_, i) => (i % 50000) / 50000), 2, 50000, 64, dtype); // flat: 2 radix levels
      same(randomLogits(7, 1271, { seed: 37, negInf: 100, peaked: true }), 7, 1271, 31, dtype, { output: 'logprobs' });
      same(tinyTail(4, 5000, 8, 1e-30, 38), 4, 5000, 8, dtype, { output: 'logprobs' });
    });

  it('CUDA results equal the float64 reference (f32)', () => {
    check({ n: 5, v: 32000, k: 64, dtype: 'f32', data: randomLogits(5, 32000, { seed: 39, scale: 2 }), output: 'logprobs', device: 'cuda:0' });
    check({ n: 3, v: 20000, k: 1024, dtype: 'bf16', data: ties(3, 20000, 4, 40), output: 'logprobs', device: 'cuda:0' });
  });
});
