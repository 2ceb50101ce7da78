// What the UI knows: the lab snapshot, and for each migration the story its events tell. Events
// arrive up to ~50 a second; listeners hear of them at most once per animation frame.
import { useSyncExternalStore } from 'react';
import {
  MIGRATION_OUTCOMES,
  type ApiEvent, type DowntimePolicyReport, type DowntimeStep, type JobState, type LabSnapshot, type LinkProfile, type LinkRelayStats, type MigrationPass, type MigrationResult,
  type NetworkMacMove, type PhaseSpan, type PreflightCheck, type Prediction, type ProbeSample,
} from '../../electron/engine/api/contract';

/** Samples kept per migration for the charts: at 10 a second, five minutes. */
export const MAX_SAMPLES = 3000;
const MAX_PROBE = 3000;
/** Link counters kept per migration: at two a second, five minutes. */
export const MAX_LINK_POINTS = 600;

/** Per sample; null where QEMU did not report the figure (a gap in a chart, "n/a" in text). */
export interface SampleSeries {
  t: number[];
  remaining: (number | null)[];
  transferred: (number | null)[];
  dirtyRate: (number | null)[];
  throughput: (number | null)[];
  pass: (number | null)[];
}

export interface MigrationTrack {
  id: string;
  guest: string;
  from: string;
  to: string;
  state: JobState;
  phases: PhaseSpan[];
  checks: PreflightCheck[];
  samples: SampleSeries;
  /** Bytes of RAM, once QEMU said; null until then. */
  totalBytes: number | null;
  passes: MigrationPass[];
  prediction: Prediction | null;
  params: { bandwidthMBps: number; downtimeLimitMs: number } | null;
  /** The downtime policy's acts as they happened ('downtime-step' events), at job time atMs. */
  downtimeSteps: Array<{ atMs: number; step: DowntimeStep }>;
  /** The policy the migration ran under and what it did (the result's); null until the result says. */
  downtimePolicy: DowntimePolicyReport | null;
  moves: NetworkMacMove[];
  announces: Array<{ atMs: number; host: string; count: number }>;
  probe: ProbeSample[];
  probeTotals: { sent: number; received: number };
  heartbeatGapMs: number | null;
  /** The stream is encrypted with QEMU's TLS. */
  tls: boolean;
  /** The link profile asked for when it started; null: no link emulation (as far as the UI knows). */
  linkRequested: Partial<LinkProfile> | null;
  /** The emulated link's latest counters (the relay's, then the result's). */
  link: LinkRelayStats | null;
  /** Bytes the relay had delivered to the destination, over job time (s): for the rate through it. */
  linkHistory: { t: number[]; bytesForward: number[] };
  result: MigrationResult | null;
  /** QEMU's latest migration status on the source (its MIGRATION events): "pre-switchover" means it waits for Continue. */
  qemuStatus: string | null;
  /** While the destination runs and the paused source is kept for a rollback: how long, and why. */
  sourceKept: { ms: number; why: string } | null;
  /** The job time of the latest event: where an unfinished phase has got to. */
  lastAtMs: number;
  /** ISO time the job started (from the lab snapshot), or null before it says. */
  startedAt: string | null;
}

export interface LabState {
  snapshot: LabSnapshot | null;
  migrations: Map<string, MigrationTrack>;
  /** The newest migration: the Migration view shows it unless the user picked another. */
  current: string | null;
  /** Bumped on every change, so React sees a new state. */
  version: number;
}

function newTrack(id: string, guest: string, from = '', to = ''): MigrationTrack {
  return {
    id, guest, from, to, state: 'preflight', phases: [], checks: [],
    samples: { t: [], remaining: [], transferred: [], dirtyRate: [], throughput: [], pass: [] },
    totalBytes: null, passes: [], prediction: null, params: null, downtimeSteps: [], downtimePolicy: null, moves: [], announces: [], probe: [],
    probeTotals: { sent: 0, received: 0 }, heartbeatGapMs: null, tls: false, linkRequested: null, link: null,
    linkHistory: { t: [], bytesForward: [] }, result: null, qemuStatus: null, sourceKept: null, lastAtMs: 0, startedAt: null,
  };
}

function push<T>(arr: T[], v: T, max: number): void {
  arr.push(v);
  if (arr.length > max) arr.splice(0, arr.length - max);
}

export class LabStore {
  private state: LabState = { snapshot: null, migrations: new Map(), current: null, version: 0 };
  private readonly listeners = new Set<() => void>();
  private frame: number | null = null;

  readonly subscribe = (l: () => void): (() => void) => {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  };

  readonly get = (): LabState => this.state;

  private changed(): void {
    if (this.frame !== null) return;
    const flush = () => {
      this.frame = null;
      this.state = { ...this.state, version: this.state.version + 1 };
      for (const l of this.listeners) l();
    };
    this.frame = typeof requestAnimationFrame === 'function' ? requestAnimationFrame(flush) : (setTimeout(flush, 16) as unknown as number);
  }

  private track(id: string, guest: string): MigrationTrack {
    let t = this.state.migrations.get(id);
    if (!t) {
      const known = this.state.snapshot?.migrations.find((m) => m.id === id);
      t = newTrack(id, guest, known?.from, known?.to);
      this.state.migrations.set(id, t);
      this.state.current = id;
    }
    return t;
  }

  apply(ev: ApiEvent): void {
    if (ev.type === 'lab') {
      this.state.snapshot = ev.snapshot;
      for (const m of ev.snapshot.migrations) {
        const t = this.track(m.id, m.guest);
        t.from = m.from;
        t.to = m.to;
        t.startedAt = m.startedAt;
        if (m.tls !== undefined) t.tls = m.tls;
        if (m.link) t.linkRequested = m.link;
        // A migration this page only hears of from a snapshot (it was opened later) still shows
        // where it is and, once over, what its result says.
        if (t.phases.length === 0) t.state = m.state;
        if (m.result && !t.result) {
          t.result = m.result;
          t.state = m.result.status;
          if (t.passes.length === 0) t.passes = [...m.result.passes];
          if (t.phases.length === 0) t.phases = m.result.phases.map((p) => ({ ...p }));
          if (t.checks.length === 0) t.checks = [...m.result.checks];
          t.prediction ??= m.result.prediction;
          t.tls = m.result.tls;
          if (m.result.link) t.link = m.result.link;
          t.downtimePolicy = m.result.downtimePolicy ?? null;
          t.lastAtMs = Math.max(t.lastAtMs, m.result.wallTimeMs);
        }
      }
    } else if (ev.type === 'migration') {
      this.applyMigration(this.track(ev.id, ev.guest), ev.event);
    } else {
      return; // console output goes straight to the terminals
    }
    this.changed();
  }

  private applyMigration(t: MigrationTrack, e: Extract<ApiEvent, { type: 'migration' }>['event']): void {
    t.lastAtMs = Math.max(t.lastAtMs, e.atMs);
    switch (e.type) {
      case 'phase': {
        t.state = e.phase;
        const open = t.phases.at(-1);
        if (open && open.endMs === null) open.endMs = e.atMs;
        if (!(MIGRATION_OUTCOMES as readonly string[]).includes(e.phase)) t.phases.push({ name: e.phase as PhaseSpan['name'], startMs: e.atMs, endMs: null });
        break;
      }
      case 'check':
        t.checks.push(e.check);
        break;
      case 'sample': {
        const s = e.sample;
        push(t.samples.t, s.atMs / 1000, MAX_SAMPLES);
        push(t.samples.remaining, s.remainingBytes, MAX_SAMPLES);
        push(t.samples.transferred, s.transferredBytes, MAX_SAMPLES);
        push(t.samples.dirtyRate, s.dirtyRateBps, MAX_SAMPLES);
        push(t.samples.throughput, s.throughputBps, MAX_SAMPLES);
        push(t.samples.pass, s.pass, MAX_SAMPLES);
        if (s.totalBytes !== null) t.totalBytes = s.totalBytes;
        break;
      }
      case 'pass':
        t.passes.push(e.pass);
        break;
      case 'prediction':
        t.prediction = e.prediction;
        break;
      case 'parameters':
        t.params = { bandwidthMBps: e.bandwidthMBps, downtimeLimitMs: e.downtimeLimitMs };
        break;
      case 'downtime-step':
        t.downtimeSteps.push({ atMs: e.atMs, step: e.step });
        break;
      case 'heartbeat-gap':
        t.heartbeatGapMs = e.gapMs;
        break;
      case 'mac-move':
        t.moves.push(e.move);
        break;
      case 'announce':
        t.announces.push({ atMs: e.atMs, host: e.host, count: e.count });
        break;
      case 'probe':
        for (const s of e.samples) push(t.probe, s, MAX_PROBE);
        t.probeTotals = { sent: e.sent, received: e.received };
        break;
      case 'link':
        t.link = e.stats;
        push(t.linkHistory.t, e.atMs / 1000, MAX_LINK_POINTS);
        push(t.linkHistory.bytesForward, e.stats.bytesForward, MAX_LINK_POINTS);
        break;
      case 'result':
      case 'result-update':
        t.result = e.result;
        t.state = e.result.status;
        t.tls = e.result.tls;
        if (e.result.link) t.link = e.result.link;
        // Results from before the policy existed have no field: none.
        t.downtimePolicy = e.result.downtimePolicy ?? null;
        t.from ||= e.result.from;
        t.to ||= e.result.to;
        break;
      case 'status':
        t.qemuStatus = e.status;
        break;
      case 'source-kept':
        t.sourceKept = { ms: e.ms, why: e.why };
        break;
    }
  }
}

export function useLab(store: LabStore): LabState {
  return useSyncExternalStore(store.subscribe, store.get);
}
