// One live migration, phase by phase, on libvirt's rules (src/qemu/qemu_migration.c): the
// destination starts paused and is resumed only after the source says `completed`; the source is
// resumed only while the destination provably never ran; every choice of which copy to keep asks
// both QEMUs first (copies.ts), and a side that does not answer is unknown, never gone.
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Guest, Host } from '../hosts/host';
import type { LinkProfile, LinkRelayStats } from '../network/link-profile';
import type { LabNetwork } from '../network/lab-network';
import {
  announceSelf,
  cont,
  migrateCancel,
  migrateIncoming,
  migrateSetCapabilities,
  migrateSetParameters,
  queryStatus,
  stop as pauseVcpus,
  type QmpEvent,
} from '../qmp';
import { describeExit } from '../qemu/process';
import { tracksTcgWritesExactly } from '../qemu/binary';
import { consoleTail, crashWords, watchGuestCrash, type GuestCrash } from './crash-watch';
import { delay, withTimeout } from '../util/time';
import { decideCopies, destinationMayHaveRun, observeCopy, type CopyDecision, type CopyFacts, type CopyState } from './copies';
import { HeartbeatWatch } from './heartbeat-watch';
import { journalCopy, type JournalEntry, type MigrationJournal } from './journal';
import { parseMigrationOptions } from './limits';
import { LinkWatch } from './link-watch';
import { MigrationNetworkWatch } from './network-watch';
import { runPreflight, startDestination, type PreflightContext, type PreflightOutcome } from './preflight';
import { capabilityRefusal } from './capabilities';
import { buildResult } from './result';
import { DowntimePolicy } from './downtime-policy';
import { STRATEGIES } from './strategies';
import { SourceWatch } from './source-watch';
import { isInFlight } from './status';
import {
  MIGRATION_PHASES,
  type FailureKind,
  type JobState,
  type MigrationAttention,
  type MigrationEvent,
  type MigrationOptions,
  type MigrationOutcome,
  type MigrationPhase,
  type MigrationResult,
  type PhaseSpan,
  type PreflightCheck,
} from './types';

export { InvalidMigrationOptionsError, parseMigrationOptions } from './limits';

export interface MigrationRequest {
  guest: Guest;
  from: Host;
  to: Host;
  options?: Partial<MigrationOptions>;
  /** The guest's dirtying working set, when the lab knows it (labload), for the prediction. */
  workingSetBytes?: number;
  journal?: MigrationJournal;
  /** Give up (cancel) when the migration has not reached its switchover by then. Default 10 minutes. */
  maxDurationMs?: number;
  /** The lab network the guest's NIC is on: the job records the remap and probes the guest. */
  network?: LabNetwork | null;
  /**
   * A destination QEMU started ahead of time for this guest on `to` (to.prepareIncoming, still
   * waiting for its stream): the job uses it instead of starting one, and owns it from then on.
   */
  preparedDestination?: Guest;
  /** How long a question to a QEMU may take before its side counts as unknown. Default 5000 ms. */
  askTimeoutMs?: number;
  /** The lab file, for the commands a needs-attention result names. */
  labFile?: string;
  /** Who asked for options.keepSourceMs, for the result's sourceKept.why (default: the migration). */
  keepSourceAskedBy?: string;
}

/** Ends a phase: thrown inside it, turned into a result by the phase's failure action. */
class JobEnd extends Error {
  constructor(
    readonly outcome: Exclude<MigrationOutcome, 'completed' | 'needs-attention'>,
    reason: string,
    readonly qemuMessage: string | null = null,
    readonly kind: FailureKind = outcome === 'cancelled' ? 'cancelled' : outcome === 'not-converged' ? 'not-converged' : 'migration',
  ) {
    super(reason);
  }
}

/** The destination stopped running the guest before the source was quit: decide as at confirm. */
class DestinationLost extends Error {
  constructor(readonly end: JobEnd) {
    super(end.message);
  }
}

/** Both copies are gone: the destination died just as the source was quit. */
class GuestLost extends Error {
  constructor(readonly end: JobEnd) {
    super(end.message);
  }
}

/**
 * What a phase's failure leaves to undo (libvirt's per-phase failure action):
 * - nothing: no QEMU was started or touched;
 * - stop-destination: the destination never had a stream, the source was never touched;
 * - settle: a stream was (or may have been) under way: ask both QEMUs and decide (copies.ts);
 * - source-left: the destination runs the guest; only quitting the paused source failed.
 */
type FailureAction = 'nothing' | 'stop-destination' | 'settle' | 'source-left';

interface PhaseStep {
  run: (job: MigrationJob) => Promise<void>;
  onFailure: FailureAction;
}

/** How long the destination may take to run after `cont`, and the guest to beat again. */
const RUN_WAIT_MS = 15_000;
/** How long QEMU may take to end a cancelled stream. */
const CANCEL_WAIT_MS = 10_000;
/** Heartbeats come every 50 ms: this long without one while the source is kept is a hang. */
const SILENCE_MS = 500;
/** The source is kept this long by default where destinations may crash after arriving. */
const TCG_OLD_QEMU_KEEP_MS = 3000;

/** QEMU's default max-cpu-throttle: auto-converge's ceiling unless the strategy sets its own. */
const QEMU_MAX_CPU_THROTTLE = 99;

/** How long a failed stream waits to see whether the destination's QEMU has exited. */
const DESTINATION_EXIT_GRACE_MS = 500;

export class MigrationJob extends EventEmitter<{ event: [MigrationEvent] }> {
  /** The phases in order, each with what its failure undoes: the compiler wants one per phase. */
  private static readonly PHASES: Record<MigrationPhase, PhaseStep> = {
    preflight: { run: (j) => j.preflightPhase(), onFailure: 'nothing' },
    prepare: { run: (j) => j.preparePhase(), onFailure: 'stop-destination' },
    configure: { run: (j) => j.configurePhase(), onFailure: 'stop-destination' },
    listen: { run: (j) => j.listenPhase(), onFailure: 'stop-destination' },
    migrate: { run: (j) => j.migratePhase(), onFailure: 'settle' },
    monitor: { run: (j) => j.followSource('stopped'), onFailure: 'settle' },
    switchover: { run: (j) => j.switchoverPhase(), onFailure: 'settle' },
    confirm: { run: (j) => j.confirmPhase(), onFailure: 'settle' },
    cleanup: { run: (j) => j.cleanupPhase(), onFailure: 'source-left' },
  };

  readonly id = randomUUID();
  readonly options: MigrationOptions;

  private readonly t0 = performance.now();
  private readonly startedAtIso = new Date().toISOString();
  private readonly askMs: number;
  private state: JobState | null = null;
  private readonly spans: PhaseSpan[] = [];
  private started = false;
  private dst: Guest | null = null;
  private port: number | null = null;
  private pre: PreflightOutcome | null = null;
  private bandwidthMBps: number;
  private downtimeLimitMs: number;
  private readonly policy: DowntimePolicy;
  /** The policy gave up: a cancel ends the job as not-converged. */
  private notConverged = false;
  /** The job sent `migrate`, so its result names the policy it ran under. */
  private policyRan = false;
  private readonly beats: HeartbeatWatch;
  /** The source QEMU's events, samples, passes and verdict. */
  private readonly src: SourceWatch;
  private readonly linkWatch: LinkWatch;
  private net: MigrationNetworkWatch | null = null;
  /** What is known about the copies: the facts every decision is made from. */
  private readonly facts = { destinationResumed: false, destinationRan: false, sourceCompleted: false };
  private readonly offs: Array<() => void> = [];
  private cancelReason: string | null = null;
  private continueWanted = false;
  private rollbackWanted = false;
  private keep: { ms: number; why: string } | null = null;
  private keepUntil: number | null = null;
  private dstCrash: { words: string; atMs: number } | null = null;
  private stopCrashWatch: (() => void) | null = null;
  private destinationRunningAtMs: number | null = null;
  private resumedAtMs: number | null = null;
  private notes: string[] = [];

  constructor(private readonly req: MigrationRequest) {
    super();
    const options = parseMigrationOptions(req.options);
    // The strategy's capabilities go with the rest, so pre-flight checks both QEMUs offer them.
    const strategy = STRATEGIES[options.strategy?.name ?? 'precopy'];
    this.options = { ...options, capabilities: { ...options.capabilities, ...Object.fromEntries(strategy.capabilities.map((c) => [c, true])) } };
    this.bandwidthMBps = this.options.bandwidthMBps;
    this.policy = new DowntimePolicy(this.options.downtimePolicy, {
      downtimeLimitMs: this.options.downtimeLimitMs,
      downtimeLimitGiven: req.options?.downtimeLimitMs !== undefined,
    });
    this.downtimeLimitMs = this.policy.startMs;
    this.askMs = req.askTimeoutMs ?? 5000;
    this.beats = new HeartbeatWatch(req.guest, (gapMs) => this.send({ type: 'heartbeat-gap', atMs: this.now(), gapMs }));
    this.linkWatch = new LinkWatch(
      this.options.link,
      () => ({ guest: req.guest.name, to: req.to.name, phase: this.state ?? 'its start' }),
      (stats) => this.send({ type: 'link', atMs: this.now(), stats }),
    );
    this.src = new SourceWatch(req.guest, {
      now: () => this.now(),
      send: (ev) => this.send(ev),
      cancelReason: () => this.cancelReason,
      takeContinue: () => {
        const wanted = this.continueWanted;
        this.continueWanted = false;
        return wanted;
      },
      predictionInput: (s) => ({
        bandwidthBps: s.throughputBps !== null && s.throughputBps > 0 ? s.throughputBps : this.bandwidthMBps * 1e6,
        downtimeLimitMs: this.downtimeLimitMs,
        ...(this.req.workingSetBytes !== undefined ? { workingSetBytes: this.req.workingSetBytes } : {}),
        capabilitiesOffered: this.pre?.capabilities ?? [],
        capabilitiesOn: ['events', ...Object.entries(this.options.capabilities).filter(([, v]) => v).map(([k]) => k)],
        ...(s.cpuThrottlePercent !== null ? { throttlePercent: s.cpuThrottlePercent } : {}),
      }),
      onPassBoundary: (pass, remaining) => this.applyPolicy(pass, remaining),
      tick: () => this.linkWatch.report(),
      sampleIntervalMs: this.options.sampleIntervalMs,
      maxDurationMs: req.maxDurationMs ?? 600_000,
      onTimeout: () => {
        if (!this.cancelReason) this.cancel(`The migration did not reach its switchover within ${Math.round((req.maxDurationMs ?? 600_000) / 1000)} s, so MigLab cancelled it.`);
      },
    });
  }

  /** The query-migrate samples so far (a ring). */
  get samples() {
    return this.src.samples;
  }

  /** Time spent in query-migrate round trips, and how many: what sampling costs. */
  get samplingMs(): number {
    return this.src.samplingMs;
  }

  get samplingCount(): number {
    return this.src.samplingCount;
  }

  get phase(): JobState | null {
    return this.state;
  }

  get destination(): Guest | null {
    return this.dst;
  }

  private now(): number {
    return performance.now() - this.t0;
  }

  private send(ev: MigrationEvent): void {
    this.emit('event', ev);
  }

  // ---- the journal ----------------------------------------------------------------------------

  private entry(state: JobState, result: MigrationResult | null, extra: Partial<JournalEntry> = {}): JournalEntry {
    const { guest, from, to } = this.req;
    return {
      id: this.id, guest: guest.name, from: from.name, to: to.name, state, port: this.port,
      startedAt: this.startedAtIso, updatedAt: new Date().toISOString(), result,
      source: journalCopy(from, guest),
      destination: this.dst ? journalCopy(to, this.dst) : null,
      destinationResumed: this.facts.destinationResumed,
      ...this.stickyJournal,
      ...extra,
    };
  }

  /** Flags that, once written, stay in every later entry (a rollback begun, a destination paused). */
  private readonly stickyJournal: Pick<JournalEntry, 'rollback' | 'destinationPaused'> = {};

  private async journal(state: JobState, result: MigrationResult | null = null, extra: Partial<JournalEntry> = {}): Promise<void> {
    if (extra.rollback) this.stickyJournal.rollback = true;
    if (extra.destinationPaused) this.stickyJournal.destinationPaused = true;
    await this.req.journal?.write(this.entry(state, result, extra));
  }

  /** For writes after the decision: a failure is told in the result, it changes nothing. */
  private async journalNoted(state: JobState, result: MigrationResult | null = null, extra: Partial<JournalEntry> = {}): Promise<void> {
    try {
      await this.journal(state, result, extra);
    } catch (err) {
      this.notes.push(`The journal could not be written (${(err as Error).message}), so an engine that restarts will not know of this migration.`);
    }
  }

  /** The one place the job's state changes: closes the phase span, journals, emits. */
  private async transition(next: JobState, atMs = this.now()): Promise<void> {
    const previous = this.state;
    const open = this.spans.at(-1);
    if (open && open.endMs === null) open.endMs = atMs;
    this.state = next;
    if ((MIGRATION_PHASES as readonly string[]).includes(next)) this.spans.push({ name: next as MigrationPhase, startMs: atMs, endMs: null });
    // Journalled before it is told: whoever sees the phase can rely on an engine that restarts knowing it.
    if ((MIGRATION_PHASES as readonly string[]).includes(next)) await this.journal(next);
    this.send({ type: 'phase', atMs, phase: next, previous });
  }

  // ---- controls -------------------------------------------------------------------------------

  /**
   * Asks the job to stop. Accepted until the source is known to be stopping (QEMU's STOP), and
   * while QEMU waits before the switchover; returns whether it was accepted.
   */
  cancel(reason = 'Cancelled by the user'): boolean {
    if (this.state !== null && !['preflight', 'prepare', 'configure', 'listen', 'migrate', 'monitor', 'switchover'].includes(this.state)) return false;
    if (this.src.stopAt !== null && this.src.status !== 'pre-switchover') return false;
    this.cancelReason ??= reason;
    this.src.wakeUp();
    return true;
  }

  /** With pause-before-switchover: lets QEMU go on from pre-switchover (migrate-continue). */
  continueSwitchover(): void {
    if (this.src.status !== 'pre-switchover') {
      throw new Error(`The migration of ${this.req.guest.name} is not waiting before its switchover (QEMU says "${this.src.status}"): Continue applies only there`);
    }
    this.continueWanted = true;
    this.src.wakeUp();
  }

  /** While the paused source is kept (keepSourceMs): takes a diskless guest back to it. */
  rollback(): void {
    if (this.keepUntil === null || this.state !== 'confirm' || performance.now() > this.keepUntil) {
      throw new Error(`The migration of ${this.req.guest.name} keeps no paused source to go back to now (${this.state ?? 'not started'}): a rollback is possible only while the source is kept (keepSourceMs)`);
    }
    this.rollbackWanted = true; // the keep window looks every 50 ms
  }

  /** Changes max-bandwidth while the migration runs (or before it starts). */
  setBandwidth(mbps: number): Promise<void> {
    return this.setParameters({ bandwidthMBps: mbps });
  }

  /** Changes downtime-limit while the migration runs. */
  setDowntimeLimit(ms: number): Promise<void> {
    parseMigrationOptions({ downtimeLimitMs: ms });
    this.policy.override(ms); // a person's choice: the policy steps back
    return this.setParameters({ downtimeLimitMs: ms });
  }

  /** The downtime policy at a pass boundary: a stall raises downtime-limit, or ends the job as not-converged. */
  private applyPolicy(pass: number, remainingBytes: number | null): void {
    const act = this.policy.onPass(pass, remainingBytes, { stillActing: this.throttleStillRising() });
    if (act.kind === 'hold') return;
    this.send({ type: 'downtime-step', atMs: this.now(), step: act.step });
    if (act.kind === 'end') {
      this.notConverged = true;
      this.cancel(`The migration did not converge: ${act.step.why}. (Downtime policy "${this.policy.name}".)`);
      return;
    }
    this.setParameters({ downtimeLimitMs: act.step.downtimeLimitMs }).catch((err: Error) =>
      this.notes.push(`The downtime policy could not raise downtime-limit to ${act.step.downtimeLimitMs} ms: ${err.message}`));
  }

  /** auto-converge is on and QEMU's throttle (last sample) is below the most it may reach. */
  private throttleStillRising(): boolean {
    if (!this.options.capabilities['auto-converge']) return false;
    const params = this.options.strategy?.name === 'auto-converge' ? this.options.strategy.params : undefined;
    const max = typeof params?.maxPercent === 'number' ? params.maxPercent : QEMU_MAX_CPU_THROTTLE;
    const now = this.src.samples.last?.cpuThrottlePercent ?? 0;
    return now < max;
  }

  /** How a cancel ends the job: not-converged when the policy gave up, else cancelled. */
  private get cancelOutcome(): 'cancelled' | 'not-converged' {
    return this.notConverged ? 'not-converged' : 'cancelled';
  }

  private async setParameters(change: Pick<Partial<MigrationOptions>, 'bandwidthMBps' | 'downtimeLimitMs'>): Promise<void> {
    parseMigrationOptions(change); // the same limits as at the start, the same error
    if (change.bandwidthMBps !== undefined) this.bandwidthMBps = change.bandwidthMBps;
    if (change.downtimeLimitMs !== undefined) this.downtimeLimitMs = change.downtimeLimitMs;
    if (this.state && ['configure', 'listen', 'migrate', 'monitor'].includes(this.state)) {
      await migrateSetParameters(this.req.guest.qmp, {
        ...(change.bandwidthMBps !== undefined ? { 'max-bandwidth': Math.round(change.bandwidthMBps * 1e6) } : {}),
        ...(change.downtimeLimitMs !== undefined ? { 'downtime-limit': change.downtimeLimitMs } : {}),
      });
    }
    this.send({ type: 'parameters', atMs: this.now(), bandwidthMBps: this.bandwidthMBps, downtimeLimitMs: this.downtimeLimitMs });
  }

  /** The emulated link: change its profile, pull the cable, or plug it back (with `link` on). */
  link(action: { profile: Partial<LinkProfile> } | 'cut' | 'restore'): Promise<LinkRelayStats> {
    return this.linkWatch.control(action);
  }

  // ---- the run --------------------------------------------------------------------------------

  /** Runs the whole job. Never throws for a migration that fails: the result says why. */
  async run(): Promise<MigrationResult> {
    if (this.started) throw new Error('A migration job runs once: make a new job to migrate again');
    this.started = true;
    for (const phase of MIGRATION_PHASES) {
      const step = MigrationJob.PHASES[phase];
      try {
        await this.transition(phase, phase === 'switchover' ? (this.src.stopAt ?? this.now()) : this.now());
        await step.run(this);
      } catch (err) {
        return this.fail(step.onFailure, err);
      }
    }
    return this.finish('completed', null, { runningOn: this.req.to.name });
  }

  private checkCancel(): void {
    if (this.cancelReason) throw new JobEnd(this.cancelOutcome, this.cancelReason);
  }

  /** What the pre-flight dirty-rate check judges against: what this migration will send, and its limit. */
  private dirtyRateQuestion(ms: number): NonNullable<PreflightContext['measureDirtyRate']> {
    const link = this.options.link?.bandwidthMBps ?? null;
    const linkLimits = link !== null && link < this.bandwidthMBps;
    return {
      ms,
      bandwidthBps: (linkLimits ? link : this.bandwidthMBps) * 1e6,
      bandwidthFrom: linkLimits ? 'the emulated link' : "the migration's max-bandwidth",
      downtimeLimitMs: this.downtimeLimitMs,
      ...(this.req.workingSetBytes !== undefined ? { workingSetBytes: this.req.workingSetBytes } : {}),
    };
  }

  private async preflightPhase(): Promise<void> {
    const { guest, from, to } = this.req;
    this.pre = await runPreflight(
      {
        guest, from, to, capabilities: this.options.capabilities, ownDestination: (g) => g === this.req.preparedDestination,
        ...(this.options.measureDirtyRateMs !== null ? { measureDirtyRate: this.dirtyRateQuestion(this.options.measureDirtyRateMs) } : {}),
      },
      (check) => this.send({ type: 'check', atMs: this.now(), check }),
    );
    this.port = this.pre.port;
    const failed = this.pre.checks.filter((c) => c.status === 'fail');
    if (failed.length) throw new JobEnd('failed', `Pre-flight check failed: ${failed.map((c) => c.message).join(' ')}`, null, 'preflight');
    const warned = this.pre.checks.filter((c) => c.status === 'warn');
    if (warned.length && !this.options.acceptWarnings) {
      throw new JobEnd('failed', `Pre-flight warnings were not accepted: ${warned.map((c) => c.message).join(' ')}`, null, 'preflight');
    }
    this.keep = this.keepPolicy();
    this.checkCancel();
    if (this.req.network && guest.spec.mac) {
      this.net = new MigrationNetworkWatch(this.req.network, guest, this.t0, (ev) => this.send(ev), this.options.probeIntervalMs);
      await this.net.start();
    }
  }

  /** How long the paused source stays after the destination runs, and why (keepSourceMs). */
  private keepPolicy(): { ms: number; why: string } | null {
    const asked = this.options.keepSourceMs;
    if (asked !== null) return asked > 0 ? { ms: asked, why: `${this.req.keepSourceAskedBy ?? 'the migration'} asked to keep the source for ${asked} ms` } : null;
    const to = this.pre?.hosts?.to;
    const from = this.pre?.hosts?.from;
    if (!to || !from || this.req.guest.spec.boot.kind === 'disk') return null;
    const tcg = from.accel.accel === 'tcg' || to.accel.accel === 'tcg';
    const old = !tracksTcgWritesExactly({ major: Number(to.qemu.version.split('.')[0]) });
    if (!tcg || !old) return null;
    return {
      ms: TCG_OLD_QEMU_KEEP_MS,
      why: `under TCG, QEMU ${to.qemu.version} on ${to.name} can crash a guest seconds after it arrives, so the paused source is kept ${TCG_OLD_QEMU_KEEP_MS} ms and takes the guest back if that happens`,
    };
  }

  private async preparePhase(): Promise<void> {
    const { guest, from, to } = this.req;
    const prepared = this.req.preparedDestination;
    if (prepared && !prepared.exit && prepared.state === 'incoming' && to.guest(guest.name) === prepared) {
      this.dst = prepared;
    } else {
      if (prepared && !prepared.exit) await prepared.stop().catch(() => {}); // not usable: not left behind either
      try {
        // Never guest.spec as such: an agent's guest names files that must resolve in a local destination's library.
        this.dst = await startDestination(guest, from, to);
      } catch (err) {
        throw new JobEnd('failed', `The destination QEMU could not be started on ${to.name}: ${(err as Error).message}`, null, 'destination-start');
      }
    }
    this.beats.watchDestination(this.dst);
    // Started with -S, a destination emits RESUME only when it starts running the guest: any
    // RESUME is proof it ran, whoever waits for it.
    this.offs.push(this.dst.qmp.onEvent('RESUME', (ev: QmpEvent) => {
      this.facts.destinationRan = true;
      this.destinationRunningAtMs ??= ev.receivedAt - this.t0;
    }));
    await this.journal('prepare'); // the destination's identity, for an engine that restarts
    await this.net?.learnAnnounces(this.dst);
    this.checkCancel();
  }

  private async configurePhase(): Promise<void> {
    const { guest, from, to } = this.req;
    const dst = this.dst!;
    // QEMU keeps capabilities from one migration to the next (a guest that arrived with
    // pause-before-switchover on would wait again): every one MigLab may set is set, off unless asked.
    const settable = (this.pre?.capabilities ?? []).filter((c) => capabilityRefusal(c, true) === null);
    const caps: Record<string, boolean> = { ...Object.fromEntries(settable.map((c) => [c, false])), events: true, ...this.options.capabilities };
    // A disk guest's destination takes its image only once it runs (shared storage), where offered.
    if (guest.spec.boot.kind === 'disk' && this.pre?.capabilities.includes('late-block-activate')) caps['late-block-activate'] ??= true;
    await Promise.all([migrateSetCapabilities(guest.qmp, caps), migrateSetCapabilities(dst.qmp, caps)]);
    // With TLS the destination is the server; the source checks that its certificate names the
    // address it connects to (the lab CA put it in the IP SANs). Without, the source's tls-creds
    // are cleared: a guest that arrived by a TLS migration keeps its destination's.
    let tls: { 'tls-creds': string; 'tls-hostname': string } = { 'tls-creds': '', 'tls-hostname': '' };
    if (this.options.tls) {
      const [client, server] = await Promise.all([from.addMigrationTls(guest, 'client'), to.addMigrationTls(dst, 'server')]);
      await migrateSetParameters(dst.qmp, { 'tls-creds': server });
      tls = { 'tls-creds': client, 'tls-hostname': to.address };
    }
    const strategy = this.options.strategy;
    const plan = STRATEGIES[strategy?.name ?? 'precopy'].qemuParameters(strategy?.params);
    if (Object.keys(plan.destination).length) await migrateSetParameters(dst.qmp, plan.destination);
    await migrateSetParameters(guest.qmp, {
      ...plan.source,
      'max-bandwidth': Math.round(this.bandwidthMBps * 1e6),
      'downtime-limit': this.downtimeLimitMs,
      ...tls,
    });
    this.send({ type: 'parameters', atMs: this.now(), bandwidthMBps: this.bandwidthMBps, downtimeLimitMs: this.downtimeLimitMs });
    this.checkCancel();
  }

  private sourceUri = '';

  private async listenPhase(): Promise<void> {
    const { to } = this.req;
    await migrateIncoming(this.dst!.qmp, `tcp:${to.address}:${this.port}`);
    this.sourceUri = `tcp:${to.address}:${await this.linkWatch.open(to, this.port!)}`;
    this.checkCancel();
  }

  private async migratePhase(): Promise<void> {
    this.policyRan = true;
    void this.dst!.exited.then(() => this.src.wakeUp());
    await this.src.start(this.sourceUri, () => this.beats.sourceStopped());
  }

  /**
   * monitor: until QEMU has stopped the guest for the switchover; switchover: until it says
   * completed. QEMU's verdict ends the phase: failed and cancelled are the phase's failure.
   */
  private async followSource(until: 'stopped' | 'completed'): Promise<void> {
    const verdict = await this.src.follow(until);
    if (verdict === 'stopped') return;
    if (verdict === 'completed') {
      this.facts.sourceCompleted = true;
      if (this.src.cancelSent) {
        // The cancel reached QEMU after its last pages: the destination holds the guest but never ran.
        throw new JobEnd(this.cancelOutcome, `${this.cancelReason} QEMU had already sent the last pages when the cancel arrived; the destination never ran the guest, so it stays on ${this.req.from.name}.`);
      }
      return;
    }
    if (verdict === 'cancelled') throw new JobEnd(this.cancelOutcome, this.cancelReason ?? 'QEMU cancelled the migration.');
    const desc = this.src.finalInfo?.['error-desc'];
    // A killed destination resets the stream before its exit reaches this process: wait a moment
    // for it, so the reason names the cause (the destination stopped), not the symptom (a reset).
    const dstExit = this.dst ? (this.dst.exit ?? (await Promise.race([this.dst.exited, delay(DESTINATION_EXIT_GRACE_MS).then(() => null)]))) : null;
    const why = dstExit ? `the destination QEMU stopped (${describeExit(dstExit)})` : (desc ?? 'QEMU gave no reason');
    throw new JobEnd('failed', `The migration failed: ${why}.`, desc ?? dstExit?.stderrTail ?? null);
  }

  /**
   * Until the source says completed; then the destination must answer before it is resumed: one
   * that does not is not resumed at all (it never ran, so the source can take the guest back).
   * The confirm phase's journal entry says "resumed" before its `cont` goes out.
   */
  private async switchoverPhase(): Promise<void> {
    await this.followSource('completed');
    const dst = this.dst!;
    const now = await observeCopy(dst, { timeoutMs: this.askMs });
    if (now.kind !== 'alive') throw new JobEnd('failed', `The destination on ${this.req.to.name} ${now.kind === 'gone' ? `ended (${now.exit})` : `does not answer (${now.why})`} before it was resumed.`);
    this.facts.destinationResumed = true; // journalled with the confirm phase, before its `cont`
  }

  /** A crash of the guest on the destination, whatever QEMU says: the phase ends with it. */
  private crashed(what: string): JobEnd {
    const dst = this.dst!;
    this.dstCrash ??= { words: what, atMs: this.now() };
    const words = crashWords(dst.console.text());
    return new JobEnd('failed', `The guest ${what} on ${this.req.to.name} after the switchover.${words ? ` The guest's last words: ${words}` : ''}`, dst.exit?.stderrTail || null, 'destination-crashed');
  }

  /**
   * Finish and Confirm: the source said completed, so the destination is resumed; it must run the
   * guest (QEMU says running, and a lab guest beats again). Then the paused source is quit, or
   * kept keepSourceMs for a rollback.
   */
  private async confirmPhase(): Promise<void> {
    const dst = this.dst!;
    const done = new AbortController(); // ends the waits below, so no timer outlives the phase
    let crash: GuestCrash | null = null;
    this.stopCrashWatch = watchGuestCrash(dst, (c) => {
      crash = c;
      this.dstCrash ??= { words: c.words, atMs: c.atMs - this.t0 };
    });
    const crashedNow = () => {
      if (dst.exit) return this.crashed(`crashed (${describeExit(dst.exit)})`);
      if (crash) return this.crashed(crash.source === 'pvpanic' ? 'panicked (pvpanic)' : 'printed a kernel crash on its console');
      return null;
    };
    try {
      // The transition into this phase journalled destinationResumed: an engine that dies from
      // here on knows the destination may have run.
      const resumed = dst.qmp.waitForEvent('RESUME', { timeoutMs: RUN_WAIT_MS, signal: done.signal });
      resumed.catch(() => {});
      try {
        await cont(dst.qmp);
      } catch (err) {
        // Did it arrive? A destination that answers "paused" did not take it (see journal.ts).
        const after = await observeCopy(dst, { timeoutMs: this.askMs });
        if (after.kind === 'alive' && after.runstate === 'paused' && !this.facts.destinationRan) {
          this.facts.destinationResumed = false;
          await this.journalNoted('confirm', null, { destinationResumed: false });
        }
        throw err;
      }
      const gone = dst.exited.then(async (exit) => {
        await delay(100); // a RESUME still in the socket is read before judging whether it ran
        throw this.crashed(this.facts.destinationRan ? `crashed (${describeExit(exit)})` : `ended before it ran (${describeExit(exit)})`);
      });
      gone.catch(() => {});
      const st = await queryStatus(dst.qmp).catch(() => null);
      if (st?.status !== 'running') {
        try {
          const ev = await Promise.race([resumed, gone]);
          this.destinationRunningAtMs = ev.receivedAt - this.t0;
        } catch (err) {
          if (err instanceof JobEnd) throw err;
          const now = await queryStatus(dst.qmp).catch(() => null);
          if (now?.status !== 'running') throw this.crashed(`did not start running (QEMU says "${now?.status ?? 'nothing'}")`);
        }
      }
      this.destinationRunningAtMs ??= this.now();
      this.facts.destinationRan = true;
      const early = crashedNow();
      if (early) throw early;
      if (dst.labload && !this.beats.destinationBeating) {
        const silent = delay(RUN_WAIT_MS, undefined, { signal: done.signal }).then(() => {
          throw this.crashed('did not resume its heartbeats');
        });
        silent.catch(() => {});
        const crashWait = new Promise<never>((_, reject) => {
          const check = setInterval(() => {
            const c = crashedNow();
            if (c) reject(c);
          }, 50);
          done.signal.addEventListener('abort', () => clearInterval(check));
        });
        crashWait.catch(() => {});
        await Promise.race([this.beats.firstDestinationBeat(), gone, silent, crashWait]);
      }
      this.resumedAtMs = this.now();
      if (this.keep) await this.keepSource(this.keep.ms, crashedNow);
      // The last word before the source goes: the destination must still run the guest.
      const last = crashedNow();
      if (last) throw last;
      const now = await observeCopy(dst, { timeoutMs: this.askMs });
      if (now.kind !== 'alive' || !now.running) {
        throw now.kind === 'unknown'
          ? new JobEnd('failed', `The destination on ${this.req.to.name} stopped answering (${now.why}) after it ran the guest.`, null, 'unreachable')
          : this.crashed(now.kind === 'gone' ? `crashed (${now.exit})` : `stopped running (QEMU says "${now.runstate}")`);
      }
    } finally {
      done.abort();
    }
    dst.markReady(); // its source was ready, and it carries on from the same state
  }

  /** The paused source is kept `ms`: a crash of the destination or a rollback request ends the phase. */
  private async keepSource(ms: number, crashedNow: () => JobEnd | null): Promise<void> {
    const dst = this.dst!;
    this.keepUntil = performance.now() + ms;
    this.send({ type: 'source-kept', atMs: this.now(), ms, why: this.keep?.why ?? '' });
    try {
      while (performance.now() < this.keepUntil) {
        const c = crashedNow();
        if (c) throw c;
        if (this.rollbackWanted) {
          throw new JobEnd('cancelled', `Taken back to ${this.req.from.name} on request.`, null, 'rolled-back');
        }
        const st = await queryStatus(dst.qmp).catch(() => null);
        if (st && !st.running) throw this.crashed(`stopped running (QEMU says "${st.status}")`);
        const last = dst.labload?.heartbeats.last;
        if (last && performance.now() - last.hostMs > SILENCE_MS) throw this.crashed(`went silent (no heartbeats for ${SILENCE_MS} ms)`);
        await delay(Math.min(50, Math.max(0, this.keepUntil - performance.now())));
      }
    } finally {
      this.keepUntil = null;
    }
  }

  private async cleanupPhase(): Promise<void> {
    const dst = this.dst!;
    const ask = async (): Promise<JobEnd | null> => {
      if (this.dstCrash) return this.crashed(this.dstCrash.words);
      const now = await observeCopy(dst, { timeoutMs: this.askMs });
      if (now.kind === 'alive' && now.running) return null;
      return now.kind === 'unknown'
        ? new JobEnd('failed', `The destination on ${this.req.to.name} stopped answering (${now.why}) after it ran the guest.`, null, 'unreachable')
        : this.crashed(now.kind === 'gone' ? `crashed (${now.exit})` : `stopped running (QEMU says "${now.runstate}")`);
    };
    // Asked once more right before the source goes: a destination lost now keeps the source paused.
    const before = await ask();
    if (before) throw new DestinationLost(before);
    this.stopCrashWatch?.();
    this.stopCrashWatch = null;
    await this.req.from.stopGuest(this.req.guest.name); // retires the source's switch port too
    const after = await ask();
    if (after) {
      // Between the last question and the source's quit: nothing is left to go back to.
      throw new GuestLost(new JobEnd('failed', `${after.message} The paused source had just been quit, so the guest is lost.`, after.qemuMessage, after.kind));
    }
  }

  // ---- failure --------------------------------------------------------------------------------

  private async fail(action: FailureAction, err: unknown): Promise<MigrationResult> {
    if (err instanceof DestinationLost) return this.fail('settle', err.end);
    if (err instanceof GuestLost) return this.finish('failed', err.end, { runningOn: null });
    const end = err instanceof JobEnd ? err : new JobEnd('failed', `The migration could not go on: ${(err as Error).message}`, null, 'internal');
    this.stopCrashWatch?.();
    this.stopCrashWatch = null;
    // A destination prepared ahead and handed over is the job's, used or not.
    const prepared = this.req.preparedDestination;
    if (prepared && prepared !== this.dst && !prepared.exit) await prepared.stop().catch(() => {});
    switch (action) {
      case 'nothing':
      case 'stop-destination': {
        if (action === 'stop-destination' && !(await this.stopDestination())) {
          this.notes.push(`The destination QEMU on ${this.req.to.name} could not be stopped; it never had the guest's state and stands paused.`);
        }
        // The source was not touched, but it is only reported running where its QEMU says so.
        const src = await observeCopy(this.req.guest, { timeoutMs: this.askMs });
        if (src.kind === 'alive' && src.running) return this.finish(end.outcome, end, { runningOn: this.req.from.name });
        if (src.kind === 'alive') {
          // Nothing paused it: QEMU or someone else did. It is the only copy, but it does not run.
          const attention: MigrationAttention = {
            reason: `${end.message} The source on ${this.req.from.name} stands paused (QEMU says "${src.runstate}").`,
            pausedOn: [this.req.from.name], unknown: [], settle: `Resume it with QMP "cont" if its guest is sound.`,
          };
          return this.finish('needs-attention', new JobEnd('failed', attention.reason, end.qemuMessage, end.kind), { runningOn: null, attention });
        }
        if (src.kind === 'gone') {
          return this.finish('failed', new JobEnd('failed', `${end.message} The source QEMU on ${this.req.from.name} has ended too (${src.exit}): the guest is lost.`, end.qemuMessage, 'source-crashed'), { runningOn: null });
        }
        const attention: MigrationAttention = {
          reason: `${end.message} The source on ${this.req.from.name} does not answer (${src.why}), so MigLab cannot say whether it still runs the guest.`,
          pausedOn: [], unknown: [this.req.from.name], settle: `When ${this.req.from.name} answers again, run ${this.recoverCommand()}.`,
        };
        return this.finish('needs-attention', new JobEnd('failed', attention.reason, end.qemuMessage, 'unreachable'), { runningOn: null, attention });
      }
      case 'settle':
        return this.settle(end);
      case 'source-left':
        // The destination runs the guest; the source, paused since its switchover, could not be quit.
        return this.finish('completed', null, { runningOn: this.req.to.name, attention: this.sourceLeftAttention(end.message) });
    }
  }

  /** The destination runs the guest; its old paused copy on the source could not be quit. */
  private sourceLeftAttention(why: string): MigrationAttention {
    const { guest, from, to } = this.req;
    return {
      reason: `${guest.name} runs on ${to.name}, but its old paused copy on ${from.name} could not be stopped: ${why}`,
      pausedOn: [from.name], unknown: [],
      settle: `Stop it when ${from.name} answers: ${this.recoverCommand()} does it.`,
    };
  }

  /** Whether `stop` ended within the deadline (twice a question's): a host that is away does not hold the job. */
  private stoppedInTime(stop: Promise<unknown>): Promise<boolean> {
    const ended = stop.then(() => true, () => false); // a stop that fails after the deadline is no unhandled rejection
    return withTimeout(ended, this.askMs * 2, 'stopping a QEMU').catch(() => false);
  }

  private recoverCommand(extra = ''): string {
    return `"miglab recover ${this.req.labFile ?? 'LAB.yaml'}${extra}" (or reopen the lab in the app)`;
  }

  /** Stops the destination QEMU; false when that could not be done in time (its host is away). */
  private async stopDestination(): Promise<boolean> {
    const dst = this.dst;
    if (!dst || dst.exit) return true;
    return (await this.stoppedInTime(dst.stop())) || dst.exit !== null;
  }

  /** Asks the source until its stream has ended (after a cancel), within CANCEL_WAIT_MS. */
  private async sourceAfterCancel(): Promise<CopyState> {
    const src = this.req.guest;
    let s = await observeCopy(src, { timeoutMs: this.askMs, migration: true });
    if (s.kind === 'alive' && isInFlight(s.migration) && s.migration !== 'cancelling') {
      await migrateCancel(src.qmp, { timeoutMs: this.askMs }).catch(() => {});
    }
    const end = performance.now() + CANCEL_WAIT_MS;
    while (s.kind === 'alive' && isInFlight(s.migration) && performance.now() < end) {
      await delay(50);
      s = await observeCopy(src, { timeoutMs: this.askMs, migration: true });
    }
    if (s.kind === 'alive' && s.migration === 'completed') this.facts.sourceCompleted = true;
    return s;
  }

  /** A stream was (or may have been) under way: ask both QEMUs, then keep exactly one copy. */
  private async settle(cause: JobEnd): Promise<MigrationResult> {
    const { from, to, guest } = this.req;
    const source = await this.sourceAfterCancel();
    const destination = this.dst ? await observeCopy(this.dst, { timeoutMs: this.askMs }) : null;
    if (destination?.kind === 'gone' && this.facts.destinationResumed && !this.facts.destinationRan) await delay(100); // a RESUME still in the socket
    if (destination?.kind === 'alive' && destination.running && !this.dstCrash) this.facts.destinationRan = true;
    // Whatever error surfaced first (a QMP call cut by the exit), a destination that ran and
    // ended is the story: told as its crash, with its last words.
    const end = this.facts.destinationRan && destination?.kind === 'gone' && cause.kind !== 'destination-crashed'
      ? this.crashed(`crashed (${destination.exit})`)
      : cause;
    const facts: CopyFacts = {
      source, destination, ...this.facts,
      destinationCrashed: this.dstCrash !== null,
      rollbackAllowed: this.keep !== null && guest.spec.boot.kind !== 'disk',
      rollbackRequested: end.kind === 'rolled-back',
    };
    const d = decideCopies(facts);
    const ranMs = this.destinationRunningAtMs !== null ? (this.dstCrash?.atMs ?? this.now()) - this.destinationRunningAtMs : null;
    if (d.keep === 'source') return this.keepSourceCopy(d, end, facts, ranMs);
    if (d.keep === 'destination') return this.keepDestinationCopy(d, end);
    if (d.keep === 'lost') {
      if (d.stopDestination) await this.stopDestination();
      const kind: FailureKind = source.kind === 'gone' && !this.facts.destinationRan ? 'source-crashed' : end.kind;
      return this.finish('failed', new JobEnd('failed', `${end.message} The guest is lost: ${d.why}.`, end.qemuMessage, kind), { runningOn: null });
    }
    // A person must choose. A destination that crashed but whose QEMU still runs is paused, so
    // that nothing runs a broken guest while they do.
    if (this.dst && destination?.kind === 'alive' && destination.running && this.dstCrash) {
      await this.journalNoted(this.state!, null, { destinationPaused: true });
      await pauseVcpus(this.dst.qmp, { timeoutMs: this.askMs }).catch(() => {});
    }
    const host = (side: 'source' | 'destination') => (side === 'source' ? from.name : to.name);
    const paused = [
      ...(d.pausedOn ? [host(d.pausedOn)] : []),
      ...(this.dst && this.dstCrash && destination?.kind === 'alive' ? [to.name] : []),
    ];
    const settle = d.unknown.length
      ? `When ${d.unknown.map(host).join(' and ')} answers again, run ${this.recoverCommand()}: it asks both QEMUs again and keeps exactly one copy.`
      : `To take ${guest.name} back to ${from.name} as it was at the switchover (what it did on ${to.name} since is lost), run ${this.recoverCommand(` --resume-source ${guest.name}`)}, or press "Resume on ${from.name}".`;
    const attention: MigrationAttention = { reason: `${end.message} ${d.why[0]!.toUpperCase()}${d.why.slice(1)}.`, pausedOn: [...new Set(paused)], unknown: d.unknown.map(host), settle };
    const kind: FailureKind = d.unknown.length ? 'unreachable' : end.kind;
    return this.finish('needs-attention', new JobEnd('failed', attention.reason, end.qemuMessage, kind), { runningOn: null, attention });
  }

  private async keepSourceCopy(d: Extract<CopyDecision, { keep: 'source' }>, end: JobEnd, facts: CopyFacts, ranMs: number | null): Promise<MigrationResult> {
    const { from, to, guest } = this.req;
    if (d.wentBackInTime) await this.journalNoted(this.state!, null, { rollback: true });
    const stopped = !d.stopDestination || (await this.stopDestination());
    if (!stopped && !destinationMayHaveRun(facts)) {
      this.notes.push(`The destination QEMU on ${to.name} could not be stopped; it never ran the guest and stands paused: ${this.recoverCommand()} stops it once ${to.name} answers.`);
    }
    if (!stopped && destinationMayHaveRun(facts)) {
      // It may start (resumed while still loading) or run: the source must not run beside it.
      const attention: MigrationAttention = {
        reason: `${end.message} The destination QEMU on ${to.name} could not be stopped and may run the guest, so the source stays paused.`,
        pausedOn: [from.name], unknown: [to.name],
        settle: `When ${to.name} answers again, run ${this.recoverCommand()}.`,
      };
      return this.finish('needs-attention', new JobEnd('failed', attention.reason, end.qemuMessage, 'unreachable'), { runningOn: null, attention });
    }
    if (d.resumeSource) {
      try {
        await cont(guest.qmp, { timeoutMs: this.askMs });
      } catch (err) {
        const now = await observeCopy(guest, { timeoutMs: this.askMs });
        if (!(now.kind === 'alive' && now.running)) {
          const attention: MigrationAttention = {
            reason: `${end.message} The source on ${from.name} could not be resumed: ${(err as Error).message}`,
            pausedOn: now.kind === 'alive' ? [from.name] : [], unknown: now.kind === 'unknown' ? [from.name] : [],
            settle: `Run ${this.recoverCommand()} once ${from.name} answers.`,
          };
          return this.finish('needs-attention', new JobEnd('failed', attention.reason, end.qemuMessage, 'unreachable'), { runningOn: null, attention });
        }
      }
    }
    if (d.wentBackInTime) {
      // The destination had announced the guest's MAC from its port: the source says it is back.
      if (guest.spec.mac) await announceSelf(guest.qmp).catch(() => {});
      const back = ranMs !== null ? ` It ran on ${to.name} for ${Math.round(ranMs)} ms; what it did there is lost.` : '';
      const why = end.kind === 'rolled-back' ? end.message : `${end.message} ${this.keep?.why ? `The source was kept because ${this.keep.why}; the guest went back to it.` : ''}`;
      return this.finish(end.outcome, new JobEnd(end.outcome, `${why}${back}`.trim(), end.qemuMessage, end.kind), { runningOn: from.name, rolledBackMs: ranMs });
    }
    return this.finish(end.outcome, end, { runningOn: from.name });
  }

  private async keepDestinationCopy(d: Extract<CopyDecision, { keep: 'destination' }>, end: JobEnd): Promise<MigrationResult> {
    const { from, to, guest } = this.req;
    const dst = this.dst!;
    if (d.resumeDestination) {
      await this.journalNoted(this.state!, null, { destinationResumed: true });
      this.facts.destinationResumed = true;
      await cont(dst.qmp, { timeoutMs: this.askMs }).catch(() => {});
      const now = await observeCopy(dst, { timeoutMs: this.askMs });
      if (!(now.kind === 'alive' && now.running)) {
        const attention: MigrationAttention = {
          reason: `${end.message} The source QEMU has ended after sending the whole guest, and the destination on ${to.name} did not start running it.`,
          pausedOn: now.kind === 'alive' ? [to.name] : [], unknown: now.kind === 'unknown' ? [to.name] : [],
          settle: `Run ${this.recoverCommand()} once ${to.name} answers.`,
        };
        return this.finish('needs-attention', new JobEnd('failed', attention.reason, end.qemuMessage, 'unreachable'), { runningOn: null, attention });
      }
      this.destinationRunningAtMs ??= this.now();
      this.facts.destinationRan = true;
    }
    dst.markReady();
    let attention: MigrationAttention | null = null;
    if (d.stopSource && !guest.exit) {
      if (!(await this.stoppedInTime(from.stopGuest(guest.name)))) attention = this.sourceLeftAttention('it did not answer in time');
    }
    this.notes.push(`The migration completed although ${end.message.replace(/^The /, 'the ')}`);
    return this.finish('completed', null, { runningOn: to.name, attention });
  }

  // ---- the end --------------------------------------------------------------------------------

  private async finish(
    outcome: MigrationOutcome,
    end: JobEnd | null,
    where: { runningOn: string | null; attention?: MigrationAttention | null; rolledBackMs?: number | null },
  ): Promise<MigrationResult> {
    for (const off of this.offs.splice(0)) off();
    this.src.close();
    this.beats.close();
    this.stopCrashWatch?.();
    await this.linkWatch.close();
    if (this.port !== null) this.req.to.releaseMigrationPort(this.port);
    const tail = (outcome !== 'completed' && this.dstCrash && this.dst) ? consoleTail(this.dst.console.text()) : null;
    let reason = end?.message ?? null;
    if (outcome !== 'completed' && this.linkWatch.stats?.cut) {
      // QEMU only says its stream broke; the lesson is that the cable was pulled.
      const stayed = where.runningOn === this.req.from.name ? ` and the guest stayed on ${this.req.from.name}` : '';
      reason = `The emulated link was cut (the cable pulled) during the migration, so the stream broke${stayed}. ${reason ?? ''}`.trim();
    }
    const withNotes = () => [reason, ...this.notes].filter(Boolean).join(' ') || null;
    const open = this.spans.at(-1);
    if (open && open.endMs === null) open.endMs = this.now();
    this.state = outcome;
    this.send({ type: 'phase', atMs: this.now(), phase: outcome, previous: open?.name ?? null });
    const build = () =>
      buildResult({
        id: this.id, outcome, guest: this.req.guest.name, from: this.req.from.name, to: this.req.to.name,
        reason: withNotes(), qemuMessage: end?.qemuMessage ?? null, failure: end?.kind ?? null,
        info: this.src.finalInfo ?? this.src.info,
        guestDowntimeMs: this.beats.guestDowntimeMs(),
        passes: this.src.tracker.passes, phases: this.spans, checks: this.pre?.checks ?? ([] as PreflightCheck[]),
        prediction: this.src.prediction, wallTimeMs: this.now(),
        runningOn: where.runningOn, attention: where.attention ?? null,
        sourceKept: this.keep, rolledBackMs: where.rolledBackMs ?? null,
        destinationRunningAtMs: this.destinationRunningAtMs, resumedAtMs: this.resumedAtMs,
        destinationConsoleTail: tail, network: this.net?.report() ?? null,
        tls: this.options.tls, link: this.linkWatch.stats,
        downtimePolicy: this.policyRan ? this.policy.report() : null,
        strategy: { name: this.options.strategy?.name ?? 'precopy', params: this.options.strategy?.params ?? {} },
      });
    // Final now: the destination runs and the source has quit (or the guest stayed put).
    const result = build();
    await this.journalNoted(outcome, result);
    result.reason = withNotes(); // a journal that failed just now is told too
    this.send({ type: 'result', atMs: this.now(), result });
    if (!this.net) return result;
    // The wire's figures settle up to about a second later (announce rounds, the probe's gap).
    if (outcome === 'completed') await this.net.settle(this.destinationRunningAtMs);
    const network = this.net.finish();
    const updated: MigrationResult = { ...result, network };
    await this.journalNoted(outcome, updated);
    this.send({ type: 'result-update', atMs: this.now(), result: updated });
    return updated;
  }
}

/** Starts a migration job and runs it to its result. */
export function migrateGuest(req: MigrationRequest, onEvent?: (ev: MigrationEvent) => void): { job: MigrationJob; result: Promise<MigrationResult> } {
  const job = new MigrationJob(req);
  if (onEvent) job.on('event', onEvent);
  return { job, result: job.run() };
}
