/**
 * WebGPU tensors: storage buffers on the current GPUDevice (runtime.ts). kd.tensor(...,
 * { device: 'webgpu' }) uploads, kd.empty / kd.zeros allocate (WebGPU buffers start
 * zeroed), kd.fromGPUBuffer borrows a caller's buffer without a copy. Reads are
 * asynchronous (toArrayAsync / itemAsync); dispose() destroys only buffers the library
 * allocated. Installed into lib/tensor.ts through its `hooks`, so tensor.ts itself
 * imports no WebGPU code.
 */
import { DTYPES, DTYPE_SIZE, allocArray, type DType, type TypedArray } from '../dtype.js';
import { KdError, KdRangeError, KdTypeError, describe } from '../errors.js';
import { _resolveStrides, _webgpuTensor, extentOf, hooks, type GpuMem, type Tensor } from '../tensor.js';
import { expectInt, expectOneOf, expectOptions, expectShape } from '../validate.js';
import { acquire, info, release, setCap, track, trim } from './pool.js';
import { USAGE, currentDevice, readBuffer, write } from './runtime.js';

/** The current device, or a KD_EDEVICE error saying how to get one. */
export function deviceOrThrow(what: string): GPUDevice {
  const d = currentDevice();
  if (!d)
    throw new KdError(
      `${what}: no WebGPU device yet; await kd.webgpu.device() once (or call kd.webgpu.setDevice(device)) before creating WebGPU tensors`,
      'KD_EDEVICE',
    );
  return d;
}

/** Writes `data` at the start of `buf`, padded with zeros to a multiple of 4 bytes. */
function writePadded(device: GPUDevice, buf: GPUBuffer, data: ArrayBufferView): void {
  let bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (bytes.byteLength % 4) {
    const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
    padded.set(bytes);
    bytes = padded;
  }
  write(device, buf, 0, bytes);
}

hooks.uploadGpu = (data: TypedArray, _dtype: DType, extent: number): GpuMem => {
  const device = deviceOrThrow('tensor');
  const view = data.subarray(0, extent);
  const mem = acquire(device, view.byteLength, false);
  writePadded(device, mem.buffer, view);
  return mem;
};
hooks.allocGpu = (bytes: number, zero: boolean): GpuMem => acquire(deviceOrThrow(zero ? 'zeros' : 'empty'), bytes, zero);
hooks.trackGpu = track;
hooks.releaseGpu = release;
hooks.memoryGpu = () => {
  const d = currentDevice();
  return d && info(d);
};
hooks.trimGpu = (keep: number) => {
  const d = currentDevice();
  if (d) trim(d, keep);
};
hooks.capGpu = (bytes: number) => setCap(bytes, currentDevice());
hooks.readGpu = async (mem: GpuMem, dtype: DType, extent: number): Promise<TypedArray> => {
  if (extent === 0) return allocArray(dtype, 0);
  if (!(mem.buffer.usage & USAGE.COPY_SRC))
    throw new KdError('toArrayAsync: the GPUBuffer lacks GPUBufferUsage.COPY_SRC, so it cannot be read back', 'KD_EWEBGPU');
  const ab = await readBuffer(mem.device, mem.buffer, mem.byteOffset, extent * DTYPE_SIZE[dtype]);
  switch (dtype) {
    case 'f32': return new Float32Array(ab);
    case 'i32': return new Int32Array(ab);
    case 'u8': return new Uint8Array(ab);
    default: return new Uint16Array(ab);
  }
};

export interface FromGPUBufferOptions {
  dtype: DType;
  /** The device that owns `buffer` (default: kd.webgpu's current device). */
  device?: GPUDevice;
  /** Element strides (default: contiguous). */
  strides?: number[];
  /** Bytes from the start of the buffer to the first element (a multiple of the element size). */
  byteOffset?: number;
}

function isGpuBuffer(b: unknown): b is GPUBuffer {
  return typeof b === 'object' && b !== null && typeof (b as GPUBuffer).size === 'number' && typeof (b as GPUBuffer).usage === 'number' && 'mapState' in b;
}

/**
 * Borrows a caller's GPUBuffer (no copy; the caller keeps ownership: dispose() does not
 * destroy it). It must have STORAGE usage (and COPY_SRC to be read back).
 */
export function fromGPUBuffer(buffer: GPUBuffer, shape: number[], opts: FromGPUBufferOptions): Tensor {
  if (!isGpuBuffer(buffer)) throw new KdTypeError(`Expected a GPUBuffer for buffer but received ${describe(buffer)}`, 'KD_EINVAL');
  const o = expectOptions('fromGPUBuffer options', opts, ['dtype', 'device', 'strides', 'byteOffset']);
  if (o.dtype === undefined) throw new KdTypeError("fromGPUBuffer: options.dtype is required (one of 'f32', 'f16', 'bf16', 'i32', 'u8')", 'KD_EDTYPE');
  const dtype = expectOneOf('dtype', o.dtype, DTYPES);
  const s = expectShape('shape', shape);
  const strides = _resolveStrides(s, o.strides);
  const byteOffset = o.byteOffset === undefined ? 0 : expectInt('byteOffset', o.byteOffset, 0);
  if (byteOffset % DTYPE_SIZE[dtype])
    throw new KdRangeError(`Expected byteOffset to be a multiple of ${DTYPE_SIZE[dtype]} (the size of ${dtype}) but received ${byteOffset}`, 'KD_EINVAL');
  let device: GPUDevice;
  if (o.device !== undefined) {
    const d = o.device as GPUDevice;
    if (typeof d !== 'object' || d === null || typeof d.createComputePipeline !== 'function')
      throw new KdTypeError(`Expected a GPUDevice for device but received ${describe(d)}`, 'KD_EDEVICE');
    device = d;
    if (currentDevice() !== undefined && currentDevice() !== d)
      throw new KdError('fromGPUBuffer: the buffer\'s device is not kd.webgpu\'s current device; call kd.webgpu.setDevice(device) first (ops need all tensors on one device)', 'KD_EDEVICE');
  } else {
    device = deviceOrThrow('fromGPUBuffer');
  }
  if (!(buffer.usage & USAGE.STORAGE))
    throw new KdError('fromGPUBuffer: the GPUBuffer lacks GPUBufferUsage.STORAGE, which compute kernels need', 'KD_EWEBGPU');
  const bytes = extentOf(s, strides) * DTYPE_SIZE[dtype];
  if (byteOffset + bytes > buffer.size)
    throw new KdRangeError(
      `fromGPUBuffer: shape [${s.join(', ')}]${o.strides ? ` with strides [${strides.join(', ')}]` : ''} of ${dtype} needs ${bytes} bytes from byte ${byteOffset}, but the buffer has ${buffer.size}`,
      'KD_ESHAPE',
    );
  return _webgpuTensor(s, dtype, strides, { buffer, device, byteOffset, owned: false });
}
