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

  /** Host output pool (native/binding/pool.cc): undefined below minBytes or over the cap. */
  poolAlloc(bytes: number): ArrayBuffer | undefined;
  /** Detaches a pooled ArrayBuffer and returns its block; false for any other. */
  poolRelease(buffer: ArrayBuffer): boolean;
  poolInfo(): { pooledBytes: number; inUseBytes: number; capBytes: number; minBytes: number; reused: number; fresh: number; overCap: number };
  poolSetCap(bytes: number): void;
  poolTrim(keepBytes: number): void;
  poolDebug(poisonByte: number, minBytes: number): void;
  /** Reclaim blocks of collected ArrayBuffers before their finalizers run (this thread). */
  poolReclaim(enable: boolean): void;
  /** CUDA stream-ordered pool (added by the CUDA pool work; absent in older builds). */
  cudaPoolInfo?(device: number): { reservedBytes: number; usedBytes: number };
  cudaPoolTrim?(device: number, keepBytes: number): void;

  triad(args: OpArgs): undefined | Promise<void>;
  divergence(args: OpArgs): undefined | Promise<void>;
  tokenStats(args: OpArgs): undefined | Promise<void>;
  topk(args: OpArgs): undefined | Promise<void>;
  sampleTeacher(args: OpArgs): undefined | Promise<void>;
  sparseKlDiv(args: OpArgs): undefined | Promise<void>;
}
