// The link relay on real TCP over loopback: bytes arrive intact both ways, the bandwidth, latency
// and loss of the profile show up in what the peers measure, a pulled cable resets both sides,
// memory stays bounded when the far end stops reading, and close() leaves nothing behind.
import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { canBind } from '../../electron/engine/hosts/ports';
import { LinkProfileError, parseLinkProfile, type LinkProfile } from '../../electron/engine/network/link-profile';
import { LinkRelay, LinkRelayListenError, retransmitTimeoutMs } from '../../electron/engine/network/link-relay';
import { delay, withTimeout } from '../../electron/engine/util/time';

const HOST = '127.0.0.1';
const MiB = 1024 * 1024;

const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** A target server whose every connection `onConn` handles; its sockets are destroyed after the test. */
async function startTarget(onConn: (s: Socket) => void, opts: { pauseOnConnect?: boolean } = {}): Promise<{ server: Server; port: number; sockets: Socket[] }> {
  const sockets: Socket[] = [];
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: opts.pauseOnConnect ?? false }, (s) => {
    sockets.push(s);
    s.on('error', () => {});
    onConn(s);
  });
  await new Promise<void>((resolve) => server.listen(0, HOST, () => resolve()));
  cleanups.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { server, port: (server.address() as { port: number }).port, sockets };
}

async function openRelay(targetPort: number, profile?: Partial<LinkProfile>, seed?: number): Promise<LinkRelay> {
  const relay = await LinkRelay.open({ listen: { address: HOST }, target: { address: HOST, port: targetPort }, profile, seed });
  cleanups.push(() => relay.close());
  return relay;
}

function dial(port: number, allowHalfOpen = true): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: HOST, port, allowHalfOpen, noDelay: true });
    cleanups.push(() => {
      s.destroy();
    });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** Hashes everything a socket reads until its peer's end; rejects on an error. */
function hashUntilEnd(s: Socket): Promise<{ hash: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let bytes = 0;
    s.on('data', (b: Buffer) => {
      h.update(b);
      bytes += b.length;
    });
    s.once('end', () => resolve({ hash: h.digest('hex'), bytes }));
    s.once('error', reject);
  });
}

/** Sends `up` from a client and `down` from the target at the same time, each side ending when done. */
async function exchange(profile: Partial<LinkProfile>, up: Buffer, down: Buffer, seed?: number) {
  let targetGot!: (got: Promise<{ hash: string; bytes: number }>) => void;
  const atTargetP = new Promise<{ hash: string; bytes: number }>((resolve) => (targetGot = (g) => resolve(g)));
  const target = await startTarget((s) => {
    targetGot(hashUntilEnd(s));
    s.end(down);
  });
  const relay = await openRelay(target.port, profile, seed);
  const events: string[] = [];
  relay.on('connection', (id) => events.push(`connection ${id}`));
  const closed = new Promise<number>((resolve) => relay.on('closed', resolve));
  const started = performance.now();
  const client = await dial(relay.port);
  const clientGot = hashUntilEnd(client);
  client.end(up);
  const [atClient, atTarget] = await withTimeout(Promise.all([clientGot, atTargetP]), 15_000, 'the exchange');
  const closedId = await withTimeout(closed, 2000, 'the relayed connection closing');
  events.push(`closed ${closedId}`);
  return { relay, atClient, atTarget, events, ms: performance.now() - started };
}

/** Sends `size` bytes through a relay to a sink; the rate the sink saw from its first byte to the end. */
async function sinkRate(profile: Partial<LinkProfile>, size: number): Promise<{ mbps: number; ms: number }> {
  let first = 0;
  let last = 0;
  let bytes = 0;
  let ended!: () => void;
  const done = new Promise<void>((resolve) => (ended = resolve));
  const target = await startTarget((s) => {
    s.on('data', (b: Buffer) => {
      if (bytes === 0) first = performance.now();
      bytes += b.length;
      last = performance.now();
    });
    s.on('end', () => {
      s.end();
      ended();
    });
  });
  const relay = await openRelay(target.port, profile);
  const c = await dial(relay.port);
  c.end(randomBytes(size));
  await withTimeout(done, 15_000, 'the sink receiving everything');
  expect(bytes).toBe(size);
  return { mbps: bytes / 1e6 / ((last - first) / 1000), ms: last - first };
}

/** Round trips of a small message through an echo target. */
async function pingPong(profile: Partial<LinkProfile>, rounds: number): Promise<number[]> {
  const target = await startTarget((s) => s.on('data', (b: Buffer) => s.write(b)));
  const relay = await openRelay(target.port, profile);
  const c = await dial(relay.port);
  const rtts: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    const back = new Promise<void>((resolve) => c.once('data', () => resolve()));
    c.write(`ping ${i}`);
    await withTimeout(back, 5000, `echo ${i}`);
    rtts.push(performance.now() - t0);
  }
  return rtts;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Resolves with when a socket closed and the errors it saw on the way. */
function closing(s: Socket): Promise<{ at: number; errors: string[] }> {
  const errors: string[] = [];
  s.on('error', (e: NodeJS.ErrnoException) => errors.push(e.code ?? e.message));
  return new Promise((resolve) => s.once('close', () => resolve({ at: performance.now(), errors })));
}

describe('forwarding', () => {
  it('carries 20 MiB each way intact through a neutral link, half-closes in order, and counts the bytes', async () => {
    const up = randomBytes(20 * MiB);
    const down = randomBytes(20 * MiB);
    const r = await exchange({}, up, down);
    expect(r.atTarget).toEqual({ hash: sha(up), bytes: up.length });
    expect(r.atClient).toEqual({ hash: sha(down), bytes: down.length });
    expect(r.events).toEqual(['connection 1', 'closed 1']);
    expect(r.relay.stats()).toMatchObject({
      connections: 0, totalConnections: 1, bytesForward: up.length, bytesBackward: down.length, lossStalls: 0, queuedBytes: 0, cut: false,
    });
  });

  it('carries 20 MiB each way intact through a shaped link (bandwidth and latency)', async () => {
    const up = randomBytes(20 * MiB);
    const down = randomBytes(20 * MiB);
    const r = await exchange({ bandwidthMBps: 400, latencyMs: 20 }, up, down);
    expect(r.atTarget.hash).toBe(sha(up));
    expect(r.atClient.hash).toBe(sha(down));
    expect(r.relay.stats()).toMatchObject({ bytesForward: up.length, bytesBackward: down.length, queuedBytes: 0 });
  });

  it('forwards a half-close after the bytes before it, and the other direction keeps working', async () => {
    const target = await startTarget((s) => {
      const got: Buffer[] = [];
      s.on('data', (b: Buffer) => got.push(b));
      // Answers only once the client has finished: the end must come after all its bytes.
      s.on('end', () => s.end(`answer to ${Buffer.concat(got).length} bytes`));
    });
    const relay = await openRelay(target.port, { latencyMs: 30 });
    const c = await dial(relay.port);
    const reply: Buffer[] = [];
    c.on('data', (b: Buffer) => reply.push(b));
    const ended = new Promise<void>((resolve) => c.once('end', () => resolve()));
    c.end(Buffer.alloc(300_000, 7));
    await withTimeout(ended, 5000, 'the answer');
    expect(Buffer.concat(reply).toString()).toBe('answer to 300000 bytes');
  });

  it('resets the client when the target refuses the connection', async () => {
    const gone = await startTarget(() => {});
    const port = gone.port;
    await new Promise<void>((resolve) => gone.server.close(() => resolve()));
    const relay = await openRelay(port);
    const closed = new Promise<number>((resolve) => relay.on('closed', resolve));
    const c = await dial(relay.port);
    const end = await withTimeout(closing(c), 2000, 'the client seeing the refusal');
    expect(end.errors).toEqual(['ECONNRESET']);
    expect(await closed).toBe(1);
    expect(relay.stats().connections).toBe(0);
  });
});

describe('link emulation', () => {
  it('a neutral link adds almost nothing to a round trip', async () => {
    const rtts = await pingPong({}, 10);
    expect(median(rtts)).toBeLessThan(10);
  });

  it('paces a stream to 20 MB/s within 15 %', async () => {
    const r = await sinkRate({ bandwidthMBps: 20 }, 24_000_000);
    expect(r.ms).toBeGreaterThan(1000);
    expect(r.mbps).toBeGreaterThan(17);
    expect(r.mbps).toBeLessThan(23);
  });

  it('100 ms of latency each way makes a round trip take about 200 ms', async () => {
    const rtts = await pingPong({ latencyMs: 100 }, 5);
    for (const rtt of rtts) expect(rtt).toBeGreaterThanOrEqual(199); // never earlier than arrival + latency
    expect(median(rtts)).toBeGreaterThan(160);
    expect(median(rtts)).toBeLessThan(240);
  });

  it('10 % loss stalls the stream on retransmission timeouts but loses no byte', async () => {
    expect(retransmitTimeoutMs(0)).toBe(200);
    expect(retransmitTimeoutMs(300)).toBe(601);
    const up = randomBytes(2 * MiB);
    const down = randomBytes(2 * MiB);
    const r = await exchange({ lossPercent: 10 }, up, down, 42);
    expect(r.atTarget.hash).toBe(sha(up));
    expect(r.atClient.hash).toBe(sha(down));
    // 256 segments of 16 KiB crossed: about 26 of them lost, each held for 200 ms at least.
    const stalls = r.relay.stats().lossStalls;
    expect(stalls).toBeGreaterThan(5);
    expect(stalls).toBeLessThan(80);
    expect(r.ms).toBeGreaterThanOrEqual(200);
  });

  it('setProfile changes the rate of a connection that is already open', async () => {
    let bytes = 0;
    const target = await startTarget((s) => s.on('data', (b: Buffer) => (bytes += b.length)));
    const relay = await openRelay(target.port, { bandwidthMBps: 10 });
    const c = await dial(relay.port);
    c.write(randomBytes(40 * MiB));
    const rateOver = async (ms: number) => {
      const [b0, t0] = [bytes, performance.now()];
      await delay(ms);
      return (bytes - b0) / 1e6 / ((performance.now() - t0) / 1000);
    };
    await delay(200);
    const slow = await rateOver(600);
    expect(relay.setProfile({ bandwidthMBps: 40 })).toEqual({ bandwidthMBps: 40, latencyMs: 0, lossPercent: 0 });
    await delay(100);
    const fast = await rateOver(600);
    expect(slow).toBeGreaterThan(8);
    expect(slow).toBeLessThan(12);
    expect(fast).toBeGreaterThan(32);
    expect(fast).toBeLessThan(48);
  });
});

describe('the pulled cable', () => {
  it('cut() resets both sides of every connection at once, turns new ones away, and restore() lets them in', async () => {
    const target = await startTarget((s) => s.on('data', (b: Buffer) => s.write(b)));
    const relay = await openRelay(target.port, { latencyMs: 20 });
    const events: string[] = [];
    relay.on('cut', () => events.push('cut'));
    relay.on('restored', () => events.push('restored'));
    relay.on('closed', (id) => events.push(`closed ${id}`));
    const c = await dial(relay.port);
    const clientEnd = closing(c);
    // Traffic in flight both ways while the cable goes.
    const echoed = new Promise<void>((resolve) => c.once('data', () => resolve()));
    const writer = setInterval(() => c.writable && c.write(randomBytes(64 * 1024)), 5);
    cleanups.push(() => clearInterval(writer));
    await withTimeout(echoed, 2000, 'the first echo');
    const targetSide = target.sockets[0]!;
    const targetEnd = closing(targetSide);

    const t0 = performance.now();
    relay.cut();
    relay.cut(); // a second pull changes nothing
    const [atClient, atTarget] = await withTimeout(Promise.all([clientEnd, targetEnd]), 1000, 'both sides seeing the cut');
    clearInterval(writer);
    expect(atClient.at - t0).toBeLessThan(100);
    expect(atTarget.at - t0).toBeLessThan(100);
    // A reset, not a clean FIN: each side got an error.
    expect(atClient.errors.length).toBeGreaterThan(0);
    expect(atClient.errors.every((e) => e === 'ECONNRESET' || e === 'EPIPE')).toBe(true);
    expect(atTarget.errors).toEqual(['ECONNRESET']);
    expect(relay.stats()).toMatchObject({ connections: 0, queuedBytes: 0, cut: true, totalConnections: 1 });

    // While cut, a new connection is accepted and reset at once.
    // (On loopback the reset can arrive before the client has seen its connect complete.)
    const refused = connect({ host: HOST, port: relay.port });
    cleanups.push(() => {
      refused.destroy();
    });
    const refusedEnd = await withTimeout(closing(refused), 1000, 'the new connection being reset');
    expect(refusedEnd.errors).toEqual(['ECONNRESET']);
    expect(target.sockets).toHaveLength(1);

    relay.restore();
    relay.restore();
    const again = await dial(relay.port);
    const reply = new Promise<string>((resolve) => again.once('data', (b: Buffer) => resolve(b.toString())));
    again.write('hello again');
    expect(await withTimeout(reply, 2000, 'an echo after restore')).toBe('hello again');
    expect(events).toEqual(['cut', 'closed 1', 'restored']);
    expect(relay.stats()).toMatchObject({ connections: 1, totalConnections: 2, cut: false });
  });
});

describe('memory', () => {
  async function peakQueue(profile: Partial<LinkProfile>, targetReads: boolean, ms: number) {
    const target = await startTarget((s) => (targetReads ? s.resume() : undefined), { pauseOnConnect: !targetReads });
    const relay = await openRelay(target.port, profile);
    const c = await dial(relay.port);
    c.write(randomBytes(32 * MiB));
    let peak = 0;
    const until = performance.now() + ms;
    while (performance.now() < until) {
      peak = Math.max(peak, relay.stats().queuedBytes);
      await delay(10);
    }
    return { peak, stats: relay.stats() };
  }

  it('stops reading when the target stops reading (neutral link)', async () => {
    const r = await peakQueue({}, false, 600);
    expect(r.peak).toBeLessThanOrEqual(5 * MiB);
    expect(r.stats.bytesForward).toBeLessThan(32 * MiB);
  });

  it('stops reading when the target stops reading (shaped link)', async () => {
    const r = await peakQueue({ latencyMs: 50, bandwidthMBps: 1000 }, false, 600);
    expect(r.peak).toBeLessThanOrEqual(5 * MiB);
    expect(r.stats.bytesForward).toBeLessThan(32 * MiB);
  });

  it('holds at most about 4 MiB for a slow link, however fast the source writes', async () => {
    const r = await peakQueue({ bandwidthMBps: 1 }, true, 600);
    expect(r.peak).toBeGreaterThan(3 * MiB);
    expect(r.peak).toBeLessThanOrEqual(5 * MiB);
  });
});

describe('open and close', () => {
  it('close() drops connections, frees the port and leaves no socket; a second close is a no-op', async () => {
    const target = await startTarget((s) => s.on('data', (b: Buffer) => s.write(b)));
    const relay = await LinkRelay.open({ listen: { address: HOST, port: 0 }, target: { address: HOST, port: target.port }, profile: { latencyMs: 10 } });
    const c = await dial(relay.port, false);
    const echoed = new Promise<void>((resolve) => c.once('data', () => resolve()));
    c.write('x');
    await echoed;
    const clientEnd = closing(c);
    await relay.close();
    await withTimeout(clientEnd, 1000, 'the client seeing the relay close');
    await relay.close();
    expect(await canBind(HOST, relay.port)).toBe(true);
    const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles();
    const relaySockets = handles.filter((h) => {
      if (!(h instanceof Object) || !('remotePort' in h)) return false;
      const s = h as Socket;
      return s.localPort === relay.port || s.remotePort === relay.port || s.remotePort === target.port;
    });
    expect(relaySockets).toEqual([]);
    const serverHandles = handles.filter((h) => h instanceof Object && 'listening' in h && (h as Server).listening && ((h as Server).address() as { port?: number } | null)?.port === relay.port);
    expect(serverHandles).toEqual([]);
  });

  it('a port in use or an address that is not ours gives an error naming address:port', async () => {
    const busy = await startTarget(() => {});
    await expect(LinkRelay.open({ listen: { address: HOST, port: busy.port }, target: { address: HOST, port: busy.port } }))
      .rejects.toThrow(new RegExp(`127\\.0\\.0\\.1:${busy.port}.*EADDRINUSE`));
    const err = await LinkRelay.open({ listen: { address: '192.0.2.1', port: 4567 }, target: { address: HOST, port: busy.port } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LinkRelayListenError);
    expect((err as LinkRelayListenError).code).toBe('EADDRNOTAVAIL');
    expect((err as Error).message).toContain('192.0.2.1:4567');
    await expect(LinkRelay.open({ listen: { address: HOST }, target: { address: HOST, port: 0 } })).rejects.toThrow(/target port must be an integer 1-65535/);
  });
});

describe('profiles', () => {
  it('fills missing fields with the neutral link', () => {
    expect(parseLinkProfile({})).toEqual({ bandwidthMBps: null, latencyMs: 0, lossPercent: 0 });
    expect(parseLinkProfile({ bandwidthMBps: 0.1, latencyMs: 5000, lossPercent: 50 })).toEqual({ bandwidthMBps: 0.1, latencyMs: 5000, lossPercent: 50 });
  });

  it('names every bad field with its allowed range', () => {
    const err = (() => {
      try {
        parseLinkProfile({ bandwidthMBps: 0, latencyMs: -5, lossPercent: 80 });
      } catch (e) {
        return e as LinkProfileError;
      }
      throw new Error('no error');
    })();
    expect(err).toBeInstanceOf(LinkProfileError);
    expect(err.fields).toEqual(['bandwidthMBps', 'latencyMs', 'lossPercent']);
    expect(err.message).toContain('bandwidthMBps must be a number of MB/s from 0.1 to 10000, or null for no limit (got 0)');
    expect(err.message).toContain('latencyMs must be a number of ms from 0 to 5000 (one way) (got -5)');
    expect(err.message).toContain('lossPercent must be a percentage from 0 to 50 (got 80)');
    expect(() => parseLinkProfile({ bandwidthMBps: 'fast' })).toThrow('bandwidthMBps must be a number of MB/s from 0.1 to 10000, or null for no limit (got "fast")');
    expect(() => parseLinkProfile({ latencyMs: Number.NaN })).toThrow('latencyMs must be a number of ms from 0 to 5000 (one way) (got NaN)');
    expect(() => parseLinkProfile({ jitterMs: 3 })).toThrow('unknown field "jitterMs"');
    expect(() => parseLinkProfile('fast')).toThrow('give an object with bandwidthMBps, latencyMs and lossPercent (got "fast")');
  });

  it('open() refuses a bad profile; setProfile() merges, and refuses a bad one without changing anything', async () => {
    await expect(LinkRelay.open({ listen: { address: HOST }, target: { address: HOST, port: 9 }, profile: { lossPercent: 60 } })).rejects.toThrow(LinkProfileError);
    const relay = await openRelay(9, { bandwidthMBps: 5 });
    expect(relay.setProfile({ latencyMs: 40 })).toEqual({ bandwidthMBps: 5, latencyMs: 40, lossPercent: 0 });
    expect(relay.setProfile({ bandwidthMBps: undefined, lossPercent: 1 })).toEqual({ bandwidthMBps: 5, latencyMs: 40, lossPercent: 1 });
    expect(() => relay.setProfile({ latencyMs: 6000, lossPercent: -1 })).toThrow(/latencyMs.*lossPercent/);
    expect(relay.stats().profile).toEqual({ bandwidthMBps: 5, latencyMs: 40, lossPercent: 1 });
    expect(relay.setProfile({ bandwidthMBps: null })).toEqual({ bandwidthMBps: null, latencyMs: 40, lossPercent: 1 });
  });
});
