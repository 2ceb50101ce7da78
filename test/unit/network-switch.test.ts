// The lab switch (LabSwitch driving miglab-switchd) with real UDP sockets on 127.0.0.1 as the
// guests' NICs: flooding, learning, ageing, per-port counters and drops, MAC moves and announce
// frames, retiring ports, the switch process ending, and a fuzz run of random datagrams.
// Reproduce a fuzz failure with SWITCH_FUZZ_SEED=<seed printed in the failure message>.
import { createSocket, type Socket } from 'node:dgram';
import { networkInterfaces } from 'node:os';
import { describe, expect, it } from 'vitest';
import {
  BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_RARP, ETH_HEADER, MAX_FRAME, buildArp, buildIcmpEcho,
  isGroupMac, macKeyAt, macToString, parseMac, writeMac, type MacKey,
} from '../../electron/engine/network/frame';
import {
  LabSwitch, PortOpenError, type AnnounceFrame, type MacMove, type PortCounters, type PortInfo, type SwitchOptions,
  type SwitchPortHandle,
} from '../../electron/engine/network/switch';
import { pidAlive } from '../helpers/leaks';
import { Rng } from '../helpers/rng';
import { FrameInbox, sleep, switchdChildren, until, useSwitchScope } from '../helpers/switch-scope';

const HOST = '127.0.0.1';
const MA = parseMac('52:54:00:00:00:0a');
const MB = parseMac('52:54:00:00:00:0b');
const MC = parseMac('52:54:00:00:00:0c');
const MX = parseMac('52:54:00:00:00:99'); // never sends anything
const MULTICAST = parseMac('01:00:5e:00:00:fb');
const HOSTS = ['host-a', 'host-b', 'host-c'];

/** Resolves with p's outcome, or 'timeout' after ms (and leaves no timer behind). */
function within<T>(p: Promise<T>, ms: number): Promise<{ value: T } | { error: unknown } | 'timeout'> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('timeout'), ms);
    p.then(
      (value) => resolve({ value }),
      (error: unknown) => resolve({ error }),
    ).finally(() => clearTimeout(timer));
  });
}

const scope = useSwitchScope();
const { cleanups } = scope;

function newSwitch(opts: SwitchOptions = {}): LabSwitch {
  const sw = new LabSwitch({ cacheRoot: scope.cacheRoot, ...opts });
  cleanups.push(() => sw.close());
  return sw;
}

/** A guest NIC: a UDP socket that sends frames to its switch port and keeps what it receives. */
class Nic {
  readonly inbox = new FrameInbox(() => `NIC on UDP port ${this.peer.port}`);
  readonly errors: Error[] = [];
  /** The switch port this NIC sends to (set once the port is open). */
  switchPort = 0;
  private closing: Promise<void> | null = null;

  private constructor(readonly socket: Socket) {
    socket.on('message', (msg: Buffer) => this.inbox.push(msg));
    socket.on('error', (err) => this.errors.push(err));
  }

  get frames(): Buffer[] {
    return this.inbox.frames;
  }

  static async open(): Promise<Nic> {
    const nic = new Nic(createSocket('udp4'));
    cleanups.push(() => nic.close());
    await new Promise<void>((resolve) => nic.socket.bind(0, HOST, () => resolve()));
    return nic;
  }

  get peer(): { address: string; port: number } {
    return { address: HOST, port: this.socket.address().port };
  }

  send(frame: Uint8Array, to = this.switchPort): Promise<void> {
    return new Promise((resolve, reject) => this.socket.send(frame, to, HOST, (err) => (err ? reject(err) : resolve())));
  }

  waitFor(match: (f: Buffer) => boolean, timeoutMs = 2000, what = 'the frame'): Promise<Buffer> {
    return this.inbox.waitFor(match, timeoutMs, what);
  }

  waitForFrame(frame: Buffer, timeoutMs = 2000): Promise<Buffer> {
    return this.waitFor((f) => f.equals(frame), timeoutMs, `frame #${frame.readUInt32BE(frame.length - 4)}`);
  }

  /** Proves a negative: within ms (a small bounded wait), no matching frame arrives. */
  async expectNone(match: (f: Buffer) => boolean, ms = 100): Promise<void> {
    await sleep(ms);
    expect(this.frames.filter(match)).toEqual([]);
  }

  clear(): void {
    this.frames.length = 0;
  }

  close(): Promise<void> {
    this.closing ??= new Promise((resolve) => this.socket.close(() => resolve()));
    return this.closing;
  }
}

/** Whether a UDP port on 127.0.0.1 is free (nobody, switchd included, has it bound). */
async function udpPortFree(port: number): Promise<boolean> {
  const s = createSocket('udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind({ address: HOST, port, exclusive: true }, () => resolve());
    });
    return true;
  } catch {
    return false;
  } finally {
    await new Promise<void>((r) => s.close(() => r()));
  }
}

let nextTag = 1;

/** Appends a unique 4-byte tag (and padding to the Ethernet minimum), so each frame is one of a kind. */
function tagged(frame: Buffer, minLength = 64): Buffer {
  const pad = Buffer.alloc(Math.max(4, minLength - frame.length));
  pad.writeUInt32BE(nextTag++, pad.length - 4);
  return Buffer.concat([frame, pad]);
}

/** A plain frame between two MACs (IPv4 ethertype), `length` bytes, tagged at its end. */
function frame(dst: MacKey, src: MacKey, length = 64, ethertype = ETHERTYPE_IPV4): Buffer {
  const header = Buffer.alloc(ETH_HEADER);
  writeMac(header, 0, dst);
  writeMac(header, 6, src);
  header.writeUInt16BE(ethertype, 12);
  return tagged(header, length);
}

/** What QEMU's announce-self sends after a migration: a broadcast RARP reverse request. */
function rarp(mac: MacKey): Buffer {
  const f = buildArp({ op: 1, senderMac: mac, senderIp: 0, targetMac: mac, targetIp: 0 }, BROADCAST_MAC);
  f.writeUInt16BE(ETHERTYPE_RARP, 12);
  f.writeUInt16BE(3, ETH_HEADER + 6);
  return tagged(f);
}

function arp(mac: MacKey, senderIp: number, targetIp: number): Buffer {
  return tagged(buildArp({ op: 1, senderMac: mac, senderIp, targetMac: 0, targetIp }, BROADCAST_MAC));
}

interface Lab {
  sw: LabSwitch;
  nics: Nic[];
  ports: SwitchPortHandle[];
}

async function lab(n: number, opts: SwitchOptions = {}): Promise<Lab> {
  const sw = newSwitch(opts);
  const nics: Nic[] = [];
  const ports: SwitchPortHandle[] = [];
  for (let i = 0; i < n; i++) {
    const nic = await Nic.open();
    const handle = await sw.openPort({ host: HOSTS[i]!, guest: `g${i}` }, nic.peer);
    nic.switchPort = handle.port;
    nics.push(nic);
    ports.push(handle);
  }
  return { sw, nics, ports };
}

/** Fresh counters of one port (stats() covers every datagram sent before it). */
async function counters(sw: LabSwitch, id: number): Promise<PortCounters> {
  const p = (await sw.stats()).ports.find((x) => x.id === id);
  if (!p) throw new Error(`port ${id} is not open`);
  return p.counters;
}

async function txFrames(sw: LabSwitch, ports: SwitchPortHandle[]): Promise<number[]> {
  const s = await sw.stats();
  return ports.map((h) => s.ports.find((p) => p.id === h.id)!.counters.txFrames);
}

const noDrops = { truncated: 0, oversized: 0, malformed: 0, foreign: 0, egress: 0 };

describe('LabSwitch ports', () => {
  it('runs no switch process until the first port; then binds the port on 127.0.0.1 and describes it', async () => {
    const sw = newSwitch();
    const opened: PortInfo[] = [];
    sw.on('port-opened', (p) => opened.push(p));
    expect(sw.pid).toBeUndefined();
    expect(await sw.stats()).toEqual({ ports: [], macs: [], tableFull: 0, eventsDropped: 0 });
    const nic = await Nic.open();
    const handle = await sw.openPort({ host: 'host-a', guest: 'ga' }, nic.peer);
    expect(sw.pid).toBeGreaterThan(0);
    expect(switchdChildren()).toEqual([sw.pid]);
    expect(handle.address).toBe(HOST);
    expect(handle.port).toBeGreaterThan(0);
    expect(handle.port).not.toBe(nic.peer.port);
    expect(await udpPortFree(handle.port)).toBe(false); // switchd holds it
    const p = sw.portInfo().find((x) => x.id === handle.id)!;
    expect(p).toEqual({
      id: handle.id, host: 'host-a', guest: 'ga', local: { address: HOST, port: handle.port }, peer: nic.peer,
      counters: { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, drops: noDrops }, openedAt: expect.any(Number),
    });
    expect(opened).toEqual([p]);
    expect((await sw.stats()).ports).toEqual([p]);
    // The info is a copy: changing it changes nothing in the switch.
    p.counters.rxFrames = 99;
    p.peer.port = 1;
    expect(sw.portInfo()[0]!.counters.rxFrames).toBe(0);
    expect(sw.portInfo()[0]!.peer).toEqual(nic.peer);
  });

  it.each([
    ['a host name', { address: 'localhost', port: 5000 }],
    ['an IPv6 address', { address: '::1', port: 5000 }],
    ['an empty address', { address: '', port: 5000 }],
    ['port 0', { address: HOST, port: 0 }],
    ['port 65536', { address: HOST, port: 65536 }],
    ['a negative port', { address: HOST, port: -1 }],
    ['a fractional port', { address: HOST, port: 5000.5 }],
    ['NaN', { address: HOST, port: Number.NaN }],
  ] as Array<[string, { address: string; port: number }]>)('refuses a peer with %s (PortOpenError), starting nothing', async (_what, peer) => {
    const sw = newSwitch();
    const err = await sw.openPort({ host: 'h', guest: 'g' }, peer).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(PortOpenError);
    expect((err as Error).message).toMatch(/A switch port needs the NIC's IPv4 address and UDP port/);
    expect(sw.portInfo()).toEqual([]);
    expect(sw.pid).toBeUndefined();
  });

  it('refuses a switch address that is not IPv4', () => {
    expect(() => new LabSwitch({ address: 'localhost' })).toThrow(PortOpenError);
    expect(() => new LabSwitch({ address: '::1' })).toThrow(/is not an IPv4 address/);
  });

  it('reports a switch address it cannot bind as a PortOpenError, and keeps working', async () => {
    const local = new Set(Object.values(networkInterfaces()).flat().map((i) => i?.address));
    const address = ['203.0.113.77', '198.51.100.77', '192.0.2.254'].find((a) => !local.has(a))!;
    const sw = newSwitch({ address });
    const nic = await Nic.open();
    const err = await sw.openPort({ host: 'h', guest: 'g' }, nic.peer).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(PortOpenError);
    expect((err as Error).message).toContain(`Could not open a switch port on ${address}: bind ${address}`);
    expect(sw.portInfo()).toEqual([]);
    expect((await sw.stats()).ports).toEqual([]); // the process still answers
  });

  it('refuses new ports once shut down', async () => {
    const sw = newSwitch();
    await sw.close();
    await expect(sw.openPort({ host: 'h', guest: 'g' }, { address: HOST, port: 5000 })).rejects.toThrow(/has been shut down/);
    expect(sw.pid).toBeUndefined();
  });

  it('close() while a port is still opening: the open fails, and nothing is left behind', async () => {
    const nic = await Nic.open();
    const sw = newSwitch();
    const pending = sw.openPort({ host: 'h', guest: 'g' }, nic.peer);
    const closing = sw.close();
    const outcome = await pending.then((h) => h, (e: unknown) => e);
    await closing;
    // Whatever happened, release what it made, so this test leaks nothing into the others.
    if (!(outcome instanceof Error)) cleanups.push(() => (outcome as SwitchPortHandle).close());
    expect(outcome).toBeInstanceOf(PortOpenError);
    expect(sw.portInfo()).toEqual([]);
    expect(switchdChildren()).toEqual([]);
  });

  it('opens several ports at once on one switch process; close() ends it and frees their UDP ports', async () => {
    const sw = newSwitch();
    const nics = await Promise.all([Nic.open(), Nic.open(), Nic.open()]);
    // Three opens at once share one switch process.
    const handles = await Promise.all(nics.map((n, i) => sw.openPort({ host: HOSTS[i]!, guest: `g${i}` }, n.peer)));
    expect(new Set(handles.map((h) => h.id)).size).toBe(3);
    expect(new Set(handles.map((h) => h.port)).size).toBe(3);
    expect(switchdChildren()).toHaveLength(1);
    const pid = sw.pid!;
    await sw.close();
    expect(sw.portInfo()).toEqual([]);
    expect(sw.pid).toBeUndefined();
    expect(pidAlive(pid)).toBe(false);
    for (const h of handles) expect(await udpPortFree(h.port)).toBe(true);
  });
});

describe('LabSwitch forwarding', () => {
  it('floods a broadcast to every other port, never back to the sender, and counts it', async () => {
    const { sw, nics, ports } = await lab(3);
    const [a, b, c] = nics as [Nic, Nic, Nic];
    const f = frame(BROADCAST_MAC, MA, 100);
    await a.send(f);
    await Promise.all([b.waitForFrame(f), c.waitForFrame(f)]);
    await a.expectNone((x) => x.equals(f));
    expect(await counters(sw, ports[0]!.id)).toEqual({ rxFrames: 1, rxBytes: 100, txFrames: 0, txBytes: 0, drops: noDrops });
    expect(await counters(sw, ports[1]!.id)).toEqual({ rxFrames: 0, rxBytes: 0, txFrames: 1, txBytes: 100, drops: noDrops });
    expect(await counters(sw, ports[2]!.id)).toEqual({ rxFrames: 0, rxBytes: 0, txFrames: 1, txBytes: 100, drops: noDrops });
    // portInfo() keeps the counters of the last stats().
    expect(sw.portInfo().map((p) => p.counters.txFrames)).toEqual([0, 1, 1]);
  });

  it('floods multicast and unicast to an unknown MAC', async () => {
    const { sw, nics, ports } = await lab(3);
    const [a, b, c] = nics as [Nic, Nic, Nic];
    const unknown = frame(MX, MA);
    const multicast = frame(MULTICAST, MA);
    await a.send(unknown);
    await a.send(multicast);
    await Promise.all([b.waitForFrame(unknown), c.waitForFrame(unknown), b.waitForFrame(multicast), c.waitForFrame(multicast)]);
    expect(await txFrames(sw, ports)).toEqual([0, 2, 2]);
    expect(await sw.lookup(macToString(MX))).toBeUndefined();
  });

  it('sends unicast only to the port where the destination MAC was learned', async () => {
    const { sw, nics, ports } = await lab(3);
    const [a, b, c] = nics as [Nic, Nic, Nic];
    const hello = frame(BROADCAST_MAC, MB);
    await b.send(hello);
    await Promise.all([a.waitForFrame(hello), c.waitForFrame(hello)]);
    expect(await sw.lookup(macToString(MB))).toMatchObject({ mac: '52:54:00:00:00:0b', port: ports[1]!.id, host: 'host-b' });
    expect((await sw.lookup('52:54:00:00:00:0B'))?.port).toBe(ports[1]!.id); // any case

    const toB = frame(MB, MA, 200);
    await a.send(toB);
    await b.waitForFrame(toB);
    expect(await txFrames(sw, ports)).toEqual([1, 1, 1]); // c got only the broadcast
    await c.expectNone((x) => x.equals(toB));

    // And back: a is known now, since it sent toB.
    const toA = frame(MA, MB, 300);
    await b.send(toA);
    await a.waitForFrame(toA);
    expect(await txFrames(sw, ports)).toEqual([2, 1, 1]);
    expect(await counters(sw, ports[0]!.id)).toMatchObject({ rxFrames: 1, rxBytes: 200, txFrames: 2, txBytes: 64 + 300 });
    expect(await counters(sw, ports[1]!.id)).toMatchObject({ rxFrames: 2, rxBytes: 64 + 300, txFrames: 1, txBytes: 200 });
    expect(await counters(sw, ports[2]!.id)).toMatchObject({ rxFrames: 0, rxBytes: 0, txFrames: 1, txBytes: 64 });
    expect((await sw.macTable()).map((e) => [e.mac, e.port, e.host]).sort()).toEqual([
      ['52:54:00:00:00:0a', ports[0]!.id, 'host-a'],
      ['52:54:00:00:00:0b', ports[1]!.id, 'host-b'],
    ]);
  });

  it('does not send a frame back to the port its destination lives on', async () => {
    const { sw, nics, ports } = await lab(3);
    const [a] = nics as [Nic];
    await a.send(frame(BROADCAST_MAC, MA));
    const local = frame(MA, parseMac('52:54:00:00:00:1a'));
    await a.send(local);
    expect(await counters(sw, ports[0]!.id)).toMatchObject({ rxFrames: 2, txFrames: 0 });
    expect(await txFrames(sw, ports)).toEqual([0, 1, 1]);
    await a.expectNone((x) => x.equals(local));
  });

  it('forwards the smallest (14 bytes) and largest (1518 bytes) frames unchanged', async () => {
    const { sw, nics, ports } = await lab(2);
    const [a, b] = nics as [Nic, Nic];
    const smallest = Buffer.alloc(ETH_HEADER);
    writeMac(smallest, 0, BROADCAST_MAC);
    writeMac(smallest, 6, MA);
    smallest.writeUInt16BE(0x88b5, 12);
    const largest = frame(BROADCAST_MAC, MA, MAX_FRAME);
    expect(largest.length).toBe(1518);
    await a.send(smallest);
    await a.send(largest);
    await b.waitFor((x) => x.equals(smallest), 2000, 'the 14-byte frame');
    await b.waitForFrame(largest);
    expect(await counters(sw, ports[0]!.id)).toEqual({ rxFrames: 2, rxBytes: 14 + 1518, txFrames: 0, txBytes: 0, drops: noDrops });
    expect(await counters(sw, ports[1]!.id)).toMatchObject({ txFrames: 2, txBytes: 14 + 1518 });
  });

  it('drops and counts datagrams from any address but the port\'s registered peer', async () => {
    const { sw, nics, ports } = await lab(3);
    const [a, b, c] = nics as [Nic, Nic, Nic];
    const stranger = await Nic.open();
    const f1 = frame(BROADCAST_MAC, parseMac('52:54:00:00:00:66'));
    await stranger.send(f1, ports[0]!.port);
    // b's NIC is a registered peer, but of another port: still foreign here.
    const f2 = frame(BROADCAST_MAC, MB);
    await b.send(f2, ports[0]!.port);
    expect(await counters(sw, ports[0]!.id)).toEqual({ rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, drops: { ...noDrops, foreign: 2 } });
    expect(await txFrames(sw, ports)).toEqual([0, 0, 0]);
    expect(await sw.macTable()).toEqual([]);
    await c.expectNone((x) => x.equals(f1) || x.equals(f2));
    expect(a.frames.concat(b.frames, stranger.frames)).toEqual([]);
  });

  it('drops and counts truncated, oversized and malformed datagrams', async () => {
    const { sw, nics, ports } = await lab(2);
    const [a, b] = nics as [Nic, Nic];
    const bad = [
      Buffer.alloc(0), // truncated
      frame(BROADCAST_MAC, MA).subarray(0, 13), // truncated
      frame(BROADCAST_MAC, MA, MAX_FRAME + 1), // oversized
      frame(BROADCAST_MAC, MA, 2000), // oversized
      frame(BROADCAST_MAC, MA, 9000), // oversized: more than switchd reads of a datagram
      frame(BROADCAST_MAC, BROADCAST_MAC), // malformed: broadcast source
      frame(BROADCAST_MAC, MULTICAST), // malformed: multicast source
      frame(MB, 0), // malformed: zero source
    ];
    for (const d of bad) await a.send(d);
    const good = frame(BROADCAST_MAC, MA);
    await a.send(good);
    await b.waitForFrame(good);
    expect(await counters(sw, ports[0]!.id)).toEqual({
      rxFrames: 1, rxBytes: 64, txFrames: 0, txBytes: 0, drops: { ...noDrops, truncated: 2, oversized: 3, malformed: 3 },
    });
    expect(await counters(sw, ports[1]!.id)).toMatchObject({ txFrames: 1, txBytes: 64 });
    await b.expectNone((x) => !x.equals(good), 50);
    expect(b.frames).toEqual([good]);
    // Nothing was learned from the malformed sources.
    expect((await sw.macTable()).map((e) => e.mac)).toEqual(['52:54:00:00:00:0a']);
  });
});

describe('LabSwitch MAC moves and announces', () => {
  it('reports one move per port change, with its ports, hosts and cause', async () => {
    const { sw, nics, ports } = await lab(3);
    const [a, b, c] = nics as [Nic, Nic, Nic];
    const moves: MacMove[] = [];
    sw.on('mac-move', (m) => moves.push(m));
    const M = parseMac('52:54:00:50:00:0a');
    const ip = 0x0a50_000a;

    const first = frame(BROADCAST_MAC, M);
    await a.send(first);
    await b.waitForFrame(first);
    expect(moves).toEqual([]); // first sighting: learned, not moved

    const t0 = performance.now();
    const announce = rarp(M);
    await b.send(announce);
    await until(() => expect(moves).toHaveLength(1));
    expect(moves[0]).toEqual({
      mac: '52:54:00:50:00:0a', fromPort: ports[0]!.id, fromHost: 'host-a', toPort: ports[1]!.id, toHost: 'host-b',
      at: expect.any(Number), cause: 'rarp',
    });
    // The switch's clock is mapped onto performance.now() (a little slack for the mapping).
    expect(moves[0]!.at).toBeGreaterThanOrEqual(t0 - 5);
    expect(moves[0]!.at).toBeLessThanOrEqual(performance.now() + 5);
    // QEMU announces more than once; later frames from the same port are no new move.
    const again = [rarp(M), frame(BROADCAST_MAC, M)];
    for (const f of again) await b.send(f);
    for (const f of again) await c.waitForFrame(f);
    await sw.stats(); // every event before this reply has been read
    expect(moves).toHaveLength(1);

    const gratuitous = arp(M, ip, ip);
    await c.send(gratuitous);
    await until(() => expect(moves).toHaveLength(2));
    expect(moves[1]).toMatchObject({ fromPort: ports[1]!.id, fromHost: 'host-b', toPort: ports[2]!.id, toHost: 'host-c', cause: 'gratuitous-arp' });

    const ordinary = arp(M, ip, 0x0a50_0002);
    await a.send(ordinary);
    await until(() => expect(moves).toHaveLength(3));
    expect(moves[2]).toMatchObject({ fromPort: ports[2]!.id, fromHost: 'host-c', toPort: ports[0]!.id, toHost: 'host-a', cause: 'traffic' });

    const echo = buildIcmpEcho({ srcMac: M, dstMac: BROADCAST_MAC, srcIp: ip, dstIp: 0x0a50_0002, type: 8, id: 1, seq: 1, payload: Buffer.alloc(8) });
    await b.send(echo);
    await until(() => expect(moves).toHaveLength(4));
    expect(moves[3]).toMatchObject({ fromPort: ports[0]!.id, toPort: ports[1]!.id, cause: 'traffic' });
    expect(moves.map((m) => m.at)).toEqual([...moves.map((m) => m.at)].sort((x, y) => x - y));

    expect(sw.macMoves()).toEqual(moves);
    expect((await sw.lookup('52:54:00:50:00:0a'))?.port).toBe(ports[1]!.id);
    expect(await sw.macTable()).toHaveLength(1);
  });

  it('records RARP frames as announces, and nothing else', async () => {
    const { sw, nics, ports } = await lab(2);
    const [a, b] = nics as [Nic, Nic];
    const announces: AnnounceFrame[] = [];
    sw.on('announce', (x) => announces.push(x));
    const others = [frame(BROADCAST_MAC, MA), arp(MA, 0x0a50_000a, 0x0a50_000a)];
    for (const f of others) await a.send(f);
    for (const f of others) await b.waitForFrame(f);
    await sw.stats();
    expect(announces).toEqual([]);

    const r = rarp(MB);
    await b.send(r);
    await a.waitForFrame(r);
    await until(() => expect(announces).toHaveLength(1));
    expect(announces).toEqual([{ mac: '52:54:00:00:00:0b', port: ports[1]!.id, host: 'host-b', at: expect.any(Number) }]);
    expect(sw.announceFrames()).toEqual(announces);
    expect(sw.macMoves()).toEqual([]); // a first sighting announced is not a move
    // A copy: changing it changes nothing in the switch.
    sw.announceFrames().pop();
    expect(sw.announceFrames()).toHaveLength(1);
  });
});

describe('LabSwitch retiring ports', () => {
  it('closePort retires the port: gone from portInfo, its MACs forgotten, port-closed, socket closed', async () => {
    const { sw, nics, ports } = await lab(3);
    const [a, b, c] = nics as [Nic, Nic, Nic];
    const closed: PortInfo[] = [];
    sw.on('port-closed', (p) => closed.push(p));
    const fromB = frame(BROADCAST_MAC, MB);
    const fromA = frame(BROADCAST_MAC, MA);
    await b.send(fromB);
    await a.send(fromA);
    await Promise.all([a.waitForFrame(fromB), c.waitForFrame(fromB), b.waitForFrame(fromA)]);
    expect(await sw.macTable()).toHaveLength(2);

    const bPort = ports[1]!;
    bPort.close();
    expect(sw.portInfo().map((p) => p.id)).toEqual([ports[0]!.id, ports[2]!.id]);
    expect(closed).toHaveLength(1);
    expect(closed[0]).toMatchObject({ id: bPort.id, host: 'host-b', local: { address: HOST, port: bPort.port } });
    expect(closed[0]!.counters).toMatchObject({ rxFrames: 1, txFrames: 1 }); // as of the last stats()
    const s = await sw.stats(); // answered after the close was done
    expect(s.ports.map((p) => p.id)).toEqual([ports[0]!.id, ports[2]!.id]);
    expect(s.macs.map((e) => e.mac)).toEqual(['52:54:00:00:00:0a']);
    expect(await sw.lookup(macToString(MB))).toBeUndefined();
    // The port's socket is closed: its UDP port can be bound again.
    expect(await udpPortFree(bPort.port)).toBe(true);

    // Closing again is harmless.
    bPort.close();
    sw.closePort(bPort.id);
    expect(closed).toHaveLength(1);

    // b's MAC is unknown again: unicast to it floods to who is left.
    const toB = frame(MB, MA);
    await a.send(toB);
    await c.waitForFrame(toB);
    expect(b.frames.some((x) => x.equals(toB))).toBe(false);
  });

  it('close() retires every port, ends the switch process and frees every UDP port', async () => {
    const { sw, nics, ports } = await lab(3);
    const closed: PortInfo[] = [];
    sw.on('port-closed', (p) => closed.push(p));
    const f = frame(BROADCAST_MAC, MA);
    await nics[0]!.send(f);
    await nics[1]!.waitForFrame(f);
    const pid = sw.pid!;
    expect(pidAlive(pid)).toBe(true);
    await sw.close();
    expect(closed.map((p) => p.id).sort()).toEqual(ports.map((p) => p.id).sort());
    expect(sw.portInfo()).toEqual([]);
    expect(sw.pid).toBeUndefined();
    expect(pidAlive(pid)).toBe(false);
    for (const h of ports) expect(await udpPortFree(h.port)).toBe(true);
    expect(await sw.stats()).toEqual({ ports: [], macs: [], tableFull: 0, eventsDropped: 0 });
    await sw.close(); // twice is fine
    expect(closed).toHaveLength(3);
  });

  it('when the switch process dies, says so: failed, every port closed, new ports refused', async () => {
    const { sw, ports } = await lab(2);
    const failed: string[] = [];
    const closed: PortInfo[] = [];
    sw.on('failed', (why) => failed.push(why));
    sw.on('port-closed', (p) => closed.push(p));
    process.kill(sw.pid!, 'SIGKILL'); // the switch process this test started
    await until(() => expect(failed).toHaveLength(1));
    expect(failed[0]).toMatch(/^the lab switch stopped \(SIGKILL\)/);
    expect(closed.map((p) => p.id).sort()).toEqual(ports.map((p) => p.id).sort());
    expect(sw.portInfo()).toEqual([]);
    const nic = await Nic.open();
    await expect(sw.openPort({ host: 'h', guest: 'g' }, nic.peer)).rejects.toThrow(/The lab switch is down: the lab switch stopped \(SIGKILL\)/);
  });

  it('after the switch process died, stats() still answers and pid is undefined', async () => {
    // BUG: stats() and pid test proc.exitCode only; a process killed by a signal has exitCode null
    // (signalCode set), so stats() writes to the dead process and waits forever, and pid keeps
    // the dead process's id.
    const { sw } = await lab(1);
    const failed: string[] = [];
    sw.on('failed', (why) => failed.push(why));
    process.kill(sw.pid!, 'SIGKILL');
    await until(() => expect(failed).toHaveLength(1));
    expect(sw.pid).toBeUndefined();
    expect(await within(sw.stats(), 1000)).not.toBe('timeout');
  });
});

describe('LabSwitch table limits', () => {
  it('ages entries out: after ageingMs a learned MAC is no longer used and traffic floods again', async () => {
    const ageingMs = 200;
    const { sw, nics, ports } = await lab(3, { ageingMs });
    const [a, b, c] = nics as [Nic, Nic, Nic];
    const hello = frame(BROADCAST_MAC, MB);
    await b.send(hello);
    await a.waitForFrame(hello);
    const toB = frame(MB, MA);
    await a.send(toB);
    await b.waitForFrame(toB);
    expect(await txFrames(sw, ports)).toEqual([1, 1, 1]); // c: only the broadcast

    await until(async () => expect(await sw.lookup(macToString(MB))).toBeUndefined(), ageingMs * 10);
    const toBAgain = frame(MB, MA);
    await a.send(toBAgain);
    await Promise.all([b.waitForFrame(toBAgain), c.waitForFrame(toBAgain)]);
    expect(await txFrames(sw, ports)).toEqual([1, 2, 2]);
  });

  it('learns at most maxMacs MACs; beyond that frames are still switched and tableFull counts', async () => {
    const { sw, nics, ports } = await lab(3, { maxMacs: 2 });
    const [a, b, c] = nics as [Nic, Nic, Nic];
    const M1 = parseMac('52:54:00:00:01:01');
    const M2 = parseMac('52:54:00:00:01:02');
    const M3 = parseMac('52:54:00:00:01:03');
    const sent = [frame(BROADCAST_MAC, M1), frame(BROADCAST_MAC, M2), frame(BROADCAST_MAC, M3)];
    for (const f of sent) await a.send(f);
    for (const f of sent) await b.waitForFrame(f);
    let s = await sw.stats();
    expect(s.macs.map((e) => e.mac).sort()).toEqual(['52:54:00:00:01:01', '52:54:00:00:01:02']);
    expect(s.tableFull).toBe(1);

    // M3 is not in the table: unicast to it floods (and b's own MAC cannot be learned either).
    const toM3 = frame(M3, MB);
    await b.send(toM3);
    await Promise.all([a.waitForFrame(toM3), c.waitForFrame(toM3)]);
    expect((await sw.stats()).tableFull).toBe(2);
    // M1 is: unicast to it goes to a only.
    const toM1 = frame(M1, MB);
    await b.send(toM1);
    await a.waitForFrame(toM1);
    expect(await txFrames(sw, ports)).toEqual([2, 3, 4]);
    expect((await sw.stats()).tableFull).toBe(3);

    // A learned MAC moving is a move, not a table overflow.
    const moved = frame(BROADCAST_MAC, M1);
    await c.send(moved);
    await a.waitForFrame(moved);
    await until(() => expect(sw.macMoves()).toMatchObject([{ mac: '52:54:00:00:01:01', toPort: ports[2]!.id }]));
    s = await sw.stats();
    expect(s.tableFull).toBe(3);
    expect(s.macs).toHaveLength(2);
  });

  // An entry past ageingMs may still sit in switchd's table: the periodic sweep runs only when
  // its event loop wakes (a datagram, a command, or the 1 s idle timeout). Learning must treat
  // it as gone, as forwarding and stats() do. Shown with ageingMs 200 and a frame 450 ms later
  // on an idle switch, i.e. before any sweep.
  describe('aged-out entries the sweep has not removed yet', () => {
    it('a MAC that aged out and shows up on another port is learned there afresh, not reported as a move', async () => {
      const { sw, nics, ports } = await lab(2, { ageingMs: 200 });
      const [a, b] = nics as [Nic, Nic];
      const first = frame(BROADCAST_MAC, MA);
      await a.send(first);
      await b.waitForFrame(first);
      await sleep(450); // idle: no datagram, no command, so no sweep
      const later = frame(BROADCAST_MAC, MA);
      await b.send(later);
      await a.waitForFrame(later);
      expect((await sw.lookup(macToString(MA)))?.port).toBe(ports[1]!.id);
      // Not a move from host-a, where MA aged out 250 ms before.
      expect(sw.macMoves()).toEqual([]);
    });

    it('aged-out MACs do not count against maxMacs', async () => {
      const { sw, nics, ports } = await lab(2, { ageingMs: 200, maxMacs: 1 });
      const [a, b] = nics as [Nic, Nic];
      const first = frame(BROADCAST_MAC, MA);
      await a.send(first);
      await b.waitForFrame(first);
      await sleep(450);
      const later = frame(BROADCAST_MAC, MB);
      await b.send(later);
      await a.waitForFrame(later);
      const s = await sw.stats();
      expect(s.macs.map((e) => e.mac)).not.toContain('52:54:00:00:00:0a'); // aged out, as the table shows it
      // MB is not refused as if the table were still full of MA.
      expect(s.tableFull).toBe(0);
      expect(s.macs).toMatchObject([{ mac: '52:54:00:00:00:0b', port: ports[1]!.id }]);
    });
  });
});

/** A random unicast MAC, never zero. */
function unicastMac(rng: Rng): MacKey {
  const mac = rng.int(2 ** 24) * 2 ** 24 + rng.int(2 ** 24);
  const unicast = isGroupMac(mac) ? mac - 2 ** 40 : mac;
  return unicast === 0 ? 1 : unicast;
}

/** A datagram for the fuzz: noise, or frames that look right with damage here and there. */
function fuzzDatagram(rng: Rng, known: readonly MacKey[]): Buffer {
  const kind = rng.int(10);
  if (kind === 0) return rng.bytes(rng.int(2001)); // noise of any length 0..2000
  if (kind === 1) return rng.bytes(rng.int(ETH_HEADER)); // truncated
  if (kind === 2) return rng.bytes(MAX_FRAME + 1 + rng.int(2000 - MAX_FRAME)); // oversized
  const dst = rng.pick([BROADCAST_MAC, MULTICAST, MX, unicastMac(rng), ...known]);
  const src = rng.chance(0.15) ? rng.pick([0, BROADCAST_MAC, MULTICAST, parseMac('33:33:00:00:00:01')]) : rng.pick([unicastMac(rng), ...known]);
  const ip = (): number => rng.pick([0x0a50_000a, 0x0a50_000b, 0x0a50_0002, rng.int(2 ** 32)]);
  let f: Buffer;
  if (kind === 3) {
    const spa = ip();
    f = buildArp({ op: rng.pick([1, 2] as const), senderMac: src, senderIp: spa, targetMac: rng.pick([0, dst]), targetIp: rng.chance(0.3) ? spa : ip() }, dst);
    if (rng.chance(0.3)) f.writeUInt16BE(ETHERTYPE_RARP, 12);
  } else if (kind === 4) {
    f = buildIcmpEcho({ srcMac: src, dstMac: dst, srcIp: ip(), dstIp: ip(), type: rng.pick([0, 8] as const), id: rng.int(65536), seq: rng.int(65536), payload: rng.bytes(rng.int(64)) });
  } else {
    f = Buffer.concat([Buffer.alloc(ETH_HEADER), rng.bytes(rng.int(MAX_FRAME + 100 - ETH_HEADER))]);
    writeMac(f, 0, dst);
    writeMac(f, 6, src);
    f.writeUInt16BE(rng.pick([ETHERTYPE_IPV4, ETHERTYPE_ARP, ETHERTYPE_RARP, 0x86dd, 0x8100, rng.int(65536)]), 12);
  }
  if (rng.chance(0.2)) f[rng.int(f.length)] = rng.int(256); // a flipped byte anywhere, MACs included
  if (rng.chance(0.1)) f = f.subarray(0, rng.int(f.length + 1)); // cut short
  return f;
}

interface Tally {
  rxFrames: number;
  rxBytes: number;
  truncated: number;
  oversized: number;
  malformed: number;
  foreign: number;
}

/** What the switch must make of a datagram on a port, by its documented rules. */
function classify(d: Buffer, foreign: boolean, t: Tally): void {
  if (foreign) t.foreign++;
  else if (d.length < ETH_HEADER) t.truncated++;
  else if (d.length > MAX_FRAME) t.oversized++;
  else if (macKeyAt(d, 6) === 0 || isGroupMac(macKeyAt(d, 6))) t.malformed++;
  else {
    t.rxFrames++;
    t.rxBytes += d.length;
  }
}

function tallyOf(c: PortCounters): Tally {
  const { truncated, oversized, malformed, foreign } = c.drops;
  return { rxFrames: c.rxFrames, rxBytes: c.rxBytes, truncated, oversized, malformed, foreign };
}

describe('LabSwitch fuzz', () => {
  it('takes ~2 s of random datagrams, counts every one, and still switches correctly', async () => {
    const seed = Number(process.env.SWITCH_FUZZ_SEED) || (Math.random() * 0xffff_ffff) >>> 0;
    const rng = new Rng(seed);
    const why = `(SWITCH_FUZZ_SEED=${seed})`;
    const { sw, nics, ports } = await lab(3, { maxMacs: 64 });
    const [a, b, c] = nics as [Nic, Nic, Nic];
    const stranger = await Nic.open();
    const known = [MA, MB, MC];
    const failed: string[] = [];
    sw.on('failed', (w) => failed.push(w));
    // Learn the three NICs' own MACs first: a full table must not stop them being switched.
    for (let i = 0; i < 3; i++) {
      const hello = frame(BROADCAST_MAC, known[i]!);
      await nics[i]!.send(hello);
      await nics[(i + 1) % 3]!.waitForFrame(hello);
    }
    const base = (await sw.stats()).ports.map((p) => tallyOf(p.counters));
    const expected: Tally[] = base.map((t) => ({ ...t }));
    let moves = 0;
    sw.on('mac-move', () => moves++);

    let sent = 0;
    const deadline = performance.now() + 2000;
    while (performance.now() < deadline) {
      for (let i = 0; i < 16; i++) {
        const to = rng.int(3);
        const foreign = rng.chance(0.1);
        const d = fuzzDatagram(rng, known);
        classify(d, foreign, expected[to]!);
        await (foreign ? rng.pick([stranger, nics[(to + 1) % 3]!]) : nics[to]!).send(d, ports[to]!.port);
        sent++;
      }
      for (const n of nics) n.clear();
      // Let the NICs read what is forwarded to them, so their socket buffers do not overflow.
      await new Promise((r) => setImmediate(r));
    }

    // Every datagram is accounted for, exactly as the rules say, on the port it was sent to.
    const s = await sw.stats();
    expect(s.ports.map((p) => tallyOf(p.counters)), why).toEqual(expected);
    const sum = (k: keyof Tally): number => expected.reduce((acc, t, i) => acc + t[k] - base[i]![k], 0);
    expect(sent, why).toBeGreaterThan(500);
    for (const k of ['truncated', 'oversized', 'malformed', 'foreign', 'rxFrames'] as const) expect(sum(k), `${k} ${why}`).toBeGreaterThan(0);
    expect(s.tableFull, why).toBeGreaterThan(0);
    expect(s.macs.length, why).toBeLessThanOrEqual(64);
    expect(sw.macMoves().length, why).toBeLessThanOrEqual(1000);
    expect(sw.macMoves().length, why).toBe(Math.min(moves, 1000));
    expect(sw.announceFrames().length, why).toBeLessThanOrEqual(1000);
    expect([...nics, stranger].flatMap((n) => n.errors), why).toEqual([]);
    expect(failed, why).toEqual([]);
    expect(sw.portInfo(), why).toHaveLength(3);

    // Still a switch: b announces itself, then a unicast from a to b reaches b and only b.
    for (const n of nics) n.clear();
    const hello = rarp(MB);
    await b.send(hello);
    await Promise.all([a.waitForFrame(hello), c.waitForFrame(hello)]);
    expect((await sw.lookup(macToString(MB)))?.port, why).toBe(ports[1]!.id);
    const txBefore = await txFrames(sw, ports);
    const toB = frame(MB, MA, 128);
    await a.send(toB);
    const got = await b.waitForFrame(toB);
    expect(got.equals(toB)).toBe(true);
    const txAfter = await txFrames(sw, ports);
    expect([txAfter[0]! - txBefore[0]!, txAfter[1]! - txBefore[1]!, txAfter[2]! - txBefore[2]!], why).toEqual([0, 1, 0]);
    await c.expectNone((x) => x.equals(toB));
  });
});
