import { defineConfig } from 'vitest/config';

// Integration tests boot real QEMU guests under TCG: two cores, so keep parallelism low
// and timeouts generous. Unit tests are fast and run alongside.
export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    fileParallelism: true,
    reporters: ['default', './test/helpers/summary-reporter.ts'],
    globalSetup: ['test/helpers/global-leak-check.ts'],
  },
});
