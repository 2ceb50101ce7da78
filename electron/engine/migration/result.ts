// The job's result, built in one place from what the job measured and decided: QEMU's figures
// (query-migrate at the end), the guest's (heartbeats) and the wire's (network report, link).
import type { MigrationInfo } from '../qmp';
import type { FailureKind, MigrationOutcome, MigrationResult } from './types';

/** What the job hands over: the result's own fields, plus what the builder derives the rest from. */
export type ResultParts = Pick<
  MigrationResult,
  | 'id' | 'guest' | 'from' | 'to' | 'reason' | 'qemuMessage' | 'guestDowntimeMs' | 'passes' | 'phases' | 'checks'
  | 'prediction' | 'runningOn' | 'attention' | 'sourceKept' | 'rolledBackMs' | 'destinationRunningAtMs' | 'resumedAtMs'
  | 'destinationConsoleTail' | 'network' | 'tls' | 'link' | 'downtimePolicy' | 'strategy'
> & {
  outcome: MigrationOutcome;
  failure: FailureKind | null;
  /** QEMU's last query-migrate on the source: RAM, times and downtime come from it. */
  info: MigrationInfo | null;
  wallTimeMs: number;
};

const round1 = (ms: number | null) => (ms === null ? null : Math.round(ms * 10) / 10);

export function buildResult(p: ResultParts): MigrationResult {
  const ram = p.info?.ram;
  const completed = p.outcome === 'completed';
  return {
    id: p.id,
    status: p.outcome,
    guest: p.guest,
    from: p.from,
    to: p.to,
    reason: p.reason,
    qemuMessage: p.qemuMessage,
    ramBytes: ram?.total ?? null,
    totalTimeMs: p.info?.['total-time'] ?? null,
    setupTimeMs: p.info?.['setup-time'] ?? null,
    // QEMU's downtime is that of a switchover that happened: only a completed migration has one.
    downtimeMs: completed ? (p.info?.downtime ?? null) : null,
    guestDowntimeMs: completed ? p.guestDowntimeMs : null,
    transferredBytes: ram?.transferred ?? null,
    passes: p.passes,
    phases: p.phases.map((s) => ({ ...s })),
    checks: p.checks,
    prediction: p.prediction,
    wallTimeMs: Math.round(p.wallTimeMs),
    runningOn: p.runningOn,
    attention: p.attention,
    sourceKept: p.sourceKept,
    rolledBackMs: round1(p.rolledBackMs),
    destinationRunningAtMs: completed ? round1(p.destinationRunningAtMs) : null,
    resumedAtMs: completed ? round1(p.resumedAtMs) : null,
    failure: completed ? null : p.failure,
    destinationConsoleTail: completed ? null : p.destinationConsoleTail,
    network: p.network,
    tls: p.tls,
    link: p.link,
    downtimePolicy: p.downtimePolicy,
    ...(p.strategy ? { strategy: p.strategy } : {}),
  };
}
