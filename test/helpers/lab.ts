import { existsSync } from 'node:fs';
import { expect } from 'vitest';
import { findLabGuest, type LabGuestImage } from '../../electron/engine/guest/image';
import type { Guest } from '../../electron/engine/hosts/host';
import type { LoadReport } from '../../electron/engine/guest/labload-protocol';
import { delay } from '../../electron/engine/util/time';
import { readdir } from 'node:fs/promises';
import { pidAlive, qemuPids } from './leaks';

/** The lab guest that `npm test`'s set-up built; a clear failure when it is missing. */
export async function requireLabGuest(): Promise<LabGuestImage> {
  const image = await findLabGuest();
  if (!image) throw new Error('The lab guest is not built: run "npm test" (its set-up builds it) or "npx miglab guest build"');
  return image;
}

/** Asserts a stopped guest left nothing: its QEMU is gone and so are its sockets. */
export function expectGuestGone(guest: Guest, guestDir?: string): void {
  expect(guest.exit).not.toBeNull();
  if (guest.pid !== undefined) expect(pidAlive(guest.pid)).toBe(false);
  if (guestDir) expect(existsSync(guestDir)).toBe(false);
}

/**
 * A test file's own corner: every host it makes keeps its runtime files under `dir`, so its
 * leak check is not confused by other test files running in parallel.
 */
export async function expectScopeClean(dir: string): Promise<void> {
  expect(await qemuPids(dir)).toEqual([]);
  const left = existsSync(dir) ? await readdir(dir) : [];
  expect(left).toEqual([]);
}

/**
 * Asserts the guest dirties memory at the rate it was asked for, as labload measures it inside
 * the guest over its last second (measuredMBps), once that second is whole. labload's token bucket
 * never runs faster than the rate (15% for rounding and its first burst); a TCG guest starved of
 * CPU on a loaded 2-core machine falls behind, but not below half of it.
 */
export async function expectDirtyingAt(guest: Guest, rateMBps: number): Promise<LoadReport> {
  const ch = guest.labload!;
  let report = await ch.report();
  for (let i = 0; i < 100 && report.windowUs < 900_000; i++) {
    await delay(50);
    report = await ch.report();
  }
  expect(report).toMatchObject({ running: true, rateMBps });
  expect(report.windowUs).toBeGreaterThanOrEqual(900_000);
  expect(report.measuredMBps).toBeLessThanOrEqual(rateMBps * 1.15);
  expect(report.measuredMBps).toBeGreaterThan(rateMBps / 2);
  return report;
}
