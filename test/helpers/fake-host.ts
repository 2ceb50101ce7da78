// Host and Guest over the fake QEMU world (fake-qemu-world.ts), full enough for the migration job,
// pre-flight and recovery. The engine talks to each FakeQemu through a real QmpClient on its
// socket. A 'remote' host behaves like RemoteHost while its agent is away: calls wait for it up to
// reconnectWaitMs, then throw AgentRpcError 'disconnected'; events meanwhile are lost. A host
// whose engine died answers nothing, ever; a new FakeHost over the same world reattaches.
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { AgentRpcError } from '../../electron/engine/hosts/remote/rpc';
import { GuestConsole } from '../../electron/engine/hosts/console';
import { stopNamedGuest, type Guest, type GuestEventMap, type GuestQmp, type GuestState, type Host, type HostDescription, type HostEventMap, type HostInfo, type LinkRelayControl, type StartGuestOptions } from '../../electron/engine/hosts/host';
import { MigrationJournal, type JournalEntry } from '../../electron/engine/migration/journal';
import type { ExitInfo } from '../../electron/engine/qemu/process';
import { parseGuestSpec, type GuestSpec, type GuestSpecInput } from '../../electron/engine/qemu/spec';
import { QmpClient, type QmpEvent, type QmpEventListener, type QmpWaitOptions } from '../../electron/engine/qmp';
import { QEMU10_CAPABILITIES, type FakeQemu, type FakeQemuWorld } from './fake-qemu-world';

/** A promise that never settles: what every call to a dead engine's objects returns. */
function never<T>(): Promise<T> {
  return new Promise<T>(() => {});
}

export interface FakeHostOptions {
  name: string;
  kind: 'local' | 'remote';
  /** Where its migration ports listen. */
  address: string;
  /** How long a call waits for an away agent (remote only); default 20 s as RemoteHost. */
  reconnectWaitMs?: number;
  /** Capabilities its QEMU offers; default QEMU 10's. */
  capabilities?: readonly string[];
  freeMiB?: number;
  /** Destinations start with -S (the protocol); false: they run the moment they have loaded. */
  destinationStartsPaused?: boolean;
}

export class FakeHost extends EventEmitter implements Host {
  readonly name: string;
  readonly kind: 'local' | 'remote';
  readonly address: string;
  private readonly byName = new Map<string, FakeGuest>();
  private readonly all = new Set<FakeGuest>();
  private linkUp = true;
  private linkWaiters = new Set<() => void>();
  private readonly inFlight = new Set<(err: Error) => void>();
  private awayTimer: NodeJS.Timeout | null = null;
  private dead = false;
  private disposed = false;

  constructor(
    readonly world: FakeQemuWorld,
    readonly opts: FakeHostOptions,
  ) {
    super();
    this.name = opts.name;
    this.kind = opts.kind;
    this.address = opts.address;
  }

  /** A restarted engine's host: it finds the QEMUs of this host that still run and connects to them. */
  static async reattach(world: FakeQemuWorld, opts: FakeHostOptions): Promise<FakeHost> {
    const host = new FakeHost(world, opts);
    for (const q of world.alive(opts.name)) {
      const client = new QmpClient({ name: `${opts.name}/${q.guest} (reattached)` });
      try {
        await client.connect(q.qmpPath, { timeoutMs: 2000 });
      } catch {
        await client.disconnect();
        continue; // it died meanwhile
      }
      host.track(new FakeGuest(host, q, client, q.runstate === 'inmigrate' ? 'incoming' : 'running', q.guest));
    }
    return host;
  }

  get isAway(): boolean {
    return !this.linkUp;
  }

  get isDead(): boolean {
    return this.dead;
  }

  // ---- faults ----

  /** The agent's link drops for `ms` (Infinity: until agentBack()). Calls in flight fail, new ones wait. */
  agentAway(ms: number): void {
    if (this.kind !== 'remote') throw new Error(`Host ${this.name} is local: only an agent's host can go away`);
    if (this.awayTimer) clearTimeout(this.awayTimer);
    this.awayTimer = null;
    if (this.linkUp) {
      this.linkUp = false;
      for (const reject of [...this.inFlight]) reject(new AgentRpcError('disconnected', `The connection to agent ${this.name} closed`));
      this.emit('connection', 'reconnecting', 'the connection closed');
    }
    if (Number.isFinite(ms)) this.awayTimer = setTimeout(() => this.agentBack(), ms);
  }

  /** The agent is reachable again: waiting calls go on, exits it saw meanwhile are reported. */
  agentBack(): void {
    if (this.awayTimer) clearTimeout(this.awayTimer);
    this.awayTimer = null;
    if (this.linkUp || this.dead) return;
    this.linkUp = true;
    this.emit('connection', 'connected', '');
    for (const wake of [...this.linkWaiters]) wake();
    for (const g of this.all) g.reconcile();
  }

  /** The engine that owns this host object died: nothing it started answers any more. */
  die(): void {
    if (this.dead) return;
    this.dead = true;
    if (this.awayTimer) clearTimeout(this.awayTimer);
    this.awayTimer = null;
    for (const g of this.all) void g.detach();
  }

  // ---- the gate every call goes through ----

  /** Runs `call` as the engine would reach it: through the agent's link for a remote host. */
  async via<T>(call: () => Promise<T>): Promise<T> {
    if (this.dead) return never();
    if (this.disposed) throw new AgentRpcError('disconnected', `Host ${this.name} has been removed from the lab`);
    if (!this.linkUp) await this.waitForLink();
    if (this.dead) return never();
    return new Promise<T>((resolve, reject) => {
      const fail = (err: Error) => {
        this.inFlight.delete(fail);
        if (!this.dead) reject(err);
      };
      this.inFlight.add(fail);
      call().then(
        (v) => {
          if (!this.inFlight.delete(fail) || this.dead) return;
          resolve(v);
        },
        (err: Error) => {
          if (!this.inFlight.delete(fail) || this.dead) return;
          reject(err);
        },
      );
    });
  }

  private async waitForLink(): Promise<void> {
    const limit = this.opts.reconnectWaitMs ?? 20_000;
    let wake!: () => void;
    const back = new Promise<void>((r) => (wake = r));
    this.linkWaiters.add(wake);
    const timer = setTimeout(wake, limit);
    try {
      await back;
    } finally {
      clearTimeout(timer);
      this.linkWaiters.delete(wake);
    }
    if (this.dead) return never();
    if (!this.linkUp) {
      throw new AgentRpcError('disconnected', `Agent ${this.name} (fake) has been unreachable for ${(limit / 1000).toFixed(1)} s: the connection closed`);
    }
  }

  /** Events and exits reach the engine only while it is alive and (remote) linked. */
  get delivers(): boolean {
    return !this.dead && this.linkUp;
  }

  // ---- Host ----

  info(): Promise<HostInfo> {
    return this.via(async () => ({
      name: this.name,
      kind: this.kind,
      address: this.address,
      qemu: { path: '/fake/bin/qemu-system-x86_64', version: '10.0.2' },
      accel: { accel: 'tcg', reason: 'the fake world emulates' },
      memory: { totalMiB: 16384, freeMiB: this.opts.freeMiB ?? 8192 },
      cpus: 2,
      migrationCapabilities: [...(this.opts.capabilities ?? QEMU10_CAPABILITIES)],
      labNetwork: false,
      cpu: null,
      qemuCpu: { models: ['qemu64', 'max'], machineDefaults: { q35: 'qemu64', pc: 'qemu64' } },
    }));
  }

  /** A local destination resolves an agent's image names in its library; the fake's guests have none. */
  async resolvePeerSpec(spec: GuestSpec): Promise<GuestSpec> {
    return spec;
  }

  startGuest(input: GuestSpecInput, opts: StartGuestOptions = {}): Promise<Guest> {
    return this.via(async () => {
      const spec = parseGuestSpec(input);
      if (this.byName.has(spec.name)) throw new Error(`A guest named "${spec.name}" already runs on host ${this.name}: pick another name`);
      const incoming = opts.incoming ?? false;
      const qemu = await this.world.startQemu({
        host: this.name, guest: spec.name, memoryMiB: spec.memoryMiB, incoming,
        startPaused: incoming ? (this.opts.destinationStartsPaused ?? true) : true,
      });
      const client = new QmpClient({ name: `${this.name}/${spec.name}` });
      await client.connect(qemu.qmpPath, { timeoutMs: 2000 });
      // Like LocalHost: -S, connected, then `cont` for a guest that boots (it is "booted" at once here).
      if (!incoming) await client.execute('cont');
      const guest = new FakeGuest(this, qemu, client, incoming ? 'incoming' : 'ready', spec);
      this.track(guest);
      this.emit('guest-started', guest);
      return guest;
    });
  }

  prepareIncoming(spec: GuestSpec): Promise<Guest> {
    return this.startGuest(spec, { incoming: true });
  }

  private track(g: FakeGuest): void {
    this.byName.set(g.name, g);
    this.all.add(g);
    g.on('state', (state, prev) => this.emit('guest-state', g, state, prev));
    g.on('exit', (exit) => {
      if (this.byName.get(g.name) === g) this.byName.delete(g.name);
      this.emit('guest-exited', g, exit);
    });
  }

  guests(): Guest[] {
    return [...this.byName.values()];
  }

  guest(name: string): FakeGuest | undefined {
    return this.byName.get(name);
  }

  stopGuest(name: string): Promise<ExitInfo> {
    if (this.dead) return never();
    return stopNamedGuest(this, name);
  }

  allocateMigrationPort(): Promise<number> {
    return this.via(async () => this.world.allocatePort(this.address));
  }

  releaseMigrationPort(): void {}

  openLinkRelay(): Promise<LinkRelayControl> {
    return Promise.reject(new Error(`Host ${this.name} is a fake: link emulation is not supported; run the migration without the link option`));
  }

  installMigrationTls(): Promise<void> {
    return Promise.reject(new Error(`Host ${this.name} is a fake: migration TLS is not supported; run the migration without tls`));
  }

  addMigrationTls(): Promise<string> {
    return Promise.reject(new Error(`Host ${this.name} is a fake: migration TLS is not supported; run the migration without tls`));
  }

  override on<K extends keyof HostEventMap>(event: K, listener: (...args: HostEventMap[K]) => void): this {
    return super.on(event, listener as (...a: unknown[]) => void);
  }

  override off<K extends keyof HostEventMap>(event: K, listener: (...args: HostEventMap[K]) => void): this {
    return super.off(event, listener as (...a: unknown[]) => void);
  }

  describe(): HostDescription {
    const remote = this.kind === 'remote';
    return {
      kind: this.kind, transport: remote ? 'agent-tls' : 'in-process', address: this.address,
      outlivesEngine: remote, imageLibrary: false, sharesEngineFiles: !remote, migrationPorts: null,
      agent: remote ? { url: `wss://${this.address}:7443`, fingerprint: 'fake' } : null,
      connection: this.disposed ? 'closed' : this.linkUp ? 'connected' : 'reconnecting',
      refusedGuests: [],
    };
  }

  setLabPeers(): void {}

  leave(): Promise<void> {
    return this.dispose();
  }

  /** Closes this engine's QMP connections; the QEMUs are the world's to end (world.close()). */
  async dispose(): Promise<void> {
    this.disposed = true;
    if (this.awayTimer) clearTimeout(this.awayTimer);
    this.awayTimer = null;
    for (const wake of [...this.linkWaiters]) wake();
    await Promise.all([...this.all].map((g) => g.detach()));
  }
}

export class FakeGuest extends EventEmitter implements Guest {
  readonly id = randomUUID();
  readonly name: string;
  readonly hostName: string;
  readonly spec: GuestSpec;
  readonly labload = null;
  readonly console = new GuestConsole();
  readonly startedAt = performance.now();
  readonly kernelAppend = null;
  readonly switchPort = null;
  readonly exited: Promise<ExitInfo>;
  readonly qmp: GuestQmp;
  private current: GuestState;
  private exitInfo: ExitInfo | null = null;
  private resolveExit!: (e: ExitInfo) => void;
  private readonly qmpListeners = new Map<string, Set<QmpEventListener>>();
  private stopping: Promise<ExitInfo> | null = null;

  constructor(
    private readonly host: FakeHost,
    readonly qemu: FakeQemu,
    private readonly client: QmpClient,
    initial: GuestState,
    spec: GuestSpec | string,
  ) {
    super();
    this.spec = typeof spec === 'string' ? parseGuestSpec({ name: spec }) : spec;
    this.name = this.spec.name;
    this.hostName = host.name;
    this.current = initial;
    this.exited = new Promise((r) => (this.resolveExit = r));
    client.onEvent('*', (ev) => {
      if (!this.host.delivers) return; // an away agent relays nothing; a dead engine hears nothing
      if (ev.event === 'RESUME' && this.current === 'incoming') this.setState('running');
      for (const key of [ev.event, '*']) for (const l of [...(this.qmpListeners.get(key) ?? [])]) l(ev);
    });
    void qemu.exited.then(() => this.reconcile());
    this.qmp = {
      execute: <T>(command: string, args?: Record<string, unknown>, opts?: { timeoutMs?: number; signal?: AbortSignal }) =>
        this.host.via(() => {
          if (this.exitInfo) throw new Error(`Guest "${this.name}" on ${this.hostName} has stopped: QEMU is gone`);
          return this.client.execute<T>(command, args, opts);
        }),
      onEvent: (name: string, listener: QmpEventListener) => this.listen(name, listener),
      waitForEvent: (name: string, opts: QmpWaitOptions = {}) => this.waitForEvent(name, opts),
    } as GuestQmp;
  }

  get pid(): number | undefined {
    return this.qemu.id + 100_000;
  }

  get state(): GuestState {
    return this.current;
  }

  get exit(): ExitInfo | null {
    return this.exitInfo;
  }

  /** Tells the engine its QEMU has gone, once the host can say so (a linked agent, a live engine). */
  reconcile(): void {
    const exit = this.qemu.exit;
    if (!exit || this.exitInfo || !this.host.delivers) return;
    this.exitInfo = exit;
    const prev = this.current;
    this.current = exit.expected ? 'stopped' : 'failed';
    this.emit('state', this.current, prev);
    void this.client.disconnect();
    this.console.close();
    this.resolveExit(exit);
    this.emit('exit', exit);
  }

  private setState(next: GuestState): void {
    const prev = this.current;
    if (prev === next || this.exitInfo) return;
    this.current = next;
    this.emit('state', next, prev);
  }

  private listen(name: string, listener: QmpEventListener): () => void {
    let set = this.qmpListeners.get(name);
    if (!set) this.qmpListeners.set(name, (set = new Set()));
    set.add(listener);
    return () => set!.delete(listener);
  }

  private waitForEvent(name: string, opts: QmpWaitOptions): Promise<QmpEvent> {
    if (opts.signal?.aborted) return Promise.reject(opts.signal.reason ?? new Error('aborted'));
    return new Promise<QmpEvent>((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? 30_000;
      const timer = timeoutMs > 0 && Number.isFinite(timeoutMs)
        ? setTimeout(() => settle(() => reject(new Error(`QMP event ${name} did not come from guest "${this.name}" on ${this.hostName} within ${timeoutMs} ms`))), timeoutMs)
        : null;
      const onAbort = () => settle(() => reject(opts.signal!.reason ?? new Error('aborted')));
      const onExit = () => settle(() => reject(new Error(`Guest "${this.name}" stopped while waiting for QMP event ${name}`)));
      const off = this.listen(name, (ev) => {
        if (!opts.predicate || opts.predicate(ev)) settle(() => resolve(ev));
      });
      const settle = (fn: () => void) => {
        off();
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        this.off('exit', onExit);
        if (!this.host.isDead) fn();
      };
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
    if (['booting', 'running', 'incoming'].includes(this.current)) this.setState('ready');
  }

  async waitReady(): Promise<void> {
    if (this.current === 'ready') return;
    throw new Error(`Guest "${this.name}" does not run labload and has no ready pattern, so it cannot report that it is ready`);
  }

  /**
   * quit over QMP; a local host kills a QEMU that does not answer (its own child), a remote host
   * can only ask its agent, which fails while the agent is away.
   */
  stop(): Promise<ExitInfo> {
    this.stopping ??= this.host.via(async () => {
      if (this.exitInfo) return this.exitInfo;
      if (this.current !== 'stopping') this.setState('stopping');
      await this.client.execute('quit', undefined, { timeoutMs: 1000 }).catch(() => {});
      if (!this.qemu.exit) {
        await Promise.race([this.qemu.exited, new Promise((r) => setTimeout(r, 200))]);
        if (!this.qemu.exit) this.qemu.die({ signal: 'SIGTERM', stderr: '', expected: true });
      }
      this.reconcile();
      return this.qemu.exited;
    });
    // A failed stop (an away agent) may be tried again later.
    this.stopping.catch(() => (this.stopping = null));
    return this.stopping;
  }

  /** The engine lets go: its socket closes, QEMU runs on. */
  async detach(): Promise<void> {
    this.console.close();
    await this.client.disconnect();
  }
}

/**
 * The real journal on a temp dir, with two faults: the next write fails (failNext), and a dead
 * engine's writes never happen (die: every later write hangs).
 */
export class FaultyJournal extends MigrationJournal {
  private failArmed: string | null = null;
  private dead = false;
  readonly failed: JournalEntry[] = [];
  readonly written: JournalEntry[] = [];

  /** The next write fails with `why` (e.g. a full disk); later writes work again. */
  failNext(why = 'ENOSPC: no space left on device (injected)'): void {
    this.failArmed = why;
  }

  die(): void {
    this.dead = true;
  }

  override async write(entry: JournalEntry): Promise<void> {
    if (this.dead) return never();
    if (this.failArmed) {
      const why = this.failArmed;
      this.failArmed = null;
      this.failed.push(entry);
      throw new Error(`Could not write the migration journal (state ${entry.state}): ${why}`);
    }
    await super.write(entry);
    this.written.push(entry);
  }
}
