import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LabloadChannel, LabloadError } from '../../electron/engine/guest/labload-channel';
import {
  HeartbeatStats,
  LABLOAD_VERSION,
  checkHeartbeatInterval,
  checkStartArgs,
  formatCommand,
  parseGuestLine,
  parseKeyValues,
  toReport,
  toStatus,
  toVerifyResult,
} from '../../electron/engine/guest/labload-protocol';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

describe('parseGuestLine', () => {
  it('parses heartbeats', () => {
    expect(parseGuestLine('HB 12 3456789')).toEqual({ kind: 'hb', seq: 12, guestUs: 3456789 });
    expect(parseGuestLine('HB 1 2\r')).toEqual({ kind: 'hb', seq: 1, guestUs: 2 });
  });

  it('rejects malformed heartbeats', () => {
    expect(parseGuestLine('HB 12')).toBeNull();
    expect(parseGuestLine('HB x 1')).toBeNull();
    expect(parseGuestLine('HB 1 2 3')).toBeNull();
    expect(parseGuestLine('HB -1 2')).toBeNull();
  });

  it('parses READY with and without the optional keys', () => {
    expect(parseGuestLine('READY name=vm1 ip=10.0.0.2/24 version=1.0.0')).toEqual({
      kind: 'ready',
      info: { name: 'vm1', ip: '10.0.0.2/24', version: '1.0.0' },
    });
    expect(parseGuestLine('READY name=vm1 ip=- version=1.0.0 bootUs=2300000 settle=quiet')).toEqual({
      kind: 'ready',
      info: { name: 'vm1', ip: null, version: '1.0.0', bootUs: 2300000, settle: 'quiet' },
    });
    expect(parseGuestLine('READY ip=- version=1')).toBeNull();
    expect(parseGuestLine('READY junk')).toBeNull();
  });

  it('parses OK and ERR replies', () => {
    expect(parseGuestLine('R 7 OK')).toEqual({ kind: 'reply', id: '7', ok: true, values: {} });
    expect(parseGuestLine('R 7 OK a=1 b=x')).toEqual({ kind: 'reply', id: '7', ok: true, values: { a: '1', b: 'x' } });
    expect(parseGuestLine('R 8 ERR unknown command \'x\'; known: status')).toEqual({
      kind: 'reply',
      id: '8',
      ok: false,
      message: "unknown command 'x'; known: status",
    });
    expect(parseGuestLine('R 9 ERR')).toEqual({ kind: 'reply', id: '9', ok: false, message: 'unspecified error' });
    expect(parseGuestLine('R 7 OK notkv')).toBeNull();
    expect(parseGuestLine('R 7 MAYBE')).toBeNull();
  });

  it('treats anything else as garbage', () => {
    for (const l of ['', 'hello', '2 status', 'HBX', 'r 1 OK', '\x00\x01']) expect(parseGuestLine(l)).toBeNull();
  });

  it('parseKeyValues keeps values with = in them', () => {
    expect(parseKeyValues('a=b=c  d=')).toEqual({ a: 'b=c', d: '' });
    expect(parseKeyValues('=x')).toBeNull();
  });
});

describe('formatCommand and argument checks', () => {
  it('formats commands with plain decimal numbers', () => {
    expect(formatCommand('1', 'status')).toBe('1 status\n');
    expect(formatCommand('2', 'start', [64, 50])).toBe('2 start 64 50\n');
    expect(formatCommand('3', 'rate', [0.5])).toBe('3 rate 0.5\n');
    expect(formatCommand('4', 'rate', [1e-7])).toBe('4 rate 0\n');
    expect(formatCommand('5', 'hb', [12.25])).toBe('5 hb 12.25\n');
  });

  it('refuses what would break the framing', () => {
    expect(() => formatCommand('a b', 'status')).toThrow(/id/);
    expect(() => formatCommand('1', 'echo', ['two words'])).toThrow(/without spaces/);
    expect(() => formatCommand('1', 'echo', ['line\nbreak'])).toThrow();
    expect(() => formatCommand('1', 'echo', [''])).toThrow();
    expect(() => formatCommand('1', 'Status')).toThrow(/lowercase/);
    expect(() => formatCommand('1', 'rate', [Number.NaN])).toThrow(/finite/);
    expect(() => formatCommand('1', 'echo', ['x'.repeat(101)])).toThrow();
  });

  it('checks start and hb arguments', () => {
    expect(checkStartArgs(64, 50)).toBeNull();
    expect(checkStartArgs(64, 0)).toBeNull();
    expect(checkStartArgs(0, 50)).toMatch(/working set/);
    expect(checkStartArgs(1.5, 50)).toMatch(/whole number/);
    expect(checkStartArgs(64, -1)).toMatch(/rate/);
    expect(checkHeartbeatInterval(10)).toBeNull();
    expect(checkHeartbeatInterval(0)).toBeNull();
    expect(checkHeartbeatInterval(0.5)).toMatch(/between 1 and 60000/);
  });

  it('gives typed views of replies', () => {
    const st = toStatus(
      parseKeyValues(
        'ready=1 name=vm ip=- version=1.0.0 loadRunning=0 wsMiB=0 rateMBps=0.000 hbIntervalMs=10.000 filling=0 verifying=0 uptimeUs=5 hbDropped=0',
      )!,
    );
    expect(st).toMatchObject({ ready: true, name: 'vm', ip: null, loadRunning: false, hbIntervalMs: 10 });
    const v = toVerifyResult(
      parseKeyValues('pages=10 bad=1 firstBad=3 sweepOk=0 counterMin=1 counterMax=2 boundary=4 sweep=1 verifyUs=9')!,
    );
    expect(v).toMatchObject({ pages: 10, bad: 1, firstBad: 3, sweepOk: false });
    expect(() => toReport({ running: '1' })).toThrow(/report reply has no dirtiedBytes/);
    expect(() => toStatus({ ...parseKeyValues('ready=x name=a ip=- version=1')! })).toThrow(/bad ready=x/);
  });
});

describe('HeartbeatStats', () => {
  it('tracks gaps in host and guest time, misses and jitter', () => {
    const s = new HeartbeatStats();
    s.add({ seq: 1, guestUs: 0, hostMs: 100 });
    s.add({ seq: 2, guestUs: 10_000, hostMs: 110 });
    s.add({ seq: 3, guestUs: 20_000, hostMs: 120 });
    s.add({ seq: 6, guestUs: 50_000, hostMs: 350 }); // two lost, a long host gap
    const sum = s.summary();
    expect(sum.count).toBe(4);
    expect(sum.maxHostGapMs).toBe(230);
    expect(sum.maxGuestGapMs).toBe(30);
    expect(sum.missed).toBe(2);
    expect(s.intervals).toEqual([10, 10, 230]);
    expect(sum.meanHostIntervalMs).toBeCloseTo(250 / 3);
    expect(sum.jitterMs).toBeGreaterThan(100);
    s.reset();
    expect(s.summary()).toMatchObject({ count: 0, maxHostGapMs: 0, first: null });
  });

  it('keeps a bounded number of intervals', () => {
    const s = new HeartbeatStats(100);
    for (let i = 0; i < 1000; i++) s.add({ seq: i, guestUs: i * 10_000, hostMs: i * 10 });
    expect(s.intervals.length).toBeLessThanOrEqual(113);
    expect(s.intervals.length).toBeGreaterThanOrEqual(100);
    expect(s.count).toBe(1000);
  });
});

/** A fake guest end: what the channel writes shows up in `sent`; `say` feeds it lines. */
function fakeGuest() {
  const toHost = new PassThrough();
  const fromHost = new PassThrough();
  const stream = Duplex.from({ readable: toHost, writable: fromHost });
  const sent: string[] = [];
  let pending = '';
  const waiters: Array<() => void> = [];
  fromHost.on('data', (d: Buffer) => {
    pending += d.toString('latin1');
    let i;
    while ((i = pending.indexOf('\n')) >= 0) {
      sent.push(pending.slice(0, i));
      pending = pending.slice(i + 1);
    }
    for (const w of waiters.splice(0)) w();
  });
  return {
    stream,
    sent,
    say: (text: string) => toHost.write(text),
    end: () => toHost.end(),
    /** Resolves with the next command line (id, cmd, args) the host sent matching `cmd`. */
    async next(cmd: string): Promise<{ id: string; args: string[] }> {
      for (;;) {
        const idx = sent.findIndex((l) => l.split(' ')[1] === cmd);
        if (idx >= 0) {
          const [id, , ...args] = sent.splice(idx, 1)[0]!.split(' ');
          return { id: id!, args };
        }
        await new Promise<void>((r) => waiters.push(r));
      }
    },
  };
}

describe('LabloadChannel over a fake stream', () => {
  const channels: LabloadChannel[] = [];
  const make = (...a: ConstructorParameters<typeof LabloadChannel>) => {
    const ch = new LabloadChannel(...a);
    channels.push(ch);
    return ch;
  };
  afterEach(() => {
    for (const c of channels.splice(0)) c.close();
  });

  it('splits partial and packed lines, emits heartbeats with host time', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    const hbs: number[] = [];
    const t0 = performance.now();
    ch.on('heartbeat', (hb) => {
      // host time: when the line reached the host, on its performance.now() clock
      expect(hb.hostMs).toBeGreaterThanOrEqual(t0);
      expect(hb.hostMs).toBeLessThanOrEqual(performance.now());
      hbs.push(hb.seq);
    });
    g.say('HB 1 10');
    g.say('00\nHB 2 2000\nHB 3 30');
    g.say('00\n');
    await new Promise((r) => setTimeout(r, 10));
    expect(hbs).toEqual([1, 2, 3]);
    expect(ch.heartbeats.summary()).toMatchObject({ count: 3, maxGuestGapMs: 1 });
  });

  it('counts garbage and drops overlong lines without losing the next one', async () => {
    const g = fakeGuest();
    const ch = make(g.stream, { maxLineLength: 64 });
    const garbage: string[] = [];
    ch.on('garbage', (l) => garbage.push(l));
    g.say('2 status\r\nrandom boot noise\n');
    g.say('x'.repeat(50));
    g.say('y'.repeat(50)); // over the cap before any newline
    g.say('z'.repeat(500));
    g.say('\nHB 1 5\n');
    g.say(`${'w'.repeat(70)}\nHB 2 6\n`); // over the cap inside one chunk
    await new Promise((r) => setTimeout(r, 10));
    expect(garbage).toEqual(['2 status\r', 'random boot noise']);
    expect(ch.counters.overlongLines).toBe(2);
    expect(ch.counters.garbageLines).toBe(4);
    expect(ch.counters.heartbeats).toBe(2);
  });

  it('sends status on attach and learns readiness from a status reply', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    const probe = await g.next('status');
    const ready = ch.waitReady(2000);
    g.say(
      `R ${probe.id} OK ready=1 name=vm ip=10.0.0.2/24 version=${LABLOAD_VERSION} loadRunning=0 wsMiB=0 rateMBps=0 hbIntervalMs=10\n`,
    );
    await expect(ready).resolves.toEqual({ name: 'vm', ip: '10.0.0.2/24', version: LABLOAD_VERSION });
    expect(ch.ready?.name).toBe('vm');
  });

  it('learns readiness from a READY line and keeps its extra keys', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    const seen: string[] = [];
    ch.on('ready', (i) => seen.push(i.name));
    const ready = ch.waitReady(2000);
    g.say('READY name=a ip=- version=1.0.0 bootUs=2000000 settle=quiet\n');
    await expect(ready).resolves.toMatchObject({ name: 'a', ip: null, bootUs: 2000000, settle: 'quiet' });
    await expect(ch.waitReady(10)).resolves.toMatchObject({ name: 'a' });
    expect(seen).toEqual(['a']);
  });

  it('times out waiting for READY with a reason', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    await expect(ch.waitReady(50)).rejects.toThrow(/did not report READY .* no heartbeat/);
    g.say('HB 1 1\n');
    await new Promise((r) => setTimeout(r, 5));
    await expect(ch.waitReady(50)).rejects.toThrow(/labload is running \(1 heartbeats\)/);
  });

  it('aborts waiting for READY', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    const ac = new AbortController();
    const p = ch.waitReady(5000, ac.signal);
    ac.abort(new Error('user stopped the lab'));
    await expect(p).rejects.toThrow(/aborted: user stopped the lab/);
  });

  it('maps replies to calls, typed, and ERR to an Error with the guest sentence', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    const start = ch.startLoad({ workingSetMiB: 64, rateMBps: 50 });
    const s = await g.next('start');
    expect(s.args).toEqual(['64', '50']);
    const echo = ch.echo('hi');
    const e = await g.next('echo');
    // Replies out of order.
    g.say(`R ${e.id} OK token=hi\nR ${s.id} OK wsMiB=64 pages=16384 rateMBps=50.000 fillUs=230000\n`);
    await expect(echo).resolves.toBe('hi');
    await expect(start).resolves.toEqual({ wsMiB: 64, pages: 16384, rateMBps: 50, fillUs: 230000 });

    const bad = ch.command('bogus');
    const b = await g.next('bogus');
    g.say(`R ${b.id} ERR unknown command 'bogus'; known: status\n`);
    const err = await bad.catch((x: unknown) => x);
    expect(err).toBeInstanceOf(LabloadError);
    expect((err as LabloadError).kind).toBe('guest');
    expect((err as Error).message).toBe("labload bogus: unknown command 'bogus'; known: status");

    g.say('R 999 OK\n');
    await new Promise((r) => setTimeout(r, 5));
    expect(ch.counters.strayReplies).toBe(1);
  });

  it('checks arguments before sending', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    await expect(ch.startLoad({ workingSetMiB: 0, rateMBps: 1 })).rejects.toThrow(/working set/);
    await expect(ch.setRate(-1)).rejects.toThrow(/rate must be >= 0/);
    await expect(ch.setHeartbeatInterval(0.1)).rejects.toThrow(/heartbeat interval/);
    await expect(ch.echo('a b')).rejects.toThrow(/without spaces/);
    expect(g.sent.filter((l) => !l.endsWith(' status'))).toEqual([]);
  });

  it('times out a call', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    await expect(ch.report({ timeoutMs: 30 })).rejects.toThrow('labload report: no reply within 30 ms');
  });

  it('rejects pending calls when the stream ends, and calls while detached', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    const detached: Array<Error | null> = [];
    ch.on('detach', (e) => detached.push(e));
    const p = ch.verify();
    await g.next('verify');
    g.end();
    await expect(p).rejects.toThrow(/labload verify: the serial stream closed/);
    expect(ch.attached).toBe(false);
    expect(detached).toEqual([null]);
    await expect(ch.status()).rejects.toMatchObject({ kind: 'detached' });
  });

  it('close rejects pending calls and waiters, and is idempotent', async () => {
    const g = fakeGuest();
    const ch = make(g.stream);
    const p = ch.report();
    const w = ch.waitReady(5000);
    ch.close();
    ch.close();
    await expect(p).rejects.toMatchObject({ kind: 'closed' });
    await expect(w).rejects.toThrow(/closed/);
    await expect(ch.status()).rejects.toMatchObject({ kind: 'closed' });
    expect(() => ch.attach(fakeGuest().stream)).toThrow(/closed/);
  });

  it('re-attaches to a new stream keeping listeners, stats and pending calls', async () => {
    const a = fakeGuest();
    const ch = make(a.stream);
    const seqs: number[] = [];
    ch.on('heartbeat', (hb) => seqs.push(hb.seq));
    a.say('READY name=vm ip=- version=1.0.0\nHB 1 1000\nHB 2 2');
    await new Promise((r) => setTimeout(r, 5));
    const verify = ch.verify();
    const v = await a.next('verify');

    // The migration: the destination QEMU's socket replaces the source's.
    const b = fakeGuest();
    ch.attach(b.stream);
    expect(a.stream.destroyed).toBe(true);
    b.say('000\nHB 3 300000\n'); // a partial line from the old stream must not merge into this one
    b.say(`R ${v.id} OK pages=1 bad=0 firstBad=-1 sweepOk=1 counterMin=0 counterMax=0 boundary=0 sweep=0 verifyUs=1\n`);
    await expect(verify).resolves.toMatchObject({ pages: 1, bad: 0 });
    expect(seqs).toEqual([1, 3]);
    expect(ch.heartbeats.summary()).toMatchObject({ count: 2, maxGuestGapMs: 299, missed: 1 });
    expect(ch.ready?.name).toBe('vm');
    expect(ch.counters.attaches).toBe(2);
    expect(ch.counters.garbageLines).toBe(1);
    // The ready guest gets no status probe on the new stream.
    expect(b.sent.filter((l) => l.endsWith(' status'))).toEqual([]);
  });
});

// ---- the real labload, compiled for this host and run over stdin/stdout ----------------------------

const exec = promisify(execFile);
// Set-up installs gcc: without it this fails (spawn gcc ENOENT), it is never skipped.
describe('labload.c on this host (stdio mode)', () => {
  let dir = '';
  let bin = '';
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    dir = await makeTempDir('labload-unit');
    bin = join(dir, 'labload');
    const src = join(import.meta.dirname, '..', '..', 'scripts', 'guest', 'labload.c');
    await exec('gcc', ['-O2', '-Wall', '-Werror', `-DLABLOAD_VERSION="${LABLOAD_VERSION}"`, '-o', bin, src]);
  }, 60_000);

  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await removeDir(dir);
  });

  function run(extra: string[] = []) {
    const child = spawn(bin, ['-d', '-', '-k', 'none', '-m', 'none', '-s', 'none', '-q', '20', '-n', 'unit', ...extra], {
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    children.push(child);
    const ch = new LabloadChannel(Duplex.from({ readable: child.stdout, writable: child.stdin }));
    return { child, ch };
  }

  it('says READY, answers status and echo, heartbeats every 10 ms', async () => {
    const { ch } = run(['-i', '10.1.2.3/24']);
    const info = await ch.waitReady(5000);
    expect(info).toMatchObject({ name: 'unit', ip: '10.1.2.3/24', version: LABLOAD_VERSION, settle: 'quiet' });
    await new Promise((r) => setTimeout(r, 300));
    const hb = ch.heartbeats.summary();
    expect(hb.count).toBeGreaterThan(15);
    expect(hb.missed).toBe(0);
    const st = await ch.status();
    expect(st).toMatchObject({ ready: true, name: 'unit', loadRunning: false, hbIntervalMs: 10 });
    await expect(ch.echo('tok-1')).resolves.toBe('tok-1');
    ch.close();
  });

  it('dirties at the asked rate and verify catches flipped and stale pages', async () => {
    const { ch } = run();
    await ch.waitReady(5000);
    const started = await ch.startLoad({ workingSetMiB: 8, rateMBps: 20 });
    expect(started).toMatchObject({ wsMiB: 8, pages: 2048, rateMBps: 20 });
    await new Promise((r) => setTimeout(r, 1200));
    const rep = await ch.report();
    expect(rep.running).toBe(true);
    expect(rep.measuredMBps).toBeGreaterThan(14);
    expect(rep.measuredMBps).toBeLessThan(26);
    expect(rep.avgMBps).toBeGreaterThan(14);
    expect(rep.avgMBps).toBeLessThan(26);
    const ok = await ch.verify();
    expect(ok).toMatchObject({ pages: 2048, bad: 0, firstBad: -1, sweepOk: true });

    await ch.setRate(0);
    await new Promise((r) => setTimeout(r, 200));
    expect((await ch.report()).sweeps).toBeGreaterThan(0);
    await expect(ch.stopLoad()).resolves.toMatchObject({ wasRunning: true });
    expect(await ch.verify()).toMatchObject({ bad: 0 });

    await ch.corruptPage(100, 'flip');
    await ch.corruptPage(7, 'stale');
    const bad = await ch.verify();
    expect(bad).toMatchObject({ bad: 2, firstBad: 7 });
    ch.close();
  });

  it('refuses bad commands with a sentence', async () => {
    const { ch } = run();
    await ch.waitReady(5000);
    await expect(ch.command('bogus')).rejects.toThrow(/unknown command 'bogus'/);
    await expect(ch.command('start', ['x', 'y'])).rejects.toThrow(/start needs <workingSetMiB> <rateMBps>/);
    await expect(ch.command('hb', ['0.5'])).rejects.toThrow(/between 1 and 60000/);
    await expect(ch.corruptPage(0)).rejects.toThrow(/start a load first/);
    await expect(ch.verify()).resolves.toMatchObject({ pages: 0, bad: 0, firstBad: -1 });
    await expect(ch.setHeartbeatInterval(5)).resolves.toBe(5);
    ch.close();
  });
});
