// An engine that restarts finds the migrations its predecessor left in flight (the journal) and
// settles each one so that exactly one copy of the guest runs: QEMU went on without the engine,
// so the source QEMU's own migration status says which copy holds the guest.
import type { Guest, Host } from '../hosts/host';
import { cont, queryMigrate, queryStatus } from '../qmp';
import type { MigrationStatus } from '../qmp/types';
import { delay } from '../util/time';
import type { JournalEntry, MigrationJournal } from './journal';

export type RecoveryOutcome =
  /** The switchover happened while the engine was away: the destination keeps the guest. */
  | 'completed'
  /** The migration never finished: the destination copy was stopped, the source runs. */
  | 'rolled-back'
  /** Nothing had reached the destination yet: the source runs as it did. */
  | 'source-kept'
  /** Neither copy could be found (or a host is not in the lab). */
  | 'lost';

export interface RecoveryReport {
  id: string;
  guest: string;
  from: string;
  to: string;
  /** The last phase the stopped engine wrote. */
  lastPhase: string;
  /** The source QEMU's migration status when the new engine asked (after waiting for an active one). */
  qemuStatus: MigrationStatus | null;
  outcome: RecoveryOutcome;
  runningOn: string | null;
  /** What the new engine did, in order, in words. */
  actions: string[];
}

/** One line for people: the guest, the route, where the stopped engine was, and what became of it. */
export function describeRecovery(r: RecoveryReport): string {
  return `${r.guest} (${r.from} -> ${r.to}, stopped in ${r.lastPhase}): ${r.outcome}${r.runningOn ? `, runs on ${r.runningOn}` : ''}; ${r.actions.join('; ')}`;
}

const IN_FLIGHT: MigrationStatus[] = ['setup', 'active', 'device', 'pre-switchover', 'cancelling', 'wait-unplug'];

async function alive(g: Guest | undefined): Promise<{ guest: Guest; running: boolean; status: string } | null> {
  if (!g || g.exit) return null;
  const st = await queryStatus(g.qmp).catch(() => null);
  return st ? { guest: g, running: st.running, status: st.status } : null;
}

/** Settles one journal entry; never throws for the guest's sake (the report says what it found). */
export async function recoverMigration(entry: JournalEntry, hosts: Host[], opts: { waitActiveMs?: number } = {}): Promise<RecoveryReport> {
  const report: RecoveryReport = {
    id: entry.id, guest: entry.guest, from: entry.from, to: entry.to, lastPhase: entry.state,
    qemuStatus: null, outcome: 'lost', runningOn: null, actions: [],
  };
  const from = hosts.find((h) => h.name === entry.from);
  const to = hosts.find((h) => h.name === entry.to);
  if (!from || !to) {
    report.actions.push(`host ${!from ? entry.from : entry.to} is not in this lab, so nothing was touched`);
    return report;
  }
  let src = await alive(from.guest(entry.guest));
  let dst = await alive(to.guest(entry.guest));
  if (src) {
    // A migration still streaming finishes (or fails) on its own; wait for QEMU's verdict.
    const end = performance.now() + (opts.waitActiveMs ?? 120_000);
    let info = await queryMigrate(src.guest.qmp).catch(() => null);
    if (info?.status && IN_FLIGHT.includes(info.status)) report.actions.push(`the migration was still ${info.status} in QEMU: waited for it to end`);
    while (info?.status && IN_FLIGHT.includes(info.status) && performance.now() < end) {
      await delay(200);
      info = await queryMigrate(src.guest.qmp).catch(() => null);
    }
    report.qemuStatus = info?.status ?? null;
    src = await alive(src.guest);
    dst = await alive(to.guest(entry.guest));
  }
  if (src && report.qemuStatus === 'completed' && dst?.running) {
    await from.stopGuest(entry.guest);
    report.actions.push(`the switchover had happened: stopped the paused source copy on ${from.name}`);
    dst.guest.markReady();
    report.outcome = 'completed';
    report.runningOn = to.name;
  } else if (src) {
    if (dst) {
      await to.stopGuest(entry.guest);
      report.actions.push(`stopped the unfinished destination copy on ${to.name} (QEMU said "${dst.status}")`);
    }
    if (!src.running) {
      await cont(src.guest.qmp);
      report.actions.push(`resumed the source copy on ${from.name}, which was paused ("${src.status}")`);
    }
    report.outcome = dst ? 'rolled-back' : 'source-kept';
    report.runningOn = from.name;
  } else if (dst?.running) {
    dst.guest.markReady();
    report.actions.push(`the source copy was gone and the destination runs the guest`);
    report.outcome = 'completed';
    report.runningOn = to.name;
  } else {
    report.actions.push('no running copy of the guest was found on either host');
  }
  return report;
}

/** Settles every migration between these hosts the journal says was in flight, and closes their entries. */
export async function recoverInterruptedMigrations(hosts: Host[], journal: MigrationJournal, opts: { waitActiveMs?: number } = {}): Promise<RecoveryReport[]> {
  const reports: RecoveryReport[] = [];
  // Only this lab's jobs (the journal is shared with every other lab of this user), and only
  // those that touch an agent's host: a local host's guests do not outlive the engine's lab.
  const remote = new Set(hosts.filter((h) => h.kind === 'remote').map((h) => h.name));
  if (!remote.size) return reports; // a lab of local hosts: the journal is not even read
  const names = new Set(hosts.map((h) => h.name));
  const ours = (e: JournalEntry) => names.has(e.from) && names.has(e.to) && (remote.has(e.from) || remote.has(e.to));
  for (const entry of (await journal.unfinished()).filter(ours)) {
    const r = await recoverMigration(entry, hosts, opts);
    reports.push(r);
    await journal.write({
      ...entry,
      state: r.outcome === 'completed' ? 'completed' : 'failed',
      updatedAt: new Date().toISOString(),
      recovery: r,
    });
  }
  return reports;
}
