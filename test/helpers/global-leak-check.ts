import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { leakedSince, snapshot, type Snapshot } from './leaks';
import { netnsRunTag, removeNetnsLeftovers } from '../../electron/engine/hosts/netns';

// The whole run must leave no QEMU process, no lab switch or agent process, no namespace and no MigLab temp dir behind. Individual tests
// check their own resources; this catches anything they missed, cleans it up, and fails the run.
let before: Snapshot;

export async function setup(): Promise<void> {
  before = await snapshot();
}

export async function teardown(): Promise<void> {
  const leaked = await leakedSince(before);
  for (const pid of [...leaked.agents, ...leaked.qemu, ...leaked.switchd]) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const d of leaked.tempDirs) await rm(join(tmpdir(), d), { recursive: true, force: true });
  // Namespaces of this run carry its tag: remove them all.
  if (leaked.netns.length) await removeNetnsLeftovers(netnsRunTag()).catch(() => {});
  if (leaked.qemu.length || leaked.switchd.length || leaked.agents.length || leaked.tempDirs.length || leaked.netns.length) {
    throw new Error(
      `The tests left things behind: QEMU pids [${leaked.qemu.join(', ')}], switchd pids [${leaked.switchd.join(', ')}], ` +
        `agent pids [${leaked.agents.join(', ')}], temp dirs [${leaked.tempDirs.join(', ')}], namespaces and links [${leaked.netns.join(', ')}]`,
    );
  }
}
