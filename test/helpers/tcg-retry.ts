// QEMU 7.2 under TCG loses guest writes while it migrates (README: "Under TCG"), and a guest
// kernel that wrote memory during a migration sometimes oopses on the destination. MigLab then
// resumes the guest on its source. A test that needs a completed migration may try again after
// such a crash, and only then: one helper decides, every loop asks it, every retry is counted.
import { tracksTcgWritesExactly, chooseAccelerator, findQemu, type Accelerator } from '../../electron/engine/qemu/binary';
import { currentTestRun, recordTcgRetry } from './test-run';

/** What the kernel prints when it oopses or panics (x86, Linux 6.1), as opposed to a warning. */
const OOPS_LINE = /\bOops\b|\bBUG: (?:unable to handle|kernel NULL pointer)|kernel BUG at|general protection fault|invalid opcode: |Kernel panic - not syncing|Fatal exception/;

/** The first line of a console that shows a kernel oops or panic; null when none does. */
export function kernelOopsLine(console: string | null): string | null {
  if (!console) return null;
  const line = console.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').split(/\r?\n/).find((l) => OOPS_LINE.test(l));
  return line === undefined ? null : line.trim();
}

/** The guest's memory check where it still runs (labload verify, or demo --json's integrity). */
export interface SourceIntegrity {
  pages: number;
  bad: number;
  sweepOk?: boolean;
  /** Heartbeats kept coming from the copy that answered. */
  heartbeatsContinue: boolean;
}

/** What a failed attempt leaves to judge it by. */
export interface TcgCrashEvidence {
  /** The destination's console text after the switchover (MigrationResult.destinationConsoleTail). */
  destinationConsole: string | null;
  /** The host the guest was migrated from. */
  source: string;
  /** Every host where QEMU runs a copy of the guest now. */
  runningOn: string[];
  /** Checked on the copy that runs; null when it could not be checked. */
  integrity: SourceIntegrity | null;
}

export interface TcgRetryFacts extends TcgCrashEvidence {
  accel: Accelerator;
  qemu: { version: string; major: number };
}

export type TcgRetryDecision = { retry: true; oops: string } | { retry: false; why: string };

/**
 * A retry is allowed only when all three hold: (a) TCG on a QEMU older than 10 (QEMU 10 tracks
 * TCG's writes exactly, so there a crash is a real failure), (b) the destination's console shows
 * a kernel oops or panic, (c) exactly one copy runs, on the source, with its memory intact.
 */
export function decideTcgRetry(f: TcgRetryFacts): TcgRetryDecision {
  if (f.accel !== 'tcg') return { retry: false, why: `the guests run under ${f.accel}, where the hardware tracks dirty pages: a crash on arrival is a real failure` };
  if (tracksTcgWritesExactly(f.qemu)) return { retry: false, why: `QEMU ${f.qemu.version} tracks guest writes exactly under TCG: a crash on arrival is a real failure, never retried` };
  const oops = kernelOopsLine(f.destinationConsole);
  if (!oops) {
    const tail = (f.destinationConsole ?? '').trim().split('\n').slice(-3).join(' / ');
    return { retry: false, why: `the destination's console shows no kernel oops or panic, so this is not QEMU 7.2's TCG bug (its last lines: ${tail || 'nothing'})` };
  }
  if (f.runningOn.length !== 1 || f.runningOn[0] !== f.source) {
    return { retry: false, why: `MigLab must keep exactly one copy, on ${f.source}; copies run on [${f.runningOn.join(', ')}]` };
  }
  const i = f.integrity;
  if (!i) return { retry: false, why: `the copy on ${f.source} could not be checked` };
  if (i.bad !== 0 || i.sweepOk === false) return { retry: false, why: `the copy on ${f.source} lost memory: ${i.bad} of ${i.pages} pages bad${i.sweepOk === false ? ', sweep broken' : ''}` };
  if (!i.heartbeatsContinue) return { retry: false, why: `the copy on ${f.source} stopped sending heartbeats` };
  return { retry: true, oops };
}

/**
 * Asks decideTcgRetry with this machine's accelerator and QEMU. Allowed: counts the retry for the
 * summary line and logs it. Not allowed: throws, failing the test with the attempt's own failure.
 */
export async function allowTcgRetry(what: string, attempt: number, failure: string, evidence: TcgCrashEvidence): Promise<void> {
  const [accel, qemu] = await Promise.all([chooseAccelerator(), findQemu()]);
  const d = decideTcgRetry({ ...evidence, accel: accel.accel, qemu });
  if (!d.retry) throw new Error(`${what}: attempt ${attempt} failed and is not retried, because ${d.why}. The failure: ${failure}`);
  const run = currentTestRun();
  if (run) recordTcgRetry(run, { what, attempt, qemu: qemu.version, oops: d.oops });
  console.warn(`[tcg] ${what}: attempt ${attempt} crashed on the destination (${d.oops}); one intact copy stayed on ${evidence.source}; retrying` +
    (run ? '' : ' (not counted: vitest runs without test/helpers/summary-reporter.ts)'));
}

/**
 * One attempt's outcome: done, or failed with what allowTcgRetry needs to judge it (gathered
 * before anything is cleaned up) and what to clean up before the next attempt.
 */
export type Attempt<T> =
  | { done: true; value: T }
  | { done: false; failure: string; evidence: () => Promise<TcgCrashEvidence>; cleanup?: () => Promise<void> };

/**
 * Runs `attempt` until it is done, at most `tries` times; between tries only a crash that
 * allowTcgRetry accepts (each one counted). Any other failure, or the last, fails the test.
 */
export async function retryTcgCrashes<T>(what: string, attempt: (n: number) => Promise<Attempt<T>>, tries = 3): Promise<T> {
  for (let n = 1; ; n++) {
    const a = await attempt(n);
    if (a.done) return a.value;
    if (n >= tries) throw new Error(`${what}: ${tries} attempts failed; the last: ${a.failure}`);
    await allowTcgRetry(what, n, a.failure, await a.evidence());
    await a.cleanup?.();
  }
}

/** What `miglab demo --json` prints of a migration (see demoJson in electron/cli/demo.ts). */
export interface DemoJson {
  status: string;
  failure: string | null;
  reason: string | null;
  from: string;
  runningOn: string;
  destinationConsoleTail: string | null;
  integrity: { ok: boolean; pages: number; bad: number; heartbeatsContinue: boolean } | null;
}

/**
 * One `miglab demo --json` run as an attempt. The command has ended and taken its lab with it, so
 * its own report is the evidence: the destination's console, where the guest ran at the end and
 * the memory check made there. A failed demo must also say so with exit code 1. The completed
 * report goes back as loosely typed as JSON comes: the tests read it field by field.
 */
export function demoAttempt<R extends { code: number; stdout: string; stderr: string }>(r: R): Attempt<{ run: R; out: Record<string, any> }> {
  let out: DemoJson;
  try {
    out = JSON.parse(r.stdout) as DemoJson;
  } catch {
    throw new Error(`miglab demo --json printed no JSON (exit code ${r.code}); its stderr: ${r.stderr.slice(-500)}`);
  }
  if (out.status === 'completed') return { done: true, value: { run: r, out } };
  if (r.code !== 1) throw new Error(`miglab demo reported "${out.status}" (${out.reason}) but exited with ${r.code}, not 1`);
  const i = out.integrity;
  return {
    done: false,
    failure: `${out.status} (${out.failure}): ${out.reason}`,
    evidence: async () => ({
      destinationConsole: out.destinationConsoleTail,
      source: out.from,
      runningOn: [out.runningOn],
      integrity: i ? { pages: i.pages, bad: i.bad, heartbeatsContinue: i.heartbeatsContinue } : null,
    }),
  };
}
