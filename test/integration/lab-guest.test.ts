// The lab guest on a real QEMU under TCG (KVM where available): boot, heartbeats, workload,
// integrity, console, shutdown, and nothing left behind.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalHost } from '../../electron/engine/hosts/local/local-host';
import type { Guest } from '../../electron/engine/hosts/host';
import { queryStatus } from '../../electron/engine/qmp';
import { delay } from '../../electron/engine/util/time';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { expectGuestGone, expectScopeClean, requireLabGuest } from '../helpers/lab';

describe('the lab guest on a local host', () => {
  let work: string;
  let runtimeDir: string;
  let host: LocalHost;
  let guest: Guest;

  beforeAll(async () => {
    await requireLabGuest();
    work = await makeTempDir('it-guest');
    runtimeDir = join(work, 'host-a');
    host = new LocalHost({ name: 'host-a', runtimeDir });
    guest = await host.startGuest({ name: 'lab1', ip: '10.80.0.11/24' });
  });

  afterAll(async () => {
    await host?.dispose();
    await expectScopeClean(runtimeDir);
    await removeDir(work);
  });

  it('boots to ready and says who it is', async () => {
    await guest.waitReady(60_000);
    expect(guest.state).toBe('ready');
    expect(guest.labload!.ready).toMatchObject({ name: 'lab1', ip: '10.80.0.11/24' });
    const status = await queryStatus(guest.qmp);
    expect(status).toMatchObject({ running: true, status: 'running' });
  });

  it('sends heartbeats at the interval it is set to', async () => {
    const ch = guest.labload!;
    for (const interval of [10, 25]) {
      await ch.setHeartbeatInterval(interval);
      await delay(200); // let the new interval take over
      ch.heartbeats.reset();
      await delay(1500);
      const s = ch.heartbeats.summary();
      expect(s.count).toBeGreaterThan(1500 / interval / 2);
      const guestMean = (s.last!.guestUs - s.first!.guestUs) / 1000 / (s.count - 1);
      expect(guestMean).toBeGreaterThan(interval * 0.9);
      expect(guestMean).toBeLessThan(interval * 1.25);
      expect(s.missed).toBe(0);
    }
    await ch.setHeartbeatInterval(10);
  });

  it('dirties memory at the requested rate, measured inside the guest, and keeps it intact', async () => {
    const ch = guest.labload!;
    const start = await ch.startLoad({ workingSetMiB: 32, rateMBps: 20 }, { timeoutMs: 30_000 });
    expect(start.pages).toBe((32 * 1024 * 1024) / 4096);
    await delay(2500);
    const report = await ch.report();
    expect(report.running).toBe(true);
    expect(report.avgMBps).toBeGreaterThan(20 * 0.8);
    expect(report.avgMBps).toBeLessThan(20 * 1.15);
    expect(report.pages).toBe(8192); // the 32 MiB working set, page by page
    const stopped = await ch.stopLoad();
    expect(stopped.wasRunning).toBe(true);
    const v = await ch.verify({ timeoutMs: 30_000 });
    expect(v).toMatchObject({ pages: 8192, bad: 0, firstBad: -1, sweepOk: true });
  });

  it('keeps heartbeats flowing while dirtying as fast as it can', async () => {
    const ch = guest.labload!;
    await ch.startLoad({ workingSetMiB: 16, rateMBps: 0 }, { timeoutMs: 30_000 });
    ch.heartbeats.reset();
    await delay(1500);
    const s = ch.heartbeats.summary();
    const report = await ch.report();
    await ch.stopLoad();
    expect(report.avgMBps).toBeGreaterThan(20);
    expect(s.count).toBeGreaterThan(50);
    expect(s.missed).toBe(0);
    expect(s.maxGuestGapMs).toBeLessThan(500); // dirtying never holds up the heartbeat for long
  });

  it('answers a command typed on its console', async () => {
    const token = `miglab-${process.pid}-${Date.now()}`;
    const seen = guest.console.waitFor(`out:${token}`, 15_000);
    guest.console.write(`echo out:${token}\n`);
    expect(await seen).toContain(`out:${token}`);
  });

  it('refuses a bad labload command with the guest\'s own sentence', async () => {
    await expect(guest.labload!.command('start', ['-5', 'x'])).rejects.toThrow(/labload start -5 x: start needs <workingSetMiB> <rateMBps>/);
    // and the channel still works afterwards
    expect(await guest.labload!.echo('still-here')).toBe('still-here');
  });

  it('shuts down cleanly and leaves nothing behind', async () => {
    const guestDir = join(runtimeDir, 'lab1');
    expect(existsSync(guestDir)).toBe(true);
    const exit = await guest.stop();
    expect(exit).toMatchObject({ code: 0, signal: null, expected: true });
    expect(guest.state).toBe('stopped');
    expectGuestGone(guest, guestDir);
    expect(host.guests()).toHaveLength(0);
  });
});
