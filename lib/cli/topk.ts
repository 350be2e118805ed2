/**
 * `kd-kernels topk`: extracts the top-k teacher log-probs of every row of a logits
 * file (.npy or safetensors) into a sparse-logits store (lib/store.ts), streaming
 * batch by batch, with a progress bar, and resuming where an interrupted run stopped.
 *
 * The logic lives here (testable, with an injectable topk); bin/kd-kernels.ts only
 * parses argv, wires Ctrl-C to an AbortSignal and sets the exit code.
 */
import { basename } from 'node:path';
import { open } from 'node:fs/promises';
import { KdError, KdRangeError, KdTypeError, describe } from '../errors.js';
import { NPY_MAGIC, NpyReader } from '../io/npy.js';
import type { RowSource } from '../io/rows.js';
import { SafetensorsReader } from '../io/safetensors.js';
import { SparseLogitsWriter, type IdEncoding, type ValueDType } from '../store.js';
import { tensor, type Device, type Tensor } from '../tensor.js';
import { expectInt, expectNumber, expectOneOf, expectOptions } from '../validate.js';

/** The signature of kd.topk used here (sync or async). */
export type TopkFn = (
  logits: Tensor,
  k: number,
  opts: { temperature?: number; output: 'logprobs' },
) => TopkResult | Promise<TopkResult>;
export interface TopkResult {
  values: Tensor;
  indices: Tensor;
  tailLogProb: Tensor;
}

/** Where progress goes: process.stderr, or a fake in tests. */
export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface TopkCommandOptions {
  input: string;
  out: string;
  k: number;
  /** safetensors: the tensor to read (default: the only one, or 'logits'). */
  tensor?: string;
  /** Softmax temperature applied before taking log-probs (default 1). */
  temperature?: number;
  /** Stored value dtype (default 'bf16'). */
  valueDtype?: ValueDType;
  idEncoding?: IdEncoding;
  /** Rows per topk call (default 256). */
  batch?: number;
  /** Continue a store in `out` after its last finished shard. */
  resume?: boolean;
  tokensPerShard?: number;
  tokensPerBlock?: number;
  /** How a .npy '<u2' file is read (default 'bf16'). */
  u2As?: 'bf16' | 'f16';
  /** Where topk runs (default 'cpu'). */
  device?: Device | 'cuda';
  /** 'auto' (default): a bar on a TTY, else one summary line; 'none': silent. */
  progress?: 'auto' | 'bar' | 'line' | 'none';
  stderr?: ProgressStream;
  /** Stops after the current batch; what was written is kept (checkpoint) for --resume. */
  signal?: AbortSignal;
  /** Injected topk (tests, or another implementation); default: kd.topk from lib/index.ts. */
  topk?: TopkFn;
  /** Clock in ms (tests). */
  now?: () => number;
  /** Called after each batch is written (tests use it to interrupt). */
  onBatch?: (done: number, total: number) => void;
}

export interface TopkCommandResult {
  input: string;
  out: string;
  rows: number;
  vocabSize: number;
  k: number;
  /** Tokens written by this run. */
  written: number;
  /** Tokens already in the store before this run (resume). */
  skipped: number;
  /** Tokens in the store now. */
  tokens: number;
  shards: number;
  bytes: number;
  bytesPerToken: number;
  seconds: number;
  tokensPerSecond: number;
  /** True when the signal stopped the run before the end: rerun with resume. */
  interrupted: boolean;
}

const DEFAULT_BATCH = 256;

/** Opens a .npy (by magic) or safetensors file of logits. */
export async function openLogitsFile(path: string, opts: { tensor?: string; u2As?: 'bf16' | 'f16' } = {}): Promise<RowSource> {
  let head = new Uint8Array(6);
  try {
    const fh = await open(path, 'r');
    try {
      const { bytesRead } = await fh.read(head, 0, 6, 0);
      head = head.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  } catch (e) {
    const err = new KdError(`cannot open ${path}: ${(e as Error).message}`, 'KD_EIO');
    (err as { cause?: unknown }).cause = e;
    throw err;
  }
  if (head.length === 6 && NPY_MAGIC.every((b, i) => head[i] === b)) {
    if (opts.tensor !== undefined) throw new KdError(`${path} is a .npy file: it holds one array, --tensor does not apply`, 'KD_EINVAL');
    return NpyReader.open(path, { u2As: opts.u2As });
  }
  return SafetensorsReader.open(path, { tensor: opts.tensor });
}

/** kd.topk from lib/index.ts (imported there so native errors arrive as KdError): topkAsync on the CPU (a worker thread, so the progress bar and Ctrl-C stay live), topk on CUDA (stream-ordered). */
async function defaultTopk(): Promise<TopkFn> {
  const kd = await import('../index.js');
  return (logits, k, opts) => (logits.isCuda ? kd.topk(logits, k, opts) : kd.topkAsync(logits, k, opts));
}

// ---------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------

export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '--:--';
  s = Math.round(s);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${m}:${String(sec).padStart(2, '0')}`;
}

export function formatRate(r: number): string {
  if (!Number.isFinite(r)) return '-';
  if (r >= 1e6) return `${(r / 1e6).toFixed(2)}M`;
  if (r >= 1e3) return `${(r / 1e3).toFixed(1)}k`;
  return r.toFixed(0);
}

const group = (n: number): string => n.toLocaleString('en-US');

/** A one-line bar on a TTY: `topk [#####-----]  50% 5,000/10,000 tokens  12.3k tok/s  ETA 0:04`. */
export class ProgressBar {
  #out: ProgressStream;
  #total: number;
  #start: number;
  #t0: number;
  #last = -Infinity;
  #now: () => number;
  #drawn = false;

  constructor(out: ProgressStream, total: number, alreadyDone: number, now: () => number) {
    this.#out = out;
    this.#total = total;
    this.#start = alreadyDone;
    this.#now = now;
    this.#t0 = now();
  }

  /** The bar line for `done` tokens (no control characters). */
  line(done: number): string {
    const elapsed = (this.#now() - this.#t0) / 1000;
    const rate = elapsed > 0 ? (done - this.#start) / elapsed : NaN;
    const eta = rate > 0 ? (this.#total - done) / rate : NaN;
    const frac = this.#total ? done / this.#total : 1;
    const tail = ` ${String(Math.floor(frac * 100)).padStart(3)}% ${group(done)}/${group(this.#total)} tokens  ${formatRate(rate)} tok/s  ETA ${formatDuration(eta)}`;
    const cols = this.#out.columns ?? 80;
    const width = Math.max(10, Math.min(40, cols - tail.length - 8));
    const fill = Math.round(frac * width);
    return `topk [${'#'.repeat(fill)}${'-'.repeat(width - fill)}]${tail}`;
  }

  update(done: number, force = false): void {
    const t = this.#now();
    if (!force && t - this.#last < 100) return;
    this.#last = t;
    this.#out.write(`\r\x1b[2K${this.line(done)}`);
    this.#drawn = true;
  }

  finish(done: number): void {
    this.update(done, true);
    if (this.#drawn) this.#out.write('\n');
  }
}

export function summaryLine(r: TopkCommandResult): string {
  return (
    `topk: ${r.interrupted ? 'interrupted after writing' : 'wrote'} ${group(r.written)} tokens` +
    (r.skipped ? ` (resumed after ${group(r.skipped)} already stored)` : '') +
    ` of ${group(r.rows)} from ${basename(r.input)} to ${r.out} in ${r.seconds.toFixed(1)} s, ${formatRate(r.tokensPerSecond)} tok/s; ` +
    `k=${r.k}, V=${r.vocabSize}, ${r.shards} shard${r.shards === 1 ? '' : 's'}, ${r.bytesPerToken.toFixed(1)} bytes/token` +
    (r.interrupted ? '; rerun with --resume to continue' : '')
  );
}

// ---------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------

export async function runTopk(options: TopkCommandOptions): Promise<TopkCommandResult> {
  const o = expectOptions('topk options', options, [
    'input', 'out', 'k', 'tensor', 'temperature', 'valueDtype', 'idEncoding', 'batch', 'resume', 'tokensPerShard', 'tokensPerBlock',
    'u2As', 'device', 'progress', 'stderr', 'signal', 'topk', 'now', 'onBatch',
  ]);
  if (typeof o.input !== 'string') throw new KdTypeError(`Expected a file path for input but received ${describe(o.input)}`);
  if (typeof o.out !== 'string') throw new KdTypeError(`Expected a directory path for out but received ${describe(o.out)}`);
  const k = expectInt('k', o.k, 1);
  const temperature = o.temperature === undefined ? 1 : expectNumber('temperature', o.temperature, (x) => x > 0 && Number.isFinite(x), 'a finite number > 0');
  const batch = o.batch === undefined ? DEFAULT_BATCH : expectInt('batch', o.batch, 1);
  const valueDtype = o.valueDtype === undefined ? 'bf16' : expectOneOf('valueDtype', o.valueDtype, ['f32', 'f16', 'bf16'] as const);
  const progress = o.progress === undefined ? 'auto' : expectOneOf('progress', o.progress, ['auto', 'bar', 'line', 'none'] as const);
  const now = options.now ?? (() => performance.now());
  const stderr = options.stderr ?? process.stderr;
  const topk = options.topk ?? (await defaultTopk());

  const src = await openLogitsFile(options.input, { tensor: options.tensor, u2As: options.u2As });
  let writer: SparseLogitsWriter | undefined;
  try {
    const V = src.cols;
    if (k > V) throw new KdRangeError(`Expected k <= ${V} (the vocabulary of ${options.input}) but received ${describe(k)}`);
    const source = src instanceof SafetensorsReader ? `${basename(src.path)}:${src.tensorName}` : basename(src.path);
    const metadata: Record<string, string> = {
      producer: 'kd-kernels topk',
      sourceShape: `[${src.shape.join(', ')}]`,
      sourceDtype: src.dtype,
      temperature: String(temperature),
      output: 'logprobs',
    };
    try {
      writer = await SparseLogitsWriter.create(options.out, {
        vocabSize: V,
        k,
        valueDtype,
        idEncoding: options.idEncoding,
        tokensPerShard: options.tokensPerShard,
        tokensPerBlock: options.tokensPerBlock,
        kind: 'topk',
        metadata: options.resume ? metadata : { ...metadata, source },
        resume: options.resume ?? false,
      });
    } catch (e) {
      if (e instanceof KdError && e.code === 'KD_EINVAL' && !options.resume && /already holds/.test(e.message))
        throw new KdError(`${e.message.replace(/; pass resume: true.*$/, '')}; pass --resume to continue it, or choose another --out`, 'KD_EINVAL');
      throw e;
    }
    const skipped = writer.tokens;
    if (skipped > src.rows)
      throw new KdError(`${options.out} already holds ${skipped} tokens, more than the ${src.rows} rows of ${options.input}: not the same input?`, 'KD_EINVAL');

    const bar = progress === 'bar' || (progress === 'auto' && stderr.isTTY) ? new ProgressBar(stderr, src.rows, skipped, now) : undefined;
    const t0 = now();
    let done = skipped;
    let interrupted = false;
    bar?.update(done, true);
    // Read the next batch while topk and the writer work on this one, alternating two
    // buffers (the writer has copied a batch by the time its write() resolves).
    const bufs = [0, 1].map(() => (src.dtype === 'f32' ? new Float32Array(Math.min(batch, src.rows) * V) : new Uint16Array(Math.min(batch, src.rows) * V)));
    let turn = 0;
    const readAt = (t: number): Promise<Float32Array | Uint16Array> | undefined => (t < src.rows ? src.readRows(t, Math.min(batch, src.rows - t), bufs[turn++ % 2]) : undefined);
    let next = readAt(done);
    while (next) {
      if (options.signal?.aborted) {
        interrupted = true;
        break;
      }
      const data = await next;
      const n = data.length / V;
      next = readAt(done + n);
      const logits = tensor(data, [n, V], { dtype: src.dtype, device: options.device });
      const res = await topk(logits, k, { temperature, output: 'logprobs' });
      await writer.write({ indices: res.indices, values: res.values, tailLogProb: res.tailLogProb });
      if (logits.isCuda) {
        for (const t of [logits, res.indices, res.values, res.tailLogProb]) t.dispose();
      }
      done += n;
      bar?.update(done);
      options.onBatch?.(done, src.rows);
    }
    await next?.catch(() => {});
    if (interrupted) {
      // Keep everything written so far: finish the partial shard, leave the store unfinished.
      await writer.checkpoint();
      await writer.abort();
    } else await writer.close();
    const seconds = (now() - t0) / 1000;
    bar?.finish(done);
    const stats = writer.stored;
    const result: TopkCommandResult = {
      input: options.input,
      out: writer.dir,
      rows: src.rows,
      vocabSize: V,
      k,
      written: done - skipped,
      skipped,
      tokens: stats.tokens,
      shards: stats.shards,
      bytes: stats.bytes,
      bytesPerToken: stats.tokens ? stats.bytes / stats.tokens : 0,
      seconds,
      tokensPerSecond: seconds > 0 ? (done - skipped) / seconds : 0,
      interrupted,
    };
    if (progress !== 'none') stderr.write(summaryLine(result) + '\n');
    return result;
  } catch (e) {
    await writer?.abort();
    throw e;
  } finally {
    await src.close();
  }
}

// ---------------------------------------------------------------------------------
// argv
// ---------------------------------------------------------------------------------

export const TOPK_USAGE = `usage: kd-kernels topk <input.npy|input.safetensors> --out <dir> --k <k> [options]

Extracts the top-k teacher log-probs of every row (token) of a logits file into a
sparse-logits store (docs/STORE_FORMAT.md).

  --out, -o <dir>          store directory (created)
  --k <k>                  ids per token (e.g. 64)
  --tensor <name>          safetensors: the tensor to read (default: the only one, or 'logits')
  --temperature <T>        softmax temperature before the log-probs (default 1)
  --value-dtype <dtype>    f32 | f16 | bf16 (default bf16)
  --id-encoding <enc>      packed (ceil(log2 V) bits, default) | i32
  --batch <rows>           rows per topk call (default ${DEFAULT_BATCH})
  --resume                 continue the store in --out after its last finished shard
  --tokens-per-shard <n>   tokens per shard file (default 1048576)
  --tokens-per-block <n>   tokens per checksummed block (default 256)
  --u2-as <bf16|f16>       how to read a .npy '<u2' array (default bf16)
  --device <cpu|cuda[:N]>  where topk runs (default cpu)
  --no-progress            no bar, no summary line
  --json                   print the result as JSON on stdout
`;

export interface ParsedTopkArgs {
  options: TopkCommandOptions;
  json: boolean;
  help: boolean;
}

/** Parses `topk` arguments (after the subcommand). Throws KdError 'KD_EINVAL' with a message for the user. */
export function parseTopkArgs(argv: readonly string[]): ParsedTopkArgs {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  const takesValue = new Set(['out', 'k', 'tensor', 'temperature', 'value-dtype', 'id-encoding', 'batch', 'tokens-per-shard', 'tokens-per-block', 'u2-as', 'device']);
  const boolean = new Set(['resume', 'no-progress', 'json', 'help']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (a === '-h') {
      flags.set('help', true);
      continue;
    }
    if (a === '-o') {
      const v = argv[++i];
      if (v === undefined) throw new KdError('-o needs a value', 'KD_EINVAL');
      flags.set('out', v);
      continue;
    }
    if (!a.startsWith('--')) {
      positional.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const name = a.slice(2, eq < 0 ? undefined : eq);
    if (takesValue.has(name)) {
      const v = eq < 0 ? argv[++i] : a.slice(eq + 1);
      if (v === undefined) throw new KdError(`--${name} needs a value`, 'KD_EINVAL');
      flags.set(name, v);
    } else if (boolean.has(name) && eq < 0) flags.set(name, true);
    else throw new KdError(`unknown option ${a}`, 'KD_EINVAL');
  }
  const help = flags.has('help');
  const json = flags.has('json');
  if (help) return { options: { input: '', out: '', k: 1 }, json, help };
  if (positional.length !== 1) throw new KdError(positional.length ? `expected one input file, got ${positional.length}: ${positional.join(' ')}` : 'missing the input file', 'KD_EINVAL');
  const str = (n: string): string | undefined => flags.get(n) as string | undefined;
  const int = (n: string): number | undefined => {
    const v = str(n);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v)) throw new KdError(`--${n} expects a positive integer, got '${v}'`, 'KD_EINVAL');
    return Number(v);
  };
  const out = str('out');
  if (out === undefined) throw new KdError('missing --out <dir>', 'KD_EINVAL');
  const k = int('k');
  if (k === undefined) throw new KdError('missing --k <k>', 'KD_EINVAL');
  const tempStr = str('temperature');
  const temperature = tempStr === undefined ? undefined : Number(tempStr);
  if (tempStr !== undefined && !(Number.isFinite(temperature) && temperature! > 0)) throw new KdError(`--temperature expects a number > 0, got '${tempStr}'`, 'KD_EINVAL');
  const oneOf = <T extends string>(n: string, allowed: readonly T[]): T | undefined => {
    const v = str(n);
    if (v !== undefined && !(allowed as readonly string[]).includes(v)) throw new KdError(`--${n} expects one of ${allowed.join(', ')}, got '${v}'`, 'KD_EINVAL');
    return v as T | undefined;
  };
  const options: TopkCommandOptions = {
    input: positional[0]!,
    out,
    k,
    tensor: str('tensor'),
    temperature,
    valueDtype: oneOf('value-dtype', ['f32', 'f16', 'bf16'] as const),
    idEncoding: oneOf('id-encoding', ['packed', 'i32'] as const),
    batch: int('batch'),
    resume: flags.has('resume'),
    tokensPerShard: int('tokens-per-shard'),
    tokensPerBlock: int('tokens-per-block'),
    u2As: oneOf('u2-as', ['bf16', 'f16'] as const),
    device: str('device') as Device | undefined,
    progress: flags.has('no-progress') ? 'none' : 'auto',
  };
  for (const key of Object.keys(options) as (keyof TopkCommandOptions)[]) if (options[key] === undefined) delete options[key];
  return { options, json, help };
}
