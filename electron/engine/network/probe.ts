// The probe: the switch's own observer, with a MAC and an IP in the lab subnet. It ARPs for a
// guest and pings it at a fixed interval through a migration; the gaps in its replies are the
// network-side downtime, measured on the wire rather than guessed.
import { createSocket, type Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import {
  BROADCAST_MAC, buildArp, buildIcmpEcho, ipv4ToNumber, parseArp, parseIcmpEcho, type MacKey,
} from './frame';
import type { LabSwitch, SwitchPortHandle } from './switch';

/** One echo request and what became of it. Times are performance.now(). */
export interface ProbeReply {
  seq: number;
  sentAt: number;
  /** Round-trip time, or null for a request that got no reply within the loss timeout. */
  rttMs: number | null;
}

export interface ProbeSummary {
  target: string;
  intervalMs: number;
  sent: number;
  received: number;
  /** The longest time between two consecutive replies (or from the last reply to the end). */
  maxGapMs: number | null;
  /** When that gap began and ended (performance.now()); null without one. */
  gapFrom: number | null;
  gapTo: number | null;
  /** ARP requests sent before the guest answered one. */
  arpRequests: number;
}

export interface ProbeEvents {
  reply: [reply: ProbeReply];
}

/** A request with no reply after this long is counted as lost (a later reply still counts). */
const LOSS_TIMEOUT_MS = 1000;

/**
 * The endpoint on the switch that probes send from: a NIC of the engine's own, on a switch port
 * like any guest's. It answers ARP for its own address (so guests can reply), keeps what it
 * learns by ARP, and hands echo replies to the probe that sent them.
 */
export class ProbeEndpoint {
  private readonly arpCache = new Map<number, MacKey>();
  private readonly probes = new Map<number, Probe>();
  private nextId = (process.pid * 7919) & 0xffff;

  private constructor(
    private readonly socket: Socket,
    private readonly port: SwitchPortHandle,
    readonly mac: MacKey,
    readonly ip: number,
  ) {
    socket.on('message', (frame: Buffer) => this.receive(frame));
  }

  /** Plugs a new endpoint into the switch: a UDP socket here, a switch port that trusts it. */
  static async open(sw: LabSwitch, mac: MacKey, ip: number): Promise<ProbeEndpoint> {
    const socket = createSocket('udp4');
    socket.on('error', () => {}); // a send to a closing switch is a lost probe, not a crash
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind({ address: sw.address, port: 0 }, () => resolve());
      });
      const port = await sw.openPort({ host: 'probe', guest: 'probe' }, { address: sw.address, port: socket.address().port });
      await new Promise<void>((resolve) => socket.connect(port.port, port.address, () => resolve()));
      return new ProbeEndpoint(socket, port, mac, ip);
    } catch (err) {
      socket.close();
      throw err;
    }
  }

  get portId(): number {
    return this.port.id;
  }

  private transmit(frame: Buffer): void {
    this.socket.send(frame);
  }

  private receive(frame: Buffer): void {
    const arp = parseArp(frame);
    if (arp) {
      if (arp.senderIp !== 0) this.arpCache.set(arp.senderIp, arp.senderMac);
      if (arp.op === 1 && arp.targetIp === this.ip) {
        this.transmit(buildArp({ op: 2, senderMac: this.mac, senderIp: this.ip, targetMac: arp.senderMac, targetIp: arp.senderIp }, arp.senderMac));
      }
      return;
    }
    const echo = parseIcmpEcho(frame);
    if (!echo || echo.dstIp !== this.ip) return;
    if (echo.type === 8) {
      // A guest pinging the probe gets its answer: the probe is a host on the lab subnet.
      this.transmit(buildIcmpEcho({ ...echo, type: 0, srcMac: this.mac, dstMac: echo.srcMac, srcIp: this.ip, dstIp: echo.srcIp }));
      return;
    }
    this.probes.get(echo.id)?.onReply(echo.seq, echo.srcIp);
  }

  macOf(ip: number): MacKey | undefined {
    return this.arpCache.get(ip);
  }

  sendArpRequest(targetIp: number): void {
    this.transmit(buildArp({ op: 1, senderMac: this.mac, senderIp: this.ip, targetMac: 0, targetIp }, BROADCAST_MAC));
  }

  sendEcho(dstMac: MacKey, dstIp: number, id: number, seq: number): void {
    this.transmit(buildIcmpEcho({ srcMac: this.mac, dstMac, srcIp: this.ip, dstIp, type: 8, id, seq, payload: Buffer.alloc(32) }));
  }

  /** Starts pinging `targetIp` every `intervalMs` until the returned probe is stopped. */
  probe(targetIp: string, intervalMs = 20): Probe {
    if (!Number.isInteger(intervalMs) || intervalMs < 5 || intervalMs > 10_000) {
      throw new RangeError(`The probe interval must be 5-10000 ms (got ${intervalMs})`);
    }
    const id = this.nextId++ & 0xffff;
    const p = new Probe(this, id, targetIp, intervalMs, () => this.probes.delete(id));
    this.probes.set(id, p);
    return p;
  }

  private closed = false;

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of [...this.probes.values()]) p.stop();
    this.port.close();
    this.socket.close();
  }
}

export class Probe extends EventEmitter<ProbeEvents> {
  private readonly target: number;
  private readonly pending = new Map<number, number>();
  private readonly replyTimes: number[] = [];
  private seq = 0;
  private sent = 0;
  private received = 0;
  private arpRequests = 0;
  private timer: NodeJS.Timeout | null;
  private stoppedAt: number | null = null;

  constructor(
    private readonly endpoint: ProbeEndpoint,
    private readonly id: number,
    readonly targetIp: string,
    readonly intervalMs: number,
    private readonly onStop: () => void,
  ) {
    super();
    this.target = ipv4ToNumber(targetIp);
    this.timer = setInterval(() => this.tick(), intervalMs);
    this.tick();
  }

  private tick(): void {
    const now = performance.now();
    for (const [seq, sentAt] of this.pending) {
      if (now - sentAt < LOSS_TIMEOUT_MS) break; // insertion order = send order
      this.pending.delete(seq);
      this.emit('reply', { seq, sentAt, rttMs: null });
    }
    const mac = this.endpoint.macOf(this.target);
    if (mac === undefined) {
      this.arpRequests++;
      this.endpoint.sendArpRequest(this.target);
      return;
    }
    const seq = this.seq++ & 0xffff;
    this.pending.set(seq, now);
    this.sent++;
    this.endpoint.sendEcho(mac, this.target, this.id, seq);
  }

  onReply(seq: number, fromIp: number): void {
    if (fromIp !== this.target || this.stoppedAt !== null) return;
    const sentAt = this.pending.get(seq);
    if (sentAt === undefined) return; // a duplicate, or one already counted as lost
    this.pending.delete(seq);
    const now = performance.now();
    this.received++;
    this.replyTimes.push(now);
    this.emit('reply', { seq, sentAt, rttMs: now - sentAt });
  }

  summary(): ProbeSummary {
    const end = this.stoppedAt ?? performance.now();
    let maxGap: number | null = null;
    let from: number | null = null;
    let to: number | null = null;
    const t = this.replyTimes;
    for (let i = 1; i < t.length; i++) {
      const gap = t[i]! - t[i - 1]!;
      if (maxGap === null || gap > maxGap) [maxGap, from, to] = [gap, t[i - 1]!, t[i]!];
    }
    // Replies that stopped and never came back: the gap runs to the end of the probe.
    const last = t[t.length - 1];
    if (last !== undefined && this.sent > this.received && end - last > (maxGap ?? 0) && end - last > 3 * this.intervalMs) {
      [maxGap, from, to] = [end - last, last, end];
    }
    return {
      target: this.targetIp, intervalMs: this.intervalMs, sent: this.sent, received: this.received,
      maxGapMs: maxGap, gapFrom: from, gapTo: to, arpRequests: this.arpRequests,
    };
  }

  /** Time of the latest reply, or null before the first. */
  get lastReplyAt(): number | null {
    return this.replyTimes[this.replyTimes.length - 1] ?? null;
  }

  stop(): ProbeSummary {
    if (this.timer) {
      clearInterval(this.timer);
      this.timer = null;
      this.stoppedAt = performance.now();
      this.onStop();
    }
    return this.summary();
  }
}
