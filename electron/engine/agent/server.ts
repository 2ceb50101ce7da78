// `miglab agent`: a LocalHost served to the engine over a WebSocket on TLS. QMP, console and
// labload stay on UNIX sockets on this machine; the engine reaches them only through the
// requests below, each validated, size- and rate-limited, and allowed by a token. What a token
// makes (ports, relays, guests) is that token's alone: other tokens get `forbidden` and none of
// its events or bytes. Migration streams go only to the hosts of the engine's lab (labPeers).
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import { mkdir, rm, stat } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { join, relative } from 'node:path';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { LocalHost } from '../hosts/local/local-host';
import type { Guest } from '../hosts/host';
import type { PortLabel, SwitchPortHandle } from '../network/switch';
import { parseLinkProfile } from '../network/link-profile';
import { LinkRelay } from '../network/link-relay';
import { parseGuestSpec, type GuestSpec } from '../qemu/spec';
import { loadOrCreateAgentIdentity, writeQemuTlsDir, type TlsIdentity } from '../tls/certs';
import { resolveSpecPaths } from './images';
import { addTlsCredsObject } from '../qemu/tls';
import { AGENT_MAX_MESSAGE_BYTES, AGENT_PROTOCOL_VERSION, AGENT_WS_PATH, AgentRequestSchemas, type AgentMethod, type GuestDescriptor, type HelloReply } from '../hosts/remote/protocol';
import { AgentRpcError, RpcPeer } from '../hosts/remote/rpc';
import { TokenStore } from './tokens';
import { describePeers, peerProblem } from '../hosts/remote/lab-peers';
import { qmpRefusal, type QmpFilterContext } from './qmp-filter';
import { DiskOverlays } from './overlays';
import { readAgentRecords, writeAgentRecord, type AgentGuestRecord } from './guest-records';
import { RateLimit } from '../util/rate-limit';
import type { NetworkAttachment } from '../network/attachment';
import type { AgentStartInfo } from '../hosts/remote/protocol';
import type { LabPeer } from '../hosts/host';
import type { LocalGuest } from '../hosts/local/local-guest';

export interface AgentOptions {
  /** Shown to the engine; also the default host name in a lab. */
  name: string;
  /** The address QEMU's migration streams and NICs use: reachable by the other hosts. */
  address: string;
  port: number;
  dataDir: string;
  /** The image library: the only place a peer's kernel or disk path can point into. */
  imagesDir: string | null;
  maxGuests?: number;
  maxMemoryMiB?: number;
  /** Ports for incoming migrations and NICs (TCP and UDP). */
  portRange?: { first: number; last: number };
  /** Where the lab guest is looked for (tests). */
  cacheRoot?: string;
  /** WebSocket connections at once: in all (default 64) and per token (default 16). */
  maxConnections?: number;
  maxConnectionsPerToken?: number;
  log?: (line: string) => void;
}

/** One engine's connection. What it makes belongs to its token, not to the connection. */
interface Conn {
  peer: RpcPeer;
  tokenId: string;
  ws: WebSocket;
  openedAt: number;
  saidHello: boolean;
  /** The hosts of this engine's lab (labPeers): where its guests' migration streams may go. */
  labPeers: LabPeer[] | null;
  /** Why the last labPeers was refused, for the migration it leaves refused. */
  labPeersRefused: string | null;
}

type DiskOverlay = NonNullable<AgentGuestRecord['disk']>;

/** A guest as the agent serves it: its wire handle, the token that owns it, its overlay. */
interface GuestEntry {
  guest: LocalGuest;
  handle: number;
  /** The owning token's id; null for a guest adopted without a record (an older agent's). */
  owner: string | null;
  disk: DiskOverlay | null;
  unsubscribe: Array<() => void>;
}

/** A start under way: counted against the limits, and whose connection asks for its NIC's port. */
interface Starting {
  memoryMiB: number;
  conn: Conn;
  disk: DiskOverlay | null;
}

/** A thing of another token: the same answer for ports, relays and guests. */
function notYours(what: string): AgentRpcError {
  return new AgentRpcError('forbidden', `${what} belongs to another engine's token: each engine reaches only what it made`);
}

export class AgentServer {
  private readonly conns = new Set<Conn>();
  /** Guests by the handle the wire names them with, and back. */
  private readonly entries = new Map<number, GuestEntry>();
  private readonly entryOf = new WeakMap<Guest, GuestEntry>();
  private nextHandle = 1;
  /** Migration ports handed out by allocateMigrationPort, with the token they belong to. */
  private readonly portOwner = new Map<number, string>();
  private readonly relays = new Map<number, { relay: LinkRelay; owner: string }>();
  private stopWatching: (() => void) | null = null;
  private closed = false;
  private readonly failedAuth = new Map<string, RateLimit>();
  /** Guests whose start is under way, by name: counted against the limits. */
  private readonly startingNow = new Map<string, Starting>();
  /** What a previous agent on this data dir recorded about the guests it left running. */
  private adoptedRecords = new Map<string, AgentGuestRecord>();
  private readonly overlays: DiskOverlays;

  private constructor(
    private readonly opts: AgentOptions,
    readonly host: LocalHost,
    private readonly tokens: TokenStore,
    readonly identity: TlsIdentity,
    private readonly https: ReturnType<typeof createServer>,
    private readonly wss: WebSocketServer,
  ) {
    this.overlays = new DiskOverlays(join(opts.dataDir, 'overlays'));
  }

  static async start(opts: AgentOptions): Promise<{ server: AgentServer; info: AgentStartInfo }> {
    const log = opts.log ?? (() => {});
    await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
    if (opts.imagesDir) {
      const st = await stat(opts.imagesDir).catch(() => null);
      if (!st?.isDirectory()) throw new Error(`The image library ${opts.imagesDir} is not a directory: create it, or give another with --images`);
    }
    const identity = await loadOrCreateAgentIdentity(join(opts.dataDir, 'tls'), {
      commonName: `miglab-agent ${opts.name}`,
      ipAddresses: [opts.address],
    });
    const tokens = await TokenStore.open(join(opts.dataDir, 'tokens.json'));
    let pairingToken: string | null = null;
    if (!tokens.list().some((t) => t.revokedAt === null)) pairingToken = (await tokens.create('pairing')).token;

    let self: AgentServer | null = null;
    const attachment: NetworkAttachment = {
      openPort: (label, peer) => self!.openSwitchPort(label, peer),
      portHandle: (p) => self!.switchPortHandle(p, null),
    };
    const range = opts.portRange ?? { first: 49152, last: 49407 };
    const runtimeDir = join(opts.dataDir, 'guests');
    const host = new LocalHost({
      name: opts.name,
      address: opts.address,
      runtimeDir,
      migrationPorts: range,
      nicPorts: range,
      network: attachment,
      ...(opts.cacheRoot ? { cacheRoot: opts.cacheRoot } : {}),
    });
    const https = createServer({ key: identity.keyPem, cert: identity.certPem, minVersion: 'TLSv1.3' });
    const wss = new WebSocketServer({ noServer: true, maxPayload: AGENT_MAX_MESSAGE_BYTES });
    const server = new AgentServer(opts, host, tokens, identity, https, wss);
    self = server;
    host.on('guest-started', (g) => server.onGuestStarted(g as LocalGuest));
    host.on('guest-state', (g, state, previous) => server.toOwner(g, 'guest-state', { handle: server.handleOf(g), state, previous }));
    host.on('guest-exited', (g, exit) => server.onGuestExited(g as LocalGuest, exit));
    server.adoptedRecords = await readAgentRecords(runtimeDir);
    const { adopted, removed } = await host.adoptGuests();
    server.adoptedRecords.clear();
    if (adopted.length) log(`reattached ${adopted.length} running guest(s): ${adopted.join(', ')}`);
    if (removed.length) log(`removed the records of ${removed.length} guest(s) whose QEMU had gone: ${removed.join(', ')}`);
    for (const e of server.entries.values()) {
      if (e.owner === null) log(`guest ${e.guest.name} (pid ${e.guest.pid}) has no owner record (an older agent started it): no engine can reach it; stop it with "kill ${e.guest.pid}"`);
    }
    await server.overlays.removeAllBut(new Set([...server.entries.values()].flatMap((e) => (e.disk ? [e.disk.overlay] : []))));
    https.on('request', (req, res) => server.onHttp(req, res));
    https.on('upgrade', (req, socket, head) => server.onUpgrade(req, socket, head));
    https.on('tlsClientError', () => {}); // a scanner's bad handshake is not our problem
    await new Promise<void>((resolve, reject) => {
      https.once('error', (err: NodeJS.ErrnoException) =>
        reject(new Error(`The agent cannot listen on ${opts.address}:${opts.port}: ${err.code ?? err.message}${err.code === 'EADDRINUSE' ? ' (another process uses that port: pick another with --listen)' : ''}`)),
      );
      https.listen({ host: opts.address, port: opts.port }, () => resolve());
    });
    server.stopWatching = tokens.watchRevocations((ids) => server.dropRevoked(ids));
    const port = (https.address() as { port: number }).port;
    return {
      server,
      info: { name: opts.name, url: `wss://${opts.address}:${port}${AGENT_WS_PATH}`, fingerprint: identity.fingerprint, pairingToken, adopted },
    };
  }

  get port(): number {
    return (this.https.address() as { port: number }).port;
  }

  /**
   * One lab may hold at most half of the agent's migration ports (its own and its link relays'),
   * so one peer cannot take them all and stop every other lab's migrations.
   */
  private checkPortShare(conn: Conn): void {
    const { first, last } = this.portRange;
    const size = last - first + 1;
    const share = Math.max(2, Math.floor(size / 2));
    let held = 0;
    for (const owner of this.portOwner.values()) if (owner === conn.tokenId) held++;
    for (const r of this.relays.values()) if (r.owner === conn.tokenId) held++;
    if (held >= share) {
      throw new AgentRpcError(
        'limit',
        `This engine holds ${held} of agent ${this.opts.name}'s ${size} migration ports, its share (half): release the ports of finished migrations (releaseMigrationPort, linkRelay close), or give the agent a wider --ports range`,
      );
    }
  }

  private get portRange(): { first: number; last: number } {
    return this.opts.portRange ?? { first: 49152, last: 49407 };
  }

  // ---- access ----

  private tokenOf(req: IncomingMessage): { id: string } | null {
    const auth = req.headers.authorization;
    if (typeof auth !== 'string' || !auth.startsWith('Bearer ')) return null;
    return this.tokens.verify(auth.slice(7).trim());
  }

  /**
   * Counts failed token checks per remote address in a token bucket (a burst of 50, then 5 a
   * second) and says whether this failure is over it: the caller then answers 429 instead of 401.
   * It changes the answer only. Every token is still checked, and a right token is let in however
   * many failures its address has, so no one can lock an engine out by failing from its address;
   * guessing a 256-bit token is hopeless at any speed. At most 1000 addresses are counted: past
   * that the 100 counted first are forgotten.
   */
  private throttled(req: IncomingMessage): boolean {
    const ip = req.socket.remoteAddress ?? '?';
    let bucket = this.failedAuth.get(ip);
    if (!bucket) {
      if (this.failedAuth.size >= 1000) for (const old of [...this.failedAuth.keys()].slice(0, 100)) this.failedAuth.delete(old);
      bucket = new RateLimit(5, 50);
      this.failedAuth.set(ip, bucket);
    }
    return !bucket.take();
  }

  private onHttp(req: IncomingMessage, res: ServerResponse): void {
    const token = this.tokenOf(req);
    if (!token) {
      const code = this.throttled(req) ? 429 : 401;
      res.writeHead(code, { 'content-type': 'text/plain', ...(code === 401 ? { 'www-authenticate': 'Bearer' } : {}) });
      res.end(code === 401 ? 'Unauthorized\n' : 'Too many failed attempts: wait a few seconds\n');
      return;
    }
    if (req.method === 'GET' && req.url === '/v1/health') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ name: this.opts.name, protocol: AGENT_PROTOCOL_VERSION, guests: this.guestsOf(token.id).length }));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end(`Not found: the agent serves its API as a WebSocket on ${AGENT_WS_PATH}\n`);
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const token = this.tokenOf(req);
    const reject = (status: string, message = '') => {
      const body = message ? `${message}\n` : '';
      socket.end(`HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      socket.destroy();
    };
    if (!token) return reject(this.throttled(req) ? '429 Too Many Requests' : '401 Unauthorized');
    if (req.url !== AGENT_WS_PATH) return reject('404 Not Found');
    if (this.closed) return reject('503 Service Unavailable', `Agent ${this.opts.name} is stopping`);
    // ws completes an upgrade synchronously, so the open connections are all there is to count.
    const max = this.opts.maxConnections ?? 64;
    if (this.conns.size >= max) {
      return reject('503 Service Unavailable', `Agent ${this.opts.name} has ${max} connections open, its limit: try again when an engine has left`);
    }
    const perToken = this.opts.maxConnectionsPerToken ?? 16;
    if ([...this.conns].filter((c) => c.tokenId === token.id).length >= perToken) {
      return reject('429 Too Many Requests', `This token has ${perToken} connections open to agent ${this.opts.name}, its limit: close one (an engine needs one per host)`);
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, token.id));
  }

  private onConnection(ws: WebSocket, tokenId: string): void {
    const peer = new RpcPeer(ws, { name: `agent ${this.opts.name}`, rateLimit: new RateLimit(400, 800) });
    const conn: Conn = { peer, tokenId, ws, openedAt: performance.now(), saidHello: false, labPeers: null, labPeersRefused: null };
    this.conns.add(conn);
    peer.on('close', () => this.conns.delete(conn));
    peer.on('stream', (kind, handle, data) => {
      const e = this.entries.get(handle);
      if (!e || e.owner !== tokenId) return; // bytes for another token's guest go nowhere
      try {
        if (kind === 'console') e.guest.console.write(data);
        else e.guest.writeControl(data);
      } catch {
        // the guest is going away; its exit event tells the engine
      }
    });
    peer.handle((method, params) => this.serve(conn, method, params));
  }

  private dropRevoked(ids: string[]): void {
    for (const c of this.conns) if (ids.includes(c.tokenId)) c.peer.close(4001, 'token revoked');
  }

  /** The connections of one token. */
  private connsOf(tokenId: string | null): Conn[] {
    return [...this.conns].filter((c) => c.tokenId === tokenId && !c.peer.closed);
  }

  // ---- the lab switch, which lives with the engine ----

  /**
   * A NIC's switch port, asked of the engine that starts the guest: the connection that asked for
   * the start, or (if it has gone) the newest one of the same token that said hello.
   */
  private async openSwitchPort(label: PortLabel, peer: { address: string; port: number }): Promise<SwitchPortHandle> {
    const starting = this.startingNow.get(label.guest);
    const owner = starting?.conn.tokenId ?? null;
    const c = starting && !starting.conn.peer.closed
      ? starting.conn
      : this.connsOf(owner).filter((x) => x.saidHello).sort((a, b) => b.openedAt - a.openedAt)[0];
    if (!c) throw new Error(`The engine that starts guest "${label.guest}" is no longer connected to agent ${this.opts.name}, so its NIC cannot be plugged into the lab switch`);
    const p = await c.peer.request<{ id: number; address: string; port: number }>('network.openPort', { guest: label.guest, peer });
    return this.switchPortHandle(p, c.tokenId);
  }

  /** `owner` null: an adopted guest's port, whose owner is looked up when it closes. */
  private switchPortHandle(p: { id: number; address: string; port: number }, owner: string | null): SwitchPortHandle {
    return {
      ...p,
      close: () => {
        const to = owner ?? [...this.entries.values()].find((e) => e.guest.switchPort?.id === p.id)?.owner ?? null;
        for (const c of this.connsOf(to)) c.peer.emitEvent('port-closed', { id: p.id });
      },
    };
  }

  // ---- guests ----

  private handleOf(g: Guest): number {
    return this.entryOf.get(g)?.handle ?? 0;
  }

  private guestsOf(tokenId: string): GuestEntry[] {
    return [...this.entries.values()].filter((e) => e.owner === tokenId);
  }

  /** The spec as the peer knows it: image paths relative to the library, as it sent them. */
  private peerSpec(e: GuestEntry): GuestSpec {
    const spec = e.guest.spec;
    const lib = this.opts.imagesDir;
    const rel = (p: string) => (lib && !relative(lib, p).startsWith('..') ? relative(lib, p) : p);
    const boot = spec.boot;
    if (boot.kind === 'kernel') return { ...spec, boot: { ...boot, kernel: rel(boot.kernel), ...(boot.initrd ? { initrd: rel(boot.initrd) } : {}) } };
    if (boot.kind === 'disk' && e.disk) {
      // QEMU got the overlay (qcow2); the peer named a library image, in its format if it gave one.
      const { format: _overlayFormat, ...rest } = boot;
      return { ...spec, boot: { ...rest, path: e.disk.image, ...(e.disk.format ? { format: e.disk.format } : {}) } };
    }
    if (boot.kind === 'disk') return { ...spec, boot: { ...boot, path: rel(boot.path) } };
    return spec;
  }

  private describe(e: GuestEntry): GuestDescriptor {
    const g = e.guest;
    return {
      handle: e.handle,
      name: g.name,
      spec: this.peerSpec(e) as unknown as Record<string, unknown>,
      state: g.state,
      pid: g.pid ?? null,
      uptimeMs: Math.round(performance.now() - g.startedAt),
      labload: g.labload !== null,
      switchPort: g.switchPort,
      adopted: g.adopted,
      kernelAppend: g.kernelAppend,
    };
  }

  private onGuestStarted(g: LocalGuest): void {
    const handle = this.nextHandle++;
    const starting = this.startingNow.get(g.name);
    const record = starting ? undefined : this.adoptedRecords.get(g.name);
    const e: GuestEntry = {
      guest: g,
      handle,
      owner: starting?.conn.tokenId ?? record?.owner ?? null,
      disk: starting ? starting.disk : (record?.disk ?? null),
      unsubscribe: [],
    };
    this.entryOf.set(g, e);
    this.entries.set(handle, e);
    const onConsole = (d: Buffer) => this.streamToOwner(e, 'console', d);
    g.console.on('data', onConsole);
    e.unsubscribe.push(
      () => g.console.off('data', onConsole),
      g.tapControl((d) => this.streamToOwner(e, 'labload', d)),
      g.qmpClient.onEvent('*', (ev) => this.toOwner(g, 'qmp-event', { handle, event: { event: ev.event, data: ev.data, timestamp: ev.timestamp } })),
    );
    if (starting) {
      // Next to LocalHost's guest.json, so the next agent on this data dir knows whose it is.
      void writeAgentRecord(join(this.opts.dataDir, 'guests', g.name), { version: 1, owner: starting.conn.tokenId, disk: starting.disk }).catch((err: Error) =>
        this.opts.log?.(`could not record the owner of guest ${g.name} (${err.message}): after a restart no engine could reach it`),
      );
    }
    this.toOwner(g, 'guest-started', this.describe(e));
  }

  private onGuestExited(g: LocalGuest, exit: unknown): void {
    const e = this.entryOf.get(g);
    if (!e) return;
    for (const off of e.unsubscribe) off();
    this.entries.delete(e.handle);
    this.toOwner(g, 'guest-exited', { handle: e.handle, exit });
    if (e.disk) void this.overlays.remove(e.disk.overlay);
  }

  /** Events about a guest go to its owner's connections, and nowhere else. */
  private toOwner(g: Guest, event: string, data: unknown): void {
    const owner = this.entryOf.get(g)?.owner ?? null;
    for (const c of this.connsOf(owner)) c.peer.emitEvent(event, data);
  }

  private streamToOwner(e: GuestEntry, kind: 'console' | 'labload', data: Buffer): void {
    for (const c of this.connsOf(e.owner)) c.peer.sendStream(kind, e.handle, data);
  }

  /** A guest of the caller's token by its handle: not-found, or forbidden when another token owns it. */
  private ownGuest(conn: Conn, handle: number): LocalGuest {
    const e = this.entries.get(handle);
    if (!e) throw new AgentRpcError('not-found', `No guest has handle ${handle} on agent ${this.opts.name}: it has stopped, or list the guests again`);
    if (e.owner !== conn.tokenId) throw notYours(`Guest ${handle} on agent ${this.opts.name}`);
    return e.guest;
  }

  /**
   * Checks the limits counting the guests still starting too, and holds the new guest's place
   * until its start ends (the returned release): two requests at once cannot both slip under.
   */
  private reserveLimits(spec: GuestSpec, conn: Conn): () => void {
    const maxGuests = this.opts.maxGuests ?? 8;
    const maxMemory = this.maxMemoryMiB;
    const running = this.host.guests().filter((g) => !this.startingNow.has(g.name));
    const count = running.length + this.startingNow.size;
    if (count >= maxGuests) {
      throw new AgentRpcError('limit', `Agent ${this.opts.name} runs or is starting ${count} guests, its limit (--max-guests ${maxGuests}): stop one first`);
    }
    const used = running.reduce((sum, g) => sum + g.spec.memoryMiB, 0) + [...this.startingNow.values()].reduce((a, b) => a + b.memoryMiB, 0);
    if (used + spec.memoryMiB > maxMemory) {
      throw new AgentRpcError(
        'limit',
        `Guest "${spec.name}" needs ${spec.memoryMiB} MiB, but agent ${this.opts.name} has ${maxMemory - used} MiB of its ${maxMemory} MiB guest memory left (--max-memory): give it less memory or stop a guest`,
      );
    }
    const key = spec.name;
    if (this.startingNow.has(key)) throw new AgentRpcError('invalid', `A guest named "${key}" is starting on agent ${this.opts.name} already: pick another name`);
    this.startingNow.set(key, { memoryMiB: spec.memoryMiB, conn, disk: null });
    return () => this.startingNow.delete(key);
  }

  private get maxMemoryMiB(): number {
    return this.opts.maxMemoryMiB ?? Math.floor((totalmem() / 2 ** 20) * 0.75);
  }

  /**
   * A library disk boots through its own overlay: the spec QEMU gets names the overlay, and the
   * library file is only its read-only backing file.
   */
  private async withOverlay(spec: GuestSpec, peerSpec: GuestSpec): Promise<{ spec: GuestSpec; disk: DiskOverlay | null }> {
    if (spec.boot.kind !== 'disk' || peerSpec.boot.kind !== 'disk') return { spec, disk: null };
    const overlay = await this.overlays.create(spec.name, spec.boot.path, spec.boot.format);
    const disk: DiskOverlay = { image: peerSpec.boot.path, ...(peerSpec.boot.format ? { format: peerSpec.boot.format } : {}), overlay };
    return { spec: { ...spec, boot: { ...spec.boot, path: overlay, format: 'qcow2' } }, disk };
  }

  // ---- where migration streams may go ----

  private qmpContext(conn: Conn): QmpFilterContext {
    return {
      outgoing: (address, port) => {
        if (!conn.labPeers) {
          if (conn.labPeersRefused) return `Migration to ${address}:${port} is refused: ${conn.labPeersRefused}`;
          return `Agent ${this.opts.name} has not been told the hosts of this engine's lab, so it sends no migration stream: the engine tells it when the host joins a lab (labPeers)`;
        }
        if (conn.labPeers.some((p) => p.address === address && port >= p.ports.first && port <= p.ports.last)) return null;
        return `Migration to ${address}:${port} is refused: it is not a migration port of a host in this engine's lab (${describePeers(conn.labPeers)})`;
      },
      incoming: (address, port) => {
        if (address !== this.opts.address) return `An incoming migration listens on this agent's own address ${this.opts.address} only, not ${address}`;
        if (this.portOwner.get(port) !== conn.tokenId) {
          return `Port ${port} was not allocated to this engine (allocateMigrationPort): an incoming migration listens only on a port the agent gave it`;
        }
        return null;
      },
      maxCacheBytes: this.maxMemoryMiB * 2 ** 20,
    };
  }

  private parse<M extends AgentMethod>(method: M, params: unknown) {
    const schema = AgentRequestSchemas[method];
    const r = schema.safeParse(params);
    if (!r.success) {
      throw new AgentRpcError('invalid', `"${method}" was refused: ${r.error.issues.map((i) => `${i.path.join('.') || 'params'}: ${i.message}`).join('; ')}`);
    }
    return r.data as Exclude<import('zod').infer<(typeof AgentRequestSchemas)[M]>, undefined>;
  }

  private async serve(conn: Conn, method: string, params: unknown): Promise<unknown> {
    if (!Object.hasOwn(AgentRequestSchemas, method)) {
      throw new AgentRpcError('unknown-method', `Unknown request "${method}": the agent answers ${Object.keys(AgentRequestSchemas).join(', ')}`);
    }
    const m = method as AgentMethod;
    this.parse(m, params); // every request is checked, also those that take nothing
    switch (m) {
      case 'hello': {
        const p = this.parse('hello', params);
        if (p.protocol !== AGENT_PROTOCOL_VERSION) {
          throw new AgentRpcError('invalid', `This agent speaks protocol ${AGENT_PROTOCOL_VERSION}, the engine ${p.protocol}: run the same MigLab version on both`);
        }
        conn.saidHello = true;
        const reply: HelloReply = { name: this.opts.name, protocol: AGENT_PROTOCOL_VERSION, address: this.opts.address, ports: this.portRange };
        return reply;
      }
      case 'labPeers': {
        const { peers } = this.parse('labPeers', params);
        const problems = peers.flatMap((p) => {
          const why = peerProblem(p, this.opts.address);
          return why ? [why] : [];
        });
        if (problems.length) {
          conn.labPeersRefused = `Agent ${this.opts.name} refuses these lab hosts (nothing changed): ${problems.join('; ')}`;
          throw new AgentRpcError('forbidden', conn.labPeersRefused);
        }
        conn.labPeers = peers;
        conn.labPeersRefused = null;
        return { peers: peers.length };
      }
      case 'ping':
        return { at: Date.now() };
      case 'info':
        return this.host.info();
      case 'guests':
        return this.guestsOf(conn.tokenId).map((e) => this.describe(e));
      case 'startGuest': {
        const p = this.parse('startGuest', params);
        let spec: GuestSpec;
        try {
          spec = parseGuestSpec(p.spec as never);
        } catch (err) {
          throw new AgentRpcError('invalid', (err as Error).message);
        }
        const release = this.reserveLimits(spec, conn);
        let disk: DiskOverlay | null = null;
        try {
          const resolved = await this.prepareSpec(spec);
          disk = resolved.disk;
          this.startingNow.get(spec.name)!.disk = disk;
          const g = (await this.host.startGuest(resolved.spec, { incoming: p.incoming ?? false })) as LocalGuest;
          return this.describe(this.entryOf.get(g)!);
        } catch (err) {
          if (disk) await this.overlays.remove(disk.overlay);
          // QEMU's last words name the process that signalled it, with its path: not the peer's business.
          throw err instanceof AgentRpcError ? err : new AgentRpcError('failed', (err as Error).message.replace(/ from pid \d+ \([^)]*\)/g, ''));
        } finally {
          release();
        }
      }
      case 'stopGuest': {
        const p = this.parse('stopGuest', params);
        const g = this.host.guest(p.name);
        const e = g ? this.entryOf.get(g) : undefined;
        if (g && e?.owner !== conn.tokenId) throw notYours(`Guest "${p.name}" on agent ${this.opts.name}`);
        let exit;
        try {
          exit = await this.host.stopGuest(p.name);
        } catch (err) {
          throw new AgentRpcError('not-found', (err as Error).message);
        }
        if (e?.disk) await this.overlays.remove(e.disk.overlay); // gone when the answer comes
        return exit;
      }
      case 'qmp': {
        const p = this.parse('qmp', params);
        const refusal = qmpRefusal(p.command, p.args, this.qmpContext(conn));
        if (refusal) throw new AgentRpcError('forbidden', refusal);
        return this.ownGuest(conn, p.handle).qmpClient.execute(p.command, p.args);
      }
      case 'consoleHistory':
        return this.ownGuest(conn, this.parse('consoleHistory', params).handle).console.text();
      case 'markReady':
        this.ownGuest(conn, this.parse('markReady', params).handle).markReady();
        return null;
      case 'allocateMigrationPort': {
        this.checkPortShare(conn);
        const port = await this.host.allocateMigrationPort();
        this.portOwner.set(port, conn.tokenId);
        return port;
      }
      case 'releaseMigrationPort': {
        const { port } = this.parse('releaseMigrationPort', params);
        const owner = this.portOwner.get(port);
        if (owner === undefined) {
          const why = this.relays.has(port) ? 'it is a link relay\'s: close the relay (linkRelay close)' : 'it was not handed out (allocateMigrationPort), or was released already';
          throw new AgentRpcError('not-found', `Port ${port} on agent ${this.opts.name} cannot be released: ${why}`);
        }
        if (owner !== conn.tokenId) throw notYours(`Port ${port} on agent ${this.opts.name}`);
        this.portOwner.delete(port);
        this.host.releaseMigrationPort(port);
        return null;
      }
      case 'openLinkRelay': {
        const p = this.parse('openLinkRelay', params);
        let profile;
        try {
          profile = parseLinkProfile(p.profile ?? {});
        } catch (err) {
          throw new AgentRpcError('invalid', (err as Error).message);
        }
        // A relay forwards to a migration port this token holds: never to another service here.
        const targetOwner = this.portOwner.get(p.targetPort);
        if (targetOwner === undefined) {
          throw new AgentRpcError('forbidden', `A link relay forwards only to a migration port the agent handed out (allocateMigrationPort), and ${p.targetPort} is not one`);
        }
        if (targetOwner !== conn.tokenId) throw notYours(`Port ${p.targetPort} on agent ${this.opts.name}`);
        this.checkPortShare(conn);
        const port = await this.host.allocateMigrationPort();
        try {
          const relay = await LinkRelay.open({ listen: { address: this.opts.address, port }, target: { address: this.opts.address, port: p.targetPort }, profile });
          this.relays.set(relay.port, { relay, owner: conn.tokenId });
          return { port: relay.port, stats: relay.stats() };
        } catch (err) {
          this.host.releaseMigrationPort(port);
          throw err;
        }
      }
      case 'linkRelay': {
        const p = this.parse('linkRelay', params);
        const held = this.relays.get(p.port);
        if (!held) throw new AgentRpcError('not-found', `No link relay listens on port ${p.port} on agent ${this.opts.name}`);
        if (held.owner !== conn.tokenId) throw notYours(`The link relay on port ${p.port} of agent ${this.opts.name}`);
        const relay = held.relay;
        if (p.action === 'set') relay.setProfile(p.profile ?? {});
        else if (p.action === 'cut') relay.cut();
        else if (p.action === 'restore') relay.restore();
        else if (p.action === 'close') {
          this.relays.delete(p.port);
          await relay.close();
          this.host.releaseMigrationPort(p.port);
          return null;
        }
        return relay.stats();
      }
      case 'installTls': {
        const p = this.parse('installTls', params);
        await writeQemuTlsDir(this.tlsDirOf(conn.tokenId), p);
        return null;
      }
      case 'addTlsCreds': {
        const p = this.parse('addTlsCreds', params);
        const g = this.ownGuest(conn, p.handle);
        const dir = this.tlsDirOf(conn.tokenId);
        if (!(await stat(join(dir, 'ca-cert.pem')).catch(() => null))) {
          throw new AgentRpcError('failed', `Agent ${this.opts.name} has no TLS credentials for migration from this engine yet: the lab installs them (installTls) before a TLS migration`);
        }
        return addTlsCredsObject(g.qmpClient, dir, p.endpoint);
      }
    }
  }

  /** QEMU's TLS credentials per token: one lab's CA, which another token's installTls cannot replace. */
  private tlsDirOf(tokenId: string): string {
    return join(this.opts.dataDir, 'qemu-tls', tokenId);
  }

  /** Resolves the peer's library paths, and gives a library disk its overlay. */
  private async prepareSpec(spec: GuestSpec): Promise<{ spec: GuestSpec; disk: DiskOverlay | null }> {
    return this.withOverlay(await resolveSpecPaths(spec, this.opts.imagesDir), spec);
  }

  /**
   * Stops serving. With `stopGuests` false (a restart, an upgrade) the guests keep running and
   * the next agent on this data dir reattaches them.
   */
  async close(opts: { stopGuests?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopWatching?.();
    for (const c of this.conns) c.peer.close(1001, 'agent stopping');
    await Promise.all([...this.relays.values()].map((r) => r.relay.close()));
    this.relays.clear();
    if (opts.stopGuests) {
      await this.host.dispose();
      await rm(join(this.opts.dataDir, 'overlays'), { recursive: true, force: true });
    } else await this.host.detach();
    this.wss.close();
    await new Promise<void>((resolve) => {
      this.https.close(() => resolve());
      this.https.closeAllConnections();
    });
  }
}
