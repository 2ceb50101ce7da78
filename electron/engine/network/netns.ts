import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { whichBinary } from '../qemu/binary';
import { labName } from '../qemu/spec';
import { delay } from '../util/time';
import { ipv4ToNumber, numberToIpv4 } from './frame';
import { isSubnet, readSubnet, subnetsOverlap, subnetText, type Subnet } from './subnet';

/**
 * Lab "hosts" as Linux network namespaces: each has a veth pair whose root end is plugged into a
 * bridge in the root namespace, so the engine (root namespace) reaches every host through the
 * bridge's address and hosts reach each other across it. Every object's name starts with the
 * lab's prefix, so a crashed run's leftovers can be found and removed by that prefix.
 */

const IP_TIMEOUT_MS = 10_000;
/** Linux interface names: at most 15 bytes (IFNAMSIZ - 1). */
const IFNAME_MAX = 15;
const PREFIX_PATTERN = /^ml[a-z0-9]{1,8}$/;
const DEFAULT_SUBNET_BASE = [10, 97] as const;
/** Hosts get .11, .12, ...; the bridge .1. */
const FIRST_HOST_OFFSET = 11;
const TERM_GRACE_MS = 2_000;
const GONE_TIMEOUT_MS = 10_000;
const INSTALL_IPROUTE2 = 'install iproute2 (sudo apt-get install iproute2)';

export class NetnsError extends Error {
  constructor(
    readonly step: string,
    readonly detail: string,
  ) {
    super(`Network namespace lab: could not ${step}: ${detail}`);
    this.name = 'NetnsError';
  }
}

/** A failed `ip` command: the argv as typed and what ip said. */
export class IpCommandError extends Error {
  constructor(
    readonly command: string,
    readonly stderr: string,
    cause: string,
  ) {
    super(`"${command}" failed: ${stderr || cause}`);
    this.name = 'IpCommandError';
  }
}

let ipPathPromise: Promise<string | null> | undefined;

/** iproute2's ip: on PATH, else where Debian puts it (a root PATH may lack /usr/sbin). */
function findIp(): Promise<string | null> {
  ipPathPromise ??= (async () => {
    const extra = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'].join(':');
    return whichBinary('ip', `${process.env.PATH ?? ''}:${extra}`);
  })();
  return ipPathPromise;
}

async function ipPath(): Promise<string> {
  const path = await findIp();
  if (!path) throw new NetnsError('run "ip"', `the "ip" command (iproute2) is not installed: ${INSTALL_IPROUTE2}`);
  return path;
}

/** Runs `ip ...args` (argv, never a shell) with a timeout; the error names the command and ip's stderr. */
async function ip(args: string[], timeoutMs = IP_TIMEOUT_MS): Promise<string> {
  const path = await ipPath();
  return new Promise((resolve, reject) => {
    execFile(path, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const why = err.killed ? `timed out after ${timeoutMs} ms` : err.message.split('\n')[0]!;
      reject(new IpCommandError(`ip ${args.join(' ')}`, String(stderr).trim(), why));
    });
  });
}

/** Runs one creation step; a failure becomes a NetnsError naming the step and ip's error text. */
async function step<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof NetnsError) throw err;
    throw new NetnsError(what, (err as Error).message);
  }
}

// ---------------------------------------------------------------------------------------------
// Support check and listing

export async function netnsSupport(): Promise<{ ok: true } | { ok: false; reason: string }> {
  if (process.getuid?.() !== 0) {
    return { ok: false, reason: 'network namespaces need root: run as root (e.g. with sudo)' };
  }
  if (!(await findIp())) return { ok: false, reason: `the "ip" command (iproute2) is not installed: ${INSTALL_IPROUTE2}` };
  try {
    await ip(['netns', 'list']);
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `"ip netns" does not work here (${(err as Error).message}): ${INSTALL_IPROUTE2} and run as root` };
  }
}

async function namespaceNames(): Promise<string[]> {
  const out = (await ip(['-j', 'netns', 'list'])).trim();
  // With no namespaces ip prints nothing at all, not "[]".
  if (!out) return [];
  return (JSON.parse(out) as Array<{ name: string }>).map((n) => n.name);
}

async function linkNames(): Promise<string[]> {
  const out = (await ip(['-j', 'link', 'show'])).trim();
  if (!out) return [];
  return (JSON.parse(out) as Array<{ ifname: string }>).map((l) => l.ifname);
}

/** Namespaces and root-namespace links whose names start with `prefix`, as they exist now. */
export async function listNetnsObjects(prefix = 'ml'): Promise<{ namespaces: string[]; links: string[] }> {
  const [namespaces, links] = await Promise.all([namespaceNames(), linkNames()]);
  return {
    namespaces: namespaces.filter((n) => n.startsWith(prefix)).sort(),
    links: links.filter((l) => l.startsWith(prefix)).sort(),
  };
}

// ---------------------------------------------------------------------------------------------
// Removal: shared by destroy(), a failed create() and removeNetnsLeftovers()

async function pidsIn(netns: string): Promise<number[]> {
  try {
    const out = await ip(['netns', 'pids', netns]);
    return out.split('\n').filter((l) => /^\d+$/.test(l.trim())).map(Number);
  } catch {
    return []; // the namespace is gone: nothing runs in it
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

/** Ends every process in the namespaces: SIGTERM, then SIGKILL for those still there after the grace. */
async function killProcessesIn(namespaces: string[]): Promise<void> {
  const remaining = async () => (await Promise.all(namespaces.map(pidsIn))).flat();
  let pids = await remaining();
  if (!pids.length) return;
  for (const pid of pids) signal(pid, 'SIGTERM');
  const termDeadline = Date.now() + TERM_GRACE_MS;
  while ((pids = await remaining()).length && Date.now() < termDeadline) await delay(100);
  if (!pids.length) return;
  const killDeadline = Date.now() + GONE_TIMEOUT_MS;
  while (pids.length && Date.now() < killDeadline) {
    for (const pid of pids) signal(pid, 'SIGKILL');
    await delay(100);
    pids = await remaining();
  }
  if (pids.length) {
    throw new Error(`processes ${pids.join(', ')} in ${namespaces.join(', ')} did not end after SIGKILL`);
  }
}

/**
 * Removes the namespaces and links (processes inside first, since a namespace outlives its name
 * while anything runs in it, and so do its veth ends). Anything already gone is fine; resolves
 * once `ip` no longer lists any of them, or throws naming what stayed.
 */
async function removeObjects(namespaces: string[], links: string[]): Promise<void> {
  const problems: string[] = [];
  try {
    await killProcessesIn(namespaces);
  } catch (err) {
    problems.push((err as Error).message);
  }
  // Deleting a veth's root end removes its peer at once; waiting for a namespace's teardown to
  // take its veths with it is asynchronous.
  for (const link of links) {
    await ip(['link', 'delete', link]).catch((err: Error) => problems.push(err.message));
  }
  for (const ns of namespaces) {
    await ip(['netns', 'delete', ns]).catch((err: Error) => problems.push(err.message));
  }
  const deadline = Date.now() + GONE_TIMEOUT_MS;
  for (;;) {
    const [nsNow, linksNow] = await Promise.all([namespaceNames(), linkNames()]);
    const left = [...namespaces.filter((n) => nsNow.includes(n)), ...links.filter((l) => linksNow.includes(l))];
    if (!left.length) return; // errors about things that are gone now do not matter
    if (Date.now() > deadline) {
      throw new Error(`${left.join(', ')} could not be removed (${problems.join('; ') || 'no error from ip'})`);
    }
    await delay(100);
  }
}

/**
 * Removes every namespace and root-namespace link whose name starts with `prefix`: what a crashed
 * run left. Note that a prefix matches longer prefixes too ("ml1" also matches "ml12...").
 */
export async function removeNetnsLeftovers(prefix: string): Promise<{ namespaces: string[]; links: string[] }> {
  if (prefix.length < 3 || !prefix.startsWith('ml')) {
    throw new Error(`Refusing to remove network objects by prefix "${prefix}": a lab prefix starts with "ml" and has at least 3 characters`);
  }
  const found = await listNetnsObjects(prefix);
  await removeObjects(found.namespaces, found.links);
  return found;
}

// ---------------------------------------------------------------------------------------------
// Addresses

/** The subnet a netns lab was given, with room for its hosts from FIRST_HOST_OFFSET on. */
function parseLabSubnet(text: string, hostCount: number): Subnet {
  const r = readSubnet(text, { minPrefix: 8, maxPrefix: 29 });
  if (!isSubnet(r)) {
    throw new NetnsError('use the subnet', r.problem === 'host-bits'
      ? `"${text}" has host bits set: give its network address, like ${r.network}`
      : `"${text}" is not an IPv4 subnet like 10.97.5.0/24 (prefix length 8-29)`);
  }
  if (FIRST_HOST_OFFSET + hostCount > r.size - 1) {
    throw new NetnsError('use the subnet', `${text} has no room for ${hostCount} hosts from .${FIRST_HOST_OFFSET} on: use a larger subnet`);
  }
  return r;
}

function ipv4OrNull(address: string): number | null {
  try {
    return ipv4ToNumber(address);
  } catch {
    return null;
  }
}

/** Every IPv4 address on a root-namespace interface, as interface and subnet. */
async function rootAddresses(): Promise<Array<{ ifname: string; cidr: Subnet; text: string }>> {
  const out = (await ip(['-4', '-j', 'addr', 'show'])).trim();
  if (!out) return [];
  const links = JSON.parse(out) as Array<{ ifname: string; addr_info?: Array<{ local?: string; prefixlen?: number }> }>;
  const result: Array<{ ifname: string; cidr: Subnet; text: string }> = [];
  for (const link of links) {
    for (const a of link.addr_info ?? []) {
      const n = a.local ? ipv4OrNull(a.local) : null;
      if (n === null || a.prefixlen === undefined) continue;
      // An interface's own address, not its network: enough for an overlap test.
      result.push({ ifname: link.ifname, cidr: { network: n, prefix: a.prefixlen, size: 2 ** (32 - a.prefixlen) }, text: `${a.local}/${a.prefixlen}` });
    }
  }
  return result;
}

/** Subnets this process's labs hold, so two labs made at once never pick the same one. */
const subnetsInUse = new Set<string>();

/** A free 10.97.X.0/24, held in subnetsInUse from the moment it is chosen. */
async function pickDefaultSubnet(): Promise<Subnet> {
  const used = await step('read the addresses of this machine', rootAddresses);
  const free: Subnet[] = [];
  for (let x = 1; x <= 254; x++) {
    const c: Subnet = { network: ipv4ToNumber(`${DEFAULT_SUBNET_BASE.join('.')}.${x}.0`), prefix: 24, size: 256 };
    if (!subnetsInUse.has(subnetText(c)) && !used.some((u) => subnetsOverlap(u.cidr, c))) free.push(c);
  }
  const chosen = free[randomBytes(2).readUInt16BE(0) % Math.max(free.length, 1)];
  if (!chosen) {
    throw new NetnsError('choose a subnet', `every 10.97.X.0/24 overlaps an address of this machine: give one with --subnet`);
  }
  subnetsInUse.add(subnetText(chosen));
  return chosen;
}

/**
 * "ml", two characters that stand for this process's temp folder, four random ones: so a leak
 * check can tell its own run's namespaces from those of another run on the machine (namespaces
 * carry no environment to tell them apart, unlike processes).
 */
export function netnsRunTag(tmp = tmpdir()): string {
  const chars = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const h = createHash('sha256').update(tmp.replace(/\/+$/, '')).digest();
  return `ml${chars[h[0]! % 36]}${chars[h[1]! % 36]}`;
}

function randomPrefix(): string {
  const chars = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return `${netnsRunTag()}${[...randomBytes(4)].map((b) => chars[b % 36]).join('')}`;
}

// ---------------------------------------------------------------------------------------------
// Connectivity check when bridged frames pass through iptables

/** What the node children of the check run (plain node, or Electron acting as node). */
const CHECK_ENV = { ...process.env, ELECTRON_RUN_AS_NODE: '1' };

const CHECK_SERVER = `
const net = require('net');
const [address, expected] = process.argv.slice(1);
let served = 0;
setTimeout(() => process.exit(3), 8000);
const server = net.createServer((s) => {
  s.on('error', () => {});
  s.end('ok');
  if (++served >= Number(expected)) server.close();
});
server.listen(0, address, () => process.stdout.write(String(server.address().port) + '\\n'));
`;

const CHECK_CLIENT = `
const net = require('net');
const [address, port] = process.argv.slice(1);
const deadline = Date.now() + 4000;
let lastError = 'no answer';
(function attempt() {
  if (Date.now() > deadline) { process.stderr.write(lastError); process.exit(1); }
  const s = net.connect({ host: address, port: Number(port), timeout: 1000 });
  let got = '';
  s.on('data', (d) => { got += d; });
  s.on('end', () => { if (got === 'ok') process.exit(0); lastError = 'got ' + JSON.stringify(got); setTimeout(attempt, 100); });
  s.on('timeout', () => { lastError = 'connect timed out'; s.destroy(); setTimeout(attempt, 100); });
  s.on('error', (e) => { lastError = e.message; setTimeout(attempt, 100); });
})();
`;

/** Started and not yet reaped: its pid is still its own. */
function running(child: ChildProcess): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

function waitExit(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
}

/** Connects from the root namespace, retrying until `deadline`; resolves with the error seen last, or null. */
async function rootConnects(address: string, port: number, deadline: number): Promise<string | null> {
  let lastError = 'no answer';
  while (Date.now() < deadline) {
    const result = await new Promise<string | null>((resolve) => {
      const s = connect({ host: address, port, timeout: 1000 });
      let got = '';
      s.on('data', (d) => (got += d));
      s.on('end', () => resolve(got === 'ok' ? null : `got ${JSON.stringify(got)}`));
      s.on('timeout', () => {
        s.destroy();
        resolve('connect timed out');
      });
      s.on('error', (e) => resolve(e.message));
    });
    if (result === null) return null;
    lastError = result;
    await delay(100);
  }
  return lastError;
}

// ---------------------------------------------------------------------------------------------
// The lab

export interface NetnsHost {
  name: string;
  netns: string;
  address: string;
  rootVeth: string;
}

export interface NetnsLabOptions {
  hosts: string[];
  /** Start of every object's name; default "ml" + 4 random base36 characters. */
  prefix?: string;
  /** An IPv4 subnet like 10.97.5.0/24; default a free 10.97.X.0/24. */
  subnet?: string;
}

export class NetnsLab {
  private readonly children = new Set<ChildProcess>();
  private destroying: Promise<void> | null = null;

  private constructor(
    readonly prefix: string,
    readonly subnet: string,
    readonly bridge: { name: string; address: string },
    readonly hosts: NetnsHost[],
    private readonly ipBinary: string,
  ) {}

  static async create(opts: NetnsLabOptions): Promise<NetnsLab> {
    const { prefix, hostNames } = validate(opts);
    const ipBinary = await ipPath();
    const made = { namespaces: [] as string[], links: [] as string[] };
    let reserved: string | null = null; // the subnet this call holds in subnetsInUse
    try {
      const bridgeName = `${prefix}br`;
      let subnet: Subnet;
      if (opts.subnet) {
        subnet = parseLabSubnet(opts.subnet, hostNames.length);
        if (subnetsInUse.has(subnetText(subnet))) throw new NetnsError('use the subnet', `${opts.subnet} is in use by another lab of this process`);
        await checkSubnetFree(subnet, null);
        subnetsInUse.add(subnetText(subnet));
      } else {
        subnet = await pickDefaultSubnet();
      }
      reserved = subnetText(subnet);

      await step(`create bridge ${bridgeName}`, () => ip(['link', 'add', bridgeName, 'type', 'bridge']));
      made.links.push(bridgeName);
      // Another process may have picked the same subnet at the same moment: after the address is
      // on our bridge, a default subnet that turns out shared is given up for another.
      for (let attempt = 0; ; attempt++) {
        const bridgeCidr = `${numberToIpv4(subnet.network + 1)}/${subnet.prefix}`;
        await step(`address bridge ${bridgeName}`, () => ip(['addr', 'add', bridgeCidr, 'dev', bridgeName]));
        try {
          await checkSubnetFree(subnet, bridgeName);
          break;
        } catch (err) {
          if (opts.subnet || attempt >= 5) throw err;
          await step(`re-address bridge ${bridgeName}`, () => ip(['addr', 'delete', bridgeCidr, 'dev', bridgeName]));
          subnetsInUse.delete(reserved);
          reserved = null;
          subnet = await pickDefaultSubnet();
          reserved = subnetText(subnet);
        }
      }
      await step(`bring bridge ${bridgeName} up`, () => ip(['link', 'set', bridgeName, 'up']));

      const hosts: NetnsHost[] = [];
      for (const [i, name] of hostNames.entries()) {
        const netns = `${prefix}-${name}`;
        const rootVeth = `${prefix}v${i}`;
        const address = numberToIpv4(subnet.network + FIRST_HOST_OFFSET + i);
        await step(`add namespace ${netns}`, () => ip(['netns', 'add', netns]));
        made.namespaces.push(netns);
        // The peer is born inside the namespace as eth0: no root-side name to leak if we stop here.
        await step(`create veth ${rootVeth} for ${netns}`, () =>
          ip(['link', 'add', rootVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]),
        );
        made.links.push(rootVeth);
        await step(`plug ${rootVeth} into ${bridgeName}`, () => ip(['link', 'set', rootVeth, 'master', bridgeName, 'up']));
        await step(`address eth0 in ${netns}`, () => ip(['-n', netns, 'addr', 'add', `${address}/${subnet.prefix}`, 'dev', 'eth0']));
        await step(`bring eth0 up in ${netns}`, () => ip(['-n', netns, 'link', 'set', 'eth0', 'up']));
        await step(`bring lo up in ${netns}`, () => ip(['-n', netns, 'link', 'set', 'lo', 'up']));
        hosts.push({ name, netns, address, rootVeth });
      }

      const lab = new NetnsLab(prefix, subnetText(subnet), { name: bridgeName, address: numberToIpv4(subnet.network + 1) }, hosts, ipBinary);
      await lab.checkBridgedTraffic();
      return lab;
    } catch (err) {
      let cleanup = '';
      try {
        await removeObjects(made.namespaces, made.links);
      } catch (cleanupErr) {
        cleanup = `; cleaning up also failed: ${(cleanupErr as Error).message} (run "netns-hosts down --prefix ${prefix}")`;
      }
      if (reserved) subnetsInUse.delete(reserved);
      if (err instanceof NetnsError) {
        if (!cleanup) throw err;
        throw new NetnsError(err.step, `${err.detail}${cleanup}`);
      }
      throw new NetnsError('create the lab', `${(err as Error).message}${cleanup}`);
    }
  }

  host(name: string): NetnsHost {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`No host "${name}" in netns lab ${this.prefix}: it has ${this.hosts.map((x) => x.name).join(', ')}`);
    return h;
  }

  /** Runs `command args...` inside the host's namespace (argv, never a shell); destroy() ends it. */
  spawn(hostName: string, command: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    if (this.destroying) throw new Error(`Netns lab ${this.prefix} is destroyed: cannot start ${command} in ${hostName}`);
    const host = this.host(hostName);
    const child = spawn(this.ipBinary, ['netns', 'exec', host.netns, command, ...args], { ...opts, shell: false });
    this.children.add(child);
    const forget = () => this.children.delete(child);
    child.once('exit', forget);
    child.once('error', forget);
    return child;
  }

  /** Ends every process in the lab's namespaces and removes every object it made. Safe to call again. */
  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      // A child still between fork and setns is not yet in its namespace: end it by pid too.
      for (const child of this.children) if (running(child)) signal(child.pid!, 'SIGTERM');
      const links = [...this.hosts.map((h) => h.rootVeth), this.bridge.name];
      try {
        await removeObjects(this.hosts.map((h) => h.netns), links);
      } finally {
        for (const child of this.children) if (running(child)) signal(child.pid!, 'SIGKILL');
        subnetsInUse.delete(this.subnet);
      }
    })();
    return this.destroying;
  }

  /**
   * With br_netfilter loaded and bridge-nf-call-iptables=1, frames crossing the bridge go through
   * iptables' FORWARD chain, whose policy may drop them. MigLab does not change firewall settings
   * behind the user's back: it checks that traffic flows and says what to do if not.
   */
  private async checkBridgedTraffic(): Promise<void> {
    let setting: string;
    try {
      setting = (await readFile('/proc/sys/net/bridge/bridge-nf-call-iptables', 'utf8')).trim();
    } catch {
      return; // br_netfilter is not loaded: bridged frames never see iptables
    }
    if (setting !== '1' || !this.hosts.length) return;
    const what = 'check traffic across the bridge';
    const [target, ...others] = this.hosts;
    const server = this.spawn(target!.name, process.execPath, ['-e', CHECK_SERVER, target!.address, String(others.length + 1)], {
      env: CHECK_ENV,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let out = '';
        let err = '';
        const timer = setTimeout(() => reject(new NetnsError(what, `the check server in ${target!.netns} did not start: ${err}`)), 8000);
        server.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /^(\d+)\n/.exec(out);
          if (m) {
            clearTimeout(timer);
            resolve(Number(m[1]));
          }
        });
        server.stderr!.on('data', (d: Buffer) => (err += d.toString()));
        server.once('exit', (code) => {
          clearTimeout(timer);
          reject(new NetnsError(what, `the check server in ${target!.netns} exited (${code}): ${err.trim()}`));
        });
      });
      const deadline = Date.now() + 4000;
      const failures: string[] = [];
      const fromRoot = rootConnects(target!.address, port, deadline).then((e) => {
        if (e) failures.push(`root namespace -> ${target!.name} (${target!.address}): ${e}`);
      });
      const fromHosts = others.map(async (h) => {
        const client = this.spawn(h.name, process.execPath, ['-e', CHECK_CLIENT, target!.address, String(port)], {
          env: CHECK_ENV,
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let err = '';
        client.stderr!.on('data', (d: Buffer) => (err += d.toString()));
        const code = await waitExit(client);
        if (code !== 0) failures.push(`${h.name} -> ${target!.name} (${target!.address}): ${err.trim() || `exit ${code}`}`);
      });
      await Promise.all([fromRoot, ...fromHosts]);
      if (failures.length) {
        throw new NetnsError(
          what,
          `${failures.join('; ')}. net.bridge.bridge-nf-call-iptables is 1, so iptables' FORWARD chain filters frames ` +
            `crossing bridge ${this.bridge.name}, and it seems to drop them. MigLab does not change firewall settings: ` +
            `allow them ("iptables -I FORWARD -i ${this.bridge.name} -o ${this.bridge.name} -j ACCEPT") or turn the ` +
            `filtering off ("sysctl -w net.bridge.bridge-nf-call-iptables=0")`,
        );
      }
    } finally {
      if (running(server)) {
        signal(server.pid!, 'SIGKILL');
        await waitExit(server);
      }
    }
  }
}

function validate(opts: NetnsLabOptions): { prefix: string; hostNames: string[] } {
  const prefix = opts.prefix ?? randomPrefix();
  if (!PREFIX_PATTERN.test(prefix)) {
    throw new NetnsError('use the prefix', `"${prefix}" is not a lab prefix: use "ml" and 1-8 lower-case letters or digits`);
  }
  if (!Array.isArray(opts.hosts) || opts.hosts.length === 0) throw new NetnsError('check the host names', 'a lab needs at least one host');
  for (const name of opts.hosts) {
    const ok = labName.safeParse(name);
    if (!ok.success) throw new NetnsError('check the host names', `"${name}" is not a host name: ${ok.error.issues[0]?.message}`);
  }
  const dup = opts.hosts.find((h, i) => opts.hosts.indexOf(h) !== i);
  if (dup) throw new NetnsError('check the host names', `"${dup}" is given twice`);
  const longest = `${prefix}v${opts.hosts.length - 1}`;
  if (longest.length > IFNAME_MAX) {
    throw new NetnsError('check the host names', `${opts.hosts.length} hosts make interface names like ${longest}, longer than ${IFNAME_MAX} characters`);
  }
  return { prefix, hostNames: [...opts.hosts] };
}

/** Throws when an address on a root-namespace interface other than `ours` overlaps the subnet. */
async function checkSubnetFree(subnet: Subnet, ours: string | null): Promise<void> {
  const clash = (await step('read the addresses of this machine', rootAddresses)).find(
    (a) => a.ifname !== ours && subnetsOverlap(a.cidr, subnet),
  );
  if (clash) {
    throw new NetnsError('use the subnet', `${subnetText(subnet)} overlaps ${clash.text} on ${clash.ifname}: choose another subnet`);
  }
}
