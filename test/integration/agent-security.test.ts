// A real `miglab agent` on loopback shared by two engines' tokens: each reaches only what it made
// (ports, relays, guests, events, streams), migration streams go only to the lab's hosts and
// migration ports, QMP passes named commands with checked arguments, a library disk boots through
// its own overlay and is never written, and connections are capped.
import { execFile } from 'node:child_process';
import { readdir, readFile, realpath, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectAgent } from '../../electron/engine/hosts/remote/connect';
import { LabCa } from '../../electron/engine/tls/certs';
import type { GuestDescriptor } from '../../electron/engine/hosts/remote/protocol';
import { AgentRpcError, type RpcPeer } from '../../electron/engine/hosts/remote/rpc';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { MIGLAB_BIN, startAgent, stopAgent, type AgentProcess } from '../helpers/agents';
import { qemuPids } from '../helpers/leaks';
import { fingerprintOf, openModes, writeBootDisk } from '../helpers/boot-disk';

const run = promisify(execFile);
const PORTS = { first: 50600, last: 50699 };
const LAB = [{ address: '127.0.0.1', ports: PORTS }];

let work: string;
let agent: AgentProcess;
let tokenA: string;
let tokenB: string;
let a: RpcPeer;
let b: RpcPeer;

const addr = (p: AgentProcess, token: string) => ({ url: p.info.url, token, fingerprint: p.info.fingerprint });

async function newToken(dataDir: string, label: string): Promise<string> {
  const { stdout } = await run(process.execPath, [MIGLAB_BIN, 'agent', 'token', 'new', '--data-dir', dataDir, '--label', label, '--json']);
  return (JSON.parse(stdout) as { token: string }).token;
}

/** The refusal of a request: its code and message (null when it succeeded). */
async function refusal(peer: RpcPeer, method: string, params?: unknown): Promise<{ code: string; message: string } | null> {
  return peer.request(method, params).then(
    () => null,
    (e: unknown) => {
      expect(e).toBeInstanceOf(AgentRpcError);
      return { code: (e as AgentRpcError).code, message: (e as AgentRpcError).message };
    },
  );
}

const codeOf = async (peer: RpcPeer, method: string, params?: unknown) => (await refusal(peer, method, params))?.code ?? 'ok';

async function consoleUntil(peer: RpcPeer, handle: number, pattern: RegExp, timeoutMs = 60_000): Promise<string> {
  const t0 = performance.now();
  for (;;) {
    const text = await peer.request<string>('consoleHistory', { handle });
    if (pattern.test(text) || performance.now() - t0 > timeoutMs) return text;
    await delay(200);
  }
}

beforeAll(async () => {
  work = await makeTempDir('it-agent-sec');
  await mkdir(join(work, 'images'));
  await writeBootDisk(join(work, 'images', 'boot.raw'));
  agent = await startAgent({
    name: 'agent-sec', listen: '127.0.0.1:0', dataDir: join(work, 'agent'),
    extra: ['--ports', `${PORTS.first}-${PORTS.last}`, '--images', join(work, 'images'), '--max-guests', '3', '--max-memory', '1024'],
  });
  tokenA = agent.info.pairingToken!;
  tokenB = await newToken(join(work, 'agent'), 'other-lab');
  a = (await connectAgent(addr(agent, tokenA))).peer;
  b = (await connectAgent(addr(agent, tokenB))).peer;
  await a.request('labPeers', { peers: LAB });
  await b.request('labPeers', { peers: LAB });
});

afterAll(async () => {
  for (const p of [a, b]) {
    if (!p || p.closed) continue;
    for (const g of await p.request<GuestDescriptor[]>('guests').catch(() => [])) await p.request('stopGuest', { name: g.name }, 30_000).catch(() => {});
    p.close();
  }
  if (agent) await stopAgent(agent);
  const left = await qemuPids(work);
  for (const pid of left) process.kill(pid, 'SIGKILL');
  await removeDir(work);
  expect(left, 'QEMU processes left behind').toEqual([]);
});

describe('where migration streams may go', () => {
  it('refuses migrate to anything but a lab host\'s migration port: loopback services, metadata, 0.0.0.0, IPv6, odd spellings', async () => {
    const handle = 2_000_000; // no such guest: what passes the filter is answered not-found
    const migrate = (uri: string, peer = a) => codeOf(peer, 'qmp', { handle, command: 'migrate', args: { uri } });
    for (const uri of [
      'tcp:127.0.0.1:6379', 'tcp:169.254.169.254:80', 'tcp:0.0.0.0:50600', 'tcp:[::1]:50600', 'tcp:[::ffff:127.0.0.1]:50600',
      'tcp:localhost:50600', 'tcp:127.1:50600', 'tcp:0x7f.0.0.1:50600', 'tcp:127.000.000.001:50600', 'tcp:127.0.0.1:050600',
      'tcp:10.0.0.1:50600', 'tcp:127.0.0.1:50700', 'tcp:127.0.0.1:22', 'tcp:224.0.0.1:50600', 'tcp:255.255.255.255:50600',
    ]) {
      expect([uri, await migrate(uri)]).toEqual([uri, 'forbidden']);
    }
    const why = await refusal(a, 'qmp', { handle, command: 'migrate', args: { uri: 'tcp:127.0.0.1:6379' } });
    expect(why!.message).toMatch(/127\.0\.0\.1:6379 is refused: it is not a migration port of a host in this engine's lab \(127\.0\.0\.1:50600-50699\)/);
    // A lab host's migration port passes the filter (and then finds no guest 2000000).
    expect(await migrate('tcp:127.0.0.1:50650')).toBe('not-found');
    // A connection that was never told its lab sends nowhere.
    const fresh = (await connectAgent(addr(agent, tokenA))).peer;
    const untold = await refusal(fresh, 'qmp', { handle, command: 'migrate', args: { uri: 'tcp:127.0.0.1:50650' } });
    fresh.close();
    expect(untold).toMatchObject({ code: 'forbidden', message: expect.stringMatching(/has not been told the hosts of this engine's lab/) });
  });

  it('refuses lab hosts that are no host: 0.0.0.0, multicast, broadcast, metadata, link-local for a loopback agent, ports below 1024', async () => {
    for (const peer of [
      { address: '0.0.0.0', ports: PORTS }, { address: '224.0.0.251', ports: PORTS }, { address: '255.255.255.255', ports: PORTS },
      { address: '169.254.169.254', ports: { first: 1024, last: 65535 } }, { address: '169.254.10.10', ports: PORTS },
      { address: '127.0.0.1', ports: { first: 1, last: 65535 } }, { address: '127.0.0.1', ports: { first: 50700, last: 50600 } },
      { address: '::1', ports: PORTS }, { address: 'localhost', ports: PORTS }, { address: '127.000.0.1', ports: PORTS },
    ]) {
      const r = await refusal(a, 'labPeers', { peers: [...LAB, peer] });
      expect([peer.address, r?.code]).toEqual([peer.address, 'forbidden']);
    }
    // Refused as a whole: the lab it was told before still holds.
    expect(await codeOf(a, 'qmp', { handle: 2_000_000, command: 'migrate', args: { uri: 'tcp:127.0.0.1:50650' } })).toBe('not-found');
  });

  it('listens for an incoming migration only on its own address and a port it gave this token', async () => {
    const handle = 2_000_000;
    const incoming = (uri: string, peer = a) => codeOf(peer, 'qmp', { handle, command: 'migrate-incoming', args: { uri } });
    const mine = await a.request<number>('allocateMigrationPort');
    const theirs = await b.request<number>('allocateMigrationPort');
    try {
      expect(await incoming(`tcp:127.0.0.1:${mine}`)).toBe('not-found'); // passes the filter
      expect(await incoming(`tcp:127.0.0.1:${theirs}`)).toBe('forbidden'); // B's port
      expect(await incoming(`tcp:127.0.0.1:${PORTS.last}`)).toBe('forbidden'); // never allocated
      expect(await incoming(`tcp:0.0.0.0:${mine}`)).toBe('forbidden');
      expect(await incoming('tcp:127.0.0.1:6379')).toBe('forbidden');
      expect(await incoming(`tcp:[::]:${mine}`)).toBe('forbidden');
      const why = await refusal(a, 'qmp', { handle, command: 'migrate-incoming', args: { uri: `tcp:127.0.0.1:${theirs}` } });
      expect(why!.message).toMatch(/was not allocated to this engine/);
    } finally {
      await a.request('releaseMigrationPort', { port: mine });
      await b.request('releaseMigrationPort', { port: theirs });
    }
  });
});

describe('the QMP filter', () => {
  const handle = 2_000_000;
  const qmp = (command: string, args?: Record<string, unknown>) => codeOf(a, 'qmp', { handle, command, ...(args ? { args } : {}) });

  it('passes the queries the engine uses and refuses the others, query-block and query-chardev first', async () => {
    for (const c of ['query-status', 'query-migrate', 'query-migrate-parameters', 'query-migrate-capabilities']) expect([c, await qmp(c)]).toEqual([c, 'not-found']);
    for (const c of ['query-block', 'query-chardev', 'query-blockstats', 'query-named-block-nodes', 'query-fdsets', 'query-qmp-schema', 'query-command-line-options', 'query-pci']) {
      expect([c, await qmp(c)]).toEqual([c, 'forbidden']);
    }
    expect(await qmp('query-status', { x: 1 })).toBe('forbidden');
  });

  it('passes the parameters and capabilities the engine sets, each value checked, and nothing else', async () => {
    for (const args of [
      { 'max-bandwidth': 200_000_000, 'downtime-limit': 300, 'tls-creds': '', 'tls-hostname': '' },
      { 'tls-creds': 'miglab-tls-server' },
      { 'tls-creds': 'miglab-tls-client', 'tls-hostname': '10.0.0.2' },
      { 'xbzrle-cache-size': 64 * 2 ** 20, 'multifd-channels': 4, 'cpu-throttle-initial': 20 },
    ]) {
      expect([args, await qmp('migrate-set-parameters', args)]).toEqual([args, 'not-found']);
    }
    for (const args of [
      { 'tls-authz': 'x' }, { 'tls-creds': 'evil' }, { 'tls-hostname': 'a b' }, { 'tls-hostname': 'x'.repeat(300) },
      { 'block-bitmap-mapping': [] }, { mode: 'cpr-reboot' }, { 'direct-io': true }, { 'x-checkpoint-delay': 1 },
      { 'max-bandwidth': -1 }, { 'max-bandwidth': '100' }, { 'downtime-limit': 1.5 }, { 'multifd-channels': 1000 },
      { 'xbzrle-cache-size': 2 ** 50 }, { 'cpu-throttle-initial': 100 }, { 'multifd-compression': 'qpl' }, { unknown: 1 },
    ]) {
      expect([args, await qmp('migrate-set-parameters', args)]).toEqual([args, 'forbidden']);
    }
    const caps = (capabilities: unknown) => qmp('migrate-set-capabilities', { capabilities });
    expect(await caps([{ capability: 'events', state: true }, { capability: 'xbzrle', state: false }, { capability: 'auto-converge', state: true }])).toBe('not-found');
    for (const list of [
      [{ capability: 'x-colo', state: true }], [{ capability: 'mapped-ram', state: true }], [{ capability: 'block', state: true }],
      [{ capability: 'events', state: 'yes' }], [{ capability: 'events', state: true, extra: 1 }], [{ capability: 'nope', state: true }], 'events',
    ]) {
      expect([list, await caps(list)]).toEqual([list, 'forbidden']);
    }
  });

  it('checks the arguments of every other command: migrate flags, announce-self timings, nothing for cont or quit', async () => {
    expect(await qmp('migrate', { uri: 'tcp:127.0.0.1:50650', resume: false })).toBe('not-found');
    expect(await qmp('migrate', { uri: 'tcp:127.0.0.1:50650', blk: true })).toBe('forbidden');
    expect(await qmp('migrate', { uri: 'tcp:127.0.0.1:50650', resume: 'yes' })).toBe('forbidden');
    expect(await qmp('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 })).toBe('not-found');
    expect(await qmp('announce-self', { initial: 50, max: 550, rounds: 1e9, step: 100 })).toBe('forbidden');
    expect(await qmp('announce-self', { initial: 50, max: 550, rounds: 5, step: 100, interfaces: ['x'] })).toBe('forbidden');
    expect(await qmp('migrate-continue', { state: 'pre-switchover' })).toBe('not-found');
    expect(await qmp('migrate-continue', { state: 'active' })).toBe('forbidden');
    for (const c of ['cont', 'stop', 'quit', 'system_powerdown', 'migrate_cancel']) {
      expect([c, await qmp(c)]).toEqual([c, 'not-found']);
      expect([c, await qmp(c, { 'command-line': 'x' })]).toEqual([c, 'forbidden']);
    }
  });
});

describe('two engines on one agent', () => {
  let guest: GuestDescriptor;
  const eventsOfB: string[] = [];
  let framesOfB = 0;
  const library = () => join(work, 'images', 'boot.raw');
  const overlays = () => readdir(join(work, 'agent', 'overlays')).catch(() => [] as string[]);

  beforeAll(async () => {
    b.on('event', (name, data) => eventsOfB.push(`${name} ${JSON.stringify(data).slice(0, 80)}`));
    b.on('stream', () => framesOfB++);
  });

  it('boots a library disk through its own overlay: the guest writes, the library file is opened read-only and never changes', async () => {
    const before = await fingerprintOf(library());
    guest = await a.request<GuestDescriptor>('startGuest', { spec: { name: 'disk-a', memoryMiB: 64, boot: { kind: 'disk', path: 'boot.raw', format: 'raw' } } }, 60_000);
    expect(guest.spec).toMatchObject({ boot: { kind: 'disk', path: 'boot.raw', format: 'raw' } }); // as the peer named it
    const text = await consoleUntil(a, guest.handle, /MIGLAB-DISK-(WROTE|FAILED)/);
    expect(text).toContain('MIGLAB-DISK-WROTE'); // the guest's write held (it reads it back)
    const real = await realpath(library());
    const modes = await openModes(guest.pid!, real);
    expect(modes.length).toBeGreaterThan(0); // QEMU has the library file open, as the backing file
    expect(modes.filter((m) => m !== 0)).toEqual([]); // and only for reading
    expect(await overlays()).toHaveLength(1);
    const argv = (await readFile(`/proc/${guest.pid}/cmdline`, 'utf8')).split('\0');
    expect(argv.find((x) => x.startsWith('file='))).toMatch(new RegExp(`^file=${join(work, 'agent', 'overlays')}/disk-a-[0-9a-f]{8}\\.qcow2,format=qcow2,`));
    expect(await fingerprintOf(library())).toBe(before);
  });

  it('gives an incoming migration destination its own overlay too', async () => {
    const dst = await a.request<GuestDescriptor>('startGuest', { spec: { name: 'disk-in', memoryMiB: 64, boot: { kind: 'disk', path: 'boot.raw' } }, incoming: true }, 60_000);
    try {
      expect(await overlays()).toHaveLength(2);
      const modes = await openModes(dst.pid!, await realpath(library()));
      expect(modes.length).toBeGreaterThan(0);
      expect(modes.filter((m) => m !== 0)).toEqual([]);
      expect(dst.spec).toMatchObject({ boot: { path: 'boot.raw' } });
    } finally {
      await a.request('stopGuest', { name: 'disk-in' }, 30_000);
    }
    expect(await overlays()).toHaveLength(1);
  });

  it("keeps one engine's guest from the other: not listed, forbidden to stop, query, read, mark or give TLS; no events or bytes reach it", async () => {
    const h = guest.handle;
    expect((await b.request<GuestDescriptor[]>('guests')).map((g) => g.name)).toEqual([]);
    expect((await a.request<GuestDescriptor[]>('guests')).map((g) => g.name)).toEqual(['disk-a']);
    for (const [method, params] of [
      ['stopGuest', { name: 'disk-a' }],
      ['qmp', { handle: h, command: 'query-status' }],
      ['qmp', { handle: h, command: 'stop' }],
      ['consoleHistory', { handle: h }],
      ['markReady', { handle: h }],
      ['addTlsCreds', { handle: h, endpoint: 'server' }],
    ] as const) {
      const r = await refusal(b, method, params);
      expect([method, r?.code]).toEqual([method, 'forbidden']);
    }
    expect((await refusal(b, 'stopGuest', { name: 'disk-a' }))!.message).toMatch(/belongs to another engine's token/);
    // Bytes B writes to A's guest's console are dropped; A's guest still runs.
    b.sendStream('console', h, Buffer.from('x'.repeat(100)));
    expect((await a.request<{ status: string }>('qmp', { handle: h, command: 'query-status' })).status).toMatch(/running|paused/);
    expect(eventsOfB.filter((e) => /^(guest-|qmp-event|port-closed)/.test(e))).toEqual([]);
    expect(framesOfB).toBe(0);
  });

  it("keeps one engine's ports and link relays from the other", async () => {
    const port = await a.request<number>('allocateMigrationPort');
    const relay = await a.request<{ port: number }>('openLinkRelay', { targetPort: port, profile: { bandwidthMBps: 10 } });
    try {
      expect(await codeOf(b, 'releaseMigrationPort', { port })).toBe('forbidden');
      expect(await codeOf(b, 'openLinkRelay', { targetPort: port })).toBe('forbidden');
      for (const action of ['cut', 'close', 'set', 'stats', 'restore']) {
        expect([action, await codeOf(b, 'linkRelay', { port: relay.port, action, ...(action === 'set' ? { profile: { bandwidthMBps: 1 } } : {}) })]).toEqual([action, 'forbidden']);
      }
      // A relay forwards only to a port the agent handed out: not to a service on the agent's host.
      expect(await codeOf(b, 'openLinkRelay', { targetPort: Number(new URL(agent.info.url).port) })).toBe('forbidden');
      expect(await codeOf(b, 'releaseMigrationPort', { port: relay.port })).toBe('not-found'); // a relay's port: close the relay
      // A's things are intact and A's to use.
      expect(await a.request('linkRelay', { port: relay.port, action: 'stats' })).toMatchObject({ cut: false });
    } finally {
      await a.request('linkRelay', { port: relay.port, action: 'close' });
      await a.request('releaseMigrationPort', { port });
    }
  });

  it("lets one engine hold at most half the agent's migration ports: the other still gets one", async () => {
    const held: number[] = [];
    let refusal: { code: string; message: string } | null = null;
    try {
      for (let i = 0; i <= PORTS.last - PORTS.first && !refusal; i++) {
        const got = await b.request<number>('allocateMigrationPort').catch((e: AgentRpcError) => e);
        if (got instanceof AgentRpcError) refusal = { code: got.code, message: got.message };
        else held.push(got);
      }
      expect(held).toHaveLength((PORTS.last - PORTS.first + 1) / 2);
      expect(refusal).toMatchObject({ code: 'limit' });
      expect(refusal!.message).toMatch(/holds 50 of agent agent-sec's 100 migration ports, its share \(half\): release/);
      const mine = await a.request<number>('allocateMigrationPort'); // A's migrations go on
      await a.request('releaseMigrationPort', { port: mine });
    } finally {
      for (const port of held) await b.request('releaseMigrationPort', { port });
    }
  });

  it('stops the guest for its owner and removes its overlay', async () => {
    await a.request('stopGuest', { name: 'disk-a' }, 30_000);
    expect(await overlays()).toEqual([]);
    expect(await qemuPids(work)).toEqual([]);
  });
});

describe('connections', () => {
  it('caps connections per token (429) and in all (503), saying why; other tokens still get in', async () => {
    const dir = join(work, 'cap-agent');
    const capped = await startAgent({ name: 'agent-cap', listen: '127.0.0.1:0', dataDir: dir, extra: ['--ports', '50700-50709'] });
    const peers: RpcPeer[] = [];
    try {
      const tokens = [capped.info.pairingToken!];
      for (let i = 0; i < 4; i++) tokens.push(await newToken(dir, `t${i}`));
      for (let i = 0; i < 16; i++) peers.push((await connectAgent(addr(capped, tokens[0]!))).peer);
      const over = await connectAgent(addr(capped, tokens[0]!)).then(() => 'connected', (e: Error) => e.message);
      expect(over).toMatch(/answered 429 to the connection: This token has 16 connections open to agent agent-cap, its limit/);
      for (const t of tokens.slice(1, 4)) for (let i = 0; i < 16; i++) peers.push((await connectAgent(addr(capped, t))).peer);
      expect(peers).toHaveLength(64);
      const full = await connectAgent(addr(capped, tokens[4]!)).then(() => 'connected', (e: Error) => e.message);
      expect(full).toMatch(/answered 503 to the connection: Agent agent-cap has 64 connections open, its limit/);
      // One leaves: the next gets in.
      const leaving = peers.pop()!;
      const closed = new Promise((r) => leaving.once('close', r));
      leaving.close();
      await closed;
      await delay(100);
      const next = await connectAgent(addr(capped, tokens[4]!));
      peers.push(next.peer);
      expect(await next.peer.request('ping')).toHaveProperty('at');
    } finally {
      for (const p of peers) p.close();
      await stopAgent(capped);
    }
  });
});

// The TLS dirs per token: a second engine's installTls leaves the first's CA in place.
describe('TLS credentials per token', () => {
  it("keeps each token's lab CA: another token's installTls does not replace it", async () => {
    const caA = await LabCa.loadOrCreate(join(work, 'ca-a'));
    const caB = await LabCa.loadOrCreate(join(work, 'ca-b'));
    await a.request('installTls', { caCertPem: caA.certPem, ...(await caA.issue({ commonName: 'a', ipAddresses: ['127.0.0.1'] })) });
    await b.request('installTls', { caCertPem: caB.certPem, ...(await caB.issue({ commonName: 'b', ipAddresses: ['127.0.0.1'] })) });
    const dirs = await readdir(join(work, 'agent', 'qemu-tls'));
    const cas = await Promise.all(dirs.map((d) => readFile(join(work, 'agent', 'qemu-tls', d, 'ca-cert.pem'), 'utf8')));
    expect(cas.sort()).toEqual([caA.certPem, caB.certPem].sort());
  });
});
