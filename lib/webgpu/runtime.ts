/// <reference types="@webgpu/types" />
/**
 * The WebGPU runtime shared by every WGSL op: which GPUDevice (chosen with setDevice,
 * or requested once from `navigator.gpu`, or in Node from the `webgpu` package when it
 * is installed), pipelines cached per device, buffer creation / upload / readback, and
 * one `run()` that binds a uniform params block and storage buffers and dispatches.
 *
 * Plain TypeScript: no Node-only import, so it runs unchanged in a browser. The `webgpu`
 * package is imported dynamically (and only when `navigator.gpu` is missing), with a
 * computed specifier that bundlers leave alone.
 *
 * Errors: WebGPU reports validation and out-of-memory errors asynchronously. Every
 * `run()` is wrapped in error scopes whose results are collected per device; the next
 * `readBuffer()` / `flush()` on that device rethrows the first as a KdError (KD_EWEBGPU
 * or KD_ENOMEM). A lost device makes every later call throw KD_EDEVICE at once, and a
 * pending readback rejects instead of waiting forever (raced against `device.lost`).
 */
import { KdError } from '../errors.js';

/** GPUBufferUsage / GPUMapMode values (the globals may not exist in Node). */
export const USAGE = { MAP_READ: 0x1, MAP_WRITE: 0x2, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, STORAGE: 0x80 } as const;
const MAP_MODE_READ = 0x1;
/** Storage buffers the library allocates: usable by kernels, uploads and readbacks. */
export const STORAGE_USAGE = USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST;

interface DeviceState {
  pipelines: Map<string, GPUComputePipeline>;
  /** Error-scope results not yet reported (each resolves to null or a GPUError). */
  errors: Promise<GPUError | null>[];
  lost?: string;
  lostPromise: Promise<string>;
  uncaptured?: string;
  /** run()'s params buffers, one per size, rewritten for each dispatch (see run). */
  uniforms: Map<number, GPUBuffer>;
}

const states = new WeakMap<GPUDevice, DeviceState>();
let chosen: GPUDevice | undefined;
let requesting: Promise<GPUDevice> | undefined;
/** The GPU object of the `webgpu` package (kept alive as long as its device). */
let nodeGpu: GPU | undefined;

function state(device: GPUDevice): DeviceState {
  let s = states.get(device);
  if (!s) {
    const st: DeviceState = { pipelines: new Map(), errors: [], lostPromise: undefined as unknown as Promise<string>, uniforms: new Map() };
    st.lostPromise = device.lost.then((info) => {
      st.lost = `${info.reason ?? 'unknown'}${info.message ? `: ${info.message}` : ''}`;
      return st.lost;
    });
    // An error outside our scopes (another library's, or ours escaping): kept and
    // reported by the next check on this device, never dropped.
    device.addEventListener?.('uncapturederror', (ev: Event) => {
      const e = (ev as GPUUncapturedErrorEvent).error;
      st.uncaptured ??= e?.message ?? String(e);
    });
    states.set(device, st);
    s = st;
  }
  return s;
}

function isDevice(d: unknown): d is GPUDevice {
  return typeof d === 'object' && d !== null && typeof (d as GPUDevice).createComputePipeline === 'function' && typeof (d as GPUDevice).queue === 'object';
}

/** Uses `device` for every WebGPU tensor created from now on (e.g. tf.backend().device). */
export function setDevice(device: GPUDevice): void {
  if (!isDevice(device)) throw new KdError(`webgpu.setDevice: expected a GPUDevice but received ${device === null ? 'null' : typeof device}`, 'KD_EDEVICE');
  state(device);
  chosen = device;
}

/** The GPU object the default device came from (navigator.gpu, or the `webgpu` package's). */
export function gpuObject(): GPU | undefined {
  return (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu ?? nodeGpu;
}

/** The device set or requested so far (undefined before the first requestDevice / setDevice). */
export function currentDevice(): GPUDevice | undefined {
  return chosen;
}

/** The adapter limits worth raising above the defaults for [tokens x vocab] rows. */
const RAISED_LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxStorageBuffersPerShaderStage',
] as const;

async function findGpu(): Promise<GPU> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  if (nodeGpu) return nodeGpu;
  const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string';
  if (!isNode) throw new KdError('WebGPU is not available: navigator.gpu is undefined (use a browser with WebGPU, or call kd.webgpu.setDevice)', 'KD_EDEVICE');
  const spec = 'webgpu';
  let mod: { create: (flags: string[]) => GPU };
  try {
    mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ spec)) as typeof mod;
  } catch (e) {
    throw new KdError(
      `WebGPU is not available in this Node.js: navigator.gpu is undefined and the 'webgpu' package could not be loaded (${(e as Error).message}). ` +
        'Install it (npm i webgpu) or pass a device to kd.webgpu.setDevice()',
      'KD_EDEVICE',
    );
  }
  nodeGpu = mod.create([]);
  return nodeGpu;
}

async function requestDefault(): Promise<GPUDevice> {
  const gpu = await findGpu();
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter)
    throw new KdError(
      'WebGPU: requestAdapter() found no adapter (on Linux without a GPU, install Mesa\'s lavapipe: mesa-vulkan-drivers >= 25 from bookworm-backports)',
      'KD_EDEVICE',
    );
  const requiredLimits: Record<string, number> = {};
  for (const k of RAISED_LIMITS) {
    const v = (adapter.limits as unknown as Record<string, number>)[k];
    if (typeof v === 'number') requiredLimits[k] = v;
  }
  const requiredFeatures: GPUFeatureName[] = [];
  if (adapter.features.has('shader-f16')) requiredFeatures.push('shader-f16');
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures, label: 'kd-kernels' });
  state(device);
  return device;
}

/** The chosen device, or the default one (requested once, then reused). */
export async function requestDevice(): Promise<GPUDevice> {
  if (chosen) {
    checkDevice(chosen);
    return chosen;
  }
  requesting ??= requestDefault().then(
    (d) => {
      chosen ??= d;
      return chosen;
    },
    (e) => {
      requesting = undefined; // a later call may try again (e.g. after installing a driver)
      throw e;
    },
  );
  return requesting;
}

/** Throws KD_EDEVICE if the device was lost, KD_EWEBGPU for an uncaptured error. */
export function checkDevice(device: GPUDevice): void {
  const s = state(device);
  if (s.lost !== undefined) throw new KdError(`WebGPU device lost (${s.lost}); create a new device and call kd.webgpu.setDevice()`, 'KD_EDEVICE');
  if (s.uncaptured !== undefined) {
    const m = s.uncaptured;
    s.uncaptured = undefined;
    throw new KdError(`WebGPU error: ${m}`, 'KD_EWEBGPU');
  }
}

/** A compute pipeline for `wgsl` (layout 'auto'), created once per device and key. */
export function pipeline(device: GPUDevice, key: string, wgsl: string, entryPoint = 'main'): GPUComputePipeline {
  const s = state(device);
  const k = `${key}#${entryPoint}`;
  let p = s.pipelines.get(k);
  if (!p) {
    checkDevice(device);
    device.pushErrorScope('validation');
    const module = device.createShaderModule({ code: wgsl, label: key });
    p = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint }, label: key });
    s.errors.push(device.popErrorScope());
    s.pipelines.set(k, p);
  }
  return p;
}

export interface Binding {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

/**
 * One dispatch: binding 0 = the uniform params block (when `params` is given), then the
 * storage buffers at bindings 1, 2, ... in order (0, 1, ... without params), all in
 * group 0. Errors are collected (see the header) and reported by the next readback.
 */
export function run(
  device: GPUDevice,
  pipe: GPUComputePipeline,
  params: ArrayBuffer | null,
  storage: (GPUBuffer | Binding)[],
  groups: [number, number?, number?],
): void {
  const s = state(device);
  checkDevice(device);
  // A limit WebGPU would only report asynchronously (and that a caller like the tfjs path
  // might never read back): checked here, synchronously.
  const maxStorage = device.limits.maxStorageBuffersPerShaderStage;
  if (storage.length > maxStorage)
    throw new KdError(`WebGPU: a kernel binds ${storage.length} storage buffers but this device allows ${maxStorage} (maxStorageBuffersPerShaderStage)`, 'KD_EWEBGPU');
  device.pushErrorScope('out-of-memory');
  device.pushErrorScope('validation');
  const entries: GPUBindGroupEntry[] = [];
  if (params) {
    const bytes = Math.max(16, Math.ceil(params.byteLength / 16) * 16);
    // One params buffer per size, rewritten for each dispatch: queue.writeBuffer runs on
    // the queue after every earlier submission, so a dispatch already submitted reads its
    // own params, never the next one's (as the output pool relies on, pool.ts). Measured
    // on lavapipe, a 4 x 64 klDiv default call: 0.88-0.90x the time of a new buffer per
    // dispatch (created and destroyed each time), 9 alternating rounds of 300 calls, twice.
    let uniform = s.uniforms.get(bytes);
    if (!uniform) s.uniforms.set(bytes, (uniform = device.createBuffer({ size: bytes, usage: USAGE.UNIFORM | USAGE.COPY_DST, label: 'kd params' })));
    device.queue.writeBuffer(uniform, 0, params, 0, params.byteLength);
    entries.push({ binding: 0, resource: { buffer: uniform } });
  }
  const base = params ? 1 : 0;
  storage.forEach((b, i) => {
    const bb: Binding = 'mapState' in b ? { buffer: b } : b;
    const res: GPUBufferBinding = { buffer: bb.buffer };
    if (bb.offset !== undefined) res.offset = bb.offset;
    if (bb.size !== undefined) res.size = bb.size;
    entries.push({ binding: base + i, resource: res });
  });
  const bind = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(groups[0], groups[1] ?? 1, groups[2] ?? 1);
  pass.end();
  device.queue.submit([enc.finish()]);
  s.errors.push(device.popErrorScope(), device.popErrorScope());
}

/** Copies `bytes` (a multiple of 4) between buffers on the device's queue. */
export function copy(device: GPUDevice, src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
  checkDevice(device);
  if (bytes === 0) return;
  device.pushErrorScope('validation');
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  device.queue.submit([enc.finish()]);
  state(device).errors.push(device.popErrorScope());
}

/**
 * Reports the errors collected so far on `device` later instead of at a readback: for
 * callers that hand results to another library without reading them through kd (the
 * tfjs path). The first one is kept and thrown by the next kd call on the device.
 */
export function deferErrors(device: GPUDevice): void {
  flush(device).catch((e: Error) => {
    const s = state(device);
    if (s.lost === undefined) s.uncaptured ??= e.message;
  });
}

/** A storage buffer of at least `bytes` (rounded up to 4; WebGPU needs a multiple of 4). */
export function createBuffer(device: GPUDevice, bytes: number, usage: number = STORAGE_USAGE): GPUBuffer {
  checkDevice(device);
  const size = Math.max(4, Math.ceil(bytes / 4) * 4);
  const max = device.limits.maxBufferSize;
  if (size > max) throw new KdError(`WebGPU: a buffer of ${bytes} bytes exceeds this device's maxBufferSize (${max})`, 'KD_ENOMEM');
  device.pushErrorScope('out-of-memory');
  const buf = device.createBuffer({ size, usage, label: 'kd tensor' });
  state(device).errors.push(device.popErrorScope());
  return buf;
}

/** A new storage buffer holding `data` (padded with zeros to a multiple of 4 bytes). */
export function upload(device: GPUDevice, data: ArrayBufferView): GPUBuffer {
  const buf = createBuffer(device, data.byteLength);
  write(device, buf, 0, data);
  return buf;
}

/** Writes `data` at byte `offset` of `buf` (both padded to 4-byte units as WebGPU needs). */
export function write(device: GPUDevice, buf: GPUBuffer, offset: number, data: ArrayBufferView): void {
  checkDevice(device);
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (offset % 4 === 0 && bytes.byteLength % 4 === 0) {
    if (bytes.byteLength) device.queue.writeBuffer(buf, offset, bytes);
    return;
  }
  throw new KdError(`WebGPU: writes must start and end on 4-byte boundaries (offset ${offset}, ${bytes.byteLength} bytes)`, 'KD_EINVAL');
}

/**
 * Reports (and clears) the first error collected on `device` (default: the current one)
 * since the last check.
 */
export async function flush(device: GPUDevice | undefined = chosen): Promise<void> {
  if (!device) throw new KdError('webgpu.flush: no WebGPU device yet; await kd.webgpu.device() once (or call kd.webgpu.setDevice(device))', 'KD_EDEVICE');
  const s = state(device);
  const pending = s.errors;
  s.errors = [];
  const errs = await Promise.race([Promise.all(pending), s.lostPromise.then(() => [] as (GPUError | null)[])]);
  checkDevice(device);
  const first = errs.find((e) => e !== null);
  if (first) {
    const oom = typeof GPUOutOfMemoryError !== 'undefined' ? first instanceof GPUOutOfMemoryError : first.constructor?.name === 'GPUOutOfMemoryError';
    throw new KdError(`WebGPU ${oom ? 'out of memory' : 'error'}: ${first.message}`, oom ? 'KD_ENOMEM' : 'KD_EWEBGPU');
  }
}

/** Copies `bytes` from byte `offset` of `buf` to the host; waits for the work before it. */
export async function readBuffer(device: GPUDevice, buf: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
  checkDevice(device);
  if (bytes === 0) {
    await flush(device);
    return new ArrayBuffer(0);
  }
  const start = offset - (offset % 4);
  const size = Math.ceil((offset + bytes - start) / 4) * 4;
  const staging = device.createBuffer({ size, usage: USAGE.MAP_READ | USAGE.COPY_DST, label: 'kd readback' });
  try {
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(buf, start, staging, 0, size);
    device.queue.submit([enc.finish()]);
    const s = state(device);
    const mapped = staging.mapAsync(MAP_MODE_READ).then(() => true);
    const lost = s.lostPromise.then(() => false);
    const ok = await Promise.race([mapped, lost]);
    if (!ok) {
      mapped.catch(() => undefined);
      checkDevice(device);
    }
    await flush(device);
    const out = staging.getMappedRange().slice(offset - start, offset - start + bytes);
    staging.unmap();
    return out;
  } catch (e) {
    if (e instanceof KdError) throw e;
    checkDevice(device);
    throw new KdError(`WebGPU readback failed: ${(e as Error).message}`, 'KD_EWEBGPU');
  } finally {
    staging.destroy();
  }
}

/** Whether WGSL `enable f16;` may be used on this device. */
export function hasF16(device: GPUDevice): boolean {
  return device.features.has('shader-f16');
}

let bindingCap: number | undefined;
/**
 * The largest storage binding the kernels use: the device's maxStorageBufferBindingSize,
 * or less after _setBindingLimit (tests exercise the row-chunked path with it on small
 * tensors instead of > 128 MiB ones).
 */
export function bindingLimit(device: GPUDevice): number {
  const lim = device.limits.maxStorageBufferBindingSize;
  return bindingCap === undefined ? lim : Math.min(lim, bindingCap);
}
/** @internal Caps bindingLimit() (undefined: no cap). */
export function _setBindingLimit(bytes: number | undefined): void {
  bindingCap = bytes;
}

/** Byte alignment of storage-buffer binding offsets on this device. */
export function offsetAlignment(device: GPUDevice): number {
  return device.limits.minStorageBufferOffsetAlignment;
}

/**
 * A 2-D grid covering `count` workgroups (WebGPU allows at most 65535 per dimension):
 * the shader computes its index as wid.x + wid.y * 65535.
 */
export function grid(count: number): [number, number] {
  const x = Math.min(Math.max(count, 1), 65535);
  return [x, Math.max(1, Math.ceil(count / 65535))];
}
export const GRID_X = 65535;
