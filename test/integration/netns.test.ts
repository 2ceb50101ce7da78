// Lab hosts as network namespaces: real namespaces, veths and a bridge, real TCP across them, and
// nothing left behind however a lab ends (destroy, a failure half way, a crashed owner).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import {
  NetnsError,
  NetnsLab,
  listNetnsObjects,
  netnsRunTag,
  netnsSupport,
  removeNetnsLeftovers,
} from '../../electron/engine/network/netns';
import { pidAlive } from '../helpers/leaks';
import { netnsLeftovers } from '../helpers/netns-leaks';

const runFile = promisify(execFile);
const repo = join(import.meta.dirname, '..', '..');
const cli = join(repo, 'scripts', 'netns', 'netns-hosts.ts');

/** Every prefix this file made (labs, the CLI's, hand-made objects): afterAll checks each is gone. */
const prefixes = new Set<string>();
const labs: NetnsLab[] = [];

async function newLab(opts: { hosts: string[]; prefix?: string; subnet?: string }): Promise<NetnsLab> {
  if (opts.prefix) prefixes.add(opts.prefix);
  const lab = await NetnsLab.create(opts);
  prefixes.add(lab.prefix);
  labs.push(lab);
  return lab;
}

function testPrefix(): string {
  const p = `mlt${randomBytes(3).toString('hex').slice(0, 5)}`;
  prefixes.add(p);
  return p;
}

async function ipJson<T>(args: string[]): Promise<T> {
  const { stdout } = await runFile('ip', ['-j', ...args], { timeout: 10_000 });
  return JSON.parse(stdout) as T;
}

interface IpAddr {
  ifname: string;
  flags: string[];
  master?: string;
  addr_info: Array<{ local: string; prefixlen: number }>;
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode });
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

/** The first line the child prints on stdout (a port, "ready", an echo). */
function firstLine(child: ChildProcess, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`no line within ${timeoutMs} ms; stderr: ${err}`)), timeoutMs);
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(out.slice(0, nl));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited (${code}) before printing a line; stderr: ${err}`));
    });
  });
}

/** Node in a host: `script` gets its arguments as process.argv[1...]. */
function nodeIn(lab: NetnsLab, host: string, script: string, args: string[]): ChildProcess {
  return lab.spawn(host, process.execPath, ['-e', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}

// Echoes every line back with a tag, on one address and port.
const ECHO_SERVER = `
const net = require('net');
const [address, port, tag] = process.argv.slice(1);
const server = net.createServer((s) => s.on('data', (d) => s.write(tag + ':' + d)).on('error', () => {}));
server.listen(Number(port), address, () => console.log(server.address().port));
`;

const ECHO_CLIENT = `
const net = require('net');
const [address, port, text] = process.argv.slice(1);
const s = net.connect(Number(port), address, () => s.write(text + '\\n'));
s.on('data', (d) => { process.stdout.write(String(d)); s.end(); });
s.on('error', (e) => { console.error(e.message); process.exit(1); });
`;

/** One request from the root namespace: resolves with the reply, or rejects with the socket error. */
function rootEcho(address: string, port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: address, port, timeout: 5000 });
    s.on('connect', () => s.write(`${text}\n`));
    s.on('data', (d) => {
      resolve(d.toString());
      s.end();
    });
    s.on('timeout', () => {
      s.destroy();
      reject(new Error('timed out'));
    });
    s.on('error', reject);
  });
}

/** A port no one listens on in the root namespace's loopback right now. */
function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

async function expectGone(prefix: string): Promise<void> {
  expect(await listNetnsObjects(prefix)).toEqual({ namespaces: [], links: [] });
}

afterAll(async () => {
  for (const lab of labs) await lab.destroy();
  // What a failed test may have left outside any lab object (CLI runs, hand-made objects).
  for (const p of prefixes) await removeNetnsLeftovers(p);
  for (const p of prefixes) await expectGone(p);
}, 60_000);

describe('netnsSupport', () => {
  it('says yes here: we are root and iproute2 is installed', async () => {
    expect(await netnsSupport()).toEqual({ ok: true });
  });
});

describe('a lab of two hosts', () => {
  it('makes the namespaces, the bridge and the veths, with the right addresses', async () => {
    const lab = await newLab({ hosts: ['host-a', 'host-b'] });
    expect(lab.prefix).toMatch(/^ml[a-z0-9]{6}$/);
    expect(lab.prefix.startsWith(netnsRunTag())).toBe(true); // this run's tag: the leak check finds it
    const m = /^10\.97\.(\d+)\.0\/24$/.exec(lab.subnet);
    expect(m).not.toBeNull();
    const net = `10.97.${m![1]}`;
    expect(lab.bridge).toEqual({ name: `${lab.prefix}br`, address: `${net}.1` });
    expect(lab.hosts).toEqual([
      { name: 'host-a', netns: `${lab.prefix}-host-a`, address: `${net}.11`, rootVeth: `${lab.prefix}v0` },
      { name: 'host-b', netns: `${lab.prefix}-host-b`, address: `${net}.12`, rootVeth: `${lab.prefix}v1` },
    ]);
    expect(lab.host('host-b').address).toBe(`${net}.12`);
    expect(() => lab.host('host-z')).toThrow(/No host "host-z".*host-a, host-b/);

    expect(await listNetnsObjects(lab.prefix)).toEqual({
      namespaces: [`${lab.prefix}-host-a`, `${lab.prefix}-host-b`],
      links: [`${lab.prefix}br`, `${lab.prefix}v0`, `${lab.prefix}v1`],
    });
    expect(await netnsLeftovers()).toEqual(expect.arrayContaining([`${lab.prefix}-host-a`, `${lab.prefix}br`, `${lab.prefix}v1`]));

    const [bridge] = await ipJson<IpAddr[]>(['-4', 'addr', 'show', 'dev', lab.bridge.name]);
    expect(bridge!.flags).toContain('UP');
    expect(bridge!.addr_info.map((a) => `${a.local}/${a.prefixlen}`)).toEqual([`${net}.1/24`]);
    for (const h of lab.hosts) {
      const [veth] = await ipJson<IpAddr[]>(['link', 'show', 'dev', h.rootVeth]);
      expect(veth).toMatchObject({ master: lab.bridge.name });
      expect(veth!.flags).toContain('UP');
      const inside = await ipJson<IpAddr[]>(['-n', h.netns, '-4', 'addr']);
      const byName = new Map(inside.map((l) => [l.ifname, l]));
      expect([...byName.keys()].sort()).toEqual(['eth0', 'lo']);
      expect(byName.get('eth0')!.flags).toContain('UP');
      expect(byName.get('eth0')!.addr_info.map((a) => `${a.local}/${a.prefixlen}`)).toEqual([`${h.address}/24`]);
      expect(byName.get('lo')!.flags).toContain('UP');
      expect(byName.get('lo')!.addr_info.map((a) => a.local)).toEqual(['127.0.0.1']);
    }
    await lab.destroy();
    await expectGone(lab.prefix);
  });

  it('carries TCP from host-b and from the root namespace to host-a, but host-a is not on the root loopback', async () => {
    const lab = await newLab({ hosts: ['host-a', 'host-b'] });
    const a = lab.host('host-a');
    const port = await freeLoopbackPort();
    const server = nodeIn(lab, 'host-a', ECHO_SERVER, [a.address, String(port), 'host-a']);
    expect(Number(await firstLine(server))).toBe(port);

    const client = nodeIn(lab, 'host-b', ECHO_CLIENT, [a.address, String(port), 'hello from b']);
    expect(await firstLine(client)).toBe('host-a:hello from b');
    expect(await exited(client)).toEqual({ code: 0, signal: null });

    expect(await rootEcho(a.address, port, 'hello from root')).toBe('host-a:hello from root\n');
    // The same port on the root namespace's loopback is another network stack: nothing listens.
    await expect(rootEcho('127.0.0.1', port, 'hello')).rejects.toMatchObject({ code: 'ECONNREFUSED' });

    await lab.destroy();
    expect(await exited(server)).toEqual({ code: null, signal: 'SIGTERM' });
    await expectGone(lab.prefix);
  });
});

describe('destroy', () => {
  it('ends processes still running inside (SIGKILL for one that ignores SIGTERM), removes everything, and is a no-op the second time', async () => {
    const lab = await newLab({ hosts: ['host-a', 'host-b'] });
    const sleeper = lab.spawn('host-a', 'sleep', ['300'], { stdio: 'ignore' });
    const stubborn = nodeIn(lab, 'host-b', `process.on('SIGTERM', () => {}); console.log('ready'); setInterval(() => {}, 1000);`, []);
    expect(await firstLine(stubborn)).toBe('ready');
    const pids = [sleeper.pid!, stubborn.pid!];
    const sleeperExit = exited(sleeper);
    const stubbornExit = exited(stubborn);

    const t0 = Date.now();
    await lab.destroy();
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(1900); // the stubborn one had its grace
    expect(took).toBeLessThan(8000);
    expect(await sleeperExit).toEqual({ code: null, signal: 'SIGTERM' });
    expect(await stubbornExit).toEqual({ code: null, signal: 'SIGKILL' });
    for (const pid of pids) expect(pidAlive(pid)).toBe(false);
    await expectGone(lab.prefix);

    const t1 = Date.now();
    await lab.destroy();
    expect(Date.now() - t1).toBeLessThan(50);
    await expectGone(lab.prefix);
    expect(() => lab.spawn('host-a', 'true', [])).toThrow(/destroyed/);
  });
});

describe('two labs at once', () => {
  it('get different prefixes and subnets and do not interfere', async () => {
    const [one, two] = await Promise.all([newLab({ hosts: ['host-a', 'host-b'] }), newLab({ hosts: ['host-a', 'host-b'] })]);
    expect(one.prefix).not.toBe(two.prefix);
    expect(one.subnet).not.toBe(two.subnet);
    expect(one.host('host-a').netns).not.toBe(two.host('host-a').netns);

    const servers = [one, two].map((lab) => nodeIn(lab, 'host-a', ECHO_SERVER, [lab.host('host-a').address, '0', lab.prefix]));
    const ports = await Promise.all(servers.map((s) => firstLine(s).then(Number)));
    expect(await rootEcho(one.host('host-a').address, ports[0]!, 'x')).toBe(`${one.prefix}:x\n`);
    expect(await rootEcho(two.host('host-a').address, ports[1]!, 'y')).toBe(`${two.prefix}:y\n`);
    // A host of one lab cannot reach the other lab's subnet: it has no route there.
    const across = nodeIn(one, 'host-b', ECHO_CLIENT, [two.host('host-a').address, String(ports[1]), 'z']);
    expect(await exited(across)).toEqual({ code: 1, signal: null });

    await one.destroy();
    await expectGone(one.prefix);
    expect(await rootEcho(two.host('host-a').address, ports[1]!, 'still')).toBe(`${two.prefix}:still\n`);
    expect((await listNetnsObjects(two.prefix)).namespaces).toHaveLength(2);
    await two.destroy();
    await expectGone(two.prefix);
  });
});

describe('a failure half way', () => {
  it('removes what it made, keeps what it did not make, and names the step and ip\'s error', async () => {
    // A namespace of that name already exists (say, made by hand): host-b's namespace cannot be added.
    const prefix = testPrefix();
    await runFile('ip', ['netns', 'add', `${prefix}-host-b`]);
    const err = await NetnsLab.create({ hosts: ['host-a', 'host-b', 'host-c'], prefix }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetnsError);
    expect((err as NetnsError).step).toBe(`add namespace ${prefix}-host-b`);
    expect((err as Error).message).toMatch(new RegExp(`ip netns add ${prefix}-host-b.*File exists`));
    expect(await listNetnsObjects(prefix)).toEqual({ namespaces: [`${prefix}-host-b`], links: [] });
    await runFile('ip', ['netns', 'delete', `${prefix}-host-b`]);
    await expectGone(prefix);
  });

  it('fails at the veth of the second host when its name is taken, and leaves nothing of its own', async () => {
    const prefix = testPrefix();
    await runFile('ip', ['link', 'add', `${prefix}v1`, 'type', 'bridge']); // any link of that name
    const err = await NetnsLab.create({ hosts: ['host-a', 'host-b'], prefix }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetnsError);
    expect((err as NetnsError).step).toBe(`create veth ${prefix}v1 for ${prefix}-host-b`);
    expect((err as Error).message).toMatch(/ip link add .*File exists/);
    expect(await listNetnsObjects(prefix)).toEqual({ namespaces: [], links: [`${prefix}v1`] });
    await runFile('ip', ['link', 'delete', `${prefix}v1`]);
    await expectGone(prefix);
  });

  it('refuses bad host names, prefixes and subnets before making anything', async () => {
    const prefix = testPrefix();
    const cases: Array<[Parameters<typeof NetnsLab.create>[0], string, RegExp]> = [
      [{ hosts: ['host-a', 'a/b'], prefix }, 'check the host names', /"a\/b" is not a host name/],
      [{ hosts: ['host-a', 'host-a'], prefix }, 'check the host names', /given twice/],
      [{ hosts: [], prefix }, 'check the host names', /at least one host/],
      [{ hosts: ['host-a'], prefix: 'xx1' }, 'use the prefix', /"xx1" is not a lab prefix/],
      [{ hosts: ['host-a'], prefix, subnet: '10.97.5.0/33' }, 'use the subnet', /not an IPv4 subnet/],
      [{ hosts: ['host-a'], prefix, subnet: '10.97.5.7/24' }, 'use the subnet', /host bits set.*10\.97\.5\.0\/24/],
      [{ hosts: ['host-a'], prefix, subnet: '127.0.0.0/24' }, 'use the subnet', /overlaps 127\.0\.0\.1\/8 on lo/],
    ];
    for (const [opts, stepName, message] of cases) {
      const err = await NetnsLab.create(opts).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NetnsError);
      expect((err as NetnsError).step).toBe(stepName);
      expect((err as Error).message).toMatch(message);
    }
    await expectGone(prefix);
  });

  it('refuses an explicit subnet that another lab is using', async () => {
    const lab = await newLab({ hosts: ['host-a'] });
    const prefix = testPrefix();
    for (let i = 0; i < 2; i++) {
      // Refused twice: the first refusal did not release the subnet the first lab holds.
      const err = await NetnsLab.create({ hosts: ['host-a'], prefix, subnet: lab.subnet }).catch((e: unknown) => e);
      expect((err as NetnsError).step).toBe('use the subnet');
      expect((err as Error).message).toContain(lab.subnet);
      await expectGone(prefix);
    }
    await lab.destroy();
    // Once freed, the subnet can be used again.
    const again = await newLab({ hosts: ['host-a'], prefix, subnet: lab.subnet });
    expect(again.subnet).toBe(lab.subnet);
    await again.destroy();
    await expectGone(prefix);
  });
});

describe('removeNetnsLeftovers', () => {
  it('cleans up a lab whose object was lost, processes included', async () => {
    let lost: NetnsLab | null = await newLab({ hosts: ['host-a', 'host-b'] });
    const prefix = lost.prefix;
    const sleeper = lost.spawn('host-b', 'sleep', ['300'], { stdio: 'ignore' });
    const sleeperExit = exited(sleeper);
    lost = null; // as if its owner crashed
    const removed = await removeNetnsLeftovers(prefix);
    expect(removed).toEqual({
      namespaces: [`${prefix}-host-a`, `${prefix}-host-b`],
      links: [`${prefix}br`, `${prefix}v0`, `${prefix}v1`],
    });
    expect(await sleeperExit).toEqual({ code: null, signal: 'SIGTERM' });
    await expectGone(prefix);
    expect(await removeNetnsLeftovers(prefix)).toEqual({ namespaces: [], links: [] });
  });

  it('refuses prefixes that could match what is not a lab\'s', async () => {
    for (const p of ['', 'ml', 'x', 'eth', 'veth0']) {
      await expect(removeNetnsLeftovers(p)).rejects.toThrow(/Refusing/);
    }
  });
});

describe('the netns-hosts CLI', () => {
  function cliRun(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, ['--import', 'tsx', cli, ...args], { cwd: repo, timeout: 60_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
      });
    });
  }

  function cliUp(args: string[]): { child: ChildProcess; json: Promise<{ prefix: string; subnet: string; hosts: Array<{ name: string; netns: string; address: string }> }> } {
    const child = spawn(process.execPath, ['--import', 'tsx', cli, 'up', ...args], { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] });
    const json = new Promise<never>((resolve, reject) => {
      let out = '';
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        try {
          resolve(JSON.parse(out) as never);
        } catch {
          /* not all of it yet */
        }
      });
      child.once('exit', (code) => reject(new Error(`up exited (${code}) before printing its JSON: ${err}`)));
    });
    return { child, json };
  }

  it('up prints the lab as JSON and removes it on SIGTERM; list shows it meanwhile', async () => {
    const prefix = testPrefix();
    // A subnet outside the labs' default range, unused on this machine.
    const used = JSON.stringify(await ipJson<unknown>(['-4', 'addr']));
    const net = [...Array(50).keys()].map((i) => `10.98.${200 + i}`).find((n) => !used.includes(`"${n}.`))!;
    const { child, json } = cliUp(['host-a', 'host-b', '--prefix', prefix, '--subnet', `${net}.0/24`]);
    const lab = await json;
    expect(lab).toEqual({
      prefix,
      subnet: `${net}.0/24`,
      bridge: { name: `${prefix}br`, address: `${net}.1` },
      hosts: [
        { name: 'host-a', netns: `${prefix}-host-a`, address: `${net}.11`, rootVeth: `${prefix}v0` },
        { name: 'host-b', netns: `${prefix}-host-b`, address: `${net}.12`, rootVeth: `${prefix}v1` },
      ],
    });
    const listed = await cliRun(['list', '--prefix', prefix]);
    expect(listed.code).toBe(0);
    expect(JSON.parse(listed.stdout)).toEqual({
      namespaces: [`${prefix}-host-a`, `${prefix}-host-b`],
      links: [`${prefix}br`, `${prefix}v0`, `${prefix}v1`],
    });
    const exit = exited(child);
    child.kill('SIGTERM');
    expect(await exit).toEqual({ code: 0, signal: null });
    await expectGone(prefix);
    expect(JSON.parse((await cliRun(['list', '--prefix', prefix])).stdout)).toEqual({ namespaces: [], links: [] });
  });

  it('down removes what a killed up left behind', async () => {
    const prefix = testPrefix();
    const { child, json } = cliUp(['host-a', '--prefix', prefix]);
    await json;
    const exit = exited(child);
    child.kill('SIGKILL'); // no chance to clean up
    await exit;
    expect((await listNetnsObjects(prefix)).namespaces).toEqual([`${prefix}-host-a`]);
    const down = await cliRun(['down', '--prefix', prefix]);
    expect(down.code).toBe(0);
    expect(JSON.parse(down.stdout)).toEqual({ namespaces: [`${prefix}-host-a`], links: [`${prefix}br`, `${prefix}v0`] });
    await expectGone(prefix);
  });

  it('answers bad usage with a clear error and exit code 2', async () => {
    const cases: Array<[string[], RegExp]> = [
      [[], /Say what to do: up, down or list/],
      [['bogus'], /Unknown command "bogus"/],
      [['up'], /"up" needs at least one host name/],
      [['down'], /"down" needs --prefix P/],
      [['down', '--prefix', 'eth'], /a lab prefix starts with "ml"/],
      [['list', 'extra'], /"list" takes --prefix only/],
      [['up', 'host-a', '--bogus'], /Unknown option '--bogus'/],
    ];
    for (const [args, message] of cases) {
      const r = await cliRun(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toContain('Usage:');
      expect(r.stdout).toBe('');
    }
  });

  it('up with a bad host name fails with exit code 1, naming the problem, and makes nothing', async () => {
    const prefix = testPrefix();
    const r = await cliRun(['up', 'Host_A', '--prefix', prefix]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/could not check the host names: "Host_A" is not a host name/);
    await expectGone(prefix);
  });
});
