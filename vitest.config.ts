import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Native kernels use their own thread pool; one vitest worker per core is plenty.
    pool: 'forks',
    maxWorkers: 2,
  },
});
