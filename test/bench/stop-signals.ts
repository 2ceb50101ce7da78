// Ctrl-C, or CI stopping a benchmark (scripts/bench-smoke.mjs past its timeout): the benchmark's
// own teardown still runs to the end. QEMU runs in a process group of its own and would outlive it.

let stopping = false;

/** On SIGINT or SIGTERM: says so, runs `teardown` (once), exits 130. */
export function teardownOnStop(what: string, teardown: () => Promise<unknown>): void {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      if (stopping) return;
      stopping = true;
      console.error(`\n${sig}: stopping ${what}`);
      void teardown()
        .catch((err: Error) => console.error(`stopping ${what}: ${err.message}`))
        .finally(() => process.exit(130));
    });
  }
}

/**
 * Runs the benchmark. Once it is being stopped, its main failing (a guest stopped under it) is
 * the stop's doing: the teardown, not that error, ends the process.
 */
export async function runBenchmark(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (err) {
    if (!stopping) throw err;
    await new Promise(() => {}); // teardownOnStop exits
  }
}
