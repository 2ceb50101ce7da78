// One live migration, phase by phase (after libvirt's migration protocol). Whatever goes wrong,
// exactly one copy of the guest is left running: before the switchover that is the source;
// the destination only once it runs the guest and the guest's heartbeats have resumed.
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { z } from 'zod';
import type { Guest, Host } from '../hosts/host';
import type { Heartbeat } from '../guest/labload-channel';
import {
  cont,
  migrate,
  migrateCancel,
  migrateIncoming,
  migrateSetCapabilities,
  migrateSetParameters,
  queryMigrate,
  queryStatus,
  type MigrationInfo,
  type MigrationStatus,
  type QmpEvent,
} from '../qmp';
import { describeExit } from '../qemu/process';
import { delay } from '../util/time';
import type { MigrationJournal } from './journal';
import { runPreflight } from './preflight';
import { predict } from './prediction';
import { PassTracker, SampleRing, sampleFromInfo } from './telemetry';
import {
  DEFAULT_MIGRATION_OPTIONS,
  MIGRATION_PHASES,
  type JobState,
  type MigrationEvent,
  type MigrationOptions,
  type MigrationOutcome,
  type MigrationResult,
  type MigrationSample,
  type PhaseSpan,
  type PreflightCheck,
  type Prediction,
} from './types';

const OptionsSchema = z.object({
  bandwidthMBps: z.number().min(1, 'bandwidth must be at least 1 MB/s').max(100_000, 'bandwidth above 100000 MB/s is not a real link').optional(),
  downtimeLimitMs: z.number().int().min(1, 'the downtime limit must be at least 1 ms').max(2_000_000, 'QEMU allows at most 2000000 ms of downtime').optional(),
  capabilities: z.record(z.string().regex(/^[a-z0-9-]+$/, 'capability names are lower-case words joined by "-"'), z.boolean()).optional(),
  sampleIntervalMs: z.number().int().min(20, 'sample at most every 20 ms').max(1000, 'sample at least every 1000 ms').optional(),
  acceptWarnings: z.boolean().optional(),
});

export class InvalidMigrationOptionsError extends Error {
  constructor(readonly problems: string[]) {
    super(`The migration options are not valid: ${problems.join('; ')}`);
    this.name = 'InvalidMigrationOptionsError';
  }
}

export function parseMigrationOptions(input: Partial<MigrationOptions> = {}): MigrationOptions {
  const r = OptionsSchema.safeParse(input);
  if (!r.success) throw new InvalidMigrationOptionsError(r.error.issues.map((i) => `${i.path.join('.') || 'options'}: ${i.message}`));
  const defined = Object.fromEntries(Object.entries(r.data).filter(([, v]) => v !== undefined));
  return { ...DEFAULT_MIGRATION_OPTIONS, ...defined };
}

export interface MigrationRequest {
  guest: Guest;
  from: Host;
  to: Host;
  options?: Partial<MigrationOptions>;
  /** The guest's dirtying working set, when the lab knows it (labload), for the prediction. */
  workingSetBytes?: number;
  journal?: MigrationJournal;
  /** Give up (cancel) when the migration has not completed by then. Default 10 minutes. */
  maxDurationMs?: number;
}

/** Ends the job: thrown inside run(), turned into a result by recover(). */
class JobEnd extends Error {
  constructor(
    readonly outcome: Exclude<MigrationOutcome, 'completed'>,
    reason: string,
    readonly qemuMessage: string | null = null,
  ) {
    super(reason);
  }
}

const ACTIVE: MigrationStatus[] = ['setup', 'active', 'device', 'pre-switchover', 'cancelling', 'wait-unplug'];
const CANCELLABLE = new Set<JobState>(['preflight', 'prepare', 'configure', 'listen', 'migrate', 'monitor']);

export class MigrationJob extends EventEmitter<{ event: [MigrationEvent] }> {
  readonly id = randomUUID();
  readonly options: MigrationOptions;
  private readonly t0 = performance.now();
  private state: JobState | null = null;
  private readonly spans: PhaseSpan[] = [];
  private dst: Guest | null = null;
  private port: number | null = null;
  private checks: PreflightCheck[] = [];
  private readonly tracker = new PassTracker();
  readonly samples = new SampleRing();
  private lastPrediction: Prediction | null = null;
  private finalInfo: MigrationInfo | null = null;
  private cancelReason: string | null = null;
  private wake: (() => void) | null = null;
  private sawStopAt: number | null = null;
  private srcLastBeat: Heartbeat | null = null;
  private dstFirstBeat: Heartbeat | null = null;
  private bandwidthMBps: number;
  private downtimeLimitMs: number;
  private started = false;
  private readonly startedAtIso = new Date().toISOString();
  /** Time spent in query-migrate round trips: what sampling costs. */
  samplingMs = 0;
  samplingCount = 0;

  constructor(private readonly req: MigrationRequest) {
    super();
    this.options = parseMigrationOptions(req.options);
    this.bandwidthMBps = this.options.bandwidthMBps;
    this.downtimeLimitMs = this.options.downtimeLimitMs;
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

  /** The one place the job's state changes: closes the phase span, journals, emits. */
  private async transition(next: JobState, atMs = this.now()): Promise<void> {
    const previous = this.state;
    const open = this.spans.at(-1);
    if (open && open.endMs === null) open.endMs = atMs;
    this.state = next;
    if ((MIGRATION_PHASES as readonly string[]).includes(next)) {
      this.spans.push({ name: next as PhaseSpan['name'], startMs: atMs, endMs: null });
    }
    await this.req.journal?.write({
      id: this.id, guest: this.req.guest.name, from: this.req.from.name, to: this.req.to.name,
      state: next, port: this.port, startedAt: this.startedAtIso, updatedAt: new Date().toISOString(), result: null,
    });
    this.send({ type: 'phase', atMs, phase: next, previous });
  }

  /**
   * Asks the job to stop. Accepted until the switchover begins (then the guest is already
   * moving and the job finishes instead); resolves true when accepted.
   */
  cancel(reason = 'Cancelled by the user'): boolean {
    if (this.state !== null && !CANCELLABLE.has(this.state)) return false;
    if (this.sawStopAt !== null) return false;
    this.cancelReason ??= reason;
    this.wake?.();
    return true;
  }

  private checkCancel(): void {
    if (this.cancelReason) throw new JobEnd('cancelled', this.cancelReason);
  }

  /** Changes max-bandwidth while the migration runs (or before it starts). */
  async setBandwidth(mbps: number): Promise<void> {
    const { bandwidthMBps } = parseMigrationOptions({ bandwidthMBps: mbps });
    this.bandwidthMBps = bandwidthMBps;
    if (this.state && ['configure', 'listen', 'migrate', 'monitor'].includes(this.state)) {
      await migrateSetParameters(this.req.guest.qmp, { 'max-bandwidth': Math.round(bandwidthMBps * 1e6) });
    }
    this.send({ type: 'parameters', atMs: this.now(), bandwidthMBps, downtimeLimitMs: this.downtimeLimitMs });
  }

  /** Changes downtime-limit while the migration runs. */
  async setDowntimeLimit(ms: number): Promise<void> {
    const { downtimeLimitMs } = parseMigrationOptions({ downtimeLimitMs: ms });
    this.downtimeLimitMs = downtimeLimitMs;
    if (this.state && ['configure', 'listen', 'migrate', 'monitor'].includes(this.state)) {
      await migrateSetParameters(this.req.guest.qmp, { 'downtime-limit': downtimeLimitMs });
    }
    this.send({ type: 'parameters', atMs: this.now(), bandwidthMBps: this.bandwidthMBps, downtimeLimitMs });
  }

  /** Runs the whole job. Never throws for a migration that fails: the result says why. */
  async run(): Promise<MigrationResult> {
    if (this.started) throw new Error('A migration job runs once: make a new job to migrate again');
    this.started = true;
    const { guest, from, to } = this.req;
    try {
      await this.transition('preflight');
      const pre = await runPreflight(
        { guest, from, to, capabilities: this.options.capabilities },
        (check) => this.send({ type: 'check', atMs: this.now(), check }),
      );
      this.checks = pre.checks;
      this.port = pre.port;
      const failed = pre.checks.filter((c) => c.status === 'fail');
      if (failed.length) throw new JobEnd('failed', `Pre-flight check failed: ${failed.map((c) => c.message).join(' ')}`);
      const warned = pre.checks.filter((c) => c.status === 'warn');
      if (warned.length && !this.options.acceptWarnings) {
        throw new JobEnd('failed', `Pre-flight warnings were not accepted: ${warned.map((c) => c.message).join(' ')}`);
      }
      this.checkCancel();

      await this.transition('prepare');
      this.dst = await to.prepareIncoming(guest.spec);
      this.checkCancel();

      await this.transition('configure');
      await this.configure();
      this.checkCancel();

      await this.transition('listen');
      const uri = `tcp:${to.address}:${this.port}`;
      await migrateIncoming(this.dst.qmp, uri);
      this.checkCancel();

      await this.transition('migrate');
      this.watchHeartbeats();
      await this.migrateAndMonitor(uri);

      await this.transition('confirm');
      await this.confirm();

      await this.transition('cleanup');
      await from.stopGuest(guest.name);
      return await this.finish('completed', null, null);
    } catch (err) {
      return this.recover(err);
    }
  }

  private async configure(): Promise<void> {
    const caps = { events: true, ...this.options.capabilities };
    await Promise.all([
      migrateSetCapabilities(this.req.guest.qmp, caps),
      migrateSetCapabilities(this.dst!.qmp, caps),
    ]);
    await migrateSetParameters(this.req.guest.qmp, {
      'max-bandwidth': Math.round(this.bandwidthMBps * 1e6),
      'downtime-limit': this.downtimeLimitMs,
    });
    this.send({ type: 'parameters', atMs: this.now(), bandwidthMBps: this.bandwidthMBps, downtimeLimitMs: this.downtimeLimitMs });
  }

  private async sample(): Promise<{ info: MigrationInfo; sample: MigrationSample | null }> {
    const t = performance.now();
    const info = await queryMigrate(this.req.guest.qmp);
    this.samplingMs += performance.now() - t;
    this.samplingCount++;
    const sample = sampleFromInfo(info, this.now());
    return { info, sample };
  }

  private updatePrediction(s: MigrationSample): void {
    const p = predict({
      remainingBytes: s.remainingBytes,
      dirtyRateBps: s.dirtyRateBps,
      bandwidthBps: s.throughputBps > 0 ? s.throughputBps : this.bandwidthMBps * 1e6,
      downtimeLimitMs: this.downtimeLimitMs,
      ...(this.req.workingSetBytes !== undefined ? { workingSetBytes: this.req.workingSetBytes } : {}),
      capabilitiesOffered: this.offeredCaps,
      capabilitiesOn: ['events', ...Object.entries(this.options.capabilities).filter(([, v]) => v).map(([k]) => k)],
      throttlePercent: s.cpuThrottlePercent,
    });
    const changed = !this.lastPrediction || this.lastPrediction.kind !== p.kind || this.lastPrediction.reason !== p.reason;
    this.lastPrediction = p;
    if (changed || this.samplingCount % 5 === 0) this.send({ type: 'prediction', atMs: this.now(), prediction: p });
  }

  private offeredCaps: string[] = [];
  private unwatchBeats: Array<() => void> = [];

  /**
   * The guest's own view of the downtime: the last heartbeat the source delivered before the
   * switchover and the first the destination delivers after it (host receive times).
   */
  private watchHeartbeats(): void {
    const src = this.req.guest.labload;
    const dst = this.dst?.labload;
    if (src) {
      const onBeat = (hb: Heartbeat) => {
        if (this.sawStopAt === null) this.srcLastBeat = hb;
      };
      src.on('heartbeat', onBeat);
      this.unwatchBeats.push(() => src.off('heartbeat', onBeat));
    }
    if (dst) {
      const onBeat = (hb: Heartbeat) => {
        if (this.dstFirstBeat) return;
        this.dstFirstBeat = hb;
        if (this.srcLastBeat) this.send({ type: 'heartbeat-gap', atMs: this.now(), gapMs: hb.hostMs - this.srcLastBeat.hostMs });
      };
      dst.on('heartbeat', onBeat);
      this.unwatchBeats.push(() => dst.off('heartbeat', onBeat));
    }
  }

  private async migrateAndMonitor(uri: string): Promise<void> {
    const src = this.req.guest;
    const dst = this.dst!;
    const maxMs = this.req.maxDurationMs ?? 600_000;
    let status: MigrationStatus = 'setup';
    let dstExit: string | null = null;
    const wakeUp = () => this.wake?.();
    const offs: Array<() => void> = [];
    // Listeners go in before `migrate`, so no event it causes can be missed.
    offs.push(src.qmp.onEvent('MIGRATION', (ev: QmpEvent) => {
      status = String(ev.data.status) as MigrationStatus;
      this.send({ type: 'status', atMs: this.now(), status });
      wakeUp();
    }));
    offs.push(src.qmp.onEvent('MIGRATION_PASS', (ev: QmpEvent) => void this.onPass(Number(ev.data.pass))));
    offs.push(src.qmp.onEvent('STOP', () => {
      this.sawStopAt ??= this.now();
      wakeUp();
    }));
    const onDstExit = (exit: Parameters<typeof describeExit>[0]) => {
      dstExit = describeExit(exit);
      wakeUp();
    };
    dst.on('exit', onDstExit);
    offs.push(() => dst.off('exit', onDstExit));
    try {
      try {
        const caps = await src.qmp.execute<Array<{ capability: string }>>('query-migrate-capabilities');
        this.offeredCaps = caps.map((c) => c.capability);
      } catch {
        /* prediction just offers less advice */
      }
      await migrate(src.qmp, uri);
      await this.transition('monitor');
      let dstGoneAt: number | null = null;
      let cancelSent = false;
      for (;;) {
        const loopStart = performance.now();
        if (this.cancelReason && !cancelSent && this.sawStopAt === null) {
          cancelSent = true;
          await migrateCancel(src.qmp).catch(() => {});
        }
        const { info, sample } = await this.sample();
        if (info.status) status = info.status;
        if (sample) {
          this.samples.push(sample);
          this.send({ type: 'sample', atMs: sample.atMs, sample });
          if (sample.status === 'active') this.updatePrediction(sample);
        }
        if (this.sawStopAt !== null && this.state === 'monitor') await this.transition('switchover', this.sawStopAt);
        if (status === 'completed') {
          this.finalInfo = await this.settledFinalInfo(info);
          const closed = this.tracker.finish(this.now(), info);
          if (closed) this.send({ type: 'pass', atMs: this.now(), pass: closed });
          if (this.state === 'monitor') await this.transition('switchover', this.sawStopAt ?? this.now());
          return;
        }
        if (status === 'failed') {
          this.finalInfo = info;
          const why = dstExit ? `the destination QEMU stopped (${dstExit})` : (info['error-desc'] ?? 'QEMU gave no reason');
          throw new JobEnd('failed', `The migration failed: ${why}.`, info['error-desc'] ?? dst.exit?.stderrTail ?? null);
        }
        if (status === 'cancelled') {
          this.finalInfo = info;
          throw new JobEnd('cancelled', this.cancelReason ?? 'QEMU cancelled the migration.');
        }
        if (dstExit && dstGoneAt === null) dstGoneAt = performance.now();
        if (dstGoneAt !== null && performance.now() - dstGoneAt > 5000 && ACTIVE.includes(status)) {
          throw new JobEnd('failed', `The destination QEMU stopped (${dstExit}) and the source did not notice.`, dst.exit?.stderrTail ?? null);
        }
        if (this.now() > maxMs && !this.cancelReason) {
          this.cancel(`The migration did not complete within ${Math.round(maxMs / 1000)} s, so MigLab cancelled it.`);
        }
        const wait = Math.max(0, this.options.sampleIntervalMs - (performance.now() - loopStart));
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, wait);
          this.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.wake = null;
      }
    } finally {
      for (const off of offs) off();
    }
  }

  /**
   * QEMU marks a migration completed a moment before it fills in total-time and downtime:
   * ask again until they are there (briefly).
   */
  private async settledFinalInfo(info: MigrationInfo): Promise<MigrationInfo> {
    let current = info;
    for (let i = 0; i < 50 && !(current['total-time'] && current['total-time'] > 0); i++) {
      await delay(10);
      current = await queryMigrate(this.req.guest.qmp).catch(() => current);
    }
    return current;
  }

  private async onPass(pass: number): Promise<void> {
    const at = this.now();
    let info: MigrationInfo | null = null;
    try {
      info = await queryMigrate(this.req.guest.qmp);
    } catch {
      /* the pass is still recorded, with fewer figures */
    }
    const closed = this.tracker.onPass(pass, at, info);
    if (closed) this.send({ type: 'pass', atMs: this.now(), pass: closed });
  }

  /** The destination runs the guest, and the guest's heartbeats have resumed there. */
  private async confirm(): Promise<void> {
    const dst = this.dst!;
    const deadline = performance.now() + 15_000;
    const failIfGone = () => {
      const exit = dst.exit;
      if (exit) throw new JobEnd('failed', `The destination QEMU stopped right after the switchover (${describeExit(exit)}).`, exit.stderrTail);
    };
    for (;;) {
      failIfGone();
      const st = await queryStatus(dst.qmp).catch(() => null);
      if (st?.status === 'running') break;
      if (performance.now() > deadline) {
        throw new JobEnd('failed', `The destination did not start running the guest after the switchover (it is "${st?.status ?? 'unreachable'}").`);
      }
      await delay(20);
    }
    if (dst.labload) {
      while (!this.dstFirstBeat) {
        failIfGone();
        if (performance.now() > deadline) {
          throw new JobEnd('failed', 'The guest runs on the destination but its heartbeats did not resume: it is stuck there.');
        }
        await delay(10);
      }
    }
    dst.markReady(); // its source was ready, and it carries on from the same state
  }

  /** Undoes what the job started so that exactly one copy runs: the source. */
  private async recover(err: unknown): Promise<MigrationResult> {
    const end = err instanceof JobEnd ? err : new JobEnd('failed', `The migration could not go on: ${(err as Error).message}`, null);
    const src = this.req.guest;
    try {
      if (this.state && ['migrate', 'monitor', 'switchover'].includes(this.state)) {
        const info = await queryMigrate(src.qmp).catch(() => null);
        if (info?.status && ACTIVE.includes(info.status)) {
          await migrateCancel(src.qmp).catch(() => {});
          for (let i = 0; i < 100; i++) {
            const s = (await queryMigrate(src.qmp).catch(() => null))?.status;
            if (!s || !ACTIVE.includes(s)) break;
            await delay(50);
          }
        }
      }
      if (this.dst) {
        await this.dst.stop();
      }
      if (!src.exit) {
        const st = await queryStatus(src.qmp).catch(() => null);
        if (st && !st.running) await cont(src.qmp); // paused for the switchover, or after it
      }
    } catch (cleanupErr) {
      return this.finish('failed', `${end.message} Then putting things back failed too: ${(cleanupErr as Error).message}`, end.qemuMessage);
    }
    return this.finish(end.outcome, end.message, end.qemuMessage);
  }

  private async finish(outcome: MigrationOutcome, reason: string | null, qemuMessage: string | null): Promise<MigrationResult> {
    for (const off of this.unwatchBeats.splice(0)) off();
    if (this.port !== null) this.req.to.releaseMigrationPort(this.port);
    const info = this.finalInfo;
    const ram = info?.ram;
    const guestDowntimeMs =
      outcome === 'completed' && this.srcLastBeat && this.dstFirstBeat
        ? Math.round((this.dstFirstBeat.hostMs - this.srcLastBeat.hostMs) * 10) / 10
        : null;
    await this.transition(outcome);
    const result: MigrationResult = {
      id: this.id,
      status: outcome,
      guest: this.req.guest.name,
      from: this.req.from.name,
      to: this.req.to.name,
      reason,
      qemuMessage,
      ramBytes: ram?.total ?? this.req.guest.spec.memoryMiB * 2 ** 20,
      totalTimeMs: info?.['total-time'] ?? null,
      setupTimeMs: info?.['setup-time'] ?? null,
      downtimeMs: outcome === 'completed' ? (info?.downtime ?? null) : null,
      guestDowntimeMs,
      transferredBytes: ram?.transferred ?? null,
      passes: this.tracker.passes,
      phases: this.spans.map((s) => ({ ...s })),
      checks: this.checks,
      prediction: this.lastPrediction,
      wallTimeMs: Math.round(this.now()),
      runningOn: outcome === 'completed' ? this.req.to.name : this.req.from.name,
    };
    await this.req.journal?.write({
      id: this.id, guest: result.guest, from: result.from, to: result.to, state: outcome, port: this.port,
      startedAt: this.startedAtIso, updatedAt: new Date().toISOString(), result,
    });
    this.send({ type: 'result', atMs: this.now(), result });
    return result;
  }
}

/** Starts a migration job and runs it to its result. */
export function migrateGuest(req: MigrationRequest, onEvent?: (ev: MigrationEvent) => void): { job: MigrationJob; result: Promise<MigrationResult> } {
  const job = new MigrationJob(req);
  if (onEvent) job.on('event', onEvent);
  return { job, result: job.run() };
}
