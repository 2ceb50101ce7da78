import { join } from 'node:path';
import type { Guest, Host } from '../hosts/host';
import { LocalHost, disposeAllLocalHosts } from '../hosts/local/local-host';
import { RemoteHost } from '../hosts/remote/remote-host';
import type { AgentAddress } from '../hosts/remote/connect';
import type { PortRange } from '../hosts/ports';
import { LabNetwork, type LabNetworkOptions } from '../network/lab-network';
import { labName, type GuestSpecInput } from '../qemu/spec';
import { makeTempDir, removeDir } from '../util/fs';
import { LabCa } from '../tls/certs';
import { defaultStateDir, statePath } from '../util/paths';
import type { LabPeer } from '../hosts/host';
import type { DowntimePolicyName } from '../migration/types';

/** The lab with no configuration: two hosts on this machine, as a class first meets migration. */
export const DEFAULT_LOCAL_HOSTS: readonly string[] = ['host-a', 'host-b'];

/** Each local host gets its own 128-port slice for migration streams and NICs. */
export function localPortRange(index: number): PortRange {
  const first = 49152 + index * 128;
  return { first, last: first + 127 };
}

const liveLabs = new Set<Lab>();

/**
 * Stops every guest this process started and removes the labs' runtime dirs: what the CLI does
 * when it is told to quit (QEMU runs in its own process group and would outlive us).
 */
export async function disposeAllLabs(): Promise<void> {
  await Promise.all([...liveLabs].map((l) => l.dispose()));
  await disposeAllLocalHosts();
}

/**
 * A set of hosts with unique names and, usually, the lab network between them; disposing the lab
 * stops every guest on every host and shuts the switch.
 */
export class Lab {
  private readonly byName = new Map<string, Host>();
  private disposed = false;

  private readonly runtimeDir: string | null;
  private readonly ownsDir: boolean;
  readonly network: LabNetwork | null;
  /** Local hosts made so far, for their port ranges. */
  private localCount: number;
  /** The lab file's migration policy: what a migration that does not say otherwise gets. */
  readonly migration: { keepSourceMs?: number | null | undefined; downtimePolicy?: DowntimePolicyName | null | undefined };

  constructor(hosts: Host[], opts: { runtimeDir?: string; ownsDir?: boolean; network?: LabNetwork | null; migration?: Lab['migration'] } = {}) {
    this.runtimeDir = opts.runtimeDir ?? null;
    this.ownsDir = opts.ownsDir ?? false;
    this.network = opts.network ?? null;
    this.migration = opts.migration ?? {};
    this.localCount = hosts.length;
    for (const h of hosts) {
      if (this.byName.has(h.name)) throw new Error(`Two hosts are called "${h.name}": give each host its own name`);
      this.byName.set(h.name, h);
    }
    liveLabs.add(this);
    this.tellAgentsTheLab();
  }

  /**
   * Tells every agent of the lab its hosts: an agent's QEMU sends migration streams only to their
   * addresses and migration ports. Again whenever a host joins or leaves.
   */
  private tellAgentsTheLab(): void {
    const peers: LabPeer[] = this.hosts().flatMap((h) => {
      const ports = h.describe().migrationPorts;
      return ports && h.address ? [{ address: h.address, ports: { first: ports.first, last: ports.last } }] : [];
    });
    for (const h of this.hosts()) h.setLabPeers(peers);
  }

  hosts(): Host[] {
    return [...this.byName.values()];
  }

  host(name: string): Host {
    const h = this.byName.get(name);
    if (!h) throw new Error(`There is no host "${name}" in this lab: it has ${[...this.byName.keys()].join(', ')}`);
    return h;
  }

  /** A host may join under this name: the lab is open, the name usable and free. */
  private checkNewHost(name: string): void {
    if (this.disposed) throw new Error('This lab has been shut down');
    const ok = labName.safeParse(name);
    if (!ok.success) throw new Error(`"${name}" is not a usable host name: ${ok.error.issues[0]!.message}`);
    if (this.byName.has(name)) throw new Error(`There is a host "${name}" already: pick another name`);
  }

  /** A new simulated host on this machine, on the lab network, with its own ports. */
  addLocalHost(name: string): Host {
    this.checkNewHost(name);
    if (this.localCount >= 16) throw new Error('A lab on one machine has at most 16 hosts');
    const host = new LocalHost({
      name,
      migrationPorts: localPortRange(this.localCount++),
      ...(this.runtimeDir ? { runtimeDir: join(this.runtimeDir, name) } : {}),
      ...(this.network ? { network: this.network } : {}),
    });
    this.byName.set(name, host);
    this.tellAgentsTheLab();
    return host;
  }

  /**
   * A host that runs `miglab agent` (on the LAN), on the lab network. The name is checked before
   * anything connects; a connection that fails (wrong token, certificate not the pinned one,
   * agent unreachable) adds nothing and its error is passed on as it is.
   */
  async addRemoteHost(name: string, agent: AgentAddress): Promise<Host> {
    const check = () => {
      this.checkNewHost(name);
      if (this.byName.size >= 16) throw new Error('A lab has at most 16 hosts');
    };
    check();
    const host = await RemoteHost.connect({ name, ...agent, ...(this.network ? { network: this.network } : {}) });
    try {
      check(); // the lab may have changed while we connected (the same name added twice at once)
    } catch (err) {
      await host.disconnect();
      throw err;
    }
    this.byName.set(name, host);
    this.tellAgentsTheLab();
    return host;
  }

  /** Removes a host that runs no guests. */
  async removeHost(name: string): Promise<void> {
    const host = this.host(name);
    const guests = host.guests().map((g) => g.name);
    if (guests.length) throw new Error(`Host ${name} still runs ${guests.join(', ')}: stop or migrate ${guests.length === 1 ? 'it' : 'them'} first`);
    if (this.byName.size === 1) throw new Error('A lab needs at least one host');
    this.byName.delete(name);
    this.tellAgentsTheLab();
    await host.dispose();
  }

  /**
   * Starts a guest on the named host. On a lab with a network, a guest without an address gets
   * the next one of the lab subnet and a MAC, so its NIC plugs into the switch.
   */
  startGuest(hostName: string, spec: GuestSpecInput): Promise<Guest> {
    const host = this.host(hostName);
    if (this.network && !spec.mac) {
      const a = this.network.assign(spec.name);
      spec = { ...spec, mac: a.mac, ip: spec.ip ?? a.ip };
    }
    return host.startGuest(spec);
  }

  /**
   * Gives every host the lab CA's certificate and one of its own (naming its address), so
   * migrations can be encrypted with QEMU's TLS. The CA lives in the state dir and is reused.
   */
  async prepareMigrationTls(stateDir = defaultStateDir()): Promise<{ caFingerprint: string }> {
    const ca = await LabCa.loadOrCreate(statePath(stateDir, 'labCa'));
    await Promise.all(
      this.hosts().map(async (h) => {
        const leaf = await ca.issue({ commonName: `miglab host ${h.name}`, ipAddresses: [h.address] });
        await h.installMigrationTls({ caCertPem: ca.certPem, ...leaf });
      }),
    );
    return { caFingerprint: ca.fingerprint };
  }

  /**
   * Ends this engine's hold on the lab without stopping the guests of its agents (they outlive
   * a CLI run); local hosts, the switch and the lab's runtime dir go as with dispose().
   */
  leave(): Promise<void> {
    return this.end((h) => h.leave());
  }

  dispose(): Promise<void> {
    return this.end((h) => h.dispose());
  }

  /** Lets go of each host as told, then the switch and the lab's runtime dir; runs once. */
  private async end(release: (h: Host) => Promise<void>): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await Promise.all(this.hosts().map(release));
    await this.network?.close();
    if (this.ownsDir && this.runtimeDir) await removeDir(this.runtimeDir);
    liveLabs.delete(this);
  }
}

/**
 * host-a and host-b on this machine, each with its own runtime dir (under `runtimeDir`, or a
 * fresh temp dir the lab removes) and its own migration port range.
 */
export async function defaultLocalLab(
  opts: { runtimeDir?: string; cacheRoot?: string; network?: LabNetworkOptions | false } = {},
): Promise<Lab> {
  const network = opts.network === false ? null : new LabNetwork(opts.network ?? {});
  const dir = opts.runtimeDir ?? (await makeTempDir('lab'));
  const hosts = DEFAULT_LOCAL_HOSTS.map(
    (name, i) =>
      new LocalHost({
        name,
        runtimeDir: join(dir, name),
        migrationPorts: localPortRange(i),
        ...(network ? { network } : {}),
        ...(opts.cacheRoot ? { cacheRoot: opts.cacheRoot } : {}),
      }),
  );
  return new Lab(hosts, { runtimeDir: dir, ownsDir: !opts.runtimeDir, network });
}
