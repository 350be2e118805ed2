/** Differential fuzzing of the full-vocabulary losses (see test/fuzz/fuzz_suite.ts). */
import { describe } from 'vitest';
import { fuzzTests } from './fuzz_suite.js';

describe('fuzz: klDiv, jsd, tvd, skewKl, distillationLoss vs reference', () => {
  fuzzTests(['klDiv', 'jsd', 'tvd', 'skewKl', 'distillationLoss']);
});
