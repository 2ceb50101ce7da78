// A host whose QEMU runs behind a MigLab agent on another machine (or in a network namespace).
// The orchestrator sees the same Host and Guest as for a local host: QMP calls, events, the
// console and labload travel over the agent's WebSocket. A lost connection is retried; calls
// made meanwhile wait for it (bounded), because the guests keep running on the agent's host.
import { EventEmitter, once } from 'node:events';
import { randomUUID } from 'node:crypto';
import { Duplex } from 'node:stream';
import { LabloadChannel } from '../../guest/labload-channel';
import { GuestConsole } from '../console';
import type { ExitInfo } from '../../qemu/process';
import { describeExit } from '../../qemu/process';
import { parseGuestSpec, type GuestSpec, type GuestSpecInput } from '../../qemu/spec';
import type { QmpEvent } from '../../qmp/types';
import type { QmpEventListener, QmpWaitOptions } from '../../qmp/client';
import type { SwitchPortHandle } from '../../network/switch';
import { connectAgent, type AgentAddress } from './connect';
import { normalizeFingerprint } from '../../tls/certs';
import { EngineRequestSchemas, type GuestDescriptor, type StreamKind } from './protocol';
import { usablePeers } from './lab-peers';
import type { PortRange } from '../ports';
import { AgentRpcError, type RpcPeer } from './rpc';
import { delay, withTimeout } from '../../util/time';
import type { LinkProfile, LinkRelayStats } from '../../network/link-profile';
import { stopNamedGuest, type LinkRelayControl, type MigrationTlsCreds } from '../host';
import { checkGuestDescriptor, isGuestState, RefusedGuestError, type CheckedDescriptor } from './guest-descriptor';
import type { Guest, GuestEventMap, GuestQmp, GuestState, Host, HostDescription, HostEventMap, HostInfo, StartGuestOptions } from '../host';
import type { NetworkAttachment } from '../../network/attachment';
import type { LabPeer } from '../host';

export interface RemoteHostOptions extends AgentAddress {
  /** The host's name in the lab (the agent has its own; this one is what the lab shows). */
  name: string;
  /** The lab switch: the agent asks for a port for each NIC it plugs. */
  network?: NetworkAttachment;
  /** How long a call waits for a lost agent to come back before it fails (default 20 s). */
  reconnectWaitMs?: number;
}

export type RemoteHostState = 'connected' | 'reconnecting' | 'closed';

/** A byte stream over the agent connection: what we write goes out as frames, frames come in. */
class AgentStream extends Duplex {
  constructor(private readonly out: (data: Buffer) => void) {
    super();
  }
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.out(chunk);
    cb();
  }
  deliver(data: Buffer): void {
    this.push(data);
  }
}

export class RemoteHost extends EventEmitter implements Host {
  readonly name: string;
  address = '';
  /** The agent's migration ports, as it said in hello. */
  migrationPortRange: PortRange | null = null;
  /** The lab's hosts as this agent is told them (setLabPeers); null: not in a lab. */
  private labPeers: LabPeer[] | null = null;
  private peer: RpcPeer | null = null;
  private state: RemoteHostState = 'reconnecting';
  private readonly byName = new Map<string, RemoteGuest>();
  private readonly byHandle = new Map<number, RemoteGuest>();
  private readonly refused = new Map<string, string>();
  private readonly ports = new Map<number, SwitchPortHandle>();
  private connected: Promise<void> | null = null;
  private disposed = false;
  private lastError = '';

  private constructor(private readonly opts: RemoteHostOptions) {
    super();
    this.name = opts.name;
  }

  /** Connects (the first time must succeed: a wrong token or fingerprint is an error here). */
  static async connect(opts: RemoteHostOptions): Promise<RemoteHost> {
    const host = new RemoteHost(opts);
    await host.attach();
    return host;
  }

  get connection(): RemoteHostState {
    return this.state;
  }

  get agentUrl(): string {
    return this.opts.url;
  }

  /** How errors name this host's agent. */
  private get agentLabel(): string {
    return `${this.name} (${this.opts.url})`;
  }

  /**
   * The hosts of the lab this host is in: its agent sends migration streams to their migration
   * ports alone. Told now and on every reconnect (the agent may have restarted and forgotten).
   */
  setLabPeers(peers: readonly LabPeer[]): void {
    this.labPeers = usablePeers(this.address, peers);
    this.sendLabPeers(this.peer);
  }

  private sendLabPeers(peer: RpcPeer | null): void {
    if (!peer || peer.closed || !this.labPeers) return;
    // A refusal is kept by the agent, which names it when it refuses a migration.
    peer.request('labPeers', { peers: this.labPeers }).catch(() => {});
  }

  /** The agent certificate's pinned SHA-256 fingerprint. */
  get fingerprint(): string {
    return normalizeFingerprint(this.opts.fingerprint);
  }

  private async attach(): Promise<void> {
    const { peer, hello } = await connectAgent(this.opts, { name: `agent ${this.name}` });
    this.address = hello.address;
    this.migrationPortRange = hello.ports ?? null;
    this.sendLabPeers(peer); // first: before any migration this connection may ask for
    this.peer = peer;
    peer.handle((method, params) => this.serveAgent(method, params));
    peer.on('event', (name, data) => this.onAgentEvent(name, data));
    peer.on('stream', (kind, handle, data) => this.byHandle.get(handle)?.deliver(kind, data));
    peer.on('close', (reason) => this.onLost(reason));
    await this.reconcile(await peer.request<GuestDescriptor[]>('guests'));
    this.state = 'connected';
  }

  /**
   * After (re)connecting: the agent's guests are the truth. Known ones get their new handle; one
   * it describes in a way we refuse is left out (see refusedGuests), the others still shown.
   */
  private async reconcile(list: unknown): Promise<void> {
    this.byHandle.clear();
    this.refused.clear();
    if (!Array.isArray(list)) throw new Error(`Agent ${this.agentLabel} answered "guests" with something other than a list: is it a MigLab agent?`);
    const seen = new Set<string>();
    for (const raw of list) {
      const d = this.checked(raw);
      if (!d) continue;
      seen.add(d.name);
      const isNew = !this.byName.has(d.name);
      const g = this.know(d);
      // A guest this engine had not seen (it restarted): its console so far, from the agent.
      if (isNew) {
        const history = await this.peer!.request<unknown>('consoleHistory', { handle: d.handle }).catch(() => '');
        g.seedConsole(typeof history === 'string' ? history : '');
      }
    }
    for (const [name, g] of this.byName) {
      if (!seen.has(name)) g.gone({ code: null, signal: null, stderrTail: `guest "${name}" was gone when agent ${this.name} was reached again`, expected: false });
    }
  }

  /**
   * What the agent said about a guest, checked; null (and the refusal recorded and emitted as
   * 'guest-refused') when it is not acceptable: a bad agent must not take the lab down.
   */
  private checked(raw: unknown): CheckedDescriptor | null {
    try {
      return checkGuestDescriptor(raw, this.agentLabel);
    } catch (err) {
      if (!(err instanceof RefusedGuestError)) throw err;
      const key = err.guest ?? '(unnamed)';
      if (this.refused.size < 64 || this.refused.has(key)) this.refused.set(key, err.message);
      this.emit('guest-refused', err.guest, err.message);
      return null;
    }
  }

  /** Guests the agent described and the engine refused to believe, by name, with why. */
  get refusedGuests(): ReadonlyMap<string, string> {
    return this.refused;
  }

  /** The guest a descriptor names: the known one under its (new) handle, or a new one tracked. */
  private know(d: CheckedDescriptor): RemoteGuest {
    const known = this.byName.get(d.name);
    if (!known) return this.track(d);
    if (known.handle !== d.handle) known.rebind(d);
    this.byHandle.set(d.handle, known);
    return known;
  }

  private track(d: CheckedDescriptor): RemoteGuest {
    const g = new RemoteGuest(this, d);
    this.byName.set(d.name, g);
    this.byHandle.set(d.handle, g);
    g.on('state', (state, prev) => this.emit('guest-state', g, state, prev));
    g.on('exit', (exit) => {
      if (this.byName.get(g.name) === g) this.byName.delete(g.name);
      this.emit('guest-exited', g, exit);
    });
    this.emit('guest-started', g);
    return g;
  }

  private onLost(reason: string): void {
    this.peer = null;
    if (this.disposed) return;
    this.state = 'reconnecting';
    this.lastError = `the connection ${reason}`;
    this.emit('connection', this.state, this.lastError);
    this.connected ??= this.reconnectLoop();
  }

  private async reconnectLoop(): Promise<void> {
    // Short waits: a restarted agent is back in about a second, and every call waits for it.
    let wait = 100;
    while (!this.disposed) {
      await delay(wait);
      try {
        await this.attach();
        this.emit('connection', this.state, '');
        break;
      } catch (err) {
        this.lastError = (err as Error).message;
        wait = Math.min(500, wait * 2);
      }
    }
    this.connected = null;
  }

  /** The live connection, waiting for a lost one to come back (up to reconnectWaitMs). */
  async rpc(): Promise<RpcPeer> {
    if (this.disposed) throw new AgentRpcError('disconnected', `Host ${this.name} has been removed from the lab`);
    if (this.peer && !this.peer.closed) return this.peer;
    const limit = this.opts.reconnectWaitMs ?? 20_000;
    // Every change of the link is a 'connection' event: wait for the one that brings it back.
    const signal = AbortSignal.timeout(limit);
    while (!this.disposed && !signal.aborted) {
      if (this.peer && !this.peer.closed) return this.peer;
      await once(this, 'connection', { signal }).catch(() => {});
    }
    if (this.peer && !this.peer.closed) return this.peer;
    if (this.disposed) throw new AgentRpcError('disconnected', `Host ${this.name} has been removed from the lab`);
    throw new AgentRpcError('disconnected', `Agent ${this.name} (${this.opts.url}) has been unreachable for ${Math.round(limit / 1000)} s: ${this.lastError}`);
  }

  async call<T>(method: string, params?: unknown, timeoutMs?: number): Promise<T> {
    return (await this.rpc()).request<T>(method, params, timeoutMs);
  }

  private async serveAgent(method: string, params: unknown): Promise<unknown> {
    if (method === 'network.openPort') {
      const network = this.opts.network;
      if (!network) throw new AgentRpcError('failed', `Host ${this.name} is not on the lab network`);
      const r = EngineRequestSchemas['network.openPort'].safeParse(params);
      if (!r.success) throw new AgentRpcError('invalid', `network.openPort needs {guest, peer: {address, port}}: ${r.error.issues[0]!.message}`);
      const p = r.data;
      const handle = await network.openPort({ host: this.name, guest: p.guest }, p.peer);
      this.ports.set(handle.id, handle);
      return { id: handle.id, address: handle.address, port: handle.port };
    }
    throw new AgentRpcError('unknown-method', `The engine does not answer "${method}"`);
  }

  private onAgentEvent(name: string, data: unknown): void {
    const d = data as Record<string, unknown>;
    switch (name) {
      case 'guest-started': {
        const checked = this.checked(data);
        if (checked) this.know(checked);
        return;
      }
      case 'guest-state':
        if (isGuestState(d.state)) this.byHandle.get(d.handle as number)?.setState(d.state);
        return;
      case 'guest-exited': {
        const g = this.byHandle.get(d.handle as number);
        this.byHandle.delete(d.handle as number);
        g?.gone(d.exit as ExitInfo);
        return;
      }
      case 'qmp-event': {
        const ev = d.event as Omit<QmpEvent, 'receivedAt'>;
        this.byHandle.get(d.handle as number)?.qmpEvent({ ...ev, receivedAt: performance.now() } as QmpEvent);
        return;
      }
      case 'port-closed': {
        const id = d.id as number;
        this.ports.get(id)?.close();
        this.ports.delete(id);
        return;
      }
    }
  }

  sendStream(kind: StreamKind, handle: number, data: Buffer): void {
    this.peer?.sendStream(kind, handle, data);
  }

  // ---- Host ----

  describe(): HostDescription {
    return {
      kind: 'remote', transport: 'agent-tls', address: this.address,
      outlivesEngine: true,
      imageLibrary: true,
      sharesEngineFiles: false,
      migrationPorts: this.migrationPortRange,
      agent: { url: this.agentUrl, fingerprint: this.fingerprint },
      connection: this.state,
      refusedGuests: [...this.refused].map(([guest, problem]) => ({ guest, problem })),
    };
  }

  leave(): Promise<void> {
    return this.disconnect();
  }

  async info(): Promise<HostInfo> {
    const info = await this.call<HostInfo>('info');
    return {
      ...info, name: this.name, kind: 'remote', address: this.address, labNetwork: this.opts.network !== undefined && info.labNetwork,
      // An agent of an older MigLab does not say: unknown, for the checks to report as such.
      cpu: info.cpu ?? null,
      qemuCpu: info.qemuCpu ?? null,
    };
  }

  override on<K extends keyof HostEventMap>(event: K, listener: (...args: HostEventMap[K]) => void): this {
    return super.on(event, listener as (...a: unknown[]) => void);
  }

  override off<K extends keyof HostEventMap>(event: K, listener: (...args: HostEventMap[K]) => void): this {
    return super.off(event, listener as (...a: unknown[]) => void);
  }

  async startGuest(input: GuestSpecInput, opts: StartGuestOptions = {}): Promise<Guest> {
    const spec = parseGuestSpec(input);
    if (this.byName.has(spec.name)) throw new Error(`A guest named "${spec.name}" already runs on host ${this.name}: pick another name`);
    // Its guest-started event may have come first: either way, one guest object.
    const raw = await this.call<unknown>('startGuest', { spec, incoming: opts.incoming ?? false }, 60_000);
    try {
      const d = checkGuestDescriptor(raw, this.agentLabel);
      if (d.name !== spec.name) throw new RefusedGuestError(this.agentLabel, d.name, [`it answered the start of "${spec.name}" with another guest`]);
      return this.know(d);
    } catch (err) {
      // Started but described wrongly: not left running where no one in the lab sees it.
      void this.call('stopGuest', { name: spec.name }).catch(() => {});
      throw err;
    }
  }

  /** The agent decides about overlays itself: its library disks always boot through one. */
  prepareIncoming(spec: GuestSpec): Promise<Guest> {
    return this.startGuest(spec, { incoming: true });
  }

  guests(): Guest[] {
    return [...this.byName.values()];
  }

  guest(name: string): Guest | undefined {
    return this.byName.get(name);
  }

  stopGuest(name: string): Promise<ExitInfo> {
    return stopNamedGuest(this, name);
  }

  allocateMigrationPort(): Promise<number> {
    return this.call<number>('allocateMigrationPort');
  }

  releaseMigrationPort(port: number): void {
    void this.call('releaseMigrationPort', { port }).catch(() => {});
  }

  async openLinkRelay(targetPort: number, profile?: Partial<LinkProfile>): Promise<LinkRelayControl> {
    const { port } = await this.call<{ port: number }>('openLinkRelay', { targetPort, ...(profile ? { profile } : {}) });
    const act = (action: string, extra: object = {}) => this.call<LinkRelayStats>('linkRelay', { port, action, ...extra });
    return {
      port,
      setProfile: (p) => act('set', { profile: p }),
      cut: () => act('cut'),
      restore: () => act('restore'),
      stats: () => act('stats'),
      close: async () => {
        await act('close');
      },
    };
  }

  async installMigrationTls(creds: MigrationTlsCreds): Promise<void> {
    await this.call('installTls', creds);
  }

  async addMigrationTls(guest: Guest, endpoint: 'server' | 'client'): Promise<string> {
    const g = this.byName.get(guest.name);
    if (!g || g !== guest) throw new Error(`Guest "${guest.name}" does not run on host ${this.name}`);
    return this.call<string>('addTlsCreds', { handle: g.handle, endpoint });
  }

  /** Closes the connection and leaves the guests running on the agent (an engine that quits). */
  async disconnect(): Promise<void> {
    this.disposed = true;
    this.state = 'closed';
    this.peer?.close(1000, 'engine leaving');
    this.emit('connection', this.state, 'disconnected by the engine');
    this.peer = null;
    for (const g of this.byName.values()) g.detach();
  }

  /** Stops every guest on the agent and closes the connection. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    if (this.peer && !this.peer.closed) {
      await Promise.all([...this.byName.values()].map((g) => g.stop().catch(() => {})));
    }
    await this.disconnect();
    for (const p of this.ports.values()) p.close();
    this.ports.clear();
  }
}

export class RemoteGuest extends EventEmitter implements Guest {
  readonly id = randomUUID();
  readonly name: string;
  readonly hostName: string;
  readonly spec: GuestSpec;
  readonly console = new GuestConsole();
  readonly labload: LabloadChannel | null;
  readonly startedAt: number;
  readonly exited: Promise<ExitInfo>;
  readonly kernelAppend: string | null;
  handle: number;
  pid: number | undefined;
  switchPort: Guest['switchPort'];
  adopted: boolean;
  private current: GuestState;
  private exitInfo: ExitInfo | null = null;
  private resolveExit!: (e: ExitInfo) => void;
  private readonly qmpListeners = new Map<string, Set<QmpEventListener>>();
  private readonly consoleStream: AgentStream;
  private readonly labloadStream: AgentStream | null;
  private stopping: Promise<ExitInfo> | null = null;
  readonly qmp: GuestQmp;

  constructor(
    private readonly host: RemoteHost,
    d: CheckedDescriptor,
  ) {
    super();
    this.name = d.name;
    this.hostName = host.name;
    this.spec = d.spec; // checked with the API's schema (checkGuestDescriptor): the agent is not trusted
    this.handle = d.handle;
    this.pid = d.pid ?? undefined;
    this.switchPort = d.switchPort;
    this.adopted = d.adopted;
    this.current = d.state;
    this.startedAt = performance.now() - d.uptimeMs;
    this.kernelAppend = d.kernelAppend ?? null;
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
    this.consoleStream = new AgentStream((data) => this.host.sendStream('console', this.handle, data));
    void this.console.attach(this.consoleStream);
    this.labloadStream = d.labload ? new AgentStream((data) => this.host.sendStream('labload', this.handle, data)) : null;
    this.labload = this.labloadStream ? new LabloadChannel(this.labloadStream) : null;
    this.labload?.waitReady(24 * 3600_000).then(
      () => this.markReady(),
      () => {},
    );
    this.qmp = {
      execute: async <T>(command: string, args?: Record<string, unknown>): Promise<T> => {
        if (this.exitInfo) throw new Error(`Guest "${this.name}" on ${this.hostName} has stopped: ${describeExit(this.exitInfo)}`);
        return this.host.call<T>('qmp', { handle: this.handle, command, ...(args ? { args } : {}) }, 60_000);
      },
      onEvent: (name: string, listener: QmpEventListener) => this.addQmpListener(name, listener),
      waitForEvent: (name: string, opts: QmpWaitOptions = {}) => this.waitForEvent(name, opts),
    } as GuestQmp;
  }

  get state(): GuestState {
    return this.current;
  }

  get exit(): ExitInfo | null {
    return this.exitInfo;
  }

  /** The same guest under a new handle (the agent restarted, or we reconnected). */
  rebind(d: CheckedDescriptor): void {
    this.handle = d.handle;
    this.pid = d.pid ?? undefined;
    if (d.state !== this.current) this.setState(d.state);
  }

  seedConsole(history: string): void {
    if (history) this.consoleStream.deliver(Buffer.from(history));
  }

  deliver(kind: StreamKind, data: Buffer): void {
    if (kind === 'console') this.consoleStream.deliver(data);
    else this.labloadStream?.deliver(data);
  }

  setState(next: GuestState): void {
    const prev = this.current;
    if (prev === next || this.exitInfo) return;
    this.current = next;
    this.emit('state', next, prev);
  }

  qmpEvent(ev: QmpEvent): void {
    for (const key of [ev.event, '*']) for (const l of [...(this.qmpListeners.get(key) ?? [])]) l(ev);
  }

  private addQmpListener(name: string, listener: QmpEventListener): () => void {
    let set = this.qmpListeners.get(name);
    if (!set) this.qmpListeners.set(name, (set = new Set()));
    set.add(listener);
    return () => set!.delete(listener);
  }

  private waitForEvent(name: string, opts: QmpWaitOptions): Promise<QmpEvent> {
    if (opts.signal?.aborted) return Promise.reject(opts.signal.reason ?? new Error('aborted'));
    return new Promise<QmpEvent>((resolve, reject) => {
      let timer: NodeJS.Timeout | null = null;
      const off = this.addQmpListener(name, (ev) => {
        if (opts.predicate && !opts.predicate(ev)) return;
        done();
        resolve(ev);
      });
      const onAbort = () => {
        done();
        reject(opts.signal!.reason ?? new Error('aborted'));
      };
      const onExit = (exit: ExitInfo) => {
        done();
        reject(new Error(`Guest "${this.name}" stopped while waiting for QMP event ${name}: ${describeExit(exit)}`));
      };
      const done = () => {
        off();
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        this.off('exit', onExit);
      };
      const t = opts.timeoutMs ?? 30_000;
      if (t > 0 && Number.isFinite(t)) {
        timer = setTimeout(() => {
          done();
          reject(new Error(`QMP event ${name} did not come from guest "${this.name}" on ${this.hostName} within ${t} ms`));
        }, t);
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.on('exit', onExit);
    });
  }

  override on<K extends keyof GuestEventMap>(event: K, listener: (...args: GuestEventMap[K]) => void): this {
    return super.on(event, listener as (...a: unknown[]) => void);
  }

  override off<K extends keyof GuestEventMap>(event: K, listener: (...args: GuestEventMap[K]) => void): this {
    return super.off(event, listener as (...a: unknown[]) => void);
  }

  markReady(): void {
    if (!['booting', 'running', 'incoming'].includes(this.current)) return;
    this.setState('ready');
    void this.host.call('markReady', { handle: this.handle }).catch(() => {});
  }

  async waitReady(timeoutMs = 30_000): Promise<void> {
    if (this.current === 'ready') return;
    if (!this.labload && (this.spec.boot.kind === 'lab' || !this.spec.boot.readyPattern)) {
      throw new Error(`Guest "${this.name}" does not run labload and has no ready pattern, so it cannot report that it is ready`);
    }
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        const onState = (s: GuestState) => {
          if (s === 'ready') {
            this.off('state', onState);
            resolve();
          }
        };
        this.on('state', onState);
        void this.exited.then((exit) => reject(new Error(`Guest "${this.name}" stopped before it was ready: ${describeExit(exit)}`)));
      }),
      timeoutMs,
      `Guest "${this.name}" reporting ready`,
    );
  }

  stop(): Promise<ExitInfo> {
    this.stopping ??= (async () => {
      if (this.exitInfo) return this.exitInfo;
      if (this.current !== 'stopping') this.setState('stopping');
      try {
        const exit = await this.host.call<ExitInfo>('stopGuest', { name: this.name }, 30_000);
        this.gone(exit);
      } catch (err) {
        if (!(err instanceof AgentRpcError) || err.code !== 'not-found') throw err;
        this.gone({ code: null, signal: null, stderrTail: '', expected: true });
      }
      return this.exited;
    })();
    return this.stopping;
  }

  /** QEMU has gone (the agent said so, or it was not there after a reconnect). */
  gone(exit: ExitInfo): void {
    if (this.exitInfo) return;
    this.exitInfo = exit;
    const prev = this.current;
    this.current = exit.expected ? 'stopped' : 'failed';
    this.emit('state', this.current, prev);
    this.labload?.close();
    this.console.close();
    this.resolveExit(exit);
    this.emit('exit', exit);
  }

  /** The engine lets go; the guest keeps running on its host. */
  detach(): void {
    this.labload?.close();
    this.console.close();
  }
}
