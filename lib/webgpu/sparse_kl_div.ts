/// <reference types="@webgpu/types" />
/**
 * sparseKlDiv on WebGPU: takes the validated OpArgs of lib/sparse_kl_div.ts and enqueues
 *   1. count: selected rows -> divisor -> gradScale / divisor (the divergence engine's
 *      count kernel, wgsl/divergence.wgsl.ts: the same selection and divisor rules)
 *   2. rows: one workgroup per token (wgsl/sparse_kl_div.wgsl.ts: the math and the
 *      kernel's shape), in row chunks whose bindings fit the device's limit; before each
 *      chunk, when two or more per-token inputs are given, the pack kernel (see below)
 *   3. reduce: the scalar loss from the per-row totals in a fixed order (not for 'none').
 * Storage buffers per dispatch: at most 8, WebGPU's default maxStorageBuffersPerShaderStage
 * (tfjs-backend-webgpu's device, or any caller's device requested without raised limits).
 * The row kernel binds student, ids, values, one AUX binding for the per-token inputs
 * (tailLogProb for 'bucket', labels, weights, mask), the gradient (unless in place), the
 * workspace, the per-row loss ('none') and the 'bucket' bitmap. A single per-token input
 * is bound as it is; two or more are gathered first, per chunk, into one scratch by the
 * pack kernel (it moves the bits unchanged and, unlike copyBufferToBuffer, needs neither
 * COPY_SRC on a borrowed buffer nor a 4-byte aligned mask).
 * Returns without waiting. Ids are not read back (WebGPU has no synchronous read): an id
 * outside [0, V) makes its token's loss and gradient NaN; repeated ids (meant only for
 * 'sampled') are summed deterministically like the CPU's.
 */
import { KdError, KdRangeError } from '../errors.js';
import { bindRows, bindVec, deviceOf, dtypeBytes, floatDtype, paramsBlock, rowsOf, rowsPerChunk, vecOf, type GpuVec, type OpArgs, type TensorDesc } from './gpu_rows.js';
import { gpuOf } from './divergence.js';
import { grid, pipeline, run, type Binding } from './runtime.js';
import { acquireScratch, releaseScratch } from './pool.js';
import { countWgsl, reduceWgsl } from './wgsl/divergence.wgsl.js';
import { AUX_WG, SPARSE_TAIL, sparseAuxKey, sparseAuxWgsl, sparseKey, sparseWgsl, type SparseAuxVariant, type SparseVariant } from './wgsl/sparse_kl_div.wgsl.js';

/** A per-token input of the row kernel: tailLogProb, labels, weights (32-bit) or the mask (u8). */
interface AuxInput {
  key: 'tl' | 'lab' | 'w' | 'mask';
  vec: GpuVec;
  es: 4 | 1;
}

export function sparseKlDiv(a: OpArgs): void {
  const op = 'sparseKlDiv';
  const S = a.student as TensorDesc;
  const IDS = a.ids as TensorDesc;
  const VALS = a.values as TensorDesc | undefined;
  const SW = a.sampleWeights as TensorDesc | undefined;
  const TL = a.tailLogProb as TensorDesc | undefined;
  const labels = a.labels as TensorDesc | undefined;
  const mask = a.mask as TensorDesc | undefined;
  const weights = a.weights as TensorDesc | undefined;
  const G = a.grad as TensorDesc | undefined;
  const loss = a.loss as TensorDesc;
  const tail = a.tail as number;
  const reduction = a.reduction as number;
  const device = deviceOf(op, { student: S, ids: IDS, values: VALS, sampleWeights: SW, tailLogProb: TL, labels, mask, weights, grad: G, loss });
  const n = S.shape[0]!;
  const v = S.shape[1]!;
  const k = n > 0 ? IDS.shape[1]! : 0;
  const sampled = tail === SPARSE_TAIL.sampled;
  const bucket = tail === SPARSE_TAIL.bucket;
  if (n > 0 && (k < 1 || k > 4096)) throw new KdRangeError(`${op}: expected 1 to 4096 teacher slots per token, got ${k}`, 'KD_ESHAPE');
  if (sampled ? !SW : !VALS) throw new KdError(`${op}: missing teacher ${sampled ? 'sample weights' : 'values'}`, 'KD_EINVAL');
  if (bucket && !TL) throw new KdError(`${op}: 'bucket' needs tailLogProb`, 'KD_EINVAL');

  const s = n > 0 ? rowsOf(op, 'student', S) : undefined;
  const sMem = gpuOf(S, `${op}: student`);
  const gMem = G ? gpuOf(G, `${op}: grad`) : undefined;
  const inplace = !!gMem && gMem.buffer === sMem.buffer && gMem.byteOffset === sMem.byteOffset && G!.dtype === S.dtype && G!.strides[0] === S.strides[0];
  if (gMem && !inplace) {
    // a buffer may not be bound writable beside another binding of it (WebGPU usage rules)
    const others: [string, TensorDesc | undefined][] = [['student', S], ['ids', IDS], ['values', VALS], ['sampleWeights', SW], ['tailLogProb', TL], ['labels', labels], ['mask', mask], ['weights', weights], ['loss', loss]];
    for (const [name, d] of others)
      if (d && gpuOf(d, name).buffer === gMem.buffer)
        throw new KdError(`${op}: grad shares a GPUBuffer with the ${name} (only grad 'inplace' may write the student's memory)`, 'KD_EINVAL');
  }

  // [count, divisor, gradScale / divisor, 0, per-row totals...]: the divergence engine's layout
  const ws = acquireScratch(device, (4 + n) * 4, false);
  const temps: GPUBuffer[] = [ws];
  try {
    // ---- 1. count -----------------------------------------------------------------------
    const cstore: Binding[] = [{ buffer: ws, offset: 0, size: 16 }];
    let labOff = 0, maskOff = 0;
    if (labels) {
      const r = bindVec(device, vecOf(op, 'labels', labels, n, 4), 4, 0, Math.max(n, 1));
      cstore.push(r.binding);
      labOff = r.elemOff;
    }
    if (mask) {
      const r = bindVec(device, vecOf(op, 'mask', mask, n, 1), 1, 0, Math.max(n, 1));
      cstore.push(r.binding);
      maskOff = r.elemOff;
    }
    const cp = paramsBlock([n, v, reduction, labOff, maskOff, { i32: a.ignoreIndex as number }, { f32: a.normalizer as number }, { f32: a.gradScale as number }]);
    run(device, pipeline(device, `divergence:count:${!!labels}:${!!mask}`, countWgsl(!!labels, !!mask)), cp, cstore, [1]);

    if (n > 0) {
      // ---- 2. rows ------------------------------------------------------------------------
      const cfg: SparseVariant = {
        sDtype: s!.dtype,
        vDtype: VALS ? floatDtype(VALS) : 'f32',
        gDtype: G ? floatDtype(G) : null,
        inplace,
        tail,
        labels: !!labels,
        mask: !!mask,
        weights: !!weights,
        lossPerRow: reduction === 0,
      };
      const g = G && !inplace ? rowsOf(op, 'grad', G) : undefined;
      const ids = vecOf(op, 'ids', IDS, n * k, 4);
      const vals = sampled ? vecOf(op, 'sampleWeights', SW!, n * k, 4) : vecOf(op, 'values', VALS!, n * k, dtypeBytes(cfg.vDtype));
      const vEs = sampled ? 4 : dtypeBytes(cfg.vDtype);
      const words = Math.ceil(v / 32);
      // the per-token inputs, read by the row kernel from one binding (AUX): 32-bit
      // sections first (their order fixes AUX's layout), the mask (bytes) last
      const aux: AuxInput[] = [];
      if (bucket) aux.push({ key: 'tl', vec: vecOf(op, 'tailLogProb', TL!, n, 4), es: 4 });
      if (labels) aux.push({ key: 'lab', vec: vecOf(op, 'labels', labels, n, 4), es: 4 });
      if (weights) aux.push({ key: 'w', vec: vecOf(op, 'weights', weights, n, 4), es: 4 });
      if (mask) aux.push({ key: 'mask', vec: vecOf(op, 'mask', mask, n, 1), es: 1 });
      const packed = aux.length > 1;
      const auxRowBytes = packed ? aux.reduce((t, x) => t + x.es, 0) : 0;
      const chunk = rowsPerChunk(device, n, [s!.ld * dtypeBytes(s!.dtype), g ? g.ld * dtypeBytes(g.dtype) : 0, k * 4, k * vEs, bucket ? words * 4 : 0, auxRowBytes]);
      const pipe = pipeline(device, sparseKey(cfg), sparseWgsl(cfg));
      // two or more: gathered per chunk into one scratch (section stride `chunk` words)
      let auxBuf: GPUBuffer | undefined;
      let auxPipe: GPUComputePipeline | undefined;
      const auxOut: Record<AuxInput['key'], number> = { tl: 0, lab: 0, w: 0, mask: 0 };
      if (packed) {
        const words32 = aux.filter((x) => x.es === 4).length;
        aux.forEach((x, j) => (auxOut[x.key] = j * chunk)); // the mask (last) at words32 * chunk
        auxBuf = acquireScratch(device, (words32 * chunk + Math.ceil(chunk / 4)) * 4, false);
        temps.push(auxBuf);
        const av: SparseAuxVariant = { tail: bucket, labels: !!labels, weights: !!weights, mask: !!mask };
        auxPipe = pipeline(device, sparseAuxKey(av), sparseAuxWgsl(av));
      }
      for (let r0 = 0; r0 < n; r0 += chunk) {
        const r1 = Math.min(n, r0 + chunk);
        const rows = r1 - r0;
        const sb = bindRows(device, s!, r0, r1);
        const ib = bindVec(device, ids, 4, r0 * k, r1 * k);
        const vb = bindVec(device, vals, vEs, r0 * k, r1 * k);
        const store: Binding[] = [sb.binding, ib.binding, vb.binding];
        const off: Record<AuxInput['key'], number> = { tl: 0, lab: 0, w: 0, mask: 0 };
        let gOff = inplace ? sb.elemOff : 0, lossOff = 0;
        if (aux.length === 1) {
          // one input: bound as it is (its element offset: words, or bytes for the mask)
          const r = bindVec(device, aux[0]!.vec, aux[0]!.es, r0, r1);
          store.push(r.binding);
          off[aux[0]!.key] = r.elemOff;
        } else if (packed) {
          const inOff: Record<AuxInput['key'], number> = { tl: 0, lab: 0, w: 0, mask: 0 };
          const pstore: Binding[] = [{ buffer: auxBuf! }];
          for (const x of aux) {
            const r = bindVec(device, x.vec, x.es, r0, r1);
            pstore.push(r.binding);
            inOff[x.key] = r.elemOff;
          }
          const pp = paramsBlock([rows, inOff.tl, inOff.lab, inOff.w, inOff.mask, auxOut.tl, auxOut.lab, auxOut.w, auxOut.mask, 0, 0, 0]);
          run(device, auxPipe!, pp, pstore, grid(Math.ceil(rows / AUX_WG)));
          store.push({ buffer: auxBuf! });
          Object.assign(off, auxOut);
          off.mask = auxOut.mask * 4; // the row kernel indexes the mask in bytes
        }
        if (g) {
          const r = bindRows(device, g, r0, r1);
          store.push(r.binding);
          gOff = r.elemOff;
        }
        store.push({ buffer: ws });
        if (reduction === 0) {
          const r = bindVec(device, vecOf(op, 'loss', loss, n, 4), 4, r0, r1);
          store.push(r.binding);
          lossOff = r.elemOff;
        }
        let bits: GPUBuffer | undefined;
        if (bucket) {
          bits = acquireScratch(device, rows * words * 4, true); // the kernel sets bits in a zeroed buffer
          temps.push(bits);
          store.push({ buffer: bits });
        }
        const params = paramsBlock([
          rows, v, s!.ld, sb.elemOff,
          k, ib.elemOff, vb.elemOff, off.tl,
          off.lab, off.mask, off.w, gOff,
          inplace ? s!.ld : g ? g.ld : 0, r0, lossOff, words,
          { i32: a.ignoreIndex as number }, { f32: 1 / (a.temperature as number) }, { f32: a.softWeight as number }, 0,
        ]);
        run(device, pipe, params, store, grid(rows));
      }
    }

    // ---- 3. the reduced loss ------------------------------------------------------------
    if (reduction !== 0) {
      const lb = bindVec(device, vecOf(op, 'loss', loss, 1, 4), 4, 0, 1);
      if (lb.elemOff !== 0) throw new KdError(`${op}: the loss output must start on a binding boundary`, 'KD_EWEBGPU');
      run(device, pipeline(device, 'divergence:reduce', reduceWgsl()), paramsBlock([n, 0, 0, 0]), [{ buffer: ws }, lb.binding], [1]);
    }
  } finally {
    for (const b of temps) releaseScratch(device, b); // the submitted work runs before any later user
  }
}
