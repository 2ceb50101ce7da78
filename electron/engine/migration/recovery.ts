// An engine that restarts finds the migrations its predecessor left in flight (the journal) and
// settles each one by libvirt's rules (qemuProcessRecoverMigrationOut): it asks both QEMUs, and
// the source QEMU's own migration status says who holds the guest. A side that cannot be asked
// is "unknown", never "gone"; the source is resumed only while the destination provably never
// ran guest code; anything else that cannot be decided is left paused as 'needs-attention'.
import type { Guest, Host } from '../hosts/host';
import { cont, migrateCancel } from '../qmp';
import type { MigrationStatus } from '../qmp/types';
import { delay } from '../util/time';
import { MIGRATION_PHASES } from './types';
import { decideCopies, observeCopy, type CopyState } from './copies';
import { MIGRATION_IN_FLIGHT } from './status';
import type { JournalCopy, JournalEntry, MigrationJournal } from './journal';
import type { RecoveryAttention, RecoveryOutcome, RecoveryReport } from './recovery-report';

export interface RecoveryOptions {
  /** After a migrate_cancel, how long QEMU may take to say cancelled, failed or completed. */
  waitActiveMs?: number;
  /** The deadline of each question to a QEMU; no answer within it makes that side unknown. */
  queryTimeoutMs?: number;
  /**
   * Guests a person chose to take back to their paused source (`miglab recover --resume-source`):
   * where the destination ran and then failed, the source is resumed, going back in time.
   */
  resumeSource?: readonly string[];
  /** Settle only these guests' entries (an engine whose other migrations are running). */
  guests?: readonly string[];
}

export type SideName = 'source' | 'destination';

/** What recovery does about one entry, decided from the journal and both QEMUs' answers. */
export interface RecoveryPlan {
  stop: SideName[];
  resume: SideName | null;
  outcome: RecoveryOutcome;
  runningOn: SideName | null;
  notes: string[];
  attention: (Omit<RecoveryAttention, 'pausedOn' | 'unknown'> & { pausedOn: SideName | null }) | null;
}

const POSTCOPY: MigrationStatus[] = ['postcopy-active', 'postcopy-paused', 'postcopy-recover', 'postcopy-recover-setup', 'colo'];

const atOrAfterSwitchover = (state: string) =>
  MIGRATION_PHASES.indexOf(state as (typeof MIGRATION_PHASES)[number]) >= MIGRATION_PHASES.indexOf('switchover');

/**
 * Whether the destination may have run guest code; with why. A destination still in `inmigrate`
 * never got its whole stream; one QEMU says runs, did. Otherwise the journal says: the job writes
 * destinationResumed before its `cont`. An entry from before that field (an engine that started
 * destinations unpaused) is read as "ran" once the source completed or the job reached the switchover.
 */
function journalSaysDestinationRan(entry: JournalEntry, src: CopyState, dst: CopyState): { ran: boolean; why: string } {
  const srcMigration = src.kind === 'alive' ? src.migration : null;
  if (dst.kind === 'alive' && dst.running) return { ran: true, why: `QEMU on the destination says it runs ("${dst.runstate}")` };
  if (dst.kind === 'alive' && dst.runstate === 'inmigrate') return { ran: false, why: 'the destination was still waiting for its stream (inmigrate)' };
  // QEMU keeps its last migration's status: none means this QEMU never sent the guest anywhere.
  if (src.kind === 'alive' && (srcMigration === null || srcMigration === 'none')) return { ran: false, why: 'the source QEMU never started a migration' };
  if (dst.kind === 'alive' && dst.runstate === 'paused' && entry.destinationResumed !== undefined && !entry.destinationPaused) {
    return { ran: false, why: 'the destination stands paused where its stream left it: a destination started with -S runs once resumed, and MigLab never paused it, so it never ran' };
  }
  if (entry.destinationResumed === true) return { ran: true, why: 'the stopped engine had resumed the destination' };
  if (entry.destinationResumed === false) return { ran: false, why: 'the destination was started paused and never resumed' };
  if (srcMigration === 'completed' || atOrAfterSwitchover(entry.state)) {
    return { ran: true, why: 'an older engine started destinations unpaused and the stream may have completed' };
  }
  return { ran: false, why: 'an older engine stopped before the switchover and the source never completed' };
}

const label = (v: CopyState) => (v.kind === 'alive' ? `"${v.runstate}"` : v.kind === 'gone' ? `gone (${v.exit})` : `unknown (${v.why})`);

/**
 * libvirt's rules as a table over what both QEMUs said. Pure: the caller asked, this decides,
 * the caller acts (see recoverMigration).
 */
export function decideRecovery(entry: JournalEntry, src: CopyState, dst: CopyState): RecoveryPlan {
  const C = src.kind === 'alive' ? src.migration : null;
  const plan: RecoveryPlan = { stop: [], resume: null, outcome: 'lost', runningOn: null, notes: [], attention: null };
  const rerun = (side: string) => `run "miglab recover" on this lab (or open it again) once ${side} answers`;
  const attention = (reason: string, pausedOn: SideName | null, settle: string, runningOn: SideName | null = null) => {
    plan.outcome = 'needs-attention';
    plan.runningOn = runningOn;
    plan.attention = { reason, pausedOn, settle };
    return plan;
  };
  if (C && POSTCOPY.includes(C)) {
    return attention(`the source is in post-copy ("${C}"): each host holds part of the guest`, null, 'MigLab does not run post-copy: settle it with QMP on both QEMUs');
  }
  if (C && MIGRATION_IN_FLIGHT.includes(C)) {
    // recoverMigration cancels first; a stream that will not end leaves both as they are.
    return attention(`the source's migration did not end after migrate_cancel (still "${C}")`, null, rerun(entry.from));
  }
  const dRan = journalSaysDestinationRan(entry, src, dst);
  plan.notes.push(dRan.why);
  if (entry.rollback && src.kind === 'alive' && dst.kind !== 'unknown') {
    // The stopped job had decided to take the guest back: finish what it began.
    if (dst.kind === 'alive') plan.stop.push('destination');
    if (!src.running) plan.resume = 'source';
    plan.notes.push('a rollback was under way: finished it');
    plan.outcome = 'rolled-back';
    plan.runningOn = 'source';
    return plan;
  }
  // The rest is the job's own rule book (copies.ts), fed with what the journal and QEMUs say.
  const d = decideCopies({
    source: src,
    destination: dst,
    destinationResumed: entry.destinationResumed ?? dRan.ran,
    destinationRan: dRan.ran,
    // A destination out of inmigrate (paused, or its incoming completed) has the whole guest.
    sourceCompleted: C === 'completed' || (dst.kind === 'alive' && (dst.migration === 'completed' || (!dst.running && dst.runstate !== 'inmigrate'))),
    destinationCrashed: false,
    rollbackAllowed: false,
    rollbackRequested: false,
  });
  plan.notes.push(d.why);
  const rerunTo = rerun(entry.to);
  switch (d.keep) {
    case 'source':
      if (d.stopDestination && dst.kind === 'alive') plan.stop.push('destination');
      if (d.resumeSource) plan.resume = 'source';
      plan.outcome = dst.kind === 'alive' ? 'rolled-back' : 'source-kept';
      plan.runningOn = 'source';
      if (C === 'completed' && !dRan.ran) plan.notes.push('the source had sent the whole guest, but the destination never ran: the source takes it back, so nothing is lost');
      if (dst.kind === 'unknown') {
        // It never ran and cannot run by itself (paused, never resumed): the source may run now,
        // but the copy stays until its host answers and it is stopped.
        return attention(`the destination on ${entry.to} cannot be asked (${dst.why}); it never ran, so the source runs`, null, `${rerunTo}: its paused copy is then stopped`, 'source');
      }
      return plan;
    case 'destination':
      if (d.stopSource && src.kind === 'alive') plan.stop.push('source');
      if (d.resumeDestination && !(dst.kind === 'alive' && dst.running)) plan.resume = 'destination';
      if (src.kind === 'unknown') {
        return attention(`the destination runs the guest but the source on ${entry.from} cannot be asked (${src.why})`, null, `${rerun(entry.from)}: its copy is then stopped`, 'destination');
      }
      plan.outcome = 'completed';
      plan.runningOn = 'destination';
      return plan;
    case 'lost':
      if (d.stopDestination && dst.kind === 'alive') plan.stop.push('destination');
      plan.notes.push(`no copy holds the whole guest (source: ${label(src)}; destination: ${label(dst)})`);
      return plan;
    case 'attention': {
      const side = d.unknown[0];
      if (side) {
        const pausedOn = d.pausedOn ?? (side === 'destination' && src.kind === 'alive' && !src.running ? 'source' : null);
        return attention(d.why, pausedOn, rerun(side === 'source' ? entry.from : entry.to), src.kind === 'alive' && src.running ? 'source' : null);
      }
      const settle = d.pausedOn === 'source'
        ? `the guest ran on ${entry.to} after it left ${entry.from}, so resuming the paused source goes back in time` +
          (dst.kind === 'alive' ? ` (and ${entry.to} still holds its copy, QEMU "${dst.runstate}")` : '') +
          `: run "miglab recover LAB.yaml --resume-source ${entry.guest}" to take it back, or stop it to give the guest up`
        : `send QMP "cont" to ${entry.guest} on ${entry.to} if its guest is sound, or stop it`;
      return attention(d.why, d.pausedOn ?? (dst.kind === 'alive' ? 'destination' : null), settle);
    }
  }
}


/** Finds the journalled copy on its host: the host's own guest, or one adopted from the dead engine's folder. */
async function findCopy(host: Host | undefined, entry: JournalEntry, copy: JournalCopy | null | undefined, side: SideName): Promise<{ guest: Guest } | { view: CopyState }> {
  const name = entry.guest;
  const hostName = side === 'source' ? entry.from : entry.to;
  if (!host) return { view: { kind: 'unknown', why: `host ${hostName} is not in this lab` } };
  const about = host.describe();
  if (about.connection !== 'connected') {
    return { view: { kind: 'unknown', why: `agent ${host.name} is ${about.connection}` } };
  }
  const have = host.guest(name);
  if (have) return { guest: have };
  if (about.outlivesEngine) return { view: { kind: 'gone', exit: `agent ${host.name} runs no guest "${name}"` } };
  if (copy?.runtimeDir && host.adoptGuestFrom) {
    try {
      const adopted = await host.adoptGuestFrom(copy.runtimeDir, name);
      if (adopted) return { guest: adopted };
      return { view: { kind: 'gone', exit: `no QEMU of "${name}" runs from ${copy.runtimeDir} any more` } };
    } catch (err) {
      return { view: { kind: 'unknown', why: `its QEMU in ${copy.runtimeDir} did not answer: ${(err as Error).message}` } };
    }
  }
  if (side === 'destination' && entry.destination === null && entry.destinationResumed === false) {
    return { view: { kind: 'gone', exit: 'no destination had been started' } };
  }
  return { view: { kind: 'unknown', why: `the stopped engine did not record where its local QEMU of "${name}" lived` } };
}

/** Settles one journal entry; never throws for the guest's sake (the report says what it found). */
export async function recoverMigration(entry: JournalEntry, hosts: Host[], opts: RecoveryOptions = {}): Promise<RecoveryReport> {
  const timeoutMs = opts.queryTimeoutMs ?? 3000;
  const report: RecoveryReport = {
    id: entry.id, guest: entry.guest, from: entry.from, to: entry.to, lastPhase: entry.state,
    qemuStatus: null, outcome: 'lost', runningOn: null, actions: [], why: [], attention: null, final: false,
    attempts: (entry.attempts ?? 0) + 1,
  };
  const hostOf = { source: hosts.find((h) => h.name === entry.from), destination: hosts.find((h) => h.name === entry.to) };
  const found = {
    source: await findCopy(hostOf.source, entry, entry.source, 'source'),
    destination: await findCopy(hostOf.destination, entry, entry.destination, 'destination'),
  };
  const observe = async (side: SideName): Promise<CopyState> => {
    const f = found[side];
    return 'view' in f ? f.view : observeCopy(f.guest, { timeoutMs, migration: true });
  };
  let src = await observe('source');
  if (src.kind === 'alive' && src.migration && MIGRATION_IN_FLIGHT.includes(src.migration)) {
    // Still streaming: cancel before stopping anything, then act on QEMU's verdict.
    const srcGuest = (found.source as { guest: Guest }).guest;
    report.actions.push(`the migration was still "${src.migration}" in QEMU: sent migrate_cancel`);
    if (src.migration !== 'cancelling') await migrateCancel(srcGuest.qmp, { timeoutMs }).catch((e: Error) => report.actions.push(`migrate_cancel failed: ${e.message}`));
    const end = performance.now() + (opts.waitActiveMs ?? 15_000);
    while (src.kind === 'alive' && src.migration && MIGRATION_IN_FLIGHT.includes(src.migration) && performance.now() < end) {
      await delay(100);
      src = await observe('source');
    }
  }
  const dst = await observe('destination');
  report.qemuStatus = src.kind === 'alive' ? src.migration : null;
  report.why.push(`asked both QEMUs: source ${label(src)}${report.qemuStatus ? ` (migration "${report.qemuStatus}")` : ''}, destination ${label(dst)}`);
  let plan = decideRecovery(entry, src, dst);
  if (opts.resumeSource?.includes(entry.guest) && plan.outcome === 'needs-attention' && plan.attention?.pausedOn === 'source' && src.kind === 'alive' && dst.kind !== 'unknown') {
    // A person's choice, where the rules would not make it: the guest goes back to the source.
    plan = {
      stop: dst.kind === 'alive' ? ['destination'] : [], resume: src.running ? null : 'source', outcome: 'rolled-back', runningOn: 'source', attention: null,
      notes: [...plan.notes, `taken back to ${entry.from} on request (--resume-source): what the guest did on ${entry.to} is lost`],
    };
  }
  report.why.push(...plan.notes);
  const name = { source: entry.from, destination: entry.to };
  let failed: string | null = null;
  for (const side of plan.stop) {
    const f = found[side];
    if (!('guest' in f)) continue;
    try {
      await f.guest.stop();
      report.actions.push(`stopped the ${side} copy on ${name[side]}`);
    } catch (err) {
      failed = `stopping the ${side} copy on ${name[side]} failed: ${(err as Error).message}`;
      break;
    }
  }
  if (!failed && plan.resume) {
    const f = found[plan.resume] as { guest: Guest };
    try {
      await cont(f.guest.qmp, { timeoutMs });
      const was = plan.resume === 'source' ? src : dst;
      report.actions.push(`resumed the ${plan.resume} copy on ${name[plan.resume]}, which was paused ("${was.kind === 'alive' ? was.runstate : '?'}")`);
    } catch (err) {
      failed = `resuming the ${plan.resume} copy on ${name[plan.resume]} failed: ${(err as Error).message}`;
    }
  }
  if (failed) {
    report.outcome = 'needs-attention';
    report.attention = { reason: failed, pausedOn: null, unknown: [], settle: `run "miglab recover" on this lab (or open it again) to try again` };
    return report;
  }
  report.outcome = plan.outcome;
  report.runningOn = plan.runningOn ? name[plan.runningOn] : null;
  // The copy that runs had booted before it was migrated: nothing else will say it is ready.
  if (plan.runningOn) (found[plan.runningOn] as { guest: Guest }).guest.markReady();
  const unknown = [src.kind === 'unknown' ? entry.from : null, dst.kind === 'unknown' ? entry.to : null].filter((h): h is string => h !== null);
  if (plan.attention) report.attention = { ...plan.attention, pausedOn: plan.attention.pausedOn ? name[plan.attention.pausedOn] : null, unknown };
  if (plan.outcome === 'lost') report.actions.push('no running copy of the guest was found on either host');
  report.final = plan.outcome !== 'needs-attention' && unknown.length === 0;
  return report;
}

/** Whether an entry is this lab's to settle: both hosts in it, and a copy a new engine can reach. */
function ours(entry: JournalEntry, hosts: Host[]): boolean {
  const byName = new Map(hosts.map((h) => [h.name, h]));
  const from = byName.get(entry.from);
  const to = byName.get(entry.to);
  if (!from || !to) return false; // the journal is shared with every other lab of this user
  if (from.describe().outlivesEngine || to.describe().outlivesEngine) return true;
  // Hosts that end with the engine: only entries that recorded their QEMUs' folders (older engines did not).
  return Boolean(entry.source?.runtimeDir || entry.destination?.runtimeDir);
}

/**
 * Settles every migration between these hosts the journal says was in flight. A settled entry is
 * closed (completed or failed); one that needs attention, or a 'lost' while a host did not
 * answer, keeps its state so that the next engine tries again, with the report and attempt count.
 */
export async function recoverInterruptedMigrations(hosts: Host[], journal: MigrationJournal, opts: RecoveryOptions = {}): Promise<RecoveryReport[]> {
  const reports: RecoveryReport[] = [];
  const wanted = (e: JournalEntry) => !opts.guests || opts.guests.includes(e.guest);
  for (const entry of (await journal.unfinished()).filter((e) => ours(e, hosts) && wanted(e))) {
    const r = await recoverMigration(entry, hosts, opts);
    reports.push(r);
    const state = !r.final ? entry.state : r.outcome === 'completed' ? 'completed' : 'failed';
    await journal.write({ ...entry, state, updatedAt: new Date().toISOString(), recovery: r, attempts: r.attempts });
  }
  return reports;
}
