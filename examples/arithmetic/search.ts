/**
 * The hyper-parameter search: once, on a validation split carved from the training
 * problems (ExperimentConfig.nVal; never trained on, and the held-out set is never
 * looked at), for all methods. One teacher (the run's first seed), then two small grids,
 * each scored by the students' free-running exact match on the validation split:
 *
 *   stage 1, the teacher-forced KD recipe, on 'fkl' (supervised KD):
 *            temperature ∈ {1, 2} × (CE weight, KD weight) ∈ {(0.5, 0.5), (1, 0.5)}
 *   stage 2, the on-policy schedule, on 'gkd' with the stage-1 recipe:
 *            warm-start share ∈ {0.25, 0.5} × λ ∈ {0.5, 1}
 *
 * Then, for the record only (they choose nothing), every other on-policy method and CE
 * are trained once with the chosen values and scored on the same validation split.
 *
 * JSD β and the guided rollouts' top-k are not searched (β = 0.5, TRL's default;
 * guideTopK from the prior). Ties go to the earlier grid point. The winner, the grid
 * with its scores, the command and the commit are written to hparams.json, which the
 * full run reads (and refuses until it says status 'searched').
 */
import { runExperiment, type CachedTeacher, type ExperimentConfig, type HParams, type MethodId } from './experiment.js';
import type { HParamsFile } from './train.js';

interface GridPoint {
  stage: number;
  method: MethodId;
  hparams: Partial<HParams>;
  valExactMatch: number;
  valTeacherForcedExactMatch: number;
  cpuSeconds: number;
}

export const STAGE1: readonly Partial<HParams>[] = [
  { temperature: 1, hardWeight: 0.5, softWeight: 0.5 },
  { temperature: 1, hardWeight: 1, softWeight: 0.5 },
  { temperature: 2, hardWeight: 0.5, softWeight: 0.5 },
  { temperature: 2, hardWeight: 1, softWeight: 0.5 },
];
export const STAGE2: readonly Partial<HParams>[] = [
  { warmFraction: 0.25, lambda: 0.5 },
  { warmFraction: 0.25, lambda: 1 },
  { warmFraction: 0.5, lambda: 0.5 },
  { warmFraction: 0.5, lambda: 1 },
];

export async function runSearch(cfg: ExperimentConfig, command: string, source: string): Promise<HParamsFile> {
  const t0 = performance.now();
  const cache = new Map<string, CachedTeacher>();
  const grid: GridPoint[] = [];
  let best: HParams = { temperature: cfg.temperature, hardWeight: cfg.hardWeight, softWeight: cfg.softWeight, lambda: cfg.lambda, beta: cfg.beta, warmFraction: cfg.warmFraction, guideTopK: cfg.guideTopK };
  let teacherValExact = NaN;
  for (const [stage, points, method] of [[1, STAGE1, 'fkl'], [2, STAGE2, 'gkd']] as const) {
    let top: GridPoint | undefined;
    for (const h of points) {
      const r = await runExperiment({ ...cfg, ...best, ...h, methods: [method], evalOn: 'val', teacherCache: cache, log: (l) => cfg.log(`[search ${stage} ${JSON.stringify(h)}] ${l}`) });
      const m = r.results.find((x) => x.id === method)!;
      teacherValExact = r.results[0]!.eval.exactMatch;
      const p: GridPoint = { stage, method, hparams: h, valExactMatch: m.eval.exactMatch, valTeacherForcedExactMatch: m.eval.teacherForcedExactMatch, cpuSeconds: m.trainCpuSeconds };
      grid.push(p);
      cfg.log(`search stage ${stage}: ${method} ${JSON.stringify(h)} validation exact match ${(100 * p.valExactMatch).toFixed(1)}%`);
      if (!top || p.valExactMatch > top.valExactMatch) top = p;
    }
    best = { ...best, ...top!.hparams };
  }
  const context: { method: MethodId; valExactMatch: number; valTeacherForcedExactMatch: number; cpuSeconds: number; onPolicy?: unknown }[] = [];
  const others: MethodId[] = ['ce', 'gkd-cold', 'onpolicy-rkl', 'onpolicy-guided'];
  const r = await runExperiment({ ...cfg, ...best, methods: others, evalOn: 'val', teacherCache: cache, log: (l) => cfg.log(`[search, chosen values] ${l}`) });
  for (const m of r.results.slice(1))
    context.push({ method: m.id as MethodId, valExactMatch: m.eval.exactMatch, valTeacherForcedExactMatch: m.eval.teacherForcedExactMatch, cpuSeconds: m.trainCpuSeconds, ...(m.onPolicy ? { onPolicy: m.onPolicy } : {}) });
  return {
    status: 'searched',
    note: `Chosen by 'npm run example:arithmetic -- --search' on the validation split (${cfg.nVal} problems carved from the seed-${cfg.seed} training pool), before the final runs; see search.ts.`,
    ...best,
    search: {
      command,
      source,
      date: new Date().toISOString(),
      seed: cfg.seed,
      nVal: cfg.nVal,
      studentSteps: cfg.studentSteps,
      teacherValExactMatch: teacherValExact,
      seconds: (performance.now() - t0) / 1000,
      grid,
      withChosenValues: context,
    },
  };
}
