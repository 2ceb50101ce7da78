// When may a test retry a migration? Only for QEMU 7.2's TCG bug, judged on real failures
// (fixtures/tcg-crashes.json: MigLab's own results and source checks, captured on the build machine).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { MigrationResult } from '../../electron/engine/migration/types';
import type { VerifyResult } from '../../electron/engine/guest/labload-protocol';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { demoJson } from '../../electron/cli/demo';
import { decideTcgRetry, demoAttempt, kernelOopsLine, retryTcgCrashes, type TcgCrashEvidence, type TcgRetryFacts } from '../helpers/tcg-retry';
import { readTcgRetries, runDirs, RUN_DIR_ENV } from '../helpers/test-run';
import { summaryLine } from '../helpers/summary-reporter';

const machine = vi.hoisted(() => ({ accel: 'tcg' as 'tcg' | 'kvm', qemu: { path: '/usr/bin/qemu-system-x86_64', version: '7.2.22', major: 7, minor: 2 } }));
vi.mock('../../electron/engine/qemu/binary', async (original) => ({
  ...(await original<typeof import('../../electron/engine/qemu/binary')>()),
  chooseAccelerator: async () => ({ accel: machine.accel, reason: 'test' }),
  findQemu: async () => ({ ...machine.qemu, source: 'env', reason: 'test' }),
}));

interface Captured {
  qemu: string;
  result: MigrationResult;
  evidence: { runningOn: string[]; verify: VerifyResult; heartbeatsContinue: boolean };
}
const captured = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'tcg-crashes.json'), 'utf8')) as Record<string, Captured>;

/** What the test helpers gather after a failed migration, from a captured one. */
function evidenceOf(name: string): TcgCrashEvidence {
  const c = captured[name]!;
  const v = c.evidence.verify;
  return {
    destinationConsole: c.result.destinationConsoleTail,
    source: c.result.from,
    runningOn: c.evidence.runningOn,
    integrity: { pages: v.pages, bad: v.bad, sweepOk: v.sweepOk, heartbeatsContinue: c.evidence.heartbeatsContinue },
  };
}

const QEMU_7 = { version: '7.2.22', major: 7 };
const QEMU_10 = { version: '10.0.2', major: 10 };
const facts = (name: string, over: Partial<TcgRetryFacts> = {}): TcgRetryFacts => ({ ...evidenceOf(name), accel: 'tcg', qemu: QEMU_7, ...over });

describe('the kernel oops on the destination console', () => {
  it('is found in real crashes on arrival, panicked or gone silent', () => {
    expect(captured['oops-and-panic']!.result.failure).toBe('destination-crashed');
    expect(kernelOopsLine(captured['oops-and-panic']!.result.destinationConsoleTail)).toMatch(/BUG: unable to handle page fault for address/);
    expect(kernelOopsLine(captured['oops-then-silent']!.result.destinationConsoleTail)).toMatch(/BUG: kernel NULL pointer dereference/);
  });

  it('is not found on a destination that died for another reason, or printed nothing', () => {
    expect(captured['killed-destination']!.result.failure).toBe('destination-crashed');
    expect(kernelOopsLine(captured['killed-destination']!.result.destinationConsoleTail)).toBeNull();
    expect(kernelOopsLine(null)).toBeNull();
    // a console that only carries on: the prompt, labload's lines
    expect(kernelOopsLine('c4:/# echo moved-43\r\nmoved-43\r\nc4:/# ')).toBeNull();
  });
});

describe('a retry', () => {
  it('is allowed for a crash on arrival under TCG with QEMU 7.2, one intact copy kept on the source', () => {
    expect(decideTcgRetry(facts('oops-and-panic'))).toEqual({ retry: true, oops: expect.stringContaining('BUG: unable to handle page fault') });
    expect(decideTcgRetry(facts('oops-then-silent'))).toEqual({ retry: true, oops: expect.stringContaining('BUG: kernel NULL pointer dereference') });
  });

  it('is never allowed with QEMU 10, nor under KVM: there the crash is a real failure', () => {
    expect(decideTcgRetry(facts('oops-and-panic', { qemu: QEMU_10 }))).toEqual({ retry: false, why: expect.stringContaining('QEMU 10.0.2 tracks guest writes exactly') });
    expect(decideTcgRetry(facts('oops-and-panic', { accel: 'kvm' }))).toEqual({ retry: false, why: expect.stringContaining('under kvm') });
  });

  it('is not allowed when the destination shows no oops or panic', () => {
    expect(decideTcgRetry(facts('killed-destination'))).toEqual({ retry: false, why: expect.stringContaining('shows no kernel oops or panic') });
  });

  it('is not allowed unless exactly one copy runs, on the source', () => {
    for (const runningOn of [['host-a', 'host-b'], [], ['host-b']]) {
      expect(decideTcgRetry(facts('oops-and-panic', { runningOn }))).toEqual({ retry: false, why: expect.stringContaining('exactly one copy, on host-a') });
    }
  });

  it('is not allowed when the copy on the source lost memory, stopped, or could not be checked', () => {
    const intact = evidenceOf('oops-and-panic').integrity!;
    expect(decideTcgRetry(facts('oops-and-panic', { integrity: { ...intact, bad: 3 } }))).toEqual({ retry: false, why: expect.stringContaining('3 of 16384 pages bad') });
    expect(decideTcgRetry(facts('oops-and-panic', { integrity: { ...intact, sweepOk: false } }))).toEqual({ retry: false, why: expect.stringContaining('sweep broken') });
    expect(decideTcgRetry(facts('oops-and-panic', { integrity: { ...intact, heartbeatsContinue: false } }))).toEqual({ retry: false, why: expect.stringContaining('stopped sending heartbeats') });
    expect(decideTcgRetry(facts('oops-and-panic', { integrity: null }))).toEqual({ retry: false, why: expect.stringContaining('could not be checked') });
  });
});

describe('retryTcgCrashes', () => {
  let dir: string;
  let savedRunDir: string | undefined;
  beforeEach(async () => {
    // A run dir of its own: these retries must not count in the real run's summary line.
    dir = await makeTempDir('tcg-retry-run');
    savedRunDir = process.env[RUN_DIR_ENV];
    process.env[RUN_DIR_ENV] = dir;
    machine.accel = 'tcg';
  });
  afterEach(async () => {
    if (savedRunDir === undefined) delete process.env[RUN_DIR_ENV];
    else process.env[RUN_DIR_ENV] = savedRunDir;
    await removeDir(dir);
  });

  const crash = (name: string) => ({ done: false as const, failure: captured[name]!.result.reason!, evidence: async () => evidenceOf(name) });

  it('under QEMU 7.2 retries a crash on arrival, counts it, and returns the completed attempt', async () => {
    machine.qemu = { path: '/usr/bin/qemu-system-x86_64', version: '7.2.22', major: 7, minor: 2 };
    const cleaned: number[] = [];
    const value = await retryTcgCrashes('c4: migration', async (n) => (n === 1 ? { ...crash('oops-and-panic'), cleanup: async () => void cleaned.push(n) } : { done: true, value: 'completed' }));
    expect(value).toBe('completed');
    expect(cleaned).toEqual([1]);
    expect(readTcgRetries(runDirs(dir))).toEqual([{ what: 'c4: migration', attempt: 1, qemu: '7.2.22', oops: expect.stringContaining('BUG: unable to handle page fault') }]);
  });

  it('under QEMU 10 fails at the first crash, with the reason and the failure, and counts nothing', async () => {
    machine.qemu = { path: '/tmp/bp/tree/usr/bin/qemu-system-x86_64', version: '10.0.2', major: 10, minor: 0 };
    let attempts = 0;
    await expect(retryTcgCrashes('c4: migration', async () => (attempts++, crash('oops-and-panic')))).rejects.toThrow(
      /c4: migration: attempt 1 failed and is not retried, because QEMU 10\.0\.2 tracks guest writes exactly.*The failure: The guest crashed/,
    );
    expect(attempts).toBe(1);
    expect(readTcgRetries(runDirs(dir))).toEqual([]);
  });

  it('gives up after the last try, saying what failed', async () => {
    machine.qemu = { path: '/usr/bin/qemu-system-x86_64', version: '7.2.22', major: 7, minor: 2 };
    await expect(retryTcgCrashes('c5: migration', async () => crash('oops-then-silent'), 2)).rejects.toThrow('c5: migration: 2 attempts failed; the last: The guest did not resume its heartbeats');
    expect(readTcgRetries(runDirs(dir))).toHaveLength(1);
  });
});

describe('a `miglab demo --json` run as an attempt', () => {
  /** What the demo prints for a captured migration, through the CLI's own demoJson. */
  function demoRun(name: string, code: number) {
    const c = captured[name]!;
    const v = c.evidence.verify;
    const out = demoJson({
      hosts: [],
      result: c.result,
      integrity: { ok: v.bad === 0 && v.sweepOk && c.evidence.heartbeatsContinue, pages: v.pages, bad: v.bad, heartbeatsContinue: c.evidence.heartbeatsContinue },
      workload: null,
      capabilities: null,
    });
    return { code, stdout: JSON.stringify(out), stderr: '' };
  }

  it('is judged on what the demo reported: the destination console, where the guest runs, its memory check', async () => {
    const a = demoAttempt(demoRun('oops-and-panic', 1));
    expect(a.done).toBe(false);
    if (a.done) return;
    const e = await a.evidence();
    expect(e).toEqual({ destinationConsole: expect.stringContaining('Oops: 0011'), source: 'host-a', runningOn: ['host-a'], integrity: { pages: 16384, bad: 0, heartbeatsContinue: true } });
    expect(decideTcgRetry({ ...e, accel: 'tcg', qemu: QEMU_7 })).toMatchObject({ retry: true });
  });

  it('fails at once when a failed demo exits 0, or prints no JSON', () => {
    expect(() => demoAttempt(demoRun('oops-and-panic', 0))).toThrow('miglab demo reported "failed" (The guest crashed (QEMU exited with code 0 without a message) on host-b right after the switchover, so MigLab resumed it on host-a.');
    expect(() => demoAttempt({ code: 2, stdout: '', stderr: 'Unknown option' })).toThrow('miglab demo --json printed no JSON (exit code 2); its stderr: Unknown option');
  });
});

describe('the closing summary line', () => {
  it('says passed, failed and tcg retries, and skipped only when some were', () => {
    expect(summaryLine({ passed: 562, failed: 0, skipped: 0, tcgRetries: 0 })).toBe('tests: 562 passed, 0 failed, 0 tcg retries');
    expect(summaryLine({ passed: 12, failed: 1, skipped: 3, tcgRetries: 2 })).toBe('tests: 12 passed, 1 failed, 3 skipped, 2 tcg retries');
    expect(summaryLine({ passed: 10, failed: 0, skipped: 12, tcgRetries: 1, nameFilter: true })).toBe('tests: 10 passed, 0 failed, 1 tcg retries (12 left out by the name filter)');
  });
});
