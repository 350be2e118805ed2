/**
 * examples/arithmetic end to end on a tiny configuration (a few seconds): teacher,
 * every student method (dense KD, the sparse store round trip, on-policy), evaluation,
 * the results table; plus the task encoding and determinism.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { Rng, VOCAB, answerOf, encode, layout, makeSplits, randomProblem, render } from '../examples/arithmetic/data.js';
import { Transformer } from '../examples/arithmetic/model.js';
import { ALL_METHODS, METHOD_LABEL, ON_POLICY, runExperiment, type ExperimentConfig } from '../examples/arithmetic/experiment.js';
import { markdownTable, summarize, summaryTable } from '../examples/arithmetic/report.js';
import { runSearch } from '../examples/arithmetic/search.js';
import { readHParams } from '../examples/arithmetic/train.js';
import * as kd from '../lib/index.js';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function tiny(methods = ALL_METHODS): ExperimentConfig {
  return {
    mode: 'test',
    seed: 3,
    digits: 2,
    ops: '+-',
    nTrain: 120,
    nVal: 24,
    nTest: 40,
    teacher: { dModel: 16, nLayers: 1, nHeads: 2, dFF: 32 },
    student: { dModel: 8, nLayers: 1, nHeads: 1, dFF: 16 },
    teacherSteps: 12,
    teacherTarget: 0.9,
    teacherAttempts: 2,
    studentSteps: 6,
    batch: 8,
    teacherLr: 3e-3,
    studentLr: 3e-3,
    weightDecay: 1,
    temperature: 2,
    hardWeight: 0.5,
    softWeight: 0.5,
    lambda: 0.5,
    beta: 0.5,
    warmFraction: 0.5,
    guideTopK: 2,
    rolloutTemperature: 1,
    storeDtype: 'f16',
    methods,
    evalChunk: 40,
    log: () => {},
  };
}

describe('examples/arithmetic', () => {
  it('encodes problems least-significant digit first, zero-padded', () => {
    const L = layout(4);
    const out = new Int32Array(L.seqLen);
    encode({ a: 347, b: 85, op: '+' }, L, out);
    expect(render(out)).toBe('7430+5800=23400');
    encode({ a: 912, b: 68, op: '-' }, L, out);
    expect(render(out)).toBe('2190-8600=44800');
    const rng = new Rng(1);
    for (let i = 0; i < 500; i++) {
      const p = randomProblem(rng, 4);
      expect(p.a).toBeGreaterThanOrEqual(10);
      expect(p.b).toBeLessThan(10000);
      expect(answerOf(p)).toBeGreaterThanOrEqual(0);
      encode(p, L, out);
      let ans = 0;
      for (let j = L.answerLen - 1; j >= 0; j--) ans = 10 * ans + out[L.promptLen + j]!;
      expect(ans).toBe(answerOf(p));
    }
    const { train, test } = makeSplits(5, 3, 300, 100);
    const key = (d: typeof train, i: number) => render(d.tokens.subarray(i * d.L.seqLen, i * d.L.seqLen + d.L.promptLen));
    const seen = new Set(Array.from({ length: train.n }, (_, i) => key(train, i)));
    for (let i = 0; i < test.n; i++) expect(seen.has(key(test, i))).toBe(false);
  });

  it("the model's custom ops (embeddings, LayerNorm, causal softmax with relative bias) match tf autograd", async () => {
    await tf.setBackend('cpu');
    const L = layout(3);
    const { train } = makeSplits(1, 3, 20, 5);
    const [B, T, d, H, dh] = [3, L.inputLen, 8, 2, 4];
    const N = B * T;
    const m = new Transformer({ dModel: d, nLayers: 2, nHeads: H, dFF: 16 }, L, 1, 'gradcheck');
    for (const b of m.blocks) b.rel.assign(tf.randomNormal(b.rel.shape, 0, 1, 'float32', 5));
    const inp = new Int32Array(N);
    for (let b = 0; b < B; b++) inp.set(train.tokens.subarray(b * L.seqLen, b * L.seqLen + T), b * T);
    // The same network from stock tf ops (gather, mean, softmax with an additive mask).
    expect(Array.from(m.sig)).toEqual([0, 1, 2, 4, 0, 1, 2, 5, 0, 1, 2]); // a0..a2 + b0..b2 = c0 c1 c2
    const ref = (): tf.Tensor => {
      const ln = (x: tf.Tensor) => {
        const xc = tf.sub(x, tf.mean(x, 0, true));
        return tf.div(xc, tf.sqrt(tf.add(tf.mean(tf.square(xc), 0, true), 1e-5)));
      };
      const pos = tf.tensor1d(Int32Array.from({ length: N }, (_, n) => n % T), 'int32');
      const sig = tf.tensor1d(Int32Array.from({ length: N }, (_, n) => m.sig[n % T]!), 'int32');
      let x = tf.addN([tf.gather(m.tokEmb, tf.tensor1d(inp, 'int32'), 1), tf.gather(m.posEmb, pos, 1), tf.gather(m.sigEmb, sig, 1)]);
      const mask = tf.tensor2d(Float32Array.from({ length: T * T }, (_, k) => (k % T > Math.floor(k / T) ? -1e9 : 0)), [T, T]);
      const offset = tf.tensor1d(Int32Array.from({ length: T * T }, (_, k) => Math.max(0, Math.floor(k / T) - (k % T))), 'int32');
      for (const blk of m.blocks) {
        const h = ln(x);
        const qkv = tf.matMul(blk.wqkv, h);
        const heads = (i: number) => tf.reshape(tf.transpose(tf.reshape(tf.slice(qkv, [i * d, 0], [d, N]), [H, dh, B, T]), [2, 0, 3, 1]), [B * H, T, dh]);
        const scores = tf.reshape(tf.mul(tf.matMul(heads(0), heads(1), false, true), 1 / Math.sqrt(dh)), [B, H, T, T]);
        const rel = tf.reshape(tf.gather(blk.rel, offset, 1), [1, H, T, T]);
        const att = tf.reshape(tf.softmax(tf.add(tf.add(scores, rel), mask)), [B * H, T, T]);
        const o = tf.reshape(tf.transpose(tf.reshape(tf.matMul(att, heads(2)), [B, H, T, dh]), [1, 3, 0, 2]), [d, N]);
        x = tf.add(x, tf.matMul(blk.wo, o));
        x = tf.add(x, tf.matMul(blk.w2, tf.relu(tf.matMul(blk.w1, ln(x)))));
      }
      const xa = tf.reshape(tf.slice(tf.reshape(x, [d, B, T]), [0, 0, L.firstPred], [d, B, L.answerLen]), [d, B * L.answerLen]);
      return tf.reshape(tf.transpose(tf.matMul(m.wout, ln(xa))), [B, L.answerLen, VOCAB]);
    };
    const w = tf.randomNormal([B, L.answerLen, VOCAB], 0, 1, 'float32', 9);
    const a = tf.variableGrads(() => tf.sum(tf.mul(m.forward(inp, B), w)) as tf.Scalar, m.variables);
    const b = tf.variableGrads(() => tf.sum(tf.mul(ref(), w)) as tf.Scalar, m.variables);
    expect(Math.abs(a.value.dataSync()[0]! - b.value.dataSync()[0]!)).toBeLessThan(1e-4 * Math.abs(b.value.dataSync()[0]!) + 1e-5);
    for (const v of m.variables) {
      const ga = a.grads[v.name]!.dataSync();
      const gb = b.grads[v.name]!.dataSync();
      let scale = 0;
      for (const x of gb) scale = Math.max(scale, Math.abs(x));
      // f32 on both sides, different summation orders: ~1e-6 relative to the largest entry.
      for (let i = 0; i < ga.length; i++) expect(Math.abs(ga[i]! - gb[i]!)).toBeLessThan(2e-5 * scale + 1e-7);
    }
    tf.dispose([a.value, b.value, ...Object.values(a.grads), ...Object.values(b.grads), w]);
    m.dispose();
  });

  it('runs every method end to end on a tiny configuration and writes the table', async () => {
    const before = tf.memory().numTensors;
    const r = await runExperiment(tiny());
    expect(tf.memory().numTensors).toBe(before); // models, optimisers and losses all disposed
    expect(r.results.map((m) => m.id)).toEqual(['teacher', ...ALL_METHODS]);
    for (const m of r.results) {
      expect(m.eval.exactMatch).toBeGreaterThanOrEqual(0);
      expect(m.eval.exactMatch).toBeLessThanOrEqual(1);
      expect(m.eval.perPosition).toHaveLength(3);
      expect(Number.isFinite(m.finalLoss)).toBe(true);
    }
    const by = Object.fromEntries(r.results.map((m) => [m.id, m]));
    const tokens = 120 * 3;
    expect(by.fkl!.teacherBytes).toBe(tokens * 64 * 4); // dense f32 logits
    // Store sizes: packed 6-bit ids + f16 values (+ f32 weights when sampled) + headers.
    expect(by['top8-bucket']!.teacherBytes).toBeGreaterThan(tokens * 8 * 2);
    expect(by['top32-bucket']!.teacherBytes).toBeGreaterThan(by['top8-bucket']!.teacherBytes);
    expect(by.sample8!.teacherBytes).toBeGreaterThan(by['top8-bucket']!.teacherBytes);
    expect(by['top32-bucket']!.teacherBytes).toBeLessThan(by.fkl!.teacherBytes);
    for (const id of ON_POLICY) {
      const d = by[id]!.onPolicy!;
      // 6 steps: gkd-cold rolls out with probability λ from step 0; the others after 3 warm steps.
      expect(by[id]!.warmSteps).toBe(id === 'gkd-cold' ? 0 : 3);
      expect(d.rolloutSteps).toBeGreaterThan(0);
      expect(d.teacherTop1Agreement).toBeGreaterThanOrEqual(0);
      expect(d.teacherTop1Agreement).toBeLessThanOrEqual(1);
      expect(Number.isFinite(d.reverseKl) && d.reverseKl >= 0).toBe(true);
      // Live teacher passes on top of the one-off pass over the 120 training problems.
      expect(by[id]!.teacherForwards).toBe(120 + d.rolloutSteps * 8 * (id === 'onpolicy-guided' ? 3 : 1));
    }
    expect(by['onpolicy-rkl']!.onPolicy!.rolloutSteps).toBe(3); // every step after the warm start
    expect(by['onpolicy-guided']!.onPolicy!.handedBack).toBeGreaterThanOrEqual(0);
    expect(by.ce!.teacherForwards).toBe(0);
    for (const m of r.results) {
      const e = m.eval;
      // The first error is somewhere or nowhere: the shares sum to 1, and "nowhere" is exact match.
      expect(e.firstError.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
      expect(e.firstError[3]).toBe(e.exactMatch);
      // Free-running digit 0 reads only the prompt, as teacher-forced digit 0 does.
      expect(e.perPosition[0]).toBe(e.teacherForcedPerPosition[0]);
      expect(e.teacherForcedExactMatch).toBeLessThanOrEqual(Math.min(...e.teacherForcedPerPosition));
      // Greedy decoding: right free-running exactly when every digit is right from the true prefix.
      expect(e.teacherForcedExactMatch).toBe(e.exactMatch);
      for (const x of [e.afterErrorAccuracy, e.afterErrorTeacherForcedAccuracy]) expect(Number.isNaN(x) || (x >= 0 && x <= 1)).toBe(true);
    }
    const table = markdownTable(r, 'npm run example:arithmetic -- --test');
    for (const id of ALL_METHODS) expect(table).toContain(`| ${METHOD_LABEL[id]} |`);
    expect(table).toContain('exact % teacher-forced');
    expect(table).toContain(`On-policy diagnostics, ${METHOD_LABEL['onpolicy-guided']}`);
    expect(table).toContain('Teacher soft targets');
    expect(r.teacherStats.meanTop1).toBeGreaterThan(0);
    expect(r.teacherStats.tailMass32).toBeLessThanOrEqual(r.teacherStats.tailMass8);
  });

  it('is deterministic for a seed', async () => {
    // The second run reads the teacher the first one kept on disk: same numbers, bit for bit.
    const teacherDir = mkdtempSync(join(tmpdir(), 'kd-arith-teachers-'));
    const a = await runExperiment({ ...tiny(['ce', 'sample8', 'gkd', 'onpolicy-rkl', 'onpolicy-guided']), teacherDir });
    const b = await runExperiment({ ...tiny(['ce', 'sample8', 'gkd', 'onpolicy-rkl', 'onpolicy-guided']), teacherDir });
    expect(readdirSync(teacherDir)).toHaveLength(1);
    const strip = (x: typeof a) => x.results.map((m) => ({ id: m.id, eval: m.eval, loss: m.finalLoss, bytes: m.teacherBytes, op: m.onPolicy }));
    expect(strip(b)).toEqual(strip(a));
  });

  it('scores rollouts with teacher logits aligned token by token (a model judging its own greedy rollout ranks every digit first)', async () => {
    await tf.setBackend('cpu');
    const L = layout(3);
    const { train } = makeSplits(2, 3, 16, 4, '+');
    const m = new Transformer({ dModel: 16, nLayers: 1, nHeads: 2, dFF: 32 }, L, 4, 'align');
    const B = 16;
    const rolled = m.generate(train.tokens, B); // greedy
    const input = new Int32Array(B * L.inputLen);
    const sampled = new Int32Array(B * L.answerLen);
    for (let b = 0; b < B; b++) {
      input.set(rolled.subarray(b * L.seqLen, b * L.seqLen + L.inputLen), b * L.inputLen);
      sampled.set(rolled.subarray(b * L.seqLen + L.promptLen, (b + 1) * L.seqLen), b * L.answerLen);
    }
    // One teacher-forced pass over the finished rollouts gives, at answer position j, the
    // logits the model had when it generated digit j (causal model): its argmax is the digit.
    const logits = m.logitsOf(input, B);
    const st = kd.tokenStats(kd.tensor(logits, [B, L.answerLen, VOCAB]), kd.tensor(logits, [B, L.answerLen, VOCAB]), { sampled });
    const rank = st.teacherRank!.toArray() as Int32Array;
    const bad = Array.from(rank).flatMap((r, i) => (r === 0 ? [] : [`row ${i}: rank ${r}`]));
    expect(bad.slice(0, 5)).toEqual([]);
    // Same logits on both sides: the reverse KL is 0 to rounding.
    for (const x of st.reverseKl.toArray() as Float32Array) expect(Math.abs(x)).toBeLessThan(1e-6);
    m.dispose();
  });

  it('the search chooses the hyper-parameters on the validation split and records the grid', async () => {
    const cfg = { ...tiny(), seed: 4 };
    const h = await runSearch(cfg, 'test', 'test');
    expect(h.status).toBe('searched');
    const s = h.search as { grid: { stage: number; valExactMatch: number; hparams: Record<string, number> }[]; withChosenValues: unknown[]; nVal: number };
    expect(s.nVal).toBe(24);
    expect(s.grid.map((g) => g.stage)).toEqual([1, 1, 1, 1, 2, 2, 2, 2]);
    // The winner of each stage is a best grid point of that stage (ties: the first).
    for (const stage of [1, 2]) {
      const pts = s.grid.filter((g) => g.stage === stage);
      const top = pts.reduce((a, b) => (b.valExactMatch > a.valExactMatch ? b : a));
      for (const [k, v] of Object.entries(top.hparams)) expect(h[k as keyof typeof h]).toBe(v);
    }
    expect(s.withChosenValues).toHaveLength(4);
  });

  it('summary.json holds one exact-match figure per seed and method, in %', async () => {
    const runs = [await runExperiment({ ...tiny(['ce', 'gkd']), seed: 5 }), await runExperiment({ ...tiny(['ce', 'gkd']), seed: 6 })];
    const s = summarize(runs, { command: 'test', source: 'test', hparams: {} });
    expect(Object.keys(s.methods)).toEqual(['teacher', 'ce', 'gkd']);
    for (const [id, m] of Object.entries(s.methods)) {
      expect(m.seeds).toEqual([5, 6]);
      expect(m.exactMatch).toEqual(runs.map((r) => Math.round(1000 * r.results.find((x) => x.id === id)!.eval.exactMatch) / 10));
    }
    expect(summaryTable(s)).toContain('| GKD (warm start, on-policy JSD) |');
  });

  it('hparams.json is valid, and a malformed one is rejected with the key named', () => {
    const h = readHParams();
    expect(['prior', 'searched']).toContain(h.status);
    const bad = join(mkdtempSync(join(tmpdir(), 'kd-hp-')), 'h.json');
    writeFileSync(bad, JSON.stringify({ ...h, lambda: 'x' }));
    expect(() => readHParams(bad)).toThrow(/expected a finite number for 'lambda'/);
  });
});
