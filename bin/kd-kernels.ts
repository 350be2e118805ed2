#!/usr/bin/env node
/**
 * kd-kernels command line.
 *   kd-kernels info            backends, the loaded binary, why CUDA is (not) available
 *   kd-kernels topk <logits.npy|.safetensors> --out <dir> --k 64 [...]
 *                              top-k teacher log-probs into a sparse-logits store (lib/cli/topk.ts)
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { backends } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';
import { TOPK_USAGE, parseTopkArgs, runTopk } from '../lib/cli/topk.js';

function info(json: boolean): void {
  const b = backends();
  const version = (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
  if (json) {
    console.log(JSON.stringify({ version, node: process.version, platform: `${process.platform}-${process.arch}`, ...b }, null, 2));
    return;
  }
  const lines = [
    `kd-kernels ${version} (node ${process.version}, ${process.platform}-${process.arch})`,
    `binary:  ${b.binary}`,
    `cpu:     ${b.cpu.threads} threads, SIMD ${b.cpu.simd}`,
    `cuda:    compiled ${b.cuda.compiled ? 'yes' : 'no'}, available ${b.cuda.available ? 'yes' : 'no'}` +
      (b.cuda.reason ? ` (${b.cuda.reason})` : ''),
  ];
  if (b.cuda.compiled) lines.push(`         runtime ${b.cuda.runtimeVersion}, driver ${b.cuda.driverVersion || 'none'}`);
  for (const d of b.cuda.devices)
    lines.push(`  cuda:${d.index} ${d.name}, sm_${d.computeCapability.replace('.', '')}, ${(d.totalMemory / 2 ** 30).toFixed(1)} GiB, ${d.multiprocessors} SMs`);
  console.log(lines.join('\n'));
}

async function topkCommand(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseTopkArgs(argv);
  } catch (e) {
    console.error(`kd-kernels topk: ${(e as Error).message}\n\n${TOPK_USAGE}`);
    return 2;
  }
  if (parsed.help) {
    console.log(TOPK_USAGE);
    return 0;
  }
  // First Ctrl-C: stop after the current batch and keep what was written (--resume
  // continues); a second one exits at once (the unfinished shard is then discarded on resume).
  const ac = new AbortController();
  const onSigint = (): void => {
    if (ac.signal.aborted) process.exit(130);
    process.stderr.write('\nkd-kernels topk: interrupted, saving what was written (Ctrl-C again to quit now)\n');
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  try {
    const result = await runTopk({ ...parsed.options, signal: ac.signal });
    if (parsed.json) console.log(JSON.stringify(result, null, 2));
    return result.interrupted ? 130 : 0;
  } catch (e) {
    const err = e as { message: string; code?: string };
    console.error(`kd-kernels topk: ${err.message}${err.code ? ` [${err.code}]` : ''}`);
    return 1;
  } finally {
    process.off('SIGINT', onSigint);
  }
}

function usage(): never {
  console.error('usage: kd-kernels info [--json]\n       kd-kernels topk <input.npy|input.safetensors> --out <dir> --k <k> [options]  (--help for options)');
  process.exit(2);
}

const [cmd, ...rest] = process.argv.slice(2);
if (cmd === 'info') info(rest.includes('--json'));
else if (cmd === 'topk') process.exitCode = await topkCommand(rest);
else usage();
