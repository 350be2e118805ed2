/**
 * .npy and safetensors readers, on files written by the small writers below (the
 * writers follow the NumPy format spec and the safetensors README; where Python with
 * numpy is installed, files written by np.save itself are read too).
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NpyReader, SafetensorsReader, tensor } from '../lib/index.js';
import { parsePyLiteral } from '../lib/io/npy.js';

let TMP: string;
beforeAll(async () => {
  TMP = await mkdtemp(join(tmpdir(), 'kd-io-test-'));
});
afterAll(async () => {
  await rm(TMP, { recursive: true, force: true });
});
let fileCount = 0;
const newFile = (ext: string): string => join(TMP, `f${fileCount++}.${ext}`);

// ---------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------

/** A .npy file as np.save writes it: magic, version, header length, dict padded with spaces to 64 bytes, '\n'. */
function npyBytes(descr: string, shape: number[], data: Uint8Array, o: { version?: 1 | 2 | 3; fortran?: boolean; header?: string } = {}): Uint8Array {
  const version = o.version ?? 1;
  const shapeStr = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = o.header ?? `{'descr': '${descr}', 'fortran_order': ${o.fortran ? 'True' : 'False'}, 'shape': ${shapeStr}, }`;
  const lenBytes = version === 1 ? 2 : 4;
  const pre = 8 + lenBytes;
  const hbytes = new TextEncoder().encode(header);
  const pad = (64 - ((pre + hbytes.length + 1) % 64)) % 64;
  header += ' '.repeat(pad) + '\n';
  const h = new TextEncoder().encode(header);
  const out = new Uint8Array(pre + h.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]);
  const dv = new DataView(out.buffer);
  if (version === 1) dv.setUint16(8, h.length, true);
  else dv.setUint32(8, h.length, true);
  out.set(h, pre);
  out.set(data, pre + h.length);
  return out;
}

interface StTensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
}
/** A safetensors file: u64 header size, JSON header padded with spaces to 8 bytes, data. */
function safetensorsBytes(tensors: StTensor[], metadata?: Record<string, string>, o: { headerJson?: string; offsets?: (t: StTensor, begin: number) => [number, number] } = {}): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: o.offsets ? o.offsets(t, off) : [off, off + t.data.length] };
    off += t.data.length;
  }
  let json = o.headerJson ?? JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const h = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + h.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  let p = 8 + h.length;
  for (const t of tensors) {
    out.set(t.data, p);
    p += t.data.length;
  }
  return out;
}

const bytesOf = (a: Float32Array | Uint16Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function sample(dtype: 'f32' | 'f16' | 'bf16', n: number): Float32Array | Uint16Array {
  if (dtype === 'f32') return Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 10 - i / 7);
  return Uint16Array.from({ length: n }, (_, i) => (i * 40503 + 17) & 0xffff);
}

async function expectError(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  await expect(p).rejects.toMatchObject({ code, message: expect.stringMatching(re) });
}

// ---------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------

describe('npy', () => {
  it('parses the header dict np.save writes (without eval)', () => {
    expect(parsePyLiteral("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }")).toEqual({ descr: '<f4', fortran_order: false, shape: [3, 4] });
    expect(parsePyLiteral('{"descr": "|V2", "fortran_order": True, "shape": (5,)}')).toEqual({ descr: '|V2', fortran_order: true, shape: [5] });
    expect(parsePyLiteral("{'shape': (2L, 3L), 'x': None, 'y': [1, -2]}")).toEqual({ shape: [2, 3], x: null, y: [1, -2] });
    expect(() => parsePyLiteral("{'descr': __import__('os')}")).toThrow(/unexpected token/);
  });

  const cases: [string, 'f32' | 'f16' | 'bf16', 'f32' | 'f16' | 'bf16'][] = [
    ['<f4', 'f32', 'f32'],
    ['<f2', 'f16', 'f16'],
    ['<u2', 'bf16', 'bf16'],
    ['|V2', 'bf16', 'bf16'],
    ['<V2', 'bf16', 'bf16'],
  ];
  for (const [descr, data, want] of cases)
    for (const version of [1, 2, 3] as const)
      it(`descr ${descr}, format ${version}.0: shape, dtype, streaming row reads`, async () => {
        const rows = 13;
        const V = 7;
        const vals = sample(data, rows * V);
        const path = newFile('npy');
        await writeFile(path, npyBytes(descr, [rows, V], bytesOf(vals), { version }));
        const r = await NpyReader.open(path);
        expect([r.rows, r.cols, r.dtype, r.shape, r.header.version]).toEqual([rows, V, want, [rows, V], `${version}.0`]);
        for (const [s, c] of [[0, rows], [0, 1], [5, 4], [12, 1], [13, 0], [3, 10]] as const) {
          const got = await r.readRows(s, c);
          expect(got.constructor).toBe(vals.constructor);
          expect(Array.from(got)).toEqual(Array.from(vals.subarray(s * V, (s + c) * V)));
        }
        const t = tensor(await r.readRows(2, 3), [3, V], { dtype: r.dtype });
        expect(t.shape).toEqual([3, V]);
        // into a caller's buffer (reused across batches)
        const buf = vals instanceof Float32Array ? new Float32Array(5 * V) : new Uint16Array(5 * V);
        const into = await r.readRows(4, 2, buf);
        expect(into.buffer).toBe(buf.buffer);
        expect(Array.from(into)).toEqual(Array.from(vals.subarray(4 * V, 6 * V)));
        await expectError(r.readRows(0, 6, buf), 'KD_ESHAPE', /at least 42 elements/);
        await expectError(r.readRows(0, 1, (vals instanceof Float32Array ? new Uint16Array(V) : new Float32Array(V)) as never), 'KD_EDTYPE', /Expected a/);
        await expectError(r.readRows(12, 2), 'KD_ERANGE', /start \+ count <= 13/);
        await r.close();
      });

  it("reads '<u2' as f16 on request, and (B, T, V) as B·T rows", async () => {
    const vals = sample('f16', 2 * 3 * 5);
    const path = newFile('npy');
    await writeFile(path, npyBytes('<u2', [2, 3, 5], bytesOf(vals)));
    const r = await NpyReader.open(path, { u2As: 'f16' });
    expect([r.rows, r.cols, r.dtype]).toEqual([6, 5, 'f16']);
    expect(Array.from(await r.readRows(4, 2))).toEqual(Array.from(vals.subarray(20, 30)));
    await r.close();
  });

  it('rejects what it cannot read, saying why', async () => {
    const data = bytesOf(sample('f32', 12));
    const cases: [Uint8Array, RegExp][] = [
      [npyBytes('>f4', [3, 4], data), /unsupported dtype descr '>f4' \(big-endian data is not converted\); accepted: '<f4'/],
      [npyBytes('<f8', [3, 4], data), /unsupported dtype descr '<f8'/],
      [npyBytes('<f4', [3, 4], data, { fortran: true }), /Fortran-order arrays are not supported/],
      [npyBytes('<f4', [12], data), /expected logits of shape \(N, V\) or \(B, T, V\), found \(12,\)/],
      [npyBytes('<f4', [3, 4], data.subarray(0, 40)), /truncated: shape \(3, 4\) of <f4 needs \d+ bytes, the file has \d+/],
      [npyBytes('<f4', [3, 4], data, { header: "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3, 4), }" }), /structured arrays are not logits/],
      [npyBytes('<f4', [3, 4], data, { header: "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4) " }), /cannot parse the .npy header/],
      [new TextEncoder().encode('PK\u0003\u0004 not numpy at all'), /not a .npy file/],
    ];
    for (const [bytes, re] of cases) {
      const path = newFile('npy');
      await writeFile(path, bytes);
      await expectError(NpyReader.open(path), 'KD_EFORMAT', re);
    }
    const v9 = npyBytes('<f4', [3, 4], data);
    v9[6] = 9;
    const path = newFile('npy');
    await writeFile(path, v9);
    await expectError(NpyReader.open(path), 'KD_EFORMAT', /unsupported .npy format version 9.0/);
    await expectError(NpyReader.open(join(TMP, 'missing.npy')), 'KD_EIO', /cannot open/);
  });

  // np.save's own output, where Python and numpy are installed (the CI image may lack them).
  const py = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' });
  const NUMPY = py.status === 0;
  it.skipIf(!NUMPY)(`reads files written by np.save${NUMPY ? '' : ' (skipped: python3 with numpy not found)'}`, async () => {
    const dir = TMP;
    const script = `
import numpy as np
x = (np.arange(6 * 9, dtype=np.float32).reshape(2, 3, 9) / 7 - 3).astype(np.float32)
np.save('${dir}/np_f4.npy', x)
np.save('${dir}/np_f2.npy', x.astype(np.float16))
np.save('${dir}/np_u2.npy', (x.view(np.uint32) >> 16).astype(np.uint16))
np.save('${dir}/np_v2.npy', x.astype(np.float16).view('V2'))
`;
    const res = spawnSync('python3', ['-c', script], { encoding: 'utf8' });
    expect(res.status, res.stderr).toBe(0);
    const ref = Float32Array.from({ length: 54 }, (_, i) => Math.fround(Math.fround(i / 7) - 3));
    const f4 = await NpyReader.open(`${dir}/np_f4.npy`);
    expect([f4.rows, f4.cols, f4.dtype]).toEqual([6, 9, 'f32']);
    expect(Array.from(await f4.readRows(0, 6))).toEqual(Array.from(ref));
    await f4.close();
    const f2 = await NpyReader.open(`${dir}/np_f2.npy`);
    const h = await f2.readRows(0, 6);
    expect(f2.dtype).toBe('f16');
    expect(Array.from(tensor(h, [6, 9], { dtype: 'f16' }).toFloat32Array()).every((v, i) => Math.abs(v - ref[i]!) <= 1e-2 * Math.max(1, Math.abs(ref[i]!)))).toBe(true);
    await f2.close();
    const u2 = await NpyReader.open(`${dir}/np_u2.npy`);
    expect(u2.dtype).toBe('bf16');
    const bits = await u2.readRows(1, 2);
    const r32 = new Uint32Array(ref.buffer);
    expect(Array.from(bits)).toEqual(Array.from(r32.subarray(9, 27), (u) => u >>> 16));
    await u2.close();
    const v2 = await NpyReader.open(`${dir}/np_v2.npy`);
    expect([v2.dtype, v2.header.descr]).toEqual(['bf16', '|V2']);
    expect(Array.from(await v2.readRows(0, 6))).toEqual(Array.from(h));
    await v2.close();
  });
});

// ---------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------

describe('safetensors', () => {
  for (const [stDtype, dtype] of [['F32', 'f32'], ['F16', 'f16'], ['BF16', 'bf16']] as const)
    it(`${stDtype}: picks a tensor, streams rows`, async () => {
      const V = 11;
      const vals = sample(dtype, 4 * 5 * V);
      const other = sample('f32', 6);
      const path = newFile('safetensors');
      await writeFile(path, safetensorsBytes([
        { name: 'hidden', dtype: 'F32', shape: [2, 3], data: bytesOf(other) },
        { name: 'logits', dtype: stDtype, shape: [4, 5, V], data: bytesOf(vals) },
      ], { format: 'pt' }));
      for (const opts of [undefined, { tensor: 'logits' }]) {
        const r = await SafetensorsReader.open(path, opts);
        expect([r.tensorName, r.rows, r.cols, r.dtype, r.shape]).toEqual(['logits', 20, V, dtype, [4, 5, V]]);
        expect(r.header.metadata).toEqual({ format: 'pt' });
        for (const [s, c] of [[0, 20], [7, 3], [19, 1], [20, 0]] as const) expect(Array.from(await r.readRows(s, c))).toEqual(Array.from(vals.subarray(s * V, (s + c) * V)));
        await r.close();
      }
      const h = await SafetensorsReader.open(path, { tensor: 'hidden' });
      expect([h.rows, h.cols]).toEqual([2, 3]);
      expect(Array.from(await h.readRows(1, 1))).toEqual(Array.from(other.subarray(3, 6)));
      await h.close();
    });

  it('rejects what it cannot read, saying why', async () => {
    const f = bytesOf(sample('f32', 12));
    const two = [
      { name: 'a', dtype: 'F32', shape: [3, 4], data: f },
      { name: 'b', dtype: 'F32', shape: [3, 4], data: f },
    ];
    const cases: [Uint8Array, { tensor?: string } | undefined, string, RegExp][] = [
      [safetensorsBytes(two), undefined, 'KD_EINVAL', /holds 2 tensors and none is named 'logits'; choose one by name \(--tensor\): a F32 \[3, 4\]; b F32 \[3, 4\]/],
      [safetensorsBytes(two), { tensor: 'c' }, 'KD_EINVAL', /no tensor named 'c'; the file has: a F32 \[3, 4\]; b F32 \[3, 4\]/],
      [safetensorsBytes([{ name: 'x', dtype: 'I32', shape: [3, 4], data: f }]), undefined, 'KD_EFORMAT', /tensor 'x' has dtype I32; accepted: F32, F16, BF16/],
      [safetensorsBytes([{ name: 'x', dtype: 'F32', shape: [12], data: f }]), undefined, 'KD_EFORMAT', /has shape \[12\]; expected logits \[N, V\]/],
      [safetensorsBytes([{ name: 'x', dtype: 'F32', shape: [3, 5], data: f }]), undefined, 'KD_EFORMAT', /tensor 'x': data_offsets \[0, 48\] hold 48 bytes, shape \[3, 5\] of F32 needs 60/],
      [safetensorsBytes([{ name: 'x', dtype: 'F32', shape: [3, 4], data: f }], undefined, { offsets: (_t, b) => [b + 8, b + 56] }), undefined, 'KD_EFORMAT', /data ends at byte \d+, the file has \d+ \(truncated\)/],
      [safetensorsBytes([], undefined, { headerJson: '{"x": ' }), undefined, 'KD_EFORMAT', /header is not valid JSON/],
      [Uint8Array.of(1, 2, 3), undefined, 'KD_EFORMAT', /not a safetensors file \(3 bytes/],
      [new TextEncoder().encode('this is a text file, not safetensors'), undefined, 'KD_EFORMAT', /not a safetensors file, or truncated: header size \d+/],
    ];
    for (const [bytes, opts, code, re] of cases) {
      const path = newFile('safetensors');
      await writeFile(path, bytes);
      await expectError(SafetensorsReader.open(path, opts), code, re);
    }
    // Cut in the data
    const whole = safetensorsBytes([{ name: 'x', dtype: 'F32', shape: [3, 4], data: f }]);
    const path = newFile('safetensors');
    await writeFile(path, whole.subarray(0, whole.length - 1));
    await expectError(SafetensorsReader.open(path), 'KD_EFORMAT', /truncated/);
  });
});
