// `miglab agent` started with no options at all, as the README's first example: where it listens,
// where it keeps its identity and tokens, which ports it hands out and which limits it keeps;
// `miglab agent token list/new/revoke` on that same default data dir; and a revoked token's
// connections dropped within a second.
//
// The agent runs in a network namespace of its own (root), so that its default address,
// 127.0.0.1:7800, is its own loopback and no other agent on this machine is in the way; a small
// relay in the namespace lets this test reach it. HOME is a temp dir, so its default data dir
// (~/.local/state/miglab/agent) is not the user's.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { hostname, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectAgent } from '../../electron/engine/hosts/remote/connect';
import { AgentRpcError, type RpcPeer } from '../../electron/engine/hosts/remote/rpc';
import { NetnsLab } from '../../electron/engine/network/netns';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { MIGLAB_BIN } from '../helpers/agents';
import { runMiglab } from '../helpers/cli';
import { requireLabGuest } from '../helpers/lab';
import { qemuPids } from '../helpers/leaks';
import type { AgentStartInfo } from '../../electron/engine/hosts/remote/protocol';

const DEFAULT_PORT = 7800;

// Relays TCP from the namespace's own address to the agent on the namespace's loopback.
const RELAY = `
const net = require('net');
const [address, port] = process.argv.slice(1);
const server = net.createServer((c) => {
  const u = net.connect(Number(port), '127.0.0.1');
  c.pipe(u); u.pipe(c);
  c.on('error', () => u.destroy()); u.on('error', () => c.destroy());
  c.on('close', () => u.destroy()); u.on('close', () => c.destroy());
});
server.listen(Number(port), address, () => console.log('ready'));
`;

let home: string;
let env: NodeJS.ProcessEnv;
let netns: NetnsLab;
let agent: ChildProcess;
let agentExited: Promise<number | null>;
let agentLog = '';
let relay: ChildProcess;
let info: AgentStartInfo;
let agentUrl: string; // the agent as this test reaches it, through the relay
let peer: RpcPeer;

const dataDir = () => join(home, '.local', 'state', 'miglab', 'agent');

function firstLine(child: ChildProcess, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} printed nothing within 30 s: ${agentLog}`)), 30_000);
    createInterface({ input: child.stdout! }).once('line', (line) => {
      clearTimeout(timer);
      resolve(line);
    });
    child.once('exit', (code) => reject(new Error(`${what} exited (${code}) before printing a line: ${agentLog}`)));
  });
}

/** The refusal a request ends in (fails the test if it succeeds). */
async function refusal(method: string, params: unknown): Promise<AgentRpcError> {
  const err = await peer.request(method, params).then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(AgentRpcError);
  return err as AgentRpcError;
}

beforeAll(async () => {
  const image = await requireLabGuest();
  home = await makeTempDir('it-agent-home');
  // No state dir of its own: the agent must fall back to HOME's. The lab guest stays where the
  // set-up built it (<cache>/guest/<key>/vmlinux).
  // (An undefined variable is left out of a child's environment.)
  env = { ...process.env, HOME: home, MIGLAB_CACHE_DIR: dirname(dirname(dirname(image.kernel))), MIGLAB_STATE_DIR: undefined, XDG_STATE_HOME: undefined };
  netns = await NetnsLab.create({ hosts: ['host-a'] });
  const address = netns.host('host-a').address;

  agent = netns.spawn('host-a', process.execPath, [MIGLAB_BIN, 'agent', '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  agent.stderr!.on('data', (d: Buffer) => (agentLog += d.toString()));
  agentExited = new Promise((resolve) => agent.once('exit', (code) => resolve(code)));
  info = JSON.parse(await firstLine(agent, 'miglab agent')) as AgentStartInfo;

  relay = netns.spawn('host-a', process.execPath, ['-e', RELAY, address, String(DEFAULT_PORT)], { stdio: ['ignore', 'pipe', 'pipe'] });
  expect(await firstLine(relay, 'the relay')).toBe('ready');
  agentUrl = `wss://${address}:${DEFAULT_PORT}/v1/agent`;
  peer = (await connectAgent({ url: agentUrl, token: info.pairingToken!, fingerprint: info.fingerprint })).peer;
}, 120_000);

afterAll(async () => {
  if (peer && !peer.closed) {
    for (const g of await peer.request<Array<{ name: string }>>('guests').catch(() => [])) await peer.request('stopGuest', { name: g.name }).catch(() => {});
    peer.close();
  }
  if (agent && agent.exitCode === null && agent.signalCode === null) {
    agent.kill('SIGTERM');
    await agentExited;
  }
  relay?.kill('SIGTERM');
  await netns?.destroy();
  if (home) {
    expect(await qemuPids(home)).toEqual([]);
    await removeDir(home);
  }
});

describe('miglab agent without options', () => {
  it('listens on 127.0.0.1:7800, named after this machine, and keeps its identity and tokens in ~/.local/state/miglab/agent', async () => {
    expect(info.url).toBe(`wss://127.0.0.1:${DEFAULT_PORT}/v1/agent`);
    expect(info.name).toBe(hostname().split('.')[0]!.toLowerCase());
    expect(info.pairingToken).toMatch(/^mlt_/);
    expect(info.adopted).toEqual([]);
    // Everything it wrote is under HOME's state dir: key, certificate, tokens, the image library.
    expect(await readdir(home)).toEqual(['.local']);
    expect(await readdir(join(home, '.local', 'state', 'miglab'))).toEqual(['agent']);
    expect((await readdir(dataDir())).sort()).toEqual(expect.arrayContaining(['images', 'tls', 'tokens.json']));
    const tokens = JSON.parse(await readFile(join(dataDir(), 'tokens.json'), 'utf8')) as { tokens: Array<{ label: string }> };
    expect(tokens.tokens.map((t) => t.label)).toEqual(['pairing']);
    expect(await readFile(join(dataDir(), 'tokens.json'), 'utf8')).not.toContain(info.pairingToken!);
    // It answers on that address (reached through the relay; the pin checked the certificate it printed).
    expect(await peer.request('ping')).toHaveProperty('at');
    expect(await peer.request('info')).toMatchObject({ name: info.name, address: '127.0.0.1' });
  });

  it('runs at most 8 guests, and gives its guests at most 75% of this machine\'s RAM', async () => {
    // Guests waiting for an incoming migration: real QEMU processes that do not run a CPU.
    const names = Array.from({ length: 8 }, (_, i) => `idle${i}`);
    await Promise.all(names.map((name) => peer.request('startGuest', { spec: { name, memoryMiB: 64 }, incoming: true })));
    expect((await peer.request<Array<{ name: string; state: string }>>('guests')).map((g) => g.name).sort()).toEqual(names);
    expect(await qemuPids(home)).toHaveLength(8);
    const ninth = await refusal('startGuest', { spec: { name: 'idle8', memoryMiB: 64 }, incoming: true });
    expect(ninth.code).toBe('limit');
    expect(ninth.message).toContain('runs or is starting 8 guests, its limit (--max-guests 8)');

    await peer.request('stopGuest', { name: 'idle7' });
    const maxMiB = Math.floor((totalmem() / 2 ** 20) * 0.75);
    const left = maxMiB - 7 * 64;
    expect(left + 1, 'a guest just above the limit must fit in a guest spec (at most 64 GiB)').toBeLessThanOrEqual(65536);
    const big = await refusal('startGuest', { spec: { name: 'big', memoryMiB: left + 1 }, incoming: true });
    expect(big.code).toBe('limit');
    expect(big.message).toContain(`needs ${left + 1} MiB, but agent ${info.name} has ${left} MiB of its ${maxMiB} MiB guest memory left (--max-memory)`);
    for (const name of names.slice(0, 7)) await peer.request('stopGuest', { name });
    expect(await qemuPids(home)).toEqual([]);
  });
});

describe('miglab agent token, on the default data dir', () => {
  interface Listed {
    id: string;
    label: string;
    createdAt: string;
    revokedAt: string | null;
  }
  const list = async (): Promise<{ text: string; json: Listed[] }> => {
    const [text, json] = await Promise.all([runMiglab(['agent', 'token', 'list'], env), runMiglab(['agent', 'token', 'list', '--json'], env)]);
    expect(text.code, text.stderr).toBe(0);
    expect(json.code, json.stderr).toBe(0);
    return { text: text.stdout, json: JSON.parse(json.stdout) as Listed[] };
  };

  it('list shows each token by id and label, never the token itself, after new and after revoke', async () => {
    const before = await list();
    expect(before.json).toEqual([{ id: expect.stringMatching(/^[0-9a-f]{8}$/), label: 'pairing', createdAt: expect.any(String), revokedAt: null }]);
    const pairingId = before.json[0]!.id;
    expect(before.text).toMatch(new RegExp(`^${pairingId}  pairing  made \\S+\\n$`));

    const made = await runMiglab(['agent', 'token', 'new', '--label', 'laptop of ana', '--json'], env);
    expect(made.code, made.stderr).toBe(0);
    const { id, token } = JSON.parse(made.stdout) as { id: string; token: string };
    const after = await list();
    expect(after.json.map((t) => [t.id, t.label, t.revokedAt])).toEqual([[pairingId, 'pairing', null], [id, 'laptop of ana', null]]);
    expect(after.text.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^${pairingId}  pairing  made `)), expect.stringMatching(new RegExp(`^${id}  laptop of ana  made \\S+$`))]);

    const revoked = await runMiglab(['agent', 'token', 'revoke', id], env);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(revoked.stdout).toContain(`Token ${id} is revoked`);
    const end = await list();
    expect(end.json.find((t) => t.id === id)!.revokedAt).toEqual(expect.any(String));
    expect(end.json.find((t) => t.id === pairingId)!.revokedAt).toBeNull();
    expect(end.text).toMatch(new RegExp(`^${id}  laptop of ana  made \\S+  REVOKED \\S+$`, 'm'));
    // No secret in any listing: neither the tokens nor the hashes the file keeps.
    const hashes = (JSON.parse(await readFile(join(dataDir(), 'tokens.json'), 'utf8')) as { tokens: Array<{ sha256: string }> }).tokens.map((t) => t.sha256);
    for (const out of [before, after, end].flatMap((l) => [l.text, JSON.stringify(l.json)])) {
      for (const secret of [info.pairingToken!, token, ...hashes]) expect(out).not.toContain(secret);
      expect(out).not.toContain('mlt_');
    }
  });

  it('a revoked token\'s connections close within a second of the revoke; other tokens\' stay', async () => {
    const delays: number[] = [];
    for (let round = 0; round < 3; round++) {
      const made = JSON.parse((await runMiglab(['agent', 'token', 'new', '--label', `round ${round}`, '--json'], env)).stdout) as { id: string; token: string };
      const conn = (await connectAgent({ url: agentUrl, token: made.token, fingerprint: info.fingerprint })).peer;
      const closed = new Promise<{ at: number; reason: string }>((resolve) => conn.once('close', (reason: string) => resolve({ at: Date.now(), reason })));
      const r = await runMiglab(['agent', 'token', 'revoke', made.id], env);
      expect(r.code, r.stderr).toBe(0);
      const { at, reason } = await closed;
      // The revoke's own moment is the time it wrote into the token file.
      const file = JSON.parse(await readFile(join(dataDir(), 'tokens.json'), 'utf8')) as { tokens: Array<{ id: string; revokedAt: string }> };
      const revokedAt = Date.parse(file.tokens.find((t) => t.id === made.id)!.revokedAt);
      expect(reason).toContain('token revoked');
      delays.push(at - revokedAt);
      await expect(connectAgent({ url: agentUrl, token: made.token, fingerprint: info.fingerprint })).rejects.toMatchObject({ kind: 'unauthorized' });
    }
    console.log(`revoke to close: ${delays.map((d) => `${d} ms`).join(', ')}`);
    for (const d of delays) {
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThan(1000);
    }
    expect(peer.closed).toBe(false); // the pairing token's connection was not touched
    expect(await peer.request('ping')).toHaveProperty('at');
  });
});

// After the token listings above: this adds a token of its own.
describe('miglab agent without options: its migration ports', () => {
  it('hands out migration ports from 49152-49407, half of them at most to one token', async () => {
    const labs: Array<{ id: string; peer: RpcPeer }> = [];
    for (const label of ['second lab', 'third lab']) {
      const made = JSON.parse((await runMiglab(['agent', 'token', 'new', '--label', label, '--json'], env)).stdout) as { id: string; token: string };
      labs.push({ id: made.id, peer: (await connectAgent({ url: agentUrl, token: made.token, fingerprint: info.fingerprint })).peer });
    }
    const [second, third] = labs.map((l) => l.peer) as [RpcPeer, RpcPeer];
    const held = new Map<RpcPeer, number[]>([[peer, []], [second, []], [third, []]]);
    /** Allocates until refused; the refusal. */
    const takeAll = async (who: RpcPeer): Promise<Error> => {
      for (let i = 0; i < 300; i++) {
        const got = await who.request<number>('allocateMigrationPort').catch((e: Error) => e);
        if (got instanceof Error) return got;
        held.get(who)!.push(got);
      }
      throw new Error('300 ports handed out, more than the range has');
    };
    try {
      const first = await takeAll(peer);
      expect(held.get(peer)).toHaveLength(128);
      expect(first.message).toContain("holds 128 of agent");
      expect(first.message).toContain("256 migration ports, its share (half)");
      const rest = await takeAll(second);
      expect(held.get(second)).toHaveLength(128);
      expect(rest.message).toContain('its share (half)');
      // Two labs hold them all: a third finds none left.
      const none = await takeAll(third);
      expect(held.get(third)).toHaveLength(0);
      expect(none.message).toContain('No free TCP port on 127.0.0.1 between 49152 and 49407');
      const all = [...held.get(peer)!, ...held.get(second)!];
      expect(Math.min(...all)).toBe(49152);
      expect(Math.max(...all)).toBe(49407);
      expect(new Set(all).size).toBe(256);
    } finally {
      for (const [who, ports] of held) for (const port of ports) await who.request('releaseMigrationPort', { port });
      for (const lab of labs) {
        lab.peer.close();
        await runMiglab(['agent', 'token', 'revoke', lab.id], env);
      }
    }
  });
});
