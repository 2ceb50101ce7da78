// A real `miglab agent` on loopback under a bounded-time fuzz of its WebSocket API, plus the bad
// input agent.test.ts does not try: HTTP and TLS abuse, pipelining, reused ids, error sizes, a
// refused relay's port, concurrent starts, and every dangerous QMP command at a real guest.
// The fuzz checks, all along: one reply per request that has an id, known error codes, short
// messages without stack traces or source paths, the agent alive, its memory bounded.
// Reproduce a fuzz failure with AGENT_FUZZ_SEED=<seed printed at the start> (AGENT_FUZZ_MS sets
// how long it runs; the workers share the agent, so a replay repeats the messages, not the timing).
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { readFile, mkdir } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join, resolve } from 'node:path';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { connectAgent } from '../../electron/engine/hosts/remote/connect';
import {
  AGENT_MAX_MESSAGE_BYTES,
  AgentRequestSchemas,
  QMP_ALLOWED,
  WireMessageSchema,
  type AgentErrorCode,
  type AgentMethod,
  type GuestDescriptor,
} from '../../electron/engine/hosts/remote/protocol';
import { AgentRpcError, type RpcPeer } from '../../electron/engine/hosts/remote/rpc';
import { parseTcpUri } from '../../electron/engine/hosts/remote/lab-peers';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { MIGLAB_BIN, startAgent, stopAgent, type AgentProcess } from '../helpers/agents';
import { requireLabGuest } from '../helpers/lab';
import { qemuPids } from '../helpers/leaks';
import { Rng } from '../helpers/rng';

const FUZZ_MS = Number(process.env.AGENT_FUZZ_MS) || 8000;
const SEED = Number(process.env.AGENT_FUZZ_SEED) || (Math.random() * 0xffff_ffff) >>> 0;
const WHY = `(AGENT_FUZZ_SEED=${SEED})`;
const WORKERS = 4;
/** The protocol's limit on an error message (WireMessageSchema): a longer one the engine drops. */
const MAX_ERROR_MESSAGE = 8192;
const REPO_ROOT = resolve(__dirname, '..', '..');
/** Every code an agent may answer with; a Record so a new code in protocol.ts must be added here. */
const KNOWN_CODES: Record<AgentErrorCode, true> = {
  invalid: true, 'unknown-method': true, forbidden: true, 'not-found': true, limit: true,
  'rate-limited': true, failed: true, disconnected: true, timeout: true,
};
const METHODS = Object.keys(AgentRequestSchemas) as AgentMethod[];
/** Request ids the tests count from: far from the ids connectAgent's own peer uses. */
const FIRST_ID = 1_000_000;

let work: string;
let agent: AgentProcess;
let token: string;
/** The fuzz workers' token: another engine's, which must reach nothing of `token`'s. */
let fuzzToken: string;
/** The agent's migration ports (--ports): the lab every connection is told (labPeers). */
const LAB_PORTS = { first: 50400, last: 50499 };
const LAB = [{ address: '127.0.0.1', ports: LAB_PORTS }];
/** What `token`'s engine holds while the fuzz runs: a migration port and a link relay to it. */
let victim: { port: number; relayPort: number } | null = null;
/** Requests whose refusal the oracle demanded by the rules of issue 12, by rule (printed). */
const ruleChecks: Record<string, number> = {};
const checked = (rule: string) => (ruleChecks[rule] = (ruleChecks[rule] ?? 0) + 1);
let agentGone = false;

const address = (t = token) => ({ url: agent.info.url, token: t, fingerprint: agent.info.fingerprint });
const agentPort = () => Number(new URL(agent.info.url).port);
const healthUrl = () => agent.info.url.replace('wss://', 'https://').replace('/v1/agent', '/v1/health');

// ---- what an answer from the agent must never be ----

/** Stack frames, or paths of the source tree: what an error must not carry to a peer. */
function leakIn(text: string): string | null {
  if (/\n\s+at \S/.test(text) || /\bat (async )?\S+ \((file:|\/)/.test(text)) return 'a stack trace';
  if (text.includes(REPO_ROOT)) return `the source tree's path ${REPO_ROOT}`;
  if (/node_modules|\.(ts|mjs|cjs|js):\d+/.test(text)) return 'a source file location';
  return null;
}

/** Problems seen while talking to the agent, grouped by kind so a flood of one stays readable. */
class Problems {
  private readonly byKind = new Map<string, { count: number; example: string }>();
  add(kind: string, example: string): void {
    const p = this.byKind.get(kind);
    if (p) p.count++;
    else this.byKind.set(kind, { count: 1, example: example.length > 400 ? `${example.slice(0, 400)}…` : example });
  }
  summary(): Record<string, string> {
    return Object.fromEntries([...this.byKind].map(([k, v]) => [k, `${v.count}x, e.g. ${v.example}`]));
  }
}

interface Reply {
  t: 'res';
  id: number;
  ok: boolean;
  result?: unknown;
  error?: { code: string; message: string };
}

/** What the protocol says the answer to a text frame must be. */
interface Oracle {
  /** The id a reply must carry; null: no reply is due. */
  id: number | null;
  /** Codes it may be answered with ('ok' for success); rate-limited is always allowed. Null: any. */
  codes: string[] | null;
  /** startGuest booting a kernel or disk: the library is empty, so it can never succeed. */
  neverOk: boolean;
}

// The agent's rules, written out again here (not imported), for what must be refused.
/** The QMP commands the engine sends through an agent. */
const ENGINE_QMP = new Set([
  'cont', 'stop', 'quit', 'system_powerdown', 'announce-self', 'migrate', 'migrate-incoming', 'migrate_cancel',
  'migrate-continue', 'migrate-set-capabilities', 'migrate-set-parameters',
  'query-status', 'query-migrate', 'query-migrate-parameters', 'query-migrate-capabilities',
]);
const BAD_PARAMETER_KEYS = ['tls-authz', 'block-bitmap-mapping', 'mode', 'direct-io', 'x-checkpoint-delay', 'no-such-parameter'];
const BAD_CAPABILITIES = ['x-colo', 'mapped-ram', 'block', 'dirty-bitmaps', 'background-snapshot', 'rdma-pin-all', 'x-ignore-shared'];
const NO_ARGUMENTS = new Set(['cont', 'stop', 'quit', 'system_powerdown', 'migrate_cancel', 'query-status', 'query-migrate', 'query-migrate-parameters', 'query-migrate-capabilities']);

/** The port of tcp:127.0.0.1:PORT written plainly, or null. */
function loopbackPort(uri: unknown): number | null {
  const m = typeof uri === 'string' ? /^tcp:127\.0\.0\.1:([1-9]\d{0,4})$/.exec(uri) : null;
  return m ? Number(m[1]) : null;
}

/** Whether a QMP call must be refused whatever the guest: the rules of issue 12, checked on their own. */
function qmpMustBeRefused(command: string, args: Record<string, unknown> | undefined, crossToken: boolean): boolean {
  if (!ENGINE_QMP.has(command)) return true;
  const a = args ?? {};
  const keys = Object.keys(a);
  if (NO_ARGUMENTS.has(command)) return keys.length > 0;
  if (command === 'migrate') {
    const port = loopbackPort(a.uri);
    return port === null || port < LAB_PORTS.first || port > LAB_PORTS.last || keys.some((k) => !['uri', 'detach', 'resume'].includes(k));
  }
  if (command === 'migrate-incoming') {
    const port = loopbackPort(a.uri);
    return port === null || (crossToken && port === victim?.port) || keys.some((k) => k !== 'uri');
  }
  if (command === 'migrate-set-parameters') return keys.some((k) => BAD_PARAMETER_KEYS.includes(k));
  if (command === 'migrate-set-capabilities') {
    const list = a.capabilities;
    return Array.isArray(list) && list.some((c) => BAD_CAPABILITIES.includes((c as { capability?: string } | null)?.capability as string));
  }
  if (command === 'announce-self') return keys.includes('interfaces') || keys.includes('id');
  return false;
}

function oracleOf(text: string, crossToken: boolean): Oracle {
  const none: Oracle = { id: null, codes: null, neverOk: false };
  let v: { t?: unknown; id?: unknown; method?: unknown; params?: unknown } | null;
  try {
    v = JSON.parse(text) as typeof v;
  } catch {
    return none;
  }
  if (!v || typeof v !== 'object' || v.t !== 'req' || typeof v.id !== 'number' || !Number.isInteger(v.id) || v.id < 0) return none;
  const id = v.id;
  if (!WireMessageSchema.safeParse(v).success) return { id, codes: ['invalid'], neverOk: false };
  const method = v.method as string;
  if (!Object.hasOwn(AgentRequestSchemas, method)) return { id, codes: ['unknown-method'], neverOk: false };
  const parsed = AgentRequestSchemas[method as AgentMethod].safeParse(v.params);
  if (!parsed.success) return { id, codes: ['invalid'], neverOk: false };
  if (method === 'qmp') {
    const q = parsed.data as unknown as { command: string; args?: Record<string, unknown> };
    if (!QMP_ALLOWED.has(q.command)) return { id, codes: ['forbidden'], neverOk: false };
    if ((q.command === 'migrate' || q.command === 'migrate-incoming') && !parseTcpUri(q.args?.uri)) {
      return { id, codes: ['forbidden'], neverOk: false };
    }
    if (qmpMustBeRefused(q.command, q.args, crossToken)) {
      checked(`qmp ${q.command}`);
      return { id, codes: ['forbidden'], neverOk: false };
    }
  }
  if (crossToken && victim) {
    // Another token's port and relay: never released, cut, closed or forwarded to by this one.
    const p = parsed.data as { port?: unknown; targetPort?: unknown };
    const other = (codes: string[]): Oracle => (checked(`other token's ${method}`), { id, codes, neverOk: false });
    if (method === 'releaseMigrationPort' && p.port === victim.port) return other(['forbidden']);
    if (method === 'releaseMigrationPort' && p.port === victim.relayPort) return other(['not-found']);
    if (method === 'linkRelay' && p.port === victim.relayPort) return other(['forbidden']);
    if (method === 'openLinkRelay' && p.targetPort === victim.port) return other(['invalid', 'forbidden']);
  }
  if (method === 'startGuest') {
    const kind = ((v.params as { spec?: { boot?: { kind?: unknown } } }).spec?.boot as { kind?: unknown } | undefined)?.kind;
    if (kind === 'kernel' || kind === 'disk') return { id, codes: null, neverOk: true };
  }
  return { id, codes: null, neverOk: false };
}

/** One authenticated connection, used raw: every frame it sends and every answer is accounted for. */
class Wire {
  readonly ws: WebSocket;
  readonly replies = new Map<number, Reply[]>();
  readonly events: Array<{ event: string; data: unknown }> = [];
  /** Times each id was sent in a frame that is owed a reply. */
  readonly owed = new Map<number, number>();
  private readonly oracles = new Map<number, Oracle & { what: string }>();
  private readonly listeners = new Set<() => void>();
  private nextId = FIRST_ID;
  /** Closed by the test on purpose: its owed replies are not counted. */
  churned = false;
  closedWith: string | null = null;

  private constructor(
    readonly peer: RpcPeer,
    readonly problems: Problems,
    /** Another engine's token than the victim's. */
    readonly crossToken: boolean,
  ) {
    this.ws = (peer as unknown as { ws: WebSocket }).ws;
    this.ws.on('message', (data, isBinary) => {
      if (!isBinary) this.onText((data as Buffer).toString('utf8'));
    });
    this.ws.on('close', (code, reason) => {
      this.closedWith = `${code} ${reason.toString()}`;
      if (!this.churned) this.problems.add('the agent closed a connection', `${code} ${reason.toString()}`);
      this.notify();
    });
  }

  /** Connects with `t` and tells the agent the lab, as an engine does. */
  static async open(problems = new Problems(), t = token): Promise<Wire> {
    const { peer } = await connectAgent(address(t));
    await peer.request('labPeers', { peers: LAB });
    return new Wire(peer, problems, t !== token);
  }

  id(): number {
    return this.nextId++;
  }

  /**
   * Sends one text frame, noting the reply the protocol owes it. A frame over the agent's size
   * limit is not sent: the agent rightly closes the connection for it (agent.test.ts checks that).
   */
  send(text: string): boolean {
    if (Buffer.byteLength(text, 'utf8') > AGENT_MAX_MESSAGE_BYTES - 1024) return false;
    const o = oracleOf(Buffer.from(text, 'utf8').toString('utf8'), this.crossToken);
    if (o.id !== null) {
      this.owed.set(o.id, (this.owed.get(o.id) ?? 0) + 1);
      // Only ids this wire handed out are unique: a weird id (Number.MAX_SAFE_INTEGER, say) may be
      // in flight in several requests at once, and its replies cannot be told apart.
      if (o.id >= FIRST_ID && o.id < this.nextId) this.oracles.set(o.id, { ...o, what: text.length > 300 ? `${text.slice(0, 300)}…` : text });
    }
    this.ws.send(text);
    return true;
  }

  sendValue(v: unknown): boolean {
    return this.send(JSON.stringify(v));
  }

  async request(method: string, params?: unknown, timeoutMs = 15_000): Promise<Reply> {
    const id = this.id();
    this.sendValue({ t: 'req', id, method, ...(params === undefined ? {} : { params }) });
    await this.until(() => (this.replies.get(id)?.length ?? 0) > 0, timeoutMs, `the answer to "${method}" (id ${id})`);
    return this.replies.get(id)![0]!;
  }

  async until(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (done()) return;
    await new Promise<void>((resolvePromise, reject) => {
      const check = () => {
        if (!done()) return;
        clearTimeout(timer);
        this.listeners.delete(check);
        resolvePromise();
      };
      const timer = setTimeout(() => {
        this.listeners.delete(check);
        reject(new Error(`Waited ${timeoutMs} ms for ${what} from the agent${this.closedWith ? ` (connection closed: ${this.closedWith})` : ''}`));
      }, timeoutMs);
      this.listeners.add(check);
    });
  }

  allAnswered(): boolean {
    for (const [id, n] of this.owed) if ((this.replies.get(id)?.length ?? 0) < n) return false;
    return true;
  }

  /** Every id owed a reply got exactly as many as it was sent. */
  checkCounts(): void {
    for (const [id, n] of this.owed) {
      const got = this.replies.get(id)?.length ?? 0;
      const what = this.oracles.get(id)?.what ?? `a request with id ${id}`;
      if (got < n) this.problems.add('a request got no reply', `${what} (sent ${n}x, answered ${got}x)`);
      if (got > n) this.problems.add('a request got more than one reply', `${what} (sent ${n}x, answered ${got}x)`);
    }
  }

  close(abruptly = false): void {
    this.churned = true;
    if (abruptly) (this.ws as unknown as { _socket: Duplex })._socket.destroy();
    else this.peer.close();
  }

  private notify(): void {
    for (const l of [...this.listeners]) l();
  }

  private onText(text: string): void {
    let m: { t?: unknown; id?: unknown; ok?: unknown; error?: unknown; event?: unknown; data?: unknown };
    try {
      m = JSON.parse(text) as typeof m;
    } catch {
      this.problems.add('the agent sent a text frame that is not JSON', text.slice(0, 200));
      return;
    }
    if (m.t === 'res' && typeof m.id === 'number') {
      const r = m as Reply;
      const list = this.replies.get(r.id) ?? [];
      list.push(r);
      this.replies.set(r.id, list);
      this.checkReply(r);
    } else if (m.t === 'evt' && typeof m.event === 'string') {
      this.events.push({ event: m.event, data: m.data });
      if (m.event === 'error') this.checkError(m.data, 'an error event');
    } else if (m.t !== 'req') {
      this.problems.add('the agent sent a message outside its protocol', text.slice(0, 200));
    }
    this.notify();
  }

  private checkReply(r: Reply): void {
    const o = this.oracles.get(r.id);
    const about = o ? `the answer to ${o.what}` : `the answer to id ${r.id}`;
    if (!this.owed.has(r.id)) this.problems.add('a reply to an id that was never asked', JSON.stringify(r).slice(0, 300));
    if (r.ok === true) {
      if (!('result' in r)) this.problems.add('a success without a result', about);
    } else if (r.ok === false) {
      this.checkError(r.error, about);
    } else {
      this.problems.add('a reply that is neither ok nor an error', JSON.stringify(r).slice(0, 300));
    }
    if (!o) return;
    const code = r.ok ? 'ok' : (r.error?.code ?? '?');
    if (code === 'rate-limited') return;
    if (o.codes && !o.codes.includes(code)) {
      this.problems.add(`a request owed ${o.codes.join('/')} was answered otherwise`, `${about}: ${code}${r.error ? ` (${r.error.message.slice(0, 200)})` : ''}`);
    }
    if (o.neverOk && r.ok) this.problems.add('a guest started from a path outside the (empty) image library', about);
  }

  private checkError(e: unknown, about: string): void {
    const err = e as { code?: unknown; message?: unknown } | null;
    if (!err || typeof err.code !== 'string' || !Object.hasOwn(KNOWN_CODES, err.code)) {
      this.problems.add('an error with an unknown code', `${about}: ${JSON.stringify(err?.code)}`);
    }
    if (typeof err?.message !== 'string' || err.message.length === 0) {
      this.problems.add('an error without a message', about);
      return;
    }
    if (err.message.length > MAX_ERROR_MESSAGE) {
      this.problems.add(`an error message over the protocol's ${MAX_ERROR_MESSAGE} characters`, `${about}: ${err.message.length} characters: ${err.message.slice(0, 150)}`);
    }
    const leak = leakIn(err.message);
    if (leak) this.problems.add(`an error that shows ${leak}`, `${about}: ${err.message.slice(0, 300)}`);
  }
}

// ---- helpers on HTTP, TLS and the agent's guests ----

function httpGet(url: string, headers: Record<string, string>, via?: HttpsAgent): Promise<{ status: number; body: string }> {
  return new Promise((resolvePromise, reject) => {
    const req = httpsRequest(url, { rejectUnauthorized: false, headers, ...(via ? { agent: via } : {}) }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function tlsOpen(): Promise<TLSSocket> {
  return new Promise((resolvePromise, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port: agentPort(), rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    s.once('secureConnect', () => resolvePromise(s));
    s.once('error', reject);
  });
}

/** Writes raw bytes over TLS and returns whatever comes back before the agent closes (or 5 s). */
async function rawExchange(request: string): Promise<string> {
  const s = await tlsOpen();
  return new Promise((resolvePromise) => {
    let got = '';
    const done = () => {
      clearTimeout(timer);
      s.destroy();
      resolvePromise(got);
    };
    const timer = setTimeout(done, 5000);
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.once('end', done);
    s.once('close', done);
    s.on('error', done); // a reset after the answer is how a refusing server hangs up
    s.write(request);
  });
}

async function rssKiB(pid: number): Promise<number | null> {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Stops every guest the agent runs, then returns (and kills) any QEMU of ours still there. */
async function stopAllGuests(w: Wire): Promise<number[]> {
  const list = await w.request('guests');
  for (const g of (list.result as GuestDescriptor[] | undefined) ?? []) await w.request('stopGuest', { name: g.name }, 30_000);
  const t0 = performance.now();
  let left = await qemuPids(work);
  while (left.length && performance.now() - t0 < 10_000) {
    await delay(100);
    left = await qemuPids(work);
  }
  for (const pid of left) process.kill(pid, 'SIGKILL'); // QEMUs this test's agent started and lost
  return left;
}

const expectAlive = () => expect(agentGone, `the agent exited; its log: ${agent.log().slice(-3000)}`).toBe(false);

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-agent-fuzz');
  await mkdir(join(work, 'images')); // an empty library: no kernel or disk path can lead anywhere
  agent = await startAgent({
    name: 'agent-fz',
    listen: '127.0.0.1:0',
    dataDir: join(work, 'agent'),
    extra: ['--images', join(work, 'images'), '--max-guests', '1', '--max-memory', '512', '--ports', '50400-50499'],
  });
  void agent.exited.then(() => (agentGone = true));
  token = agent.info.pairingToken!;
  expect(token).toMatch(/^mlt_/);
  const made = await promisify(execFile)(process.execPath, [MIGLAB_BIN, 'agent', 'token', 'new', '--data-dir', join(work, 'agent'), '--label', 'fuzz', '--json']);
  fuzzToken = (JSON.parse(made.stdout) as { token: string }).token;
});

afterAll(async () => {
  // SIGTERM makes the agent detach from its guests: stop them first.
  let left: number[] = [];
  if (agent && !agentGone) {
    // Each token sees and stops only its own guests: the fuzz's token may have started some.
    const fuzzer = fuzzToken ? await Wire.open(undefined, fuzzToken).catch(() => null) : null;
    for (const g of ((await fuzzer?.request('guests').catch(() => null))?.result as GuestDescriptor[] | undefined) ?? []) {
      await fuzzer!.request('stopGuest', { name: g.name }, 30_000).catch(() => null);
    }
    fuzzer?.close();
    const w = await Wire.open().catch(() => null);
    if (w) left = await stopAllGuests(w).catch(() => []);
    w?.close();
  }
  if (agent) await stopAgent(agent);
  left.push(...(await qemuPids(work)));
  for (const pid of left) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // killed already by stopAllGuests
    }
  }
  await removeDir(work);
  expect(left, 'QEMU processes left behind by the agent').toEqual([]);
});

// ---- deterministic cases ----

describe('the agent under abuse at the HTTP, TLS and WebSocket level', () => {
  it('answers a 64 KiB Authorization header with 401 or 431 and keeps serving', async () => {
    const answer = await rawExchange(`GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${'A'.repeat(64 * 1024)}\r\n\r\n`);
    console.log(`64 KiB Authorization header: ${answer.split('\r\n')[0]}`);
    expect(answer).toMatch(/^HTTP\/1\.1 (401|431) /);
    // the same header on a WebSocket upgrade
    const upgrade = await rawExchange(
      `GET /v1/agent HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n` +
        `Sec-WebSocket-Key: ${Buffer.alloc(16, 1).toString('base64')}\r\nAuthorization: Bearer ${'A'.repeat(64 * 1024)}\r\n\r\n`,
    );
    expect(upgrade).toMatch(/^HTTP\/1\.1 (401|431) /);
    const w = await Wire.open();
    expect((await w.request('ping')).ok).toBe(true);
    w.close();
    expectAlive();
  });

  it('keeps serving others while clients hold connections open and say nothing', async () => {
    const quietTls = await tlsOpen(); // handshake done, not one byte of HTTP
    const quietTcp: Socket = netConnect({ host: '127.0.0.1', port: agentPort() }); // not even a handshake
    await new Promise((r) => quietTcp.once('connect', r));
    quietTcp.on('error', () => {});
    quietTls.on('error', () => {});
    try {
      const w = await Wire.open();
      expect((await w.request('ping')).ok).toBe(true);
      expect((await httpGet(healthUrl(), { authorization: `Bearer ${token}` })).status).toBe(200);
      w.close();
    } finally {
      quietTls.destroy();
      quietTcp.destroy();
    }
    expectAlive();
  });

  it('keeps serving after a connection sends garbage and dies in the middle of a frame', async () => {
    const w = await Wire.open();
    w.send('garbage {{{');
    w.ws.send(Buffer.from([0xff, 0, 0]), { binary: true });
    const sock = (w.ws as unknown as { _socket: Duplex })._socket;
    // A masked text frame announcing 1000 bytes, of which 100 arrive before the socket dies.
    sock.write(Buffer.concat([Buffer.from([0x81, 0x80 | 126, 0x03, 0xe8, 1, 2, 3, 4]), Buffer.alloc(100, 0x41)]));
    w.close(true);
    // bytes that are no WebSocket framing at all
    const g = await Wire.open();
    const gs = (g.ws as unknown as { _socket: Duplex })._socket;
    g.churned = true;
    gs.write(new Rng(SEED).bytes(4096));
    await delay(100);
    gs.destroy();
    const fresh = await Wire.open();
    expect((await fresh.request('ping')).ok).toBe(true);
    expect((await httpGet(healthUrl(), { authorization: `Bearer ${token}` })).status).toBe(200);
    expect(fresh.problems.summary()).toEqual({});
    fresh.close();
    expectAlive();
  });

  it('throttles a burst of 200 wrong tokens with 429, and still lets the right token in', async () => {
    const via = new HttpsAgent({ keepAlive: true, maxSockets: 4, rejectUnauthorized: false });
    const statuses = await Promise.all(Array.from({ length: 200 }, () => httpGet(healthUrl(), { authorization: 'Bearer mlt_wrong' }, via).then((r) => r.status)));
    via.destroy();
    const count = (s: number) => statuses.filter((x) => x === s).length;
    console.log(`wrong-token burst: ${count(401)} x 401, ${count(429)} x 429`);
    expect(statuses.filter((s) => s !== 401 && s !== 429)).toEqual([]);
    expect(count(429)).toBeGreaterThan(100);
    expect(statuses.indexOf(429)).toBeGreaterThanOrEqual(40); // the first failures are plain 401s
    // WebSocket upgrades with a wrong token are throttled too (the bucket refills 5 a second,
    // so of a few quick attempts one may still get its 401)
    const upgrades: string[] = [];
    for (let i = 0; i < 5; i++) upgrades.push(await connectAgent(address('mlt_still_wrong')).then(() => 'connected', (e: Error) => e.message));
    expect(upgrades.filter((m) => /answered 429/.test(m)).length, upgrades.join('\n')).toBeGreaterThanOrEqual(3);
    expect(upgrades.filter((m) => !/answered 429|\(401\)/.test(m))).toEqual([]);
    // the right token is never throttled
    const ok = await httpGet(healthUrl(), { authorization: `Bearer ${token}` });
    expect(ok.status).toBe(200);
    const w = await Wire.open();
    expect((await w.request('ping')).ok).toBe(true);
    w.close();
  });
});

describe('requests agent.test.ts does not try', () => {
  it('answers 1000 pipelined pings, each exactly once: a pong or rate-limited', async () => {
    const w = await Wire.open();
    const ids = Array.from({ length: 1000 }, () => w.id());
    for (const id of ids) w.sendValue({ t: 'req', id, method: 'ping' });
    await w.until(() => w.allAnswered(), 15_000, '1000 answers');
    await delay(200); // a second answer to any of them would be here by now
    expect(ids.filter((id) => w.replies.get(id)?.length !== 1)).toEqual([]);
    const codes = ids.map((id) => (w.replies.get(id)![0]!.ok ? 'ok' : w.replies.get(id)![0]!.error!.code));
    const pongs = codes.filter((c) => c === 'ok').length;
    console.log(`1000 pipelined pings: ${pongs} pongs, ${codes.filter((c) => c === 'rate-limited').length} rate-limited`);
    expect(codes.filter((c) => c !== 'ok' && c !== 'rate-limited')).toEqual([]);
    expect(pongs).toBeGreaterThanOrEqual(400); // the bucket holds a burst of 800
    w.checkCounts();
    expect(w.problems.summary()).toEqual({});
    w.close();
  });

  it('keeps every error message within the 8 KiB the protocol allows, whatever the request echoes', async () => {
    const w = await Wire.open();
    const wide = Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`field-${i}`, i]));
    const cases: Array<[string, Record<string, unknown>]> = [
      ['ping with 2000 unknown parameters (server.ts parse)', { t: 'req', method: 'ping', params: wide }],
      ['a request envelope with 2000 unknown keys (rpc.ts onMessage)', { t: 'req', method: 'ping', ...wide }],
      ['qmp migrate with a 100 000-character URI (server.ts checkQmp)', { t: 'req', method: 'qmp', params: { handle: 999_999, command: 'migrate', args: { uri: `exec:${'x'.repeat(100_000)}` } } }],
      ['openLinkRelay with a 20 000-character latency (link-relay.ts parseLinkProfile)', { t: 'req', method: 'openLinkRelay', params: { targetPort: 9, profile: { latencyMs: 'x'.repeat(20_000) } } }],
    ];
    const sizes: Record<string, string> = {};
    for (const [what, msg] of cases) {
      const id = w.id();
      w.sendValue({ ...msg, id });
      await w.until(() => (w.replies.get(id)?.length ?? 0) > 0, 10_000, what);
      const r = w.replies.get(id)![0]!;
      expect(r.ok, what).toBe(false);
      sizes[what] = `${r.error!.code}, ${r.error!.message.length} characters`;
    }
    w.close();
    console.log('error message sizes:', sizes);
    const over = Object.entries(sizes).filter(([, s]) => Number(/(\d+) characters/.exec(s)![1]) > MAX_ERROR_MESSAGE);
    expect(over, 'errors longer than the protocol allows: the engine drops them as malformed').toEqual([]);
  });

  it('an engine asking with too many parameters gets "invalid", not a timeout', async () => {
    // What the engine's own RpcPeer makes of an agent error over 8 KiB: it refuses the reply as
    // malformed, and the request waits for its timeout instead of failing with the real reason.
    const { peer } = await connectAgent(address());
    const wide = Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`field-${i}`, i]));
    const err = await peer.request('ping', wide, 2000).then(() => null, (e: unknown) => e);
    peer.close();
    expect(err).toBeInstanceOf(AgentRpcError);
    expect((err as AgentRpcError).code).toBe('invalid');
  });

  it('gives back the migration port of an openLinkRelay it refuses', async () => {
    const w = await Wire.open();
    const first = await w.request('allocateMigrationPort');
    expect(first.ok).toBe(true);
    await w.request('releaseMigrationPort', { port: first.result });
    // More refusals than the agent has ports (--ports 50400-50499: 100).
    const answers = new Map<string, number>();
    let after: Reply;
    try {
      for (let i = 0; i < 110; i++) {
        const r = await w.request('openLinkRelay', { targetPort: 9, profile: { latencyMs: -1 } });
        expect(r.ok).toBe(false);
        const kind = `${r.error!.code}: ${r.error!.message.slice(0, 70)}`;
        answers.set(kind, (answers.get(kind) ?? 0) + 1);
      }
      after = await w.request('allocateMigrationPort');
    } finally {
      // Give back whatever this test holds (ports it never held answer not-found), for the fuzz below.
      for (let port = 50400; port <= 50499; port++) await w.request('releaseMigrationPort', { port });
      w.close();
    }
    console.log('110 refused openLinkRelay:', Object.fromEntries(answers));
    expect(after.ok ? 'a port' : after.error!.message).toBe('a port');
    expect([...answers.keys()]).toHaveLength(1); // refused for the profile, every time
  });
});

describe('guest limits under concurrent requests', () => {
  it('runs no more guests than --max-guests, however many startGuest requests arrive at once', async () => {
    const w = await Wire.open();
    let outcome: { started: string[]; refused: string[] };
    try {
      const replies = await Promise.all(['race-a', 'race-b'].map((name) => w.request('startGuest', { spec: { name, memoryMiB: 128 } }, 60_000)));
      outcome = {
        started: replies.filter((r) => r.ok).map((r) => (r.result as GuestDescriptor).name),
        refused: replies.filter((r) => !r.ok).map((r) => r.error!.code),
      };
    } finally {
      expect(await stopAllGuests(w), 'QEMU processes the agent lost track of').toEqual([]);
      w.close();
    }
    console.log('2 concurrent startGuest with --max-guests 1:', outcome);
    expect(outcome.started).toHaveLength(1);
    expect(outcome.refused).toEqual(['limit']);
  });

  it('starts one QEMU when two startGuest requests name the same guest at once', async () => {
    const w = await Wire.open();
    let started = 0;
    let refusals: string[] = [];
    let left: number[];
    try {
      const replies = await Promise.all([1, 2].map(() => w.request('startGuest', { spec: { name: 'twin', memoryMiB: 128 } }, 60_000)));
      started = replies.filter((r) => r.ok).length;
      refusals = replies.filter((r) => !r.ok).map((r) => `${r.error!.code}: ${r.error!.message}`);
      console.log('2 concurrent startGuest "twin":', replies.map((r) => (r.ok ? 'ok' : `${r.error!.code}: ${r.error!.message.slice(0, 400)}`)));
    } finally {
      left = await stopAllGuests(w);
      w.close();
    }
    expect(left, 'QEMU processes still running after stopGuest "twin" (the agent lost track of one)').toEqual([]);
    // One of them, not none: the loser's set-up must not kill the winner's QEMU; and the loser
    // is told why (the name is taken, or the guest limit), not that its QEMU died.
    expect(started).toBe(1);
    expect(refusals.filter((m) => !/already runs|--max-guests/.test(m))).toEqual([]);
    expect.soft(w.problems.summary()).toEqual({});
  });
});

// ---- a real guest: the security property of the QMP filter ----

/** QMP commands that reach the host's files, processes or devices: the agent must pass none of them. */
const DANGEROUS_QMP: Array<[string, Record<string, unknown> | undefined]> = [
  ['human-monitor-command', { 'command-line': 'info registers' }],
  ['human-monitor-command', { 'command-line': 'migrate "exec:touch /tmp/miglab-fz-pwned"' }],
  ['object-add', { 'qom-type': 'memory-backend-file', id: 'fz', 'mem-path': '/etc/passwd', size: 4096 }],
  ['object-add', { 'qom-type': 'tls-creds-x509', id: 'fz', dir: '/etc', endpoint: 'server' }],
  ['object-add', { 'qom-type': 'secret', id: 'fz', file: '/etc/shadow' }],
  ['blockdev-add', { driver: 'file', 'node-name': 'fz', filename: '/etc/shadow' }],
  ['blockdev-add', { driver: 'raw', 'node-name': 'fz', file: { driver: 'file', filename: '/etc/passwd' } }],
  ['device_add', { driver: 'virtio-9p-pci', id: 'fz', fsdev: 'fz', mount_tag: 'fz' }],
  ['device_add', { driver: 'e1000', id: 'fz' }],
  ['device_del', { id: 'fz' }],
  ['netdev_add', { type: 'user', id: 'fz', hostfwd: [{ str: 'tcp::2222-:22' }] }],
  ['chardev-add', { id: 'fz', backend: { type: 'file', data: { out: '/tmp/miglab-fz-pwned' } } }],
  ['getfd', { fdname: 'fz' }],
  ['add-fd', {}],
  ['closefd', { fdname: 'fz' }],
  ['migrate', { uri: 'exec:touch /tmp/miglab-fz-pwned' }],
  ['migrate', { uri: 'exec:sh -c "id > /tmp/miglab-fz-pwned"' }],
  ['migrate', { uri: 'unix:/tmp/miglab-fz.sock' }],
  ['migrate', { uri: 'fd:3' }],
  ['migrate', { uri: 'fd:fz' }],
  ['migrate', { uri: 'file:/tmp/miglab-fz-dump' }],
  ['migrate', { uri: 'rdma:127.0.0.1:4444' }],
  ['migrate', { uri: 'EXEC:touch /tmp/miglab-fz-pwned' }],
  ['migrate', { uri: ' tcp:127.0.0.1:4444' }],
  ['migrate', { uri: 'tcp:127.0.0.1:4444\nexec:touch /tmp/miglab-fz-pwned' }],
  ['migrate', { uri: 'tcp:127.0.0.1:4444,exec:touch' }],
  ['migrate', { uri: 'tcp:127.0.0.1:4444', channels: [{ 'channel-type': 'main', addr: { transport: 'exec', args: ['touch', '/tmp/miglab-fz-pwned'] } }] }],
  ['migrate', { uri: ['tcp:127.0.0.1:4444'] }],
  ['migrate', {}],
  ['migrate', undefined],
  ['migrate-incoming', { uri: 'exec:cat /etc/shadow' }],
  ['migrate-incoming', { uri: 'unix:/tmp/miglab-fz.sock' }],
  ['migrate-incoming', { uri: 'defer' }],
  ['migrate-set-parameters', { 'tls-creds': 'fz-evil' }],
  ['migrate-set-parameters', { 'tls-creds': 'miglab-tls-server-x' }],
  ['migrate-set-parameters', { 'tls-authz': 'fz' }],
  ['migrate-set-parameters', { 'tls-authz': null }],
  ['migrate-set-parameters', { 'block-bitmap-mapping': [] }],
  ['migrate-set-parameters', { mode: 'cpr-reboot' }],
  ['migrate-set-parameters', { 'max-bandwidth': -1 }],
  ['migrate-set-parameters', { 'tls-hostname': 'a b' }],
  ['migrate-set-capabilities', { capabilities: [{ capability: 'x-colo', state: true }] }],
  ['migrate-set-capabilities', { capabilities: [{ capability: 'mapped-ram', state: true }] }],
  ['migrate-set-capabilities', { capabilities: [{ capability: 'events', state: 'on' }] }],
  ['migrate', { uri: 'tcp:127.0.0.1:6379' }],
  ['migrate', { uri: 'tcp:169.254.169.254:80' }],
  ['migrate', { uri: 'tcp:0.0.0.0:50450' }],
  ['migrate', { uri: 'tcp:[::1]:50450' }],
  ['migrate', { uri: 'tcp:127.1:50450' }],
  ['migrate', { uri: 'tcp:127.0.0.1:50450', blk: true }],
  ['migrate-incoming', { uri: 'tcp:127.0.0.1:50499' }],
  ['migrate-incoming', { uri: 'tcp:0.0.0.0:50450' }],
  ['query-block', undefined],
  ['query-chardev', undefined],
  ['query-blockstats', undefined],
  ['query-qmp-schema', undefined],
  ['announce-self', { initial: 50, max: 550, rounds: 5, step: 100, interfaces: ['x'] }],
  ['cont', { x: 1 }],
  ['dump-guest-memory', { paging: false, protocol: 'file:/tmp/miglab-fz-dump' }],
  ['screendump', { filename: '/tmp/miglab-fz.ppm' }],
  ['pmemsave', { val: 0, size: 4096, filename: '/tmp/miglab-fz-mem' }],
  ['memsave', { val: 0, size: 4096, filename: '/tmp/miglab-fz-mem' }],
  ['drive-backup', { device: 'fz', target: '/tmp/miglab-fz-disk', sync: 'full' }],
  ['drive-mirror', { device: 'fz', target: '/tmp/miglab-fz-disk', sync: 'full' }],
  ['blockdev-snapshot-sync', { device: 'fz', 'snapshot-file': '/tmp/miglab-fz-snap' }],
  ['nbd-server-start', { addr: { type: 'inet', data: { host: '0.0.0.0', port: '10809' } } }],
  ['qom-set', { path: '/machine', property: 'fz', value: 1 }],
  ['object-del', { id: 'miglab-tls-server' }],
  ['xen-save-devices-state', { filename: '/tmp/miglab-fz-state' }],
  ['snapshot-save', { 'job-id': 'fz', tag: 'fz', vmstate: 'fz', devices: [] }],
  ['system_reset', undefined],
  ['qmp_capabilities', undefined],
  ['x-exit-preconfig', undefined],
  ['set_password', { protocol: 'vnc', password: 'fz' }],
  ['trace-event-set-state', { name: '*', enable: true }],
  ['human_monitor_command', { 'command-line': 'info registers' }],
  ['Human-Monitor-Command', { 'command-line': 'info registers' }],
  ['HUMAN-MONITOR-COMMAND', { 'command-line': 'info registers' }],
  ['human-monitor-command ', { 'command-line': 'info registers' }],
  ['object_add', { 'qom-type': 'secret', id: 'fz', file: '/etc/shadow' }],
  ['blockdev_add', { driver: 'file', 'node-name': 'fz', filename: '/etc/shadow' }],
  ['device-add', { driver: 'e1000', id: 'fz' }],
  ['migrate\u0000', { uri: 'exec:touch /tmp/miglab-fz-pwned' }],
  ['Migrate', { uri: 'exec:touch /tmp/miglab-fz-pwned' }],
];

const NAME_MUTATIONS: Array<(s: string, rng: Rng) => string> = [
  (s) => s.toUpperCase(),
  (s) => s.replace(/-/g, '_'),
  (s) => s.replace(/_/g, '-'),
  (s) => ` ${s}`,
  (s) => `${s}\n`,
  (s) => `${s}\u0000`,
  (s) => s.replace('-', '\u2011'), // a non-breaking hyphen
  (s) => `\u200b${s}`,
  (s, rng) => s.slice(0, rng.int(s.length + 1)) + s.slice(rng.int(s.length + 1)),
  (s) => `x-${s}`,
  (s) => `${s}-`,
  (s) => `query${s}`, // not "query-": no way in through the prefix
];

/** A migration URI that is not tcp:ADDRESS:PORT (the filter's own pattern decides). */
function badMigrationUri(rng: Rng): string {
  for (;;) {
    const scheme = rng.pick(['exec', 'unix', 'fd', 'file', 'rdma', 'vsock', 'EXEC', 'Tcp', ' tcp', 'tcp', 'tcp:', 'defer']);
    const tail = rng.pick(['touch /tmp/miglab-fz-pwned', '/tmp/miglab-fz.sock', '3', '127.0.0.1:4444', '127.0.0.1:4444,exec:x', '127.0.0.1:4444\nexec:x', '127.0.0.1:4444 ', '$(id)', '[::1]:4444;id', '127.0.0.1:99999999', '']);
    const uri = `${scheme}:${tail}`;
    if (!parseTcpUri(uri)) return uri;
  }
}

describe('a real lab guest behind the agent', () => {
  let w: Wire;
  let handle = 0;

  beforeAll(async () => {
    w = await Wire.open();
    const started = w.until(() => w.events.some((e) => e.event === 'guest-started' && (e.data as GuestDescriptor).name === 'fz'), 60_000, 'guest-started for "fz"');
    const r = await w.request('startGuest', { spec: { name: 'fz', memoryMiB: 256 } }, 60_000);
    expect(r.ok ? 'started' : r.error).toBe('started');
    await started;
    const d = r.result as GuestDescriptor;
    const ev = w.events.find((e) => e.event === 'guest-started')!.data as GuestDescriptor;
    expect(ev.handle).toBe(d.handle);
    expect(d).toMatchObject({ name: 'fz', spec: { memoryMiB: 256 } });
    expect(d.pid).toBeGreaterThan(0);
    handle = d.handle;
  });

  afterAll(async () => {
    if (w && !w.closedWith) {
      await stopAllGuests(w).catch(() => []);
      w.close();
    }
  });

  it('refuses every dangerous QMP command with "forbidden"; the guest keeps answering', async () => {
    const rng = new Rng(SEED).fork();
    const calls: Array<[string, Record<string, unknown> | undefined]> = [...DANGEROUS_QMP];
    while (calls.length < DANGEROUS_QMP.length + 200) {
      const [name, args] = rng.pick(DANGEROUS_QMP);
      if (name === 'migrate' || name === 'migrate-incoming') {
        calls.push([name, { uri: badMigrationUri(rng), ...(rng.chance(0.3) ? { detach: true } : {}) }]);
        continue;
      }
      const mutated = rng.pick(NAME_MUTATIONS)(name, rng);
      if (mutated.length === 0 || mutated.length > 64 || QMP_ALLOWED.has(mutated)) continue;
      calls.push([mutated, args]);
    }
    const answers: Array<[string, string]> = [];
    // In groups, so the rate limit never answers for the filter.
    for (let i = 0; i < calls.length; i += 20) {
      const group = calls.slice(i, i + 20);
      const replies = await Promise.all(group.map(([command, args]) => w.request('qmp', { handle, command, ...(args === undefined ? {} : { args }) })));
      replies.forEach((r, j) => answers.push([`${JSON.stringify(group[j]![0])} ${JSON.stringify(group[j]![1] ?? null).slice(0, 120)}`, r.ok ? `ok: ${JSON.stringify(r.result).slice(0, 100)}` : r.error!.code]));
    }
    expect(answers.filter(([, code]) => code !== 'forbidden')).toEqual([]);
    expect(answers.length).toBeGreaterThanOrEqual(DANGEROUS_QMP.length + 200);
    const st = await w.request('qmp', { handle, command: 'query-status' });
    expect(st.ok ? (st.result as { status: string }).status : st.error).toBe('running');
    expect(w.problems.summary()).toEqual({});
  });

  it('answers each of several requests that reuse one id while the first is pending', async () => {
    const id = w.id();
    w.sendValue({ t: 'req', id, method: 'qmp', params: { handle, command: 'query-status' } });
    w.sendValue({ t: 'req', id, method: 'ping' });
    w.sendValue({ t: 'req', id, method: 'ping', params: { sneaky: true } });
    await w.until(() => (w.replies.get(id)?.length ?? 0) >= 3, 10_000, 'three answers to one id');
    await delay(200);
    const rs = w.replies.get(id)!;
    expect(rs).toHaveLength(3);
    expect(rs.filter((r) => r.ok && (r.result as { status?: string }).status === 'running')).toHaveLength(1);
    expect(rs.filter((r) => r.ok && typeof (r.result as { at?: number }).at === 'number')).toHaveLength(1);
    expect(rs.filter((r) => !r.ok && r.error!.code === 'invalid')).toHaveLength(1);
  });

  it('stops the guest with stopGuest: it exits and no QEMU is left', async () => {
    const r = await w.request('stopGuest', { name: 'fz' }, 30_000);
    expect(r.ok ? 'stopped' : r.error).toBe('stopped');
    await w.until(() => w.events.some((e) => e.event === 'guest-exited' && (e.data as { handle: number }).handle === handle), 10_000, 'guest-exited');
    expect(await stopAllGuests(w)).toEqual([]);
    expect((await w.request('qmp', { handle, command: 'query-status' })).error?.code).toBe('not-found');
  });
});

// ---- the fuzz ----

const SPICY_STRINGS = [
  '', 'a', 'é', '🚀', '\u0000', '\u2028', '\ud800', '\ufeff', '\u202e', 'e\u0301', '..', '../', '/', '/etc/passwd',
  '__proto__', 'constructor', 'prototype', 'NaN', 'Infinity', '-Infinity', '-0', '1e309', '0x10', '%s%n', '${x}',
  '<script>', ' ', '\n', '"', '\\', 'query-status', 'tcp:', 'exec:id', 'mlt_', 'null', 'true',
];
const SPICY_KEYS = [
  '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', 't', 'id', 'method', 'params',
  'spec', 'name', 'handle', 'command', 'args', 'uri', 'boot', 'kernel', 'path', 'profile', 'port', '',
];
const NUMBERS = [0, -0, -1, 1, 1.5, 64, 255, 256, 512, 65535, 65536, 2 ** 31, 2 ** 31 + 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53 + 2, 1e21, 1e308, -1e308, 5e-324];
const WEIRD_IDS: unknown[] = [0, 1, 2, 2 ** 31, 2 ** 53 - 1, 2 ** 53 + 2, 1e300, -1, 1.5, '7', null, undefined, true, [], {}];
const ODD_METHODS = [
  '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', 'formatDisk', 'exec', 'shutdown', 'Ping', 'ping ',
  'qmp\u0000', 'x'.repeat(64), 'x'.repeat(65), '', 'network.openPort', 'network.closePort', 'startguest', '🚀', 'guests/../ping',
];
const QMP_NAMES = [
  ...new Set(DANGEROUS_QMP.map(([n]) => n)), ...QMP_ALLOWED, 'query-status', 'query-migrate', 'query-qmp-schema', 'query-', 'query-x\u0000', 'qmp_capabilities', '',
];
const IMAGE_PATHS = [
  '../secret', '/etc/passwd', 'a/../../b', '..', '.', '', 'x\u0000y', 'images/../..', 'C:\\Windows\\win.ini', '\\\\server\\share',
  'x'.repeat(5000), '%2e%2e/x', 'vmlinuz', '~/x', 'file:///etc/passwd', '/proc/self/environ', 'a/./../../etc',
];

function randomString(rng: Rng): string {
  if (rng.chance(0.03)) return rng.pick(['x', '🚀', '\u0000', '../']).repeat(rng.pick([1000, 10_000, 100_000]));
  let s = '';
  for (let i = rng.int(5); i > 0; i--) s += rng.chance(0.7) ? rng.pick(SPICY_STRINGS) : rng.bytes(1 + rng.int(6)).toString('latin1');
  return s;
}

function randomJson(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth >= 5 ? 4 : 7)) {
    case 0:
      return rng.pick([null, true, false]);
    case 1:
      return rng.chance(0.7) ? rng.pick(NUMBERS) : (rng.next() - 0.5) * 10 ** rng.int(20);
    case 2:
    case 3:
      return randomString(rng);
    case 4: {
      const arr: unknown[] = [];
      for (let i = rng.int(5); i > 0; i--) arr.push(randomJson(rng, depth + 1));
      return arr;
    }
    default: {
      const obj: Record<string, unknown> = {};
      for (let i = rng.int(5); i > 0; i--) Object.defineProperty(obj, rng.chance(0.5) ? rng.pick(SPICY_KEYS) : randomString(rng), { value: randomJson(rng, depth + 1), enumerable: true, configurable: true, writable: true });
      return obj;
    }
  }
}

/** An object with hundreds or thousands of keys: the size of what the agent echoes back. */
function wideObject(rng: Rng): Record<string, unknown> {
  const n = rng.pick([50, 300, 1500, 3000]);
  return Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}-${rng.int(1e6)}`, i]));
}

function randomHandle(rng: Rng): unknown {
  if (rng.chance(0.1)) return randomJson(rng);
  return rng.pick([0, -1, 1.5, 2 ** 31, 2 ** 31 + 1, 2 ** 32, 1e6 + rng.int(1e6), 1 + rng.int(2 ** 31 - 1), 1 + rng.int(5)]);
}

/** tcp: URIs close to a lab host's port: the lab's ports, the victim's, loopback services, odd spellings. */
function nearMissUri(rng: Rng): string {
  const lab = LAB_PORTS.first + rng.int(LAB_PORTS.last - LAB_PORTS.first + 1);
  return rng.pick([
    `tcp:127.0.0.1:${lab}`, `tcp:127.0.0.1:${victim?.port ?? lab}`, 'tcp:127.0.0.1:6379', 'tcp:127.0.0.1:22', `tcp:127.0.0.1:${LAB_PORTS.last + 1}`,
    'tcp:169.254.169.254:80', `tcp:0.0.0.0:${lab}`, `tcp:[::1]:${lab}`, `tcp:[::]:${lab}`, `tcp:127.1:${lab}`, `tcp:0177.0.0.1:${lab}`,
    `tcp:127.0.0.1:0${lab}`, `tcp:localhost:${lab}`, `tcp:10.0.0.1:${lab}`, `tcp:224.0.0.1:${lab}`, `tcp:127.0.0.2:${lab}`,
  ]);
}

/** Arguments for the commands the agent passes, from right to refused. */
const QMP_ARG_CASES: Record<string, Array<Record<string, unknown> | undefined>> = {
  'migrate-set-parameters': [
    { 'max-bandwidth': 200_000_000, 'downtime-limit': 300 }, { 'tls-creds': 'miglab-tls-server' }, { 'tls-creds': '', 'tls-hostname': '' },
    { 'tls-authz': 'x' }, { 'block-bitmap-mapping': [] }, { mode: 'cpr-reboot' }, { 'direct-io': true }, { 'x-checkpoint-delay': 5 },
    { 'no-such-parameter': 1 }, { 'max-bandwidth': -1 }, { 'xbzrle-cache-size': 2 ** 60 }, { 'multifd-channels': 10_000 }, { 'tls-hostname': '$(id)' },
  ],
  'migrate-set-capabilities': [
    { capabilities: [{ capability: 'events', state: true }] }, { capabilities: [{ capability: 'xbzrle', state: true }, { capability: 'x-colo', state: true }] },
    { capabilities: [{ capability: 'mapped-ram', state: true }] }, { capabilities: [{ capability: 'background-snapshot', state: true }] },
    { capabilities: [{ capability: 'events', state: 1 }] }, { capabilities: 'events' }, { capabilities: [] },
  ],
  'announce-self': [{ initial: 50, max: 550, rounds: 5, step: 100 }, { initial: 50, max: 550, rounds: 5, step: 100, interfaces: ['eth0'] }, { id: 'x' }, { rounds: 1e12 }],
  'migrate-continue': [{ state: 'pre-switchover' }, { state: 'active' }, {}],
  cont: [undefined, {}, { x: 1 }],
  'query-status': [undefined, { x: 1 }],
};

function randomPort(rng: Rng): unknown {
  if (victim && rng.chance(0.15)) return rng.pick([victim.port, victim.relayPort]);
  if (rng.chance(0.1)) return randomJson(rng);
  return rng.pick([0, -1, 1, 9, 22, 65535, 65536, 1e9, 50400 + rng.int(100), 1024 + rng.int(60_000)]);
}

function randomProfile(rng: Rng): unknown {
  if (rng.chance(0.2)) return randomJson(rng);
  const p: Record<string, unknown> = {};
  if (rng.chance(0.6)) p.bandwidthMBps = rng.pick([null, 0, 0.1, 1, 1e9, -1, 'x', randomString(rng)]);
  if (rng.chance(0.6)) p.latencyMs = rng.pick([0, 1, 5000, 5001, -1, NaN, 'x'.repeat(rng.pick([1, 20_000]))]);
  if (rng.chance(0.6)) p.lossPercent = rng.pick([0, 50, 51, -1, '1']);
  if (rng.chance(0.1)) p[randomString(rng)] = randomJson(rng);
  return p;
}

function randomSpec(rng: Rng): unknown {
  if (rng.chance(0.1)) return randomJson(rng);
  const spec: Record<string, unknown> = {};
  if (rng.chance(0.9)) spec.name = rng.pick(['fz-a', 'fz-b', '', 'A', '../x', 'x'.repeat(40), 'a\u0000', '-x', randomString(rng)]);
  if (rng.chance(0.6)) spec.memoryMiB = rng.pick([64, 128, 256, 512, 1024, 63, 0, -1, 1.5, '256', 1e9, 2 ** 53 + 2]);
  if (rng.chance(0.2)) spec.vcpus = rng.pick([1, 2, 0, 65, -1]);
  if (rng.chance(0.2)) spec.machine = rng.pick(['q35', 'pc', 'none', 'q35,accel=kvm', 'q35 -device x', randomString(rng)]);
  if (rng.chance(0.2)) spec.cpuModel = rng.pick(['max', 'host', 'qemu64,+x', randomString(rng)]);
  if (rng.chance(0.1)) spec.ip = rng.pick(['10.0.0.1/24', '999.0.0.1/24', '10.0.0.1/33', randomString(rng)]);
  if (rng.chance(0.1)) spec.mac = rng.pick(['52:54:00:12:34:56', '53:54:00:12:34:56', 'zz', randomString(rng)]);
  if (rng.chance(0.7)) {
    const kind = rng.pick(['lab', 'kernel', 'kernel', 'disk', 'disk', 'x', '']);
    const boot: Record<string, unknown> = { kind };
    if (rng.chance(0.8)) boot.kernel = rng.pick(IMAGE_PATHS);
    if (rng.chance(0.3)) boot.initrd = rng.pick(IMAGE_PATHS);
    if (rng.chance(0.8)) boot.path = rng.pick(IMAGE_PATHS);
    if (rng.chance(0.2)) boot.append = rng.pick(['init=/bin/sh', 'x'.repeat(3000), randomString(rng)]);
    if (rng.chance(0.2)) boot.format = rng.pick(['qcow2', 'raw', 'vmdk']);
    if (rng.chance(0.1)) boot.labload = randomJson(rng);
    spec.boot = boot;
  }
  if (rng.chance(0.1)) spec[rng.pick(SPICY_KEYS)] = randomJson(rng);
  return spec;
}

function baseParams(rng: Rng, method: string): unknown {
  switch (method) {
    case 'hello':
      return { protocol: rng.pick([1, 1, 0, 2, -1, 1.5]), client: rng.chance(0.8) ? 'fuzz' : randomString(rng) };
    case 'startGuest':
      return { spec: randomSpec(rng), ...(rng.chance(0.3) ? { incoming: rng.chance(0.5) } : {}) };
    case 'stopGuest':
      return { name: rng.pick(['fz-a', 'fz-b', 'nobody', '../x', '', 'x'.repeat(65), '\u0000', randomString(rng)]) };
    case 'qmp':
      return qmpParams(rng);
    case 'consoleHistory':
    case 'markReady':
      return { handle: randomHandle(rng) };
    case 'addTlsCreds':
      return { handle: randomHandle(rng), endpoint: rng.pick(['server', 'client', 'x']) };
    case 'releaseMigrationPort':
      return { port: randomPort(rng) };
    case 'openLinkRelay':
      return { targetPort: randomPort(rng), ...(rng.chance(0.6) ? { profile: randomProfile(rng) } : {}) };
    case 'linkRelay':
      return { port: randomPort(rng), action: rng.pick(['set', 'cut', 'restore', 'stats', 'close', 'explode']), ...(rng.chance(0.5) ? { profile: randomProfile(rng) } : {}) };
    case 'installTls': {
      const pem = () => rng.pick(['', '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n', 'x'.repeat(rng.pick([10, 16_385])), randomString(rng)]);
      return { caCertPem: pem(), certPem: pem(), keyPem: pem() };
    }
    case 'labPeers':
      // The lab as it is (nothing changes), or with a host that is none (refused whole): the oracle
      // of migrate URIs holds either way.
      return rng.chance(0.5)
        ? { peers: LAB }
        : { peers: [...LAB, { address: rng.pick(['0.0.0.0', '169.254.169.254', '224.0.0.1', '::1', 'localhost', '127.0.0.1']), ports: rng.pick([LAB_PORTS, { first: 1, last: 65535 }, { first: 50499, last: 50400 }]) }] };
    default:
      return rng.pick([undefined, {}, {}]);
  }
}

function qmpParams(rng: Rng): Record<string, unknown> {
  const name = rng.chance(0.8) ? rng.pick(QMP_NAMES) : randomString(rng);
  const command = rng.chance(0.2) ? rng.pick(NAME_MUTATIONS)(name, rng) : name;
  let args: unknown;
  if (command === 'migrate' || command === 'migrate-incoming') {
    const uri = rng.chance(0.4) ? badMigrationUri(rng) : rng.chance(0.7) ? nearMissUri(rng) : randomString(rng);
    args = { uri, ...(rng.chance(0.15) ? { [rng.pick(['detach', 'resume', 'blk', 'inc', 'channels'])]: rng.pick([true, false, 1, 'x']) } : {}) };
  } else if (rng.chance(0.4) && Object.hasOwn(QMP_ARG_CASES, command)) args = rng.pick(QMP_ARG_CASES[command]!);
  else if (rng.chance(0.5)) args = rng.pick(DANGEROUS_QMP)[1];
  else if (rng.chance(0.5)) args = randomJson(rng);
  // "doesn't exist": high handles; the fuzz's own guests (if any start) take the low ones
  return { handle: rng.chance(0.9) ? 1e6 + rng.int(2 ** 30) : randomHandle(rng), command, ...(args === undefined ? {} : { args }) };
}

/** A request, mostly well-formed, with parameters anywhere from right to absurd. */
function randomRequest(rng: Rng, w: Wire): Record<string, unknown> {
  const method = rng.chance(0.85) ? rng.pick(METHODS) : rng.pick(ODD_METHODS);
  const msg: Record<string, unknown> = { t: 'req', id: rng.chance(0.92) ? w.id() : rng.pick(WEIRD_IDS), method };
  let params = rng.chance(0.12) ? randomJson(rng) : baseParams(rng, method);
  if (params && typeof params === 'object' && !Array.isArray(params) && rng.chance(0.35)) {
    const p = { ...(params as Record<string, unknown>) };
    const keys = Object.keys(p);
    switch (rng.int(5)) {
      case 0:
        if (keys.length) delete p[rng.pick(keys)];
        break;
      case 1:
        p[rng.pick(SPICY_KEYS)] = randomJson(rng);
        break;
      case 2:
        if (keys.length) p[rng.pick(keys)] = randomJson(rng);
        break;
      case 3:
        if (rng.chance(0.3)) Object.assign(p, wideObject(rng));
        break;
      default:
        Object.defineProperty(p, '__proto__', { value: randomJson(rng), enumerable: true, configurable: true, writable: true });
    }
    params = p;
  }
  if (params !== undefined) msg.params = params;
  if (rng.chance(0.02)) Object.assign(msg, wideObject(rng));
  else if (rng.chance(0.03)) Object.defineProperty(msg, rng.pick(SPICY_KEYS), { value: randomJson(rng), enumerable: true, configurable: true, writable: true });
  return msg;
}

/** Messages only the agent should send: the agent must ignore them (and owe nothing). */
function clientSideMessage(rng: Rng): unknown {
  const id = 500_000_000 + rng.int(1e6); // never one of our request ids
  switch (rng.int(4)) {
    case 0:
      return { t: 'res', id, ok: true, result: randomJson(rng) };
    case 1:
      return { t: 'res', id, ok: false, error: { code: rng.pick(['failed', randomString(rng)]), message: randomString(rng) } };
    case 2:
      return { t: 'evt', event: rng.pick(['guest-started', 'guest-exited', 'error', 'network.openPort', randomString(rng)]), data: randomJson(rng) };
    default:
      return { t: rng.pick(['res', 'evt']), id: rng.pick(WEIRD_IDS), ok: randomJson(rng), [rng.pick(SPICY_KEYS)]: randomJson(rng) };
  }
}

function randomBinary(rng: Rng): Buffer {
  const size = rng.pick([0, 1, 4, 5, 6, 100, 4096, 65_536 - 5]);
  if (size < 5) return rng.bytes(size);
  const header = Buffer.alloc(5);
  header.writeUInt8(rng.chance(0.6) ? rng.pick([1, 2]) : rng.int(256), 0);
  header.writeUInt32BE(rng.pick([0, 1, 2, 3, 0xffff_ffff, rng.int(0x1_0000_0000)]), 1);
  return Buffer.concat([header, rng.bytes(Math.min(size, 2048)), Buffer.alloc(Math.max(0, size - 2048))]);
}

/** Damage to the text of a valid request, kept to whole characters (the agent refuses bad UTF-8 by closing). */
function mutateText(rng: Rng, text: string): string {
  let s = text;
  for (let n = 1 + rng.int(3); n > 0; n--) {
    const at = rng.int(s.length + 1);
    switch (rng.int(6)) {
      case 0:
        s = s.slice(0, at) + rng.pick(['{', '}', '[', ']', '"', '\\', ',', ':', '\u0000', 'é', '\u2028', 'null', '1e400', '-0']) + s.slice(at + 1);
        break;
      case 1:
        s = s.slice(0, at) + rng.pick(SPICY_STRINGS) + s.slice(at);
        break;
      case 2:
        s = s.slice(0, at) + s.slice(at + 1 + rng.int(8));
        break;
      case 3:
        s = s.slice(0, at) + s.slice(Math.max(0, at - 10), at) + s.slice(at);
        break;
      case 4:
        s = s.slice(0, at);
        break;
      default:
        s = s.slice(at) + s.slice(0, at);
    }
  }
  return s;
}

/** Hand-written frames for what JSON.stringify never produces. */
const RAW_FRAMES: Array<(id: number) => string> = [
  (id) => `{"t":"req","id":${id}.0,"method":"ping"}`,
  () => '{"t":"req","id":1e400,"method":"ping"}',
  () => '{"t":"req","id":-0,"method":"ping"}',
  () => '{"t":"req","id":123456789012345678901234567890,"method":"ping"}',
  (id) => `{"t":"req","id":${id},"id":${id + 0.5},"method":"ping"}`,
  (id) => `{"t":"req","id":${id},"method":"ping","params":{"__proto__":{"x":1}}}`,
  (id) => `{"__proto__":{"t":"req","id":${id}},"method":"ping"}`,
  (id) => `{"t":"req","id":${id},"method":"qmp","params":{"handle":1000000,"command":"migrate","args":{"uri":"tcp:1.2.3.4:5","__proto__":{"uri":"exec:id"}}}}`,
  (id) => `{"t":"req","id":${id},"method":"qmp","params":{"handle":1000000,"command":"migrate","args":{"__proto__":{"uri":"tcp:1.2.3.4:5"},"uri":"exec:id"}}}`,
  (id) => `  {"t":"req","id":${id},"method":"ping"}  `,
  (id) => `{"t":"req","id":${id},"method":"ping"}garbage`,
  (id) => `[{"t":"req","id":${id},"method":"ping"}]`,
  (id) => `{"t":"req","id":${id},"method":"p\\u0069ng"}`,
  (id) => `{"t":"req","id":${id},"method":"ping\\u0000"}`,
  (id) => `{"t":"req","id":${id},"method":"ping","params":null}`,
  (id) => `{"t":"req","id":${id},"method":"qmp","params":{"handle":1e999,"command":"quit"}}`,
  (id) => `${'['.repeat(5000)}${']'.repeat(5000)}${id}`,
  (id) => `{"t":"req","id":${id},"method":"ping","params":${'{"a":'.repeat(2000)}1${'}'.repeat(2000)}}`,
];

interface FuzzStats {
  frames: Record<string, number>;
}

async function fuzzWorker(rng: Rng, problems: Problems, wires: Wire[], stats: FuzzStats, deadline: number): Promise<void> {
  let w = await Wire.open(problems, fuzzToken);
  wires.push(w);
  const count = (kind: string) => (stats.frames[kind] = (stats.frames[kind] ?? 0) + 1);
  while (performance.now() < deadline && !agentGone) {
    const r = rng.next();
    if (r < 0.25) {
      count(w.send(JSON.stringify(randomJson(rng)) ?? 'undefined') ? 'random JSON' : 'too big to send');
    } else if (r < 0.58) {
      count(w.sendValue(randomRequest(rng, w)) ? 'request' : 'too big to send');
    } else if (r < 0.7) {
      count(w.sendValue({ t: 'req', id: w.id(), method: 'qmp', params: qmpParams(rng) }) ? 'qmp' : 'too big to send');
    } else if (r < 0.75) {
      count(w.sendValue(clientSideMessage(rng)) ? 'res/evt' : 'too big to send');
    } else if (r < 0.85) {
      w.ws.send(randomBinary(rng), { binary: true });
      count('binary');
    } else if (r < 0.93) {
      count(w.send(mutateText(rng, JSON.stringify(randomRequest(rng, w)))) ? 'mutated' : 'too big to send');
    } else if (r < 0.96) {
      w.send(rng.pick(RAW_FRAMES)(w.id()));
      count('raw');
    } else if (r < 0.966) {
      for (let i = 200 + rng.int(700); i > 0; i--) w.sendValue({ t: 'req', id: w.id(), method: rng.pick(['ping', 'guests', 'info', 'nope']) });
      count('burst');
    } else if (r < 0.975) {
      w.close(rng.chance(0.5));
      w = await Wire.open(problems, fuzzToken);
      wires.push(w);
      count('reconnect');
    }
    if (w.closedWith) {
      // the agent hung up on us (recorded as a problem): carry on over a new connection
      w = await Wire.open(problems, fuzzToken);
      wires.push(w);
    }
    while (w.ws.bufferedAmount > 1024 * 1024) await delay(5);
    await delay(rng.int(4));
  }
}

describe('fuzz', () => {
  it(`survives ${FUZZ_MS} ms of random traffic on ${WORKERS} connections: every request answered once, nothing leaked`, async () => {
    console.log(`agent fuzz: AGENT_FUZZ_SEED=${SEED} AGENT_FUZZ_MS=${FUZZ_MS}`);
    const rng = new Rng(SEED);
    const problems = new Problems();
    const pid = agent.proc.pid!;
    const wires: Wire[] = [];
    const stats: FuzzStats = { frames: {} };
    const t0 = performance.now();
    const rss: number[] = [];
    let rssAfter1s: number | null = null;
    const sampler = setInterval(() => {
      void rssKiB(pid).then((kb) => {
        if (kb === null) return;
        rss.push(kb);
        if (rssAfter1s === null && performance.now() - t0 >= 1000) rssAfter1s = kb;
      });
    }, 200);
    // What another engine (the first token) holds while the fuzz's token hammers the agent.
    const owner = await Wire.open();
    const held = await owner.request('allocateMigrationPort');
    const relay = await owner.request('openLinkRelay', { targetPort: held.result, profile: { bandwidthMBps: 10 } });
    expect([held.ok, relay.ok], JSON.stringify([held.error, relay.error])).toEqual([true, true]);
    victim = { port: held.result as number, relayPort: (relay.result as { port: number }).port };
    console.log(`agent fuzz: the other token holds port ${victim.port} and a link relay on ${victim.relayPort}`);
    const before = await rssKiB(pid);
    try {
      await Promise.all(Array.from({ length: WORKERS }, () => fuzzWorker(rng.fork(), problems, wires, stats, t0 + FUZZ_MS)));
      // Connections the test closed on purpose owe nothing; one the agent closed is a problem already.
      const open = wires.filter((w) => !w.churned && !w.closedWith);
      await Promise.all(open.map((w) => w.until(() => w.allAnswered() || !!w.closedWith, 20_000, 'every owed answer').catch(() => {})));
      await delay(300); // a second answer to anything would be here by now
      for (const w of open) w.checkCounts();
    } finally {
      clearInterval(sampler);
      for (const w of wires) if (!w.churned && !w.closedWith) w.close();
    }
    const end = await rssKiB(pid);
    const peak = Math.max(...rss, end ?? 0);
    const replies = wires.reduce((n, w) => n + [...w.replies.values()].reduce((m, l) => m + l.length, 0), 0);
    const codes: Record<string, number> = {};
    for (const w of wires) for (const l of w.replies.values()) for (const r of l) codes[r.ok ? 'ok' : r.error?.code ?? '?'] = (codes[r.ok ? 'ok' : r.error?.code ?? '?'] ?? 0) + 1;
    console.log(`agent fuzz ${WHY}: frames ${JSON.stringify(stats.frames)}; ${replies} replies ${JSON.stringify(codes)}; ${wires.length} connections`);
    const failures = new Set<string>();
    for (const w of wires) for (const l of w.replies.values()) for (const r of l) if (r.error?.code === 'failed') failures.add(r.error.message.slice(0, 70));
    console.log(`kinds of "failed" answers: ${JSON.stringify([...failures].slice(0, 20), null, 1)}`);
    console.log(`agent fuzz ${WHY}: refusals the oracle demanded by the new rules: ${JSON.stringify(ruleChecks)}`);
    console.log(`agent RSS: ${before} KiB before, ${rssAfter1s} KiB after 1 s, peak ${peak} KiB, ${end} KiB at the end`);

    expectAlive();
    // The other token's relay and port came through untouched, and are still its own to use.
    const relayNow = await owner.request('linkRelay', { port: victim.relayPort, action: 'stats' });
    const closed = await owner.request('linkRelay', { port: victim.relayPort, action: 'close' });
    const released = await owner.request('releaseMigrationPort', { port: victim.port });
    victim = null;
    owner.close();
    expect.soft([relayNow.ok && (relayNow.result as { cut: boolean; profile: { bandwidthMBps: number } }), closed.ok, released.ok], WHY).toEqual([
      expect.objectContaining({ cut: false, profile: expect.objectContaining({ bandwidthMBps: 10 }) }), true, true,
    ]);
    // a fresh connection is served
    const fresh = await Wire.open();
    const pong = await fresh.request('ping');
    expect(pong.ok, WHY).toBe(true);
    fresh.close();
    expect.soft(rssAfter1s, 'RSS sampled').not.toBeNull();
    expect.soft(peak, `the agent's memory grew past 3x its size after the first second ${WHY}`).toBeLessThanOrEqual(3 * (rssAfter1s ?? peak));
    expect.soft(replies, WHY).toBeGreaterThan(1000);
    expect(problems.summary(), WHY).toEqual({});
  }, FUZZ_MS + 60_000);
});
