/**
 * The CUDA memory pool's raw binding functions (issue 13, CUDA half: native/cuda/runtime.cu,
 * native/binding/device.cc): cudaPoolInfo / cudaPoolTrim, and the argument checks of the
 * device-memory bindings. Without CUDA they must reject with KD_EDEVICE and the reason;
 * with a GPU, freed memory stays reserved for reuse and a trim returns it.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { binding } from '../lib/native.js';
import { CUDA, CUDA_SKIP_REASON, errorOf } from './helpers.js';

describe('CUDA pool bindings: argument checks (every build)', () => {
  it('bad arguments are KD_EINVAL, before any device is looked at', () => {
    const b = binding();
    for (const keep of [-1, 1.5, Number.NaN, 2 ** 60, '1' as unknown as number]) {
      const e = errorOf(() => b.cudaPoolTrim(0, keep));
      expect(e.code, `keepBytes ${String(keep)}`).toBe('KD_EINVAL');
      expect(e.message).toMatch(/cudaPoolTrim: the byte count must be/);
    }
    expect(errorOf(() => b.cudaPoolInfo('0' as unknown as number)).code).toBe('KD_EINVAL');
    // fromDevicePointer's raw binding: null / non-bigint pointers and bad sizes never reach CUDA
    expect(errorOf(() => b.cudaWrap(0n, 16, 0)).message).toMatch(/non-zero 64-bit address/);
    expect(errorOf(() => b.cudaWrap(1 as unknown as bigint, 16, 0)).code).toBe('KD_EINVAL');
    for (const bytes of [-1, 0.5, Number.NaN, Number.POSITIVE_INFINITY])
      expect(errorOf(() => b.cudaWrap(4096n, bytes, 0)).code, `bytes ${bytes}`).toBe('KD_EINVAL');
  });
});

describe.skipIf(CUDA)('CUDA pool bindings without CUDA', () => {
  it('cudaPoolInfo / cudaPoolTrim throw KD_EDEVICE with the reason', () => {
    const b = binding();
    const reason = kd.backends().cuda.reason ?? '';
    expect(reason.length).toBeGreaterThan(0);
    for (const fn of [() => b.cudaPoolInfo(0), () => b.cudaPoolTrim(0, 0)]) {
      const e = errorOf(fn);
      expect(e.name).toBe('KdError');
      expect(e.code).toBe('KD_EDEVICE');
      expect(e.message).toContain('CUDA is not available');
      expect(e.message).toContain(reason);
    }
  });
});

describe.skipIf(!CUDA)(`CUDA pool on a GPU ${CUDA_SKIP_REASON}`, () => {
  it('freed memory stays reserved and is reused; a trim returns it; a wrong device is KD_EDEVICE', () => {
    const b = binding();
    const MB = 1 << 20;
    const before = b.cudaPoolInfo(0);
    const x = kd.empty([64 * MB / 4], { device: 'cuda:0' });
    const live = b.cudaPoolInfo(0);
    expect(live.usedBytes - before.usedBytes).toBeGreaterThanOrEqual(64 * MB);
    expect(live.reservedBytes).toBeGreaterThanOrEqual(live.usedBytes);
    x.dispose();
    kd.synchronize('cuda:0');
    const freed = b.cudaPoolInfo(0);
    expect(freed.usedBytes).toBe(before.usedBytes);
    // below the release threshold (1/4 of the device): still reserved after a synchronisation
    expect(freed.reservedBytes).toBeGreaterThanOrEqual(64 * MB);
    const y = kd.empty([64 * MB / 4], { device: 'cuda:0' });
    expect(b.cudaPoolInfo(0).reservedBytes).toBe(freed.reservedBytes); // reused, nothing new reserved
    y.dispose();
    b.cudaPoolTrim(0, 0);
    const trimmed = b.cudaPoolInfo(0);
    expect(trimmed.reservedBytes).toBeLessThan(freed.reservedBytes);
    expect(trimmed.reservedBytes).toBeGreaterThanOrEqual(trimmed.usedBytes);
    const n = kd.backends().cuda.devices.length;
    expect(errorOf(() => b.cudaPoolInfo(n)).code).toBe('KD_EDEVICE');
  });
});
