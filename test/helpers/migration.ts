import { expect } from 'vitest';
import type { Guest } from '../../electron/engine/hosts/host';
import type { Lab } from '../../electron/engine/lab/lab';
import type { MigrationResult } from '../../electron/engine/migration/types';
import { runningCopies } from './copies';
import { retryTcgCrashes, type SourceIntegrity, type TcgCrashEvidence } from './tcg-retry';
import { delay } from '../../electron/engine/util/time';

export { runningCopies };

/** The invariant: exactly one copy runs, on `host`, and its heartbeats keep coming. */
export async function expectOneCopyOn(lab: Lab, name: string, host: string): Promise<Guest> {
  expect(await runningCopies(lab, name)).toEqual([host]);
  const guest = lab.host(host).guest(name)!;
  if (guest.labload) {
    const before = guest.labload.heartbeats.count;
    await delay(300);
    expect(guest.labload.heartbeats.count).toBeGreaterThan(before + 5);
  }
  return guest;
}

/** Stops the load (if any) and checks every page of the working set. */
export async function expectIntact(guest: Guest): Promise<void> {
  const ch = guest.labload!;
  await ch.stopLoad();
  const v = await ch.verify({ timeoutMs: 60_000 });
  expect(v).toMatchObject({ bad: 0, firstBad: -1, sweepOk: true });
  expect(v.pages).toBeGreaterThan(0);
}

/**
 * After a failed migration, what the lab shows of the guest: where copies run (asked of QEMU),
 * and the memory and heartbeats of the copy on `source`; the destination's console as given.
 */
export async function labCrashEvidence(lab: Lab, name: string, source: string, destinationConsole: string | null): Promise<TcgCrashEvidence> {
  const runningOn = await runningCopies(lab, name);
  const ch = lab.host(source).guest(name)?.labload ?? null;
  let integrity: SourceIntegrity | null = null;
  if (ch) {
    const beats = ch.heartbeats.count;
    const v = await ch.verify({ timeoutMs: 60_000 });
    await delay(200);
    integrity = { pages: v.pages, bad: v.bad, sweepOk: v.sweepOk, heartbeatsContinue: ch.heartbeats.count > beats };
  }
  return { destinationConsole, source, runningOn, integrity };
}

/**
 * Runs `attempt` (one migration of `name`) until it completes. Between tries only a crash on
 * arrival that allowTcgRetry accepts: QEMU < 10 under TCG, an oops on the destination's
 * console, one intact copy kept on the source (see tcg-retry.ts). Each retry is counted.
 */
export function completeDespiteTcgCrashes(
  lab: Lab,
  name: string,
  attempt: () => Promise<MigrationResult>,
  tries = 3,
): Promise<MigrationResult> {
  return retryTcgCrashes(`${name}: migration`, async () => {
    const r = await attempt();
    if (r.status === 'completed') return { done: true, value: r };
    return {
      done: false,
      failure: `${r.status} (${r.failure}): ${r.reason}`,
      evidence: () => labCrashEvidence(lab, name, r.from, r.destinationConsoleTail),
    };
  }, tries);
}

/**
 * After a migration that did not complete: the destination holds no copy, the source holds the
 * one running copy with its memory intact; then the guest is stopped.
 */
export async function expectBackOnSourceThenStop(
  lab: Lab,
  r: MigrationResult,
): Promise<void> {
  expect(r.runningOn).toBe(r.from);
  expect(lab.host(r.to).guest(r.guest)).toBeUndefined();
  const src = await expectOneCopyOn(lab, r.guest, r.from);
  await expectIntact(src);
  await src.stop();
}
