import { join } from 'node:path';
import type { Guest, Host } from '../hosts/host';
import { LocalHost, disposeAllLocalHosts } from '../hosts/local';
import type { PortRange } from '../hosts/ports';
import { LabNetwork, type LabNetworkOptions } from '../network/lab-network';
import type { GuestSpecInput } from '../qemu/spec';
import { makeTempDir, removeDir } from '../util/fs';

/** The lab with no configuration: two hosts on this machine, as a class first meets migration. */
export const DEFAULT_LOCAL_HOSTS: ReadonlyArray<{ name: string; migrationPorts: PortRange }> = [
  { name: 'host-a', migrationPorts: { first: 49152, last: 49279 } },
  { name: 'host-b', migrationPorts: { first: 49280, last: 49407 } },
];

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

  constructor(
    hosts: Host[],
    private readonly ownedDir: string | null = null,
    readonly network: LabNetwork | null = null,
  ) {
    for (const h of hosts) {
      if (this.byName.has(h.name)) throw new Error(`Two hosts are called "${h.name}": give each host its own name`);
      this.byName.set(h.name, h);
    }
    liveLabs.add(this);
  }

  hosts(): Host[] {
    return [...this.byName.values()];
  }

  host(name: string): Host {
    const h = this.byName.get(name);
    if (!h) throw new Error(`There is no host "${name}" in this lab: it has ${[...this.byName.keys()].join(', ')}`);
    return h;
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

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await Promise.all(this.hosts().map((h) => h.dispose()));
    await this.network?.close();
    if (this.ownedDir) await removeDir(this.ownedDir);
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
    (h) =>
      new LocalHost({
        name: h.name,
        runtimeDir: join(dir, h.name),
        migrationPorts: h.migrationPorts,
        ...(network ? { network } : {}),
        ...(opts.cacheRoot ? { cacheRoot: opts.cacheRoot } : {}),
      }),
  );
  return new Lab(hosts, opts.runtimeDir ? null : dir, network);
}
