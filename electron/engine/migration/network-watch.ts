// What the lab network saw of one migration: the guest's MAC moving to the destination's switch
// port, the announce frames that moved it, and the probe's replies through the switchover.
import type { Guest } from '../hosts/host';
import type { LabNetwork } from '../network/lab-network';
import type { Probe } from '../network/probe';
import type { AnnounceFrame, MacMove } from '../network/switch';
import { queryMigrateParameters } from '../qmp';
import { delay } from '../util/time';
import type { MigrationEvent, MigrationNetworkReport, NetworkMacMove, ProbeSample } from './types';

const FLUSH_MS = 100;

/** When QEMU sends its announce rounds, ms after the destination starts (qemu_announce_self). */
export function announceSchedule(p: { initial: number; max: number; rounds: number; step: number }): number[] {
  const at: number[] = [];
  let t = 0;
  for (let i = 0; i < p.rounds; i++) {
    at.push(t);
    t += Math.min(p.initial + i * p.step, p.max);
  }
  return at;
}

const round1 = (ms: number) => Math.round(ms * 10) / 10;

export class MigrationNetworkWatch {
  private readonly mac: string;
  private readonly ip: string | null;
  private readonly moves: NetworkMacMove[] = [];
  private readonly announces: number[] = [];
  private probe: Probe | null = null;
  private samples: ProbeSample[] = [];
  private flushTimer: NodeJS.Timeout | null = null;
  /** When the destination sends its announce rounds (ms after it starts); null: not known. */
  private schedule: number[] | null = null;
  /** The destination QEMU's announce-rounds; null: it could not be asked or did not say. */
  private expectedRounds: number | null = null;
  private readonly offs: Array<() => void> = [];

  constructor(
    private readonly network: LabNetwork,
    private readonly source: Guest,
    private readonly t0: number,
    private readonly send: (ev: MigrationEvent) => void,
    private readonly probeIntervalMs: number,
  ) {
    this.mac = source.spec.mac!;
    this.ip = source.spec.ip ? source.spec.ip.split('/')[0]! : null;
  }

  /** Starts listening on the switch and probing the guest. */
  async start(): Promise<void> {
    const sw = this.network.switch;
    const onMove = (m: MacMove) => {
      if (m.mac !== this.mac) return;
      const move: NetworkMacMove = {
        mac: m.mac, fromHost: m.fromHost, toHost: m.toHost, fromPort: m.fromPort, toPort: m.toPort,
        atMs: round1(m.at - this.t0), cause: m.cause,
      };
      this.moves.push(move);
      this.send({ type: 'mac-move', atMs: move.atMs, move });
    };
    const onAnnounce = (a: AnnounceFrame) => {
      if (a.mac !== this.mac) return;
      this.announces.push(round1(a.at - this.t0));
      this.send({ type: 'announce', atMs: round1(a.at - this.t0), mac: a.mac, host: a.host, port: a.port, count: this.announces.length });
    };
    sw.on('mac-move', onMove);
    sw.on('announce', onAnnounce);
    this.offs.push(() => sw.off('mac-move', onMove), () => sw.off('announce', onAnnounce));
    if (this.ip) {
      // Watching is not worth failing a migration for: without a probe the report says probe: null.
      const endpoint = await this.network.probeEndpoint().catch(() => null);
      if (!endpoint) return;
      const probe = endpoint.probe(this.ip, this.probeIntervalMs);
      probe.on('reply', (r) => this.samples.push({ seq: r.seq, sentAtMs: round1(r.sentAt - this.t0), rttMs: r.rttMs === null ? null : round1(r.rttMs) }));
      this.probe = probe;
      this.flushTimer = setInterval(() => this.flush(), FLUSH_MS);
    }
  }

  private flush(): void {
    if (!this.samples.length || !this.probe) return;
    const s = this.probe.summary();
    this.send({ type: 'probe', atMs: round1(performance.now() - this.t0), samples: this.samples, sent: s.sent, received: s.received });
    this.samples = [];
  }

  /**
   * Reads how many announce rounds the destination will send, and when, from its own
   * query-migrate-parameters. What it does not report stays unknown: no default is assumed.
   */
  async learnAnnounces(destination: Guest): Promise<void> {
    const p = await queryMigrateParameters(destination.qmp).catch(() => null);
    if (!p) return;
    this.expectedRounds = p['announce-rounds'] ?? null;
    const initial = p['announce-initial'];
    const max = p['announce-max'];
    const step = p['announce-step'];
    if (this.expectedRounds !== null && initial !== undefined && max !== undefined && step !== undefined) {
      this.schedule = announceSchedule({ initial, max, rounds: this.expectedRounds, step });
    }
  }

  /**
   * After a completed migration: waits (bounded) until every announce round has been seen and the
   * probe has had replies from the destination, so the report is whole.
   */
  async settle(destinationRunningAtMs: number | null): Promise<void> {
    // Unknown rounds cannot be waited for: then only the probe's replies are.
    const expected = this.expectedRounds ?? 0;
    const lastRound = this.schedule?.[this.schedule.length - 1] ?? 0;
    const from = destinationRunningAtMs !== null ? this.t0 + destinationRunningAtMs : performance.now();
    const deadline = Math.max(from + lastRound + 500, performance.now() + 100);
    while (performance.now() < deadline) {
      const announced = this.announces.length >= expected;
      const lastMove = this.moves.at(-1)?.atMs ?? null;
      const replied = !this.probe || (lastMove !== null && (this.probe.lastReplyAt ?? 0) - this.t0 > lastMove);
      if (announced && replied) return;
      await delay(20);
    }
  }

  /** Stops listening and probing; the whole report. */
  finish(): MigrationNetworkReport {
    for (const off of this.offs.splice(0)) off();
    if (this.flushTimer) clearInterval(this.flushTimer);
    const summary = this.probe?.stop() ?? null;
    this.flush();
    this.probe = null;
    return this.report(summary);
  }

  /** What the wire has shown so far, while the watch goes on (the probe's figures up to now). */
  report(summary = this.probe?.summary() ?? null): MigrationNetworkReport {
    const oldPort = this.source.switchPort?.id;
    const retired = oldPort === undefined ? null : !this.network.switch.portInfo().some((p) => p.id === oldPort);
    return {
      mac: this.mac,
      ip: this.ip,
      macMoves: [...this.moves],
      announceFrames: this.announces.length,
      announceAtMs: [...this.announces],
      expectedAnnounceFrames: this.expectedRounds,
      probe: summary && {
        target: summary.target, intervalMs: summary.intervalMs, sent: summary.sent, received: summary.received,
        maxGapMs: summary.maxGapMs === null ? null : round1(summary.maxGapMs),
      },
      networkDowntimeMs: summary?.maxGapMs == null ? null : round1(summary.maxGapMs),
      oldPortRetired: retired,
    };
  }
}
