/**
 * The raw native addon (native/binding/*.cc). Private: lib/ wraps every function with
 * validation and friendly errors; nothing here is re-exported.
 */
export interface TensorDesc {
  dtype: number;
  device: number; // -1 = cpu
  shape: number[];
  strides: number[];
  data?: ArrayBufferView; // cpu
  mem?: DeviceMemoryHandle; // cuda
  offset?: number; // bytes into mem
  gpu?: unknown; // webgpu (lib/webgpu): a GpuMem; never passed to the addon
}

/** Opaque External wrapping native DeviceMemory. */
export interface DeviceMemoryHandle { readonly __deviceMemory: unique symbol }

export interface RawBackends {
  cpu: { threads: number; simd: string };
  cuda: {
    compiled: boolean;
    available: boolean;
    reason?: string;
    runtimeVersion: number;
    driverVersion: number;
    devices: { index: number; name: string; computeCapability: string; totalMemory: number; multiprocessors: number; l2CacheBytes: number }[];
  };
}

export interface OpArgs {
  async?: boolean;
  stream?: bigint;
  [key: string]: TensorDesc | number | boolean | bigint | undefined;
}

export type CudaDebugPlanArgs =
  | {
      op: 'divergence';
      v: number;
      sDtype?: number;
      tDtype?: number;
      teacher?: boolean;
      restage?: boolean;
      perSm: number;
      reservedPerBlock: number;
      optinPerBlock: number;
      staticBytes?: number;
      clusters?: boolean;
      maxCluster?: number;
    }
  | { op: 'sparse'; k: number; bucket?: boolean }
  | { op: 'sample'; v: number };

export interface CudaDebugPlan {
  cl?: number;
  stageSweeps?: number;
  smem?: number;
  budget?: number;
  perSweep?: number;
  scratch?: number;
  rowThreads?: number;
  blocksPerSm?: number;
  maxDynamicSmem?: number;
  residentDynamicSmem?: number;
  fitsCalls?: number;
  teacherStageOffset?: number;
  /** Per cluster rank: [c0, c1, nchunks, sweeps]. */
  slices?: [number, number, number, number][];
  p2?: number;
  hsize?: number;
  bytes?: number;
  chunks?: number;
}

export interface CudaDebugRowStats {
  ms: number; ss: number; mt: number; st: number;
  a: number; b: number; dq: number; dp: number;
  forwardKl: number; reverseKl: number; studentEntropy: number; teacherEntropy: number;
}

export interface Binding {
  setErrorClass(cls: new (message: string, code: string) => Error): void;
  backends(): RawBackends;
  setThreads(n: number): void;
  setIsa(name: string): boolean;
  cudaAlloc(device: number, bytes: number, zero: boolean): DeviceMemoryHandle;
  cudaFree(mem: DeviceMemoryHandle): void;
  cudaWrap(ptr: bigint, bytes: number, device: number): DeviceMemoryHandle;
  cudaCopy(mem: DeviceMemoryHandle, offset: number, host: ArrayBufferView, toDevice: boolean): void;
  memInfo(mem: DeviceMemoryHandle): { ptr: bigint; bytes: number; freed: boolean; owned: boolean };
  synchronize(device: number, stream?: bigint): void;
  /**
   * The library's CUDA memory pool of a device (native/cuda/runtime.cu): bytes reserved
   * from the driver and bytes in live allocations. Throws KdError KD_EDEVICE (with the
   * reason) on a build or machine without CUDA, KD_EINVAL for a bad argument.
   */
  cudaPoolInfo(device: number): { reservedBytes: number; usedBytes: number };
  /**
   * Waits for the library's stream of the device, then returns reserved pool memory to the
   * driver until at most keepBytes stay reserved (cudaMemPoolTrimTo). Errors as cudaPoolInfo.
   */
  cudaPoolTrim(device: number, keepBytes: number): void;

  /** Tests only (native/binding/cuda_debug.cc): the CUDA kernels' plans and row statistics run on the CPU. */
  cudaDebugPlan(o: CudaDebugPlanArgs): CudaDebugPlan;
  cudaDebugStageOffset(sweep: number, word: number, words: number, tid: number): number;
  cudaDebugRowStats(o: {
    s: Float32Array;
    t: Float32Array;
    v: number;
    cl?: number;
    temperature?: number;
    teacherLogprobs?: boolean;
  }): CudaDebugRowStats;

  /** Host output pool (native/binding/pool.cc): undefined below minBytes or over the cap. */
  poolAlloc(bytes: number): ArrayBuffer | undefined;
  /** Detaches a pooled ArrayBuffer and returns its block; false for any other. */
  poolRelease(buffer: ArrayBuffer): boolean;
  poolInfo(): { pooledBytes: number; inUseBytes: number; capBytes: number; minBytes: number; reused: number; fresh: number; overCap: number; v8HiddenBytes: number };
  poolSetCap(bytes: number): void;
  poolTrim(keepBytes: number): void;
  poolDebug(poisonByte: number, minBytes: number): void;
  /** Reclaim blocks of collected ArrayBuffers before their finalizers run (this thread). */
  poolReclaim(enable: boolean): void;
  /** Tests only: the C heap's bytes in use (glibc), after malloc_trim; undefined elsewhere. */
  mallocInfo(): number | undefined;

  triad(args: OpArgs): undefined | Promise<void>;
  divergence(args: OpArgs): undefined | Promise<void>;
  tokenStats(args: OpArgs): undefined | Promise<void>;
  topk(args: OpArgs): undefined | Promise<void>;
  sampleTeacher(args: OpArgs): undefined | Promise<void>;
  sparseKlDiv(args: OpArgs): undefined | Promise<void>;
}
