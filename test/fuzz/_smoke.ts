import { fuzzFamily } from './runner.js';
import { FAMILIES } from './cases.js';
const runs = Number(process.argv[2] ?? 20);
const seed = Number(process.argv[4] ?? 1);
for (const f of (process.argv[3] && process.argv[3] !== 'all' ? process.argv[3].split(',') : FAMILIES) as any[]) {
  const r = await fuzzFamily(f, runs, seed);
  console.log(f, r.runs, r.failed, r.ms + 'ms');
  if (r.report) console.log(r.report.split('\n').filter(l => !l.startsWith('replay') && !l.startsWith('paste') && !l.includes('expect(await')).join('\n').replace(/\n\s+/g, ' '));
}
