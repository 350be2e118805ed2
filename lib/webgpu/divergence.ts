/**
 * The divergence engine on WebGPU (klDiv, jsd, tvd, skewKl, distillationLoss): takes the
 * validated, backend-neutral description lib/divergence.ts builds (the same OpArgs the
 * native engine gets) and enqueues three kernels on the tensors' device:
 *   1. count: selected rows -> divisor -> gradScale / divisor   (wgsl/divergence.wgsl.ts)
 *   2. rows:  one workgroup per row: loss terms, per-row outputs, the gradient
 *   3. reduce: the scalar loss from the per-row totals, in a fixed order (not for 'none');
 *      per-row outputs are copied out of the workspace (workspaceFloats)
 * Returns without waiting: results are read with toArrayAsync / itemAsync, which also
 * report any WebGPU error of these dispatches (runtime.ts).
 *
 * Tensors larger than the device's maxStorageBufferBindingSize (128 MiB on many
 * adapters: 151936 x 256 f32 is 155 MB) are processed in row chunks, each binding only
 * its rows (offset aligned down to minStorageBufferOffsetAlignment, the remainder passed
 * to the shader as an element offset).
 */
import type { OpArgs, TensorDesc } from '../../binding.js';
import { KdError } from '../errors.js';
import type { GpuMem } from '../tensor.js';
import { STAGE_MAX_V } from './tuning.js';
import { bindingLimit, copy, grid, offsetAlignment, pipeline, run, type Binding } from './runtime.js';
import { acquireScratch, releaseScratch } from './pool.js';
import { elemBytes, type WgslDType } from './wgsl/common.wgsl.js';
import { DIV, countWgsl, divKernelKey, divergenceRowWgsl, reduceWgsl, rowLanes, workspaceFloats, type DivKernelConfig } from './wgsl/divergence.wgsl.js';

const FLOAT_CODES: Record<number, WgslDType> = { 0: 'f32', 1: 'f16', 2: 'bf16' };
const ELEM_BYTES: Record<number, number> = { 0: 4, 1: 2, 2: 2, 3: 4, 4: 1 };

/** The GpuMem of a descriptor (the dispatch routes only WebGPU tensors here). */
export function gpuOf(d: TensorDesc, name: string): GpuMem {
  const g = d.gpu as GpuMem | undefined;
  if (!g) throw new KdError(`${name}: expected a WebGPU tensor`, 'KD_EDEVICE');
  return g;
}

/**
 * A binding covering elements [first, end) of a tensor (element size es) and the element
 * offset of `first` within it: the byte offset is aligned down to the device's storage
 * offset alignment and the size rounded up to 4 bytes (clamped to the buffer).
 */
export function bindRange(device: GPUDevice, mem: GpuMem, es: number, first: number, end: number): { binding: Binding; elemOff: number } {
  const align = offsetAlignment(device);
  const startByte = mem.byteOffset + first * es;
  const base = startByte - (startByte % align);
  const endByte = Math.min(mem.buffer.size, Math.ceil((mem.byteOffset + Math.max(end, first + 1) * es) / 4) * 4);
  const size = Math.max(4, endByte - base);
  if (size > bindingLimit(device))
    throw new KdError(
      `WebGPU: a binding of ${size} bytes exceeds maxStorageBufferBindingSize (${bindingLimit(device)}) of this device`,
      'KD_ENOMEM',
    );
  return { binding: { buffer: mem.buffer, offset: base, size }, elemOff: (startByte - base) / es };
}

/** Rows per dispatch so that each row-strided tensor's binding fits the device limit. */
function rowsPerChunk(device: GPUDevice, n: number, rowBytes: number[]): number {
  const limit = bindingLimit(device) - offsetAlignment(device) - 8;
  let rows = n;
  for (const rb of rowBytes) if (rb > 0) rows = Math.min(rows, Math.floor(limit / rb));
  if (rows < 1) throw new KdError(`WebGPU: one row (${Math.max(...rowBytes)} bytes) exceeds maxStorageBufferBindingSize of this device`, 'KD_ENOMEM');
  return rows;
}

function u32(view: DataView, k: number, x: number): void {
  view.setUint32(k * 4, x >>> 0, true);
}
function i32(view: DataView, k: number, x: number): void {
  view.setInt32(k * 4, x | 0, true);
}
function f32(view: DataView, k: number, x: number): void {
  view.setFloat32(k * 4, x, true);
}

function effectiveDiv(div: number, beta: number, skew: number): number {
  if (div === DIV.jsd && beta === 0) return DIV.forwardKl;
  if (div === DIV.jsd && beta === 1) return DIV.reverseKl;
  if (div === DIV.skewForwardKl && skew === 0) return DIV.forwardKl;
  if (div === DIV.skewReverseKl && skew === 0) return DIV.reverseKl;
  return div;
}

/** The WebGPU implementation of `binding().divergence(args)` (see lib/divergence.ts). */
export function divergence(a: OpArgs): void {
  const S = a.student as TensorDesc;
  const Tt = a.teacher as TensorDesc;
  const sMem = gpuOf(S, 'student');
  const device = sMem.device;
  const n = S.shape[0]!;
  const v = S.shape[1]!;
  const lds = S.strides[0]!;
  const hasDiv = (a.divergence as number) !== DIV.none;
  const beta = a.beta as number;
  const skew = a.skew as number;
  const temperature = a.temperature as number;
  const labels = a.labels as TensorDesc | undefined;
  const mask = a.mask as TensorDesc | undefined;
  const weights = a.weights as TensorDesc | undefined;
  const G = a.grad as TensorDesc | undefined;
  const loss = a.loss as TensorDesc;
  const reduction = a.reduction as number;
  const tMem = hasDiv ? gpuOf(Tt, 'teacher') : undefined;
  const gMem = G ? gpuOf(G, 'grad') : undefined;
  for (const [name, d] of [['teacher', Tt], ['labels', labels], ['mask', mask], ['weights', weights], ['grad', G]] as const) {
    if (d && (d.gpu as GpuMem | undefined)?.device !== device && (name !== 'teacher' || hasDiv))
      throw new KdError(`divergence: ${name} is on another GPUDevice than the student`, 'KD_EDEVICE');
  }
  const inplace = !!gMem && gMem.buffer === sMem.buffer && gMem.byteOffset === sMem.byteOffset && G!.dtype === S.dtype && G!.strides[0] === lds;
  if (gMem && !inplace) {
    // One buffer may not be bound writable next to another binding of it (WebGPU usage rules).
    for (const [name, m] of [['student', sMem], ['teacher', tMem]] as const)
      if (m && m.buffer === gMem.buffer)
        throw new KdError(`divergence: grad shares a GPUBuffer with the ${name} (only grad 'inplace' may write the student's memory)`, 'KD_EINVAL');
  }

  const ce = !!labels && ((a.hardWeight as number) !== 0 || !!a.hard);
  const cfg: DivKernelConfig = {
    div: hasDiv ? effectiveDiv(a.divergence as number, beta, skew) : DIV.none,
    sDtype: FLOAT_CODES[S.dtype]!,
    tDtype: hasDiv ? FLOAT_CODES[Tt.dtype]! : 'f32',
    gDtype: G ? FLOAT_CODES[G.dtype]! : null,
    inplace,
    tRaw: hasDiv && !!a.teacherLogprobs && temperature === 1,
    ce,
    ceOwn: ce && hasDiv && temperature !== 1,
    eps: ce && (a.labelSmoothing as number) !== 0,
    labels: !!labels,
    mask: !!mask,
    weights: !!weights,
    perToken: !!a.hard,
    lossPerRow: reduction === 0,
    staged: v <= STAGE_MAX_V,
    wg: rowLanes(v),
  };

  // ---- 1. count: STAT = [count, divisor, coef, 0] ----------------------------------
  const ws = acquireScratch(device, workspaceFloats(n, cfg.perToken) * 4, false);
  const temps = [ws];
  try {
    const cp = new DataView(new ArrayBuffer(32));
    const cstore: (GPUBuffer | Binding)[] = [ws];
    let labOff = 0, maskOff = 0, wOff = 0;
    if (labels) {
      const r = bindRange(device, gpuOf(labels, 'labels'), 4, 0, n);
      cstore.push(r.binding);
      labOff = r.elemOff;
    }
    if (mask) {
      const r = bindRange(device, gpuOf(mask, 'mask'), 1, 0, n);
      cstore.push(r.binding);
      maskOff = r.elemOff;
    }
    u32(cp, 0, n); u32(cp, 1, v); u32(cp, 2, reduction); u32(cp, 3, labOff);
    u32(cp, 4, maskOff); i32(cp, 5, a.ignoreIndex as number); f32(cp, 6, a.normalizer as number); f32(cp, 7, a.gradScale as number);
    run(device, pipeline(device, `divergence:count:${!!labels}:${!!mask}`, countWgsl(!!labels, !!mask)), cp.buffer, cstore, [1]);
    if (n === 0) {
      if (reduction !== 0) reduceLoss(device, n, ws, gpuOf(loss, 'loss'));
      return;
    }
    let wBinding: Binding | undefined;
    if (weights) {
      const r = bindRange(device, gpuOf(weights, 'weights'), 4, 0, n);
      wBinding = r.binding;
      wOff = r.elemOff;
    }
    let labBinding: Binding | undefined, maskBinding: Binding | undefined;
    if (labels) labBinding = bindRange(device, gpuOf(labels, 'labels'), 4, 0, n).binding;
    if (mask) maskBinding = bindRange(device, gpuOf(mask, 'mask'), 1, 0, n).binding;

    // ---- 2. rows, in chunks that fit the binding limit -----------------------------
    const sEs = ELEM_BYTES[S.dtype]!;
    const tEs = hasDiv ? ELEM_BYTES[Tt.dtype]! : 0;
    const gEs = G ? ELEM_BYTES[G.dtype]! : 0;
    const ldt = hasDiv ? Tt.strides[0]! : 0;
    const ldg = G ? G.strides[0]! : 0;
    const chunk = rowsPerChunk(device, n, [lds * sEs, ldt * tEs, inplace ? 0 : ldg * gEs]);
    const pipe = pipeline(device, divKernelKey(cfg), divergenceRowWgsl(cfg));
    for (let r0 = 0; r0 < n; r0 += chunk) {
      const r1 = Math.min(n, r0 + chunk);
      const last = (ld: number) => (r1 - 1) * ld + v;
      const sb = bindRange(device, sMem, sEs, r0 * lds, last(lds));
      const store: (GPUBuffer | Binding)[] = [sb.binding];
      let tOff = 0, gOff = 0;
      if (hasDiv) {
        const tb = bindRange(device, tMem!, tEs, r0 * ldt, last(ldt));
        store.push(tb.binding);
        tOff = tb.elemOff;
      }
      if (gMem && !inplace) {
        const gb = bindRange(device, gMem, gEs, r0 * ldg, last(ldg));
        store.push(gb.binding);
        gOff = gb.elemOff;
      }
      if (inplace) gOff = sb.elemOff;
      if (labBinding) store.push(labBinding);
      if (maskBinding) store.push(maskBinding);
      if (wBinding) store.push(wBinding);
      store.push(ws);
      const p = new DataView(new ArrayBuffer(24 * 4));
      // Row indices are absolute (row0 + group); the strided tensors' element offsets
      // are shifted back by row0 rows so that e = off + i * ld addresses this chunk.
      u32(p, 0, n); u32(p, 1, v); u32(p, 2, lds); u32(p, 3, ldt);
      u32(p, 4, sb.elemOff - r0 * lds); u32(p, 5, tOff - r0 * ldt); u32(p, 6, gOff - r0 * ldg); u32(p, 7, inplace ? lds : ldg);
      u32(p, 8, r0); u32(p, 9, labOff); u32(p, 10, maskOff); u32(p, 11, wOff);
      i32(p, 12, a.ignoreIndex as number);
      f32(p, 16, hasDiv ? 1 / temperature : 1); f32(p, 17, beta); f32(p, 18, skew); f32(p, 19, hasDiv ? (a.softWeight as number) : 0);
      f32(p, 20, a.softScale as number); f32(p, 21, a.hardWeight as number); f32(p, 22, a.labelSmoothing as number);
      run(device, pipe, p.buffer, store, grid(r1 - r0));
    }

    // ---- 3. the reduced loss, or the per-row outputs copied out of the workspace -------
    if (reduction !== 0) reduceLoss(device, n, ws, gpuOf(loss, 'loss'));
    const out = (name: 'loss' | 'hard' | 'soft' | 'total', at: number) => {
      const m = gpuOf(a[name] as TensorDesc, name);
      copy(device, ws, at * 4, m.buffer, m.byteOffset, n * 4);
    };
    if (cfg.lossPerRow) out('loss', 4);
    if (cfg.perToken) {
      out('total', 4);
      out('hard', 4 + n);
      out('soft', 4 + 2 * n);
    }
  } finally {
    for (const b of temps) releaseScratch(device, b); // the submitted work runs before any later user
  }
}

function reduceLoss(device: GPUDevice, n: number, ws: GPUBuffer, loss: GpuMem): void {
  const p = new Uint32Array([n, 0, 0, 0]);
  const lb = bindRange(device, loss, 4, 0, 1);
  if (lb.elemOff !== 0) throw new KdError('divergence: the loss output must start on a binding boundary', 'KD_EWEBGPU');
  run(device, pipeline(device, 'divergence:reduce', reduceWgsl()), p.buffer, [ws, lb.binding], [1]);
}
