/** The results table (markdown), as printed and written to results/{mode}.md. */
import type { ExperimentResult, MethodResult } from './experiment.js';

function bytes(n: number): string {
  if (n === 0) return '0';
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(2)} MiB`;
}

const pct = (x: number): string => (100 * x).toFixed(1);

export function markdownTable(r: ExperimentResult, command: string): string {
  const c = r.config;
  const A = c.digits + 1;
  const tokens = c.nTrain * A;
  const lines: string[] = [];
  lines.push(`### Arithmetic distillation: ${c.mode} run`);
  lines.push('');
  lines.push(`Command: \`${command}\``);
  lines.push('');
  lines.push(
    `Task: ${c.ops === '+-' ? 'a+b and a−b' : `a${c.ops === '+' ? '+' : '−'}b`} with 2..${c.digits}-digit operands, all numbers written least-significant digit first, answer of ${A} digits. ` +
      `${c.nTrain} training problems (${tokens} answer tokens), ${c.nTest} held-out problems, greedy decoding. ` +
      `Teacher: ${c.teacher.nLayers}-layer d=${c.teacher.dModel} transformer (${r.teacherParams} params), ${c.teacherSteps} steps; trained until one reached ${(100 * c.teacherTarget).toFixed(0)}% exact match on 500 training problems, at most ${c.teacherAttempts} teachers (fresh initialisations): ${r.teacherAttempts} trained. ` +
      `Student: ${c.student.nLayers}-layer d=${c.student.dModel} (${r.studentParams} params), ${c.studentSteps} steps of batch ${c.batch} for every method, same init and batch order. ` +
      `Adam lr ${c.studentLr} (teacher ${c.teacherLr}), cosine decay, weight decay ${c.weightDecay}. ` +
      `KD: T = ${c.temperature} (T² scaled), CE/KD weights ${c.hardWeight}/${c.softWeight}; GKD λ = ${c.lambda}, β = ${c.beta}. Seed ${c.seed}.`,
  );
  lines.push('');
  const head = ['method', 'exact match %', ...Array.from({ length: A }, (_, j) => `digit ${j}${j === 0 ? ' (units)' : ''} %`), 'train s (CPU s)', 'teacher data', 'bytes stored', 'bytes/token', 'data build s'];
  lines.push(`| ${head.join(' | ')} |`);
  lines.push(`|${head.map((_, i) => (i === 0 || i === head.length - 4 ? ' --- ' : ' ---: ')).join('|')}|`);
  for (const m of r.results) lines.push(row(m, tokens));
  lines.push('');
  const ts = r.teacherStats;
  lines.push(
    `Teacher soft targets (training answer tokens, T = ${ts.temperature}): mean top-1 probability ${ts.meanTop1.toFixed(3)}, ` +
      `mean entropy ${ts.meanEntropy.toFixed(3)} nats, mass outside the top 8 ${ts.tailMass8.toExponential(1)}, outside the top 32 ${ts.tailMass32.toExponential(1)}.`,
  );
  lines.push('');
  const op = r.results.find((m) => m.onPolicy);
  if (op?.onPolicy) {
    const d = op.onPolicy;
    lines.push(
      `On-policy diagnostics (tokenStats on the student's rollouts, mean over ${d.rolloutSteps} rollout steps): ` +
        `reverse KL(student‖teacher) ${d.reverseKl.toFixed(3)} nats/token, teacher-argmax agreement of sampled tokens ${pct(d.teacherTop1Agreement)}%, ` +
        `rollouts fully correct ${pct(d.sampleExact)}%.`,
    );
    lines.push('');
  }
  const m = r.machine;
  lines.push(
    `Total ${r.totalSeconds.toFixed(0)} s wall, ${r.cpuSeconds.toFixed(0)} s CPU, on ${m.cpus} CPUs (load average ${m.loadAvgStart[0]!.toFixed(1)} at start, ${m.loadAvgEnd[0]!.toFixed(1)} at end; ` +
      `wall times are inflated by other processes on a shared machine), Node ${m.node}, tfjs ${m.tfjs} '${m.backend}' backend. ` +
      `"train s" is wall time (process CPU time in parentheses) and includes rollouts and the live teacher for on-policy; "data build s" is the one-off teacher pass / store write + read back. ` +
      `Dense "bytes stored" is what keeping f32 logits would cost (they stay in memory here).`,
  );
  return lines.join('\n') + '\n';
}

function row(m: MethodResult, tokens: number): string {
  const cells = [
    m.label,
    pct(m.eval.exactMatch),
    ...m.eval.perPosition.map(pct),
    `${m.trainSeconds.toFixed(1)} (${m.trainCpuSeconds.toFixed(1)})`,
    m.teacherData,
    m.teacherBytes ? bytes(m.teacherBytes) : '-',
    m.teacherBytes ? (m.teacherBytes / tokens).toFixed(1) : '-',
    m.teacherDataSeconds ? m.teacherDataSeconds.toFixed(1) : '-',
  ];
  return `| ${cells.join(' | ')} |`;
}
