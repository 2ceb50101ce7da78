import type { AccelChoice } from '../qemu/binary';
import type { QemuCpuOffer } from '../qemu/capabilities';
import type { ExitInfo } from '../qemu/process';
import type { GuestSpec, GuestSpecInput } from '../qemu/spec';
import type { QmpClient } from '../qmp';
import type { LabloadChannel } from '../guest/labload-channel';
import type { GuestConsole } from './console';
import type { LinkProfile, LinkRelayStats } from '../network/link-profile';

export interface HostInfo {
  name: string;
  /** The host's kind, as describe() names it. */
  kind: string;
  /** Where this host's migration ports listen: another host connects here. */
  address: string;
  qemu: { path: string; version: string };
  accel: AccelChoice;
  memory: { totalMiB: number; freeMiB: number };
  cpus: number;
  /** Migration capabilities this host's QEMU offers, as `query-migrate-capabilities` lists them. */
  migrationCapabilities: string[];
  /** Guests with a MAC get a NIC on the lab switch here. */
  labNetwork: boolean;
  /** The host's own CPU: what a "host" CPU model (and "max" under KVM) hands the guest. null: not known. */
  cpu: HostCpu | null;
  /** The guest CPU models this host's QEMU offers. null: not known (a QEMU or agent that does not say). */
  qemuCpu: QemuCpuOffer | null;
}

/** A host's CPU as its kernel describes it (/proc/cpuinfo on Linux). */
export interface HostCpu {
  /** "Intel(R) Xeon(R) ...", the kernel's "model name". */
  model: string;
  /** The CPU's feature flags ("sse4_2", "avx2", ...), sorted. */
  flags: string[];
}

/**
 * starting -> booting -> ready (labload said so) | running (no labload: readiness unknown);
 * incoming: a migration destination waiting for its state; stopping -> stopped; failed: QEMU
 * exited without being asked to.
 */
export type GuestState = 'starting' | 'incoming' | 'booting' | 'ready' | 'running' | 'stopping' | 'stopped' | 'failed';

/** The slice of the QMP client a host exposes per guest; a remote host proxies the same calls. */
export type GuestQmp = Pick<QmpClient, 'execute' | 'onEvent' | 'waitForEvent'>;

export interface GuestEventMap {
  state: [state: GuestState, previous: GuestState];
  exit: [exit: ExitInfo];
}

export interface Guest {
  readonly id: string;
  readonly name: string;
  readonly hostName: string;
  readonly spec: GuestSpec;
  readonly state: GuestState;
  /** The lab guest runs labload (heartbeats, workload, integrity); custom guests usually do not. */
  readonly labload: LabloadChannel | null;
  readonly console: GuestConsole;
  readonly qmp: GuestQmp;
  readonly pid: number | undefined;
  /** performance.now() when QEMU was spawned: boot-to-ready is measured from here. */
  readonly startedAt: number;
  /** The exit, once QEMU has gone. */
  readonly exit: ExitInfo | null;
  /**
   * Resolves the moment QEMU exits, before the 'exit' event (which waits until the guest's
   * channels are closed and its files removed): what a migration watching a peer needs.
   */
  readonly exited: Promise<ExitInfo>;
  /**
   * The kernel command line this guest's QEMU was started with (its -append), as the host that
   * launched it recorded it; null when it booted without -kernel (a disk) or its host does not say.
   */
  readonly kernelAppend: string | null;
  /** The lab switch port this guest's NIC is plugged into; null without a NIC. Retired when QEMU exits. */
  readonly switchPort: { id: number; address: string; port: number } | null;
  /** It boots its library disk through an overlay of its own (StartGuestOptions.overlayDisk): a next destination must too. */
  readonly overlayDisk?: boolean;
  /** Its own folder on a host that ends with the engine (QMP socket, guest.json): where a new engine adopts it from. */
  readonly runtimeDir?: string;
  on<K extends keyof GuestEventMap>(event: K, listener: (...args: GuestEventMap[K]) => void): this;
  off<K extends keyof GuestEventMap>(event: K, listener: (...args: GuestEventMap[K]) => void): this;
  /**
   * Resolves once the guest is ready (labload said so, or its console showed its ready pattern);
   * rejects for a guest that has no way to say so, on timeout, or when QEMU exits.
   */
  waitReady(timeoutMs?: number): Promise<void>;
  /** Declares the guest booted, e.g. a migration destination whose source was ready. */
  markReady(): void;
  /** Stops QEMU (quit, then SIGTERM, then SIGKILL) and removes its runtime files. */
  stop(): Promise<ExitInfo>;
}

export interface StartGuestOptions {
  /** Start as a migration destination (`-incoming defer`) with the spec's device model. */
  incoming?: boolean;
  /**
   * Boot a disk image through a qcow2 overlay of the guest's own, the image opened read-only: for
   * a library image that must stay as it is (a guest that came from an agent). The guest's writes
   * stay in the overlay and go when it does.
   */
  overlayDisk?: boolean;
}

/** What a host tells every front end about its guests. */
export interface HostEventMap {
  'guest-started': [guest: Guest];
  'guest-state': [guest: Guest, state: GuestState, previous: GuestState];
  'guest-exited': [guest: Guest, exit: ExitInfo];
  /** A remote host's link to its agent: lost (reconnecting), back (connected), or closed. */
  connection: [state: 'connected' | 'reconnecting' | 'closed', reason: string];
  /** A remote host's agent described a guest the engine does not accept: it is left out of the lab. */
  'guest-refused': [guest: string | null, problem: string];
}

/** A link-emulation relay in a migration's path, on the destination host. */
export interface LinkRelayControl {
  /** Where the source connects instead of the destination QEMU's own port. */
  readonly port: number;
  setProfile(profile: Partial<LinkProfile>): Promise<LinkRelayStats>;
  /** The pulled cable: every connection through the relay is reset, new ones too. */
  cut(): Promise<LinkRelayStats>;
  restore(): Promise<LinkRelayStats>;
  stats(): Promise<LinkRelayStats>;
  close(): Promise<void>;
}

/** The files QEMU's tls-creds-x509 needs: the lab CA and this host's certificate and key. */
export interface MigrationTlsCreds {
  caCertPem: string;
  certPem: string;
  keyPem: string;
}

/**
 * What a host is and can do. Code outside hosts/ asks this, never which class a host is, so a
 * new kind of host is a folder here and an entry in the lab file's schema.
 */
export interface HostDescription {
  /** The kind's name, as the UI, the journal and HostInfo show it: 'local', 'remote', ... */
  kind: string;
  /** How the engine reaches its QEMUs: in this process, or through an agent over TLS. */
  transport: 'in-process' | 'agent-tls';
  /** Where its migration ports listen: another host connects here. */
  address: string;
  /** Its guests go on running after this engine stops, and the next engine finds them by name (an agent's). */
  outlivesEngine: boolean;
  /** It names guest images relative to its own image library, not by this machine's paths. */
  imageLibrary: boolean;
  /** Its files are this machine's: the engine can look at them itself (stat a disk, compare inodes). */
  sharesEngineFiles: boolean;
  /** The ports migration streams arrive on; null: not known (an agent not yet heard from). */
  migrationPorts: { first: number; last: number } | null;
  /** The agent serving it, as a lab file names one; null for a host in this process. */
  agent: { url: string; fingerprint: string } | null;
  /** Its link to the engine now (always 'connected' for a host in this process). */
  connection: 'connected' | 'reconnecting' | 'closed';
  /** Guests its agent described in a way the engine refused, each with why. */
  refusedGuests: { guest: string; problem: string }[];
}

/** Another host of the lab, as a host with migration rules of its own (an agent) is told it. */
export interface LabPeer {
  address: string;
  ports: { first: number; last: number };
}

/** Where QEMU runs: this machine (local/) or a LAN machine's agent (remote/). */
export interface Host {
  readonly name: string;
  readonly address: string;
  describe(): HostDescription;
  info(): Promise<HostInfo>;
  startGuest(spec: GuestSpecInput, opts?: StartGuestOptions): Promise<Guest>;
  /** A migration destination for `spec`: same device model, `-incoming defer`, not yet listening. */
  prepareIncoming(spec: GuestSpec, opts?: Omit<StartGuestOptions, 'incoming'>): Promise<Guest>;
  guests(): Guest[];
  guest(name: string): Guest | undefined;
  /** Stops the named guest; an error naming the host's guests when there is none by that name. */
  stopGuest(name: string): Promise<ExitInfo>;
  on<K extends keyof HostEventMap>(event: K, listener: (...args: HostEventMap[K]) => void): this;
  off<K extends keyof HostEventMap>(event: K, listener: (...args: HostEventMap[K]) => void): this;
  /** A TCP port on `address` for an incoming migration; an occupied port is skipped. */
  allocateMigrationPort(): Promise<number>;
  releaseMigrationPort(port: number): void;
  /** A relay in front of `targetPort` that shapes the migration stream (link emulation). */
  openLinkRelay(targetPort: number, profile?: Partial<LinkProfile>): Promise<LinkRelayControl>;
  /** Installs the lab CA's credentials for encrypted migration (QEMU TLS). */
  installMigrationTls(creds: MigrationTlsCreds): Promise<void>;
  /** Adds the TLS credentials object to a guest's QEMU; returns its id for tls-creds. */
  addMigrationTls(guest: Guest, endpoint: 'server' | 'client'): Promise<string>;
  /**
   * The lab's hosts: a host whose agent guards its migration streams sends them only to these
   * peers' addresses and migration ports. Told again whenever a host joins or leaves.
   */
  setLabPeers(peers: readonly LabPeer[]): void;
  /**
   * For a guest that comes from a host with an image library: its spec with every image resolved
   * inside this host's own library (throws naming a path it refuses). Absent: names are kept.
   */
  resolvePeerSpec?(spec: GuestSpec): Promise<GuestSpec>;
  /**
   * Takes over a guest that a stopped engine left running from `dir` (its runtime folder here);
   * null when no QEMU runs from there. Absent on hosts whose guests outlive the engine anyway.
   */
  adoptGuestFrom?(dir: string, name: string): Promise<Guest | null>;
  /** Stops every guest and removes the host's runtime dir. */
  dispose(): Promise<void>;
  /**
   * Lets go of the host at the end of a CLI run: what outlives the engine (an agent's guests)
   * keeps running; a host in this process is disposed.
   */
  leave(): Promise<void>;
}

/** Host.stopGuest for any host: the named guest stopped, or an error naming the guests it has. */
export function stopNamedGuest(host: Host, name: string): Promise<ExitInfo> {
  const g = host.guest(name);
  if (!g) {
    const names = host.guests().map((x) => x.name);
    return Promise.reject(new Error(`No guest named "${name}" runs on host ${host.name}` + (names.length ? `: it runs ${names.join(', ')}` : ': it runs none')));
  }
  return g.stop();
}
