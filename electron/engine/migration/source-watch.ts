// The source QEMU as a migration job follows it: its MIGRATION, MIGRATION_PASS and STOP events,
// query-migrate samples, the passes, the live prediction, and QEMU's own verdict at the end. It
// sends the cancel and the Continue the job was asked for; it decides nothing about copies.
import type { Guest } from '../hosts/host';
import { migrate, migrateCancel, migrateContinue, queryMigrate, type MigrationInfo, type MigrationStatus, type QmpEvent } from '../qmp';
import { delay } from '../util/time';
import { predict, type PredictionInput } from './prediction';
import { isTerminal } from './status';
import { PassTracker, SampleRing, sampleFromInfo } from './telemetry';
import type { MigrationEvent, MigrationSample, Prediction } from './types';

/** How the source's migration ended, as QEMU said it; or that it has stopped the guest for the switchover. */
export type SourceVerdict = 'stopped' | 'completed' | 'failed' | 'cancelled';

export interface SourceWatchHooks {
  /** Job time, ms. */
  now(): number;
  send(ev: MigrationEvent): void;
  /** Called at every wake-up: the job's cancel reason, if one was asked for. */
  cancelReason(): string | null;
  /** Called at every wake-up: whether a Continue (migrate-continue) is wanted. */
  takeContinue(): boolean;
  /** What the prediction needs beyond the sample (bandwidth, limits, capabilities). */
  predictionInput(s: MigrationSample): Omit<PredictionInput, 'remainingBytes' | 'dirtyRateBps'>;
  /** At each pass boundary (MIGRATION_PASS), with what QEMU says remains to send (null: it did not say). */
  onPassBoundary(pass: number, remainingBytes: number | null): void;
  /** Once per loop: the emulated link's counters, when there is one. */
  tick(): void;
  sampleIntervalMs: number;
  /** Give up (cancel) when QEMU has not stopped the guest for its switchover by then (job time, ms). */
  maxDurationMs: number;
  onTimeout(): void;
}

export class SourceWatch {
  status: MigrationStatus = 'none';
  /** The terminal status from a MIGRATION event: a late query reply never overrides it. */
  private final: MigrationStatus | null = null;
  /** Job time of QEMU's STOP on the source: the switchover began. */
  stopAt: number | null = null;
  /** Pass boundaries on QEMU's clock (its event timestamps), placed on the job's timeline. */
  private readonly passClock = new QemuEventClock(() => this.hooks.now());
  /** Job time of QEMU's MIGRATION completed, on QEMU's clock: the end of the last pass. */
  private completedAt: number | null = null;
  /** What remained at the last pass boundary from pass 2 on (what the guest re-dirtied in a pass). */
  private boundaryRemaining: number | null = null;
  /** The latest query-migrate answer, and the settled one at the end. */
  info: MigrationInfo | null = null;
  finalInfo: MigrationInfo | null = null;
  /** A migrate_cancel went to QEMU. */
  cancelSent = false;
  readonly tracker = new PassTracker();
  readonly samples = new SampleRing();
  prediction: Prediction | null = null;
  private predictionSentAt = -Infinity;
  /** Time spent in query-migrate round trips: what sampling costs. */
  samplingMs = 0;
  samplingCount = 0;
  private readonly offs: Array<() => void> = [];
  private wake: (() => void) | null = null;
  private woken = false;

  constructor(
    private readonly guest: Guest,
    private readonly hooks: SourceWatchHooks,
  ) {}

  /** Wakes the loop (an event, a cancel or Continue asked for): it looks again at once. */
  wakeUp(): void {
    this.woken = true; // an event during a query is not lost: the next wait is skipped
    this.wake?.();
  }

  /** Registers the listeners, then sends `migrate`: no event it causes can be missed. */
  async start(uri: string, onStop: () => void): Promise<void> {
    const q = this.guest.qmp;
    this.offs.push(q.onEvent('MIGRATION', (ev: QmpEvent) => {
      const st = String(ev.data.status) as MigrationStatus;
      this.status = st;
      if (isTerminal(st)) this.final = st;
      if (st === 'completed') this.completedAt = this.passClock.jobMs(ev);
      this.hooks.send({ type: 'status', atMs: this.hooks.now(), status: st });
      this.wakeUp();
    }));
    this.offs.push(q.onEvent('MIGRATION_PASS', (ev: QmpEvent) => void this.onPass(Number(ev.data.pass), this.passClock.jobMs(ev))));
    this.offs.push(q.onEvent('STOP', () => {
      this.stopAt ??= this.hooks.now();
      onStop();
      this.wakeUp();
    }));
    await migrate(q, uri);
  }

  /** Follows QEMU until it has stopped the guest for the switchover ('stopped'), or its migration ended. */
  async follow(until: 'stopped' | 'completed'): Promise<SourceVerdict> {
    let lastQueryAt = 0;
    for (;;) {
      this.woken = false;
      const reason = this.hooks.cancelReason();
      if (reason && !this.cancelSent) {
        this.cancelSent = true;
        await migrateCancel(this.guest.qmp).catch(() => {}); // QEMU's answer is its status, read below
      }
      if (this.status === 'pre-switchover' && this.hooks.takeContinue()) await migrateContinue(this.guest.qmp, 'pre-switchover');
      // During the stop-and-copy QEMU holds its main lock, so a query would only wait for it:
      // rely on the MIGRATION event then, with a slow query as a safety net.
      const inStopAndCopy = this.stopAt !== null && this.final === null && this.status !== 'pre-switchover';
      if (!inStopAndCopy || performance.now() - lastQueryAt >= 500) {
        lastQueryAt = performance.now();
        const info = await this.sample();
        if (isTerminal(info.status)) this.final ??= info.status!;
        if (this.final === null && info.status) this.status = info.status;
      }
      if (this.final) this.status = this.final;
      if (this.status === 'completed' || this.status === 'failed' || this.status === 'cancelled') return this.ended(this.status);
      const stopped = this.stopAt !== null || this.status === 'device' || this.status === 'pre-switchover';
      if (stopped) this.stopAt ??= this.hooks.now();
      if (until === 'stopped' && stopped) return 'stopped';
      if (this.hooks.now() > this.hooks.maxDurationMs) this.hooks.onTimeout();
      if (this.woken) continue;
      const interval = inStopAndCopy ? 500 : this.hooks.sampleIntervalMs;
      await this.sleep(Math.max(0, interval - (performance.now() - lastQueryAt)));
    }
  }

  private sleep(ms: number): Promise<void> {
    if (this.woken) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    }).finally(() => {
      this.wake = null;
    });
  }

  /** QEMU's verdict, with the final figures: a completed migration closes its last pass. */
  private async ended(status: 'completed' | 'failed' | 'cancelled'): Promise<SourceVerdict> {
    const info = this.info ?? {};
    this.stopAt ??= status === 'completed' ? this.hooks.now() : null; // no STOP seen (lost with a reconnect)
    if (this.finalInfo) return status;
    if (status === 'completed') {
      this.finalInfo = await this.settledFinalInfo(info);
      const closed = this.tracker.finish(this.completedAt ?? this.hooks.now(), this.finalInfo);
      if (closed) this.hooks.send({ type: 'pass', atMs: this.hooks.now(), pass: closed });
    } else {
      this.finalInfo = info.status === status ? info : await queryMigrate(this.guest.qmp).catch(() => info);
    }
    return status;
  }

  private async sample(): Promise<MigrationInfo> {
    const t = performance.now();
    const info = await queryMigrate(this.guest.qmp);
    this.samplingMs += performance.now() - t;
    this.samplingCount++;
    this.info = info;
    const sample = sampleFromInfo(info, this.hooks.now());
    if (sample) {
      this.samples.push(sample);
      this.hooks.send({ type: 'sample', atMs: sample.atMs, sample });
      if (sample.status === 'active') this.updatePrediction(sample);
    }
    this.hooks.tick();
    return info;
  }

  /**
   * QEMU marks a migration completed a moment before it fills in total-time and downtime:
   * ask again until they are there (briefly).
   */
  private async settledFinalInfo(info: MigrationInfo): Promise<MigrationInfo> {
    const settled = (i: MigrationInfo) => i.status === 'completed' && (i['total-time'] ?? 0) > 0 && i.downtime !== undefined;
    let current = info;
    for (let i = 0; i < 100 && !settled(current); i++) {
      if (i > 0) await delay(10);
      current = await queryMigrate(this.guest.qmp).catch(() => current);
    }
    return current;
  }

  private updatePrediction(s: MigrationSample): void {
    const p = predict({
      // A figure QEMU did not report is NaN here, which predict() answers with "unknown".
      remainingBytes: s.remainingBytes ?? NaN,
      dirtyRateBps: s.dirtyRateBps ?? NaN,
      ...this.hooks.predictionInput(s),
      ...(this.boundaryRemaining !== null ? { boundaryRemainingBytes: this.boundaryRemaining } : {}),
    });
    // The verdict as soon as it changes; otherwise fresh numbers once a second, not every sample.
    const changed = !this.prediction || this.prediction.kind !== p.kind;
    this.prediction = p;
    const now = this.hooks.now();
    if (changed || now - this.predictionSentAt >= 1000) {
      this.predictionSentAt = now;
      this.hooks.send({ type: 'prediction', atMs: now, prediction: p });
    }
  }

  private async onPass(pass: number, at: number): Promise<void> {
    let info: MigrationInfo | null = null;
    // The bytes at a pass boundary come from a query right at the event; not during the
    // stop-and-copy, where QEMU would answer only after the switchover.
    if (this.stopAt === null) {
      const t = performance.now();
      try {
        info = await queryMigrate(this.guest.qmp);
        this.info = info;
      } catch {
        /* the pass is still recorded, with fewer figures */
      }
      this.samplingMs += performance.now() - t;
      this.samplingCount++;
    } else {
      info = this.info;
    }
    const closed = this.tracker.onPass(pass, at, info);
    if (closed) this.hooks.send({ type: 'pass', atMs: this.hooks.now(), pass: closed });
    if (this.stopAt === null) this.hooks.onPassBoundary(pass, info?.ram?.remaining ?? null);
    // Pass 1 starts with all of RAM; from pass 2 on, what a sync found dirty.
    if (pass >= 2 && typeof info?.ram?.remaining === 'number') this.boundaryRemaining = info.ram.remaining;
  }

  close(): void {
    for (const off of this.offs.splice(0)) off();
  }
}

/**
 * Event times on QEMU's clock: the first event is placed where the engine received it, and every
 * later one that far after it as QEMU's own timestamps say. Durations between events are then
 * QEMU's, not the engine's receipt times (which a busy engine or a remote agent's link delays).
 */
/** An event reported this much earlier than it arrived means a clock that jumped. */
const MAX_EVENT_DELAY_MS = 10_000;

export class QemuEventClock {
  private anchor: { qemuMs: number; jobMs: number } | null = null;

  constructor(private readonly jobNow: () => number) {}

  jobMs(ev: Pick<QmpEvent, 'timestamp' | 'receivedAt'>): number {
    const received = this.jobNow() - (performance.now() - ev.receivedAt);
    const t = ev.timestamp;
    const qemuMs = t && Number.isFinite(t.seconds) && Number.isFinite(t.microseconds) && t.seconds > 0 ? t.seconds * 1000 + t.microseconds / 1000 : null;
    if (qemuMs === null) return received; // a QEMU that gave no usable timestamp: the engine's time
    this.anchor ??= { qemuMs, jobMs: received };
    const mapped = this.anchor.jobMs + (qemuMs - this.anchor.qemuMs);
    // Nothing arrives before it happened, and a QEMU clock that jumped is not believed.
    return Math.min(received, Math.max(received - MAX_EVENT_DELAY_MS, mapped));
  }
}
