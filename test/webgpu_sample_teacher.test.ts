/**
 * sampleTeacher on WebGPU is not implemented yet (its draws must be bitwise those of the
 * CPU: 64-bit counter-based randomness and a correctly rounded fma in WGSL, see
 * native/common/sample_teacher.h). Until then a WebGPU tensor gets a clear
 * KD_EUNSUPPORTED error (after the same argument validation as on the CPU), never a
 * native call with GPU memory. Skips, saying why, without an adapter.
 */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { errorOf } from './helpers.js';
import { GPU, GPU_SKIP_REASON } from './webgpu_rows.js';

describe.skipIf(!GPU)(`sampleTeacher on WebGPU ${GPU_SKIP_REASON}`, () => {
  it('is KD_EUNSUPPORTED (not yet), after the CPU argument checks', async () => {
    const x = kd.tensor(new Float32Array(2 * 10), [2, 10], { device: 'webgpu' });
    const e = errorOf(() => kd.sampleTeacher(x, 4, { seed: 1 }));
    expect([e.name, e.code]).toEqual(['KdError', 'KD_EUNSUPPORTED']);
    expect(e.message).toMatch(/sampleTeacher is not available on WebGPU/);
    await expect(kd.sampleTeacherAsync(x, 4, { seed: 1 })).rejects.toMatchObject({ code: 'KD_EUNSUPPORTED' });
    const bad = errorOf(() => kd.sampleTeacher(x, 0, { seed: 1 }));
    expect([bad.name, bad.code]).toEqual(['RangeError', 'KD_EINVAL']);
    const noSeed = errorOf(() => kd.sampleTeacher(x, 4, {} as never));
    expect(noSeed.name).toBe('TypeError');
  });
});
