#!/usr/bin/env node
/**
 * kd-kernels command line.
 *   kd-kernels info            backends, the loaded binary, why CUDA is (not) available
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { backends } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';

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

function usage(): never {
  console.error('usage: kd-kernels info [--json]');
  process.exit(2);
}

const [cmd, ...rest] = process.argv.slice(2);
if (cmd === 'info') info(rest.includes('--json'));
else usage();
