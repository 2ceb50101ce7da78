import { EventEmitter } from 'node:events';
import { mkdir, readdir, stat } from 'node:fs/promises';
import { cpus, freemem, totalmem } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { QmpClient, cont, queryStatus } from '../../qmp';
import { LabloadChannel } from '../../guest/labload-channel';
import { findLabGuest, labGuestAppend } from '../../guest/image';
import { buildQemuArgv, type LaunchConfig } from '../../qemu/argv';
import { chooseAccelerator, findQemu } from '../../qemu/binary';
import { AdoptedQemu, QemuProcess, QemuStartError, describeExit, type ExitInfo } from '../../qemu/process';
import { detectQemuCapabilities } from '../../qemu/capabilities';
import { withBootFiles, parseGuestSpec, type GuestSpec, type GuestSpecInput } from '../../qemu/spec';
import { LibraryPathError, resolveBootInLibrary } from './image-library';
import { createDiskOverlay } from './disk-overlay';
import { makeTempDir, removeDir } from '../../util/fs';
import { connectUnix } from '../../util/net';
import { GuestConsole } from '../console';
import type { SwitchPortHandle } from '../../network/switch';
import type { Duplex } from 'node:stream';
import type { LinkProfile } from '../../network/link-profile';
import { LinkRelay } from '../../network/link-relay';
import { writeQemuTlsDir } from '../../tls/certs';
import { addTlsCredsObject } from '../../qemu/tls';
import { stopNamedGuest, type LinkRelayControl, type MigrationTlsCreds } from '../host';
import type { Guest, Host, HostDescription, HostEventMap, HostInfo, StartGuestOptions } from '../host';
import { PortAllocator, type PortRange } from '../ports';
import { readHostCpu } from './host-cpu';
import { kernelAppendOf, readProcessArgv } from './launch-args';
import type { NetworkAttachment } from '../../network/attachment';
import { GuestImageError, detectDiskFormat, fileMustExist, labGuestNeedsPti, TCG_SAFE_APPEND } from './boot-files';
import { LocalGuest } from './local-guest';
import { isQemuOf, readRecord, removeIfEmptyTempDir, writeRecord, type GuestRecord } from './guest-record';

export interface LocalHostOptions {
  name: string;
  /** Where QMP, console and control sockets live; a fresh temp dir when absent. */
  runtimeDir?: string;
  /** The address migration streams arrive on. */
  address?: string;
  migrationPorts?: PortRange;
  /** The lab switch guests with a MAC plug into; without one, guests get no NIC. */
  network?: NetworkAttachment;
  /** UDP ports QEMU's NICs send from (default: the migration port range, in UDP). */
  nicPorts?: PortRange;
  /** Where to look for the built lab guest (tests use a private cache). */
  cacheRoot?: string;
  /** Where this host keeps the QEMU TLS credentials (default: in its runtime dir). */
  tlsDir?: string;
  /**
   * The image library: the only files a guest that comes from an agent may boot from here (its
   * spec names them relative to a library). Default: the cached lab guest's dir.
   */
  imagesDir?: string;
}

/** Every LocalHost not yet disposed, so a process that is told to stop can stop their guests. */
const liveHosts = new Set<LocalHost>();

/**
 * Stops every guest of every local host of this process. QEMU runs in its own process group
 * (a Ctrl-C must not kill a guest mid-migration), so it outlives us unless we stop it: the CLI
 * calls this when it is told to quit (SIGTERM, SIGHUP, a second Ctrl-C).
 */
export async function disposeAllLocalHosts(): Promise<void> {
  await Promise.all([...liveHosts].map((h) => h.dispose()));
}

/** A host that runs QEMU on this machine. Several can run side by side, each in its own dir. */
export class LocalHost extends EventEmitter implements Host {
  readonly name: string;
  readonly address: string;
  private runtimeDir: string | null;
  private readonly ownsRuntimeDir: boolean;
  private readonly ports: PortAllocator;
  private readonly nicPorts: PortAllocator;
  private readonly running = new Map<string, LocalGuest>();
  /** QEMUs spawned whose start has not finished: dispose must stop these too. */
  private readonly starting = new Map<QemuProcess, string>();
  /** Names of guests whose start is under way. */
  private readonly startingNames = new Set<string>();
  private disposed = false;

  constructor(private readonly opts: LocalHostOptions) {
    super();
    this.name = opts.name;
    this.address = opts.address ?? '127.0.0.1';
    this.runtimeDir = opts.runtimeDir ?? null;
    this.ownsRuntimeDir = !opts.runtimeDir;
    this.ports = new PortAllocator(this.address, opts.migrationPorts ?? { first: 49152, last: 49407 });
    this.nicPorts = new PortAllocator(this.address, opts.nicPorts ?? this.ports.range, 'udp');
    liveHosts.add(this);
  }

  private async dir(): Promise<string> {
    if (this.disposed) throw new Error(`Host ${this.name} has been shut down`);
    if (!this.runtimeDir) this.runtimeDir = await makeTempDir(this.name);
    else await mkdir(this.runtimeDir, { recursive: true });
    return this.runtimeDir;
  }

  describe(): HostDescription {
    return {
      kind: 'local', transport: 'in-process', address: this.address,
      // QEMU runs in its own process group and a new engine can adopt it (adoptGuestFrom), but
      // only from this machine's folders: the host itself ends with the engine.
      outlivesEngine: false,
      imageLibrary: false,
      sharesEngineFiles: true,
      migrationPorts: this.ports.range,
      agent: null,
      connection: 'connected',
      refusedGuests: [],
    };
  }

  /** Nothing to tell: only an agent restricts where its streams go. */
  setLabPeers(): void {}

  leave(): Promise<void> {
    return this.dispose();
  }

  async info(): Promise<HostInfo> {
    const [qemu, accel] = await Promise.all([findQemu(), chooseAccelerator()]);
    const caps = await detectQemuCapabilities(qemu.path);
    return {
      name: this.name,
      kind: 'local',
      address: this.address,
      qemu: { path: qemu.path, version: qemu.version },
      accel,
      memory: { totalMiB: Math.round(totalmem() / 2 ** 20), freeMiB: Math.round(freemem() / 2 ** 20) },
      cpus: cpus().length,
      migrationCapabilities: caps.migrationCapabilities,
      labNetwork: this.opts.network !== undefined,
      cpu: await readHostCpu(),
      qemuCpu: caps.cpu,
    };
  }

  override on<K extends keyof HostEventMap>(event: K, listener: (...args: HostEventMap[K]) => void): this {
    return super.on(event, listener as (...a: unknown[]) => void);
  }

  override off<K extends keyof HostEventMap>(event: K, listener: (...args: HostEventMap[K]) => void): this {
    return super.off(event, listener as (...a: unknown[]) => void);
  }

  guests(): Guest[] {
    return [...this.running.values()];
  }

  guest(name: string): Guest | undefined {
    return this.running.get(name);
  }

  stopGuest(name: string): Promise<ExitInfo> {
    return stopNamedGuest(this, name);
  }

  prepareIncoming(spec: GuestSpec, opts: Omit<StartGuestOptions, 'incoming'> = {}): Promise<Guest> {
    return this.startGuest(spec, { ...opts, incoming: true });
  }

  /** Where guests from agents find their images here (null: no lab guest built and no images dir given). */
  async imageLibrary(): Promise<string | null> {
    if (this.opts.imagesDir) return this.opts.imagesDir;
    return (await findLabGuest(this.opts.cacheRoot ? { cacheRoot: this.opts.cacheRoot } : {}))?.dir ?? null;
  }

  /**
   * A spec an agent reported, made safe to start here: its image paths are relative to the
   * agent's library and must name files inside this host's own library (nothing else on this
   * machine: an agent may lie). Throws an error that names the refused path.
   */
  async resolvePeerSpec(spec: GuestSpec): Promise<GuestSpec> {
    if (spec.boot.kind === 'lab') return spec; // this host boots its own cached lab guest
    const library = await this.imageLibrary();
    const owner = `${this.name}'s image library`;
    try {
      return await resolveBootInLibrary(spec, library, owner, (what, path) =>
        new GuestImageError(`${this.name} has no image library, so it cannot take a guest's ${what} "${path}" from an agent: give the lab file an images: folder and copy the image into it`));
    } catch (err) {
      if (err instanceof GuestImageError) throw err;
      if (err instanceof LibraryPathError) throw new GuestImageError(err.message);
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new GuestImageError(`${owner} ${library} cannot be read (${code}), so the guest's images cannot be found there: create the folder, or fix images: in the lab file`);
    }
  }

  allocateMigrationPort(): Promise<number> {
    return this.ports.allocate();
  }

  releaseMigrationPort(port: number): void {
    this.ports.release(port);
  }

  /** Resolves the boot source to files that exist, and says whether labload runs inside. */
  private async resolveBoot(spec: GuestSpec, needsPti: boolean): Promise<Pick<LaunchConfig, 'kernel' | 'disk'> & { labload: boolean }> {
    const boot = spec.boot;
    switch (boot.kind) {
      case 'lab': {
        const image = await findLabGuest(this.opts.cacheRoot ? { cacheRoot: this.opts.cacheRoot } : {});
        if (!image) throw new GuestImageError('The lab guest is not built yet: run "npx miglab guest build"');
        const append = labGuestAppend(image.append, {
          name: spec.name,
          ...(spec.ip ? { ip: spec.ip } : {}),
          ...(needsPti ? { extra: TCG_SAFE_APPEND } : {}),
        });
        return { kernel: { kernel: image.kernel, initrd: image.initrd, append }, labload: true };
      }
      case 'kernel': {
        await fileMustExist(boot.kernel, 'Kernel image', 'check the path');
        if (boot.initrd) await fileMustExist(boot.initrd, 'Initrd', 'check the path');
        const append = boot.append ?? 'console=ttyS0';
        return {
          kernel: { kernel: boot.kernel, ...(boot.initrd ? { initrd: boot.initrd } : {}), append },
          labload: boot.labload,
        };
      }
      case 'disk': {
        await fileMustExist(boot.path, 'Disk image', 'check the path');
        const format = boot.format ?? (await detectDiskFormat(boot.path));
        return { disk: { path: boot.path, format }, labload: false };
      }
    }
  }

  /**
   * A guest with a MAC gets a NIC on the lab switch: a UDP port here for QEMU to send from, and a
   * switch port that accepts frames from it. A migration destination gets its own new port.
   */
  private async plugNic(spec: GuestSpec): Promise<PluggedNic | null> {
    if (!spec.mac || !this.opts.network) return null;
    const localPort = await this.nicPorts.allocate();
    let port: SwitchPortHandle;
    try {
      port = await this.opts.network.openPort(
        { host: this.name, guest: spec.name },
        { address: this.address, port: localPort },
      );
    } catch (err) {
      this.nicPorts.release(localPort);
      throw err;
    }
    return this.nicFor(spec.mac, localPort, port);
  }

  private nicFor(mac: string, localPort: number, port: SwitchPortHandle): PluggedNic {
    let plugged = true;
    return {
      config: { mac, local: { address: this.address, port: localPort }, remote: { address: port.address, port: port.port } },
      port,
      localPort,
      unplug: () => {
        if (!plugged) return;
        plugged = false;
        port.close();
        this.nicPorts.release(localPort);
      },
    };
  }

  async startGuest(input: GuestSpecInput, opts: StartGuestOptions = {}): Promise<Guest> {
    // QEMU runs in the guest's dir: a relative path would name another file there than the one
    // checked here, so each is made absolute against this process's folder first.
    const parsed = parseGuestSpec(input);
    const spec = { ...parsed, boot: withBootFiles(parsed.boot, (p) => (isAbsolute(p) ? p : resolve(p))) };
    if (this.running.has(spec.name) || this.startingNames.has(spec.name)) {
      throw new Error(`A guest named "${spec.name}" already runs on host ${this.name}: pick another name`);
    }
    // Held from here on: a second start of the same name would remove this one's socket dir.
    this.startingNames.add(spec.name);
    try {
      return await this.launch(spec, opts);
    } finally {
      this.startingNames.delete(spec.name);
    }
  }

  private async launch(spec: GuestSpec, opts: StartGuestOptions): Promise<Guest> {
    const [qemu, accel] = await Promise.all([findQemu(), chooseAccelerator()]);
    const boot = await this.resolveBoot(spec, labGuestNeedsPti(accel.accel, qemu));
    const guestDir = join(await this.dir(), spec.name);
    await removeDir(guestDir); // a stale dir from a crashed run must not hold old sockets
    await mkdir(guestDir, { recursive: true });
    const overlayDisk = Boolean(opts.overlayDisk && boot.disk);
    if (overlayDisk) {
      // In the guest's own dir: it goes with the guest, whatever way its QEMU ends.
      const overlay = join(guestDir, 'disk-overlay.qcow2');
      await createDiskOverlay(boot.disk!.path, boot.disk!.format, overlay).catch(async (err: Error) => {
        await removeDir(guestDir);
        throw err;
      });
      boot.disk = { path: overlay, format: 'qcow2' };
    }
    const sockets = {
      qmp: join(guestDir, 'qmp.sock'),
      console: join(guestDir, 'console.sock'),
      control: join(guestDir, 'control.sock'),
    };
    const incoming = opts.incoming ?? false;
    const nic = await this.plugNic(spec);
    const cfg: LaunchConfig = {
      spec,
      accel: accel.accel,
      sockets,
      ...(boot.kernel ? { kernel: boot.kernel } : {}),
      ...(boot.disk ? { disk: boot.disk } : {}),
      ...(nic ? { nic: nic.config } : {}),
      // -S so we are connected before the first byte of boot output; a destination too, which
      // runs only when the migration job says `cont` after the source completed (libvirt's rule).
      startPaused: true,
      incoming,
    };
    const startedAt = performance.now();
    const argv = buildQemuArgv(cfg);
    const proc = new QemuProcess(qemu.path, argv, { cwd: guestDir });
    this.starting.set(proc, guestDir);
    const qmp = new QmpClient({ name: `${this.name}/${spec.name}` });
    const console = new GuestConsole();
    let labload: LabloadChannel | null = null;
    let control: Duplex | null = null;
    const died = proc.exited.then((exit) => {
      throw new QemuStartError(spec.name, exit, describeExit(exit));
    });
    died.catch(() => {});
    try {
      await Promise.race([qmp.connect(sockets.qmp, { retryUntilMs: 15_000 }), died]);
      await Promise.race([console.attach(sockets.console), died]);
      if (boot.labload) {
        control = await Promise.race([connectUnix(sockets.control), died]);
        labload = new LabloadChannel(control);
      }
      if (!incoming) await cont(qmp);
      if (this.disposed) throw new Error(`Host ${this.name} was shut down while the guest was starting`);
    } catch (err) {
      this.starting.delete(proc);
      labload?.close();
      console.close();
      await qmp.disconnect();
      await proc.stop();
      await removeDir(guestDir);
      nic?.unplug();
      if (err instanceof QemuStartError) throw err;
      const exit = proc.exit;
      throw new QemuStartError(spec.name, exit, exit ? describeExit(exit) : (err as Error).message);
    }
    this.starting.delete(proc);
    await writeRecord(guestDir, {
      version: 1, spec, pid: proc.pid!, qmpSocket: sockets.qmp, labload: boot.labload,
      nic: nic ? { localPort: nic.localPort, switchPort: { id: nic.port.id, address: nic.port.address, port: nic.port.port } } : null,
    });
    return this.track(new LocalGuest({
      spec, hostName: this.name, proc, qmp, console, labload, control, dir: guestDir, startedAt,
      kernelAppend: kernelAppendOf(argv),
      initialState: incoming ? 'incoming' : 'booting',
      switchPort: nic ? { id: nic.port.id, address: nic.port.address, port: nic.port.port } : null,
      adopted: false,
      overlayDisk,
      onGone: () => {
        nic?.unplug(); // the old switch port is retired the moment its QEMU is gone
        this.running.delete(spec.name);
      },
    }));
  }

  private track(guest: LocalGuest): LocalGuest {
    this.running.set(guest.name, guest);
    guest.on('state', (state, prev) => this.emit('guest-state', guest, state, prev));
    guest.on('exit', (exit) => this.emit('guest-exited', guest, exit));
    this.emit('guest-started', guest);
    return guest;
  }

  /**
   * Finds the guests a previous host object left running in this host's runtime dir (an agent
   * that restarted) and reattaches them: QMP, console, labload, NIC. A record whose QEMU is gone
   * is removed. Returns what it did, by guest name.
   */
  async adoptGuests(): Promise<{ adopted: string[]; removed: string[] }> {
    const dir = await this.dir();
    const adopted: string[] = [];
    const removed: string[] = [];
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      if (!entry.isDirectory() || this.running.has(entry.name)) continue;
      const guestDir = join(dir, entry.name);
      const record = await readRecord(guestDir);
      if (!record || !(await isQemuOf(record))) {
        await removeDir(guestDir);
        removed.push(entry.name);
        continue;
      }
      try {
        this.track(await this.reattach(record, guestDir));
        adopted.push(record.spec.name);
      } catch {
        // QEMU is there but will not talk to us: stop it rather than leave a guest nobody controls.
        try {
          process.kill(record.pid, 'SIGKILL');
        } catch {
          /* gone meanwhile */
        }
        await removeDir(guestDir);
        removed.push(entry.name);
      }
    }
    return { adopted, removed };
  }

  /**
   * Adopts one guest whose folder lies outside this host's runtime dir: one that an engine which
   * died left running in its own temp dir (the migration journal recorded the folder). Its pid
   * and QMP socket come from the guest record there. Returns null, touching no process, when the
   * folder holds no record of a guest by that name or its pid no longer runs that QEMU; a folder
   * whose QEMU is gone is removed. Throws when the QEMU is there but does not answer.
   */
  async adoptGuestFrom(guestDir: string, name: string): Promise<Guest | null> {
    if (this.disposed) throw new Error(`Host ${this.name} has been shut down`);
    if (!isAbsolute(guestDir)) throw new Error(`Cannot adopt a guest from "${guestDir}": give the absolute path of its folder`);
    const have = this.running.get(name);
    if (have) {
      if (have.runtimeDir === resolve(guestDir)) return have;
      throw new Error(`Host ${this.name} already runs a guest named "${name}" (from ${have.runtimeDir}), so it cannot adopt the one in ${guestDir}`);
    }
    const record = await readRecord(guestDir);
    if (!record || record.spec.name !== name) return null;
    if (!(await isQemuOf(record))) {
      await removeDir(guestDir);
      await removeIfEmptyTempDir(dirname(guestDir));
      return null;
    }
    this.startingNames.add(name);
    try {
      const guest = await this.reattach(record, guestDir, () => removeIfEmptyTempDir(dirname(guestDir)));
      return this.track(guest);
    } finally {
      this.startingNames.delete(name);
    }
  }

  private async reattach(record: GuestRecord, guestDir: string, afterGone?: () => Promise<void>): Promise<LocalGuest> {
    const { spec } = record;
    const proc = new AdoptedQemu(record.pid);
    const qmp = new QmpClient({ name: `${this.name}/${spec.name}` });
    const console = new GuestConsole();
    let control: Duplex | null = null;
    let labload: LabloadChannel | null = null;
    try {
      await qmp.connect(record.qmpSocket, { retryUntilMs: 3000 });
      await console.attach(join(guestDir, 'console.sock'));
      if (record.labload) {
        control = await connectUnix(join(guestDir, 'control.sock'));
        labload = new LabloadChannel(control);
      }
    } catch (err) {
      proc.forget();
      labload?.close();
      console.close();
      await qmp.disconnect();
      throw err;
    }
    const status = await queryStatus(qmp).catch(() => null);
    let nic: PluggedNic | null = null;
    if (record.nic && spec.mac) {
      this.nicPorts.reserve(record.nic.localPort);
      const sp = record.nic.switchPort;
      const handle = this.opts.network?.portHandle?.(sp) ?? { ...sp, close: () => {} };
      nic = this.nicFor(spec.mac, record.nic.localPort, handle);
    }
    return new LocalGuest({
      spec, hostName: this.name, proc, qmp, console, labload, control, dir: guestDir, startedAt: performance.now(),
      kernelAppend: kernelAppendOf(await readProcessArgv(record.pid)),
      initialState: status?.status === 'inmigrate' ? 'incoming' : 'booting',
      switchPort: record.nic?.switchPort ?? null,
      adopted: true,
      onGone: () => {
        nic?.unplug();
        this.running.delete(spec.name);
        // The dead engine's temp dir that held it goes with its last guest.
        return afterGone?.();
      },
    });
  }

  async openLinkRelay(targetPort: number, profile?: Partial<LinkProfile>): Promise<LinkRelayControl> {
    const port = await this.ports.allocate();
    let relay: LinkRelay;
    try {
      relay = await LinkRelay.open({ listen: { address: this.address, port }, target: { address: this.address, port: targetPort }, ...(profile ? { profile } : {}) });
    } catch (err) {
      this.ports.release(port);
      throw err;
    }
    return {
      port: relay.port,
      setProfile: async (p) => (relay.setProfile(p), relay.stats()),
      cut: async () => (relay.cut(), relay.stats()),
      restore: async () => (relay.restore(), relay.stats()),
      stats: async () => relay.stats(),
      close: async () => {
        await relay.close();
        this.ports.release(port);
      },
    };
  }

  private async tlsDir(): Promise<string> {
    return this.opts.tlsDir ?? join(await this.dir(), '.qemu-tls');
  }

  async installMigrationTls(creds: MigrationTlsCreds): Promise<void> {
    await writeQemuTlsDir(await this.tlsDir(), creds);
  }

  async addMigrationTls(guest: Guest, endpoint: 'server' | 'client'): Promise<string> {
    const g = this.running.get(guest.name);
    if (!g || g !== guest) throw new Error(`Guest "${guest.name}" does not run on host ${this.name}`);
    const dir = await this.tlsDir();
    try {
      await stat(join(dir, 'ca-cert.pem'));
    } catch {
      throw new Error(`Host ${this.name} has no TLS credentials for migration: the lab installs them when a TLS migration is asked for (Lab.prepareMigrationTls)`);
    }
    return addTlsCredsObject(g.qmpClient, dir, endpoint);
  }

  /**
   * Lets go of every guest without stopping it: channels closed, QEMU left running with its
   * record, for the next host object (after a restart) to adopt. Ends this host object.
   */
  async detach(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await Promise.all([...this.running.values()].map((g) => g.detach()));
    this.running.clear();
    liveHosts.delete(this);
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await Promise.all([
      ...[...this.running.values()].map((g) => g.stop()),
      ...[...this.starting].map(async ([p, dir]) => {
        await p.stop();
        await removeDir(dir);
      }),
    ]);
    liveHosts.delete(this);
    if (this.ownsRuntimeDir && this.runtimeDir) await removeDir(this.runtimeDir);
    // The TLS key we wrote into a runtime dir the caller owns is ours to remove.
    else if (!this.opts.tlsDir && this.runtimeDir) await removeDir(join(this.runtimeDir, '.qemu-tls'));
  }
}

interface PluggedNic {
  config: NonNullable<LaunchConfig['nic']>;
  port: SwitchPortHandle;
  localPort: number;
  unplug: () => void;
}

