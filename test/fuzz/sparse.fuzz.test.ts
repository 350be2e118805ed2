/** Differential fuzzing of tokenStats, topk, sampleTeacher and sparseKlDiv (see test/fuzz/fuzz_suite.ts). */
import { describe } from 'vitest';
import { fuzzTests } from './fuzz_suite.js';

describe('fuzz: tokenStats, topk, sampleTeacher, sparseKlDiv vs reference', () => {
  fuzzTests(['tokenStats', 'topk', 'sampleTeacher', 'sparseKlDiv']);
});
