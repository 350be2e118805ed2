/** What this machine and this build can do, threads, and CUDA synchronisation. */
import { KdError, KdTypeError, describe } from './errors.js';
import { binding, loadBinding } from './native.js';
import { parseDevice, type Device } from './tensor.js';
import { expectInt } from './validate.js';

export interface CudaDeviceInfo {
  index: number;
  name: string;
  computeCapability: string;
  totalMemory: number;
  multiprocessors: number;
  l2CacheBytes: number;
}

export interface Backends {
  cpu: { threads: number; simd: 'avx512' | 'avx2' | 'generic' };
  cuda: {
    /** The binary contains the CUDA backend. */
    compiled: boolean;
    /** A usable device was found. */
    available: boolean;
    /** Why CUDA is not available (driver error text, or "not compiled"). */
    reason?: string;
    runtimeVersion: number;
    driverVersion: number;
    devices: CudaDeviceInfo[];
  };
  /** The .node file that was loaded. */
  binary: string;
}

export function backends(): Backends {
  const { binding: b, path } = loadBinding();
  const r = b.backends();
  return { cpu: r.cpu as Backends['cpu'], cuda: r.cuda, binary: path };
}

/** Threads for CPU kernels (default: KD_NUM_THREADS or the number of cores). */
export function setThreads(n: number): void {
  binding().setThreads(expectInt('threads', n, 1, 1024));
}

/** Waits until all work queued on a CUDA device (and the given stream) is done. */
export function synchronize(device: Device | 'cuda' = 'cuda:0', stream?: bigint): void {
  if (stream !== undefined && typeof stream !== 'bigint') throw new KdTypeError(`Expected a bigint (cudaStream_t) for stream but received ${describe(stream)}`);
  const d = parseDevice('device', device);
  if (d < 0) return; // CPU work is synchronous (or a Promise)
  binding().synchronize(d, stream);
}

/** Throws a KdError explaining why CUDA can't be used, if it can't. */
export function requireCuda(device = 0): void {
  const c = binding().backends().cuda;
  if (!c.available) throw new KdError(`CUDA is not available: ${c.reason ?? 'unknown reason'}`, 'KD_EDEVICE');
  if (device >= c.devices.length) throw new KdError(`cuda:${device} does not exist (${c.devices.length} device(s))`, 'KD_EDEVICE');
}
