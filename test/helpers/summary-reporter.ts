import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import type { Reporter, TestModule, Vitest } from 'vitest/node';
import { defaultCacheRoot } from '../../electron/engine/util/paths';
import { findRunLeaks, takeBaseline, type RunBaseline } from './run-leaks';
import { readTcgRetries, startTestRun, type TestRunDirs } from './test-run';
import { defaultStateDir } from '../../electron/engine/util/paths';

export interface RunCounts {
  passed: number;
  failed: number;
  skipped: number;
  tcgRetries: number;
  /** A -t name filter was given: the tests it left out are not skipped ones (the suite has no .skip). */
  nameFilter?: boolean;
}

/**
 * The closing line any CI can read: "tests: N passed, N failed[, N skipped], R tcg retries", or
 * with a name filter "tests: N passed, N failed, R tcg retries (N left out by the name filter)".
 */
export function summaryLine(c: RunCounts): string {
  const skipped = c.skipped && !c.nameFilter ? `, ${c.skipped} skipped` : '';
  const filtered = c.skipped && c.nameFilter ? ` (${c.skipped} left out by the name filter)` : '';
  return `tests: ${c.passed} passed, ${c.failed} failed${skipped}, ${c.tcgRetries} tcg retries${filtered}`;
}

export function countTests(testModules: ReadonlyArray<TestModule>): Pick<RunCounts, 'passed' | 'failed' | 'skipped'> {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  for (const mod of testModules) {
    if (mod.state() === 'failed' && [...mod.children.allTests()].length === 0) failed++; // a file that failed to load
    for (const test of mod.children.allTests()) {
      const state = test.result().state;
      if (state === 'passed') passed++;
      else if (state === 'failed') failed++;
      else skipped++;
    }
  }
  return { passed, failed, skipped };
}

/**
 * Gives the run its own temp folder and state dir (test-run.ts), and ends it with the leak check
 * and one plain line. The leak check lives here, not in a globalTeardown: vitest only logs an
 * error thrown there and still exits 0, while process.exitCode set here is the exit code.
 */
export default class SummaryReporter implements Reporter {
  private run: TestRunDirs | null = null;
  private baseline: RunBaseline | null = null;
  private watching = false;
  private nameFilter = false;

  async onInit(vitest: Vitest): Promise<void> {
    this.watching = vitest.config.watch;
    this.nameFilter = Boolean(vitest.config.testNamePattern);
    // Read before the run points MIGLAB_STATE_DIR at its own dir: the user's dirs, to guard.
    const userStateDir = defaultStateDir();
    const userCacheDir = defaultCacheRoot();
    this.run = startTestRun(tmpdir());
    this.baseline = await takeBaseline({ userStateDir, userCacheDir, runStateDir: this.run.state });
  }

  async onTestRunEnd(testModules: ReadonlyArray<TestModule>): Promise<void> {
    const counts: RunCounts = { ...countTests(testModules), tcgRetries: 0, nameFilter: this.nameFilter };
    const out: string[] = [];
    if (this.run && this.baseline) {
      const retries = readTcgRetries(this.run);
      counts.tcgRetries = retries.length;
      for (const r of retries) out.push(`[tcg] retried ${r.what} after attempt ${r.attempt} (QEMU ${r.qemu}): ${r.oops}`);
      const leaks = await findRunLeaks(this.baseline, this.run);
      if (leaks.length) {
        // Said first, while it is all still there to look at; cleaned up after.
        process.stdout.write(`\nleak check FAILED: the tests left ${leaks.length} thing(s) behind:\n${leaks.map((l) => `  - ${l.what}`).join('\n')}\n`);
        for (const l of leaks) out.push(`  cleanup: ${await l.clean().catch((err: Error) => `failed: ${err.message}`)}`);
        out.push('leak check: failed (counted as 1 failed below)');
        counts.failed++;
        process.exitCode = 1;
      }
      if (!this.watching) await rm(this.run.root, { recursive: true, force: true });
    }
    process.stdout.write(`\n${[...out, summaryLine(counts)].join('\n')}\n`);
  }
}
