// Which copy of a guest to keep, libvirt's way: before any copy is stopped or resumed, both QEMUs
// are asked (query-status, query-migrate). A side that does not answer in time is "unknown",
// never "gone": only an exit QEMU's host saw is gone. decideCopies() is the one rule book, used
// by the job when a phase fails and tested case by case (unit migration-copies).
import type { Guest } from '../hosts/host';
import { describeExit } from '../qemu/process';
import { QmpCommandError, queryMigrate, queryStatus, type MigrationStatus } from '../qmp';

export type CopyState =
  | { kind: 'gone'; exit: string }
  | { kind: 'unknown'; why: string }
  | {
      kind: 'alive';
      /** QEMU's runstate: running, paused, inmigrate, postmigrate, finish-migrate, guest-panicked... */
      runstate: string;
      running: boolean;
      /** query-migrate's status, when it was asked. */
      migration: MigrationStatus | null;
    };

const EXIT_GRACE_MS = 300;

/** Asks one QEMU where it stands; never throws. `timeoutMs` bounds the wait for an answer. */
export async function observeCopy(guest: Guest, opts: { timeoutMs: number; migration?: boolean }): Promise<CopyState> {
  if (guest.exit) return { kind: 'gone', exit: describeExit(guest.exit) };
  const ac = new AbortController();
  const timer = new Promise<never>((_, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer within ${opts.timeoutMs} ms`)), opts.timeoutMs);
    ac.signal.addEventListener('abort', () => clearTimeout(t));
  });
  const exited = guest.exited.then((exit): CopyState => ({ kind: 'gone', exit: describeExit(exit) }));
  const ask = (async (): Promise<CopyState> => {
    const [st, mig] = await Promise.all([
      queryStatus(guest.qmp, { timeoutMs: opts.timeoutMs }),
      opts.migration ? queryMigrate(guest.qmp, { timeoutMs: opts.timeoutMs }) : Promise.resolve(null),
    ]);
    return { kind: 'alive', runstate: st.status, running: st.running, migration: mig ? (mig.status ?? 'none') : null };
  })();
  try {
    return await Promise.race([ask, exited, timer]);
  } catch (err) {
    ask.catch(() => {});
    // A QEMU that just died closes its socket before its exit is reaped: look again, briefly.
    if (!(err instanceof QmpCommandError)) await Promise.race([guest.exited, new Promise((r) => setTimeout(r, EXIT_GRACE_MS))]);
    if (guest.exit) return { kind: 'gone', exit: describeExit(guest.exit) };
    // QEMU answered with an error: it is there, but its state is still not known.
    const why = err instanceof QmpCommandError ? `QEMU refused the question: ${err.message}` : (err as Error).message;
    return { kind: 'unknown', why };
  } finally {
    ac.abort();
  }
}

export interface CopyFacts {
  source: CopyState;
  /** null: no destination QEMU was started (or it was never handed to the job). */
  destination: CopyState | null;
  /** `cont` was sent to the destination: from then on it may run guest code. */
  destinationResumed: boolean;
  /** The destination was seen running the guest (RESUME, or query-status said so). */
  destinationRan: boolean;
  /** The source QEMU said `completed`: the destination has the guest's whole state. */
  sourceCompleted: boolean;
  /** The guest crashed on the destination (panic, oops, silence) whatever its QEMU says. */
  destinationCrashed: boolean;
  /** The guest may be taken back to the paused source after the destination ran (keepSourceMs). */
  rollbackAllowed: boolean;
  /** Someone asked to take it back (within keepSourceMs). */
  rollbackRequested: boolean;
}

export type Side = 'source' | 'destination';

export type CopyDecision =
  /** The source keeps (or takes back) the guest. */
  | { keep: 'source'; stopDestination: boolean; resumeSource: boolean; wentBackInTime: boolean; why: string }
  /** The destination holds the guest (or will, once resumed). */
  | { keep: 'destination'; resumeDestination: boolean; stopSource: boolean; why: string }
  /** A person must choose: a side that may run the guest did not answer, or only a paused copy is left. */
  | { keep: 'attention'; pausedOn: Side | null; unknown: Side[]; why: string }
  /** No copy of the guest's whole state is left. */
  | { keep: 'lost'; stopDestination: boolean; why: string };

const alive = (c: CopyState | null): c is Extract<CopyState, { kind: 'alive' }> => c?.kind === 'alive';

/**
 * Whether the destination may have run guest code: seen running, running now, or resumed and not
 * provably gone before it ran (a destination that exited without a RESUME never ran).
 */
export function destinationMayHaveRun(f: CopyFacts): boolean {
  if (f.destinationRan) return true;
  const d = f.destination;
  if (alive(d)) return d.running;
  if (d?.kind === 'unknown') return f.destinationResumed;
  return false;
}

/** The rule book. Pure: the caller asked both QEMUs (and cancelled a stream in flight) first. */
export function decideCopies(f: CopyFacts): CopyDecision {
  const src = f.source;
  const dst = f.destination;
  if (!destinationMayHaveRun(f)) {
    // The destination never ran: taking the guest back costs nothing (libvirt's Confirm with failure).
    if (alive(src)) {
      return {
        keep: 'source', stopDestination: dst !== null && dst.kind !== 'gone', resumeSource: !src.running, wentBackInTime: false,
        why: 'the destination never ran the guest, so the source keeps it',
      };
    }
    if (src.kind === 'gone') {
      if (f.sourceCompleted && alive(dst)) {
        return { keep: 'destination', resumeDestination: true, stopSource: false, why: 'the source QEMU ended after it had sent the whole guest: the destination holds it' };
      }
      if (f.sourceCompleted && dst?.kind === 'unknown') {
        return { keep: 'attention', pausedOn: null, unknown: ['destination'], why: 'the source QEMU ended after it had sent the whole guest, and the destination does not answer' };
      }
      return { keep: 'lost', stopDestination: dst !== null && dst.kind !== 'gone', why: `the source QEMU ended (${src.exit}) before the destination had the whole guest` };
    }
    // The source does not answer: it may run the guest (QEMU restarts it after a failure) or hold
    // it paused. The destination, never resumed, cannot run: keep it paused as it is.
    return {
      keep: 'attention', pausedOn: alive(dst) && f.sourceCompleted ? 'destination' : null, unknown: ['source'],
      why: `the source does not answer (${src.why}), so MigLab cannot tell whether it runs the guest`,
    };
  }
  // The destination may have run: from here the source is never resumed on a guess.
  if (f.rollbackRequested && f.rollbackAllowed && alive(src) && dst?.kind !== 'unknown') {
    return {
      keep: 'source', stopDestination: dst !== null && dst.kind !== 'gone', resumeSource: !src.running, wentBackInTime: true,
      why: 'the guest was taken back to the source on request',
    };
  }
  if (alive(dst) && dst.running && !f.destinationCrashed) {
    return { keep: 'destination', resumeDestination: false, stopSource: src.kind !== 'gone', why: 'the destination runs the guest' };
  }
  if (dst?.kind === 'unknown') {
    return {
      keep: 'attention', pausedOn: alive(src) ? 'source' : null, unknown: ['destination'],
      why: `the destination does not answer (${dst.why}) and may run the guest, so the source stays paused`,
    };
  }
  // The destination ran and then stopped running (it crashed, exited or stands paused).
  if (alive(src) && src.running) {
    // QEMU resumed the source itself (a migration that failed): that copy runs already.
    return { keep: 'source', stopDestination: dst !== null && dst.kind !== 'gone', resumeSource: false, wentBackInTime: false, why: 'QEMU had resumed the source itself' };
  }
  const how = dst?.kind === 'gone' ? `ended (${dst.exit})` : alive(dst) && dst.running ? 'crashed while its QEMU runs on' : alive(dst) ? `stopped running (QEMU says "${dst.runstate}")` : 'is gone';
  if (alive(src) && f.rollbackAllowed) {
    return {
      keep: 'source', stopDestination: dst !== null && dst.kind !== 'gone', resumeSource: !src.running, wentBackInTime: true,
      why: `the destination ran the guest and then ${how}; the source was kept for this, so the guest goes back to it`,
    };
  }
  if (alive(src)) {
    return {
      keep: 'attention', pausedOn: 'source', unknown: [],
      why: `the destination ran the guest and then ${how}; the source's copy is older, so it stays paused until someone chooses it`,
    };
  }
  if (src.kind === 'unknown') {
    return { keep: 'attention', pausedOn: null, unknown: ['source'], why: `the destination ran the guest and then ${how}, and the source does not answer (${src.why})` };
  }
  return { keep: 'lost', stopDestination: false, why: `the destination ran the guest and then ${how}, and the source QEMU has ended too (${src.exit})` };
}
