// A simulated world of QEMU processes for the migration fault matrix. Each FakeQemu keeps a
// runstate and a migration status as QEMU 10 names them (migration/migration.c, runstate rules,
// qmp_cont in monitor/qmp-cmds.c) and answers the engine over a real UNIX socket (FakeQmpServer),
// so a dropped socket is a real disconnect. Time passes on short real timers; a test makes it
// deterministic by holding the migration at a named point and injecting a fault exactly there.
import type { ExitInfo } from '../../electron/engine/qemu/process';
import type { MigrationStatus } from '../../electron/engine/qmp/types';
import { FakeQmpServer, type FakeQmpConnection, type ReceivedCommand } from './fake-qmp-server';

export type FakeRunState = 'prelaunch' | 'inmigrate' | 'running' | 'paused' | 'finish-migrate' | 'postmigrate' | 'guest-panicked' | 'shutdown';

/** QEMU 10.0's migration capabilities, as query-migrate-capabilities lists them. */
export const QEMU10_CAPABILITIES = [
  'xbzrle', 'rdma-pin-all', 'auto-converge', 'zero-blocks', 'events', 'postcopy-ram', 'x-colo', 'release-ram',
  'return-path', 'pause-before-switchover', 'multifd', 'dirty-bitmaps', 'postcopy-blocktime', 'late-block-activate',
  'x-ignore-shared', 'validate-uuid', 'background-snapshot', 'zero-copy-send', 'postcopy-preempt', 'switchover-ack',
  'dirty-limit', 'mapped-ram',
] as const;

/** One runstate change; 'gone' is the process exiting. */
export interface RunstateChange {
  seq: number;
  atMs: number;
  qemu: FakeQemu;
  from: FakeRunState | 'gone' | null;
  to: FakeRunState | 'gone';
}

/**
 * Named points of a migration a test can hook (synchronously) or hold (the migration waits until
 * released). 'source-stop' fires before the source stops; the others once the thing has happened.
 */
export type WorldPoint = 'migrate-received' | 'pass' | 'source-stop' | 'pre-switchover' | 'device' | 'destination-loaded' | 'source-completed' | 'cont-received' | 'qemu-started';

export interface PointContext {
  point: WorldPoint;
  qemu: FakeQemu;
  pass?: number;
}

export interface PointFilter {
  guest?: string;
  host?: string;
  pass?: number;
}

export class Hold {
  /** Resolves when the migration reaches the point and stops there. */
  readonly reached: Promise<PointContext>;
  readonly released: Promise<void>;
  isReached = false;
  private resolveReached!: (ctx: PointContext) => void;
  private resolveReleased!: () => void;

  constructor(
    readonly point: WorldPoint,
    readonly filter: PointFilter,
  ) {
    this.reached = new Promise((r) => (this.resolveReached = r));
    this.released = new Promise((r) => (this.resolveReleased = r));
  }

  matches(ctx: PointContext): boolean {
    return ctx.point === this.point && matchesFilter(ctx, this.filter);
  }

  reach(ctx: PointContext): void {
    this.isReached = true;
    this.resolveReached(ctx);
  }

  release(): void {
    this.resolveReleased();
  }
}

function matchesFilter(ctx: PointContext, f: PointFilter): boolean {
  return (f.guest === undefined || f.guest === ctx.qemu.guest) && (f.host === undefined || f.host === ctx.qemu.host) && (f.pass === undefined || f.pass === ctx.pass);
}

export interface StartQemuOptions {
  host: string;
  guest: string;
  memoryMiB?: number;
  /** Started with -incoming defer (a migration destination). */
  incoming?: boolean;
  /** Started with -S: a destination then stays paused after it has loaded, until `cont`. */
  startPaused?: boolean;
  version?: { major: number; minor: number; micro: number };
}

export interface WorldOptions {
  /** One step of the simulated migration, ms. */
  stepMs?: number;
  /** Pre-copy passes before the stop-and-copy. */
  passes?: number;
}

export class FakeQemuWorld {
  readonly stepMs: number;
  readonly passes: number;
  readonly log: RunstateChange[] = [];
  readonly qemus: FakeQemu[] = [];
  private seq = 0;
  private readonly t0 = performance.now();
  private readonly changeListeners = new Set<(c: RunstateChange) => void>();
  private readonly hooks = new Set<{ point: WorldPoint; filter: PointFilter; fn: (ctx: PointContext) => void }>();
  private readonly holds = new Set<Hold>();
  private readonly listeners = new Map<string, FakeQemu>();
  private readonly nextPort = new Map<string, number>();
  private readonly closing: Promise<void>[] = [];
  private closed = false;

  constructor(opts: WorldOptions = {}) {
    this.stepMs = opts.stepMs ?? 4;
    this.passes = opts.passes ?? 3;
  }

  now(): number {
    return performance.now() - this.t0;
  }

  /** Called synchronously at every runstate change, in order. */
  onChange(fn: (c: RunstateChange) => void): () => void {
    this.changeListeners.add(fn);
    return () => this.changeListeners.delete(fn);
  }

  record(qemu: FakeQemu, from: RunstateChange['from'], to: RunstateChange['to']): void {
    const change: RunstateChange = { seq: ++this.seq, atMs: this.now(), qemu, from, to };
    this.log.push(change);
    for (const fn of [...this.changeListeners]) fn(change);
  }

  /** A synchronous hook at a point (every time it is reached). */
  on(point: WorldPoint, fn: (ctx: PointContext) => void, filter: PointFilter = {}): () => void {
    const hook = { point, filter, fn };
    this.hooks.add(hook);
    return () => this.hooks.delete(hook);
  }

  /** The next time the migration reaches `point`, it waits there until the hold is released. */
  hold(point: WorldPoint, filter: PointFilter = {}): Hold {
    const h = new Hold(point, filter);
    this.holds.add(h);
    return h;
  }

  /** Lets every held migration go on (a test that ends, or settles the world). */
  releaseAll(): void {
    for (const h of this.holds) h.release();
  }

  /** Hooks run at once; a matching hold makes the caller wait for its release. */
  async reach(ctx: PointContext): Promise<void> {
    this.fire(ctx);
    const hold = [...this.holds].find((h) => !h.isReached && h.matches(ctx));
    if (!hold) return;
    hold.reach(ctx);
    if (this.closed) return;
    await hold.released;
    this.holds.delete(hold);
  }

  fire(ctx: PointContext): void {
    for (const hook of [...this.hooks]) if (hook.point === ctx.point && matchesFilter(ctx, hook.filter)) hook.fn(ctx);
  }

  async startQemu(opts: StartQemuOptions): Promise<FakeQemu> {
    if (this.closed) throw new Error('The fake QEMU world has been closed');
    const qemu = new FakeQemu(this, opts);
    await qemu.start();
    this.qemus.push(qemu);
    this.record(qemu, null, qemu.runstate);
    this.fire({ point: 'qemu-started', qemu });
    return qemu;
  }

  /** Live QEMU processes, of one host or all. */
  alive(host?: string): FakeQemu[] {
    return this.qemus.filter((q) => !q.exit && (host === undefined || q.host === host));
  }

  allocatePort(address: string): number {
    const port = this.nextPort.get(address) ?? 49152;
    this.nextPort.set(address, port + 1);
    return port;
  }

  listen(endpoint: string, qemu: FakeQemu): void {
    if (this.listeners.has(endpoint)) throw new Error(`Failed to bind socket: Address already in use (${endpoint})`);
    this.listeners.set(endpoint, qemu);
  }

  unlisten(qemu: FakeQemu): void {
    for (const [k, v] of this.listeners) if (v === qemu) this.listeners.delete(k);
  }

  /** The destination listening at a `tcp:host:port` endpoint, taken off the listeners (QEMU accepts one). */
  accept(endpoint: string): FakeQemu | null {
    const q = this.listeners.get(endpoint) ?? null;
    if (q) this.listeners.delete(endpoint);
    return q;
  }

  /** No migration in flight, no destination loading, no process on its way out. */
  quiescent(): boolean {
    // A destination still loading moves too: without return-path it loads after its source completed.
    return this.qemus.every((q) => q.exit || (!q.migrating && !q.quitting && q.incoming.status !== 'active'));
  }

  /** Waits (on the world's own steps) until nothing moves any more; false when it still moves at the deadline. */
  async settle(timeoutMs = 3000): Promise<boolean> {
    const end = performance.now() + timeoutMs;
    while (!this.quiescent()) {
      if (performance.now() > end) return false;
      await sleep(this.stepMs);
    }
    return true;
  }

  trackClosing(p: Promise<void>): void {
    this.closing.push(p);
  }

  /** Every process exits, every socket closes, every temp dir goes. */
  async close(): Promise<void> {
    this.closed = true;
    this.releaseAll();
    for (const q of this.qemus) if (!q.exit) q.die({ signal: 'SIGKILL', stderr: 'the test world closed', expected: true });
    await Promise.all(this.closing);
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const IN_FLIGHT: MigrationStatus[] = ['setup', 'active', 'pre-switchover', 'device', 'cancelling'];

interface Outgoing {
  status: MigrationStatus;
  dst: FakeQemu | null;
  startedAt: number;
  setupMs: number | null;
  stoppedAt: number | null;
  totalMs: number | null;
  downtimeMs: number | null;
  transferred: number;
  pass: number;
  errorDesc: string | null;
  /** Whether the guest ran when the migration stopped it: QEMU restarts it after a failure only then. */
  vmWasRunning: boolean;
  wakeContinue: (() => void) | null;
}

interface Incoming {
  status: 'none' | 'setup' | 'active' | 'completed' | 'failed';
  source: FakeQemu | null;
  loaded: boolean;
}

export interface DieOptions {
  code?: number | null;
  signal?: NodeJS.Signals | null;
  stderr?: string;
  expected?: boolean;
}

/** One simulated QEMU process. */
export class FakeQemu {
  private static ids = 0;
  readonly id = ++FakeQemu.ids;
  readonly host: string;
  readonly guest: string;
  readonly memoryBytes: number;
  readonly startedIncoming: boolean;
  readonly version: { major: number; minor: number; micro: number };
  server!: FakeQmpServer;
  runstate: FakeRunState;
  /** QEMU's autostart: false under -S; `cont` while inmigrate sets it. */
  autostart: boolean;
  exit: ExitInfo | null = null;
  readonly exited: Promise<ExitInfo>;
  quitting = false;
  readonly caps = new Map<string, boolean>(QEMU10_CAPABILITIES.map((c) => [c, false]));
  readonly params: Record<string, number> = { 'max-bandwidth': 134217728, 'downtime-limit': 300, 'announce-rounds': 5, 'announce-initial': 50, 'announce-max': 550, 'announce-step': 100 };
  out: Outgoing | null = null;
  incoming: Incoming = { status: 'none', source: null, loaded: false };
  /** Every command received, over every connection, in order. */
  readonly commands: ReceivedCommand[] = [];
  private resolveExit!: (e: ExitInfo) => void;

  constructor(
    readonly world: FakeQemuWorld,
    opts: StartQemuOptions,
  ) {
    this.host = opts.host;
    this.guest = opts.guest;
    this.memoryBytes = (opts.memoryMiB ?? 256) * 1024 * 1024;
    this.startedIncoming = opts.incoming ?? false;
    this.version = opts.version ?? { major: 10, minor: 0, micro: 2 };
    this.autostart = !(opts.startPaused ?? false);
    this.runstate = this.startedIncoming ? 'inmigrate' : opts.startPaused ? 'prelaunch' : 'running';
    this.exited = new Promise((r) => (this.resolveExit = r));
  }

  async start(): Promise<void> {
    this.server = await FakeQmpServer.create({
      greeting: { QMP: { version: { qemu: this.version, package: 'fake-qemu-world' }, capabilities: ['oob'] } },
      fallback: (cmd, conn) => this.onCommand(cmd, conn),
    });
  }

  get name(): string {
    return `${this.guest}@${this.host}#${this.id}`;
  }

  get running(): boolean {
    return !this.exit && this.runstate === 'running';
  }

  get migrating(): boolean {
    return !!this.out && IN_FLIGHT.includes(this.out.status);
  }

  get migrationStatus(): MigrationStatus | 'none' {
    return this.out?.status ?? 'none';
  }

  get qmpPath(): string {
    return this.server.path;
  }

  // ---- faults ----

  /** The process dies (crash, kill): its socket closes, its peer's stream breaks. */
  die(opts: DieOptions = {}): void {
    if (this.exit) return;
    const signal = opts.signal === undefined ? (opts.code === undefined ? 'SIGKILL' : null) : opts.signal;
    this.exit = { code: signal ? null : (opts.code ?? 1), signal, stderrTail: opts.stderr ?? '', expected: opts.expected ?? false };
    const from = this.runstate;
    this.world.unlisten(this);
    this.world.record(this, from, 'gone');
    this.server.dropConnections();
    this.world.trackClosing(this.server.close());
    this.resolveExit(this.exit);
    this.peerLost();
  }

  /** The QMP socket drops; the process lives on and accepts a new connection. */
  dropQmp(): void {
    this.server.dropConnections();
  }

  /** The guest kernel panics (pvpanic, panic action "pause"). */
  panic(): void {
    if (this.exit) return;
    this.event('GUEST_PANICKED', { action: 'pause' });
    this.setRunstate('guest-panicked');
  }

  // ---- state ----

  setRunstate(next: FakeRunState): void {
    if (this.exit || next === this.runstate) return;
    const prev = this.runstate;
    this.runstate = next;
    this.world.record(this, prev, next);
    if (prev === 'running') this.event('STOP');
    if (next === 'running') this.event('RESUME');
  }

  event(name: string, data?: Record<string, unknown>): void {
    if (!this.exit) this.server.broadcast(name, data);
  }

  private setMigrationStatus(m: Outgoing, status: MigrationStatus): void {
    m.status = status;
    this.event('MIGRATION', { status });
  }

  private setIncomingStatus(status: Incoming['status']): void {
    this.incoming.status = status;
    this.event('MIGRATION', { status });
  }

  /** The other end of a migration stream has gone. */
  private peerLost(): void {
    const m = this.out;
    if (m?.dst && IN_FLIGHT.includes(m.status)) m.dst.streamBroke();
    const src = this.incoming.source;
    if (src?.out && !this.incoming.loaded && IN_FLIGHT.includes(src.out.status)) src.outgoingFailed('Unable to write to socket: Connection reset by peer');
  }

  /** The incoming stream ended before the whole state arrived: QEMU exits (migration.c: exit(EXIT_FAILURE)). */
  streamBroke(): void {
    if (this.exit || this.incoming.loaded || this.incoming.status !== 'active') return;
    this.incoming.status = 'failed';
    this.die({ code: 1, signal: null, stderr: 'qemu-system-x86_64: load of migration failed: Input/output error' });
  }

  private outgoingFailed(desc: string): void {
    const m = this.out;
    if (!m || !IN_FLIGHT.includes(m.status)) return;
    m.errorDesc = desc;
    this.setMigrationStatus(m, 'failed');
    this.restartAfterMigration(m);
    m.dst?.streamBroke();
  }

  private finishCancel(m: Outgoing): void {
    this.setMigrationStatus(m, 'cancelled');
    this.restartAfterMigration(m);
    m.dst?.streamBroke();
  }

  /** migration_iteration_finish: after a failed or cancelled migration QEMU restarts a guest that ran. */
  private restartAfterMigration(m: Outgoing): void {
    if (this.runstate !== 'finish-migrate') return;
    this.setRunstate(m.vmWasRunning ? 'running' : 'paused');
  }

  /** The destination has the whole state: with autostart it runs, else it pauses (process_incoming_migration_bh). */
  private loaded(): void {
    if (this.exit) return;
    this.incoming.loaded = true;
    this.setIncomingStatus('completed');
    this.setRunstate(this.autostart ? 'running' : 'paused');
  }

  private complete(m: Outgoing): void {
    m.totalMs = Math.round(this.world.now() - m.startedAt);
    m.downtimeMs = m.stoppedAt === null ? 0 : Math.max(1, Math.round(this.world.now() - m.stoppedAt));
    this.setMigrationStatus(m, 'completed');
    this.setRunstate('postmigrate');
  }

  // ---- the migration, on the source ----

  private async tick(): Promise<void> {
    await sleep(this.world.stepMs);
  }

  /** Whether the migration goes on; else it has ended (cancelled, failed, source gone). */
  private goesOn(m: Outgoing): boolean {
    if (this.exit || this.out !== m) return false;
    if (m.status === 'cancelling') {
      this.finishCancel(m);
      return false;
    }
    if (!IN_FLIGHT.includes(m.status)) return false;
    if (m.dst?.exit && !m.dst.incoming.loaded) {
      this.outgoingFailed('Unable to write to socket: Connection reset by peer');
      return false;
    }
    return true;
  }

  private async runOutgoing(m: Outgoing, endpoint: string): Promise<void> {
    await this.world.reach({ point: 'migrate-received', qemu: this });
    if (this.exit || this.out !== m) return;
    this.setMigrationStatus(m, 'setup');
    await this.tick();
    if (!this.goesOn(m)) return;
    const dst = this.world.accept(endpoint);
    if (!dst || dst.exit) {
      m.errorDesc = `Failed to connect to '${endpoint.replace(/^tcp:/, '')}': Connection refused`;
      this.setMigrationStatus(m, 'failed');
      return;
    }
    m.dst = dst;
    dst.incoming.source = this;
    dst.setIncomingStatus('active');
    m.setupMs = Math.round(this.world.now() - m.startedAt);
    this.setMigrationStatus(m, 'active');
    for (let pass = 1; pass <= this.world.passes; pass++) {
      await this.tick();
      if (!this.goesOn(m)) return;
      await this.world.reach({ point: 'pass', qemu: this, pass });
      if (!this.goesOn(m)) return;
      m.pass = pass;
      m.transferred += Math.round(this.memoryBytes / 2 ** pass);
      if (this.caps.get('events')) this.event('MIGRATION_PASS', { pass });
    }
    await this.tick();
    if (!this.goesOn(m)) return;
    await this.world.reach({ point: 'source-stop', qemu: this });
    if (!this.goesOn(m)) return;
    m.vmWasRunning = this.runstate === 'running';
    m.stoppedAt = this.world.now();
    this.setRunstate('finish-migrate');
    if (this.caps.get('pause-before-switchover')) {
      this.setMigrationStatus(m, 'pre-switchover');
      await this.world.reach({ point: 'pre-switchover', qemu: this });
      // QEMU waits on its pause semaphore: migrate-continue or migrate_cancel posts it.
      if (m.status === 'pre-switchover') await new Promise<void>((r) => (m.wakeContinue = r));
      m.wakeContinue = null;
      if (!this.goesOn(m)) return;
    }
    this.setMigrationStatus(m, 'device');
    await this.world.reach({ point: 'device', qemu: this });
    await this.tick();
    if (!this.goesOn(m)) return;
    const returnPath = !!this.caps.get('return-path');
    if (returnPath) {
      // The source completes only once the destination acknowledges the loaded state.
      dst.loaded();
      await this.world.reach({ point: 'destination-loaded', qemu: dst });
      await this.tick();
      if (!this.goesOn(m)) return;
      if (dst.exit) {
        this.outgoingFailed('Unable to read from socket: the return path closed');
        return;
      }
      this.complete(m);
      await this.world.reach({ point: 'source-completed', qemu: this });
      return;
    }
    // Without a return path the last byte leaves the source, which completes; the destination
    // loads what is already in its socket, whatever becomes of the source.
    this.complete(m);
    await this.world.reach({ point: 'source-completed', qemu: this });
    await this.tick();
    if (dst.exit) return;
    dst.loaded();
    await this.world.reach({ point: 'destination-loaded', qemu: dst });
  }

  // ---- QMP ----

  private onCommand(cmd: ReceivedCommand, conn: FakeQmpConnection): void {
    this.commands.push(cmd);
    if (this.exit) return;
    const args = cmd.arguments ?? {};
    const fail = (desc: string, cls = 'GenericError') => conn.replyError(cmd, cls, desc);
    switch (cmd.execute) {
      case 'query-status':
        return conn.reply(cmd, { status: this.runstate, running: this.runstate === 'running' });
      case 'query-migrate':
        return conn.reply(cmd, this.migrateInfo());
      case 'query-migrate-capabilities':
        return conn.reply(cmd, [...this.caps].map(([capability, state]) => ({ capability, state })));
      case 'query-migrate-parameters':
        return conn.reply(cmd, { ...this.params });
      case 'query-version':
        return conn.reply(cmd, { qemu: this.version, package: 'fake-qemu-world' });
      case 'migrate-set-capabilities': {
        if (this.migrating) return fail("There's a migration process in progress");
        const list = Array.isArray(args.capabilities) ? (args.capabilities as Array<{ capability: string; state: boolean }>) : [];
        const unknown = list.find((c) => !this.caps.has(c.capability));
        if (unknown) return fail(`Parameter 'capability' does not accept value '${unknown.capability}'`);
        for (const c of list) this.caps.set(c.capability, !!c.state);
        return conn.reply(cmd, {});
      }
      case 'migrate-set-parameters':
        for (const [k, v] of Object.entries(args)) if (typeof v === 'number') this.params[k] = v;
        return conn.reply(cmd, {});
      case 'migrate-incoming': {
        if (!this.startedIncoming) return fail("'-incoming' was not specified on the command line");
        if (this.incoming.status !== 'none') return fail('The incoming migration has already been started');
        const uri = String(args.uri ?? '');
        if (!/^tcp:[^:]+:\d+$/.test(uri)) return fail(`unknown migration protocol: ${uri}`);
        try {
          this.world.listen(uri, this);
        } catch (err) {
          return fail((err as Error).message);
        }
        this.setIncomingStatus('setup');
        return conn.reply(cmd, {});
      }
      case 'migrate': {
        if (this.runstate === 'inmigrate') return fail('Guest is waiting for an incoming migration');
        if (this.migrating) return fail("There's a migration process in progress");
        const uri = String(args.uri ?? '');
        if (!/^tcp:[^:]+:\d+$/.test(uri)) return fail(`unknown migration protocol: ${uri}`);
        const m: Outgoing = {
          status: 'none', dst: null, startedAt: this.world.now(), setupMs: null, stoppedAt: null, totalMs: null, downtimeMs: null,
          transferred: 0, pass: 0, errorDesc: null, vmWasRunning: this.runstate === 'running', wakeContinue: null,
        };
        this.out = m;
        conn.reply(cmd, {});
        void this.runOutgoing(m, uri);
        return;
      }
      case 'migrate_cancel': {
        const m = this.out;
        if (m && ['setup', 'active', 'pre-switchover', 'device'].includes(m.status)) {
          this.setMigrationStatus(m, 'cancelling');
          m.wakeContinue?.();
        }
        return conn.reply(cmd, {});
      }
      case 'migrate-continue': {
        const m = this.out;
        const state = String(args.state ?? '');
        const now = m?.status ?? 'none';
        if (now !== state) return fail(`Migration not in expected state: ${now}`);
        conn.reply(cmd, {});
        m!.wakeContinue?.();
        return;
      }
      case 'cont': {
        const err = this.cont();
        if (err) return fail(err);
        conn.reply(cmd, {});
        this.world.fire({ point: 'cont-received', qemu: this });
        return;
      }
      case 'stop':
        if (this.runstate === 'inmigrate') this.autostart = false;
        else if (this.runstate === 'running') this.setRunstate('paused');
        return conn.reply(cmd, {});
      case 'quit':
        conn.reply(cmd, {});
        this.quit();
        return;
      default:
        return fail(`The command ${cmd.execute} has not been found`, 'CommandNotFound');
    }
  }

  /** qmp_cont: an error message, or null when done. */
  private cont(): string | null {
    if (this.runstate === 'shutdown' || this.runstate === 'guest-panicked') return 'Resetting the Virtual Machine is required';
    if (this.runstate === 'finish-migrate') return 'Migration is not finalized yet';
    if (this.runstate === 'inmigrate') {
      this.autostart = true;
      return null;
    }
    this.setRunstate('running');
    return null;
  }

  /** `quit`: SHUTDOWN, then the process exits a moment later (code 0). */
  quit(): void {
    if (this.quitting || this.exit) return;
    this.quitting = true;
    this.event('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
    setTimeout(() => this.die({ code: 0, signal: null, expected: true }), this.world.stepMs);
  }

  private migrateInfo(): Record<string, unknown> {
    if (this.startedIncoming && this.incoming.status !== 'none') return { status: this.incoming.status };
    const m = this.out;
    if (!m || m.status === 'none') return {};
    const info: Record<string, unknown> = { status: m.status };
    if (m.status === 'setup') return info;
    const remaining = m.status === 'completed' ? 0 : Math.max(0, this.memoryBytes - m.transferred);
    info.ram = {
      transferred: m.transferred, remaining, total: this.memoryBytes, duplicate: 0, normal: Math.round(m.transferred / 4096),
      'normal-bytes': m.transferred, 'dirty-pages-rate': 1000, mbps: 800, 'dirty-sync-count': m.pass, 'postcopy-requests': 0,
      'page-size': 4096, 'multifd-bytes': 0, 'pages-per-second': 25000, 'precopy-bytes': m.transferred, 'downtime-bytes': 0, 'postcopy-bytes': 0,
      'dirty-sync-missed-zero-copy': 0,
    };
    if (m.setupMs !== null) info['setup-time'] = m.setupMs;
    if (m.status === 'completed') {
      info['total-time'] = m.totalMs;
      info.downtime = m.downtimeMs;
    } else {
      info['total-time'] = Math.round(this.world.now() - m.startedAt);
      info['expected-downtime'] = 30;
    }
    if (m.errorDesc) info['error-desc'] = m.errorDesc;
    return info;
  }
}

/**
 * Watches every runstate change of one guest's copies: an instant with two copies `running` is
 * a split-brain instant, recorded as it happens (not sampled afterwards).
 */
export class SplitBrainDetector {
  readonly instants: Array<{ seq: number; atMs: number; running: string[] }> = [];
  private readonly off: () => void;

  constructor(
    private readonly world: FakeQemuWorld,
    readonly guest: string,
  ) {
    this.off = world.onChange((c) => {
      if (c.qemu.guest !== guest) return;
      const running = this.running();
      if (running.length > 1) this.instants.push({ seq: c.seq, atMs: c.atMs, running: running.map((q) => q.name) });
    });
  }

  /** The copies QEMU runs right now. */
  running(): FakeQemu[] {
    return this.world.qemus.filter((q) => q.guest === this.guest && q.running);
  }

  runningHosts(): string[] {
    return this.running().map((q) => q.host);
  }

  stop(): void {
    this.off();
  }
}
