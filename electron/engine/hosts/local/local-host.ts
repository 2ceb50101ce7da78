import { EventEmitter } from 'node:events';
import { mkdir, readdir, readFile, rename, rmdir, stat, writeFile } from 'node:fs/promises';
import { cpus, freemem, totalmem } from 'node:os';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { QmpClient, cont, queryStatus, quit } from '../qmp';
import { LabloadChannel } from '../guest/labload-channel';
import { findLabGuest, labGuestAppend } from '../guest/image';
import { buildQemuArgv, type LaunchConfig } from '../qemu/argv';
import { chooseAccelerator, findQemu, tracksTcgWritesExactly, type Accelerator } from '../qemu/binary';
import { AdoptedQemu, QemuProcess, QemuStartError, describeExit, qemuPidAlive, type ExitInfo, type QemuHandle } from '../qemu/process';
import { probeQemu } from '../qemu/probe';
import { withBootFiles, parseGuestSpec, type GuestSpec, type GuestSpecInput } from '../qemu/spec';
import { LibraryPathError, resolveBootInLibrary } from './image-library';
import { createDiskOverlay } from './disk-overlay';
import { TEMP_PREFIX, makeTempDir, removeDir } from '../util/fs';
import { connectUnix } from '../util/net';
import { withTimeout } from '../util/time';
import { GuestConsole } from './console';
import type { SwitchPortHandle } from '../network/switch';
import type { Duplex } from 'node:stream';
import { LinkRelay, type LinkProfile } from '../network/link-relay';
import { writeQemuTlsDir } from '../agent/certs';
import { addTlsCredsObject } from '../qemu/tls';
import { stopNamedGuest, type LinkRelayControl, type MigrationTlsCreds } from './host';
import type { Guest, GuestEventMap, GuestQmp, GuestState, Host, HostEventMap, HostInfo, NetworkAttachment, StartGuestOptions } from './host';
import { PortAllocator, type PortRange } from './ports';
import { readHostCpu } from './host-cpu';
import { kernelAppendOf, readProcessArgv } from './launch-args';

const runFile = promisify(execFile);

/**
 * Only for QEMUs older than 10.0 (QEMU 10 tracks TCG's writes exactly; see qemu/private-qemu.ts).
 * Under TCG, QEMU 7.2 misses guest writes made through long-lived softmmu TLB entries while it
 * migrates, and a guest kernel that writes memory during a migration is then corrupted on the
 * destination (measured: 0 of 7 migrations at 100 MB/s survived without it; with it, 29 of 29
 * on an idle machine, about 9 in 10 on a loaded one). With page-table isolation on, every kernel entry and exit reloads CR3, which makes
 * TCG flush its TLB, so stale entries rarely live long enough to matter. KVM tracks dirty pages
 * in hardware and does not need it.
 */
export const TCG_SAFE_APPEND = 'pti=on';

/**
 * Whether the lab guest boots with TCG_SAFE_APPEND: under TCG with a QEMU older than 10.0.
 * MIGLAB_GUEST_PTI=on|off overrides it, to measure the difference (npm run bench:tcg).
 */
export function labGuestNeedsPti(accel: Accelerator, qemu: { major: number }, env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.MIGLAB_GUEST_PTI === 'on') return true;
  if (env.MIGLAB_GUEST_PTI === 'off') return false;
  return accel === 'tcg' && !tracksTcgWritesExactly(qemu);
}

export class GuestImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestImageError';
  }
}

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

async function fileMustExist(path: string, what: string, hint: string): Promise<void> {
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new GuestImageError(`${what} ${path} is not a file: ${hint}`);
  } catch (err) {
    if (err instanceof GuestImageError) throw err;
    throw new GuestImageError(`${what} ${path} does not exist: ${hint}`);
  }
}

/**
 * qemu-img tells qcow2 from raw, so QEMU never has to guess (guessing raw is unsafe). -U: a
 * migration destination reads the image the running source QEMU holds locked.
 */
export async function detectDiskFormat(path: string): Promise<'qcow2' | 'raw'> {
  try {
    const { stdout } = await runFile('qemu-img', ['info', '-U', '--output=json', path], { timeout: 10_000 });
    const fmt = (JSON.parse(stdout) as { format?: string }).format;
    if (fmt === 'qcow2' || fmt === 'raw') return fmt;
    throw new GuestImageError(`Disk image ${path} is in ${fmt} format: convert it with "qemu-img convert -O qcow2"`);
  } catch (err) {
    if (err instanceof GuestImageError) throw err;
    throw new GuestImageError(
      `Could not read disk image ${path} with qemu-img (${(err as Error).message.split('\n')[0]}): ` +
        'install qemu-utils, or give the format explicitly',
    );
  }
}


/**
 * What a host writes next to each guest's sockets, so that a host object made after a restart
 * (an agent restarted under its running guests) can find and reattach them.
 */
interface GuestRecord {
  version: 1;
  spec: GuestSpec;
  pid: number;
  qmpSocket: string;
  labload: boolean;
  nic: { localPort: number; switchPort: { id: number; address: string; port: number } } | null;
}

const RECORD_FILE = 'guest.json';

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
  readonly kind = 'local' as const;
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

  async info(): Promise<HostInfo> {
    const [qemu, accel] = await Promise.all([findQemu(), chooseAccelerator()]);
    const probe = await probeQemu(qemu.path);
    return {
      name: this.name,
      kind: this.kind,
      address: this.address,
      qemu: { path: qemu.path, version: qemu.version },
      accel,
      memory: { totalMiB: Math.round(totalmem() / 2 ** 20), freeMiB: Math.round(freemem() / 2 ** 20) },
      cpus: cpus().length,
      migrationCapabilities: probe.migrationCapabilities,
      labNetwork: this.opts.network !== undefined,
      cpu: await readHostCpu(),
      qemuCpu: probe.cpu,
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

  /** The ports migration streams arrive on here (the lab tells its agents, see Lab). */
  get migrationPortRange(): PortRange {
    return this.ports.range;
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

function readyPatternOf(spec: GuestSpec): string | undefined {
  return spec.boot.kind === 'lab' ? undefined : spec.boot.readyPattern;
}

interface PluggedNic {
  config: NonNullable<LaunchConfig['nic']>;
  port: SwitchPortHandle;
  localPort: number;
  unplug: () => void;
}

async function writeRecord(dir: string, record: GuestRecord): Promise<void> {
  const tmp = join(dir, `${RECORD_FILE}.tmp`);
  await writeFile(tmp, JSON.stringify(record));
  await rename(tmp, join(dir, RECORD_FILE));
}

/**
 * Removes an engine's temp runtime dir (one makeTempDir made, by its name) once nothing is left in
 * it: the folder a dead engine's last adopted guest lived in. Anything else is left alone.
 */
async function removeIfEmptyTempDir(dir: string): Promise<void> {
  if (!basename(dir).startsWith(TEMP_PREFIX)) return;
  await rmdir(dir).catch(() => {}); // not empty, or gone already: not ours to remove
}

async function readRecord(dir: string): Promise<GuestRecord | null> {
  try {
    const r = JSON.parse(await readFile(join(dir, RECORD_FILE), 'utf8')) as GuestRecord;
    return r.version === 1 && typeof r.pid === 'number' && r.spec?.name ? r : null;
  } catch {
    return null;
  }
}

/** The pid still runs the QEMU of that record (and not a process that reused the pid). */
async function isQemuOf(record: GuestRecord): Promise<boolean> {
  if (!qemuPidAlive(record.pid)) return false;
  try {
    return (await readFile(`/proc/${record.pid}/cmdline`, 'utf8')).includes(record.qmpSocket);
  } catch {
    return false;
  }
}

interface LocalGuestParts {
  spec: GuestSpec;
  hostName: string;
  proc: QemuHandle & { forget?: () => void };
  qmp: QmpClient;
  console: GuestConsole;
  labload: LabloadChannel | null;
  /** labload's socket, for an agent that relays its bytes to the engine. */
  control: Duplex | null;
  dir: string;
  startedAt: number;
  /** The -append QEMU was started with (Guest.kernelAppend). */
  kernelAppend: string | null;
  initialState: GuestState;
  switchPort: Guest['switchPort'];
  adopted: boolean;
  /** Its disk is a library image it boots through an overlay in its dir (StartGuestOptions.overlayDisk). */
  overlayDisk?: boolean;
  /** Runs once QEMU is gone and the guest's folder removed; awaited, so its clean-up ends first. */
  onGone: () => void | Promise<void>;
}

export class LocalGuest extends EventEmitter implements Guest {
  readonly id = randomUUID();
  readonly name: string;
  readonly hostName: string;
  readonly spec: GuestSpec;
  readonly console: GuestConsole;
  readonly labload: LabloadChannel | null;
  readonly startedAt: number;
  readonly kernelAppend: string | null;
  readonly switchPort: Guest['switchPort'];
  readonly adopted: boolean;
  /** Boots its library disk through an overlay: a next destination must do the same. */
  readonly overlayDisk: boolean;
  private readonly client: QmpClient;
  private readonly proc: LocalGuestParts['proc'];
  private current: GuestState;
  private stopPromise: Promise<ExitInfo> | null = null;

  constructor(private readonly parts: LocalGuestParts) {
    super();
    this.spec = parts.spec;
    this.name = parts.spec.name;
    this.hostName = parts.hostName;
    this.console = parts.console;
    this.labload = parts.labload;
    this.startedAt = parts.startedAt;
    this.kernelAppend = parts.kernelAppend;
    this.switchPort = parts.switchPort;
    this.adopted = parts.adopted;
    this.overlayDisk = parts.overlayDisk ?? false;
    this.client = parts.qmp;
    this.proc = parts.proc;
    this.current = parts.initialState;
    if (!this.labload && this.current === 'booting') this.current = 'running';
    this.labload?.waitReady(24 * 3600_000).then(
      () => this.markReady(),
      () => {},
    );
    const pattern = readyPatternOf(this.spec);
    if (!this.labload && pattern && parts.initialState !== 'incoming') {
      this.console.waitFor(pattern, 24 * 3600_000, true).then(
        () => this.markReady(),
        () => {},
      );
    }
    // A destination runs once its migration completes: QEMU says so with RESUME.
    if (parts.initialState === 'incoming') {
      const off = this.client.onEvent('RESUME', () => {
        off();
        if (this.current === 'incoming') this.setState('running');
      });
    }
    void this.proc.exited.then((exit) => this.onExit(exit));
  }

  /**
   * Declares the guest booted: labload said so, its console showed its ready pattern, or (for a
   * migration destination) the copy it was migrated from was ready.
   */
  markReady(): void {
    if (['booting', 'running', 'incoming'].includes(this.current)) this.setState('ready');
  }

  get state(): GuestState {
    return this.current;
  }

  /** The guest's own folder: QMP, console and control sockets, and its guest record. */
  get runtimeDir(): string {
    return this.parts.dir;
  }

  /** The full QMP client (an agent uses commands a peer may not send, like object-add). */
  get qmpClient(): QmpClient {
    return this.client;
  }

  /** labload's raw bytes as they arrive, for an agent to relay; returns the unsubscribe. */
  tapControl(listener: (data: Buffer) => void): () => void {
    const c = this.parts.control;
    if (!c) return () => {};
    c.on('data', listener);
    return () => c.off('data', listener);
  }

  /** Bytes to labload from elsewhere (the engine, through an agent). */
  writeControl(data: Buffer): void {
    const c = this.parts.control;
    if (!c || c.destroyed) throw new Error(`Guest "${this.name}" has no labload channel open`);
    c.write(data);
  }

  /** Closes our channels and leaves QEMU running (see LocalHost.detach). */
  async detach(): Promise<void> {
    this.detached = true;
    this.parts.proc.forget?.();
    this.labload?.close();
    this.console.close();
    await this.client.disconnect();
  }

  private detached = false;

  get qmp(): GuestQmp {
    return this.client;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get exit(): ExitInfo | null {
    return this.proc.exit;
  }

  get exited(): Promise<ExitInfo> {
    return this.proc.exited;
  }

  override on<K extends keyof GuestEventMap>(event: K, listener: (...args: GuestEventMap[K]) => void): this {
    return super.on(event, listener as (...a: unknown[]) => void);
  }

  override off<K extends keyof GuestEventMap>(event: K, listener: (...args: GuestEventMap[K]) => void): this {
    return super.off(event, listener as (...a: unknown[]) => void);
  }

  private setState(next: GuestState): void {
    const prev = this.current;
    if (prev === next) return;
    this.current = next;
    this.emit('state', next, prev);
  }

  async waitReady(timeoutMs = 30_000): Promise<void> {
    if (this.current === 'ready') return;
    if (!this.labload && !readyPatternOf(this.spec)) {
      throw new Error(
        `Guest "${this.name}" does not run labload and has no ready pattern, so it cannot report that it is ready`,
      );
    }
    const gone = new Promise<never>((_, reject) => {
      void this.proc.exited.then((exit) =>
        reject(new Error(`Guest "${this.name}" stopped before it was ready: ${describeExit(exit)}`)),
      );
    });
    gone.catch(() => {});
    let onState: ((state: GuestState) => void) | null = null;
    const ready = new Promise<void>((resolve) => {
      onState = (state: GuestState) => {
        if (state === 'ready') resolve();
      };
      this.on('state', onState);
    });
    try {
      await withTimeout(Promise.race([ready, gone]), timeoutMs, `Guest "${this.name}" reporting ready`);
    } finally {
      if (onState) this.off('state', onState);
    }
  }

  stop(): Promise<ExitInfo> {
    this.stopPromise ??= (async () => {
      if (this.proc.running) this.setState('stopping');
      const exit = await this.proc.stop({ quit: () => quit(this.client) });
      await this.proc.exited;
      await this.release();
      return exit;
    })();
    return this.stopPromise;
  }

  private released: Promise<void> | null = null;

  /** Closes every channel and removes the guest's runtime files; runs once. */
  private release(): Promise<void> {
    this.released ??= (async () => {
      this.labload?.close();
      this.console.close();
      await this.client.disconnect();
      await removeDir(this.parts.dir);
      await this.parts.onGone();
    })();
    return this.released;
  }

  private async onExit(exit: ExitInfo): Promise<void> {
    if (this.detached) return;
    await this.release();
    this.setState(exit.expected ? 'stopped' : 'failed');
    this.emit('exit', exit);
  }
}
