import { duplexPair } from 'node:stream';
import type { Duplex } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  QmpDisconnectedError,
  QmpMessageTooLargeError,
  QmpProtocolError,
  QmpStateError,
} from '../../electron/engine/qmp/errors';
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  JsonLineProtocol,
  LineDecoder,
  encodeJsonLine,
} from '../../electron/engine/qmp/protocol';
import type { JsonObject } from '../../electron/engine/qmp/protocol';

function feed(decoder: LineDecoder, chunk: string | Buffer): JsonObject[] {
  return [...decoder.push(typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk)];
}

const REPLY = { return: { status: 'running', running: true, note: 'ünïcødé ✓ 🚀' }, id: '__qmp#00001' };
const REPLY_BYTES = Buffer.from(`${JSON.stringify(REPLY)}\r\n`, 'utf8');

describe('LineDecoder', () => {
  it('decodes one message per line, with "\\n" or QEMU\'s "\\r\\n"', () => {
    const d = new LineDecoder();
    expect(feed(d, '{"a":1}\n')).toEqual([{ a: 1 }]);
    expect(feed(d, '{"b":2}\r\n')).toEqual([{ b: 2 }]);
    expect(d.bufferedBytes).toBe(0);
  });

  it('reassembles a message split at every byte boundary (multi-byte UTF-8 included)', () => {
    for (let i = 1; i < REPLY_BYTES.length; i++) {
      const d = new LineDecoder();
      expect(feed(d, REPLY_BYTES.subarray(0, i))).toEqual([]);
      expect(d.bufferedBytes).toBe(i);
      expect(feed(d, REPLY_BYTES.subarray(i))).toEqual([REPLY]);
      expect(d.bufferedBytes).toBe(0);
    }
  });

  it('reassembles a message fed one byte at a time', () => {
    const d = new LineDecoder();
    const out: JsonObject[] = [];
    for (const byte of REPLY_BYTES) out.push(...feed(d, Buffer.from([byte])));
    expect(out).toEqual([REPLY]);
  });

  it('yields several messages from one chunk and keeps the trailing partial line', () => {
    const d = new LineDecoder();
    const chunk = '{"event":"STOP"}\r\n{"return":{},"id":"x"}\n{"event":"RES';
    expect(feed(d, chunk)).toEqual([{ event: 'STOP' }, { return: {}, id: 'x' }]);
    expect(d.bufferedBytes).toBe('{"event":"RES'.length);
    expect(feed(d, 'UME"}\n')).toEqual([{ event: 'RESUME' }]);
  });

  it('skips blank lines', () => {
    const d = new LineDecoder();
    expect(feed(d, '\n\r\n  \n{"a":1}\n\n')).toEqual([{ a: 1 }]);
  });

  it('throws QmpProtocolError on invalid JSON, after the messages that came before it', () => {
    const d = new LineDecoder();
    const seen: JsonObject[] = [];
    expect(() => {
      for (const m of d.push(Buffer.from('{"a":1}\n{not json}\n{"b":2}\n'))) seen.push(m);
    }).toThrow(QmpProtocolError);
    expect(seen).toEqual([{ a: 1 }]);
  });

  it.each(['[]', '[1,2]', '1', '"str"', 'null', 'true'])('rejects the non-object JSON value %s', (value) => {
    const d = new LineDecoder();
    expect(() => feed(d, `${value}\n`)).toThrow(/not an object/);
  });

  it('accepts a line of exactly maxMessageBytes and rejects one byte more', () => {
    const max = 64;
    const exact = `{"k":"${'x'.repeat(max - 8)}"}`;
    expect(Buffer.byteLength(exact)).toBe(max);
    expect(feed(new LineDecoder(max), `${exact}\n`)).toHaveLength(1);
    const over = `{"k":"${'x'.repeat(max - 7)}"}`;
    const err = (() => {
      try {
        feed(new LineDecoder(max), `${over}\n`);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(QmpMessageTooLargeError);
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect((err as QmpMessageTooLargeError).limit).toBe(max);
  });

  it('gives up on an unterminated line as soon as it passes the cap, never buffering more', () => {
    const max = 100;
    const d = new LineDecoder(max);
    let thrown: unknown;
    let pushes = 0;
    try {
      for (pushes = 0; pushes < 1000; pushes++) {
        feed(d, 'x'.repeat(30));
        expect(d.bufferedBytes).toBeLessThanOrEqual(max);
      }
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(QmpMessageTooLargeError);
    expect(pushes).toBe(3); // 90 bytes buffered, the 4th chunk would make 120
    expect(d.bufferedBytes).toBe(0);
  });

  it('rejects a single huge chunk without a newline', () => {
    const d = new LineDecoder(1024);
    expect(() => feed(d, Buffer.alloc(1 << 20, 0x41))).toThrow(QmpMessageTooLargeError);
    expect(d.bufferedBytes).toBe(0);
  });

  it('defaults to an 8 MiB cap and refuses nonsense caps', () => {
    expect(new LineDecoder().maxMessageBytes).toBe(8 * 1024 * 1024);
    expect(DEFAULT_MAX_MESSAGE_BYTES).toBe(8 * 1024 * 1024);
    expect(() => new LineDecoder(0)).toThrow(RangeError);
    expect(() => new LineDecoder(1.5)).toThrow(RangeError);
  });
});

describe('encodeJsonLine', () => {
  it('writes exactly one line even when strings contain newlines', () => {
    const line = encodeJsonLine({ execute: 'human-monitor-command', arguments: { 'command-line': 'a\nb' } });
    expect(line.endsWith('\n')).toBe(true);
    expect(line.indexOf('\n')).toBe(line.length - 1);
    expect(feed(new LineDecoder(), line)).toEqual([
      { execute: 'human-monitor-command', arguments: { 'command-line': 'a\nb' } },
    ]);
  });
});

interface Harness {
  proto: JsonLineProtocol;
  messages: JsonObject[];
  closes: Array<{ cause: Error | undefined; wasRunning: boolean }>;
  ours: Duplex;
  peer: Duplex;
  signal: AbortSignal;
}

function harness(opts: { maxMessageBytes?: number } = {}): Harness {
  const messages: JsonObject[] = [];
  const closes: Harness['closes'] = [];
  const proto = new JsonLineProtocol(
    {
      onMessage: (m) => {
        if (m.boom) throw new QmpProtocolError('handler refused the message');
        messages.push(m);
      },
      onClosed: (cause, wasRunning) => closes.push({ cause, wasRunning }),
    },
    { ...opts, label: 'test connection' },
  );
  const [ours, peer] = duplexPair();
  const signal = proto.begin();
  proto.attach(ours, signal);
  return { proto, messages, closes, ours, peer, signal };
}

function nextTick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

describe('JsonLineProtocol', () => {
  it('walks idle -> connecting -> running -> disconnecting -> idle', async () => {
    const h = harness();
    expect(h.proto.runstate).toBe('connecting');
    h.proto.markRunning(h.signal);
    expect(h.proto.runstate).toBe('running');
    const done = h.proto.disconnect();
    expect(h.proto.runstate).toBe('disconnecting');
    await done;
    expect(h.proto.runstate).toBe('idle');
    expect(h.ours.destroyed).toBe(true);
    expect(h.closes).toEqual([{ cause: undefined, wasRunning: true }]);
    h.peer.destroy();
  });

  it('refuses to begin twice', () => {
    const h = harness();
    expect(() => h.proto.begin()).toThrow(QmpStateError);
    h.ours.destroy();
    h.peer.destroy();
    return h.proto.disconnect();
  });

  it('writes one JSON object per line', async () => {
    const h = harness();
    const got: string[] = [];
    h.peer.on('data', (c: Buffer) => got.push(c.toString()));
    h.proto.send({ execute: 'query-status', id: 'a' });
    h.proto.send({ execute: 'stop', id: 'b' });
    await nextTick();
    expect(got.join('')).toBe('{"execute":"query-status","id":"a"}\n{"execute":"stop","id":"b"}\n');
    await h.proto.disconnect();
    h.peer.destroy();
  });

  it('delivers messages written by the peer', async () => {
    const h = harness();
    h.peer.write('{"a":1}\r\n{"b"');
    h.peer.write(':2}\n');
    await nextTick();
    expect(h.messages).toEqual([{ a: 1 }, { b: 2 }]);
    await h.proto.disconnect();
    h.peer.destroy();
  });

  it('tears down on garbage, drops what follows, and reports the protocol error once', async () => {
    const h = harness();
    h.proto.markRunning(h.signal);
    h.peer.write('{"a":1}\nthis is not json\n{"b":2}\n');
    await nextTick();
    await h.proto.disconnect(); // joins the teardown already under way
    expect(h.messages).toEqual([{ a: 1 }]);
    expect(h.closes).toHaveLength(1);
    expect(h.closes[0]!.cause).toBeInstanceOf(QmpProtocolError);
    expect(h.closes[0]!.wasRunning).toBe(true);
    expect(h.proto.runstate).toBe('idle');
    expect(h.ours.destroyed).toBe(true);
    h.peer.destroy();
  });

  it('tears down when a message handler throws', async () => {
    const h = harness();
    h.peer.write('{"boom":true}\n{"after":1}\n');
    await nextTick();
    await h.proto.disconnect();
    expect(h.messages).toEqual([]);
    expect(h.closes[0]!.cause?.message).toBe('handler refused the message');
  });

  it('tears down on an oversized message and stops buffering', async () => {
    const h = harness({ maxMessageBytes: 256 });
    h.peer.write('x'.repeat(200));
    await nextTick();
    expect(h.proto.runstate).toBe('connecting');
    h.peer.write('x'.repeat(200));
    await nextTick();
    await h.proto.disconnect();
    expect(h.closes[0]!.cause).toBeInstanceOf(QmpMessageTooLargeError);
    expect(h.proto.runstate).toBe('idle');
    h.peer.destroy();
  });

  it('treats EOF from the peer as a disconnect', async () => {
    const h = harness();
    h.proto.markRunning(h.signal);
    h.peer.end();
    await nextTick();
    await h.proto.disconnect();
    expect(h.closes).toHaveLength(1);
    expect(h.closes[0]!.cause).toBeInstanceOf(QmpDisconnectedError);
    expect(h.closes[0]!.cause?.message).toMatch(/closed by the peer/);
    h.peer.destroy();
  });

  it('treats a stream error as a disconnect naming the error', async () => {
    const h = harness();
    h.ours.destroy(new Error('ECONNRESET-ish'));
    await nextTick();
    await h.proto.disconnect();
    expect(h.closes[0]!.cause).toBeInstanceOf(QmpDisconnectedError);
    expect(h.closes[0]!.cause?.message).toMatch(/ECONNRESET-ish/);
    h.peer.destroy();
  });

  it('makes disconnect idempotent: concurrent and repeated calls share one teardown', async () => {
    const h = harness();
    h.proto.markRunning(h.signal);
    const a = h.proto.disconnect();
    const b = h.proto.disconnect();
    expect(b).toBe(a);
    await Promise.all([a, b, h.proto.disconnect()]);
    await h.proto.disconnect();
    expect(h.closes).toHaveLength(1);
    expect(h.proto.runstate).toBe('idle');
    h.peer.destroy();
  });

  it('refuses to send when not connected', async () => {
    const h = harness();
    await h.proto.disconnect();
    expect(() => h.proto.send({ execute: 'x' })).toThrow(QmpStateError);
    h.peer.destroy();
  });

  it('aborts the connection signal on teardown and refuses a late attach', async () => {
    const messages: JsonObject[] = [];
    const proto = new JsonLineProtocol({ onMessage: (m) => messages.push(m), onClosed: () => {} });
    const signal = proto.begin();
    await proto.disconnect();
    expect(signal.aborted).toBe(true);
    const [ours, peer] = duplexPair();
    expect(() => proto.attach(ours, signal)).toThrow(QmpDisconnectedError);
    expect(ours.destroyed).toBe(true);
    peer.destroy();
    expect(proto.runstate).toBe('idle');
  });
});
