// The lab switch: a userspace L2 learning switch. Every guest NIC is a port; QEMU's dgram netdev
// sends each frame as one UDP datagram to its port's socket, so guests on this machine and on LAN
// hosts plug in without root. The switch records every MAC move and every announce frame: that
// is the network remap of a migration, as the wire saw it.
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { isIPv4 } from 'node:net';
import {
  BROADCAST_MAC, ETH_HEADER, ETHERTYPE_RARP, MAX_FRAME, ethertypeOf, isGroupMac, macKeyAt, macToString, moveCauseOf,
  type MacKey, type MoveCause,
} from './frame';

export interface SwitchOptions {
  /** Address the port sockets bind to: one the hosts can reach (127.0.0.1 for a local lab). */
  address?: string;
  /** How long a learned MAC stays in the table without being seen again, ms. */
  ageingMs?: number;
  /** Learned MACs at most; beyond it new MACs are flooded, not learned (a MAC flood cannot grow memory). */
  maxMacs?: number;
  /** Datagrams waiting in a port socket's send queue at most; beyond it frames to that port are dropped. */
  maxSendQueue?: number;
}

export interface PortLabel {
  /** The host the port's NIC runs on ("probe" for the switch's own observer). */
  host: string;
  /** The guest (or endpoint) behind the port. */
  guest: string;
}

export interface PortCounters {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  drops: {
    /** Cut shorter than an Ethernet header. */
    truncated: number;
    /** Longer than MAX_FRAME. */
    oversized: number;
    /** A broadcast, multicast or zero source MAC. */
    malformed: number;
    /** From an address that does not own this port. */
    foreign: number;
    /** Could not be sent: the port's socket queue was full, or the send failed. */
    egress: number;
  };
}

export interface PortInfo extends PortLabel {
  id: number;
  kind: 'udp' | 'internal';
  /** The switch side: where the NIC sends its frames. */
  local: { address: string; port: number } | null;
  /** The NIC side: the only address the port accepts datagrams from. */
  peer: { address: string; port: number } | null;
  counters: PortCounters;
  openedAt: number;
}

export interface MacMove {
  mac: string;
  fromPort: number;
  fromHost: string;
  toPort: number;
  toHost: string;
  /** performance.now() when the frame arrived. */
  at: number;
  cause: MoveCause;
}

export interface AnnounceFrame {
  mac: string;
  port: number;
  host: string;
  at: number;
}

export interface MacEntry {
  mac: string;
  port: number;
  host: string;
  ageMs: number;
}

export interface SwitchEvents {
  'mac-move': [move: MacMove];
  announce: [frame: AnnounceFrame];
  'port-opened': [port: PortInfo];
  'port-closed': [port: PortInfo];
}

interface Learned {
  port: Port;
  seen: number;
}

function newCounters(): PortCounters {
  return { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, drops: { truncated: 0, oversized: 0, malformed: 0, foreign: 0, egress: 0 } };
}

abstract class Port {
  readonly counters = newCounters();
  readonly openedAt = performance.now();
  closed = false;
  constructor(
    readonly id: number,
    readonly label: PortLabel,
  ) {}
  /** Sends one frame out of this port; false when it had to be dropped. */
  abstract transmit(frame: Buffer): boolean;
  abstract close(): void;
  abstract info(): PortInfo;
  protected base(kind: PortInfo['kind']): Omit<PortInfo, 'local' | 'peer'> {
    return { id: this.id, kind, ...this.label, counters: structuredClone(this.counters), openedAt: this.openedAt };
  }
}

class UdpPort extends Port {
  constructor(
    id: number,
    label: PortLabel,
    private readonly socket: Socket,
    /** Connected to the peer: a send skips the per-datagram address lookup of an unconnected one. */
    private readonly tx: Socket,
    readonly local: { address: string; port: number },
    readonly peer: { address: string; port: number },
    private readonly maxSendQueue: number,
  ) {
    super(id, label);
  }

  transmit(frame: Buffer): boolean {
    // UDP sends that the kernel cannot take at once queue in libuv; bound that queue.
    if (this.tx.getSendQueueCount() >= this.maxSendQueue) return false;
    this.tx.send(frame);
    return true;
  }

  close(): void {
    this.socket.close();
    this.tx.close();
  }

  info(): PortInfo {
    return { ...this.base('udp'), local: { ...this.local }, peer: { ...this.peer } };
  }
}

class InternalPort extends Port {
  constructor(
    id: number,
    label: PortLabel,
    private readonly deliver: (frame: Buffer) => void,
  ) {
    super(id, label);
  }

  transmit(frame: Buffer): boolean {
    this.deliver(frame);
    return true;
  }

  close(): void {}

  info(): PortInfo {
    return { ...this.base('internal'), local: null, peer: null };
  }
}

/** What the owner of a port holds: its number, where the NIC must send, and how to retire it. */
export interface SwitchPortHandle {
  readonly id: number;
  readonly address: string;
  readonly port: number;
  close(): void;
}

/** The switch's own endpoint (the probe): sends frames into the switch, gets the frames for it. */
export interface InternalPortHandle {
  readonly id: number;
  send(frame: Buffer): void;
  close(): void;
}

export class PortOpenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PortOpenError';
  }
}

export class LabSwitch extends EventEmitter<SwitchEvents> {
  readonly address: string;
  private readonly ageingMs: number;
  private readonly maxMacs: number;
  private readonly maxSendQueue: number;
  private readonly ports = new Map<number, Port>();
  private readonly table = new Map<MacKey, Learned>();
  private readonly moves: MacMove[] = [];
  private readonly announces: AnnounceFrame[] = [];
  private nextPortId = 1;
  private sweeper: NodeJS.Timeout;
  private closed = false;
  /** Frames flooded because the table was full: a MAC flood shows up here. */
  tableFull = 0;

  constructor(opts: SwitchOptions = {}) {
    super();
    this.address = opts.address ?? '127.0.0.1';
    if (!isIPv4(this.address)) throw new PortOpenError(`The switch address "${this.address}" is not an IPv4 address: give one the hosts can reach`);
    this.ageingMs = opts.ageingMs ?? 300_000;
    this.maxMacs = opts.maxMacs ?? 4096;
    this.maxSendQueue = opts.maxSendQueue ?? 256;
    this.sweeper = setInterval(() => this.sweep(), Math.min(this.ageingMs, 60_000));
    this.sweeper.unref();
  }

  /**
   * A port for a NIC whose QEMU sends from `peer`: the switch binds a UDP socket for it and
   * accepts datagrams on it from `peer` only.
   */
  async openPort(label: PortLabel, peer: { address: string; port: number }): Promise<SwitchPortHandle> {
    if (this.closed) throw new PortOpenError('The lab switch has been shut down');
    if (!isIPv4(peer.address) || !Number.isInteger(peer.port) || peer.port < 1 || peer.port > 65535) {
      throw new PortOpenError(`A switch port needs the NIC's IPv4 address and UDP port (got ${peer.address}:${peer.port})`);
    }
    const socket = createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
    const tx = createSocket({ type: 'udp4', sendBufferSize: 4 << 20 });
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind({ address: this.address, port: 0, exclusive: true }, () => resolve());
      });
      await new Promise<void>((resolve, reject) => {
        tx.once('error', reject);
        tx.bind({ address: this.address, port: 0, exclusive: true }, () => tx.connect(peer.port, peer.address, () => resolve()));
      });
    } catch (err) {
      socket.close();
      tx.close();
      throw new PortOpenError(`Could not open a switch port on ${this.address}: ${(err as Error).message}`);
    }
    const local = { address: this.address, port: socket.address().port };
    const port = new UdpPort(this.nextPortId++, label, socket, tx, local, { ...peer }, this.maxSendQueue);
    // A send error (peer gone: ICMP port unreachable) is a drop on that port, never a crash.
    for (const s of [socket, tx]) {
      s.removeAllListeners('error');
      s.on('error', () => port.counters.drops.egress++);
    }
    socket.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
      if (rinfo.port !== port.peer.port || rinfo.address !== port.peer.address) {
        port.counters.drops.foreign++;
        return;
      }
      this.ingress(port, msg);
    });
    this.ports.set(port.id, port);
    this.emit('port-opened', port.info());
    return { id: port.id, address: local.address, port: local.port, close: () => this.closePort(port.id) };
  }

  /** A port whose frames go to a function in this process: the probe's way onto the switch. */
  openInternalPort(label: PortLabel, deliver: (frame: Buffer) => void): InternalPortHandle {
    if (this.closed) throw new PortOpenError('The lab switch has been shut down');
    const port = new InternalPort(this.nextPortId++, label, deliver);
    this.ports.set(port.id, port);
    this.emit('port-opened', port.info());
    return {
      id: port.id,
      send: (frame) => {
        if (!port.closed) this.ingress(port, frame);
      },
      close: () => this.closePort(port.id),
    };
  }

  /** Retires a port: its socket closes and every MAC learned on it is forgotten. */
  closePort(id: number): void {
    const port = this.ports.get(id);
    if (!port || port.closed) return;
    port.closed = true;
    port.close();
    this.ports.delete(id);
    for (const [mac, e] of this.table) if (e.port === port) this.table.delete(mac);
    this.emit('port-closed', port.info());
  }

  private ingress(port: Port, frame: Buffer): void {
    const c = port.counters;
    if (frame.length < ETH_HEADER) {
      c.drops.truncated++;
      return;
    }
    if (frame.length > MAX_FRAME) {
      c.drops.oversized++;
      return;
    }
    const src = macKeyAt(frame, 6);
    if (src === 0 || isGroupMac(src)) {
      c.drops.malformed++;
      return;
    }
    c.rxFrames++;
    c.rxBytes += frame.length;
    const now = performance.now();
    this.learn(src, port, frame, now);
    if (ethertypeOf(frame) === ETHERTYPE_RARP) this.recordAnnounce(src, port, now);

    const dst = macKeyAt(frame, 0);
    if (dst !== BROADCAST_MAC && !isGroupMac(dst)) {
      const e = this.table.get(dst);
      if (e && now - e.seen <= this.ageingMs) {
        if (e.port !== port) this.send(e.port, frame);
        return; // a frame for a MAC on its own port is not sent back
      }
    }
    for (const out of this.ports.values()) if (out !== port) this.send(out, frame);
  }

  private send(out: Port, frame: Buffer): void {
    if (out.transmit(frame)) {
      out.counters.txFrames++;
      out.counters.txBytes += frame.length;
    } else {
      out.counters.drops.egress++;
    }
  }

  private learn(mac: MacKey, port: Port, frame: Buffer, now: number): void {
    const e = this.table.get(mac);
    if (e) {
      if (e.port !== port) {
        const move: MacMove = {
          mac: macToString(mac), fromPort: e.port.id, fromHost: e.port.label.host,
          toPort: port.id, toHost: port.label.host, at: now, cause: moveCauseOf(frame),
        };
        this.moves.push(move);
        if (this.moves.length > 1000) this.moves.shift();
        e.port = port;
        this.emit('mac-move', move);
      }
      e.seen = now;
      return;
    }
    if (this.table.size >= this.maxMacs) {
      this.tableFull++;
      return;
    }
    this.table.set(mac, { port, seen: now });
  }

  private recordAnnounce(mac: MacKey, port: Port, at: number): void {
    const a: AnnounceFrame = { mac: macToString(mac), port: port.id, host: port.label.host, at };
    this.announces.push(a);
    if (this.announces.length > 1000) this.announces.shift();
    this.emit('announce', a);
  }

  private sweep(): void {
    const now = performance.now();
    for (const [mac, e] of this.table) if (now - e.seen > this.ageingMs) this.table.delete(mac);
  }

  portInfo(): PortInfo[] {
    return [...this.ports.values()].map((p) => p.info());
  }

  macTable(): MacEntry[] {
    const now = performance.now();
    return [...this.table]
      .filter(([, e]) => now - e.seen <= this.ageingMs)
      .map(([mac, e]) => ({ mac: macToString(mac), port: e.port.id, host: e.port.label.host, ageMs: Math.round(now - e.seen) }));
  }

  /** Where the switch last saw `mac`, or undefined. */
  lookup(mac: string): MacEntry | undefined {
    return this.macTable().find((e) => e.mac === mac.toLowerCase());
  }

  macMoves(): MacMove[] {
    return [...this.moves];
  }

  announceFrames(): AnnounceFrame[] {
    return [...this.announces];
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    for (const id of [...this.ports.keys()]) this.closePort(id);
    this.table.clear();
  }
}
