// `miglab agent`: a LocalHost served to the engine over a WebSocket on TLS. QMP, console and
// labload stay on UNIX sockets on this machine; the engine reaches them only through the
// requests below, each validated, size- and rate-limited, and allowed by a token.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import { mkdir, stat } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { join, relative } from 'node:path';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { LocalHost, type LocalGuest } from '../hosts/local';
import type { Guest, NetworkAttachment } from '../hosts/host';
import type { PortLabel, SwitchPortHandle } from '../network/switch';
import { LinkRelay, parseLinkProfile } from '../network/link-relay';
import { parseGuestSpec, type GuestSpec } from '../qemu/spec';
import { loadOrCreateAgentIdentity, writeQemuTlsDir, type TlsIdentity } from './certs';
import { resolveLibraryPath } from './images';
import { addTlsCredsObject } from '../qemu/tls';
import {
  AGENT_MAX_MESSAGE_BYTES,
  AGENT_PROTOCOL_VERSION,
  AGENT_WS_PATH,
  AgentRequestSchemas,
  MIGRATION_URI,
  QMP_ALLOWED,
  type AgentMethod,
  type GuestDescriptor,
} from './protocol';
import { AgentRpcError, RateLimit, RpcPeer } from './rpc';
import { TokenStore } from './tokens';

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
  log?: (line: string) => void;
}

export interface AgentStartInfo {
  name: string;
  url: string;
  fingerprint: string;
  /** A new pairing token, shown once: only on the first start (or when none is left). */
  pairingToken: string | null;
  adopted: string[];
}

interface Conn {
  peer: RpcPeer;
  tokenId: string;
  ws: WebSocket;
}

/** A peer's guest spec: library-relative image paths resolved, nothing else touched. */
async function resolveSpecPaths(spec: GuestSpec, library: string | null): Promise<GuestSpec> {
  const boot = spec.boot;
  if (boot.kind === 'kernel') {
    return {
      ...spec,
      boot: {
        ...boot,
        kernel: await resolveLibraryPath(library, boot.kernel, 'kernel'),
        ...(boot.initrd ? { initrd: await resolveLibraryPath(library, boot.initrd, 'initrd') } : {}),
      },
    };
  }
  if (boot.kind === 'disk') return { ...spec, boot: { ...boot, path: await resolveLibraryPath(library, boot.path, 'disk image') } };
  return spec;
}

export class AgentServer {
  private readonly conns = new Set<Conn>();
  /** Guests by the handle the wire names them with, and back. */
  private readonly handles = new Map<number, LocalGuest>();
  private readonly handleOfGuest = new WeakMap<Guest, number>();
  private nextHandle = 1;
  private readonly relays = new Map<number, LinkRelay>();
  private readonly unsubscribe = new Map<LocalGuest, Array<() => void>>();
  private stopWatching: (() => void) | null = null;
  private closed = false;
  private readonly failedAuth = new Map<string, RateLimit>();
  /** Guests whose start is under way, by name, with their memory: counted against the limits. */
  private readonly startingNow = new Map<string, number>();
  /** The connection whose engine owns the lab switch: the last one that said hello. */
  private controller: Conn | null = null;

  private constructor(
    private readonly opts: AgentOptions,
    readonly host: LocalHost,
    private readonly tokens: TokenStore,
    readonly identity: TlsIdentity,
    private readonly https: ReturnType<typeof createServer>,
    private readonly wss: WebSocketServer,
  ) {}

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
      portHandle: (p) => self!.switchPortHandle(p),
    };
    const range = opts.portRange ?? { first: 49152, last: 49407 };
    const host = new LocalHost({
      name: opts.name,
      address: opts.address,
      runtimeDir: join(opts.dataDir, 'guests'),
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
    host.on('guest-state', (g, state, previous) => server.broadcast('guest-state', { handle: server.handleOf(g), state, previous }));
    host.on('guest-exited', (g, exit) => server.onGuestExited(g as LocalGuest, exit));
    const { adopted, removed } = await host.adoptGuests();
    if (adopted.length) log(`reattached ${adopted.length} running guest(s): ${adopted.join(', ')}`);
    if (removed.length) log(`removed the records of ${removed.length} guest(s) whose QEMU had gone: ${removed.join(', ')}`);
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

  // ---- access ----

  private tokenOf(req: IncomingMessage): { id: string } | null {
    const auth = req.headers.authorization;
    if (typeof auth !== 'string' || !auth.startsWith('Bearer ')) return null;
    return this.tokens.verify(auth.slice(7).trim());
  }

  /** Too many bad tokens from one address: it waits, so tokens cannot be guessed at speed. */
  private throttled(req: IncomingMessage): boolean {
    const ip = req.socket.remoteAddress ?? '?';
    let bucket = this.failedAuth.get(ip);
    if (!bucket) {
      // Bounded memory: forget the oldest addresses, not all of them (that would reset the throttle).
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
      res.end(JSON.stringify({ name: this.opts.name, protocol: AGENT_PROTOCOL_VERSION, guests: this.host.guests().length }));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end(`Not found: the agent serves its API as a WebSocket on ${AGENT_WS_PATH}\n`);
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const token = this.tokenOf(req);
    const reject = (status: string) => {
      socket.end(`HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      socket.destroy();
    };
    if (!token) return reject(this.throttled(req) ? '429 Too Many Requests' : '401 Unauthorized');
    if (req.url !== AGENT_WS_PATH) return reject('404 Not Found');
    if (this.closed) return reject('503 Service Unavailable');
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, token.id));
  }

  private onConnection(ws: WebSocket, tokenId: string): void {
    const peer = new RpcPeer(ws, { name: `agent ${this.opts.name}`, rateLimit: new RateLimit(400, 800) });
    const conn: Conn = { peer, tokenId, ws };
    this.conns.add(conn);
    peer.on('close', () => {
      this.conns.delete(conn);
      if (this.controller === conn) this.controller = null;
    });
    peer.on('stream', (kind, handle, data) => {
      const g = this.handles.get(handle);
      if (!g) return;
      try {
        if (kind === 'console') g.console.write(data);
        else g.writeControl(data);
      } catch {
        // the guest is going away; its exit event tells the engine
      }
    });
    peer.handle((method, params) => this.serve(conn, method, params));
  }

  private dropRevoked(ids: string[]): void {
    for (const c of this.conns) if (ids.includes(c.tokenId)) c.peer.close(4001, 'token revoked');
  }

  // ---- the lab switch, which lives with the engine ----

  private async openSwitchPort(label: PortLabel, peer: { address: string; port: number }): Promise<SwitchPortHandle> {
    const c = this.controller;
    if (!c || c.peer.closed) throw new Error(`No engine is connected to agent ${this.opts.name}, so a NIC cannot be plugged into the lab switch`);
    const p = await c.peer.request<{ id: number; address: string; port: number }>('network.openPort', { guest: label.guest, peer });
    return this.switchPortHandle(p);
  }

  private switchPortHandle(p: { id: number; address: string; port: number }): SwitchPortHandle {
    return { ...p, close: () => this.broadcast('port-closed', { id: p.id }) };
  }

  // ---- guests ----

  private handleOf(g: Guest): number {
    return this.handleOfGuest.get(g) ?? 0;
  }

  /** The spec as the peer knows it: image paths relative to the library, as it sent them. */
  private peerSpec(spec: GuestSpec): GuestSpec {
    const lib = this.opts.imagesDir;
    const rel = (p: string) => (lib && !relative(lib, p).startsWith('..') ? relative(lib, p) : p);
    const boot = spec.boot;
    if (boot.kind === 'kernel') return { ...spec, boot: { ...boot, kernel: rel(boot.kernel), ...(boot.initrd ? { initrd: rel(boot.initrd) } : {}) } };
    if (boot.kind === 'disk') return { ...spec, boot: { ...boot, path: rel(boot.path) } };
    return spec;
  }

  private describe(g: LocalGuest): GuestDescriptor {
    return {
      handle: this.handleOf(g),
      name: g.name,
      spec: this.peerSpec(g.spec) as unknown as Record<string, unknown>,
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
    this.handleOfGuest.set(g, handle);
    this.handles.set(handle, g);
    const onConsole = (d: Buffer) => this.broadcastStream('console', handle, d);
    g.console.on('data', onConsole);
    this.unsubscribe.set(g, [
      () => g.console.off('data', onConsole),
      g.tapControl((d) => this.broadcastStream('labload', handle, d)),
      g.qmpClient.onEvent('*', (ev) =>
        this.broadcast('qmp-event', { handle, event: { event: ev.event, data: ev.data, timestamp: ev.timestamp } }),
      ),
    ]);
    this.broadcast('guest-started', this.describe(g));
  }

  private onGuestExited(g: LocalGuest, exit: unknown): void {
    const handle = this.handleOf(g);
    for (const off of this.unsubscribe.get(g) ?? []) off();
    this.unsubscribe.delete(g);
    this.handles.delete(handle);
    this.broadcast('guest-exited', { handle, exit });
  }

  private broadcast(event: string, data: unknown): void {
    for (const c of this.conns) c.peer.emitEvent(event, data);
  }

  private broadcastStream(kind: 'console' | 'labload', handle: number, data: Buffer): void {
    for (const c of this.conns) c.peer.sendStream(kind, handle, data);
  }

  private guestByHandle(handle: number): LocalGuest {
    const g = this.handles.get(handle);
    if (!g) throw new AgentRpcError('not-found', `No guest has handle ${handle} on agent ${this.opts.name}: it has stopped, or list the guests again`);
    return g;
  }

  /**
   * Checks the limits counting the guests still starting too, and holds the new guest's place
   * until its start ends (the returned release): two requests at once cannot both slip under.
   */
  private reserveLimits(spec: GuestSpec): () => void {
    const maxGuests = this.opts.maxGuests ?? 8;
    const maxMemory = this.opts.maxMemoryMiB ?? Math.floor((totalmem() / 2 ** 20) * 0.75);
    const running = this.host.guests().filter((g) => !this.startingNow.has(g.name));
    const count = running.length + this.startingNow.size;
    if (count >= maxGuests) {
      throw new AgentRpcError('limit', `Agent ${this.opts.name} runs or is starting ${count} guests, its limit (--max-guests ${maxGuests}): stop one first`);
    }
    const used = running.reduce((sum, g) => sum + g.spec.memoryMiB, 0) + [...this.startingNow.values()].reduce((a, b) => a + b, 0);
    if (used + spec.memoryMiB > maxMemory) {
      throw new AgentRpcError(
        'limit',
        `Guest "${spec.name}" needs ${spec.memoryMiB} MiB, but agent ${this.opts.name} has ${maxMemory - used} MiB of its ${maxMemory} MiB guest memory left (--max-memory): give it less memory or stop a guest`,
      );
    }
    const key = spec.name;
    if (this.startingNow.has(key)) throw new AgentRpcError('invalid', `A guest named "${key}" is starting on agent ${this.opts.name} already: pick another name`);
    this.startingNow.set(key, spec.memoryMiB);
    return () => this.startingNow.delete(key);
  }

  private checkQmp(command: string, args: Record<string, unknown> | undefined): void {
    if (!QMP_ALLOWED.has(command) && !command.startsWith('query-')) {
      throw new AgentRpcError('forbidden', `The agent does not pass QMP command "${command}" on: only migration, run-state and query commands are allowed`);
    }
    if (command === 'migrate' || command === 'migrate-incoming') {
      const uri = args?.uri;
      if (typeof uri !== 'string' || !MIGRATION_URI.test(uri)) {
        throw new AgentRpcError('forbidden', `Migration URI ${JSON.stringify(uri)} is refused: only tcp:ADDRESS:PORT is allowed (no exec:, unix:, fd: or file:)`);
      }
      if (args && Object.keys(args).some((k) => !['uri', 'blk', 'inc', 'detach', 'resume'].includes(k))) {
        throw new AgentRpcError('forbidden', `QMP ${command} takes only uri (and the flags blk, inc, detach, resume) through the agent`);
      }
    }
    if (command === 'migrate-set-parameters' && args) {
      const creds = args['tls-creds'];
      if (creds !== undefined && creds !== '' && !/^miglab-tls-(server|client)$/.test(String(creds))) {
        throw new AgentRpcError('forbidden', 'tls-creds can only name the credentials the agent made (addTlsCreds)');
      }
      if (args['tls-authz'] !== undefined) throw new AgentRpcError('forbidden', 'tls-authz cannot be set through the agent');
    }
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
        this.controller = conn;
        return { name: this.opts.name, protocol: AGENT_PROTOCOL_VERSION, address: this.opts.address };
      }
      case 'ping':
        return { at: Date.now() };
      case 'info':
        return this.host.info();
      case 'guests':
        return this.host.guests().map((g) => this.describe(g as LocalGuest));
      case 'startGuest': {
        const p = this.parse('startGuest', params);
        let spec: GuestSpec;
        try {
          spec = parseGuestSpec(p.spec as never);
        } catch (err) {
          throw new AgentRpcError('invalid', (err as Error).message);
        }
        const release = this.reserveLimits(spec);
        try {
          spec = await resolveSpecPaths(spec, this.opts.imagesDir);
          const g = (await this.host.startGuest(spec, { incoming: p.incoming ?? false })) as LocalGuest;
          return this.describe(g);
        } catch (err) {
          // QEMU's last words name the process that signalled it, with its path: not the peer's business.
          throw err instanceof AgentRpcError ? err : new AgentRpcError('failed', (err as Error).message.replace(/ from pid \d+ \([^)]*\)/g, ''));
        } finally {
          release();
        }
      }
      case 'stopGuest': {
        const p = this.parse('stopGuest', params);
        try {
          return await this.host.stopGuest(p.name);
        } catch (err) {
          throw new AgentRpcError('not-found', (err as Error).message);
        }
      }
      case 'qmp': {
        const p = this.parse('qmp', params);
        this.checkQmp(p.command, p.args);
        return this.guestByHandle(p.handle).qmpClient.execute(p.command, p.args);
      }
      case 'consoleHistory':
        return this.guestByHandle(this.parse('consoleHistory', params).handle).console.text();
      case 'markReady':
        this.guestByHandle(this.parse('markReady', params).handle).markReady();
        return null;
      case 'allocateMigrationPort':
        return this.host.allocateMigrationPort();
      case 'releaseMigrationPort':
        this.host.releaseMigrationPort(this.parse('releaseMigrationPort', params).port);
        return null;
      case 'openLinkRelay': {
        const p = this.parse('openLinkRelay', params);
        let profile;
        try {
          profile = parseLinkProfile(p.profile ?? {});
        } catch (err) {
          throw new AgentRpcError('invalid', (err as Error).message);
        }
        const port = await this.host.allocateMigrationPort();
        try {
          const relay = await LinkRelay.open({ listen: { address: this.opts.address, port }, target: { address: this.opts.address, port: p.targetPort }, profile });
          this.relays.set(relay.port, relay);
          return { port: relay.port, stats: relay.stats() };
        } catch (err) {
          this.host.releaseMigrationPort(port);
          throw err;
        }
      }
      case 'linkRelay': {
        const p = this.parse('linkRelay', params);
        const relay = this.relays.get(p.port);
        if (!relay) throw new AgentRpcError('not-found', `No link relay listens on port ${p.port} on agent ${this.opts.name}`);
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
        await writeQemuTlsDir(join(this.opts.dataDir, 'qemu-tls'), p);
        return null;
      }
      case 'addTlsCreds': {
        const p = this.parse('addTlsCreds', params);
        const g = this.guestByHandle(p.handle);
        const dir = join(this.opts.dataDir, 'qemu-tls');
        if (!(await stat(join(dir, 'ca-cert.pem')).catch(() => null))) {
          throw new AgentRpcError('failed', `Agent ${this.opts.name} has no TLS credentials for migration yet: the lab installs them (installTls) before a TLS migration`);
        }
        return addTlsCredsObject(g.qmpClient, dir, p.endpoint);
      }
    }
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
    await Promise.all([...this.relays.values()].map((r) => r.close()));
    this.relays.clear();
    if (opts.stopGuests) await this.host.dispose();
    else await this.host.detach();
    this.wss.close();
    await new Promise<void>((resolve) => {
      this.https.close(() => resolve());
      this.https.closeAllConnections();
    });
  }
}
