/** The results tables (markdown) of one seed's run and of the summary across seeds, and summary.json. */
import type { ExperimentResult, MethodResult } from './experiment.js';

function bytes(n: number): string {
  if (n === 0) return '0';
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(2)} MiB`;
}

const pct = (x: number): string => (100 * x).toFixed(1);
const digits = (xs: number[]): string => xs.map((x) => (100 * x).toFixed(0)).join('/');

export function markdownTable(r: ExperimentResult, command: string): string {
  const c = r.config;
  const A = c.digits + 1;
  const tokens = c.nTrain * A;
  const lines: string[] = [];
  lines.push(`### Arithmetic distillation: ${c.mode} run, seed ${c.seed}`);
  lines.push('');
  lines.push(`Command: \`${command}\``);
  lines.push('');
  lines.push(
    `Task: ${c.ops === '+-' ? 'a+b and a−b' : `a${c.ops === '+' ? '+' : '−'}b`} with 2..${c.digits}-digit operands, all numbers written least-significant digit first, answer of ${A} digits. ` +
      `${c.nTrain} training problems (${tokens} answer tokens), ${c.nVal} validation problems carved from the training pool (not trained on), ${c.nTest} held-out problems${c.evalOn === 'val' ? ' (this run evaluates on the validation split)' : ''}. ` +
      `Teacher: ${c.teacher.nLayers}-layer d=${c.teacher.dModel} transformer (${r.teacherParams} params), ${c.teacherSteps} steps; trained until one reached ${(100 * c.teacherTarget).toFixed(0)}% exact match on 500 training problems, at most ${c.teacherAttempts} teachers (fresh initialisations): ${r.teacherAttempts} trained. ` +
      `Student: ${c.student.nLayers}-layer d=${c.student.dModel} (${r.studentParams} params), ${c.studentSteps} optimizer steps of batch ${c.batch} for every method (warm starts included), same init and batch order. ` +
      `Adam lr ${c.studentLr} (teacher ${c.teacherLr}), cosine decay, weight decay ${c.weightDecay}. ` +
      `KD: T = ${c.temperature} (T² scaled), CE/KD weights ${c.hardWeight}/${c.softWeight}; GKD λ = ${c.lambda}, β = ${c.beta}; on-policy warm start ${c.warmFraction} of the steps; rollouts and on-policy losses at T = ${c.rolloutTemperature}; guided rollouts hand a digit to the teacher at teacherRank ≥ ${c.guideTopK}.`,
  );
  lines.push('');
  const head = [
    'method', 'warm steps', 'exact % free-running', 'exact % teacher-forced', 'digits 0/1/2/3 % free', 'digits % teacher-forced',
    'first error at digit 0/1/2/3 %', 'after the first error: digits right % free / teacher-forced', 'train s (CPU s)', 'teacher fwd (seqs)', 'teacher bytes (stored + live)', 'teacher data',
  ];
  lines.push(`| ${head.join(' | ')} |`);
  lines.push(`|${head.map((h) => (h === 'method' || h === 'teacher data' || h.includes('/') || h.startsWith('digits') ? ' --- ' : ' ---: ')).join('|')}|`);
  for (const m of r.results) lines.push(row(m));
  lines.push('');
  const ts = r.teacherStats;
  lines.push(
    `Teacher soft targets (training answer tokens, T = ${ts.temperature}): mean top-1 probability ${ts.meanTop1.toFixed(3)}, ` +
      `mean entropy ${ts.meanEntropy.toFixed(3)} nats, mass outside the top 8 ${ts.tailMass8.toExponential(1)}, outside the top 32 ${ts.tailMass32.toExponential(1)}.`,
  );
  lines.push('');
  for (const m of r.results) {
    const d = m.onPolicy;
    if (!d) continue;
    lines.push(
      `On-policy diagnostics, ${m.label} (tokenStats on the student's rollouts, ${d.rolloutSteps} rollout steps): ` +
        `reverse KL(student‖teacher) ${d.reverseKl.toFixed(3)} nats/token (first 10 steps ${d.reverseKlFirst.toFixed(3)}, last 10 ${d.reverseKlLast.toFixed(3)}), ` +
        `teacher-argmax agreement of sampled digits ${pct(d.teacherTop1Agreement)}%, rollouts fully correct ${pct(d.sampleExact)}% (first 10 steps ${pct(d.sampleExactFirst)}%, last 10 ${pct(d.sampleExactLast)}%)` +
        `${d.handedBack !== undefined ? `, digits handed back to the teacher ${pct(d.handedBack)}%` : ''}; ` +
        `gradient norm before clipping at 1: on-policy steps ${d.gradNormOnPolicy.toFixed(2)}${Number.isNaN(d.gradNormOffPolicy) ? '' : `, supervised KD steps in between ${d.gradNormOffPolicy.toFixed(2)}`}.`,
    );
    lines.push('');
  }
  const m = r.machine;
  lines.push(
    `Total ${r.totalSeconds.toFixed(0)} s wall, ${r.cpuSeconds.toFixed(0)} s CPU, on ${m.cpus} CPUs (load average ${m.loadAvgStart[0]!.toFixed(1)} at start, ${m.loadAvgEnd[0]!.toFixed(1)} at end; ` +
      `wall times are inflated by other processes on a shared machine), Node ${m.node}, tfjs ${m.tfjs} '${m.backend}' backend. ` +
      `"train s" is wall time (process CPU time in parentheses) and includes rollouts and the live teacher for on-policy. ` +
      `"teacher fwd" counts sequences through the teacher: the one-off pass over the training set for every method that reads teacher data, plus the live passes on rollouts (a guided rollout takes one per digit). ` +
      `"teacher bytes" is the stored teacher data (dense: what keeping f32 logits costs; they stay in memory here) plus the f32 logits produced live on rollouts.`,
  );
  return lines.join('\n') + '\n';
}

function row(m: MethodResult): string {
  const e = m.eval;
  const cells = [
    m.label,
    String(m.warmSteps),
    pct(e.exactMatch),
    pct(e.teacherForcedExactMatch),
    digits(e.perPosition),
    digits(e.teacherForcedPerPosition),
    digits(e.firstError.slice(0, -1)),
    `${pct(e.afterErrorAccuracy)} / ${pct(e.afterErrorTeacherForcedAccuracy)}`,
    `${m.trainSeconds.toFixed(1)} (${m.trainCpuSeconds.toFixed(1)})`,
    String(m.teacherForwards),
    m.teacherBytes + m.liveTeacherBytes ? `${bytes(m.teacherBytes)} + ${bytes(m.liveTeacherBytes)}` : '-',
    m.teacherData,
  ];
  return `| ${cells.join(' | ')} |`;
}

// ---------------------------------------------------------------------------------
// Across seeds
// ---------------------------------------------------------------------------------

export interface MethodSummary {
  label: string;
  /** One number per seed, in %, in the order of `seeds`. */
  exactMatch: number[];
  seeds: number[];
  teacherForcedExactMatch: number[];
  /** Means over seeds, in %: per answer digit, free-running and teacher-forced. */
  perDigit: number[];
  teacherForcedPerDigit: number[];
  /** Mean over seeds, in %: share of problems whose first wrong digit is j (last: none). */
  firstError: number[];
  /** Per seed, in %: digits right after the first free-running error, free-running and teacher-forced. */
  afterErrorAccuracy: number[];
  afterErrorTeacherForcedAccuracy: number[];
  warmSteps: number;
  steps: number;
  trainSeconds: number[];
  trainCpuSeconds: number[];
  teacherForwards: number[];
  teacherBytes: number[];
  liveTeacherBytes: number[];
}

export interface Summary {
  command: string;
  source: string;
  hparams: Record<string, unknown>;
  seeds: number[];
  totalSeconds: number[];
  cpuSeconds: number[];
  teacherAttempts: number[];
  methods: Record<string, MethodSummary>;
}

const r1 = (x: number): number => Math.round(x * 10) / 10;
const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
const sd = (xs: number[]): number => (xs.length < 2 ? 0 : Math.sqrt(xs.reduce((a, x) => a + (x - mean(xs)) ** 2, 0) / (xs.length - 1)));

export function summarize(runs: ExperimentResult[], meta: { command: string; source: string; hparams: Record<string, unknown> }): Summary {
  const methods: Record<string, MethodSummary> = {};
  const seeds = runs.map((r) => r.config.seed);
  for (const r of runs) {
    for (const m of r.results) {
      const s = (methods[m.id] ??= {
        label: m.label, exactMatch: [], seeds: [], teacherForcedExactMatch: [], perDigit: [], teacherForcedPerDigit: [], firstError: [],
        afterErrorAccuracy: [], afterErrorTeacherForcedAccuracy: [],
        warmSteps: m.warmSteps, steps: m.steps, trainSeconds: [], trainCpuSeconds: [], teacherForwards: [], teacherBytes: [], liveTeacherBytes: [],
      });
      s.exactMatch.push(r1(100 * m.eval.exactMatch));
      s.seeds.push(r.config.seed);
      s.teacherForcedExactMatch.push(r1(100 * m.eval.teacherForcedExactMatch));
      s.afterErrorAccuracy.push(r1(100 * m.eval.afterErrorAccuracy));
      s.afterErrorTeacherForcedAccuracy.push(r1(100 * m.eval.afterErrorTeacherForcedAccuracy));
      s.trainSeconds.push(r1(m.trainSeconds));
      s.trainCpuSeconds.push(r1(m.trainCpuSeconds));
      s.teacherForwards.push(m.teacherForwards);
      s.teacherBytes.push(m.teacherBytes);
      s.liveTeacherBytes.push(m.liveTeacherBytes);
    }
  }
  for (const [id, s] of Object.entries(methods)) {
    const evs = runs.map((r) => r.results.find((m) => m.id === id)!.eval);
    const avg = (f: (e: (typeof evs)[number]) => number[]) => f(evs[0]!).map((_, j) => r1(100 * mean(evs.map((e) => f(e)[j]!))));
    s.perDigit = avg((e) => e.perPosition);
    s.teacherForcedPerDigit = avg((e) => e.teacherForcedPerPosition);
    s.firstError = avg((e) => e.firstError);
  }
  return {
    ...meta,
    seeds,
    totalSeconds: runs.map((r) => r1(r.totalSeconds)),
    cpuSeconds: runs.map((r) => r1(r.cpuSeconds)),
    teacherAttempts: runs.map((r) => r.teacherAttempts),
    methods,
  };
}

export function summaryTable(s: Summary): string {
  const lines: string[] = [];
  lines.push(`### Arithmetic distillation: ${s.seeds.length} seed${s.seeds.length > 1 ? 's' : ''} (${s.seeds.join(', ')})`);
  lines.push('');
  lines.push(`Command: \`${s.command}\`. Source: ${s.source}. Hyper-parameters: ${JSON.stringify(s.hparams)}.`);
  lines.push('');
  const head = [
    'method', 'exact % free-running, mean ± sd (per seed)', 'exact % teacher-forced, mean (per seed)', 'digits 0/1/2/3 % free', 'digits % teacher-forced',
    'first error at digit 0/1/2/3 / none %', 'after the first error: digits right % free / teacher-forced, mean', 'train s, mean', 'CPU s, mean', 'teacher fwd (seqs)', 'teacher bytes, stored + live',
  ];
  lines.push(`| ${head.join(' | ')} |`);
  lines.push(`|${head.map((h) => (h === 'method' || h.includes('/') || h.startsWith('digits') ? ' --- ' : ' ---: ')).join('|')}|`);
  for (const m of Object.values(s.methods)) {
    lines.push(
      `| ${[
        m.label,
        `${mean(m.exactMatch).toFixed(1)} ± ${sd(m.exactMatch).toFixed(1)} (${m.exactMatch.join(', ')})`,
        `${mean(m.teacherForcedExactMatch).toFixed(1)} (${m.teacherForcedExactMatch.join(', ')})`,
        m.perDigit.map((x) => x.toFixed(0)).join('/'),
        m.teacherForcedPerDigit.map((x) => x.toFixed(0)).join('/'),
        m.firstError.map((x) => x.toFixed(0)).join('/'),
        `${mean(m.afterErrorAccuracy).toFixed(1)} / ${mean(m.afterErrorTeacherForcedAccuracy).toFixed(1)}`,
        mean(m.trainSeconds).toFixed(1),
        mean(m.trainCpuSeconds).toFixed(1),
        mean(m.teacherForwards).toFixed(0),
        m.teacherBytes[0]! + m.liveTeacherBytes[0]! ? `${bytes(m.teacherBytes[0]!)} + ${bytes(Math.round(mean(m.liveTeacherBytes)))}` : '-',
      ].join(' | ')} |`,
    );
  }
  lines.push('');
  lines.push(
    `Per seed: ${s.seeds.map((x, i) => `seed ${x}: ${s.totalSeconds[i]} s wall, ${s.cpuSeconds[i]} s CPU, ${s.teacherAttempts[i]} teacher${s.teacherAttempts[i]! > 1 ? 's' : ''} trained`).join('; ')}. ` +
      `Total ${s.totalSeconds.reduce((a, b) => a + b, 0).toFixed(0)} s wall.`,
  );
  return lines.join('\n') + '\n';
}
