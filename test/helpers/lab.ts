import { existsSync } from 'node:fs';
import { expect } from 'vitest';
import { findLabGuest, type LabGuestImage } from '../../electron/engine/guest/image';
import type { Guest } from '../../electron/engine/hosts/host';
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
