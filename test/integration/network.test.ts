// The lab network with real QEMU guests: NICs on the UDP switch, guests on two hosts pinging each
// other, and the network remap of a migration as the switch and its probe saw it.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Guest } from '../../electron/engine/hosts/host';
import { LocalHost } from '../../electron/engine/hosts/local/local-host';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { migrateGuest } from '../../electron/engine/migration/orchestrator';
import { queryMigrateParameters } from '../../electron/engine/qmp';
import type { MigrationEvent } from '../../electron/engine/migration/types';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { expectScopeClean, requireLabGuest } from '../helpers/lab';
import { pidAlive } from '../helpers/leaks';
import { completeDespiteTcgCrashes, expectOneCopyOn } from '../helpers/migration';

let work: string;
let lab: Lab;
let ga: Guest;
let gb: Guest;

/** UDP sockets this process holds open: the switch's ports and nothing else here. */
function udpSockets(): number {
  return process.getActiveResourcesInfo().filter((r) => /^udpwrap$/i.test(r)).length;
}

let udpBefore: number;

beforeAll(async () => {
  await requireLabGuest();
  udpBefore = udpSockets();
  work = await makeTempDir('it-network');
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
  [ga, gb] = await Promise.all([lab.startGuest('host-a', { name: 'ga' }), lab.startGuest('host-b', { name: 'gb' })]);
  await Promise.all([ga.waitReady(90_000), gb.waitReady(90_000)]);
});

afterAll(async () => {
  const sw = lab?.network?.switch;
  const switchd = sw?.pid;
  await lab?.dispose();
  if (sw) expect(sw.portInfo()).toEqual([]);
  if (switchd !== undefined) expect(pidAlive(switchd)).toBe(false);
  expect(udpSockets()).toBe(udpBefore);
  for (const h of ['host-a', 'host-b']) await expectScopeClean(join(work, 'run', h));
  await removeDir(work);
});

/** Runs a command on the guest's console and waits for `expect` in what it prints. */
async function run(guest: Guest, command: string, expectText: RegExp, timeoutMs = 20_000): Promise<string> {
  // The shell works out the end mark, so the echo of the typed line cannot match it.
  const mark = `done-${Math.random().toString(36).slice(2, 8)}`;
  const wait = guest.console.waitFor(`${mark}-42`, timeoutMs);
  guest.console.write(`${command}; echo ${mark}-$((40+2))\n`);
  await wait;
  const text = guest.console.text();
  const out = text.slice(text.lastIndexOf(command));
  expect(out).toMatch(expectText);
  return out;
}

describe('the lab network', () => {
  it('gives each guest an address and a NIC on its own switch port', () => {
    const sw = lab.network!.switch;
    expect(ga.spec).toMatchObject({ ip: '10.80.0.10/24', mac: '52:54:00:50:00:0a' });
    expect(gb.spec).toMatchObject({ ip: '10.80.0.11/24', mac: '52:54:00:50:00:0b' });
    const ports = sw.portInfo();
    expect(ports.find((p) => p.id === ga.switchPort!.id)).toMatchObject({ host: 'host-a', guest: 'ga', peer: { address: '127.0.0.1' } });
    expect(ports.find((p) => p.id === gb.switchPort!.id)).toMatchObject({ host: 'host-b', guest: 'gb', peer: { address: '127.0.0.1' } });
    expect(ga.console.text()).toContain('up at 10.80.0.10/24');
  });

  it('carries a ping from a guest on host-a to a guest on host-b', async () => {
    await run(ga, 'ping -c 3 -W 2 10.80.0.11', /3 packets transmitted, 3 packets received, 0% packet loss/);
    const sw = lab.network!.switch;
    expect(await sw.lookup('52:54:00:50:00:0a')).toMatchObject({ port: ga.switchPort!.id, host: 'host-a' });
    expect(await sw.lookup('52:54:00:50:00:0b')).toMatchObject({ port: gb.switchPort!.id, host: 'host-b' });
    const a = (await sw.stats()).ports.find((p) => p.id === ga.switchPort!.id)!;
    expect(a.counters.rxFrames).toBeGreaterThanOrEqual(4); // ARP + 3 echo requests at least
    expect(a.counters.txFrames).toBeGreaterThanOrEqual(4);
    expect(Object.values(a.counters.drops).every((n) => n === 0)).toBe(true);
  });

  it('refuses to move a guest with a NIC to a host that is not on the lab network', async () => {
    const offNet = new LocalHost({ name: 'host-c', runtimeDir: join(work, 'run', 'host-c') });
    try {
      const r = await migrateGuest({ guest: ga, from: lab.host('host-a'), to: offNet, network: lab.network }).result;
      expect(r.status).toBe('failed');
      expect(r.failure).toBe('preflight');
      expect(r.checks.find((c) => c.name === 'network')).toMatchObject({ status: 'fail' });
      expect(r.reason).toContain('host-c is not on the lab network');
      expect(r.network).toBeNull(); // nothing started, so the network saw nothing
      expect(ga.state).toBe('ready');
    } finally {
      await offNet.dispose();
    }
    await expectScopeClean(join(work, 'run', 'host-c'));
  });

  it('records the remap of a migration: one MAC move by RARP, every announce round, the probe gap, the old port retired', async () => {
    const sw = lab.network!.switch;
    const oldPort = ga.switchPort!.id;
    let events: MigrationEvent[] = [];
    let job: ReturnType<typeof migrateGuest>['job'] | null = null;
    const r = await completeDespiteTcgCrashes(lab, 'ga', async () => {
      events = [];
      const guest = lab.host('host-a').guest('ga')!;
      const m = migrateGuest({ guest, from: lab.host('host-a'), to: lab.host('host-b'), network: lab.network }, (e) => events.push(e));
      job = m.job;
      return m.result;
    });
    expect(r.status).toBe('completed');
    const dst = job!.destination!;
    const net = r.network!;
    expect(net).not.toBeNull();
    expect(net.mac).toBe('52:54:00:50:00:0a');
    // exactly one move to the destination's port, and the frame that moved it was an announce
    const toDst = net.macMoves.filter((m) => m.toHost === 'host-b');
    expect(toDst).toHaveLength(1);
    expect(toDst[0]).toMatchObject({ fromHost: 'host-a', fromPort: oldPort, toPort: dst.switchPort!.id, cause: 'rarp' });
    expect(toDst[0]!.atMs).toBeGreaterThanOrEqual(r.phases.find((p) => p.name === 'switchover')!.startMs);
    // as many announce frames as the destination QEMU's own announce-rounds (its default, 5: the
    // lab leaves it), spaced as QEMU spaces them (50, 150, 250, 350 ms)
    const announce = await queryMigrateParameters(dst.qmp);
    expect(net.expectedAnnounceFrames).toBe(announce['announce-rounds']);
    expect(announce['announce-rounds']).toBe(5);
    expect(net.announceFrames).toBe(5);
    const gaps = net.announceAtMs.slice(1).map((t, i) => t - net.announceAtMs[i]!);
    [50, 150, 250, 350].forEach((want, i) => expect(Math.abs(gaps[i]! - want), `announce gap ${i}: ${gaps[i]}`).toBeLessThan(60));
    // the probe pinged through the move; its longest gap is bounded and is the network downtime
    expect(net.probe!.intervalMs).toBe(20);
    expect(net.probe!.sent).toBeGreaterThanOrEqual(net.probe!.received);
    expect(net.networkDowntimeMs).toBe(net.probe!.maxGapMs);
    // No reply while the guest is paused: the gap is at least QEMU's downtime (QEMU counts whole
    // ms). It ends with a reply from the destination, which the guest sends once it runs there
    // (its heartbeats resumed at resumedAtMs), after the MAC moved: at most the switchover-to-resume
    // span plus one probe interval before it and a TCG guest's round trip on a loaded machine (500 ms).
    const switchover = r.phases.find((p) => p.name === 'switchover')!;
    expect(net.networkDowntimeMs!).toBeGreaterThanOrEqual(r.downtimeMs! - 1);
    expect(net.networkDowntimeMs!).toBeLessThanOrEqual(r.resumedAtMs! - switchover.startMs + 500);
    expect(toDst[0]!.atMs).toBeLessThanOrEqual(r.resumedAtMs!);
    // the old port is gone, and the switch knows the MAC on the new one
    expect(net.oldPortRetired).toBe(true);
    expect(sw.portInfo().some((p) => p.id === oldPort)).toBe(false);
    expect(await sw.lookup('52:54:00:50:00:0a')).toMatchObject({ port: dst.switchPort!.id, host: 'host-b' });
    // the live stream carried the same story as it happened
    const moveEvents = events.filter((e) => e.type === 'mac-move');
    expect(moveEvents.filter((e) => e.type === 'mac-move' && e.move.toHost === 'host-b')).toHaveLength(1);
    expect(events.filter((e) => e.type === 'announce')).toHaveLength(5);
    const probeEvents = events.filter((e) => e.type === 'probe');
    expect(probeEvents.length).toBeGreaterThan(2);
    const samples = probeEvents.flatMap((e) => (e.type === 'probe' ? e.samples : []));
    // every reply the probe counted reached the live stream, and nothing else did
    expect(samples.filter((s) => s.rttMs !== null)).toHaveLength(net.probe!.received);
    // the probe pinged every 20 ms from the start of the job's network watch to its end
    expect(net.probe!.sent).toBeGreaterThan((r.wallTimeMs - r.phases[1]!.startMs) / 20 / 2);
    // and the guest, now on host-b, still reaches its neighbour from its own console
    ga = await expectOneCopyOn(lab, 'ga', 'host-b');
    await run(ga, 'ping -c 2 -W 2 10.80.0.11', /2 packets transmitted, 2 packets received/);
  });

  it('leaves the switch as it was when a migration is cancelled: no move, the destination port retired', async () => {
    const sw = lab.network!.switch;
    const before = sw.portInfo().map((p) => p.id).sort();
    const guest = lab.host('host-b').guest('gb')!;
    const m = migrateGuest({ guest, from: lab.host('host-b'), to: lab.host('host-a'), network: lab.network });
    m.job.on('event', (e) => {
      if (e.type === 'phase' && e.phase === 'listen') m.job.cancel('the test cancels before the stream starts');
    });
    const r = await m.result;
    expect(r.status).toBe('cancelled');
    expect(r.network!.macMoves).toEqual([]);
    expect(r.network!.announceFrames).toBe(0);
    expect(r.network!.oldPortRetired).toBe(false);
    expect(sw.portInfo().map((p) => p.id).sort()).toEqual(before);
    expect(await sw.lookup('52:54:00:50:00:0b')).toMatchObject({ port: guest.switchPort!.id });
    await run(guest, 'ping -c 1 -W 2 10.80.0.10', /1 packets received/);
  });
});
