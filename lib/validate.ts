/** Argument validation with messages that name the argument, what was expected and what came. */
import { KdRangeError, KdTypeError, describe } from './errors.js';

export function expectInt(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number') throw new KdTypeError(`Expected an integer for ${name} but received ${describe(v)}`);
  if (!Number.isInteger(v) || v < min || v > max)
    throw new KdRangeError(`Expected an integer between ${min} and ${max} for ${name} but received ${describe(v)}`);
  return v;
}

export function expectNumber(name: string, v: unknown, check?: (x: number) => boolean, what?: string): number {
  if (typeof v !== 'number') throw new KdTypeError(`Expected a number for ${name} but received ${describe(v)}`);
  if (Number.isNaN(v) || (check && !check(v)))
    throw new KdRangeError(`Expected ${what ?? 'a valid number'} for ${name} but received ${describe(v)}`);
  return v;
}

export function expectBool(name: string, v: unknown): boolean {
  if (typeof v !== 'boolean') throw new KdTypeError(`Expected a boolean for ${name} but received ${describe(v)}`);
  return v;
}

export function expectOneOf<T extends string>(name: string, v: unknown, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v))
    throw new (typeof v === 'string' ? KdRangeError : KdTypeError)(
      `Expected one of ${allowed.map((a) => `'${a}'`).join(', ')} for ${name} but received ${describe(v)}`,
    );
  return v as T;
}

export function expectShape(name: string, v: unknown): number[] {
  if (!Array.isArray(v)) throw new KdTypeError(`Expected an array of sizes for ${name} but received ${describe(v)}`);
  if (v.length > 8) throw new KdRangeError(`Expected at most 8 dimensions for ${name} but received ${v.length}`);
  return v.map((d, i) => expectInt(`${name}[${i}]`, d, 0, 2 ** 48));
}

/** Rejects unknown option keys: a typo must not silently do nothing. */
export function expectOptions(name: string, v: unknown, known: readonly string[]): Record<string, unknown> {
  if (v === undefined) return {};
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new KdTypeError(`Expected an options object for ${name} but received ${describe(v)}`);
  for (const k of Object.keys(v)) {
    if (!known.includes(k))
      throw new KdTypeError(`Unknown option '${k}' in ${name}; known options: ${known.join(', ')}`);
  }
  return v as Record<string, unknown>;
}
