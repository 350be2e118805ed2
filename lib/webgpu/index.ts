/// <reference types="@webgpu/types" />
/**
 * `kd.webgpu`: the WebGPU device the library uses. `await kd.webgpu.device()` requests
 * the default one (navigator.gpu, or in Node the `webgpu` package when installed), or
 * `kd.webgpu.setDevice(d)` uses yours (e.g. tfjs-backend-webgpu's `tf.backend().device`).
 */
import './tensor.js';
export { setDevice, currentDevice, requestDevice as device, flush } from './runtime.js';
export { fromGPUBuffer, type FromGPUBufferOptions } from './tensor.js';
