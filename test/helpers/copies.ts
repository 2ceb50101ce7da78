// Shared by the tests and the benchmarks (no vitest here: benches run outside it).
import type { Lab } from '../../electron/engine/lab/lab';
import { queryStatus } from '../../electron/engine/qmp';

/** How many copies of the guest QEMU is actually running, across every host of the lab. */
export async function runningCopies(lab: Lab, name: string): Promise<string[]> {
  const where: string[] = [];
  for (const host of lab.hosts()) {
    const g = host.guest(name);
    if (!g || g.exit) continue;
    const st = await queryStatus(g.qmp).catch(() => null);
    if (st?.running) where.push(host.name);
  }
  return where;
}
