import { LocalHost } from '../hosts/local/local-host';
import type { Guest } from '../hosts/host';
import { chooseAccelerator, type Accelerator } from '../qemu/binary';
import { delay } from '../util/time';

export interface BootCheckOptions {
  memoryMiB?: number;
  /** How long heartbeats are watched after ready. */
  heartbeatWindowMs?: number;
  /** The workload run before the integrity check. */
  load?: { workingSetMiB: number; rateMBps: number; durationMs: number };
  cacheRoot?: string;
  readyTimeoutMs?: number;
  onProgress?: (message: string) => void;
}

export interface BootCheckResult {
  status: 'ok' | 'failed';
  accel: Accelerator;
  /** From QEMU's spawn to labload's READY, host time. */
  bootToReadyMs: number | null;
  /** Mean interval between heartbeats in guest time (labload's clock). */
  heartbeatIntervalMs: number | null;
  heartbeats: { count: number; meanHostIntervalMs: number; jitterMs: number; maxHostGapMs: number; missed: number } | null;
  load: { requestedMBps: number; measuredMBps: number; workingSetMiB: number } | null;
  integrity: { ok: boolean; pages: number; bad: number; firstBad: number } | null;
  /** Why the check failed, in a sentence; null when it passed. */
  error: string | null;
}

const DEFAULT_LOAD = { workingSetMiB: 32, rateMBps: 20, durationMs: 1500 };

async function watchHeartbeats(guest: Guest, windowMs: number) {
  const ch = guest.labload!;
  ch.heartbeats.reset();
  await delay(windowMs);
  const s = ch.heartbeats.summary();
  const guestInterval = s.count > 1 ? s.meanGuestIntervalMs : null;
  const r2 = (n: number) => Math.round(n * 100) / 100;
  return {
    guestInterval,
    stats: {
      count: s.count,
      meanHostIntervalMs: r2(s.meanHostIntervalMs),
      jitterMs: r2(s.jitterMs),
      maxHostGapMs: r2(s.maxHostGapMs),
      missed: s.missed,
    },
  };
}

/**
 * Boots the lab guest on a throwaway local host, waits for ready, watches heartbeats, runs a
 * workload, checks memory integrity and stops it: the whole guest path, end to end.
 */
export async function bootCheck(opts: BootCheckOptions = {}): Promise<BootCheckResult> {
  const say = opts.onProgress ?? (() => {});
  const load = opts.load ?? DEFAULT_LOAD;
  const { accel } = await chooseAccelerator();
  const result: BootCheckResult = {
    status: 'failed', accel, bootToReadyMs: null, heartbeatIntervalMs: null, heartbeats: null,
    load: null, integrity: null, error: null,
  };
  const host = new LocalHost({ name: 'host-a', ...(opts.cacheRoot ? { cacheRoot: opts.cacheRoot } : {}) });
  try {
    say(`starting the lab guest on ${host.name} (${accel.toUpperCase()})`);
    const guest = await host.startGuest({ name: 'lab1', memoryMiB: opts.memoryMiB ?? 256 });
    await guest.waitReady(opts.readyTimeoutMs ?? 60_000);
    result.bootToReadyMs = Math.round(performance.now() - guest.startedAt);
    say(`ready after ${result.bootToReadyMs} ms; watching heartbeats`);

    const hb = await watchHeartbeats(guest, opts.heartbeatWindowMs ?? 1000);
    result.heartbeats = hb.stats;
    result.heartbeatIntervalMs = hb.guestInterval === null ? null : Math.round(hb.guestInterval * 100) / 100;

    say(`dirtying ${load.workingSetMiB} MiB at ${load.rateMBps} MB/s`);
    const ch = guest.labload!;
    await ch.startLoad({ workingSetMiB: load.workingSetMiB, rateMBps: load.rateMBps }, { timeoutMs: 30_000 });
    await delay(load.durationMs);
    const report = await ch.report();
    await ch.stopLoad();
    result.load = { requestedMBps: load.rateMBps, measuredMBps: report.avgMBps, workingSetMiB: load.workingSetMiB };

    say('checking memory integrity');
    const v = await ch.verify({ timeoutMs: 30_000 });
    result.integrity = { ok: v.bad === 0 && v.sweepOk, pages: v.pages, bad: v.bad, firstBad: v.firstBad };

    say('stopping the guest');
    const exit = await guest.stop();
    if (exit.signal === 'SIGKILL') throw new Error('the guest did not stop cleanly and had to be killed');
    const ok = result.integrity.ok && result.heartbeats.count > 0;
    result.status = ok ? 'ok' : 'failed';
    if (!ok) result.error = result.integrity.ok ? 'no heartbeats arrived' : `${v.bad} of ${v.pages} pages failed the integrity check`;
  } catch (err) {
    result.error = (err as Error).message;
  } finally {
    await host.dispose();
  }
  return result;
}
