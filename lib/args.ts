/** Shared argument handling for ops: tensors as [N, V] rows, side inputs, outputs. */
import type { TensorDesc } from '../binding.js';
import type { DType, FloatDType, TypedArray } from './dtype.js';
import { KdError, KdRangeError, KdTypeError, describe } from './errors.js';
import { Tensor, deviceName, isDetached, isTensor, output, tensor } from './tensor.js';

const FLOATS: readonly DType[] = ['f32', 'f16', 'bf16'];

/** Logits as rows: [N, V] or [B, T, V] (flattened), last dim contiguous. */
export interface Rows {
  t: Tensor;
  n: number;
  v: number;
  ld: number;
  lead: number[]; // leading dims, e.g. [B, T]
  desc: TensorDesc;
}

export function asRows(name: string, x: unknown, op: string): Rows {
  if (!isTensor(x)) throw new KdTypeError(`${op}: expected a Tensor for ${name} but received ${describe(x)}`);
  if (!FLOATS.includes(x.dtype))
    throw new KdTypeError(`${op}: expected ${name} of dtype f32, f16 or bf16 but received ${x.dtype}`, 'KD_EDTYPE');
  if (x.ndim !== 2 && x.ndim !== 3)
    throw new KdRangeError(`${op}: expected ${name} of shape [N, V] or [B, T, V] but received [${x.shape.join(', ')}]`, 'KD_ESHAPE');
  const v = x.shape[x.ndim - 1]!;
  if (x.strides[x.ndim - 1] !== 1 && v > 1)
    throw new KdRangeError(`${op}: the last dimension of ${name} must be contiguous (stride 1), got strides [${x.strides.join(', ')}]`, 'KD_ESHAPE');
  const ld = x.strides[x.ndim - 2]!;
  let n = x.shape[0]!;
  if (x.ndim === 3) {
    const t = x.shape[1]!;
    if (x.shape[0]! > 1 && t > 0 && x.strides[0] !== t * ld)
      throw new KdRangeError(`${op}: ${name} [B, T, V] must have rows evenly spaced (strides[0] = T * strides[1]) to flatten without a copy`, 'KD_ESHAPE');
    n = x.shape[0]! * t;
  }
  if (n > 1 && ld < v)
    throw new KdRangeError(`${op}: rows of ${name} overlap: its row stride (${ld}) is smaller than V (${v}); strides [${x.strides.join(', ')}]`, 'KD_ESHAPE');
  const d = x._desc(name);
  const desc: TensorDesc = { ...d, shape: [n, v], strides: [Math.max(ld, v), 1] };
  if (n <= 1) desc.strides = [Math.max(ld, v), 1];
  return { t: x, n, v, ld: desc.strides[0]!, lead: x.shape.slice(0, -1) as number[], desc };
}

/**
 * A per-token side input ([N] labels / mask / weights / sampled ids): a Tensor on the
 * logits' device, or a TypedArray (a CPU view; uploaded when the logits are on CUDA).
 * Returns the tensor and, when available, a host copy for range checks.
 */
export function sideInput(
  name: string,
  x: unknown,
  dtype: 'i32' | 'u8' | 'f32',
  n: number,
  device: number,
  op: string,
  temps: Tensor[],
): { t: Tensor; host?: TypedArray } | undefined {
  if (x === undefined || x === null) return undefined;
  const ctor = dtype === 'i32' ? Int32Array : dtype === 'u8' ? Uint8Array : Float32Array;
  let t: Tensor;
  let host: TypedArray | undefined;
  if (isTensor(x)) {
    t = x;
    x._desc(name); // a disposed or detached tensor: an error that names the argument
    if (t.deviceIndex !== device)
      throw new KdError(`${op}: ${name} is on ${t.device} but the logits are on ${deviceName(device)}`, 'KD_EDEVICE');
    if (t.device === 'cpu') host = t.toArray();
  } else if (x instanceof ctor) {
    if (isDetached(x.buffer)) throw new KdError(`${op}: the ArrayBuffer of ${name} was detached (transferred)`, 'KD_EDISPOSED');
    host = x as TypedArray;
    t = tensor(host, [host.length], { device: deviceName(device) });
    if (device !== -1) temps.push(t); // uploaded for CUDA or WebGPU
  } else {
    throw new KdTypeError(`${op}: expected a ${dtype} Tensor or ${ctor.name} for ${name} but received ${describe(x)}`, 'KD_EDTYPE');
  }
  if (t.dtype !== dtype) throw new KdTypeError(`${op}: expected ${name} of dtype ${dtype} but received ${t.dtype}`, 'KD_EDTYPE');
  if (t.numel !== n || (t.ndim > 1 && !t.isContiguous))
    throw new KdRangeError(`${op}: expected ${name} with ${n} elements (one per token) but received shape [${t.shape.join(', ')}]`, 'KD_ESHAPE');
  return { t, host };
}

/** Flat [N] descriptor of a side input of any contiguous shape. */
export function flatDesc(t: Tensor, name: string): TensorDesc {
  const d = t._desc(name);
  return { ...d, shape: [t.numel], strides: [1] };
}

export type GradOption = boolean | 'inplace' | Tensor;

/**
 * Resolves the `grad` option to an output tensor (or none). `made`: the call's outputs
 * made before it (ops make their small outputs first, see prepare in divergence.ts),
 * disposed here if the option is rejected.
 */
export function resolveGrad(
  grad: unknown,
  gradDtype: unknown,
  s: Rows,
  op: string,
  made: readonly Tensor[] = [],
): { t?: Tensor; desc?: TensorDesc } {
  try {
    return gradOption(grad, gradDtype, s, op);
  } catch (e) {
    disposeAll(made);
    throw e;
  }
}

/** Disposes each tensor (an op's outputs on failure, its temporaries after the launch). */
export function disposeAll(ts: readonly Tensor[]): void {
  for (const t of ts) t.dispose();
}

function gradOption(grad: unknown, gradDtype: unknown, s: Rows, op: string): { t?: Tensor; desc?: TensorDesc } {
  if (grad === undefined || grad === true) {
    const dtype: FloatDType = gradDtype === 'f32' ? 'f32' : (s.t.dtype as FloatDType);
    const t = output([...s.lead, s.v], dtype, s.t.deviceIndex);
    return { t, desc: { ...t._desc('grad'), shape: [s.n, s.v], strides: [s.v, 1] } };
  }
  if (grad === false) return {};
  if (grad === 'inplace') {
    if (gradDtype === 'f32' && s.t.dtype !== 'f32')
      throw new KdRangeError(`${op}: grad 'inplace' writes the student's dtype (${s.t.dtype}); gradDtype 'f32' is not possible`, 'KD_EDTYPE');
    return { t: s.t, desc: s.desc };
  }
  if (isTensor(grad)) {
    const g = asRows('grad', grad, op);
    if (g.n !== s.n || g.v !== s.v)
      throw new KdRangeError(`${op}: expected grad of shape [${s.n}, ${s.v}] (as the student) but received [${grad.shape.join(', ')}]`, 'KD_ESHAPE');
    if (grad.deviceIndex !== s.t.deviceIndex)
      throw new KdError(`${op}: grad is on ${grad.device} but the student is on ${s.t.device}`, 'KD_EDEVICE');
    return { t: grad, desc: g.desc };
  }
  throw new KdTypeError(`${op}: expected true, false, 'inplace' or a Tensor for grad but received ${describe(grad)}`);
}
