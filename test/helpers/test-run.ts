// The run's own corner, shared by the summary reporter (vitest's main process) and the test
// files (forked workers, and the processes they start): they inherit it through the environment.
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** Names the run's dir; set by the summary reporter before any worker starts. */
export const RUN_DIR_ENV = 'MIGLAB_TEST_RUN_DIR';

/**
 * The run's layout: `tmp` is every process's TMPDIR (so what the run leaves in its temp folder,
 * and which processes are its own, can be told apart from what other runs on the machine do),
 * `state` its MIGLAB_STATE_DIR (so no test writes the user's ~/.local/state/miglab), and
 * `tcg-retries.jsonl` one line per retry any worker allowed.
 */
export interface TestRunDirs {
  root: string;
  tmp: string;
  state: string;
  retries: string;
}

export function runDirs(root: string): TestRunDirs {
  return { root, tmp: join(root, 'tmp'), state: join(root, 'state'), retries: join(root, 'tcg-retries.jsonl') };
}

/**
 * Makes the run's dir under `parent` (the machine's temp folder) and points this process's
 * environment at it, for every worker and child to inherit. The name is short: QEMU's UNIX
 * socket paths under the temp folder must stay under 108 bytes.
 */
export function startTestRun(parent: string): TestRunDirs {
  const dirs = runDirs(mkdtempSync(join(parent, 'mlrun-')));
  mkdirSync(dirs.tmp);
  mkdirSync(dirs.state);
  process.env[RUN_DIR_ENV] = dirs.root;
  process.env.TMPDIR = dirs.tmp;
  process.env.MIGLAB_STATE_DIR = dirs.state;
  return dirs;
}

/** The run this process belongs to; null when vitest runs without the summary reporter. */
export function currentTestRun(): TestRunDirs | null {
  const root = process.env[RUN_DIR_ENV];
  return root && existsSync(root) ? runDirs(root) : null;
}

/**
 * The temp folders of the other test runs on this machine: the others' run dirs next to ours,
 * and the machine's temp folder itself (runs without this reporter). Their labs are theirs.
 */
export function otherRunTempFolders(run: TestRunDirs): string[] {
  const parent = dirname(run.root);
  const others = readdirSync(parent).filter((n) => n.startsWith('mlrun-')).map((n) => join(parent, n, 'tmp')).filter((t) => t !== run.tmp);
  return [parent, ...others];
}

/** One retry of a migration that QEMU 7.2's TCG bug crashed on arrival. */
export interface TcgRetryRecord {
  /** The test's own words for what it retried, e.g. "web1: migration to host-b". */
  what: string;
  attempt: number;
  qemu: string;
  /** The oops or panic line the destination's console showed. */
  oops: string;
}

/** Appends one retry: a single short line, so workers writing at once do not interleave. */
export function recordTcgRetry(run: TestRunDirs, r: TcgRetryRecord): void {
  appendFileSync(run.retries, `${JSON.stringify(r)}\n`);
}

export function readTcgRetries(run: TestRunDirs): TcgRetryRecord[] {
  if (!existsSync(run.retries)) return [];
  return readFileSync(run.retries, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as TcgRetryRecord);
}
