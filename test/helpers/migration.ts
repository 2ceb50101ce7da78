import { expect } from 'vitest';
import type { Guest } from '../../electron/engine/hosts/host';
import type { Lab } from '../../electron/engine/lab/lab';
import { runningCopies } from './copies';
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
 * Under TCG (QEMU 7.2, no KVM) a guest that writes memory during a migration sometimes crashes
 * on the destination right after the switchover (seen with raw QMP too, see README). MigLab then
 * resumes it on the source. Tests that need a completed migration check that fallback each time
 * it happens (one intact copy, on the source) and try again, a bounded number of times.
 */
export async function completeDespiteTcgCrashes(
  lab: Lab,
  name: string,
  attempt: () => Promise<import('../../electron/engine/migration/types').MigrationResult>,
  tries = 3,
): Promise<import('../../electron/engine/migration/types').MigrationResult> {
  let last = null;
  for (let i = 0; i < tries; i++) {
    const r = await attempt();
    if (r.status === 'completed') return r;
    last = r;
    expect(r.failure, `${r.reason}`).toBe('destination-crashed');
    console.warn(`[tcg] ${name}: attempt ${i + 1} crashed on the destination; MigLab kept it on ${r.from}. ${r.reason}`);
    expect(r.runningOn).toBe(r.from);
    const src = await expectOneCopyOn(lab, name, r.from);
    if (src.labload) {
      const v = await src.labload.verify({ timeoutMs: 60_000 });
      expect(v.bad).toBe(0);
    }
  }
  throw new Error(`The migration of ${name} did not complete in ${tries} tries; last: ${last?.reason}`);
}

/**
 * After a migration that did not complete: the destination holds no copy, the source holds the
 * one running copy with its memory intact; then the guest is stopped.
 */
export async function expectBackOnSourceThenStop(
  lab: Lab,
  r: import('../../electron/engine/migration/types').MigrationResult,
): Promise<void> {
  expect(r.runningOn).toBe(r.from);
  expect(lab.host(r.to).guest(r.guest)).toBeUndefined();
  const src = await expectOneCopyOn(lab, r.guest, r.from);
  await expectIntact(src);
  await src.stop();
}
