// The engine behind the API contract: one lab, its guests, migrations and consoles, as commands
// in and events out. The Electron IPC bridge and the browser-mode WebSocket server are thin
// adapters over this class.
import { EventEmitter } from 'node:events';
import { basename } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { Guest, Host } from '../hosts/host';
import { AgentConnectError } from '../hosts/remote/connect';
import { AgentRpcError } from '../hosts/remote/rpc';
import type { Lab } from '../lab/lab';
import { labFileText, type LabFile } from '../lab/lab-file';
import { MigrationJournal } from '../migration/journal';
import { recoverInterruptedMigrations } from '../migration/recovery';
import { migrateGuest, type MigrationJob, type MigrationRequest } from '../migration/orchestrator';
import { runPreflight } from '../migration/preflight';
import { DEFAULT_MIGRATION_OPTIONS, type MigrationResult } from '../migration/types';
import { DowntimePolicy } from '../migration/downtime-policy';
import { TailBuffer } from '../util/tail-buffer';
import { ApiError, parseCommand } from './commands';
import { PreparedDestinations } from './prepared-destinations';
import {
  API_VERSION, READ_ONLY_COMMANDS, type ApiCommand, type ApiEvent, type ApiResults, type ApiRole, type GuestView, type HostView, type LabSnapshot, type MigrationView, type StrategyView,
} from './contract';
import { defaultStateDir } from '../util/paths';
import { STRATEGIES, STRATEGY_NAMES } from '../migration/strategies';

/**
 * The lab file a spectator may see: a custom guest's kernel, initrd and disk keep only their file
 * names (the teacher's folders are not the class's business) and its kernel command line is left
 * out. The teacher's own export keeps everything.
 */
function withoutHostPaths(file: LabFile): LabFile {
  const name = (path: string) => basename(path) || 'image';
  return {
    ...file,
    guests: file.guests.map((g) => {
      const b = g.boot;
      if (b.kind === 'kernel') {
        const { append: _commandLine, ...rest } = b;
        return { ...g, boot: { ...rest, kernel: name(b.kernel), ...(b.initrd ? { initrd: name(b.initrd) } : {}) } };
      }
      if (b.kind === 'disk') return { ...g, boot: { ...b, path: name(b.path) } };
      return g;
    }),
  };
}

/** A guest's console as the user sees it: one scrollback that follows the guest across hosts. */
interface ConsoleTrail {
  scrollback: TailBuffer;
  decoder: StringDecoder;
}

interface RunningMigration {
  view: MigrationView;
  job: MigrationJob;
  /** The job's run(): its last word, after every event. */
  done: Promise<MigrationResult>;
}

const SNAPSHOT_DEBOUNCE_MS = 30;

export interface LabServiceOptions {
  /** Where the lab CA lives (certificates for TLS migrations); MigLab's state dir by default. */
  stateDir?: string;
  /** How long a destination prepared by a pre-flight waits for its migration (default 5 minutes). */
  preparedIdleMs?: number;
}

export class LabService extends EventEmitter<{ event: [ApiEvent] }> {
  private readonly consoles = new Map<string, ConsoleTrail>();
  private readonly workloads = new Map<string, { rateMBps: number; workingSetMiB: number }>();
  private readonly migrations = new Map<string, RunningMigration>();
  /** Guests whose migrate command is under way but whose job is not in `migrations` yet. */
  private readonly starting = new Set<string>();
  private readonly hostOffs = new Map<string, () => void>();
  /** The hosts that have certificates from the lab CA, and the work that gave them. */
  private tlsReady: { hosts: string; done: Promise<{ caFingerprint: string }> } | null = null;
  private snapshotTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Destinations started by the Migrate dialog's pre-flight, waiting for its migration. */
  private readonly prepared: PreparedDestinations;

  constructor(
    private readonly lab: Lab,
    private readonly journal: MigrationJournal | null = null,
    private readonly opts: LabServiceOptions = {},
  ) {
    super();
    this.prepared = new PreparedDestinations(opts.preparedIdleMs);
    for (const host of lab.hosts()) this.watchHost(host);
  }

  private watchHost(host: Host): void {
    const onStarted = (g: Guest) => {
      this.followConsole(g);
      this.labChanged();
    };
    const onChanged = () => this.labChanged();
    host.on('guest-started', onStarted);
    host.on('guest-state', onChanged);
    host.on('guest-exited', onChanged);
    // A LAN host's link to its agent drops and comes back: the lab view shows it reconnecting.
    host.on('connection', onChanged);
    // An agent described a guest wrongly: the lab view says which and why, not just leave it out.
    host.on('guest-refused', onChanged);
    for (const g of host.guests()) this.followConsole(g);
    this.hostOffs.set(host.name, () => {
      host.off('guest-started', onStarted);
      host.off('guest-state', onChanged);
      host.off('guest-exited', onChanged);
      host.off('connection', onChanged);
      host.off('guest-refused', onChanged);
    });
  }

  /** Every copy of a guest (source, then destination) feeds the same trail, keyed by name. */
  private followConsole(g: Guest): void {
    let trail = this.consoles.get(g.name);
    if (!trail) {
      trail = { scrollback: new TailBuffer(256 * 1024), decoder: new StringDecoder('utf8') };
      this.consoles.set(g.name, trail);
    }
    const t = trail;
    const onData = (d: Buffer) => {
      t.scrollback.push(d);
      const data = t.decoder.write(d);
      if (data) this.send({ type: 'console', guest: g.name, host: g.hostName, data });
    };
    g.console.on('data', onData);
    g.console.once('close', () => g.console.off('data', onData));
  }

  private send(ev: ApiEvent): void {
    if (!this.closed) this.emit('event', ev);
  }

  /** Guests come and go in bursts (a migration starts one and stops another): one snapshot per burst. */
  private labChanged(): void {
    if (this.snapshotTimer || this.closed) return;
    this.snapshotTimer = setTimeout(() => {
      this.snapshotTimer = null;
      this.send({ type: 'lab', snapshot: this.snapshot() });
    }, SNAPSHOT_DEBOUNCE_MS);
  }

  private guestView(g: Guest): GuestView {
    return {
      name: g.name,
      host: g.hostName,
      state: g.state,
      memoryMiB: g.spec.memoryMiB,
      vcpus: g.spec.vcpus,
      boot: g.spec.boot.kind,
      ip: g.spec.ip ?? null,
      mac: g.spec.mac ?? null,
      switchPort: g.switchPort?.id ?? null,
      labload: g.labload !== null,
      workload: this.workloads.get(g.name) ?? null,
    };
  }

  private hostView(h: Host): HostView {
    const about = h.describe();
    const view: HostView = { name: h.name, kind: about.kind, address: h.address, guests: h.guests().map((g) => this.guestView(g)) };
    if (about.agent) {
      view.agentUrl = about.agent.url;
      view.connection = about.connection;
      if (about.refusedGuests.length) view.refusedGuests = about.refusedGuests;
    }
    return view;
  }

  snapshot(): LabSnapshot {
    const net = this.lab.network;
    return {
      apiVersion: API_VERSION,
      hosts: this.lab.hosts().map((h) => this.hostView(h)),
      migrations: [...this.migrations.values()].map((m) => structuredClone(m.view)),
      network: net
        ? { subnet: net.subnetText, probe: { ip: net.probeAddress.ip, mac: net.probeAddress.mac }, ports: net.switch.portInfo() }
        : null,
    };
  }

  /** The copy of the guest that runs now (a migration destination waiting for its state does not). */
  private findGuest(name: string): Guest {
    for (const h of this.lab.hosts()) {
      const g = h.guest(name);
      if (g && g.state !== 'incoming' && !g.exit) return g;
    }
    const all = this.lab.hosts().flatMap((h) => h.guests().map((g) => g.name));
    throw new ApiError('not-found', `No guest named "${name}" runs in this lab${all.length ? `: it runs ${[...new Set(all)].join(', ')}` : ''}`);
  }

  private host(name: string): Host {
    try {
      return this.lab.host(name);
    } catch (err) {
      throw new ApiError('not-found', (err as Error).message);
    }
  }

  private migration(id: string): RunningMigration {
    const m = this.migrations.get(id);
    if (!m) throw new ApiError('not-found', `There is no migration ${id}`);
    return m;
  }

  /**
   * Runs one command (validated here, whoever sent it); rejects with an ApiError. `role` is who
   * asks: the desktop app is the teacher; browser mode says which token the client holds.
   */
  async execute(input: unknown, opts: { role?: ApiRole } = {}): Promise<ApiResults[ApiCommand['type']]> {
    const cmd = parseCommand(input);
    const role = opts.role ?? 'teacher';
    // Browser mode refuses these before they get here; the service says no as well, whoever forwards.
    if (role === 'spectator' && !READ_ONLY_COMMANDS.includes(cmd.type)) {
      throw new ApiError('forbidden', `A spectator may only watch: "${cmd.type}" is for the teacher`);
    }
    try {
      return await this.run(cmd, role);
    } catch (err) {
      if (err instanceof ApiError) throw err;
      throw new ApiError('failed', (err as Error).message);
    }
  }

  private async run(cmd: ApiCommand, role: ApiRole): Promise<ApiResults[ApiCommand['type']]> {
    switch (cmd.type) {
      case 'snapshot':
        return this.snapshot();
      case 'startGuest': {
        this.host(cmd.host);
        const g = await this.lab.startGuest(cmd.host, {
          name: cmd.guest.name,
          ...(cmd.guest.memoryMiB ? { memoryMiB: cmd.guest.memoryMiB } : {}),
          ...(cmd.guest.boot ? { boot: cmd.guest.boot } : {}),
        });
        return this.guestView(g);
      }
      case 'preflight':
        return this.preflight(cmd.guest, cmd.to, cmd.capabilities ?? {}, cmd.measureDirtyRate);
      case 'releasePreparedDestination':
        return { guest: cmd.guest, released: await this.prepared.release(cmd.guest) };
      case 'stopGuest': {
        await this.host(cmd.host).stopGuest(cmd.guest).catch((err: Error) => {
          throw new ApiError('not-found', err.message);
        });
        this.workloads.delete(cmd.guest);
        return { guest: cmd.guest, host: cmd.host };
      }
      case 'migrate':
        return { id: await this.startMigration(cmd.guest, cmd.to, cmd.options ?? {}, cmd.maxDurationMs) };
      case 'cancelMigration':
        return { cancelled: this.migration(cmd.id).job.cancel(cmd.reason ?? 'Cancelled from the lab') };
      case 'continueMigration':
        this.migration(cmd.id).job.continueSwitchover();
        return { id: cmd.id };
      case 'rollbackMigration':
        this.migration(cmd.id).job.rollback();
        return { id: cmd.id };
      case 'resumeSource':
        return await this.resumeSource(cmd.guest);
      case 'linkControl': {
        const { job } = this.migration(cmd.id);
        return await job.link(cmd.action === 'set' ? { profile: cmd.profile ?? {} } : cmd.action);
      }
      case 'setMigrationParameters': {
        const { job } = this.migration(cmd.id);
        if (cmd.bandwidthMBps !== undefined) await job.setBandwidth(cmd.bandwidthMBps);
        if (cmd.downtimeLimitMs !== undefined) await job.setDowntimeLimit(cmd.downtimeLimitMs);
        return { id: cmd.id };
      }
      case 'setWorkload':
        return this.setWorkload(cmd.guest, cmd.rateMBps, cmd.workingSetMiB);
      case 'consoleInput': {
        this.findGuest(cmd.guest).console.write(cmd.data);
        return { bytes: Buffer.byteLength(cmd.data) };
      }
      case 'consoleHistory': {
        const trail = this.consoles.get(cmd.guest);
        if (!trail) throw new ApiError('not-found', `No console for a guest named "${cmd.guest}"`);
        return { guest: cmd.guest, text: trail.scrollback.text() };
      }
      case 'addHost': {
        let host: Host;
        try {
          host = cmd.agent ? await this.lab.addRemoteHost(cmd.name, cmd.agent) : this.lab.addLocalHost(cmd.name);
        } catch (err) {
          // The agent said no or could not be reached: its message says what to fix. Anything
          // else is about the request (the name taken, the lab full).
          const agentProblem = err instanceof AgentConnectError || err instanceof AgentRpcError;
          throw new ApiError(agentProblem ? 'failed' : 'invalid', (err as Error).message);
        }
        this.watchHost(host);
        this.labChanged();
        return this.hostView(host);
      }
      case 'removeHost': {
        this.host(cmd.name);
        try {
          await this.lab.removeHost(cmd.name);
        } catch (err) {
          throw new ApiError('invalid', (err as Error).message);
        }
        this.hostOffs.get(cmd.name)?.();
        this.hostOffs.delete(cmd.name);
        this.tlsReady = null; // a host of the same name may come back on another machine
        this.labChanged();
        return { name: cmd.name };
      }
      case 'exportLab':
        return { yaml: labFileText(role === 'teacher' ? this.labFile() : withoutHostPaths(this.labFile())) };
    }
  }

  /**
   * The lab as it is now, as a lab file: hosts, network, the guests that run and their workloads.
   * LAN hosts keep their agent's address and fingerprint but not the token: spectators may export
   * the lab, and a token is a secret (whoever opens the file adds it again).
   */
  labFile(): LabFile {
    const guests = this.lab.hosts().flatMap((h) => h.guests().filter((g) => g.state !== 'incoming' && !g.exit));
    const net = this.lab.network;
    // Agents on other machines reach the switch at its own address; 127.0.0.1 is the default.
    const switchAddress = net && net.switch.address !== '127.0.0.1' ? { address: net.switch.address } : {};
    return {
      hosts: this.lab.hosts().map((h) => {
        const { agent } = h.describe();
        return agent ? { name: h.name, agent: { url: agent.url, fingerprint: agent.fingerprint } } : { name: h.name };
      }),
      network: net ? { subnet: net.subnetText, ...switchAddress } : null,
      ...(this.lab.migration.keepSourceMs !== undefined || this.lab.migration.downtimePolicy != null
        ? { migration: {
          ...(this.lab.migration.keepSourceMs !== undefined ? { keepSourceMs: this.lab.migration.keepSourceMs } : {}),
          ...(this.lab.migration.downtimePolicy != null ? { downtimePolicy: this.lab.migration.downtimePolicy } : {}),
        } }
        : {}),
      guests: guests.map((g) => {
        const w = this.workloads.get(g.name);
        return { name: g.name, host: g.hostName, memoryMiB: g.spec.memoryMiB, boot: g.spec.boot, start: true, ...(w ? { workload: w } : {}) };
      }),
    };
  }

  /** Starts a lab file's guests (those marked start) and sets their workloads once they are ready. */
  async startGuests(guests: LabFile['guests'], onProblem: (message: string) => void = () => {}): Promise<void> {
    await Promise.all(
      guests.filter((g) => g.start).map(async (g) => {
        try {
          const guest = await this.lab.startGuest(g.host, { name: g.name, memoryMiB: g.memoryMiB, boot: g.boot });
          if (g.workload && g.workload.rateMBps > 0) {
            await guest.waitReady(120_000);
            await this.setWorkload(g.name, g.workload.rateMBps, g.workload.workingSetMiB);
          }
        } catch (err) {
          onProblem(`Guest ${g.name} on ${g.host} did not start: ${(err as Error).message}`);
        }
      }),
    );
  }

  private async setWorkload(name: string, rateMBps: number, workingSetMiB: number): Promise<ApiResults['setWorkload']> {
    const g = this.findGuest(name);
    if (!g.labload) throw new ApiError('invalid', `${name} does not run labload (it is not the lab guest), so MigLab cannot set its workload`);
    const now = this.workloads.get(name);
    if (rateMBps === 0) {
      if (now) await g.labload.stopLoad();
      this.workloads.delete(name);
    } else if (now && now.workingSetMiB === workingSetMiB) {
      await g.labload.setRate(rateMBps); // turning the dial mid-migration keeps the working set
      this.workloads.set(name, { rateMBps, workingSetMiB });
    } else {
      if (now) await g.labload.stopLoad();
      await g.labload.startLoad({ workingSetMiB, rateMBps }, { timeoutMs: 60_000 });
      this.workloads.set(name, { rateMBps, workingSetMiB });
    }
    this.labChanged();
    return { guest: name, rateMBps, workingSetMiB };
  }

  /**
   * Certificates from the lab CA on every host, for QEMU TLS. Issued once for a set of hosts;
   * a host added (or removed) since means issuing again, which is cheap.
   */
  private prepareTls(): Promise<{ caFingerprint: string }> {
    const hosts = this.lab.hosts().map((h) => `${h.name}@${h.address}`).sort().join(',');
    if (this.tlsReady?.hosts !== hosts) {
      const done = this.lab.prepareMigrationTls(this.opts.stateDir ?? defaultStateDir());
      const ready = { hosts, done };
      this.tlsReady = ready;
      done.catch(() => {
        if (this.tlsReady === ready) this.tlsReady = null; // the next TLS migration tries again
      });
    }
    return this.tlsReady!.done;
  }

  /** The running migration of this guest, if any (see also `starting`). */
  private busy(name: string): RunningMigration | undefined {
    return [...this.migrations.values()].find((m) => m.view.guest === name && m.view.result === null);
  }

  /**
   * The dialog's look ahead: every check, and meanwhile the destination QEMU starts (paused,
   * -incoming defer) for the migration that may follow. A pre-flight that fails releases it: no
   * migration can take it. Nothing else is reserved (the port checked is handed back).
   */
  private async preflight(
    name: string, toName: string, capabilities: Record<string, boolean>,
    measure?: Extract<ApiCommand, { type: 'preflight' }>['measureDirtyRate'],
  ): Promise<ApiResults['preflight']> {
    const guest = this.findGuest(name);
    const from = this.host(guest.hostName);
    const to = this.host(toName);
    const ours = this.prepared.has(name)?.to === to.name;
    // Not where the guest runs, not over another guest of that name, not during its migration.
    const preparable = from !== to && !this.busy(name) && !this.starting.has(name) && (ours || !to.guest(name));
    if (preparable) void this.prepared.prepare(guest, from, to);
    else await this.prepared.release(name); // one per guest: the dialog looks elsewhere now
    // The prepared copy (started or starting) is the guest's own, not a name clash on `to`.
    const ownDestination = (g: Guest) => preparable && g.name === name && g.state === 'incoming';
    const load = this.workloads.get(name);
    // The limit the migration would start with: the one given, else where its policy starts.
    const startMs = measure && new DowntimePolicy(measure.downtimePolicy ?? null, {
      downtimeLimitMs: measure.downtimeLimitMs ?? DEFAULT_MIGRATION_OPTIONS.downtimeLimitMs, downtimeLimitGiven: measure.downtimeLimitMs !== undefined,
    }).startMs;
    const measureDirtyRate = measure && startMs
      ? {
        ms: measure.ms, bandwidthBps: measure.bandwidthMBps * 1e6, bandwidthFrom: 'the bandwidth asked for', downtimeLimitMs: startMs,
        ...(load ? { workingSetBytes: load.workingSetMiB * 2 ** 20 } : {}),
      }
      : undefined;
    const pre = await runPreflight({ guest, from, to, capabilities, ownDestination, ...(measureDirtyRate ? { measureDirtyRate } : {}) });
    if (pre.port !== null) to.releaseMigrationPort(pre.port); // a look, not a reservation
    if (preparable && pre.checks.some((c) => c.status === 'fail')) await this.prepared.release(name);
    return { checks: pre.checks, capabilities: pre.capabilities, strategies: strategyViews(pre.capabilities, pre.hosts !== null) };
  }

  /** needs-attention, settled by a person: the guest goes back to its paused source. */
  private async resumeSource(name: string): Promise<ApiResults['resumeSource']> {
    if (!this.journal) throw new ApiError('invalid', 'This lab keeps no migration journal, so there is nothing to settle: resume the guest with QMP "cont" on its host');
    if (this.busy(name)) throw new ApiError('invalid', `${name} is migrating now: wait for its result first`);
    const reports = await recoverInterruptedMigrations(this.lab.hosts(), this.journal, { resumeSource: [name], guests: [name] });
    this.labChanged();
    const r = reports.at(-1);
    if (!r) throw new ApiError('not-found', `No migration of ${name} is waiting for a choice: only a result that needs attention, with ${name} paused on its source, can be settled so`);
    if (r.outcome === 'needs-attention') throw new ApiError('failed', `${name} could not be resumed on its source: ${r.attention?.reason ?? r.why.join('; ')}`);
    return { guest: name, outcome: r.outcome, runningOn: r.runningOn, actions: r.actions };
  }

  /**
   * The result of a migration once its job is over (every event sent): for a front end in this
   * process that prints one final answer (the CLI). Others follow the events.
   */
  migrationDone(id: string): Promise<MigrationResult> {
    return this.migration(id).done;
  }

  /** The lab CA's certificates on every host (once per set of hosts), for TLS migrations. */
  async migrationTls(): Promise<{ caFingerprint: string }> {
    return this.prepareTls();
  }

  private async startMigration(
    name: string, toName: string, options: NonNullable<Extract<ApiCommand, { type: 'migrate' }>['options']>, maxDurationMs: number | undefined,
  ): Promise<string> {
    let guest = this.findGuest(name);
    const to = this.host(toName);
    const busy = this.busy(name);
    if (busy) throw new ApiError('invalid', `${name} is already migrating (${busy.view.from} to ${busy.view.to}): wait for it, or cancel it`);
    if (this.starting.has(name)) throw new ApiError('invalid', `A migration of ${name} is starting: wait for it, or cancel it`);
    // Held until the job is in `migrations`: a second migrate meanwhile is refused, not run twice.
    this.starting.add(name);
    try {
      if (options.tls) {
        try {
          await this.prepareTls();
        } catch (err) {
          throw new ApiError('failed', `The lab could not give its hosts certificates for a TLS migration: ${(err as Error).message}`);
        }
        guest = this.findGuest(name); // the lab may have changed while the certificates were made
      }
      return await this.launch(guest, to, options, maxDurationMs);
    } finally {
      this.starting.delete(name);
    }
  }

  private async launch(
    guest: Guest, to: Host, options: NonNullable<Extract<ApiCommand, { type: 'migrate' }>['options']>, maxDurationMs: number | undefined,
  ): Promise<string> {
    const name = guest.name;
    const from = this.host(guest.hostName);
    // The dialog's pre-flight may have started the destination already (one for another host,
    // or for an earlier copy of the guest, is stopped here).
    const preparedDestination = await this.prepared.take(guest, to);
    const load = this.workloads.get(name);
    // The lab file's policy, unless this migration says otherwise.
    const keep = options.keepSourceMs !== undefined ? {} : this.lab.migration.keepSourceMs !== undefined ? { keepSourceMs: this.lab.migration.keepSourceMs } : {};
    const policy = options.downtimePolicy != null || this.lab.migration.downtimePolicy == null ? {} : { downtimePolicy: this.lab.migration.downtimePolicy };
    const req: MigrationRequest = {
      guest, from, to, options: { ...options, ...keep, ...policy }, network: this.lab.network,
      ...('keepSourceMs' in keep ? { keepSourceAskedBy: 'the lab file (migration.keepSourceMs)' } : {}),
      ...(load ? { workingSetBytes: load.workingSetMiB * 2 ** 20 } : {}),
      ...(this.journal ? { journal: this.journal } : {}),
      ...(maxDurationMs !== undefined ? { maxDurationMs } : {}),
      ...(preparedDestination ? { preparedDestination } : {}),
    };
    let started: ReturnType<typeof migrateGuest>;
    try {
      started = migrateGuest(req);
    } catch (err) {
      await preparedDestination?.stop().catch(() => {}); // the job never owned it
      throw err;
    }
    const { job, result } = started;
    const view: MigrationView = {
      id: job.id, guest: name, from: from.name, to: to.name, state: 'preflight', startedAt: new Date().toISOString(), result: null,
      tls: job.options.tls, link: options.link ?? null,
    };
    this.migrations.set(job.id, { view, job, done: result });
    const settled = (r: MigrationResult) => {
      view.result = r;
      view.state = r.status;
      this.labChanged();
    };
    job.on('event', (event) => {
      if (event.type === 'phase') {
        view.state = event.phase;
        this.labChanged(); // the lab view shows who is paused, who is arriving
      }
      // The outcome is final at 'result' (the guest may move again); the wire's figures follow.
      if (event.type === 'result' || event.type === 'result-update') settled(event.result);
      this.send({ type: 'migration', id: job.id, guest: name, event });
    });
    void result.then(settled);
    this.labChanged();
    return job.id;
  }

  /**
   * Stops listening and stops the destinations prepared for migrations that never came (the lab
   * itself is the caller's to dispose; an agent's guests outlive a lab that only leaves).
   */
  async close(): Promise<void> {
    this.closed = true;
    if (this.snapshotTimer) clearTimeout(this.snapshotTimer);
    for (const off of this.hostOffs.values()) off();
    this.hostOffs.clear();
    await this.prepared.dispose();
  }
}

/** The strategies for the Migrate dialog, each saying whether both QEMUs offer what it needs. */
function strategyViews(offeredByBoth: string[], asked: boolean): StrategyView[] {
  return STRATEGY_NAMES.map((name) => {
    const s = STRATEGIES[name];
    const missing = s.capabilities.filter((c) => !offeredByBoth.includes(c));
    const unavailable = !asked && missing.length
      ? 'the hosts could not be asked what their QEMUs offer'
      : missing.length ? `not both QEMUs offer ${missing.join(', ')} (${s.title} needs ${s.offeredBy})` : null;
    return { name, title: s.title, explanation: s.explanation, unavailable };
  });
}
