// The lab switch: a userspace L2 learning switch. Every guest NIC is a port; QEMU's dgram netdev
// sends each frame as one UDP datagram to its port's socket, so guests on this machine and on LAN
// hosts plug in without root. The switch records every MAC move and every announce frame: that
// is the network remap of a migration, as the wire saw it.
//
// Forwarding runs in miglab-switchd (scripts/switch/switchd.c), a small C process that batches
// its system calls; this class drives it (ports, counters, the MAC table) and turns what it sees
// into events. The process starts with the first port, so a lab without NICs never runs it.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { isIPv4 } from 'node:net';
import { createInterface } from 'node:readline';
import type { MoveCause } from './frame';
import { ensureSwitchd } from './switchd';

export interface SwitchOptions {
  /** Address the port sockets bind to: one the hosts can reach (127.0.0.1 for a local lab). */
  address?: string;
  /** How long a learned MAC stays in the table without being seen again, ms. */
  ageingMs?: number;
  /** Learned MACs at most; beyond it new MACs are flooded, not learned (a MAC flood cannot grow memory). */
  maxMacs?: number;
  /** Where the switchd build is cached (tests use a private cache). */
  cacheRoot?: string;
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
    /** Longer than a 1518-byte frame. */
    oversized: number;
    /** A broadcast, multicast or zero source MAC. */
    malformed: number;
    /** From an address that does not own this port. */
    foreign: number;
    /** Could not be sent: the kernel's send queue for the port was full. */
    egress: number;
  };
}

export interface PortInfo extends PortLabel {
  id: number;
  /** The switch side: where the NIC sends its frames. */
  local: { address: string; port: number };
  /** The NIC side: the only address the port accepts datagrams from. */
  peer: { address: string; port: number };
  /** As of the last stats() (portInfo() does not ask the switch). */
  counters: PortCounters;
  openedAt: number;
}

export interface MacMove {
  mac: string;
  fromPort: number;
  fromHost: string;
  toPort: number;
  toHost: string;
  /** performance.now() when the frame arrived at the switch. */
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

export interface SwitchStats {
  ports: PortInfo[];
  macs: MacEntry[];
  /** Frames whose source MAC could not be learned because the table was full. */
  tableFull: number;
  /** Events (moves, announces) the switch could not report because the engine was not reading. */
  eventsDropped: number;
}

export interface SwitchEvents {
  'mac-move': [move: MacMove];
  announce: [frame: AnnounceFrame];
  'port-opened': [port: PortInfo];
  'port-closed': [port: PortInfo];
  /** The switch process ended without being asked to; every port is gone. */
  failed: [reason: string];
}

/** What the owner of a port holds: its number, where the NIC must send, and how to retire it. */
export interface SwitchPortHandle {
  readonly id: number;
  readonly address: string;
  readonly port: number;
  close(): void;
}

export class PortOpenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PortOpenError';
  }
}

function zeroCounters(): PortCounters {
  return { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, drops: { truncated: 0, oversized: 0, malformed: 0, foreign: 0, egress: 0 } };
}

interface Waiter<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

const HISTORY = 1000;

export class LabSwitch extends EventEmitter<SwitchEvents> {
  readonly address: string;
  private readonly ageingMs: number;
  private readonly maxMacs: number;
  private proc: ChildProcess | null = null;
  private starting: Promise<void> | null = null;
  /** performance.now() = CLOCK_MONOTONIC ms (switchd's event times) - this. */
  private clockOffsetMs = 0;
  private readonly ports = new Map<number, PortInfo>();
  private readonly opening = new Map<number, Waiter<number>>();
  private readonly statsWaiters = new Map<string, Waiter<SwitchStats>>();
  private collecting: SwitchStats = { ports: [], macs: [], tableFull: 0, eventsDropped: 0 };
  private readonly moves: MacMove[] = [];
  private readonly announces: AnnounceFrame[] = [];
  private nextPortId = 1;
  private nextReq = 1;
  private closed = false;
  private stderrTail = '';
  private failure: string | null = null;

  constructor(private readonly opts: SwitchOptions = {}) {
    super();
    this.address = opts.address ?? '127.0.0.1';
    if (!isIPv4(this.address)) throw new PortOpenError(`The switch address "${this.address}" is not an IPv4 address: give one the hosts can reach`);
    this.ageingMs = opts.ageingMs ?? 300_000;
    this.maxMacs = opts.maxMacs ?? 4096;
  }

  private running(): boolean {
    return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** The switchd process id, while it runs (for leak checks and the curious). */
  get pid(): number | undefined {
    return this.running() ? this.proc!.pid : undefined;
  }

  private start(): Promise<void> {
    this.starting ??= (async () => {
      const bin = await ensureSwitchd(this.opts.cacheRoot ? { cacheRoot: this.opts.cacheRoot } : {});
      if (this.closed) throw new PortOpenError('The lab switch has been shut down');
      const proc = spawn(bin, [String(this.ageingMs), String(this.maxMacs)], { stdio: ['pipe', 'pipe', 'pipe'] });
      this.proc = proc;
      proc.stdin!.on('error', () => {}); // a dead switch is reported by 'exit', not by a write error
      proc.stderr!.on('data', (d: Buffer) => {
        this.stderrTail = (this.stderrTail + d.toString()).slice(-2000);
      });
      const ready = new Promise<void>((resolve, reject) => {
        const lines = createInterface({ input: proc.stdout! });
        let first = true;
        lines.on('line', (line) => {
          if (first) {
            first = false;
            const m = /^ready (\d+)$/.exec(line);
            if (!m) {
              reject(new PortOpenError(`The lab switch said "${line}" instead of ready`));
              return;
            }
            // Both clocks are CLOCK_MONOTONIC (process.hrtime is libuv's uv_hrtime): one offset maps them.
            this.clockOffsetMs = Number(process.hrtime.bigint() / 1000n) / 1000 - performance.now();
            resolve();
            return;
          }
          this.onLine(line);
        });
        proc.once('error', (err) => reject(new PortOpenError(`The lab switch could not start: ${err.message}`)));
        proc.once('exit', (code, signal) => {
          const why = `the lab switch stopped (${signal ?? `exit code ${code}`})${this.stderrTail ? `: ${this.stderrTail.trim()}` : ''}`;
          reject(new PortOpenError(why));
          this.onExit(why);
        });
      });
      await ready;
    })();
    return this.starting;
  }

  private onExit(why: string): void {
    const err = new PortOpenError(why.charAt(0).toUpperCase() + why.slice(1));
    for (const w of this.opening.values()) w.reject(err);
    for (const w of this.statsWaiters.values()) w.reject(err);
    this.opening.clear();
    this.statsWaiters.clear();
    if (this.closed) return;
    this.failure = why;
    for (const id of [...this.ports.keys()]) this.forget(id);
    this.emit('failed', why);
  }

  private toPerf(ns: string): number {
    return Number(BigInt(ns) / 1000n) / 1000 - this.clockOffsetMs;
  }

  private hostOf(portId: number): string {
    return this.ports.get(portId)?.host ?? 'gone';
  }

  private onLine(line: string): void {
    const f = line.split(' ');
    switch (f[0]) {
      case 'opened': {
        const w = this.opening.get(Number(f[1]));
        this.opening.delete(Number(f[1]));
        w?.resolve(Number(f[2]));
        break;
      }
      case 'error': {
        const w = this.opening.get(Number(f[1]));
        this.opening.delete(Number(f[1]));
        w?.reject(new PortOpenError(`Could not open a switch port on ${this.address}: ${f.slice(2).join(' ')}`));
        break;
      }
      case 'move': {
        const [, mac, from, to, cause, ns] = f as [string, string, string, string, MoveCause, string];
        const move: MacMove = {
          mac, fromPort: Number(from), fromHost: this.hostOf(Number(from)), toPort: Number(to), toHost: this.hostOf(Number(to)),
          at: this.toPerf(ns), cause,
        };
        this.moves.push(move);
        if (this.moves.length > HISTORY) this.moves.shift();
        this.emit('mac-move', move);
        break;
      }
      case 'announce': {
        const a: AnnounceFrame = { mac: f[1]!, port: Number(f[2]), host: this.hostOf(Number(f[2])), at: this.toPerf(f[3]!) };
        this.announces.push(a);
        if (this.announces.length > HISTORY) this.announces.shift();
        this.emit('announce', a);
        break;
      }
      case 'port': {
        const n = f.slice(1).map(Number) as number[];
        const info = this.ports.get(n[0]!);
        const counters: PortCounters = {
          rxFrames: n[1]!, rxBytes: n[2]!, txFrames: n[3]!, txBytes: n[4]!,
          drops: { truncated: n[5]!, oversized: n[6]!, malformed: n[7]!, foreign: n[8]!, egress: n[9]! },
        };
        if (info) {
          info.counters = counters;
          this.collecting.ports.push(structuredClone(info));
        }
        break;
      }
      case 'mac':
        this.collecting.macs.push({ mac: f[1]!, port: Number(f[2]), host: this.hostOf(Number(f[2])), ageMs: Number(f[3]) });
        break;
      case 'table-full':
        this.collecting.tableFull = Number(f[1]);
        this.collecting.eventsDropped = Number(f[2]);
        break;
      case 'end': {
        const w = this.statsWaiters.get(f[1]!);
        this.statsWaiters.delete(f[1]!);
        const done = this.collecting;
        this.collecting = { ports: [], macs: [], tableFull: 0, eventsDropped: 0 };
        w?.resolve(done);
        break;
      }
      default:
        break; // 'closed' needs no answer
    }
  }

  private command(line: string): void {
    this.proc?.stdin?.write(`${line}\n`);
  }

  /**
   * A port for a NIC whose QEMU sends from `peer`: the switch binds a UDP socket for it and
   * accepts datagrams on it from `peer` only.
   */
  async openPort(label: PortLabel, peer: { address: string; port: number }): Promise<SwitchPortHandle> {
    if (this.closed) throw new PortOpenError('The lab switch has been shut down');
    if (this.failure) throw new PortOpenError(`The lab switch is down: ${this.failure}`);
    if (!isIPv4(peer.address) || !Number.isInteger(peer.port) || peer.port < 1 || peer.port > 65535) {
      throw new PortOpenError(`A switch port needs the NIC's IPv4 address and UDP port (got ${peer.address}:${peer.port})`);
    }
    await this.start();
    const id = this.nextPortId++;
    const local = await new Promise<number>((resolve, reject) => {
      this.opening.set(id, { resolve, reject });
      this.command(`open ${id} ${this.address} ${peer.address} ${peer.port}`);
    });
    if (this.closed) throw new PortOpenError('The lab switch was shut down while the port was opening');
    const info: PortInfo = {
      id, ...label, local: { address: this.address, port: local }, peer: { ...peer }, counters: zeroCounters(), openedAt: performance.now(),
    };
    this.ports.set(id, info);
    this.emit('port-opened', structuredClone(info));
    return { id, address: this.address, port: local, close: () => this.closePort(id) };
  }

  private forget(id: number): void {
    const info = this.ports.get(id);
    if (!info) return;
    this.ports.delete(id);
    this.emit('port-closed', structuredClone(info));
  }

  /** Retires a port: its socket closes and every MAC learned on it is forgotten. */
  closePort(id: number): void {
    if (!this.ports.has(id)) return;
    this.command(`close ${id}`);
    this.forget(id);
  }

  /** The open ports, with counters as of the last stats(). */
  portInfo(): PortInfo[] {
    return [...this.ports.values()].map((p) => structuredClone(p));
  }

  /** Fresh counters and MAC table, covering every datagram that reached the switch before the call. */
  async stats(): Promise<SwitchStats> {
    if (!this.running()) return { ports: this.portInfo(), macs: [], tableFull: 0, eventsDropped: 0 };
    const req = String(this.nextReq++);
    return new Promise<SwitchStats>((resolve, reject) => {
      this.statsWaiters.set(req, { resolve, reject });
      this.command(`stats ${req}`);
    });
  }

  async macTable(): Promise<MacEntry[]> {
    return (await this.stats()).macs;
  }

  /** Where the switch last saw `mac`, or undefined. */
  async lookup(mac: string): Promise<MacEntry | undefined> {
    return (await this.macTable()).find((e) => e.mac === mac.toLowerCase());
  }

  macMoves(): MacMove[] {
    return [...this.moves];
  }

  announceFrames(): AnnounceFrame[] {
    return [...this.announces];
  }

  /** Stops the switch process: every port closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const id of [...this.ports.keys()]) this.forget(id);
    const proc = this.proc;
    if (!proc || !this.running()) return;
    const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.stdin?.end(); // switchd ends when its stdin closes
    const timer = setTimeout(() => proc.kill('SIGKILL'), 2000);
    await gone;
    clearTimeout(timer);
  }
}
