// What an engine that restarts reports for each migration its predecessor left in flight: the
// journal keeps it with the entry, the CLI and the UI print it. Types and words only, so the
// journal and the front ends need not import recovery itself.
import type { MigrationStatus } from '../qmp/types';

export type RecoveryOutcome =
  /** The destination keeps the guest (it ran, or the source was gone and it held the whole guest). */
  | 'completed'
  /** The destination copy was stopped and the source runs. */
  | 'rolled-back'
  /** No destination copy was found; the source runs. */
  | 'source-kept'
  /** Not decided without a person (or a host that answers): see `attention`. Retried next time. */
  | 'needs-attention'
  /** Neither host has the guest. Final only when both hosts answered (see `final`). */
  | 'lost';

export interface RecoveryAttention {
  reason: string;
  /** The copy left paused on purpose, by host name; null when none is. */
  pausedOn: string | null;
  /** Hosts that could not be asked (or could not be asked about this guest). */
  unknown: string[];
  /** What settles it, in words a person can act on. */
  settle: string;
}

export interface RecoveryReport {
  id: string;
  guest: string;
  from: string;
  to: string;
  /** The last phase the stopped engine wrote. */
  lastPhase: string;
  /** The source QEMU's migration status once it ended (after a migrate_cancel if it still streamed). */
  qemuStatus: MigrationStatus | null;
  outcome: RecoveryOutcome;
  runningOn: string | null;
  /** What the new engine did, in order, in words. */
  actions: string[];
  /** What it found and why it decided so: both QEMUs' answers, then the rule that applied. */
  why: string[];
  attention: RecoveryAttention | null;
  /** The journal entry is closed: false for 'needs-attention' and for 'lost' while a host did not answer. */
  final: boolean;
  /** Engines that have tried to settle this entry, this one included. */
  attempts: number;
}

/** One line for people: the guest, the route, where the stopped engine was, and what became of it. */
export function describeRecovery(r: RecoveryReport): string {
  const att = r.attention ? `; needs attention: ${r.attention.reason}; to settle: ${r.attention.settle}` : '';
  return `${r.guest} (${r.from} -> ${r.to}, stopped in ${r.lastPhase}): ${r.outcome}${r.runningOn ? `, runs on ${r.runningOn}` : ''}; ${r.actions.join('; ')}${att}`;
}
