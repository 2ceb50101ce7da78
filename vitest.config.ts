import { defineConfig } from 'vitest/config';

// Integration tests boot real QEMU guests under TCG on two cores and measure time (heartbeat
// gaps, dirty rates): one test file at a time, so no file starves another's guests.
export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts', 'test/e2e/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    fileParallelism: false,
    reporters: ['default', './test/helpers/summary-reporter.ts'],
    globalSetup: ['test/helpers/global-leak-check.ts'],
  },
});
