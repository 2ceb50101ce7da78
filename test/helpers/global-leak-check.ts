import { currentTestRun } from './test-run';

// The leak check and the count of TCG retries live in the summary reporter (summary-reporter.ts),
// where they can fail the run; an error thrown from a globalTeardown only gets logged. A run
// without that reporter (`--reporter` on the command line replaces the configured ones) would
// check nothing and count nothing, so it is refused here, before any test starts.
export function setup(): void {
  if (!currentTestRun()) {
    throw new Error(
      'The summary reporter is not running, so leaks would go unnoticed and TCG retries uncounted: ' +
        'keep the configured reporters, or add it: --reporter=default --reporter=./test/helpers/summary-reporter.ts',
    );
  }
}
