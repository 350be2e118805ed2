import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { CUDA, CUDA_SKIP_REASON, errorOf } from './helpers.js';

describe('tensor constructors and dtypes', () => {
  const cases: { name: string; data: kd.TypedArray; dtype?: kd.DType; expect: kd.DType }[] = [
    { name: 'Float32Array', data: new Float32Array([1, 2, 3, 4, 5, 6]), expect: 'f32' },
    { name: 'Int32Array', data: new Int32Array([1, 2, 3, 4, 5, 6]), expect: 'i32' },
    { name: 'Uint8Array', data: new Uint8Array([1, 0, 1, 0, 1, 1]), expect: 'u8' },
    { name: 'Uint16Array as bf16', data: new Uint16Array(6).fill(kd.numberToBf16(1.5)), dtype: 'bf16', expect: 'bf16' },
    { name: 'Uint16Array as f16', data: new Uint16Array(6).fill(kd.numberToF16(-2.25)), dtype: 'f16', expect: 'f16' },
  ];
  for (const c of cases) {
    it(`${c.name} is a zero-copy view with dtype ${c.expect}`, () => {
      const t = kd.tensor(c.data, [2, 3], c.dtype ? { dtype: c.dtype } : undefined);
      expect(t.dtype).toBe(c.expect);
      expect(t.shape).toEqual([2, 3]);
      expect(t.strides).toEqual([3, 1]);
      expect(t.device).toBe('cpu');
      expect(t.toArray()).toBe(c.data); // the same object: no copy
      expect(t.numel).toBe(6);
    });
  }

  it('f16/bf16 values convert exactly', () => {
    expect(kd.bf16ToNumber(kd.numberToBf16(1.5))).toBe(1.5);
    expect(kd.f16ToNumber(kd.numberToF16(-2.25))).toBe(-2.25);
    expect(kd.f16ToNumber(kd.numberToF16(65520))).toBe(Infinity);
    expect(kd.f16ToNumber(kd.numberToF16(2 ** -24))).toBe(2 ** -24); // smallest subnormal
    expect(Number.isNaN(kd.bf16ToNumber(kd.numberToBf16(NaN)))).toBe(true);
    expect(kd.bf16ToNumber(kd.numberToBf16(1 + 2 ** -8))).toBe(1); // ties to even
    const t = kd.tensor(kd.fromNumbers([0.5, -3], 'bf16') as Uint16Array, [2], { dtype: 'bf16' });
    expect(Array.from(t.toFloat32Array())).toEqual([0.5, -3]);
  });

  it('row strides larger than the row work without a copy', () => {
    const data = new Float32Array([1, 2, 3, 99, 4, 5, 6, 99]);
    const t = kd.tensor(data, [2, 3], { strides: [4, 1] });
    expect(t.isContiguous).toBe(false);
    expect(t.extent).toBe(7);
    expect(Array.from(t.toFloat32Array())).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('empty and zeros allocate CPU arrays', () => {
    const e = kd.empty([3, 4], { dtype: 'bf16' });
    expect(e.toArray()).toBeInstanceOf(Uint16Array);
    expect(e.toArray().length).toBe(12);
    const z = kd.zeros([5], { dtype: 'i32' });
    expect(Array.from(z.toArray())).toEqual([0, 0, 0, 0, 0]);
    expect(kd.empty([], {}).numel).toBe(1);
    expect(kd.empty([0, 7]).numel).toBe(0);
  });

  it('item() reads scalars in every float dtype', () => {
    expect(kd.tensor(new Float32Array([2.5]), []).item()).toBe(2.5);
    expect(kd.tensor(new Uint16Array([kd.numberToBf16(-4)]), [1], { dtype: 'bf16' }).item()).toBe(-4);
    const e = errorOf(() => kd.tensor(new Float32Array(2), [2]).item());
    expect(e.code).toBe('KD_ESHAPE');
  });

  it('dispose and Symbol.dispose; a disposed tensor is a clear error', () => {
    const t = kd.tensor(new Float32Array(4), [4]);
    {
      using u = kd.tensor(new Float32Array(1), [1]);
      expect(u.disposed).toBe(false);
    }
    t.dispose();
    t.dispose(); // idempotent
    expect(t.disposed).toBe(true);
    const e = errorOf(() => t.toArray());
    expect(e).toMatchObject({ name: 'KdError', code: 'KD_EDISPOSED' });
    const s = kd.tensor(new Float32Array(6), [2, 3]);
    const g = kd.tensor(new Float32Array(6), [2, 3]);
    g.dispose();
    expect(errorOf(() => kd.klDiv(s, g))).toMatchObject({ code: 'KD_EDISPOSED' });
  });

  it('a detached ArrayBuffer is detected', () => {
    const data = new Float32Array(6);
    const t = kd.tensor(data, [2, 3]);
    structuredClone(data.buffer, { transfer: [data.buffer] });
    expect(errorOf(() => t.toArray())).toMatchObject({ code: 'KD_EDISPOSED' });
    expect(errorOf(() => kd.tensor(data, [0]))).toMatchObject({ code: 'KD_EDISPOSED' });
  });
});

describe('tensor errors name the argument, the expectation and what came', () => {
  const table: { name: string; fn: () => unknown; cls: string; code: string; msg: RegExp }[] = [
    { name: 'shape/data mismatch', fn: () => kd.tensor(new Float32Array(5), [2, 3]), cls: 'RangeError', code: 'KD_ESHAPE', msg: /at least 6 elements.*Float32Array of length 5/ },
    { name: 'Uint16Array without dtype', fn: () => kd.tensor(new Uint16Array(2), [2]), cls: 'TypeError', code: 'KD_EDTYPE', msg: /explicit dtype/ },
    { name: 'dtype vs array type', fn: () => kd.tensor(new Float32Array(2), [2], { dtype: 'bf16' }), cls: 'TypeError', code: 'KD_EDTYPE', msg: /Uint16Array for dtype 'bf16'/ },
    { name: 'not a typed array', fn: () => kd.tensor([1, 2] as unknown as Float32Array, [2]), cls: 'TypeError', code: 'KD_EINVAL', msg: /TypedArray for data but received an array/ },
    { name: 'negative size', fn: () => kd.tensor(new Float32Array(2), [-2]), cls: 'RangeError', code: 'KD_EINVAL', msg: /shape\[0\]/ },
    { name: 'fractional size', fn: () => kd.empty([1.5]), cls: 'RangeError', code: 'KD_EINVAL', msg: /shape\[0\].*1.5/ },
    { name: 'bad device', fn: () => kd.empty([2], { device: 'gpu' as kd.Device }), cls: 'RangeError', code: 'KD_EDEVICE', msg: /'cpu', 'cuda', 'cuda:N' or 'webgpu' for device/ },
    { name: 'unknown option', fn: () => kd.tensor(new Float32Array(2), [2], { dtyp: 'f32' } as never), cls: 'TypeError', code: 'KD_EINVAL', msg: /Unknown option 'dtyp'/ },
    { name: 'strides length', fn: () => kd.tensor(new Float32Array(6), [2, 3], { strides: [3] }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /2 strides/ },
    { name: 'pointer on cpu', fn: () => kd.tensor(new Float32Array(2), [2]).pointer, cls: 'KdError', code: 'KD_EDEVICE', msg: /only defined for CUDA/ },
  ];
  for (const c of table) {
    it(c.name, () => {
      const e = errorOf(c.fn);
      expect(e.name).toBe(c.cls);
      expect(e.code).toBe(c.code);
      expect(e.message).toMatch(c.msg);
    });
  }

  it('CUDA requested where unavailable says why (no silent fallback)', () => {
    if (CUDA) return;
    const e = errorOf(() => kd.empty([4], { device: 'cuda:0' }));
    expect(e).toMatchObject({ name: 'KdError', code: 'KD_EDEVICE' });
    expect(e.message).toContain(kd.backends().cuda.reason!);
  });
});

describe('backends', () => {
  it('reports CPU threads and SIMD, and CUDA status with a reason', () => {
    const b = kd.backends();
    expect(b.cpu.threads).toBeGreaterThanOrEqual(1);
    expect(['avx512', 'avx2', 'generic']).toContain(b.cpu.simd);
    expect(typeof b.cuda.compiled).toBe('boolean');
    if (!b.cuda.available) expect(b.cuda.reason).toMatch(/\w/);
    expect(b.binary).toMatch(/\.node$/);
  });
  it('setThreads validates and applies', () => {
    const before = kd.backends().cpu.threads;
    kd.setThreads(1);
    expect(kd.backends().cpu.threads).toBe(1);
    kd.setThreads(before);
    expect(errorOf(() => kd.setThreads(0))).toMatchObject({ name: 'RangeError' });
  });
});

describe.skipIf(!CUDA)(`CUDA tensors ${CUDA_SKIP_REASON}`, () => {
  it('upload/download round trip per dtype, strides, to()', () => {
    for (const [data, dtype] of [
      [new Float32Array([1, -2, 3.5, 4, 5, 6]), 'f32'],
      [new Int32Array([1, 2, 3, 4, 5, -6]), 'i32'],
      [new Uint8Array([1, 2, 3, 4, 5, 6]), 'u8'],
      [new Uint16Array([1, 2, 3, 4, 5, 6]), 'bf16'],
    ] as const) {
      const t = kd.tensor(data, [2, 3], { dtype, device: 'cuda:0' });
      expect(Array.from(t.toArray())).toEqual(Array.from(data));
      expect(t.pointer).toBeGreaterThan(0n);
      const back = t.to('cpu');
      expect(Array.from(back.toArray())).toEqual(Array.from(data));
      t.dispose();
    }
    const z = kd.zeros([1000], { device: 'cuda:0' });
    expect(z.toFloat32Array().every((x) => x === 0)).toBe(true);
    z.dispose();
  });

  it('fromDevicePointer borrows, validates and is never freed by dispose', () => {
    const owner = kd.tensor(new Float32Array([1, 2, 3, 4]), [4], { device: 'cuda:0' });
    const view = kd.fromDevicePointer(owner.pointer, [2], { dtype: 'f32', device: 'cuda:0', keepAlive: owner });
    expect(Array.from(view.toArray())).toEqual([1, 2]);
    view.dispose();
    expect(Array.from(owner.toArray())).toEqual([1, 2, 3, 4]);
    owner.dispose();
    expect(errorOf(() => kd.fromDevicePointer(12345n, [1], { dtype: 'f32', device: 'cuda:0' }))).toMatchObject({ code: 'KD_EDEVICE' });
  });

  it('100k alloc/free cycles leak no device memory', () => {
    for (let i = 0; i < 100_000; i++) kd.empty([1024], { device: 'cuda:0' }).dispose();
    kd.synchronize('cuda:0');
    // External memory accounting returns to where it was (allocation is stream-ordered).
    expect(process.memoryUsage().external).toBeLessThan(1e9);
  });

  it('mixing devices is a KD_EDEVICE error', () => {
    const s = kd.tensor(new Float32Array(6), [2, 3], { device: 'cuda:0' });
    const t = kd.tensor(new Float32Array(6), [2, 3]);
    expect(errorOf(() => kd.klDiv(s, t))).toMatchObject({ code: 'KD_EDEVICE' });
    s.dispose();
  });
});
