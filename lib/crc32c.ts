/**
 * CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, initial value 0xFFFFFFFF,
 * final XOR 0xFFFFFFFF (the CRC used by iSCSI, ext4, SSE4.2 `crc32` and
 * Google's crc32c packages). Check value: crc32c("123456789") = 0xE3069283.
 *
 * Table-driven, "slicing by 8" (eight 256-entry tables, eight bytes per step); a
 * byte-at-a-time loop handles the head and tail. Incremental:
 * `crc32c(b, crc32c(a)) === crc32c(a ++ b)`.
 */

import { KdError, KdTypeError, describe } from './errors.js';
import { isDetached } from './tensor.js';
import { expectInt } from './validate.js';

const POLY = 0x82f63b78;

/** TABLES[t * 256 + b]: the CRC contribution of byte b followed by t zero bytes. */
const TABLES = (() => {
  const t = new Uint32Array(8 * 256);
  for (let b = 0; b < 256; b++) {
    let c = b;
    for (let i = 0; i < 8; i++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[b] = c >>> 0;
  }
  for (let b = 0; b < 256; b++) {
    let c = t[b]!;
    for (let s = 1; s < 8; s++) {
      c = t[c & 0xff]! ^ (c >>> 8);
      t[s * 256 + b] = c >>> 0;
    }
  }
  return t;
})();

/**
 * The CRC-32C of `data` (bytes `start` to `end`), continuing from `previous` (the CRC
 * of the bytes before, 0 to start). Returns an unsigned 32-bit integer.
 */
export function crc32c(data: Uint8Array, previous = 0, start = 0, end = data?.length): number {
  if (!(data instanceof Uint8Array)) throw new KdTypeError(`Expected a Uint8Array for data but received ${describe(data)}`);
  if (isDetached(data.buffer)) throw new KdError('crc32c: the ArrayBuffer of data was detached (transferred)', 'KD_EDISPOSED');
  expectInt('previous', previous, 0, 0xffffffff);
  expectInt('end', end, 0, data.length);
  expectInt('start', start, 0, end);
  const T = TABLES;
  let c = ~previous >>> 0;
  let i = start;
  // Head: byte by byte up to a 4-byte boundary of the underlying buffer, so the
  // 8-byte loop can read two aligned 32-bit words.
  while (i < end && ((data.byteOffset + i) & 3) !== 0) c = T[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
  const n8 = (end - i) >>> 3;
  if (n8 > 0) {
    const words = new Uint32Array(data.buffer, data.byteOffset + i, n8 * 2);
    if (LITTLE_ENDIAN) {
      for (let w = 0; w < words.length; w += 2) {
        const lo = (words[w]! ^ c) >>> 0;
        const hi = words[w + 1]!;
        c =
          T[7 * 256 + (lo & 0xff)]! ^
          T[6 * 256 + ((lo >>> 8) & 0xff)]! ^
          T[5 * 256 + ((lo >>> 16) & 0xff)]! ^
          T[4 * 256 + (lo >>> 24)]! ^
          T[3 * 256 + (hi & 0xff)]! ^
          T[2 * 256 + ((hi >>> 8) & 0xff)]! ^
          T[256 + ((hi >>> 16) & 0xff)]! ^
          T[hi >>> 24]!;
      }
      i += n8 * 8;
    }
  }
  while (i < end) c = T[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** True on little-endian hosts (the slicing loop reads little-endian words). */
export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** `0x` + 8 lowercase hex digits. */
export function hex32(x: number): string {
  return '0x' + (x >>> 0).toString(16).padStart(8, '0');
}
