/**
 * kd-kernels/tfjs on tfjs-backend-webgpu: kdLoss / sparseKdLoss without a CPU round trip.
 *
 * lib/tfjs.ts hands a call here when tf's backend is 'webgpu'. The logits (student,
 * teacher) and tf label / weight tensors are read with `dataToGPU()` (tfjs copies them,
 * GPU to GPU, into a buffer it hands over) and borrowed as kd WebGPU tensors on tf's own
 * GPUDevice (`tf.backend().device`, made kd's device); the fused kernels run on that
 * device's queue, ordered after the work that produced the logits; the loss and the
 * gradient come back as tf tensors made with `tf.tensor({ buffer }, shape)` (tfjs copies
 * the buffer, GPU to GPU), and the upstream gradient dy multiplies the gradient with a tf
 * op, on the GPU. Nothing is downloaded: no dataSync / data() of the logits, the loss
 * or dy (test/webgpu_tfjs.test.ts counts the backend's reads).
 *
 * Exceptions, said here rather than hidden:
 *  - tfjs-backend-webgpu keeps tensors below WEBGPU_CPU_HANDOFF_SIZE_THRESHOLD (1000
 *    elements by default) on the CPU; such an input (already on the host: no download)
 *    is uploaded.
 *  - a tf mask tensor is read on the host ([N] values; bool tensors have no u8 GPU form
 *    the kernels read); pass a Uint8Array, or fold the mask into the labels
 *    (ignoreIndex), to keep that off the host too.
 */
import * as tf from '@tensorflow/tfjs';
import { KdError, KdRangeError, KdTypeError, describe } from './errors.js';
import { isTensor, sparseKlDiv, type SparseTail, type SparseTeacher, type Tensor } from './index.js';
import { tensor } from './tensor.js';
import { checkNullTeacher, kdLossCall, planKdLoss, planSparseKdLoss, sparseCommon, type LossCall } from './tfjs_options.js';
import { currentDevice, deferErrors, setDevice } from './webgpu/runtime.js';
import { fromGPUBuffer } from './webgpu/tensor.js';
import type { KdLossOptions, SparseKdLossOptions, TfSparseTeacher } from './tfjs.js';

/** True when tf's active backend is tfjs-backend-webgpu (the path of this file). */
export function onTfWebGPU(): boolean {
  return tf.getBackend() === 'webgpu';
}

/** tf's GPUDevice, made kd's device (an error if kd already uses another one). */
function tfDevice(op: string): GPUDevice {
  const dev = (tf.backend() as unknown as { device?: GPUDevice }).device;
  if (!dev) throw new KdError(`${op}: tf's 'webgpu' backend exposes no GPUDevice (tf.backend().device)`, 'KD_EDEVICE');
  const cur = currentDevice();
  if (cur === undefined) setDevice(dev);
  else if (cur !== dev)
    throw new KdError(
      `${op}: kd-kernels uses another GPUDevice than tf's webgpu backend; call kd.webgpu.setDevice(tf.backend().device) once so both share tf's device`,
      'KD_EDEVICE',
    );
  return dev;
}

/** A tf tensor as a kd WebGPU tensor (borrowing the buffer dataToGPU gives); `refs` collects what to dispose. */
function gpuTensor(op: string, name: string, x: tf.Tensor, refs: tf.Tensor[], dtype: 'f32' | 'i32'): Tensor {
  if (x.isDisposed) throw new KdError(`${op}: ${name} was disposed`, 'KD_EDISPOSED');
  const want = dtype === 'f32' ? 'float32' : 'int32';
  if (x.dtype !== want) throw new KdTypeError(`${op}: expected ${want} ${name} but received ${x.dtype}`, 'KD_EDTYPE');
  let g: { buffer: GPUBuffer; tensorRef: tf.Tensor };
  try {
    g = x.dataToGPU() as unknown as { buffer: GPUBuffer; tensorRef: tf.Tensor };
  } catch (e) {
    // Small tensors that tfjs-backend-webgpu keeps on the CPU (see the header): the
    // values are already on the host, so this reads no GPU memory.
    if (!/not on GPU/.test((e as Error).message)) throw e;
    const d = x.dataSync();
    return tensor(dtype === 'f32' ? Float32Array.from(d as Float32Array) : Int32Array.from(d as Int32Array), x.shape.slice(), { device: 'webgpu' });
  }
  refs.push(g.tensorRef);
  return fromGPUBuffer(g.buffer, x.shape.slice(), { dtype });
}

function studentOf(op: string, x: unknown, refs: tf.Tensor[]): Tensor {
  if (!(x instanceof tf.Tensor)) throw new KdTypeError(`${op}: expected a tf.Tensor for studentLogits but received ${describe(x)}`);
  if (x.isDisposed) throw new KdError(`${op}: studentLogits was disposed`, 'KD_EDISPOSED');
  if (x.dtype !== 'float32') throw new KdTypeError(`${op}: expected float32 studentLogits but received ${x.dtype}`, 'KD_EDTYPE');
  if (x.rank !== 2 && x.rank !== 3)
    throw new KdRangeError(`${op}: expected studentLogits of shape [N, V] or [B, T, V] but received [${x.shape.join(', ')}]`, 'KD_ESHAPE');
  return gpuTensor(op, 'studentLogits', x, refs, 'f32');
}

type Side = Tensor | Int32Array | Uint8Array | Float32Array | undefined;

function sideOf(op: string, name: string, x: unknown, kind: 'i32' | 'u8' | 'f32', refs: tf.Tensor[]): Side {
  if (x === undefined) return undefined;
  if (!(x instanceof tf.Tensor)) return x as Side; // typed arrays: kd checks and uploads them
  if (x.isDisposed) throw new KdError(`${op}: ${name} was disposed`, 'KD_EDISPOSED');
  if (kind === 'u8') {
    if (x.dtype !== 'bool' && x.dtype !== 'int32') throw new KdTypeError(`${op}: expected a bool or int32 tf.Tensor for ${name} but received dtype ${x.dtype}`, 'KD_EDTYPE');
    const d = x.dataSync(); // see the header: [N] values read on the host
    return Uint8Array.from(d as ArrayLike<number>, (v) => (v !== 0 ? 1 : 0));
  }
  const t = gpuTensor(op, name, x, refs, kind === 'i32' ? 'i32' : 'f32');
  return t.numel === t.shape[0] ? t : fromFlat(t);
}

/** [B, T] side inputs are passed flat ([N]) as the ops take them. */
function fromFlat(t: Tensor): Tensor {
  return fromGPUBuffer(t.gpuBuffer, [t.numel], { dtype: t.dtype, byteOffset: t.gpuByteOffset });
}

type Call = LossCall;

/** The loss and the fused gradient, handed to tf as GPU tensors (see the header). */
function fusedGpu(student: tf.Tensor, call: Call, refs: tf.Tensor[], taping: boolean): tf.Scalar {
  let r: { loss: Tensor; grad?: Tensor };
  try {
    r = call({ grad: taping, gradScale: 1 });
    // tf reads the results, not kd: a WebGPU error of these kernels is kept and thrown
    // by the next kd call on this device instead of being lost.
    deferErrors(currentDevice()!);
  } finally {
    // Our kernels are queued: tf may reuse these buffers for work queued after them.
    for (const t of refs) t.dispose();
  }
  const shape = student.shape;
  let grad = r.grad;
  const loss = r.loss;
  const f = tf.customGrad(() => {
    const value = tf.tensor({ buffer: loss.gpuBuffer } as unknown as tf.TensorLike, [], 'float32') as tf.Scalar;
    loss.dispose(); // tfjs copied it (GPU to GPU); destroyed once the queue is past it
    return {
      value,
      gradFunc: (dy: tf.Tensor) => {
        if (!grad) throw new KdError('kdLoss: the backward pass ran although no gradient tape was recording during the forward pass', 'KD_EINVAL');
        const g = tf.tensor({ buffer: grad.gpuBuffer } as unknown as tf.TensorLike, shape, 'float32');
        grad.dispose();
        grad = undefined; // handed over once
        return tf.tidy(() => tf.mul(g, tf.reshape(dy, [])));
      },
    };
  });
  return f(student) as tf.Scalar;
}

function taping(): boolean {
  const state = (tf.engine() as unknown as { state?: { gradientDepth?: number } }).state;
  return state?.gradientDepth === undefined ? true : state.gradientDepth > 0;
}

/** kdLoss on the webgpu backend (the same options and errors as lib/tfjs.ts kdLoss: lib/tfjs_options.ts). */
export function kdLossWebGPU(studentLogits: tf.Tensor, teacherLogits: tf.Tensor | Tensor | null, options?: KdLossOptions): tf.Scalar {
  const op = 'kdLoss';
  const plan = planKdLoss(op, options);
  checkNullTeacher(op, plan, teacherLogits);
  if (teacherLogits !== null && !(teacherLogits instanceof tf.Tensor) && !isTensor(teacherLogits))
    throw new KdTypeError(`${op}: expected a tf.Tensor, a kd Tensor or null for teacherLogits but received ${describe(teacherLogits)}`);
  if (plan.distill && plan.o.labels === undefined) throw new KdTypeError(`${op}: hardWeight / softWeight / labelSmoothing make this distillationLoss, which needs labels`); // before any GPU copy
  tfDevice(op);
  const tape = taping();
  const refs: tf.Tensor[] = [];
  try {
    const student = studentOf(op, studentLogits, refs);
    let teacher: Tensor;
    if (teacherLogits === null) teacher = student; // not read when softWeight is 0
    else if (teacherLogits instanceof tf.Tensor) teacher = gpuTensor(op, 'teacherLogits', teacherLogits, refs, 'f32');
    else teacher = teacherLogits.device === 'webgpu' ? teacherLogits : teacherLogits.to('webgpu');
    const o = plan.o;
    const labels = sideOf(op, 'labels', o.labels, 'i32', refs);
    const mask = sideOf(op, 'mask', o.mask, 'u8', refs);
    const weights = sideOf(op, 'weights', o.weights, 'f32', refs);
    const call = kdLossCall(op, plan, () => student, () => teacher, { labels, mask, weights });
    return fusedGpu(studentLogits, call, refs, tape);
  } catch (e) {
    for (const t of refs) if (!t.isDisposed) t.dispose();
    throw e;
  }
}

/** sparseKdLoss on the webgpu backend (needs sparseKlDiv on WebGPU: lib/webgpu/sparse_kl_div.ts). */
export function sparseKdLossWebGPU(studentLogits: tf.Tensor, sparseTeacher: TfSparseTeacher | SparseTeacher, options: SparseKdLossOptions): tf.Scalar {
  const op = 'sparseKdLoss';
  const o = planSparseKdLoss(op, options);
  if (sparseTeacher === null || typeof sparseTeacher !== 'object' || sparseTeacher instanceof tf.Tensor || isTensor(sparseTeacher))
    throw new KdTypeError(`${op}: expected a sparse teacher { indices, values?, tailLogProb?, weights? } but received ${describe(sparseTeacher)}`);
  tfDevice(op);
  const tape = taping();
  const refs: tf.Tensor[] = [];
  try {
    const student = studentOf(op, studentLogits, refs);
    const st = sparseTeacher as unknown as Record<string, unknown>;
    const teacher: Record<string, Tensor> = {};
    for (const key of Object.keys(st)) {
      const x = st[key];
      if (x === undefined) continue;
      if (x instanceof tf.Tensor) teacher[key] = gpuTensor(op, `sparseTeacher.${key}`, x, refs, x.dtype === 'int32' ? 'i32' : 'f32');
      else if (isTensor(x)) teacher[key] = x.device === 'webgpu' ? x : x.to('webgpu');
      else throw new KdTypeError(`${op}: expected a kd Tensor or tf.Tensor for sparseTeacher.${key} but received ${describe(x)}`);
    }
    const common = sparseCommon(o, { labels: sideOf(op, 'labels', o.labels, 'i32', refs), mask: sideOf(op, 'mask', o.mask, 'u8', refs), weights: sideOf(op, 'weights', o.weights, 'f32', refs) });
    const call: Call = (opts) => sparseKlDiv(student, teacher as unknown as SparseTeacher, { ...(common as unknown as { tail: SparseTail }), ...opts });
    return fusedGpu(studentLogits, call, refs, tape);
  } catch (e) {
    for (const t of refs) if (!t.isDisposed) t.dispose();
    throw e;
  }
}
