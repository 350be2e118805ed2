/** Every bad argument of the divergence ops is a clear error that names it. */
import { describe, expect, it } from 'vitest';
import * as kd from '../lib/index.js';
import { errorOf } from './helpers.js';

const s = kd.tensor(new Float32Array(4 * 6), [4, 6]);
const t = kd.tensor(new Float32Array(4 * 6), [4, 6]);

const table: { name: string; fn: () => unknown; cls: string; code: string; msg: RegExp }[] = [
  { name: 'student not a tensor', fn: () => kd.klDiv(new Float32Array(4) as never, t), cls: 'TypeError', code: 'KD_EINVAL', msg: /Tensor for student but received a Float32Array/ },
  { name: 'integer logits', fn: () => kd.klDiv(kd.tensor(new Int32Array(24), [4, 6]), t), cls: 'TypeError', code: 'KD_EDTYPE', msg: /student of dtype f32, f16 or bf16 but received i32/ },
  { name: '1-D logits', fn: () => kd.klDiv(kd.tensor(new Float32Array(6), [6]), t), cls: 'RangeError', code: 'KD_ESHAPE', msg: /student of shape \[N, V\] or \[B, T, V\] but received \[6\]/ },
  { name: 'token count mismatch', fn: () => kd.jsd(s, kd.tensor(new Float32Array(18), [3, 6])), cls: 'RangeError', code: 'KD_ESHAPE', msg: /student has 4 tokens.*teacher has 3/ },
  { name: 'teacher vocab smaller', fn: () => kd.tvd(s, kd.tensor(new Float32Array(20), [4, 5])), cls: 'RangeError', code: 'KD_ESHAPE', msg: /teacher vocabulary \(5\) is smaller than the student's \(6\)/ },
  { name: 'label out of range', fn: () => kd.klDiv(s, t, { labels: new Int32Array([0, 6, 1, 2]) }), cls: 'RangeError', code: 'KD_ERANGE', msg: /labels\[1\] = 6 is outside \[0, 6\)/ },
  { name: 'negative label', fn: () => kd.klDiv(s, t, { labels: new Int32Array([0, -5, 1, 2]) }), cls: 'RangeError', code: 'KD_ERANGE', msg: /labels\[1\] = -5/ },
  { name: 'labels wrong length', fn: () => kd.klDiv(s, t, { labels: new Int32Array(3) }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /labels with 4 elements/ },
  { name: 'labels wrong dtype', fn: () => kd.klDiv(s, t, { labels: new Float32Array(4) as never }), cls: 'TypeError', code: 'KD_EDTYPE', msg: /i32 Tensor or Int32Array for labels/ },
  { name: 'weights wrong length', fn: () => kd.klDiv(s, t, { weights: new Float32Array(5) }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /weights with 4 elements/ },
  { name: 'mask wrong type', fn: () => kd.klDiv(s, t, { mask: [1, 0, 1, 1] as never }), cls: 'TypeError', code: 'KD_EDTYPE', msg: /u8 Tensor or Uint8Array for mask/ },
  { name: 'beta > 1', fn: () => kd.jsd(s, t, { beta: 1.5 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /number in \[0, 1\] for beta but received 1.5/ },
  { name: 'beta negative', fn: () => kd.jsd(s, t, { beta: -0.1 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /for beta but received -0.1/ },
  { name: 'beta not a number', fn: () => kd.jsd(s, t, { beta: '0.5' as never }), cls: 'TypeError', code: 'KD_EINVAL', msg: /number for beta but received '0.5' of type string/ },
  { name: 'temperature 0', fn: () => kd.klDiv(s, t, { temperature: 0 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /> 0 for temperature but received 0/ },
  { name: 'temperature negative', fn: () => kd.tvd(s, t, { temperature: -1 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /temperature/ },
  { name: 'temperature NaN', fn: () => kd.tvd(s, t, { temperature: NaN }), cls: 'RangeError', code: 'KD_EINVAL', msg: /temperature/ },
  { name: 'skew = 1', fn: () => kd.skewKl(s, t, { skew: 1 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /\[0, 1\) for skew but received 1/ },
  { name: 'skew negative', fn: () => kd.skewKl(s, t, { skew: -0.2 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /skew/ },
  { name: 'grad wrong shape', fn: () => kd.klDiv(s, t, { grad: kd.empty([4, 5]) }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /grad of shape \[4, 6\].*received \[4, 5\]/ },
  { name: 'grad wrong type', fn: () => kd.klDiv(s, t, { grad: 'yes' as never }), cls: 'TypeError', code: 'KD_EINVAL', msg: /for grad but received 'yes'/ },
  { name: 'inplace with f32 grad of bf16', fn: () => kd.klDiv(kd.tensor(new Uint16Array(24), [4, 6], { dtype: 'bf16' }), t, { grad: 'inplace', gradDtype: 'f32' }), cls: 'RangeError', code: 'KD_EDTYPE', msg: /inplace/ },
  { name: 'reduction unknown', fn: () => kd.klDiv(s, t, { reduction: 'avg' as never }), cls: 'RangeError', code: 'KD_EINVAL', msg: /'none', 'sum', 'mean', 'batchmean' for reduction but received 'avg'/ },
  { name: 'normalizer 0', fn: () => kd.klDiv(s, t, { normalizer: 0 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /normalizer/ },
  { name: 'gradScale Infinity', fn: () => kd.klDiv(s, t, { gradScale: Infinity }), cls: 'RangeError', code: 'KD_EINVAL', msg: /gradScale/ },
  { name: 'direction unknown', fn: () => kd.klDiv(s, t, { direction: 'sideways' as never }), cls: 'RangeError', code: 'KD_EINVAL', msg: /'forward', 'reverse' for direction/ },
  { name: 'teacher kind unknown', fn: () => kd.klDiv(s, t, { teacher: 'probs' as never }), cls: 'RangeError', code: 'KD_EINVAL', msg: /'logits', 'logprobs' for teacher/ },
  { name: 'unknown option (typo)', fn: () => kd.klDiv(s, t, { temprature: 2 } as never), cls: 'TypeError', code: 'KD_EINVAL', msg: /Unknown option 'temprature'/ },
  { name: 'stream on CPU', fn: () => kd.klDiv(s, t, { stream: 1n }), cls: 'KdError', code: 'KD_EDEVICE', msg: /stream was given but the logits are on the CPU/ },
  { name: 'non-contiguous last dim', fn: () => kd.klDiv(kd.tensor(new Float32Array(48), [4, 6], { strides: [12, 2] }), t), cls: 'RangeError', code: 'KD_ESHAPE', msg: /last dimension of student must be contiguous/ },
  { name: 'distillationLoss without labels', fn: () => kd.distillationLoss(s, t, undefined as never), cls: 'RangeError', code: 'KD_EINVAL', msg: /labels are required/ },
  { name: 'distillationLoss both weights 0', fn: () => kd.distillationLoss(s, t, new Int32Array(4), { hardWeight: 0, softWeight: 0 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /both 0/ },
  { name: 'distillationLoss negative hardWeight', fn: () => kd.distillationLoss(s, t, new Int32Array(4), { hardWeight: -1 }), cls: 'RangeError', code: 'KD_EINVAL', msg: />= 0 for hardWeight but received -1/ },
  { name: 'distillationLoss unknown divergence', fn: () => kd.distillationLoss(s, t, new Int32Array(4), { divergence: 'kl' as never }), cls: 'RangeError', code: 'KD_EINVAL', msg: /for divergence but received 'kl'/ },
  { name: 'distillationLoss label out of range', fn: () => kd.distillationLoss(s, t, new Int32Array([0, 1, 2, 99])), cls: 'RangeError', code: 'KD_ERANGE', msg: /labels\[3\] = 99/ },
  { name: 'distillationLoss labelSmoothing 2', fn: () => kd.distillationLoss(s, t, new Int32Array(4), { labelSmoothing: 2 }), cls: 'RangeError', code: 'KD_EINVAL', msg: /labelSmoothing/ },
  { name: 'tokenStats sampled out of range', fn: () => kd.tokenStats(s, t, { sampled: new Int32Array([0, 1, 6, 2]) }), cls: 'RangeError', code: 'KD_ERANGE', msg: /sampled\[2\] = 6 is outside \[0, 6\)/ },
  { name: 'tokenStats sampled wrong length', fn: () => kd.tokenStats(s, t, { sampled: new Int32Array(2) }), cls: 'RangeError', code: 'KD_ESHAPE', msg: /sampled with 4 elements/ },
];

describe('bad arguments to the divergence ops', () => {
  for (const c of table)
    it(c.name, () => {
      const e = errorOf(c.fn);
      expect({ name: e.name, code: e.code }).toEqual({ name: c.cls, code: c.code });
      expect(e.message).toMatch(c.msg);
    });
});
