// A real `miglab web` process with a real guest, against clients that cost it: one that asks for
// the guest's 256 KiB console history 5,000 times and never reads (it is disconnected, the engine
// goes on, its memory stays bounded), and bugs that surface as an exception or a rejection nobody
// handles (the CLI stops the guests it started before it exits).
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { ApiCommand, ServerMessage } from '../../electron/engine/api/contract';
import { CLOSE_TOO_FAR_BEHIND, MAX_UNREAD_BYTES } from '../../electron/engine/web/client-budget';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { expectScopeClean, requireLabGuest } from '../helpers/lab';
import { qemuPids } from '../helpers/leaks';
import { clientFrame, openRawWebSocket, readServerFrames } from '../helpers/raw-http';
import { rssBytes, startWebCli, stopWebCli, type WebCli } from '../helpers/web-cli';

const MiB = 2 ** 20;
const REQUESTS = 5000;
/**
 * How much the server's RSS may grow while one client floods it. The client's unread answers are
 * capped at MAX_UNREAD_BYTES (16 MiB); on top of that come the answers of the 200-command burst,
 * all made at once before the cap is reached and not yet collected (each a 256 KiB history and its
 * ~300 KB JSON: about 110 MiB of garbage), and V8's heap growth. Measured: +93 MiB at the peak,
 * +22 MiB after. Without the cap the 5,000 answers are 1.5 GB.
 */
const RSS_GROWTH_BOUND = 160 * MiB;

let work: string;
let run: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-webbudget');
  run = join(work, 'run');
  await mkdir(run);
  env = { MIGLAB_RUNTIME_DIR: run, MIGLAB_STATE_DIR: join(work, 'state') };
});

afterAll(async () => {
  await expectScopeClean(run);
  await removeDir(work);
});

/** A WebSocket client that reads everything: commands by id. */
class Reader {
  private nextId = 1;
  private readonly pending = new Map<number, (m: ServerMessage) => void>();
  private constructor(readonly ws: WebSocket) {
    ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as ServerMessage;
      if ('id' in m) this.pending.get(m.id)?.(m);
    });
  }

  static open(port: number, token: string): Promise<Reader> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/api?token=${token}`);
      ws.once('open', () => resolve(new Reader(ws)));
      ws.once('error', reject);
    });
  }

  call(command: ApiCommand): Promise<ServerMessage> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.ws.send(JSON.stringify({ id, command }));
    });
  }

  async ok<T>(command: ApiCommand): Promise<T> {
    const m = await this.call(command);
    if (!('ok' in m) || !m.ok) throw new Error(`${command.type} failed: ${JSON.stringify(m)}`);
    return m.result as T;
  }
}

async function startGuest(teacher: Reader, name: string): Promise<void> {
  await teacher.ok({ type: 'startGuest', host: 'host-a', guest: { name } });
  for (let i = 0; i < 600; i++) {
    const snap = await teacher.ok<{ hosts: Array<{ guests: Array<{ name: string; state: string }> }> }>({ type: 'snapshot' });
    if (snap.hosts[0]!.guests.some((g) => g.name === name && g.state === 'ready')) return;
    await delay(250);
  }
  throw new Error(`${name} did not become ready`);
}

describe('miglab web: per-client budgets', () => {
  it(`disconnects a client that pipelines ${REQUESTS} consoleHistory requests and never reads; others are served, memory stays bounded`, async () => {
    const web: WebCli = await startWebCli(['--port', '0'], env);
    let teacher: Reader | null = null;
    try {
      teacher = await Reader.open(web.port, web.info.token);
      await startGuest(teacher, 'b1');
      // A full scrollback: the guest prints more than the 256 KiB the engine keeps.
      await teacher.ok({ type: 'consoleInput', guest: 'b1', data: 'seq 1 60000\n' });
      let history = '';
      for (let i = 0; i < 480 && history.length < 250_000; i++) {
        await delay(250);
        history = (await teacher.ok<{ text: string }>({ type: 'consoleHistory', guest: 'b1' })).text;
      }
      expect(history.length).toBeGreaterThanOrEqual(250_000);

      const before = await rssBytes(web.child.pid!);
      const { socket, rest } = await openRawWebSocket(web.port, `/api?token=${web.spectatorToken}`);
      const flood = Buffer.concat(Array.from({ length: REQUESTS }, (_, i) => clientFrame(JSON.stringify({ id: i + 1, command: { type: 'consoleHistory', guest: 'b1' } }))));
      socket.write(flood);
      // The engine goes on: another client (the teacher) is answered while the flood sits unread.
      let peak = before;
      for (let i = 0; i < 10; i++) {
        await delay(300);
        const h = await teacher.ok<{ text: string }>({ type: 'consoleHistory', guest: 'b1' });
        expect(h.text.length).toBeGreaterThan(250_000);
        peak = Math.max(peak, await rssBytes(web.child.pid!));
      }
      // Now read what the flooder was sent: some answers, 'rate-limited' ones, then the close.
      const received: Buffer[] = [rest];
      const ended = new Promise<void>((resolve) => {
        socket.on('data', (d: Buffer) => received.push(d));
        socket.once('close', () => resolve());
        socket.once('end', () => resolve());
      });
      socket.resume();
      await Promise.race([ended, delay(20_000)]);
      socket.destroy();
      const { frames } = readServerFrames(Buffer.concat(received));
      const texts = frames.filter((f) => f.opcode === 0x1).map((f) => JSON.parse(f.payload.toString()) as ServerMessage);
      const answered = texts.filter((m) => 'id' in m && m.ok).length;
      const limited = texts.filter((m) => 'id' in m && !m.ok && m.error.code === 'rate-limited').length;
      const close = frames.find((f) => f.opcode === 0x8);
      const after = await rssBytes(web.child.pid!);
      console.log(
        `web budget: ${REQUESTS} consoleHistory requests of ${(history.length / 1024).toFixed(0)} KiB each; the flooder got ${answered} answers, ` +
          `${limited} rate-limited, then close ${close?.payload.readUInt16BE(0)} after ${(received.reduce((n, b) => n + b.length, 0) / MiB).toFixed(1)} MiB; ` +
          `server RSS before ${(before / MiB).toFixed(1)} MiB, peak ${(peak / MiB).toFixed(1)} MiB, after ${(after / MiB).toFixed(1)} MiB`,
      );
      expect(close, 'the flooder was never told it was disconnected').toBeDefined();
      expect(close!.payload.readUInt16BE(0)).toBe(CLOSE_TOO_FAR_BEHIND);
      expect(close!.payload.subarray(2).toString()).toContain('Too far behind');
      expect(answered + limited).toBeLessThan(REQUESTS); // the rest were never run
      // The cap cut it off once it had been sent more than it may leave unread.
      expect(received.reduce((n, b) => n + b.length, 0)).toBeGreaterThan(MAX_UNREAD_BYTES);
      expect(peak).toBeLessThan(before + RSS_GROWTH_BOUND);
      expect(after).toBeLessThan(before + RSS_GROWTH_BOUND);
      // Still serving, a new client too.
      const late = await Reader.open(web.port, web.spectatorToken);
      expect(await late.call({ type: 'snapshot' })).toMatchObject({ ok: true });
      late.ws.close();
      await teacher.ok({ type: 'stopGuest', host: 'host-a', guest: 'b1' });
    } finally {
      teacher?.ws.close();
      expect(await stopWebCli(web)).toBe(0);
    }
  }, 300_000);
});

describe('miglab: an error nobody handles', () => {
  for (const fault of ['throw', 'reject'] as const) {
    it(`${fault === 'throw' ? 'an uncaught exception' : 'an unhandled rejection'} stops the guests the CLI started, then it exits non-zero saying why`, async () => {
      const web = await startWebCli(['--port', '0'], {
        ...env,
        MIGLAB_TEST_FAULT: fault,
        NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${join(import.meta.dirname, '..', 'helpers', 'fault-on-signal.mjs')}`,
      });
      try {
        const teacher = await Reader.open(web.port, web.info.token);
        await teacher.ok({ type: 'startGuest', host: 'host-a', guest: { name: `f${fault}` } });
        teacher.ws.close();
        expect((await qemuPids(run)).length).toBe(1);
        web.child.kill('SIGUSR2');
        const code = await Promise.race([web.exited, delay(30_000).then(() => 'still running')]);
        expect(code).toBe(70);
        const said = fault === 'throw' ? 'internal error (uncaught exception): injected fault' : 'internal error (unhandled promise rejection): injected rejection';
        expect(web.err()).toContain(said);
        expect(web.err()).toContain('stopping the guests this run started, then exiting');
        expect(await qemuPids(run)).toEqual([]);
      } finally {
        await stopWebCli(web);
        for (const pid of await qemuPids(run)) process.kill(pid, 'SIGKILL'); // only when the test failed
      }
    }, 120_000);
  }
});
