// One live migration, phase by phase (after libvirt's migration protocol). Whatever goes wrong,
// exactly one copy of the guest is left running: before the switchover that is the source;
// the destination only once it runs the guest and the guest's heartbeats have resumed.
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { z } from 'zod';
import type { Guest, Host, LinkRelayControl } from '../hosts/host';
import { LinkProfileSchema, type LinkProfile, type LinkRelayStats } from '../network/link-relay';
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
import type { LabNetwork } from '../network/lab-network';
import type { MigrationJournal } from './journal';
import { MigrationNetworkWatch } from './network-watch';
import { destinationStart, runPreflight } from './preflight';
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
  type FailureKind,
  type PreflightCheck,
  type Prediction,
} from './types';

const OptionsSchema = z.object({
  bandwidthMBps: z.number().min(1, 'bandwidth must be at least 1 MB/s').max(100_000, 'bandwidth above 100000 MB/s is not a real link').optional(),
  downtimeLimitMs: z.number().int().min(1, 'the downtime limit must be at least 1 ms').max(2_000_000, 'QEMU allows at most 2000000 ms of downtime').optional(),
  capabilities: z.record(z.string().regex(/^[a-z0-9-]+$/, 'capability names are lower-case words joined by "-"'), z.boolean()).optional(),
  sampleIntervalMs: z.number().int().min(20, 'sample at most every 20 ms').max(1000, 'sample at least every 1000 ms').optional(),
  acceptWarnings: z.boolean().optional(),
  confirmWatchMs: z.number().int().min(0).max(60_000, 'watch the destination for at most 60000 ms').optional(),
  probeIntervalMs: z.number().int().min(5, 'probe at most every 5 ms').max(1000, 'probe at least every 1000 ms').optional(),
  tls: z.boolean().optional(),
  link: LinkProfileSchema.partial().nullable().optional(),
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
  /** The lab network the guest's NIC is on: the job records the remap and probes the guest. */
  network?: LabNetwork | null;
}

/** Ends the job: thrown inside run(), turned into a result by recover(). */
class JobEnd extends Error {
  constructor(
    readonly outcome: Exclude<MigrationOutcome, 'completed'>,
    reason: string,
    readonly qemuMessage: string | null = null,
    readonly kind: FailureKind = outcome === 'cancelled' ? 'cancelled' : 'migration',
  ) {
    super(reason);
  }
}

/** The last lines a guest printed that explain a crash (a kernel panic, an oops). */
function crashWords(console: string): string | null {
  const lines = console.split('\n').map((l) => l.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').trim()).filter(Boolean);
  const panic = lines.filter((l) => /panic|Oops|BUG:|general protection|Fatal exception/i.test(l));
  const pick = panic.length ? panic.slice(-2) : lines.slice(-2);
  return pick.length ? pick.join(' / ').slice(0, 400) : null;
}

/** A console's last 16 KB, escape sequences removed: room for a whole kernel oops and its panic. */
function consoleTail(console: string, maxChars = 16_000): string {
  return console.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').slice(-maxChars);
}

const TERMINAL: MigrationStatus[] = ['completed', 'failed', 'cancelled'];
const ACTIVE: MigrationStatus[] = ['setup', 'active', 'device', 'pre-switchover', 'cancelling', 'wait-unplug'];
const LINK_REPORT_MS = 500;
const CANCELLABLE = new Set<JobState>(['preflight', 'prepare', 'configure', 'listen', 'migrate', 'monitor']);

export class MigrationJob extends EventEmitter<{ event: [MigrationEvent] }> {
  readonly id = randomUUID();
  readonly options: MigrationOptions;
  private readonly t0 = performance.now();
  private state: JobState | null = null;
  private readonly spans: PhaseSpan[] = [];
  private dst: Guest | null = null;
  private relay: LinkRelayControl | null = null;
  private lastLinkStats: LinkRelayStats | null = null;
  private port: number | null = null;
  private checks: PreflightCheck[] = [];
  private readonly tracker = new PassTracker();
  readonly samples = new SampleRing();
  private lastPrediction: Prediction | null = null;
  private predictionSentAt = -Infinity;
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
  /** Capabilities both QEMUs offer (from pre-flight): what the prediction may advise. */
  private offeredCaps: string[] = [];
  /** The latest query-migrate answer: a pass that ends in the stop-and-copy closes with it. */
  private lastInfo: MigrationInfo | null = null;
  private failureKind: FailureKind = 'internal';
  private unwatchBeats: Array<() => void> = [];
  private destinationRunningAtMs: number | null = null;
  private resumedAtMs: number | null = null;
  private onFirstDstBeat: (() => void) | null = null;
  private net: MigrationNetworkWatch | null = null;
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
   * moving and the job finishes instead); returns whether it was accepted.
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
  setBandwidth(mbps: number): Promise<void> {
    return this.setParameters({ bandwidthMBps: mbps });
  }

  /** Changes downtime-limit while the migration runs. */
  setDowntimeLimit(ms: number): Promise<void> {
    return this.setParameters({ downtimeLimitMs: ms });
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

  private linkReportedAt = -Infinity;

  /** The emulated link's counters while the stream flows, twice a second: what a lesson watches. */
  private reportLink(): void {
    const relay = this.relay;
    if (!relay || performance.now() - this.linkReportedAt < LINK_REPORT_MS) return;
    this.linkReportedAt = performance.now();
    void relay.stats().then(
      (stats) => {
        this.lastLinkStats = stats;
        this.send({ type: 'link', atMs: this.now(), stats });
      },
      () => {},
    );
  }

  /** The emulated link: change its profile, pull the cable, or plug it back (with `link` on). */
  async link(action: { profile: Partial<LinkProfile> } | 'cut' | 'restore'): Promise<LinkRelayStats> {
    if (!this.relay) {
      const { guest, to } = this.req;
      if (!this.options.link) throw new Error('This migration has no emulated link: start it with the link option');
      // It was open and has closed with the job, or it opens once the destination listens.
      if (this.lastLinkStats) throw new Error(`The migration of ${guest.name} is over (${this.state}): its emulated link closed with it`);
      throw new Error(`The emulated link of ${guest.name}'s migration opens once ${to.name} listens (the migration is at ${this.state ?? 'its start'}): try again in a moment`);
    }
    const stats = action === 'cut' ? await this.relay.cut() : action === 'restore' ? await this.relay.restore() : await this.relay.setProfile(action.profile);
    this.lastLinkStats = stats;
    this.send({ type: 'link', atMs: this.now(), stats });
    return stats;
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
      this.offeredCaps = pre.capabilities;
      const failed = pre.checks.filter((c) => c.status === 'fail');
      if (failed.length) throw new JobEnd('failed', `Pre-flight check failed: ${failed.map((c) => c.message).join(' ')}`, null, 'preflight');
      const warned = pre.checks.filter((c) => c.status === 'warn');
      if (warned.length && !this.options.acceptWarnings) {
        throw new JobEnd('failed', `Pre-flight warnings were not accepted: ${warned.map((c) => c.message).join(' ')}`, null, 'preflight');
      }
      this.checkCancel();
      if (this.req.network && guest.spec.mac) {
        this.net = new MigrationNetworkWatch(this.req.network, guest, this.t0, (ev) => this.send(ev), this.options.probeIntervalMs);
        await this.net.start();
      }

      await this.transition('prepare');
      try {
        // Never guest.spec as such: an agent's guest names files that must resolve in a local destination's library.
        const start = await destinationStart(guest, from, to);
        this.dst = await to.prepareIncoming(start.spec, { overlayDisk: start.overlayDisk });
      } catch (err) {
        throw new JobEnd('failed', `The destination QEMU could not be started on ${to.name}: ${(err as Error).message}`, null, 'destination-start');
      }
      await this.net?.learnAnnounces(this.dst);
      this.checkCancel();

      await this.transition('configure');
      await this.configure();
      this.checkCancel();

      await this.transition('listen');
      const uri = `tcp:${to.address}:${this.port}`;
      await migrateIncoming(this.dst.qmp, uri);
      let sourceUri = uri;
      if (this.options.link) {
        this.relay = await to.openLinkRelay(this.port!, this.options.link);
        sourceUri = `tcp:${to.address}:${this.relay.port}`;
        this.lastLinkStats = await this.relay.stats();
        this.send({ type: 'link', atMs: this.now(), stats: this.lastLinkStats });
      }
      this.checkCancel();

      await this.transition('migrate');
      this.watchHeartbeats();
      await this.migrateAndMonitor(sourceUri);

      await this.transition('confirm');
      await this.confirm();

      await this.transition('cleanup');
      await from.stopGuest(guest.name); // retires the source's switch port too
      await this.net?.settle(this.destinationRunningAtMs);
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
    // With TLS the destination is the server; the source checks that its certificate names the
    // address it connects to (the lab CA put it in the IP SANs). Without, the source's tls-creds
    // are cleared: a guest that arrived by a TLS migration keeps its destination's.
    let tls: { 'tls-creds': string; 'tls-hostname': string } = { 'tls-creds': '', 'tls-hostname': '' };
    if (this.options.tls) {
      const [client, server] = await Promise.all([
        this.req.from.addMigrationTls(this.req.guest, 'client'),
        this.req.to.addMigrationTls(this.dst!, 'server'),
      ]);
      await migrateSetParameters(this.dst!.qmp, { 'tls-creds': server });
      tls = { 'tls-creds': client, 'tls-hostname': this.req.to.address };
    }
    await migrateSetParameters(this.req.guest.qmp, {
      'max-bandwidth': Math.round(this.bandwidthMBps * 1e6),
      'downtime-limit': this.downtimeLimitMs,
      ...tls,
    });
    this.send({ type: 'parameters', atMs: this.now(), bandwidthMBps: this.bandwidthMBps, downtimeLimitMs: this.downtimeLimitMs });
  }

  private async sample(): Promise<{ info: MigrationInfo; sample: MigrationSample | null }> {
    const t = performance.now();
    const info = await queryMigrate(this.req.guest.qmp);
    this.samplingMs += performance.now() - t;
    this.samplingCount++;
    this.lastInfo = info;
    const sample = sampleFromInfo(info, this.now());
    return { info, sample };
  }

  private updatePrediction(s: MigrationSample): void {
    const p = predict({
      // A figure QEMU did not report is NaN here, which predict() answers with "unknown".
      remainingBytes: s.remainingBytes ?? NaN,
      dirtyRateBps: s.dirtyRateBps ?? NaN,
      bandwidthBps: s.throughputBps !== null && s.throughputBps > 0 ? s.throughputBps : this.bandwidthMBps * 1e6,
      downtimeLimitMs: this.downtimeLimitMs,
      ...(this.req.workingSetBytes !== undefined ? { workingSetBytes: this.req.workingSetBytes } : {}),
      capabilitiesOffered: this.offeredCaps,
      capabilitiesOn: ['events', ...Object.entries(this.options.capabilities).filter(([, v]) => v).map(([k]) => k)],
      ...(s.cpuThrottlePercent !== null ? { throttlePercent: s.cpuThrottlePercent } : {}),
    });
    // The verdict as soon as it changes; otherwise fresh numbers once a second, not every sample.
    const changed = !this.lastPrediction || this.lastPrediction.kind !== p.kind;
    this.lastPrediction = p;
    const now = this.now();
    if (changed || now - this.predictionSentAt >= 1000) {
      this.predictionSentAt = now;
      this.send({ type: 'prediction', atMs: now, prediction: p });
    }
  }

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
        this.onFirstDstBeat?.();
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
    /** The terminal status as QEMU's MIGRATION event said it: a late query reply never overrides it. */
    let finalStatus: MigrationStatus | null = null;
    let dstExit: string | null = null;
    let woken = false;
    const wakeUp = () => {
      woken = true; // an event during a query is not lost: the next wait is skipped
      this.wake?.();
    };
    const offs: Array<() => void> = [];
    // Listeners go in before `migrate`, so no event it causes can be missed.
    offs.push(src.qmp.onEvent('MIGRATION', (ev: QmpEvent) => {
      const st = String(ev.data.status) as MigrationStatus;
      status = st;
      if (TERMINAL.includes(st)) finalStatus = st;
      this.send({ type: 'status', atMs: this.now(), status: st });
      wakeUp();
    }));
    offs.push(src.qmp.onEvent('MIGRATION_PASS', (ev: QmpEvent) => void this.onPass(Number(ev.data.pass))));
    offs.push(src.qmp.onEvent('STOP', () => {
      this.sawStopAt ??= this.now();
      wakeUp();
    }));
    let monitoring = true;
    void dst.exited.then((exit) => {
      if (!monitoring) return;
      dstExit = describeExit(exit);
      wakeUp();
    });
    try {
      await migrate(src.qmp, uri);
      await this.transition('monitor');
      let dstGoneAt: number | null = null;
      let cancelSent = false;
      let lastQueryAt = 0;
      let info: MigrationInfo = {};
      for (;;) {
        woken = false;
        if (this.cancelReason && !cancelSent && this.sawStopAt === null) {
          cancelSent = true;
          await migrateCancel(src.qmp).catch(() => {});
        }
        // During the stop-and-copy QEMU holds its main lock, so a query would only wait for it:
        // rely on the MIGRATION event then, with a slow query as a safety net.
        const inStopAndCopy = this.sawStopAt !== null && finalStatus === null;
        if (!inStopAndCopy || performance.now() - lastQueryAt >= 500) {
          lastQueryAt = performance.now();
          const got = await this.sample();
          info = got.info;
          if (got.sample) {
            this.samples.push(got.sample);
            this.send({ type: 'sample', atMs: got.sample.atMs, sample: got.sample });
            if (got.sample.status === 'active') this.updatePrediction(got.sample);
          }
          this.reportLink();
          if (info.status && TERMINAL.includes(info.status)) finalStatus ??= info.status;
        }
        if (finalStatus === null && info.status) status = info.status;
        if (finalStatus) status = finalStatus;
        if (this.sawStopAt !== null && this.state === 'monitor') await this.transition('switchover', this.sawStopAt);
        if (status === 'completed') {
          this.finalInfo = await this.settledFinalInfo(info);
          const closed = this.tracker.finish(this.now(), this.finalInfo);
          if (closed) this.send({ type: 'pass', atMs: this.now(), pass: closed });
          if (this.state === 'monitor') await this.transition('switchover', this.sawStopAt ?? this.now());
          return;
        }
        if (status === 'failed') {
          this.finalInfo = info.status === 'failed' ? info : await queryMigrate(src.qmp).catch(() => info);
          // The source can notice a dead peer a moment before we see the destination's exit.
          const ac = new AbortController();
          await Promise.race([dst.exited, delay(1500, undefined, { signal: ac.signal }).catch(() => {})]);
          ac.abort();
          const desc = this.finalInfo['error-desc'];
          const why = dst.exit ? `the destination QEMU stopped (${describeExit(dst.exit)})` : (desc ?? 'QEMU gave no reason');
          throw new JobEnd('failed', `The migration failed: ${why}.`, desc ?? dst.exit?.stderrTail ?? null);
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
        if (woken) continue;
        const interval = this.sawStopAt !== null && finalStatus === null ? 500 : this.options.sampleIntervalMs;
        const wait = Math.max(0, interval - (performance.now() - lastQueryAt));
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
      monitoring = false;
      for (const off of offs) off();
    }
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
      current = await queryMigrate(this.req.guest.qmp).catch(() => current);
    }
    return current;
  }

  private async onPass(pass: number): Promise<void> {
    const at = this.now();
    let info: MigrationInfo | null = null;
    // The bytes at a pass boundary come from a query right at the event; not during the
    // stop-and-copy, where QEMU would answer only after the switchover.
    if (this.sawStopAt === null) {
      const t = performance.now();
      try {
        info = await queryMigrate(this.req.guest.qmp);
        this.lastInfo = info;
      } catch {
        /* the pass is still recorded, with fewer figures */
      }
      this.samplingMs += performance.now() - t;
      this.samplingCount++;
    } else {
      info = this.lastInfo;
    }
    const closed = this.tracker.onPass(pass, at, info);
    if (closed) this.send({ type: 'pass', atMs: this.now(), pass: closed });
  }

  /**
   * The destination runs the guest, and the guest's heartbeats have resumed there. Then it must
   * keep it alive for confirmWatchMs while the source waits, paused, as the fallback.
   */
  private async confirm(): Promise<void> {
    const dst = this.dst!;
    const crashed = (what: string) =>
      new JobEnd(
        'failed',
        `The guest ${what} on ${this.req.to.name} right after the switchover, so MigLab resumed it on ${this.req.from.name}.` +
          (crashWords(dst.console.text()) ? ` The guest's last words: ${crashWords(dst.console.text())}` : ''),
        dst.exit?.stderrTail || null,
        'destination-crashed',
      );
    const failIfGone = () => {
      const exit = dst.exit;
      if (exit) throw crashed(`crashed (${describeExit(exit)})`);
    };
    // Event-driven: RESUME says QEMU runs the guest, the first heartbeat says the guest runs.
    // The wait is registered before the question, so a RESUME in between is not missed.
    const done = new AbortController(); // ends the waits below, so no timer outlives confirm
    try {
      const resumed = dst.qmp.waitForEvent('RESUME', { timeoutMs: 15_000, signal: done.signal });
      resumed.catch(() => {});
      const gone = dst.exited.then((exit) => {
        throw crashed(`crashed (${describeExit(exit)})`);
      });
      gone.catch(() => {});
      failIfGone();
      const st = await queryStatus(dst.qmp).catch(() => null);
      if (st?.status !== 'running') {
        try {
          const ev = await Promise.race([resumed, gone]);
          this.destinationRunningAtMs = ev.receivedAt - this.t0;
        } catch (err) {
          if (err instanceof JobEnd) throw err;
          const now = await queryStatus(dst.qmp).catch(() => null);
          throw crashed(`did not start running (QEMU says "${now?.status ?? 'nothing'}")`);
        }
      }
      this.destinationRunningAtMs ??= this.now();
      if (dst.labload && !this.dstFirstBeat) {
        const beat = new Promise<void>((resolve) => {
          this.onFirstDstBeat = resolve;
        });
        const silent = delay(15_000, undefined, { signal: done.signal }).then(() => {
          throw crashed('did not resume its heartbeats');
        });
        silent.catch(() => {});
        if (!this.dstFirstBeat) await Promise.race([beat, gone, silent]);
      }
    } finally {
      done.abort();
    }
    this.resumedAtMs = this.now();
    // The watch: QEMU alive, and (with labload) heartbeats no more than 500 ms apart.
    const watchEnd = performance.now() + this.options.confirmWatchMs;
    while (performance.now() < watchEnd) {
      await delay(50);
      failIfGone();
      const st = await queryStatus(dst.qmp).catch(() => null);
      if (st && st.status !== 'running') throw crashed(`stopped (QEMU says "${st.status}")`);
      const last = dst.labload?.heartbeats.last;
      if (last && performance.now() - last.hostMs > 500) throw crashed('went silent (no heartbeats for 500 ms)');
    }
    dst.markReady(); // its source was ready, and it carries on from the same state
  }

  /** Undoes what the job started so that exactly one copy runs: the source. */
  private async recover(err: unknown): Promise<MigrationResult> {
    const end = err instanceof JobEnd ? err : new JobEnd('failed', `The migration could not go on: ${(err as Error).message}`, null, 'internal');
    this.failureKind = end.kind;
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
        await this.dst.stop(); // before the source resumes: never two copies running
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
    if (this.relay) {
      this.lastLinkStats = await this.relay.stats().catch(() => this.lastLinkStats);
      await this.relay.close().catch(() => {});
      this.relay = null;
    }
    const network = this.net?.finish() ?? null;
    if (this.port !== null) this.req.to.releaseMigrationPort(this.port);
    const info = this.finalInfo;
    const ram = info?.ram;
    const guestDowntimeMs =
      outcome === 'completed' && this.srcLastBeat && this.dstFirstBeat
        ? Math.round((this.dstFirstBeat.hostMs - this.srcLastBeat.hostMs) * 10) / 10
        : null;
    await this.transition(outcome);
    if (outcome === 'failed' && this.lastLinkStats?.cut) {
      // QEMU only says its stream broke; the lesson is that the cable was pulled.
      reason = `The emulated link was cut (the cable pulled) during the migration, so the stream broke and the guest stayed on ${this.req.from.name}. ${reason ?? ''}`.trim();
    }
    const result: MigrationResult = {
      id: this.id,
      status: outcome,
      guest: this.req.guest.name,
      from: this.req.from.name,
      to: this.req.to.name,
      reason,
      qemuMessage,
      ramBytes: ram?.total ?? null,
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
      destinationRunningAtMs: outcome === 'completed' && this.destinationRunningAtMs !== null ? Math.round(this.destinationRunningAtMs * 10) / 10 : null,
      resumedAtMs: outcome === 'completed' ? this.resumedAtMs : null,
      failure: outcome === 'completed' ? null : this.failureKind,
      destinationConsoleTail: outcome !== 'completed' && this.failureKind === 'destination-crashed' && this.dst ? consoleTail(this.dst.console.text()) : null,
      network,
      tls: this.options.tls,
      link: this.lastLinkStats,
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
