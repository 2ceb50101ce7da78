// Browser mode's server with a real lab: tokens (401 without one), the spectator's read-only
// view, bad messages, and the API driving real QEMU guests: start, console, workload, migrate.
import type { ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { get as httpsGet } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { ApiCommand, ApiEvent, ServerMessage } from '../../electron/engine/api/contract';
import { LabService } from '../../electron/engine/api/service';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { MigrationJournal } from '../../electron/engine/migration/journal';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { WebServer } from '../../electron/engine/web/server';
import { delay } from '../../electron/engine/util/time';
import { certFingerprint } from '../../electron/engine/tls/certs';
import { NetnsLab } from '../../electron/engine/network/netns';
import { MIGLAB_BIN } from '../helpers/agents';
import { expectDirtyingAt, expectScopeClean, requireLabGuest } from '../helpers/lab';
import type { WebInfo } from '../helpers/web-cli';
import { labCrashEvidence } from '../helpers/migration';
import { retryTcgCrashes } from '../helpers/tcg-retry';

let work: string;
let lab: Lab;
let service: LabService;
let server: WebServer;
let base: string;

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-web');
  const ui = join(work, 'ui');
  await mkdir(join(ui, 'assets'), { recursive: true });
  await writeFile(join(ui, 'index.html'), '<!doctype html><title>MigLab</title><script src="/assets/app.js"></script>');
  await writeFile(join(ui, 'assets', 'app.js'), 'console.log("ui")');
  await writeFile(join(work, 'secret.txt'), 'outside the UI');
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
  service = new LabService(lab, new MigrationJournal(join(work, 'state')));
  server = await WebServer.start(service, { port: 0, uiDir: ui });
  base = `http://127.0.0.1:${server.address.port}`;
});

afterAll(async () => {
  await server?.close();
  service?.close();
  await lab?.dispose();
  for (const h of ['host-a', 'host-b']) await expectScopeClean(join(work, 'run', h));
  await removeDir(work);
});

/** A WebSocket client of the API: commands with ids, events collected as they come. */
class Client {
  readonly events: ApiEvent[] = [];
  hello: { apiVersion: number; role: string } | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, (m: ServerMessage) => void>();
  private readonly waiters = new Set<() => void>();

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as ServerMessage;
      if ('hello' in m) this.hello = m.hello;
      else if ('event' in m) this.events.push(m.event);
      else this.pending.get(m.id)?.(m);
      for (const w of [...this.waiters]) w();
    });
  }

  static open(token: string | null, headers: Record<string, string> = {}): Promise<Client> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${server.address.port}/api${token ? `?token=${token}` : ''}`, { headers });
      ws.once('open', () => resolve(new Client(ws)));
      ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
      ws.once('error', reject);
    });
  }

  /** Sends raw text and resolves with the reply to `id`. */
  raw(text: string, id: number): Promise<ServerMessage> {
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.ws.send(text);
    });
  }

  call(command: ApiCommand | Record<string, unknown>): Promise<ServerMessage> {
    const id = this.nextId++;
    return this.raw(JSON.stringify({ id, command }), id);
  }

  async ok<T = unknown>(command: ApiCommand): Promise<T> {
    const m = await this.call(command);
    if (!('ok' in m) || !m.ok) throw new Error(`command ${command.type} failed: ${JSON.stringify(m)}`);
    return m.result as T;
  }

  /** Resolves once an event matches (already received, or still to come). */
  waitEvent(match: (e: ApiEvent) => boolean, timeoutMs = 30_000): Promise<ApiEvent> {
    const found = this.events.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const check = () => {
        const e = this.events.find(match);
        if (!e) return;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(e);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no matching event within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.add(check);
    });
  }

  consoleText(guest: string): string {
    return this.events.filter((e) => e.type === 'console' && e.guest === guest).map((e) => (e.type === 'console' ? e.data : '')).join('');
  }

  close(): void {
    this.ws.close();
  }
}

describe('miglab web: access', () => {
  it('caps the WebSockets open at once, every role alike: one more gets 503 until one closes', async () => {
    const small = await WebServer.start(service, { port: 0, uiDir: null, maxClients: 3 });
    const open = (token: string) =>
      new Promise<WebSocket>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${small.address.port}/api?token=${token}`);
        ws.once('open', () => resolve(ws));
        ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
        ws.once('error', reject);
      });
    const held: WebSocket[] = [];
    try {
      held.push(await open(small.tokens.teacher), await open(small.tokens.spectator), await open(small.tokens.spectator));
      await expect(open(small.tokens.spectator)).rejects.toThrow('HTTP 503');
      await expect(open(small.tokens.teacher)).rejects.toThrow('HTTP 503');
      const closed = new Promise((r) => held[1]!.once('close', r));
      held[1]!.close();
      await closed;
      await delay(50); // the server hears the close after the client does
      held.push(await open(small.tokens.teacher));
    } finally {
      for (const ws of held) ws.terminate();
      await small.close();
    }
  });

  it('answers 401 and nothing else without a valid token', async () => {
    for (const url of [`${base}/`, `${base}/assets/app.js`, `${base}/?token=wrong`, `${base}/api`]) {
      const res = await fetch(url);
      expect(res.status, url).toBe(401);
      expect(res.headers.get('set-cookie')).toBeNull();
      expect(await res.text()).not.toContain('MigLab</title>');
    }
    await expect(Client.open(null)).rejects.toThrow('HTTP 401');
    await expect(Client.open('wrong')).rejects.toThrow('HTTP 401');
  });

  it('takes the token out of the address: 303 to the same address without it, with a cookie named for this server', async () => {
    const res = await fetch(`${base}/?token=${server.tokens.teacher}`, { redirect: 'manual' });
    expect(res.status).toBe(303);
    expect(res.headers.get('location')).toBe('/');
    const cookie = res.headers.get('set-cookie')!;
    expect(cookie).toBe(`${server.cookieName}=${server.tokens.teacher}; HttpOnly; SameSite=Strict; Path=/`);
    // Cookies ignore ports: each server's name is its own, so two MigLabs do not overwrite each other.
    expect(server.cookieName).toMatch(/^miglab_[0-9a-f]{12}$/);
    const other = await WebServer.start(service, { port: 0, uiDir: null });
    try {
      expect(other.cookieName).not.toBe(server.cookieName);
    } finally {
      await other.close();
    }
    // Any path, other parameters kept; the spectator's link redirects the same way.
    const deep = await fetch(`${base}/assets/app.js?a=1&token=${server.tokens.spectator}&b=x%20y`, { redirect: 'manual' });
    expect(deep.status).toBe(303);
    expect(deep.headers.get('location')).toBe('/assets/app.js?a=1&b=x+y');
    expect(deep.headers.get('set-cookie')).toContain(`${server.cookieName}=${server.tokens.spectator};`);
    // A target that looks like another host stays on this one.
    const sneaky = await fetch(`${base}//evil.example/?token=${server.tokens.teacher}`, { redirect: 'manual' });
    expect(sneaky.headers.get('location')).toBe('/evil.example/');
  });

  it('serves the UI to the cookie the redirect set, or a Bearer token, with a CSP', async () => {
    const first = await fetch(`${base}/?token=${server.tokens.teacher}`, { redirect: 'manual' });
    const cookie = first.headers.get('set-cookie')!.split(';')[0]!;
    const res = await fetch(`${base}/`, { headers: { cookie } });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('<title>MigLab</title>');
    expect(res.headers.get('set-cookie')).toBeNull();
    expect(res.headers.get('content-security-policy')).toContain("default-src 'self'");
    // The old, shared cookie name is not this server's.
    expect((await fetch(`${base}/`, { headers: { cookie: `miglab_token=${server.tokens.teacher}` } })).status).toBe(401);
    const asset = await fetch(`${base}/assets/app.js`, { headers: { cookie } });
    expect(asset.status).toBe(200);
    expect(asset.headers.get('content-type')).toContain('text/javascript');
    const bearer = await fetch(`${base}/assets/app.js`, { headers: { authorization: `Bearer ${server.tokens.spectator}` } });
    expect(bearer.status).toBe(200);
  });

  it('never serves a file outside the UI dir', async () => {
    const auth = { authorization: `Bearer ${server.tokens.teacher}` };
    for (const path of ['/../secret.txt', '/%2e%2e/secret.txt', '/assets/%2e%2e/%2e%2e/secret.txt', '/%00', '/%E0%A4%A']) {
      const res = await fetch(`${base}${path}`, { headers: auth });
      expect(res.status, path).toBe(404);
      expect(await res.text()).not.toContain('outside the UI');
    }
  });

  it('refuses a WebSocket from another site\'s page, even with the token', async () => {
    await expect(Client.open(server.tokens.teacher, { origin: 'http://evil.example' })).rejects.toThrow('HTTP 403');
  });

  it('lets a spectator watch but not act', async () => {
    const c = await Client.open(server.tokens.spectator);
    try {
      await c.waitEvent((e) => e.type === 'lab');
      expect(c.hello).toEqual({ apiVersion: 1, role: 'spectator' });
      const snap = await c.ok<{ hosts: Array<{ name: string }> }>({ type: 'snapshot' });
      expect(snap.hosts.map((h) => h.name)).toEqual(['host-a', 'host-b']);
      for (const command of [
        { type: 'startGuest', host: 'host-a', guest: { name: 'nope' } },
        { type: 'migrate', guest: 'x', to: 'host-b' },
        { type: 'consoleInput', guest: 'x', data: 'reboot\n' },
      ] as ApiCommand[]) {
        const r = await c.call(command);
        expect(r).toMatchObject({ ok: false, error: { code: 'forbidden' } });
      }
      expect(lab.host('host-a').guest('nope')).toBeUndefined();
    } finally {
      c.close();
    }
  });

  it('limits how fast one connection sends commands, teacher too: \'rate-limited\' answers, then served again', async () => {
    const c = await Client.open(server.tokens.teacher);
    try {
      const replies = await Promise.all(Array.from({ length: 1000 }, () => c.call({ type: 'snapshot' })));
      const ok = replies.filter((m) => 'ok' in m && m.ok).length;
      const limited = replies.filter((m) => 'ok' in m && !m.ok && m.error.code === 'rate-limited');
      // A burst of 200, then about 100 a second: the 1,000 arrive within well under a second.
      expect(ok).toBeGreaterThanOrEqual(200);
      expect(ok).toBeLessThan(400);
      expect(ok + limited.length).toBe(1000);
      expect(limited[0]).toMatchObject({ error: { message: expect.stringContaining('Too many commands at once') } });
      const other = await Client.open(server.tokens.teacher); // the budget is per connection
      expect(await other.call({ type: 'snapshot' })).toMatchObject({ ok: true });
      other.close();
      await delay(1100);
      expect(await c.call({ type: 'snapshot' })).toMatchObject({ ok: true });
    } finally {
      c.close();
    }
  });

  it('answers bad messages with a clear error and keeps serving', async () => {
    const c = await Client.open(server.tokens.teacher);
    try {
      expect(await c.raw('{"id": 7, "command": {"type": "launchMissiles"}}', 7)).toMatchObject({ ok: false, error: { code: 'invalid' } });
      expect(await c.raw('{"id": 8, "command": {"type": "startGuest", "host": "host-a", "guest": {"name": "x", "memoryMiB": 1}}}', 8))
        .toMatchObject({ ok: false, error: { code: 'invalid', message: expect.stringContaining('guest.memoryMiB') } });
      expect(await c.raw('not json', -1)).toMatchObject({ ok: false, error: { message: 'The message is not JSON' } });
      expect(await c.call({ type: 'stopGuest', host: 'host-z', guest: 'x' })).toMatchObject({ ok: false, error: { code: 'not-found', message: expect.stringContaining('no host "host-z"') } });
      // A message over 64 KiB closes that connection; the server goes on serving others.
      const closed = new Promise<number>((r) => c.ws.once('close', (code) => r(code)));
      c.ws.send(JSON.stringify({ id: 9, command: { type: 'consoleInput', guest: 'x', data: 'y'.repeat(70_000) } }));
      expect(await closed).toBe(1009);
      const again = await Client.open(server.tokens.teacher);
      expect((await again.ok<{ apiVersion: number }>({ type: 'snapshot' })).apiVersion).toBe(1);
      again.close();
    } finally {
      c.close();
    }
  });
});

describe('miglab web: driving a real lab', () => {
  it('starts a guest, types into its console, migrates it, and the console follows it to host-b', async () => {
    const teacher = await Client.open(server.tokens.teacher);
    const spectator = await Client.open(server.tokens.spectator);
    try {
      const view = await teacher.ok<{ name: string; host: string; ip: string; mac: string }>({ type: 'startGuest', host: 'host-a', guest: { name: 'web1' } });
      expect(view).toMatchObject({ name: 'web1', host: 'host-a', ip: '10.80.0.10/24', mac: '52:54:00:50:00:0a' });
      // every client hears of it, the spectator too
      await spectator.waitEvent((e) => e.type === 'lab' && e.snapshot.hosts[0]!.guests.some((g) => g.name === 'web1' && g.state === 'ready'), 90_000);
      await teacher.waitEvent((e) => e.type === 'console' && e.guest === 'web1' && e.data.includes('web1:/#'), 30_000).catch(async () => {
        // the prompt may have come in one chunk with the boot text
        expect(teacher.consoleText('web1')).toContain('web1:/#');
      });
      // the dialog's look ahead: every check, while the destination QEMU starts (paused) on host-b
      const pre = await teacher.ok<{ checks: Array<{ name: string; status: string }>; capabilities: string[] }>({ type: 'preflight', guest: 'web1', to: 'host-b' });
      expect(pre.checks.find((c) => c.name === 'guest-ready')?.status).toBe('pass');
      expect(pre.capabilities).toContain('auto-converge');
      await teacher.waitEvent((e) => e.type === 'lab' && e.snapshot.hosts[1]!.guests.some((g) => g.name === 'web1' && g.state === 'incoming'));
      // a spectator cannot prepare one, nor release the teacher's
      expect(await spectator.call({ type: 'releasePreparedDestination', guest: 'web1' })).toMatchObject({ ok: false, error: { code: 'forbidden' } });
      expect(lab.host('host-b').guest('web1')?.state).toBe('incoming');
      // looking at another host (its own: refused) lets host-b's go: one per guest
      const refused = await teacher.ok<{ checks: Array<{ name: string; status: string }> }>({ type: 'preflight', guest: 'web1', to: 'host-a' });
      expect(refused.checks.find((c) => c.name === 'destination')?.status).toBe('fail');
      expect(lab.host('host-b').guests()).toEqual([]);
      expect(await teacher.call({ type: 'startGuest', host: 'host-a', guest: { name: 'rel', boot: { kind: 'disk', path: 'disk.qcow2' } } }))
        .toMatchObject({ ok: false, error: { code: 'invalid', message: expect.stringContaining('give an absolute path on the host') } });
      await teacher.ok({ type: 'consoleInput', guest: 'web1', data: 'echo typed-$((40+2))\n' });
      await teacher.waitEvent(() => teacher.consoleText('web1').includes('typed-42'));
      await spectator.waitEvent(() => spectator.consoleText('web1').includes('typed-42'));

      // The workload dial: on, turned up, off (a busy guest under TCG can crash on arrival, see README).
      await teacher.ok({ type: 'setWorkload', guest: 'web1', rateMBps: 10, workingSetMiB: 16 });
      await teacher.ok({ type: 'setWorkload', guest: 'web1', rateMBps: 20, workingSetMiB: 16 });
      const busy = await teacher.ok<{ hosts: Array<{ guests: Array<{ name: string; workload: unknown }> }> }>({ type: 'snapshot' });
      expect(busy.hosts[0]!.guests[0]).toMatchObject({ name: 'web1', workload: { rateMBps: 20, workingSetMiB: 16 } });
      await expectDirtyingAt(lab.host('host-a').guest('web1')!, 20);
      await teacher.ok({ type: 'setWorkload', guest: 'web1', rateMBps: 0, workingSetMiB: 16 });
      // Only QEMU 7.2's TCG bug may cost a retry (see tcg-retry.ts), judged on the result the
      // API sent and on the copies the lab really runs.
      const { id, result } = await retryTcgCrashes('web1: migration to host-b through the API', async () => {
        const { id } = await teacher.ok<{ id: string }>({ type: 'migrate', guest: 'web1', to: 'host-b' });
        const done = await teacher.waitEvent((e) => e.type === 'migration' && e.id === id && e.event.type === 'result', 120_000);
        const result = done.type === 'migration' && done.event.type === 'result' ? done.event.result : null;
        if (!result) throw new Error(`The API's result event for migration ${id} carried no result`);
        if (result.status === 'completed') return { done: true, value: { id, result } };
        return { done: false, failure: `${result.status} (${result.failure}): ${result.reason}`, evidence: () => labCrashEvidence(lab, 'web1', result.from, result.destinationConsoleTail) };
      });
      expect(result.status).toBe('completed');
      expect(teacher.events.some((e) => e.type === 'migration' && e.event.type === 'pass')).toBe(true);
      expect(teacher.events.some((e) => e.type === 'migration' && e.event.type === 'mac-move')).toBe(true);
      await spectator.waitEvent((e) => e.type === 'migration' && e.id === id && e.event.type === 'result', 5000);

      // The console carries on from host-b, and its history keeps what host-a printed.
      await teacher.ok({ type: 'consoleInput', guest: 'web1', data: 'echo moved-$((40+3))\n' });
      await teacher.waitEvent((e) => e.type === 'console' && e.host === 'host-b' && teacher.consoleText('web1').includes('moved-43'));
      const history = await spectator.ok<{ text: string }>({ type: 'consoleHistory', guest: 'web1' });
      expect(history.text).toContain('typed-42');
      expect(history.text).toContain('moved-43');
      const snap = await teacher.ok<{ hosts: Array<{ name: string; guests: Array<{ name: string }> }>; migrations: Array<{ id: string; state: string }> }>({ type: 'snapshot' });
      expect(snap.hosts.find((h) => h.name === 'host-b')!.guests.map((g) => g.name)).toEqual(['web1']);
      expect(snap.hosts.find((h) => h.name === 'host-a')!.guests).toEqual([]);
      expect(snap.migrations.find((m) => m.id === id)?.state).toBe('completed');

      await teacher.ok({ type: 'stopGuest', host: 'host-b', guest: 'web1' });
      expect(lab.host('host-b').guest('web1')).toBeUndefined();
    } finally {
      teacher.close();
      spectator.close();
    }
  });
});

// After the driving test: its guest's address assertions expect the first address of the lab.
describe('miglab web: what a spectator may see', () => {
  it("exports the lab without the teacher's host paths or kernel command line; the teacher's export keeps them", async () => {
    const image = await requireLabGuest();
    const teacher = await Client.open(server.tokens.teacher);
    const spectator = await Client.open(server.tokens.spectator);
    try {
      const append = 'console=ttyS0 quiet miglab_secret=4711';
      await teacher.ok({ type: 'startGuest', host: 'host-b', guest: { name: 'kern1', boot: { kind: 'kernel', kernel: image.kernel, initrd: image.initrd, append } } });
      const mine = (await teacher.ok<{ yaml: string }>({ type: 'exportLab' })).yaml;
      expect(mine).toContain(image.kernel);
      expect(mine).toContain('miglab_secret=4711');
      const theirs = (await spectator.ok<{ yaml: string }>({ type: 'exportLab' })).yaml;
      expect(theirs).toContain('kern1');
      expect(theirs).toContain(`kernel: ${basename(image.kernel)}`);
      expect(theirs).toContain(`initrd: ${basename(image.initrd)}`);
      expect(theirs).not.toContain(dirname(image.kernel));
      expect(theirs).not.toContain('miglab_secret');
      expect(theirs).not.toMatch(/^\s*append:/m);
      expect(theirs).not.toMatch(/: \/\S/); // no absolute path anywhere
    } finally {
      await teacher.call({ type: 'stopGuest', host: 'host-b', guest: 'kern1' });
      teacher.close();
      spectator.close();
    }
  });
});

describe('miglab web --host on the network: HTTPS', () => {
  /** `miglab web --host ADDR --json` run inside a network namespace of its own, so ADDR is not loopback. */
  async function webInNamespace(netns: NetnsLab, env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; info: WebInfo; exited: Promise<number | null> }> {
    const host = netns.host('web');
    const child = netns.spawn('web', process.execPath, [MIGLAB_BIN, 'web', '--host', host.address, '--port', '0', '--json'], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    for (let i = 0; i < 600 && !/^\}$/m.test(out) && child.exitCode === null; i++) await delay(50);
    if (!/^\}$/m.test(out)) throw new Error(`miglab web --host ${host.address} did not start; stdout: ${out}; stderr: ${err}`);
    return { child, info: JSON.parse(out) as WebInfo, exited };
  }

  /** The SHA-256 fingerprint of the certificate a TLS server presents, trusting nothing. */
  function presentedFingerprint(host: string, port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = tlsConnect({ host, port, rejectUnauthorized: false }, () => {
        resolve(certFingerprint(s.getPeerX509Certificate()!.raw));
        s.destroy();
      });
      s.once('error', reject);
    });
  }

  it('serves HTTPS with a certificate of its own, prints its fingerprint, and keeps it across restarts; loopback stays HTTP', async () => {
    const netns = await NetnsLab.create({ hosts: ['web'] });
    const run = join(work, 'tls-run');
    await mkdir(run, { recursive: true });
    const env = { MIGLAB_STATE_DIR: join(work, 'tls-state'), MIGLAB_RUNTIME_DIR: run };
    let web: Awaited<ReturnType<typeof webInNamespace>> | null = null;
    try {
      web = await webInNamespace(netns, env);
      const { info } = web;
      const addr = netns.host('web').address;
      const url = new URL(info.url);
      expect(info.tls).toBe(true);
      expect(url.protocol).toBe('https:');
      expect(url.hostname).toBe(addr);
      expect(new URL(info.spectatorUrl).protocol).toBe('https:');
      const certPem = await readFile(info.certificate!, 'utf8');
      expect(info.certificate!.startsWith(join(work, 'tls-state', 'web-tls'))).toBe(true);
      expect(info.fingerprint).toBe(certFingerprint(certPem));
      // From the root namespace, across the bridge, as a laptop in the room would see it.
      expect(await presentedFingerprint(addr, Number(url.port))).toBe(info.fingerprint);
      // A browser that trusts that certificate: the redirect sets a Secure cookie, the API answers.
      const redirect = await new Promise<{ status: number; location: string; cookie: string }>((resolve, reject) => {
        httpsGet(info.url, { ca: certPem }, (res) => {
          res.resume();
          resolve({ status: res.statusCode!, location: String(res.headers.location), cookie: String(res.headers['set-cookie']?.[0]) });
        }).once('error', reject);
      });
      expect(redirect).toMatchObject({ status: 303, location: '/' });
      expect(redirect.cookie).toMatch(/^miglab_[0-9a-f]+=[\w-]+; HttpOnly; SameSite=Strict; Path=\/; Secure$/);
      const snap = await new Promise<ServerMessage>((resolve, reject) => {
        const ws = new WebSocket(`wss://${url.host}/api?token=${info.token}`, { ca: certPem });
        ws.once('open', () => ws.send(JSON.stringify({ id: 1, command: { type: 'snapshot' } })));
        ws.on('message', (d) => {
          const m = JSON.parse(String(d)) as ServerMessage;
          if ('id' in m) {
            ws.close();
            resolve(m);
          }
        });
        ws.once('error', reject);
      });
      expect(snap).toMatchObject({ ok: true, result: { apiVersion: 1 } });
      // Nothing is served in clear on that port.
      const plain = await fetch(`http://${url.host}/?token=${info.token}`).then((r) => `HTTP ${r.status}`, () => 'refused');
      expect(plain).toBe('refused');

      web.child.kill('SIGINT');
      expect(await web.exited).toBe(0);
      web = await webInNamespace(netns, env);
      expect(web.info.fingerprint).toBe(info.fingerprint); // what the class trusted still holds
    } finally {
      if (web && web.child.exitCode === null) {
        web.child.kill('SIGINT');
        await web.exited;
      }
      await netns.destroy();
    }
    await expectScopeClean(run);
    // Loopback: plain HTTP, nothing to trust.
    const local = await WebServer.start(service, { port: 0, uiDir: null });
    expect(local.tls).toBe(false);
    expect(local.url).toMatch(/^http:\/\/127\.0\.0\.1:/);
    await local.close();
  }, 120_000);
});
