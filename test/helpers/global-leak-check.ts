import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { leakedSince, snapshot, type Snapshot } from './leaks';

// The whole run must leave no QEMU process, no lab switch process and no MigLab temp dir behind. Individual tests
// check their own resources; this catches anything they missed, cleans it up, and fails the run.
let before: Snapshot;

export async function setup(): Promise<void> {
  before = await snapshot();
}

export async function teardown(): Promise<void> {
  const leaked = await leakedSince(before);
  for (const pid of [...leaked.qemu, ...leaked.switchd]) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const d of leaked.tempDirs) await rm(join(tmpdir(), d), { recursive: true, force: true });
  if (leaked.qemu.length || leaked.switchd.length || leaked.tempDirs.length) {
    throw new Error(
      `The tests left things behind: QEMU pids [${leaked.qemu.join(', ')}], switchd pids [${leaked.switchd.join(', ')}], temp dirs [${leaked.tempDirs.join(', ')}]`,
    );
  }
}
