import type { LinkProfile, LinkRelayStats } from '../network/link-profile';
// The migration's typed event stream and result: one contract for the CLI, the app and the web
// front end. Every figure says where it came from (QEMU, the guest, the wire).
import type { MigrationStatus } from '../qmp';
import type { StrategyName } from './strategies/strategy';

/**
 * The phases of one migration job, in order (after libvirt's Begin/Prepare/Perform/Finish/Confirm).
 * Terminal: completed, failed, cancelled.
 */
export const MIGRATION_PHASES = [
  'preflight',   // checks; nothing started yet                 failure: nothing to undo
  'prepare',     // destination QEMU started paused: -S -incoming defer
  'configure',   // capabilities and parameters on both sides
  'listen',      // destination migrate-incoming on a port
  'migrate',     // source `migrate` sent
  'monitor',     // pre-copy passes under way
  'switchover',  // source stopped: last pages and device state, until the source says completed
  'confirm',     // destination resumed (`cont`), running, its heartbeats back; source kept keepSourceMs
  'cleanup',     // source QEMU quit
] as const;
// Each phase's failure action is in the orchestrator's phase table (PHASES), where the compiler
// demands one per phase.

export type MigrationPhase = (typeof MIGRATION_PHASES)[number];
/**
 * needs-attention: no copy could be chosen safely (a side that may run the guest did not answer,
 * or the destination failed after it ran): what runs and what stands paused is in `attention`.
 */
/**
 * not-converged: the downtime policy gave up (what remained stopped shrinking, and its last step
 * did not help); QEMU's migration was cancelled and the guest runs on its source.
 */
export type MigrationOutcome = 'completed' | 'failed' | 'cancelled' | 'not-converged' | 'needs-attention';
export const MIGRATION_OUTCOMES: readonly MigrationOutcome[] = ['completed', 'failed', 'cancelled', 'not-converged', 'needs-attention'];
export type JobState = MigrationPhase | MigrationOutcome;

export type CheckStatus = 'pass' | 'warn' | 'fail';

export interface PreflightCheck {
  name: string;
  status: CheckStatus;
  /** A sentence a student understands. */
  message: string;
}

export interface MigrationOptions {
  /** max-bandwidth, in MB/s (10^6 bytes). QEMU's default of 128 MiB/s is never left implicit. */
  bandwidthMBps: number;
  /** downtime-limit, ms. */
  downtimeLimitMs: number;
  /** Extra capabilities (name -> on/off); each must be offered by both QEMUs. `events` is always on. */
  capabilities: Record<string, boolean>;
  /** query-migrate sampling interval, ms (20..1000). */
  sampleIntervalMs: number;
  /** Go on despite pre-flight warnings (fails always block). */
  acceptWarnings: boolean;
  /**
   * After the destination runs the guest, how long the paused source is kept before it quits, so
   * that a diskless guest can be taken back (rollback, or automatically if the destination
   * crashes: the guest then goes back in time by the destination's run time). null: MigLab's
   * policy, 3000 ms for a diskless guest under TCG on a QEMU older than 10 (whose destinations
   * can crash seconds after they arrive), else 0.
   */
  keepSourceMs: number | null;
  /** How often the lab network's probe pings the guest during the migration, ms. */
  probeIntervalMs: number;
  /** Encrypt the stream with QEMU's TLS, with certificates from the lab CA. */
  tls: boolean;
  /**
   * Link emulation: a relay on the destination shapes the stream (bandwidth, latency, loss) and
   * can be cut mid-migration. null: the source connects to the destination QEMU directly.
   */
  link: Partial<LinkProfile> | null;
  /**
   * How downtime-limit moves while the migration cannot converge (migration/downtime-policy.ts).
   * null: 'ramp' from 100 ms (as oVirt does), or 'fixed' when downtimeLimitMs was given.
   */
  downtimePolicy: DowntimePolicyName | null;
  /**
   * Before anything starts, measure the guest's dirty rate on its QEMU for this long (calc-dirty-rate,
   * 50..60000 ms) and say in pre-flight whether pre-copy can converge. null: not measured.
   */
  measureDirtyRateMs: number | null;
  /**
   * The convergence strategy (migration/strategies/): its capabilities are switched on and its
   * parameters set before migrate. null: plain pre-copy.
   */
  strategy: { name: StrategyName; params?: Record<string, unknown> } | null;
}

export const DEFAULT_MIGRATION_OPTIONS: MigrationOptions = {
  bandwidthMBps: 1000,
  downtimeLimitMs: 300,
  capabilities: {},
  sampleIntervalMs: 100,
  acceptWarnings: true,
  keepSourceMs: null,
  probeIntervalMs: 20,
  tls: false,
  link: null,
  downtimePolicy: null,
  measureDirtyRateMs: null,
  strategy: null,
};

/**
 * One query-migrate sample on the source. Bytes and bytes/s; ms on the job's clock. A figure QEMU
 * did not report is null ("unknown"), never 0: a 0 here is a 0 QEMU measured.
 */
export interface MigrationSample {
  atMs: number;
  status: MigrationStatus;
  transferredBytes: number | null;
  remainingBytes: number | null;
  totalBytes: number | null;
  /** QEMU's dirty-pages-rate x page size. */
  dirtyRateBps: number | null;
  /** QEMU's mbps, as bytes/s. */
  throughputBps: number | null;
  expectedDowntimeMs: number | null;
  /** QEMU reports it only while auto-converge is on. */
  cpuThrottlePercent: number | null;
  /** QEMU's dirty-sync-count: the pass QEMU is in. */
  pass: number | null;
  /** QEMU's xbzrle-cache, while xbzrle is on: delta bytes, cache misses, overflows, encoding rate. */
  xbzrle?: { bytes: number; cacheMissRate: number; encodingRate: number; overflow: number; cacheSize: number } | null;
  /** QEMU's ram.multifd-bytes: what went over the multifd channels; null when QEMU does not say. */
  multifdBytes?: number | null;
}

/**
 * One pre-copy pass, delimited by QEMU's MIGRATION_PASS events. Its figures are differences of
 * QEMU's counters at both ends; null where a query at either end failed or lacked the counter.
 */
export interface MigrationPass {
  pass: number;
  startMs: number;
  durationMs: number;
  bytes: number | null;
  normalPages: number | null;
  zeroPages: number | null;
  dirtyRateBps: number | null;
  throughputBps: number | null;
}

export type Prediction =
  | { kind: 'unknown'; reason: string }
  | { kind: 'eta'; etaMs: number; passesLeft: number; reason: string }
  | { kind: 'will-not-converge'; reason: string; advice: string[] };

export type FailureKind =
  | 'preflight'
  | 'cancelled'
  /** The downtime policy ended a migration that stopped making progress. */
  | 'not-converged'
  | 'destination-start'
  | 'migration'
  /** The guest ran on the destination, then crashed or hung there. */
  | 'destination-crashed'
  /** A QEMU that may run the guest did not answer, so MigLab could not choose a copy. */
  | 'unreachable'
  /** The source QEMU ended before the destination had the whole guest. */
  | 'source-crashed'
  /** Taken back to the source on request, after the destination ran (keepSourceMs). */
  | 'rolled-back'
  | 'internal';

/** A MAC the switch saw on a new port, and the frame that showed it there. */
export interface NetworkMacMove {
  mac: string;
  fromHost: string;
  toHost: string;
  fromPort: number;
  toPort: number;
  atMs: number;
  cause: 'rarp' | 'gratuitous-arp' | 'traffic';
}

export interface ProbeSample {
  seq: number;
  sentAtMs: number;
  /** null: no reply within the probe's loss timeout. */
  rttMs: number | null;
}

/** The network remap of one migration, as the lab switch and its probe saw it on the wire. */
export interface MigrationNetworkReport {
  mac: string;
  ip: string | null;
  macMoves: NetworkMacMove[];
  /** RARP frames from the guest's MAC after the switchover (QEMU's announce-self rounds). */
  announceFrames: number;
  announceAtMs: number[];
  /**
   * How many rounds the destination QEMU was set to send: its announce-rounds, as
   * query-migrate-parameters reported it; null when it could not be asked or did not say.
   */
  expectedAnnounceFrames: number | null;
  probe: { target: string; intervalMs: number; sent: number; received: number; maxGapMs: number | null } | null;
  /** The longest run without probe replies: the migration's downtime as the network saw it. */
  networkDowntimeMs: number | null;
  /** The source's switch port was retired once the source QEMU quit. */
  oldPortRetired: boolean | null;
}

export interface PhaseSpan {
  name: MigrationPhase;
  startMs: number;
  endMs: number | null;
}

/** The downtime policies MigLab knows (see migration/downtime-policy.ts). */
export type DowntimePolicyName = 'ramp' | 'proxmox' | 'nova' | 'fixed';

/** One act of the downtime policy, at the end of a pass. */
export interface DowntimeStep {
  /** The pass that ended without progress (QEMU's MIGRATION_PASS numbering). */
  pass: number;
  /** 'raise': downtime-limit set to `downtimeLimitMs`; 'end': the migration ended as not-converged. */
  action: 'raise' | 'end';
  downtimeLimitMs: number;
  /** What remained at that pass boundary (query-migrate's ram.remaining), bytes. */
  remainingBytes: number | null;
  /** In words: what stalled, and what the policy did about it. */
  why: string;
}

/** The policy a migration ran under, and what it did. */
export interface DowntimePolicyReport {
  name: DowntimePolicyName;
  /** One line for people: where it starts, how it raises the limit, when it gives up. */
  description: string;
  startMs: number;
  steps: DowntimeStep[];
}

export interface MigrationResult {
  id: string;
  status: MigrationOutcome;
  guest: string;
  from: string;
  to: string;
  /** Why it failed or was cancelled, in plain language; null when completed. */
  reason: string | null;
  /** QEMU's own message (error-desc, stderr), when there is one. */
  qemuMessage: string | null;
  /** The guest's RAM as QEMU counted it (query-migrate's ram.total); null when QEMU did not say. */
  ramBytes: number | null;
  totalTimeMs: number | null;
  setupTimeMs: number | null;
  /** Downtime as QEMU reports it. */
  downtimeMs: number | null;
  /** The longest gap between the guest's heartbeats as they reached the host; null without labload. */
  guestDowntimeMs: number | null;
  transferredBytes: number | null;
  passes: MigrationPass[];
  phases: PhaseSpan[];
  checks: PreflightCheck[];
  prediction: Prediction | null;
  /** Wall time of the whole job, ms. */
  wallTimeMs: number;
  /** Where the guest runs now; null: nowhere (see attention). */
  runningOn: string | null;
  /** For needs-attention (and a completed migration that left a paused source): what to do. */
  attention: MigrationAttention | null;
  /** How the paused source was kept after the destination ran (keepSourceMs), and why; null: not kept. */
  sourceKept: { ms: number; why: string } | null;
  /**
   * The guest went back to the source after running on the destination: how long it ran there
   * (what it did in that time is lost). null: it did not go back.
   */
  rolledBackMs: number | null;
  /** The convergence strategy the migration ran with, and its parameters as given. */
  strategy?: { name: StrategyName; params: Record<string, unknown> };
  /** The downtime policy and every step it took; null for a job that never reached `migrate`. */
  downtimePolicy: DowntimePolicyReport | null;
  /** Job time when QEMU on the destination said it runs the guest (RESUME, or query-status). */
  destinationRunningAtMs: number | null;
  /** Job time when the guest was seen running on the destination (its first heartbeat there). */
  resumedAtMs: number | null;
  /** Why a failure happened, as a category a program can act on. */
  failure: FailureKind | null;
  /**
   * For a guest that crashed on the destination ("destination-crashed"): the last lines the
   * destination's console printed, where a kernel oops or panic shows; null otherwise.
   */
  destinationConsoleTail: string | null;
  /** The network remap; null for a guest without a NIC on the lab switch. */
  network: MigrationNetworkReport | null;
  /** The stream was encrypted with QEMU's TLS. */
  tls: boolean;
  /** The emulated link's last counters; null without link emulation. */
  link: LinkRelayStats | null;
}

export interface MigrationAttention {
  /** What happened, in plain language. */
  reason: string;
  /** Hosts where a copy stands paused (nothing runs it). */
  pausedOn: string[];
  /** Hosts whose QEMU did not answer. */
  unknown: string[];
  /** What settles it: the command or button, and what it does. */
  settle: string;
}

export type MigrationEvent =
  | { type: 'phase'; atMs: number; phase: JobState; previous: JobState | null }
  | { type: 'check'; atMs: number; check: PreflightCheck }
  | { type: 'sample'; atMs: number; sample: MigrationSample }
  | { type: 'pass'; atMs: number; pass: MigrationPass }
  | { type: 'status'; atMs: number; status: MigrationStatus }
  | { type: 'prediction'; atMs: number; prediction: Prediction }
  | { type: 'parameters'; atMs: number; bandwidthMBps: number; downtimeLimitMs: number }
  /** The downtime policy acted at a pass boundary: raised the limit, or ended the migration. */
  | { type: 'downtime-step'; atMs: number; step: DowntimeStep }
  /** The link-emulation relay: its profile, its counters, whether the cable is cut. */
  | { type: 'link'; atMs: number; stats: LinkRelayStats }
  | { type: 'heartbeat-gap'; atMs: number; gapMs: number }
  /** The destination runs; the paused source is kept `ms` for a rollback (keepSourceMs), and why. */
  | { type: 'source-kept'; atMs: number; ms: number; why: string }
  | { type: 'mac-move'; atMs: number; move: NetworkMacMove }
  | { type: 'announce'; atMs: number; mac: string; host: string; port: number; count: number }
  /** Probe results since the last such event (about every 100 ms), and the running totals. */
  | { type: 'probe'; atMs: number; samples: ProbeSample[]; sent: number; received: number }
  /** The outcome, as soon as it is final (the destination runs and the source has quit). */
  | { type: 'result'; atMs: number; result: MigrationResult }
  /** The same result with the figures that settle later (announce frames, the probe's gap). */
  | { type: 'result-update'; atMs: number; result: MigrationResult };
