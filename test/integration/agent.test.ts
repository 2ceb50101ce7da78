// MigLab agents on loopback, as real processes: access (token, pinning, revocation), refusals of
// bad input, guests driven through RemoteHost, a migration between two agents, and an agent
// restarted under its running guest.
import { request } from 'node:https';
import { join } from 'node:path';
import { writeFile, mkdir, symlink } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { connectAgent, AgentConnectError } from '../../electron/engine/hosts/remote/connect';
import { AgentRpcError, type RpcPeer } from '../../electron/engine/hosts/remote/rpc';
import { AGENT_PROTOCOL_VERSION } from '../../electron/engine/hosts/remote/protocol';
import { RemoteHost } from '../../electron/engine/hosts/remote/remote-host';
import { Lab } from '../../electron/engine/lab/lab';
import { LabNetwork } from '../../electron/engine/network/lab-network';
import { LabCa } from '../../electron/engine/tls/certs';
import { migrateGuest } from '../../electron/engine/migration/orchestrator';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { requireLabGuest } from '../helpers/lab';
import { pidAlive, qemuPids } from '../helpers/leaks';
import { qemuPidAlive } from '../../electron/engine/qemu/process';
import { completeDespiteTcgCrashes, expectOneCopyOn } from '../helpers/migration';
import { MIGLAB_BIN, startAgent, stopAgent, type AgentProcess } from '../helpers/agents';

const run = promisify(execFile);

let work: string;
let a: AgentProcess;
let b: AgentProcess;
let tokenA: string;
let tokenB: string;

const addrOf = (p: AgentProcess, token: string) => ({ url: p.info.url, token, fingerprint: p.info.fingerprint });

/** Another engine's token on an agent (`miglab agent token new`), connected. */
async function intruderOn(dataDir: string): Promise<RpcPeer> {
  const { stdout } = await run(process.execPath, [MIGLAB_BIN, 'agent', 'token', 'new', '--data-dir', dataDir, '--label', 'intruder', '--json']);
  const token = (JSON.parse(stdout) as { token: string }).token;
  const p = dataDir === join(work, 'a') ? a : b;
  return (await connectAgent(addrOf(p, token))).peer;
}

function httpGet(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { rejectUnauthorized: false, headers }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function healthUrl(p: AgentProcess): string {
  return p.info.url.replace('wss://', 'https://').replace('/v1/agent', '/v1/health');
}

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-agent');
  await mkdir(join(work, 'images'));
  await writeFile(join(work, 'images', 'vmlinuz'), 'not really a kernel');
  await writeFile(join(work, 'secret'), 'outside the library');
  await symlink(join(work, 'secret'), join(work, 'images', 'escape'));
  [a, b] = await Promise.all([
    startAgent({ name: 'agent-a', listen: '127.0.0.1:0', dataDir: join(work, 'a'), extra: ['--ports', '50100-50199', '--images', join(work, 'images'), '--max-guests', '2', '--max-memory', '1024'] }),
    startAgent({ name: 'agent-b', listen: '127.0.0.1:0', dataDir: join(work, 'b'), extra: ['--ports', '50200-50299'] }),
  ]);
  tokenA = a.info.pairingToken!;
  tokenB = b.info.pairingToken!;
  expect(tokenA).toMatch(/^mlt_/);
});

afterAll(async () => {
  await Promise.all([a && stopAgent(a), b && stopAgent(b)]);
  // The agents detach on SIGTERM: whatever guest a test left would still run, and must not.
  expect(await qemuPids(work)).toEqual([]);
  await removeDir(work);
});

describe('access to an agent', () => {
  it('refuses every request without a valid token with 401 and nothing else', async () => {
    for (const headers of [{} as Record<string, string>, { authorization: 'Bearer mlt_wrong' }, { authorization: tokenA }, { authorization: `Basic ${tokenA}` }]) {
      const r = await httpGet(healthUrl(a), headers);
      expect(r.status).toBe(401);
      expect(r.body).toBe('Unauthorized\n');
    }
    const ok = await httpGet(healthUrl(a), { authorization: `Bearer ${tokenA}` });
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toMatchObject({ name: 'agent-a', protocol: AGENT_PROTOCOL_VERSION });
    // a WebSocket upgrade without the token
    const ws = new WebSocket(a.info.url, { rejectUnauthorized: false });
    const status = await new Promise<number>((resolve) => {
      ws.once('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0));
      ws.once('open', () => resolve(101));
      ws.once('error', () => {});
    });
    ws.terminate();
    expect(status).toBe(401);
  });

  it('refuses a token with a clear error, and a certificate that does not match the pin', async () => {
    await expect(connectAgent({ ...addrOf(a, 'mlt_nope') })).rejects.toMatchObject({ kind: 'unauthorized', message: expect.stringMatching(/refused the token \(401\)/) });
    // B's fingerprint pinned for A: what a changed certificate looks like
    const err = await connectAgent({ ...addrOf(a, tokenA), fingerprint: b.info.fingerprint }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentConnectError);
    expect((err as AgentConnectError).kind).toBe('fingerprint');
    expect((err as Error).message).toContain(a.info.fingerprint);
    expect((err as Error).message).toContain('not the pinned');
    await expect(connectAgent({ ...addrOf(a, tokenA), fingerprint: 'zz' })).rejects.toThrow(/fingerprint/i);
  });

  it('drops the connections of a revoked token within a second, and refuses it after', async () => {
    const { stdout } = await run(process.execPath, [MIGLAB_BIN, 'agent', 'token', 'new', '--data-dir', join(work, 'a'), '--label', 'temp', '--json']);
    const made = JSON.parse(stdout) as { id: string; token: string };
    const { peer } = await connectAgent(addrOf(a, made.token));
    const closed = new Promise<string>((resolve) => peer.once('close', resolve));
    await run(process.execPath, [MIGLAB_BIN, 'agent', 'token', 'revoke', made.id, '--data-dir', join(work, 'a')]);
    expect(await Promise.race([closed, delay(3000, 'still open')])).toMatch(/token revoked/);
    await expect(connectAgent(addrOf(a, made.token))).rejects.toMatchObject({ kind: 'unauthorized' });
    const r = await httpGet(healthUrl(a), { authorization: `Bearer ${made.token}` });
    expect(r.status).toBe(401);
  });
});

describe('bad input to an agent', () => {
  let peer: RpcPeer;
  beforeAll(async () => {
    peer = (await connectAgent(addrOf(a, tokenA))).peer;
  });
  afterAll(() => peer.close());

  const refusal = async (method: string, params: unknown) => {
    const err = await peer.request(method, params).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(AgentRpcError);
    return err as AgentRpcError;
  };

  it('refuses unknown requests and malformed parameters, naming what is wrong', async () => {
    const unknown = await refusal('formatDisk', {});
    expect(unknown.code).toBe('unknown-method');
    expect(unknown.message).toMatch(/Unknown request "formatDisk": the agent answers .*startGuest/);
    const bad = await refusal('stopGuest', { name: 42 });
    expect(bad.code).toBe('invalid');
    expect(bad.message).toMatch(/name/);
    const extra = await refusal('ping', { sneaky: true });
    expect(extra.code).toBe('invalid');
    const spec = await refusal('startGuest', { spec: { name: 'x', memoryMiB: 3 } });
    expect(spec.code).toBe('invalid');
    expect(spec.message).toMatch(/memoryMiB/);
  });

  it('resolves image paths only inside its image library', async () => {
    for (const [kernel, why] of [
      ['/etc/passwd', /is absolute/],
      ['../secret', /climbs out/],
      ['images/../../secret', /climbs out/],
      ['escape', /leads out of the agent's image library/],
      ['nothing-here', /There is no kernel "nothing-here"/],
    ] as const) {
      const err = await refusal('startGuest', { spec: { name: 'img', boot: { kind: 'kernel', kernel } } });
      expect(err.message).toMatch(why);
    }
    const other = await connectAgent(addrOf(b, tokenB));
    const none = await other.peer.request('startGuest', { spec: { name: 'img', boot: { kind: 'disk', path: 'disk.qcow2' } } }).catch((e: Error) => e);
    other.peer.close();
    expect((none as Error).message).toMatch(/There is no disk image "disk.qcow2" in the agent's image library/);
  });

  it('keeps its limits on guests and memory', async () => {
    const err = await refusal('startGuest', { spec: { name: 'big', memoryMiB: 2048 } });
    expect(err.code).toBe('limit');
    expect(err.message).toMatch(/needs 2048 MiB.*1024 MiB/);
  });

  it('survives JSON that is not JSON, frames it does not know, and an oversized message', async () => {
    const raw = await connectAgent(addrOf(a, tokenA));
    const errors: unknown[] = [];
    raw.peer.on('event', (name, data) => name === 'error' && errors.push(data));
    const ws = (raw.peer as unknown as { ws: WebSocket }).ws;
    ws.send('{not json');
    ws.send(JSON.stringify({ t: 'req', id: 7, method: 'ping', params: {}, extra: 1 }));
    ws.send(Buffer.from([9, 0, 0, 0, 1, 65]), { binary: true });
    await delay(200);
    expect(errors).toContainEqual(expect.objectContaining({ code: 'invalid', message: expect.stringMatching(/not JSON/) }));
    expect(await raw.peer.request('ping')).toHaveProperty('at');
    const closed = new Promise<string>((resolve) => raw.peer.once('close', resolve));
    ws.send('x'.repeat(2 * 1024 * 1024));
    expect(await closed).toMatch(/1009/);
    // the agent is still up for everyone else
    expect(await peer.request('ping')).toHaveProperty('at');
  });
});

describe('guests through agents', () => {
  let lab: Lab;
  let network: LabNetwork;

  beforeAll(async () => {
    network = new LabNetwork({ subnet: '10.81.0.0/24' });
    const [ha, hb] = await Promise.all([
      RemoteHost.connect({ name: 'host-a', ...addrOf(a, tokenA), network }),
      RemoteHost.connect({ name: 'host-b', ...addrOf(b, tokenB), network }),
    ]);
    lab = new Lab([ha, hb], { network });
  });
  afterAll(async () => {
    await lab?.dispose();
  });

  it('boots a guest on an agent: console, labload and QMP travel over the connection; QMP is filtered', async () => {
    // Another engine says hello to agent-a after this lab did: the lab switch still stays with
    // the engine that starts the guest (it used to go to the last hello).
    const intruder = await intruderOn(join(work, 'a'));
    const asked: string[] = [];
    intruder.handle(async (method) => {
      asked.push(method);
      throw new AgentRpcError('failed', 'not this engine');
    });
    const g = await lab.startGuest('host-a', { name: 'g1' }).finally(() => intruder.close());
    expect(asked).toEqual([]);
    await g.waitReady(90_000);
    expect(g.hostName).toBe('host-a');
    expect(g.console.text()).toMatch(/guest g1 up at 10\.81\.0\.10/);
    const before = g.labload!.heartbeats.count;
    await delay(300);
    expect(g.labload!.heartbeats.count).toBeGreaterThan(before + 5);
    const st = await g.qmp.execute<{ status: string }>('query-status');
    expect(st.status).toBe('running');
    await expect(g.qmp.execute('human-monitor-command', { 'command-line': 'info registers' })).rejects.toThrow(/does not pass QMP command "human-monitor-command"/);
    await expect(g.qmp.execute('migrate', { uri: 'exec:touch /tmp/pwned' })).rejects.toThrow(/only tcp:ADDRESS:PORT/);
    // The lab told its agents its hosts: a stream may go to their migration ports, not to a
    // service on the agent's loopback; and no query names the agent's files.
    await expect(g.qmp.execute('migrate', { uri: 'tcp:127.0.0.1:6379' })).rejects.toThrow(/not a migration port of a host in this engine's lab \(127\.0\.0\.1:50100-50199, 127\.0\.0\.1:50200-50299\)/);
    await expect(g.qmp.execute('query-block')).rejects.toThrow(/does not pass QMP command "query-block"/);
    expect(g.switchPort).not.toBeNull();
    expect(network.switch.portInfo().map((p) => p.host)).toContain('host-a');
  });

  it('migrates a guest from one agent to another; the guest carries on there', async () => {
    const r = await completeDespiteTcgCrashes(lab, 'g1', () =>
      migrateGuest({ guest: lab.host('host-a').guest('g1')!, from: lab.host('host-a'), to: lab.host('host-b'), options: { bandwidthMBps: 200 }, network }).result,
    );
    expect(r.status).toBe('completed');
    expect(r.passes.length).toBeGreaterThan(0);
    expect(r.network?.macMoves.map((m) => [m.fromHost, m.toHost])).toContainEqual(['host-a', 'host-b']);
    const g = await expectOneCopyOn(lab, 'g1', 'host-b');
    expect(lab.host('host-a').guest('g1')).toBeUndefined();
    const v = await g.labload!.verify({ timeoutMs: 60_000 });
    expect(v.bad).toBe(0);
  });

  it('encrypts a migration between agents with QEMU TLS and the lab CA; a certificate from another CA is refused', async () => {
    const ha = lab.host('host-a');
    const hb = lab.host('host-b');
    // A foreign CA on host-a: the TLS handshake must fail and the guest stay on host-b.
    const foreign = await LabCa.loadOrCreate(join(work, 'foreign-ca'));
    await ha.installMigrationTls({ caCertPem: foreign.certPem, ...(await foreign.issue({ commonName: 'x', ipAddresses: [ha.address] })) });
    await lab.prepareMigrationTls(join(work, 'state'));
    await ha.installMigrationTls({ caCertPem: foreign.certPem, ...(await foreign.issue({ commonName: 'x', ipAddresses: [ha.address] })) });
    const refused = await migrateGuest({ guest: hb.guest('g1')!, from: hb, to: ha, options: { tls: true }, network }).result;
    expect(refused.status).toBe('failed');
    expect(refused.runningOn).toBe('host-b');
    expect(`${refused.reason} ${refused.qemuMessage}`).toMatch(/certificate|TLS|issuer/i);
    await expectOneCopyOn(lab, 'g1', 'host-b');

    await lab.prepareMigrationTls(join(work, 'state'));
    // Another engine's token installs its own CA on host-a: this lab's CA there stays.
    const intruder = await intruderOn(join(work, 'a'));
    await intruder.request('installTls', { caCertPem: foreign.certPem, ...(await foreign.issue({ commonName: 'x', ipAddresses: [ha.address] })) });
    intruder.close();
    const r = await completeDespiteTcgCrashes(lab, 'g1', () =>
      migrateGuest({ guest: hb.guest('g1')!, from: hb, to: ha, options: { tls: true }, network }).result,
    );
    expect(r.tls).toBe(true);
    await expectOneCopyOn(lab, 'g1', 'host-a');
  });

  it('puts an emulated link in the path: the stream goes through the relay at its bandwidth', async () => {
    const ha = lab.host('host-a');
    const hb = lab.host('host-b');
    const r = await completeDespiteTcgCrashes(lab, 'g1', () =>
      migrateGuest({ guest: ha.guest('g1')!, from: ha, to: hb, options: { bandwidthMBps: 1000, link: { bandwidthMBps: 40, latencyMs: 5 } }, network }).result,
    );
    expect(r.link).not.toBeNull();
    expect(r.link!.profile).toEqual({ bandwidthMBps: 40, latencyMs: 5, lossPercent: 0 });
    // Everything QEMU sent went through the relay, no faster than the emulated link.
    expect(r.link!.bytesForward).toBeGreaterThanOrEqual(r.transferredBytes! * 0.95);
    const mbps = r.transferredBytes! / 1e6 / (r.totalTimeMs! / 1000);
    expect(mbps).toBeLessThan(46);
    await expectOneCopyOn(lab, 'g1', 'host-b');
  });

  it('an agent restarted under a running guest reattaches it; the engine reconnects and the guest never stopped', async () => {
    const g = lab.host('host-b').guest('g1')!;
    const pid = g.pid!;
    const host = lab.host('host-b') as RemoteHost;
    const states: string[] = [];
    host.on('connection' as never, ((s: string) => states.push(s)) as never);
    await stopAgent(b, 'SIGKILL');
    expect(pidAlive(pid)).toBe(true);
    await delay(500);
    expect(host.connection).toBe('reconnecting');
    const t0 = performance.now();
    b = await startAgent({ name: 'agent-b', listen: new URL(b.info.url).host, dataDir: join(work, 'b'), extra: ['--ports', '50200-50299'] });
    expect(b.info.adopted).toEqual(['g1']);
    expect(b.info.pairingToken).toBeNull();
    while (host.connection !== 'connected' && performance.now() - t0 < 15_000) await delay(50);
    expect(host.connection).toBe('connected');
    expect(states).toEqual(['reconnecting', 'connected']);
    expect(host.guest('g1')).toBe(g); // the same guest object, now on the new connection
    expect(g.exit).toBeNull();
    const before = g.labload!.heartbeats.count;
    await delay(500);
    expect(g.labload!.heartbeats.count).toBeGreaterThan(before + 5);
    expect((await g.qmp.execute<{ status: string }>('query-status')).status).toBe('running');
    // The restarted agent knows whose guest it is: another token neither sees nor stops it.
    const intruder = await intruderOn(join(work, 'b'));
    expect(await intruder.request('guests')).toEqual([]);
    await expect(intruder.request('stopGuest', { name: 'g1' })).rejects.toMatchObject({ code: 'forbidden' });
    intruder.close();
    expect(pidAlive(pid)).toBe(true);
    await g.stop();
    // Reparented when its first agent died, it may linger as a zombie of a pid 1 that never reaps.
    expect(qemuPidAlive(pid)).toBe(false);
  });
});
