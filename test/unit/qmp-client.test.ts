import { existsSync } from 'node:fs';
import { unlink, writeFile } from 'node:fs/promises';
import { duplexPair } from 'node:stream';
import { describe, expect, it, onTestFinished } from 'vitest';
import { QmpClient } from '../../electron/engine/qmp/client';
import type { QmpClientOptions } from '../../electron/engine/qmp/client';
import { qemuVersionString, quit } from '../../electron/engine/qmp/commands';
import {
  QmpCommandError,
  QmpConnectError,
  QmpDisconnectedError,
  QmpError,
  QmpMessageTooLargeError,
  QmpProtocolError,
  QmpStateError,
  QmpTimeoutError,
} from '../../electron/engine/qmp/errors';
import type { QmpEvent } from '../../electron/engine/qmp/types';
import { DEFAULT_GREETING, FakeQmpServer, sleep } from '../helpers/fake-qmp-server';
import type { FakeQmpConnection, FakeQmpServerOptions } from '../helpers/fake-qmp-server';

async function setup(opts: FakeQmpServerOptions = {}, clientOpts: QmpClientOptions = {}) {
  const server = await FakeQmpServer.create(opts);
  const client = new QmpClient({ defaultTimeoutMs: 2000, ...clientOpts });
  onTestFinished(async () => {
    await client.disconnect();
    await server.close();
    expect(existsSync(server.dir)).toBe(false);
  });
  return { server, client };
}

async function connected(
  opts: FakeQmpServerOptions = {},
  clientOpts: QmpClientOptions = {},
): Promise<{ server: FakeQmpServer; client: QmpClient; conn: FakeQmpConnection }> {
  const { server, client } = await setup(opts, clientOpts);
  const conn = server.nextConnection();
  await client.connect(server.path);
  return { server, client, conn: await conn };
}

/** Resolves once the client reports the disconnect (and is back to idle). */
function disconnected(client: QmpClient): Promise<Error | undefined> {
  return new Promise((resolve) => {
    const off = client.onDisconnect((cause) => {
      off();
      resolve(cause);
    });
  });
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the promise to reject');
}

describe('QmpClient: negotiation', () => {
  it('reads the greeting, sends qmp_capabilities, and ends up running', async () => {
    const { server, client } = await setup();
    expect(client.runstate).toBe('idle');
    const connP = server.nextConnection();
    const connecting = client.connect(server.path);
    expect(client.runstate).toBe('connecting');
    const greeting = await connecting;
    const conn = await connP;

    expect(greeting).toEqual(DEFAULT_GREETING);
    expect(client.greeting).toEqual(DEFAULT_GREETING);
    expect(qemuVersionString(greeting.QMP.version)).toBe('7.2.22');
    expect(client.runstate).toBe('running');
    expect(conn.received.map((c) => c.raw)).toEqual([{ execute: 'qmp_capabilities', id: '__qmp#00001' }]);

    await client.disconnect();
    expect(client.runstate).toBe('idle');
    expect(client.greeting).toBeUndefined();
    await conn.closed;
  });

  it('works over any Duplex via attach()', async () => {
    const [ours, peer] = duplexPair();
    onTestFinished(() => {
      peer.destroy();
    });
    const client = new QmpClient();
    peer.on('data', (chunk: Buffer) => {
      const msg = JSON.parse(chunk.toString()) as { id: string };
      peer.write(`{"return": {}, "id": "${msg.id}"}\r\n`);
    });
    peer.write(`${JSON.stringify(DEFAULT_GREETING)}\r\n`);
    await expect(client.attach(ours)).resolves.toEqual(DEFAULT_GREETING);
    expect(client.runstate).toBe('running');
    await client.disconnect();
    expect(ours.destroyed).toBe(true);
  });

  it('times out when no greeting comes, and cleans up', async () => {
    const { server, client } = await setup({ greeting: null });
    const connP = server.nextConnection();
    const err = await rejection(client.connect(server.path, { timeoutMs: 100 }));
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err.message).toMatch(/greeting/);
    expect(client.runstate).toBe('idle');
    await (await connP).closed;
  });

  it('drops events a previous connection left queued ahead of the greeting, but not without bound', async () => {
    const stale = (n: number) => Array.from({ length: n }, (_, i) => JSON.stringify({ timestamp: { seconds: 1, microseconds: i }, event: 'MIGRATION', data: { status: 'completed' } }) + '\r\n').join('');
    const { server, client } = await setup({ greeting: stale(2) + JSON.stringify(DEFAULT_GREETING) + '\r\n' });
    const seen: QmpEvent[] = [];
    client.onEvent('MIGRATION', (ev) => seen.push(ev));
    expect(await client.connect(server.path)).toEqual(DEFAULT_GREETING);
    expect(client.runstate).toBe('running');
    expect(seen).toEqual([]);
    await client.disconnect();
    const flood = await setup({ greeting: stale(17) + JSON.stringify(DEFAULT_GREETING) + '\r\n' });
    const err = await rejection(flood.client.connect(flood.server.path));
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect(err.message).toMatch(/Expected a QMP greeting, got: .*MIGRATION/);
  });

  it('rejects a malformed greeting with a protocol error', async () => {
    const { server, client } = await setup({ greeting: { hello: 'world' } });
    const err = await rejection(client.connect(server.path));
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect(err.message).toMatch(/Expected a QMP greeting/);
    expect(client.runstate).toBe('idle');
  });

  it('fails the connect when qmp_capabilities is refused', async () => {
    const { server, client } = await setup({
      handlers: { qmp_capabilities: (cmd, conn) => conn.replyError(cmd, 'CommandNotFound', 'nope') },
    });
    const err = await rejection(client.connect(server.path));
    expect(err).toBeInstanceOf(QmpCommandError);
    expect((err as QmpCommandError).command).toBe('qmp_capabilities');
    expect(client.runstate).toBe('idle');
  });

  it('gives up negotiating when disconnect() is called before the greeting', async () => {
    const { server, client } = await setup({ greeting: null });
    const connP = server.nextConnection();
    const connecting = client.connect(server.path, { timeoutMs: 60_000 });
    const conn = await connP;
    await client.disconnect();
    const err = await rejection(connecting);
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect(client.runstate).toBe('idle');
    await conn.closed;
  });

  it('refuses to connect twice', async () => {
    const { server, client } = await connected();
    const err = await rejection(client.connect(server.path));
    expect(err).toBeInstanceOf(QmpStateError);
    expect(client.runstate).toBe('running');
  });

  it('can reconnect after a disconnect', async () => {
    const { server, client, conn } = await connected();
    await client.disconnect();
    await conn.closed;
    await client.connect(server.path);
    const conn2 = await server.nextConnection();
    const p = client.execute('query-name');
    conn2.reply(await conn2.nextCommand('query-name'), { name: 'again' });
    await expect(p).resolves.toEqual({ name: 'again' });
  });
});

describe('QmpClient: connect retries', () => {
  it('retries while the socket is missing or refusing, then connects', async () => {
    const { server, client } = await setup({ listen: false });
    const started = performance.now();
    const connecting = client.connect(server.path, { retryUntilMs: 5000 });
    await sleep(120); // ENOENT for a while
    await writeFile(server.path, 'not a socket'); // connect() to a regular file: ECONNREFUSED
    await sleep(120);
    await unlink(server.path);
    await server.listen();
    await expect(connecting).resolves.toEqual(DEFAULT_GREETING);
    expect(performance.now() - started).toBeGreaterThanOrEqual(200);
    expect(client.runstate).toBe('running');
  });

  it('gives up after the retry window with a QmpConnectError naming the path', async () => {
    const { server, client } = await setup({ listen: false });
    const started = performance.now();
    const err = await rejection(client.connect(server.path, { retryUntilMs: 300 }));
    const elapsed = performance.now() - started;
    expect(err).toBeInstanceOf(QmpConnectError);
    expect((err as QmpConnectError).path).toBe(server.path);
    expect(err.message).toContain(server.path);
    expect(err.message).toMatch(/ENOENT/);
    expect(elapsed).toBeGreaterThanOrEqual(280);
    expect(elapsed).toBeLessThan(2000);
    expect(client.runstate).toBe('idle');
  });

  it('fails at once without retryUntilMs', async () => {
    const { server, client } = await setup({ listen: false });
    const started = performance.now();
    await expect(client.connect(server.path)).rejects.toBeInstanceOf(QmpConnectError);
    expect(performance.now() - started).toBeLessThan(500);
  });

  it('stops retrying when disconnect() is called', async () => {
    const { server, client } = await setup({ listen: false });
    const connecting = client.connect(server.path, { retryUntilMs: 60_000 });
    await sleep(50);
    const started = performance.now();
    await client.disconnect();
    const err = await rejection(connecting);
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect(performance.now() - started).toBeLessThan(500);
    expect(client.runstate).toBe('idle');
  });
});

describe('QmpClient: commands', () => {
  it('sends execute/arguments/id and resolves with the return value', async () => {
    const { client, conn } = await connected();
    const p = client.execute<{ status: string }>('query-status');
    const q = client.execute('migrate-set-parameters', { 'downtime-limit': 300 });
    const status = await conn.nextCommand('query-status');
    const setp = await conn.nextCommand('migrate-set-parameters');
    expect(status.raw).toEqual({ execute: 'query-status', id: '__qmp#00002' });
    expect(setp.raw).toEqual({
      execute: 'migrate-set-parameters',
      arguments: { 'downtime-limit': 300 },
      id: '__qmp#00003',
    });
    // Replies are matched by id, not by order.
    conn.reply(setp, {});
    conn.reply(status, { status: 'running', running: true });
    await expect(p).resolves.toEqual({ status: 'running', running: true });
    await expect(q).resolves.toEqual({});
  });

  it('refuses to execute unless running', async () => {
    const client = new QmpClient();
    const err = await rejection(client.execute('query-status'));
    expect(err).toBeInstanceOf(QmpStateError);
    expect(err.message).toMatch(/query-status.*idle/);
    expect((err as QmpStateError).command).toBe('query-status');
  });

  it('turns an error reply into a QmpCommandError with class, desc, command and args', async () => {
    const { client, conn } = await connected();
    const p = client.execute('migrate', { uri: 'tcp:127.0.0.1:1' });
    conn.replyError(await conn.nextCommand('migrate'), 'GenericError', 'Failed to connect to 127.0.0.1:1');
    const err = (await rejection(p)) as QmpCommandError;
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toBeInstanceOf(QmpError);
    expect(err.errorClass).toBe('GenericError');
    expect(err.desc).toBe('Failed to connect to 127.0.0.1:1');
    expect(err.command).toBe('migrate');
    expect(err.args).toEqual({ uri: 'tcp:127.0.0.1:1' });
    expect(err.message).toBe('QMP command "migrate" failed: GenericError: Failed to connect to 127.0.0.1:1');
    expect(client.runstate).toBe('running'); // a command error is not a connection error
  });

  it('times out a command, forgets it, and ignores its late reply', async () => {
    const { client, conn } = await connected();
    const p = client.execute('query-migrate', undefined, { timeoutMs: 60 });
    const cmd = await conn.nextCommand('query-migrate');
    const err = (await rejection(p)) as QmpTimeoutError;
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err.command).toBe('query-migrate');
    expect(err.timeoutMs).toBe(60);
    expect(err.message).toBe('QMP command "query-migrate" timed out after 60 ms');
    expect(client.pendingCount).toBe(0);

    conn.reply(cmd, { status: 'late' });
    const next = client.execute('query-name');
    conn.reply(await conn.nextCommand('query-name'), { name: 'still fine' });
    await expect(next).resolves.toEqual({ name: 'still fine' });
    expect(client.runstate).toBe('running');
  });

  it('aborts a command through its AbortSignal', async () => {
    const { client, conn } = await connected();
    const ac = new AbortController();
    const p = client.execute('query-migrate', undefined, { signal: ac.signal });
    const cmd = await conn.nextCommand('query-migrate');
    ac.abort(new Error('user gave up'));
    await expect(p).rejects.toThrow('user gave up');
    expect(client.pendingCount).toBe(0);
    conn.reply(cmd, {});
    await sleep(10);
    expect(client.runstate).toBe('running');
  });
});

describe('QmpClient: framing over a real socket', () => {
  it('reassembles a reply split at every byte boundary', async () => {
    const [ours, peer] = duplexPair();
    onTestFinished(() => {
      peer.destroy();
    });
    const client = new QmpClient();
    onTestFinished(() => client.disconnect());
    const ids: string[] = [];
    let wake: (() => void) | undefined;
    peer.on('data', (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n').filter(Boolean)) ids.push((JSON.parse(line) as { id: string }).id);
      wake?.();
    });
    const nextId = async (): Promise<string> => {
      while (ids.length === 0) await new Promise<void>((r) => (wake = r));
      return ids.shift()!;
    };
    peer.write(`${JSON.stringify(DEFAULT_GREETING)}\r\n`);
    const attaching = client.attach(ours);
    peer.write(`{"return": {}, "id": "${await nextId()}"}\r\n`);
    await attaching;

    const ret = { status: 'running', running: true, note: 'ünïcødé ✓' };
    for (let cut = 1; ; cut++) {
      const p = client.execute('query-status');
      const bytes = Buffer.from(`${JSON.stringify({ return: ret, id: await nextId() })}\r\n`);
      if (cut >= bytes.length) {
        peer.write(bytes);
        await p;
        break;
      }
      peer.write(bytes.subarray(0, cut));
      await new Promise((r) => setImmediate(r)); // a separate read for each half
      peer.write(bytes.subarray(cut));
      await expect(p).resolves.toEqual(ret);
    }
    expect(client.runstate).toBe('running');
  });

  it('reassembles a reply sent in two socket writes', async () => {
    const { client, conn } = await connected();
    const p = client.execute('query-kvm');
    const cmd = await conn.nextCommand('query-kvm');
    const line = `${JSON.stringify({ return: { enabled: false, present: true }, id: cmd.id })}\r\n`;
    await conn.sendRawFlushed(line.slice(0, 13));
    await sleep(20);
    await conn.sendRawFlushed(line.slice(13));
    await expect(p).resolves.toEqual({ enabled: false, present: true });
  });

  it('handles several messages arriving in one read', async () => {
    const { client, conn } = await connected();
    const seen: string[] = [];
    client.onEvent('*', (ev) => seen.push(ev.event));
    const a = client.execute('cont');
    const b = client.execute('query-status');
    const ca = await conn.nextCommand('cont');
    const cb = await conn.nextCommand('query-status');
    const ts = { seconds: 1, microseconds: 2 };
    conn.sendRaw(
      [
        JSON.stringify({ event: 'RESUME', timestamp: ts }),
        JSON.stringify({ return: { status: 'running', running: true }, id: cb.id }),
        JSON.stringify({ event: 'MIGRATION_PASS', data: { pass: 1 }, timestamp: ts }),
        JSON.stringify({ return: {}, id: ca.id }),
        '',
      ].join('\r\n'),
    );
    await expect(a).resolves.toEqual({});
    await expect(b).resolves.toEqual({ status: 'running', running: true });
    expect(seen).toEqual(['RESUME', 'MIGRATION_PASS']);
  });
});

describe('QmpClient: events', () => {
  it('delivers an event sent before the reply to a waiter registered before execute', async () => {
    const { client } = await connected({
      handlers: {
        stop: async (cmd, conn) => {
          conn.event('STOP');
          await sleep(20);
          conn.reply(cmd);
        },
      },
    });
    const order: string[] = [];
    const waiting = client.waitForEvent('STOP').then((ev) => {
      order.push('event');
      return ev;
    });
    await client.execute('stop');
    order.push('reply');
    const ev = await waiting;
    expect(order).toEqual(['event', 'reply']);
    expect(ev.event).toBe('STOP');
    expect(ev.data).toEqual({});
    expect(ev.timestamp.seconds).toBeGreaterThan(0);
    expect(typeof ev.receivedAt).toBe('number');
  });

  it('delivers the event even when it shares a read with the reply', async () => {
    const { client } = await connected({
      handlers: {
        stop: (cmd, conn) => {
          conn.sendRaw(
            `${JSON.stringify({ event: 'STOP', timestamp: { seconds: 5, microseconds: 6 } })}\r\n` +
              `${JSON.stringify({ return: {}, id: cmd.id })}\r\n`,
          );
        },
      },
    });
    const w = client.waitForEvent('STOP');
    await client.execute('stop');
    await expect(w).resolves.toMatchObject({ event: 'STOP', timestamp: { seconds: 5, microseconds: 6 } });
  });

  it('filters with a predicate and supports executeAndWaitEvent', async () => {
    const { client } = await connected({
      handlers: {
        migrate: async (cmd, conn) => {
          conn.reply(cmd);
          for (const status of ['setup', 'active', 'completed']) {
            await sleep(5);
            conn.event('MIGRATION', { status });
          }
        },
      },
    });
    const { result, event } = await client.executeAndWaitEvent(
      'migrate',
      { uri: 'tcp:127.0.0.1:4444' },
      'MIGRATION',
      (ev) => ev.data.status === 'completed',
    );
    expect(result).toEqual({});
    expect(event.data).toEqual({ status: 'completed' });
  });

  it('executeAndWaitEvent fails with the command error and drops its wait', async () => {
    const { client } = await connected({
      handlers: { migrate: (cmd, conn) => conn.replyError(cmd, 'GenericError', 'no') },
    });
    await expect(client.executeAndWaitEvent('migrate', { uri: 'x' }, 'MIGRATION')).rejects.toBeInstanceOf(
      QmpCommandError,
    );
  });

  it('lets listeners subscribe by name or "*" and unsubscribe', async () => {
    const { client, conn } = await connected();
    const named: QmpEvent[] = [];
    const all: string[] = [];
    const off = client.onEvent('RESUME', (ev) => named.push(ev));
    client.onEvent('*', (ev) => all.push(ev.event));
    conn.event('RESUME');
    conn.event('STOP');
    await client.waitForEvent('STOP');
    off();
    conn.event('RESUME');
    await client.waitForEvent('RESUME');
    expect(named.map((e) => e.event)).toEqual(['RESUME']);
    expect(all).toEqual(['RESUME', 'STOP', 'RESUME']);
  });

  it('survives a listener that throws', async () => {
    const { client, conn } = await connected();
    const warnings: string[] = [];
    const onWarning = (w: Error): void => {
      warnings.push(w.message);
    };
    process.on('warning', onWarning);
    onTestFinished(() => {
      process.off('warning', onWarning);
    });
    client.onEvent('STOP', () => {
      throw new Error('listener bug');
    });
    conn.event('STOP');
    await client.waitForEvent('STOP');
    const p = client.execute('query-name');
    conn.reply(await conn.nextCommand('query-name'), {});
    await expect(p).resolves.toEqual({});
    await sleep(5);
    expect(warnings.some((w) => w.includes('listener bug'))).toBe(true);
  });

  it('times out a wait with QmpTimeoutError naming the event', async () => {
    const { client } = await connected();
    const err = (await rejection(client.waitForEvent('SHUTDOWN', { timeoutMs: 40 }))) as QmpTimeoutError;
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err.event).toBe('SHUTDOWN');
    expect(err.message).toBe('Timed out after 40 ms waiting for QMP event "SHUTDOWN"');
  });

  it('stops waiting when its AbortSignal fires', async () => {
    const { client, conn } = await connected();
    const ac = new AbortController();
    const w = client.waitForEvent('MIGRATION', { signal: ac.signal });
    ac.abort(new Error('not interested any more'));
    await expect(w).rejects.toThrow('not interested any more');
    // A later event must not trip over the dropped waiter, and goes to the live one.
    const live = client.waitForEvent('MIGRATION');
    conn.event('MIGRATION', { status: 'completed' });
    await expect(live).resolves.toMatchObject({ data: { status: 'completed' } });
    expect(client.runstate).toBe('running');
  });

  it('refuses to wait for events while idle', async () => {
    await expect(new QmpClient().waitForEvent('STOP')).rejects.toBeInstanceOf(QmpStateError);
  });
});

describe('QmpClient: broken peers and disconnects', () => {
  it('tears down on a garbage line: pending calls fail with QmpProtocolError, runstate back to idle', async () => {
    const { client, conn } = await connected();
    const gone = disconnected(client);
    const p1 = client.execute('query-status');
    const p2 = client.execute('query-migrate');
    const w = client.waitForEvent('STOP');
    await conn.nextCommand('query-migrate');
    conn.sendRaw('this is {not json\r\n');
    const err = await rejection(p1);
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect(err.message).toMatch(/invalid JSON/);
    await expect(p2).rejects.toBe(err);
    await expect(w).rejects.toBe(err);
    expect(await gone).toBe(err);
    expect(client.runstate).toBe('idle');
    await conn.closed;
  });

  it.each([
    ['a non-object JSON value', '[1,2,3]'],
    ['a reply with neither return nor error', '{"id": "__qmp#00002"}'],
    ['an id-less error', '{"error": {"class": "GenericError", "desc": "JSON parse error"}}'],
    ['an event without a name', '{"event": 42}'],
    ['a second greeting', JSON.stringify(DEFAULT_GREETING)],
  ])('treats %s as a protocol error', async (_what, line) => {
    const { client, conn } = await connected();
    const p = client.execute('query-status');
    await conn.nextCommand('query-status');
    conn.sendRaw(`${line}\r\n`);
    await expect(p).rejects.toBeInstanceOf(QmpProtocolError);
    await client.disconnect();
    expect(client.runstate).toBe('idle');
  });

  it('rejects an oversized terminated message with QmpMessageTooLargeError', async () => {
    const { client, conn } = await connected({}, { maxMessageBytes: 4096 });
    const p = client.execute('query-qmp-schema');
    const cmd = await conn.nextCommand('query-qmp-schema');
    conn.send({ return: [{ name: 'x'.repeat(5000) }], id: cmd.id });
    const err = (await rejection(p)) as QmpMessageTooLargeError;
    expect(err).toBeInstanceOf(QmpMessageTooLargeError);
    expect(err.limit).toBe(4096);
    await conn.closed;
    expect(client.runstate).toBe('idle');
  });

  it('rejects an endless unterminated message without buffering it', async () => {
    const { client, conn } = await connected({}, { maxMessageBytes: 4096 });
    const failed = rejection(client.execute('query-status'));
    await conn.nextCommand('query-status');
    const chunk = '{"return": "' + 'y'.repeat(1000);
    let sent = 0;
    // Keep streaming well past the cap; the client must hang up rather than keep reading.
    while (!conn.isClosed && sent < 1_000_000) {
      await conn.sendRawFlushed(chunk);
      sent += chunk.length;
    }
    const err = (await failed) as QmpMessageTooLargeError;
    expect(err).toBeInstanceOf(QmpMessageTooLargeError);
    // At most one socket read past the cap was looked at, never the whole stream.
    expect(err.size).toBeLessThan(4096 + 65536);
    await conn.closed;
    expect(sent).toBeLessThan(1_000_000);
    expect(client.runstate).toBe('idle');
  });

  it('fails a call cut off by the peer with QmpDisconnectedError naming the command', async () => {
    const { client } = await connected({ handlers: { migrate: (_cmd, conn) => conn.destroy() } });
    const gone = disconnected(client);
    const err = await rejection(client.execute('migrate', { uri: 'tcp:10.0.0.2:4444' }));
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect((err as QmpDisconnectedError).command).toBe('migrate');
    expect(err.message).toMatch(/"migrate"/);
    expect(await gone).toBeInstanceOf(QmpDisconnectedError);
    expect(client.runstate).toBe('idle');
  });

  it('treats EOF mid-call the same way', async () => {
    const { client } = await connected({ handlers: { 'query-migrate': (_cmd, conn) => void conn.end() } });
    const err = await rejection(client.execute('query-migrate'));
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect(err.message).toMatch(/query-migrate.*closed by the peer/);
  });

  it('makes disconnect idempotent and concurrent-safe, notifying once with no cause', async () => {
    const { client, conn } = await connected();
    const causes: Array<Error | undefined> = [];
    client.onDisconnect((cause) => causes.push(cause));
    const pending = client.execute('query-migrate');
    const waiting = client.waitForEvent('MIGRATION');
    await conn.nextCommand('query-migrate');
    const d1 = client.disconnect();
    const d2 = client.disconnect();
    expect(client.runstate).toBe('disconnecting');
    await Promise.all([d1, d2]);
    await client.disconnect();
    expect(causes).toEqual([undefined]);
    const err = await rejection(pending);
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect(err.message).toBe('QMP command "query-migrate" did not complete because disconnect() was called');
    await expect(waiting).rejects.toBeInstanceOf(QmpDisconnectedError);
    expect(client.runstate).toBe('idle');
    await conn.closed;
    await expect(client.execute('query-status')).rejects.toBeInstanceOf(QmpStateError);
  });

  it('lets quit() succeed whether QEMU replies before closing or just closes', async () => {
    const { client } = await connected({
      handlers: {
        quit: (cmd, conn) => {
          conn.event('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
          conn.reply(cmd);
          conn.destroy();
        },
      },
    });
    const shutdown = client.waitForEvent('SHUTDOWN');
    await quit(client);
    await expect(shutdown).resolves.toMatchObject({ data: { reason: 'host-qmp-quit' } });

    const { client: c2 } = await connected({ handlers: { quit: (_cmd, conn) => conn.destroy() } });
    await expect(quit(c2)).resolves.toBeUndefined();
  });
});
