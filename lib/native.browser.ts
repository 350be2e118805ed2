/**
 * The native addon's place in a browser build (package.json "browser" maps
 * ./dist/lib/native.js here): there is no addon, so CPU and CUDA tensors' ops throw
 * KD_EUNSUPPORTED; WebGPU tensors never reach it (lib/dispatch.ts).
 */
import type { Binding } from '../binding.js';
import { KdError } from './errors.js';

function unsupported(): never {
  throw new KdError("kd-kernels in a browser has no native addon: only device 'webgpu' tensors can be computed on (kd.tensor(data, shape, { device: 'webgpu' }))", 'KD_EUNSUPPORTED');
}

export function packageRoot(): string {
  return unsupported();
}

export function loadBinding(): { binding: Binding; path: string } {
  return unsupported();
}

export function binding(): Binding {
  return unsupported();
}
