// The link relay: a TCP forwarder a destination host can put in front of QEMU's migrate-incoming
// port, so a lesson can show a long, thin or lossy link, or a cable pulled mid-migration. The
// source connects to the relay, the relay connects to QEMU, and each direction of each connection
// is shaped on its own: a token bucket for bandwidth, a delay line for latency, retransmission
// stalls for loss. Nothing here runs unless a relay is opened.
import { EventEmitter } from 'node:events';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { nowMs } from '../util/time';
import { parseLinkProfile, type LinkProfile, type LinkRelayStats } from './link-profile';

function isNeutral(p: LinkProfile): boolean {
  return p.bandwidthMBps === null && p.latencyMs === 0 && p.lossPercent === 0;
}

/** Segments are what loss acts on: a lost one stalls the stream, not the whole chunk read. */
const SEGMENT_BYTES = 16 * 1024;
/** Above this a direction stops reading from its source until it is below QUEUE_LOW_BYTES. */
const QUEUE_HIGH_BYTES = 4 * 1024 * 1024;
const QUEUE_LOW_BYTES = 1024 * 1024;
const MIN_BURST_BYTES = 64 * 1024;
const BURST_MS = 10;
/** How much lateness of the event loop a backlogged direction may make up at once. */
const CATCH_UP_MS = 100;
const MIN_RTO_MS = 200;

function bytesPerMs(mbps: number): number {
  return mbps * 1000;
}

/** The token bucket's depth: a small burst, so the rate holds over any window longer than ~10 ms. */
function burstBytes(mbps: number): number {
  return Math.max(MIN_BURST_BYTES, bytesPerMs(mbps) * BURST_MS);
}

/** What TCP waits before resending a lost segment: at least 200 ms (Linux's minimum RTO), at least one RTT. */
export function retransmitTimeoutMs(latencyMs: number): number {
  return Math.max(MIN_RTO_MS, 2 * latencyMs + 1);
}

/** A queue that does not copy itself on every shift. */
class Fifo<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  peek(): T | undefined {
    return this.items[this.head];
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }
}

interface InFlight {
  buf: Buffer;
  /** performance.now() before which the far end must not see it. */
  deliverAt: number;
}

interface PipeContext {
  profile(): LinkProfile;
  random(): number;
  lost(): void;
}

/**
 * One direction of one connection, in two stages like a real link: segments wait for the
 * bandwidth (the token bucket) to go onto the wire, then cross it in latencyMs and come out at
 * the far end in order.
 *
 * Loss: TCP never loses bytes end to end, so on a lossy link the receiver sees stalls, not gaps.
 * A segment that goes onto the wire is lost with probability lossPercent/100; its retransmission
 * arrives a retransmission timeout later, and the segments sent after it wait behind it (in-order
 * delivery), as in a receiver's reassembly queue.
 *
 * The queue is bounded like a TCP window: above 4 MiB the source is not read until it drains
 * below 1 MiB, so one direction carries at most about 4 MiB / latencyMs.
 */
class Pipe {
  private readonly waiting = new Fifo<Buffer>();
  private readonly inFlight = new Fifo<InFlight>();
  private held = 0;
  private tokens = MIN_BURST_BYTES;
  private refilledAt = nowMs();
  /** Segments were left waiting for tokens at the last pump. */
  private backlogged = false;
  private timer: NodeJS.Timeout | null = null;
  private destBlocked = false;
  private overFull = false;
  private readPaused = false;
  private stopped = false;
  sourceEnded = false;
  endSent = false;

  constructor(
    private readonly source: Socket,
    private readonly dest: Socket,
    private readonly ctx: PipeContext,
    private readonly delivered: (bytes: number) => void,
  ) {}

  /** Bytes the relay holds for this direction: its queue and what the destination socket has not sent yet. */
  get queuedBytes(): number {
    return this.held + (this.dest.destroyed ? 0 : this.dest.writableLength);
  }

  onData(chunk: Buffer): void {
    if (this.stopped) return;
    if (this.held === 0 && !this.destBlocked && isNeutral(this.ctx.profile())) {
      // A neutral link is a plain pipe: nothing queued, no timers.
      this.write(chunk);
      this.updateReading();
      return;
    }
    for (let off = 0; off < chunk.length; off += SEGMENT_BYTES) this.waiting.push(chunk.subarray(off, off + SEGMENT_BYTES));
    this.held += chunk.length;
    this.pump();
  }

  onEnd(): void {
    this.sourceEnded = true;
    this.pump();
  }

  onDrain(): void {
    this.destBlocked = false;
    this.pump();
  }

  /** Credits the time so far at the current rate: call before the profile changes. */
  settle(): void {
    this.refill(nowMs(), this.ctx.profile());
  }

  /** Drops everything queued and every timer; the sockets are the connection's business. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.waiting.clear();
    this.inFlight.clear();
    this.held = 0;
    this.backlogged = false;
  }

  pump(): void {
    if (this.stopped) return;
    const now = nowMs();
    const p = this.ctx.profile();
    this.refill(now, p);
    // Onto the wire, as fast as the bandwidth allows.
    while (this.waiting.length > 0) {
      const seg = this.waiting.peek()!;
      if (p.bandwidthMBps !== null) {
        if (this.tokens < seg.length) break;
        this.tokens -= seg.length;
      }
      this.waiting.shift();
      let deliverAt = now + p.latencyMs;
      if (p.lossPercent > 0 && this.ctx.random() * 100 < p.lossPercent) {
        deliverAt += retransmitTimeoutMs(p.latencyMs);
        this.ctx.lost();
      }
      this.inFlight.push({ buf: seg, deliverAt });
    }
    // Out of the far end, in order: a stalled head holds everything behind it.
    while (!this.destBlocked && this.inFlight.length > 0) {
      const head = this.inFlight.peek()!;
      if (head.deliverAt > now) break;
      this.inFlight.shift();
      this.held -= head.buf.length;
      this.write(head.buf);
    }
    // A half-close travels behind the bytes sent before it.
    if (this.sourceEnded && !this.endSent && this.held === 0) {
      this.endSent = true;
      this.dest.end();
    }
    this.backlogged = this.waiting.length > 0;
    this.updateReading();
    this.schedule(now, p);
  }

  private write(buf: Buffer): void {
    this.delivered(buf.length);
    if (!this.dest.write(buf)) this.destBlocked = true;
  }

  private refill(now: number, p: LinkProfile): void {
    if (p.bandwidthMBps !== null) {
      const mbps = p.bandwidthMBps;
      // Idle time earns only the small burst. But while segments were waiting, the time since the
      // last pump was the event loop running late (a busy machine), not idleness: credit it, up
      // to CATCH_UP_MS, or the long-run rate would fall short of the limit.
      const cap = this.backlogged ? Math.max(burstBytes(mbps), bytesPerMs(mbps) * CATCH_UP_MS) : burstBytes(mbps);
      this.tokens = Math.min(cap, this.tokens + (now - this.refilledAt) * bytesPerMs(mbps));
    }
    this.refilledAt = now;
  }

  private updateReading(): void {
    if (this.held > QUEUE_HIGH_BYTES) this.overFull = true;
    else if (this.held < QUEUE_LOW_BYTES) this.overFull = false;
    const pause = this.overFull || this.destBlocked;
    if (pause && !this.readPaused) {
      this.readPaused = true;
      this.source.pause();
    } else if (!pause && this.readPaused) {
      this.readPaused = false;
      this.source.resume();
    }
  }

  private schedule(now: number, p: LinkProfile): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    let wake = Infinity;
    const next = this.waiting.peek();
    if (next && p.bandwidthMBps !== null) wake = now + (next.length - this.tokens) / bytesPerMs(p.bandwidthMBps);
    const head = this.inFlight.peek();
    if (head && !this.destBlocked) wake = Math.min(wake, head.deliverAt);
    if (wake === Infinity) return; // the next data, 'drain' or 'end' pumps again
    this.timer = setTimeout(() => {
      this.timer = null;
      this.pump();
    }, Math.max(1, Math.ceil(wake - now)));
  }
}

function ignore(): void {}

/** Ends a socket so its peer sees ECONNRESET, not a clean FIN (a socket still connecting is just dropped). */
function resetSocket(s: Socket): void {
  if (s.destroyed) return;
  if (s.connecting) s.destroy();
  else s.resetAndDestroy();
}

interface Counters extends PipeContext {
  forwarded(bytes: number): void;
  backwarded(bytes: number): void;
  finished(conn: RelayedConnection): void;
}

/** A client connection and the relay's connection to the target, joined by two pipes. */
class RelayedConnection {
  readonly forward: Pipe;
  readonly backward: Pipe;
  private closedSockets = 0;
  private done = false;

  constructor(
    readonly id: number,
    private readonly client: Socket,
    private readonly target: Socket,
    private readonly counters: Counters,
  ) {
    this.forward = new Pipe(client, target, counters, (n) => counters.forwarded(n));
    this.backward = new Pipe(target, client, counters, (n) => counters.backwarded(n));
    // Errors on either side take the pair down; a late error after that is swallowed.
    client.on('error', () => this.reset());
    target.on('error', () => this.reset());
    client.on('close', () => this.socketClosed(this.forward, this.backward));
    target.on('close', () => this.socketClosed(this.backward, this.forward));
    // The client's bytes wait in its socket until there is somewhere to send them.
    target.once('connect', () => {
      if (this.done) return;
      client.on('data', (b: Buffer) => this.forward.onData(b));
      client.on('end', () => this.forward.onEnd());
      target.on('drain', () => this.forward.onDrain());
      target.on('data', (b: Buffer) => this.backward.onData(b));
      target.on('end', () => this.backward.onEnd());
      client.on('drain', () => this.backward.onDrain());
    });
  }

  get queuedBytes(): number {
    return this.forward.queuedBytes + this.backward.queuedBytes;
  }

  /** A socket closed: fine once both its directions are done, otherwise the other side must know. */
  private socketClosed(from: Pipe, to: Pipe): void {
    if (this.done) return;
    if (!(from.sourceEnded && to.endSent)) {
      this.reset();
      return;
    }
    if (++this.closedSockets === 2) this.finish();
  }

  /** The pulled cable, or one side failed: both sides see a reset, as from a path that broke. */
  reset(): void {
    this.end(resetSocket);
  }

  destroy(): void {
    this.end((s) => s.destroy());
  }

  private end(how: (s: Socket) => void): void {
    if (this.done) return;
    this.forward.stop();
    this.backward.stop();
    for (const s of [this.client, this.target]) {
      s.on('error', ignore);
      how(s);
    }
    this.finish();
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.counters.finished(this);
  }
}

export interface LinkRelayOptions {
  listen: { address: string; port?: number };
  target: { address: string; port: number };
  profile?: Partial<LinkProfile>;
  /** Seed for the loss dice, so a test sees the same losses for the same segments. */
  seed?: number;
}

export interface LinkRelayEvents {
  connection: [id: number];
  closed: [id: number];
  cut: [];
  restored: [];
}

export class LinkRelayListenError extends Error {
  constructor(
    readonly address: string,
    readonly port: number,
    readonly code: string | undefined,
    detail: string,
  ) {
    const where = address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
    const hint =
      code === 'EADDRINUSE' ? 'something else uses that port: pick another, or 0 for any free one'
        : code === 'EADDRNOTAVAIL' ? 'that address is not one of this host\'s: give one of its own addresses'
          : code === 'EACCES' ? 'ports below 1024 need privileges: pick a higher one'
            : 'check the address and port';
    super(`The link relay cannot listen on ${where}: ${detail} (${hint})`);
    this.name = 'LinkRelayListenError';
  }
}

/** xorshift32: seedable, so a test's losses can be replayed. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0 || 0x9e3779b9;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 0x1_0000_0000;
  };
}

function checkPort(what: string, port: number, allowZero: boolean): void {
  if (!Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65535) {
    throw new RangeError(`The link relay's ${what} port must be an integer ${allowZero ? '0' : '1'}-65535 (got ${port})`);
  }
}

/**
 * A TCP relay between a listening address and a target that emulates a link: bandwidth, latency
 * and loss per connection and direction (changeable live), and a cable that can be pulled (cut)
 * and plugged back (restore).
 */
export class LinkRelay extends EventEmitter<LinkRelayEvents> {
  private profileNow: LinkProfile;
  private readonly connections = new Map<number, RelayedConnection>();
  /** Every socket not yet closed, ours and the clients', so close() can wait for all of them. */
  private readonly sockets = new Set<Socket>();
  private readonly random: () => number;
  private nextId = 1;
  private totalConnections = 0;
  private bytesForward = 0;
  private bytesBackward = 0;
  private lossStalls = 0;
  private isCut = false;
  private closing: Promise<void> | null = null;

  private constructor(
    private readonly server: Server,
    readonly address: string,
    readonly port: number,
    private readonly target: { address: string; port: number },
    profile: LinkProfile,
    seed: number | undefined,
  ) {
    super();
    this.profileNow = profile;
    this.random = seed === undefined ? Math.random : seededRandom(seed);
    server.on('connection', (s) => this.accept(s));
    // A failed accept (EMFILE, say) loses that one connection attempt, not the relay.
    server.on('error', ignore);
  }

  static async open(opts: LinkRelayOptions): Promise<LinkRelay> {
    const profile = parseLinkProfile(opts.profile ?? {});
    const port = opts.listen.port ?? 0;
    checkPort('listen', port, true);
    checkPort('target', opts.target.port, false);
    const server = createServer({ allowHalfOpen: true });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: opts.listen.address, port }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new LinkRelayListenError(opts.listen.address, port, e.code, e.message);
    }
    const bound = server.address();
    if (bound === null || typeof bound === 'string') {
      server.close();
      throw new LinkRelayListenError(opts.listen.address, port, undefined, 'the server has no TCP address');
    }
    return new LinkRelay(server, bound.address, bound.port, { ...opts.target }, profile, opts.seed);
  }

  get profile(): LinkProfile {
    return { ...this.profileNow };
  }

  /** Changes the link for open connections too (bandwidth at once; latency and loss for bytes from now on). */
  setProfile(patch: Partial<LinkProfile>): LinkProfile {
    if (typeof patch !== 'object' || patch === null) parseLinkProfile(patch);
    const given = Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined));
    const next = parseLinkProfile({ ...this.profileNow, ...given });
    const conns = [...this.connections.values()];
    for (const c of conns) {
      c.forward.settle();
      c.backward.settle();
    }
    this.profileNow = next;
    for (const c of conns) {
      c.forward.pump();
      c.backward.pump();
    }
    return this.profile;
  }

  /** Pulls the cable: every connection is reset (both sides), and new ones are reset until restore(). */
  cut(): void {
    const wasCut = this.isCut;
    this.isCut = true;
    if (!wasCut) this.emit('cut'); // before the 'closed' of each connection it takes down
    for (const c of [...this.connections.values()]) c.reset();
  }

  restore(): void {
    if (!this.isCut) return;
    this.isCut = false;
    this.emit('restored');
  }

  stats(): LinkRelayStats {
    let queued = 0;
    for (const c of this.connections.values()) queued += c.queuedBytes;
    return {
      connections: this.connections.size,
      totalConnections: this.totalConnections,
      bytesForward: this.bytesForward,
      bytesBackward: this.bytesBackward,
      lossStalls: this.lossStalls,
      queuedBytes: queued,
      cut: this.isCut,
      profile: this.profile,
    };
  }

  /** Stops listening and drops every connection; resolves when the port is free and every socket closed. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
      for (const c of [...this.connections.values()]) c.destroy();
      // Sockets reset by cut() may still be closing.
      const left = [...this.sockets].map((s) => new Promise<void>((resolve) => s.once('close', () => resolve())));
      for (const s of this.sockets) s.destroy();
      await Promise.all([stopped, ...left]);
    })();
    return this.closing;
  }

  private track(s: Socket): void {
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
  }

  private accept(client: Socket): void {
    client.on('error', ignore);
    this.track(client);
    if (this.closing) {
      client.destroy();
      return;
    }
    if (this.isCut) {
      // The cable is out: the connection gets a reset, as from a path that drops everything.
      client.resetAndDestroy();
      return;
    }
    client.setNoDelay(true);
    const target = createConnection({ host: this.target.address, port: this.target.port, allowHalfOpen: true, noDelay: true });
    this.track(target);
    const id = this.nextId++;
    const conn = new RelayedConnection(id, client, target, {
      profile: () => this.profileNow,
      random: this.random,
      lost: () => this.lossStalls++,
      forwarded: (n) => (this.bytesForward += n),
      backwarded: (n) => (this.bytesBackward += n),
      finished: (c) => {
        this.connections.delete(c.id);
        this.emit('closed', c.id);
      },
    });
    this.connections.set(id, conn);
    this.totalConnections++;
    this.emit('connection', id);
  }
}
