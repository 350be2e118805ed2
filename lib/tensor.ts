/**
 * Tensors: zero-copy views of TypedArrays on the CPU, and device memory on CUDA
 * (allocated stream-ordered by the library, or borrowed with fromDevicePointer).
 * Shapes and strides are in elements; strides let a row stride exceed the row length
 * (a teacher with a padded vocabulary) without a copy.
 */
import type { DeviceMemoryHandle, TensorDesc } from '../binding.js';
import type { WebGpuMemory } from './memory.js';
import { DTYPE_CODE, DTYPE_SIZE, DTYPES, allocArray, arrayTypeFor, bf16ToNumber, dtypeOfArray, f16ToNumber, toFloat32, type DType, type TypedArray } from './dtype.js';
import { KdError, KdRangeError, KdTypeError, describe } from './errors.js';
import { binding } from './native.js';
import { expectInt, expectOneOf, expectOptions, expectShape } from './validate.js';
import { constants as bufferConstants } from 'node:buffer';

/** The largest ArrayBuffer this Node.js can allocate (4 GiB on Node 20). */
const MAX_CPU_BYTES = bufferConstants.MAX_LENGTH;

export type Device = 'cpu' | `cuda:${number}` | 'webgpu';

/** The device index of WebGPU tensors (the CPU is -1, CUDA devices 0, 1, ...). */
export const WEBGPU = -2;

/** WebGPU memory of a tensor (lib/webgpu/tensor.ts creates it). */
export interface GpuMem {
  buffer: GPUBuffer;
  device: GPUDevice;
  /** Bytes from the start of the buffer to the tensor's first element. */
  byteOffset: number;
  /** Allocated by the library (dispose() destroys it) or borrowed (fromGPUBuffer). */
  owned: boolean;
  /** From the WebGPU output pool (lib/webgpu/pool.ts): dispose() returns it there. */
  pooled?: boolean;
}

export interface TensorOptions {
  dtype?: DType;
  device?: Device | 'cuda';
  strides?: number[];
}

/** Parses 'cpu' | 'cuda' | 'cuda:N' | 'webgpu' to -1 | N | WEBGPU. */
export function parseDevice(name: string, v: unknown): number {
  if (v === undefined || v === 'cpu') return -1;
  if (v === 'cuda') return 0;
  if (v === 'webgpu') return WEBGPU;
  if (typeof v === 'string') {
    const m = /^cuda:(\d{1,3})$/.exec(v);
    if (m) return Number(m[1]);
    throw new KdRangeError(`Expected 'cpu', 'cuda', 'cuda:N' or 'webgpu' for ${name} but received ${describe(v)}`, 'KD_EDEVICE');
  }
  throw new KdTypeError(`Expected a device string for ${name} but received ${describe(v)}`, 'KD_EDEVICE');
}

export function deviceName(index: number): Device {
  return index === WEBGPU ? 'webgpu' : index < 0 ? 'cpu' : `cuda:${index}`;
}

function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

/** Number of elements from the first to the last addressed element, inclusive (0 if empty). */
export function extentOf(shape: readonly number[], strides: readonly number[]): number {
  let last = 0;
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 0) return 0;
    last += (shape[i]! - 1) * strides[i]!;
  }
  return last + 1;
}

const internal = Symbol('kd.internal');

/** True when the buffer was transferred away (Node 20 lacks ArrayBuffer.prototype.detached). */
export function isDetached(buf: ArrayBufferLike): boolean {
  if (buf.byteLength !== 0) return false;
  try {
    new Uint8Array(buf);
    return false;
  } catch {
    return true;
  }
}

export class Tensor implements Disposable {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  readonly strides: readonly number[];
  #data: TypedArray | undefined;
  #mem: DeviceMemoryHandle | undefined;
  #offset: number;
  #disposed = false;
  #keepAlive: unknown;
  #gpu: GpuMem | undefined;
  /** CPU: the data is a block of the native output pool (returned by dispose). */
  #pooled: boolean;

  /** @internal Use kd.tensor / kd.empty / kd.zeros / kd.fromDevicePointer. */
  constructor(
    token: typeof internal,
    init: { shape: number[]; dtype: DType; device: number; strides: number[]; data?: TypedArray; mem?: DeviceMemoryHandle; offset?: number; keepAlive?: unknown; gpu?: GpuMem; pooled?: boolean },
  ) {
    if (token !== internal) throw new KdTypeError('Tensors are created with kd.tensor, kd.empty, kd.zeros or kd.fromDevicePointer');
    this.shape = Object.freeze(init.shape.slice());
    this.strides = Object.freeze(init.strides.slice());
    this.dtype = init.dtype;
    this.device = deviceName(init.device);
    this.#data = init.data;
    this.#mem = init.mem;
    this.#offset = init.offset ?? 0;
    this.#keepAlive = init.keepAlive;
    this.#gpu = init.gpu;
    this.#pooled = init.pooled === true;
    if (init.gpu?.pooled) hooks.trackGpu!(this, init.gpu);
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get ndim(): number {
    return this.shape.length;
  }
  /** -1 for the CPU, WEBGPU (-2) for WebGPU, else the CUDA device index. */
  get deviceIndex(): number {
    return this.device === 'cpu' ? -1 : this.device === 'webgpu' ? WEBGPU : Number(this.device.slice(5));
  }
  get isCuda(): boolean {
    return this.device.startsWith('cuda');
  }
  get isWebGPU(): boolean {
    return this.device === 'webgpu';
  }
  get disposed(): boolean {
    return this.#disposed;
  }
  get isContiguous(): boolean {
    const c = contiguousStrides(this.shape);
    return this.shape.every((d, i) => d <= 1 || this.strides[i] === c[i]);
  }
  /** Elements between the first and the last addressed element (what the memory must hold). */
  get extent(): number {
    return extentOf(this.shape, this.strides);
  }

  /** The device address of the first element (CUDA tensors only). */
  get pointer(): bigint {
    this.#check('pointer');
    if (!this.#mem) throw new KdError('pointer is only defined for CUDA tensors', 'KD_EDEVICE');
    return binding().memInfo(this.#mem).ptr + BigInt(this.#offset);
  }

  /**
   * CPU: the TypedArray this tensor views (zero-copy; with strides it covers the
   * extent). CUDA: waits for pending work and copies the extent to a new array.
   */
  toArray(): TypedArray {
    this.#check('toArray');
    if (this.#data) return this.#data;
    if (this.#gpu) throw syncRead(this, 'toArray');
    const out = allocArray(this.dtype, this.extent);
    binding().cudaCopy(this.#mem!, this.#offset, out, false);
    return out;
  }

  /** The values as float32 (converted from f16/bf16/i32/u8), dense in row-major order. */
  toFloat32Array(): Float32Array {
    return denseFloat32(this.toArray(), this);
  }

  /** The single value of a one-element tensor. */
  item(): number {
    if (this.numel !== 1) throw new KdRangeError(`item() needs a tensor with one element, this one has shape [${this.shape.join(', ')}]`, 'KD_ESHAPE');
    if (this.#gpu) throw syncRead(this, 'item');
    const v = this.toArray()[0]!;
    return this.dtype === 'bf16' ? bf16ToNumber(v) : this.dtype === 'f16' ? f16ToNumber(v) : v;
  }

  // ---- WebGPU (reads are asynchronous: lib/webgpu/tensor.ts) ----------------------
  /** Any device: the values as `toArray()` gives them; WebGPU tensors read back without blocking. */
  async toArrayAsync(): Promise<TypedArray> {
    this.#check('toArrayAsync');
    if (this.#gpu) return hooks.readGpu!(this.#gpu, this.dtype, this.extent);
    return this.toArray();
  }
  /** Any device: as `toFloat32Array()`, without blocking on WebGPU. */
  async toFloat32ArrayAsync(): Promise<Float32Array> {
    if (!this.#gpu) return this.toFloat32Array();
    return denseFloat32(await this.toArrayAsync(), this);
  }
  /** Any device: as `item()`, without blocking on WebGPU. */
  async itemAsync(): Promise<number> {
    if (this.numel !== 1) throw new KdRangeError(`itemAsync() needs a tensor with one element, this one has shape [${this.shape.join(', ')}]`, 'KD_ESHAPE');
    if (!this.#gpu) return this.item();
    const v = (await this.toArrayAsync())[0]!;
    return this.dtype === 'bf16' ? bf16ToNumber(v) : this.dtype === 'f16' ? f16ToNumber(v) : v;
  }
  /** @internal The WebGPU memory (WebGPU tensors only). */
  _gpu(what = 'tensor'): GpuMem {
    this.#check(what);
    if (!this.#gpu) throw new KdError(`${what}: expected a WebGPU tensor but it is on ${this.device}`, 'KD_EDEVICE');
    return this.#gpu;
  }
  /** The GPUBuffer holding this tensor's elements (from `gpuByteOffset`; WebGPU only). */
  get gpuBuffer(): GPUBuffer {
    return this._gpu('gpuBuffer').buffer;
  }
  get gpuByteOffset(): number {
    return this._gpu('gpuByteOffset').byteOffset;
  }
  // ---- end WebGPU -------------------------------------------------------------------

  /** A copy on another device (same dtype, contiguous layout kept as strides). */
  to(device: Device | 'cuda'): Tensor {
    this.#check('to');
    const target = parseDevice('device', device);
    if (target === this.deviceIndex) return this;
    if (this.#gpu) throw syncRead(this, 'to');
    const host = this.#data ? this.#data.subarray(0, this.extent) : this.toArray();
    return createTensor(host as TypedArray, this.shape.slice(), { dtype: this.dtype, device: deviceName(target), strides: this.strides.slice() });
  }

  /**
   * Frees device memory now. CPU outputs the library allocated go back to the output
   * pool, and their ArrayBuffer is detached: a view kept from toArray() then has length
   * 0 and never sees the memory's next use. WebGPU buffers the library allocated go back
   * to the WebGPU pool. CPU tensors over your own arrays and borrowed GPU memory just
   * drop the reference. Idempotent.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#pooled && this.#data) binding().poolRelease(this.#data.buffer as ArrayBuffer);
    if (this.#mem) binding().cudaFree(this.#mem);
    if (this.#gpu?.pooled) hooks.releaseGpu!(this, this.#gpu);
    else if (this.#gpu?.owned) this.#gpu.buffer.destroy();
    this.#gpu = undefined;
    this.#mem = undefined;
    this.#data = undefined;
    this.#keepAlive = undefined;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal Descriptor for the native layer. */
  _desc(what = 'tensor'): TensorDesc {
    this.#check(what);
    return {
      dtype: DTYPE_CODE[this.dtype],
      device: this.deviceIndex,
      shape: this.shape as number[],
      strides: this.strides as number[],
      data: this.#data,
      mem: this.#mem,
      offset: this.#offset,
      gpu: this.#gpu,
    };
  }

  #check(what: string): void {
    if (this.#disposed) throw new KdError(`${what}: the tensor was disposed`, 'KD_EDISPOSED');
    if (this.#data && isDetached(this.#data.buffer))
      throw new KdError(`${what}: the tensor's ArrayBuffer was detached (transferred)`, 'KD_EDISPOSED');
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device}${this.#disposed ? ', disposed' : ''})`;
  }
}

/** The extent `raw` of tensor `t` as dense row-major float32. */
function denseFloat32(raw: TypedArray, t: Tensor): Float32Array {
  if (t.isContiguous) return toFloat32(raw.subarray(0, t.numel) as TypedArray, t.dtype);
  const full = toFloat32(raw, t.dtype);
  const out = new Float32Array(t.numel);
  const idx = new Array<number>(t.ndim).fill(0);
  for (let k = 0; k < out.length; k++) {
    let off = 0;
    for (let d = 0; d < t.ndim; d++) off += idx[d]! * t.strides[d]!;
    out[k] = full[off]!;
    for (let d = t.ndim - 1; d >= 0; d--) {
      if (++idx[d]! < t.shape[d]!) break;
      idx[d] = 0;
    }
  }
  return out;
}

// ---- WebGPU: lib/webgpu/tensor.ts installs these (so this file imports no WebGPU code) --
interface WebGPUHooks {
  readGpu?: (mem: GpuMem, dtype: DType, extent: number) => Promise<TypedArray>;
  uploadGpu?: (data: TypedArray, dtype: DType, extent: number) => GpuMem;
  allocGpu?: (bytes: number, zero: boolean) => GpuMem;
  /** The WebGPU pool (lib/webgpu/pool.ts): a new tensor over pooled memory; its dispose(). */
  trackGpu?: (t: Tensor, mem: GpuMem) => void;
  releaseGpu?: (t: Tensor, mem: GpuMem) => void;
  /** kd.memory / kd.trimMemory / kd.setMemoryLimit on the current WebGPU device's pool. */
  memoryGpu?: () => WebGpuMemory | undefined;
  trimGpu?: (keepBytes: number) => void;
  capGpu?: (bytes: number) => void;
}
/** @internal */
export const hooks: WebGPUHooks = {};
/** @internal Creates a WebGPU tensor over `gpu` (lib/webgpu/tensor.ts). */
export function _webgpuTensor(shape: number[], dtype: DType, strides: number[] | undefined, gpu: GpuMem): Tensor {
  return new Tensor(internal, { shape, dtype, device: WEBGPU, strides: strides ?? contiguousStrides(shape), gpu });
}
export function _resolveStrides(shape: number[], strides: unknown): number[] {
  return resolveStrides(shape, strides);
}
function syncRead(t: Tensor, what: string): KdError {
  return new KdError(`${what}(): ${t.toString()} is on WebGPU, whose reads are asynchronous; use await ${what === 'item' ? 'itemAsync()' : what === 'to' ? 'toArrayAsync()' : 'toArrayAsync()'}`, 'KD_EDEVICE');
}
function needWebGPU(): never {
  throw new KdError("device 'webgpu': the WebGPU backend is not loaded (import 'kd-kernels' or 'kd-kernels/webgpu')", 'KD_EDEVICE');
}
// ---- end WebGPU -------------------------------------------------------------------

function resolveStrides(shape: number[], strides: unknown): number[] {
  if (strides === undefined) return contiguousStrides(shape);
  const s = expectShape('strides', strides);
  if (s.length !== shape.length)
    throw new KdRangeError(`Expected ${shape.length} strides for shape [${shape.join(', ')}] but received ${s.length}`, 'KD_ESHAPE');
  return s;
}

function createTensor(data: TypedArray, shape: number[], opts: TensorOptions): Tensor {
  const dtype = opts.dtype!;
  const device = parseDevice('device', opts.device);
  const strides = resolveStrides(shape, opts.strides);
  const extent = extentOf(shape, strides);
  if (data.length < extent)
    throw new KdRangeError(
      `Expected data with at least ${extent} elements for shape [${shape.join(', ')}]${opts.strides ? ` and strides [${strides.join(', ')}]` : ''} but received ${describe(data)}`,
      'KD_ESHAPE',
    );
  if (device === WEBGPU) return new Tensor(internal, { shape, dtype, device, strides, gpu: (hooks.uploadGpu ?? needWebGPU)(data, dtype, extent) });
  if (device < 0) return new Tensor(internal, { shape, dtype, device, strides, data });
  const mem = binding().cudaAlloc(device, extent * DTYPE_SIZE[dtype], false);
  binding().cudaCopy(mem, 0, data.subarray(0, extent), true);
  return new Tensor(internal, { shape, dtype, device, strides, mem });
}

/**
 * A tensor over `data`: a zero-copy view on the CPU, an upload on CUDA. The dtype
 * follows the array (Float32Array → f32, Int32Array → i32, Uint8Array → u8); f16 and
 * bf16 data is a Uint16Array of raw bits and must name its dtype.
 */
export function tensor(data: TypedArray, shape: number[], opts?: TensorOptions): Tensor {
  const o = expectOptions('tensor options', opts, ['dtype', 'device', 'strides']);
  if (!ArrayBuffer.isView(data) || data instanceof DataView)
    throw new KdTypeError(`Expected a TypedArray for data but received ${describe(data)}`);
  const s = expectShape('shape', shape);
  const implied = dtypeOfArray(data);
  const dtype = o.dtype === undefined ? implied : expectOneOf('dtype', o.dtype, DTYPES);
  if (dtype === undefined)
    throw new KdTypeError(`A ${data.constructor.name} needs an explicit dtype ('f16' or 'bf16' for Uint16Array); supported arrays: Float32Array, Uint16Array, Int32Array, Uint8Array`, 'KD_EDTYPE');
  if (data.constructor.name !== arrayTypeFor(dtype))
    throw new KdTypeError(`Expected a ${arrayTypeFor(dtype)} for dtype '${dtype}' but received ${describe(data)}`, 'KD_EDTYPE');
  if (isDetached(data.buffer)) throw new KdError('tensor: the data ArrayBuffer is detached', 'KD_EDISPOSED');
  return createTensor(data, s, { dtype, device: o.device as Device | undefined, strides: o.strides as number[] | undefined });
}

function alloc(shape: unknown, opts: unknown, zero: boolean, fn: string): Tensor {
  const o = expectOptions(`${fn} options`, opts, ['dtype', 'device']);
  const s = expectShape('shape', shape);
  const dtype = o.dtype === undefined ? 'f32' : expectOneOf('dtype', o.dtype, DTYPES);
  const device = parseDevice('device', o.device);
  const numel = s.reduce((a, b) => a * b, 1);
  const strides = contiguousStrides(s);
  if (device === WEBGPU) return new Tensor(internal, { shape: s, dtype, device, strides, gpu: (hooks.allocGpu ?? needWebGPU)(numel * DTYPE_SIZE[dtype], zero) });
  if (device < 0) {
    const bytes = numel * DTYPE_SIZE[dtype];
    if (numel > 2 ** 31 || bytes > MAX_CPU_BYTES)
      throw new KdRangeError(`${fn}: shape [${s.join(', ')}] has ${numel} elements (${bytes} bytes), more than a CPU tensor can hold (2^31 elements, ${MAX_CPU_BYTES} bytes)`, 'KD_ESHAPE');
    let data: TypedArray;
    try {
      data = allocArray(dtype, numel);
    } catch (e) {
      throw new KdError(`${fn}: cannot allocate ${bytes} bytes for shape [${s.join(', ')}]: ${(e as Error).message}`, 'KD_ENOMEM');
    }
    return new Tensor(internal, { shape: s, dtype, device, strides, data });
  }
  const mem = binding().cudaAlloc(device, numel * DTYPE_SIZE[dtype], zero);
  return new Tensor(internal, { shape: s, dtype, device, strides, mem });
}

/**
 * @internal An output of an op: on the CPU a block of the native output pool (not
 * zero-filled: the kernel writes every element), or a plain array below the pool's
 * minimum size or beyond its cap; on CUDA device memory as kd.empty.
 */
export function output(shape: number[], dtype: DType, device: number | Device): Tensor {
  const d = typeof device === 'number' ? device : parseDevice('device', device);
  if (d !== -1) return alloc(shape, { dtype, device: deviceName(d) }, false, 'output'); // CUDA and WebGPU: their own allocators
  const strides = contiguousStrides(shape);
  const numel = shape.reduce((a, b) => a * b, 1);
  const bytes = numel * DTYPE_SIZE[dtype];
  if (bytes >= poolMinBytes()) {
    const ab = binding().poolAlloc(bytes);
    if (ab) return new Tensor(internal, { shape, dtype, device: d, strides, data: viewOf(dtype, ab, numel), pooled: true });
  }
  if (bytes > V8_ON_HEAP_MAX_BYTES) return alloc(shape, { dtype }, false, 'output');
  // A tiny output (e.g. a scalar loss) gets an ArrayBuffer of its own, so its memory is off
  // V8's heap from the start: V8 keeps a typed array of <= 64 bytes made without a buffer
  // on its heap and moves it off when the addon first reads it, an external allocation in
  // the middle of the call, which runs a young collection whenever a large young
  // ArrayBuffer, such as this call's pooled gradient, is alive. (Larger typed arrays are
  // off the heap from creation.) Ops create their small outputs before the gradient.
  return new Tensor(internal, { shape, dtype, device: d, strides, data: viewOf(dtype, new ArrayBuffer(bytes), numel) });
}

/** V8's largest typed array kept on its heap (its typed_array_max_size_in_heap flag). */
const V8_ON_HEAP_MAX_BYTES = 64;

let minBytes = -1;
let defaultMinBytes = -1;
/** The pool's minimum block (tuning::kPoolMinBytes), read once per realm, after the probe. */
function poolMinBytes(): number {
  if (minBytes < 0) {
    minBytes = defaultMinBytes = binding().poolInfo().minBytes;
    binding().poolReclaim(!transfersMovePooledMemory(minBytes));
  }
  return minBytes;
}

/**
 * Whether this runtime can move a pooled block's memory into another ArrayBuffer
 * (structuredClone or postMessage with a transfer list, ArrayBuffer.prototype.transfer).
 * Node 20 copies external ArrayBuffers instead. Where the memory can move, the pool must
 * not reclaim a block when the ArrayBuffer it handed out is collected (the memory may
 * live on elsewhere) and waits for the finalizer instead (native/binding/pool.cc).
 */
function transfersMovePooledMemory(bytes: number): boolean {
  const tries: ((ab: ArrayBuffer) => unknown)[] = [
    (ab) => structuredClone(ab, { transfer: [ab] }),
    (ab) => {
      const { port1, port2 } = new MessageChannel();
      try {
        port1.postMessage(ab, [ab]);
      } finally {
        port1.close();
        port2.close();
      }
    },
    (ab) => (ab as unknown as { transfer?: () => ArrayBuffer }).transfer?.(),
  ];
  for (const t of tries) {
    const ab = binding().poolAlloc(bytes);
    if (!ab) return true; // cannot tell: assume the worst
    try {
      t(ab);
    } catch {
      /* refused: it cannot move */
    }
    if (ab.byteLength === 0) return true; // detached: the memory moved (its finalizer returns the block)
    binding().poolRelease(ab);
  }
  return false;
}
/** @internal Tests: poison every pooled block handed out with `byte` (-1: off), set the minimum size. */
export function _poolDebug(poisonByte: number, minBytesOverride?: number): void {
  poolMinBytes();
  const m = minBytesOverride ?? defaultMinBytes;
  binding().poolDebug(poisonByte, m);
  minBytes = m;
}

function viewOf(dtype: DType, ab: ArrayBuffer, length: number): TypedArray {
  switch (dtype) {
    case 'f32': return new Float32Array(ab, 0, length);
    case 'i32': return new Int32Array(ab, 0, length);
    case 'u8': return new Uint8Array(ab, 0, length);
    default: return new Uint16Array(ab, 0, length);
  }
}

/** An uninitialised tensor (CPU arrays are zero-filled anyway). */
export function empty(shape: number[], opts?: { dtype?: DType; device?: Device | 'cuda' }): Tensor {
  return alloc(shape, opts, false, 'empty');
}

/** A zero-filled tensor. */
export function zeros(shape: number[], opts?: { dtype?: DType; device?: Device | 'cuda' }): Tensor {
  return alloc(shape, opts, true, 'zeros');
}

/**
 * Borrows device memory owned by someone else (another library's tensor). The pointer
 * is checked with cudaPointerGetAttributes; `keepAlive` is held as long as the tensor,
 * so the owner is not collected first. dispose() never frees borrowed memory.
 */
export function fromDevicePointer(
  ptr: bigint,
  shape: number[],
  opts: { dtype: DType; device: Device | 'cuda'; strides?: number[]; keepAlive?: unknown },
): Tensor {
  if (typeof ptr !== 'bigint') throw new KdTypeError(`Expected a bigint for ptr but received ${describe(ptr)}`);
  if (ptr <= 0n) throw new KdRangeError('Expected a non-null device pointer for ptr', 'KD_EINVAL');
  const o = expectOptions('fromDevicePointer options', opts, ['dtype', 'device', 'strides', 'keepAlive']);
  const s = expectShape('shape', shape);
  const dtype = expectOneOf('dtype', o.dtype, DTYPES);
  const device = parseDevice('device', o.device);
  if (device < 0) throw new KdRangeError("fromDevicePointer needs a CUDA device ('cuda:N')", 'KD_EDEVICE');
  const strides = resolveStrides(s, o.strides);
  const bytes = extentOf(s, strides) * DTYPE_SIZE[dtype];
  const mem = binding().cudaWrap(ptr, bytes, device);
  return new Tensor(internal, { shape: s, dtype, device, strides, mem, keepAlive: o.keepAlive });
}

export function isTensor(v: unknown): v is Tensor {
  return v instanceof Tensor;
}

export { expectInt };
