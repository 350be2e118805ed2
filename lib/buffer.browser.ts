/**
 * node:buffer's `constants` in a browser build (package.json "browser" maps node:buffer
 * here): lib/tensor.ts reads MAX_LENGTH to bound CPU allocations.
 */
export const constants = { MAX_LENGTH: 2 ** 32 };
