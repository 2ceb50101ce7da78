// Cancel in every migration state QEMU's own migration test cancels in (setup, active,
// pre-switchover, device), and cancel racing the switchover: a migrate_cancel sent to the source
// QEMU within ±20 ms of its STOP, 20 times. Whatever QEMU then says (cancelled, or completed
// because the cancel came too late), the job acts on it: exactly one running copy at every
// instant we sample, where the result says, with its memory intact.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Guest } from '../../electron/engine/hosts/host';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { MigrationJournal } from '../../electron/engine/migration/journal';
import { migrateGuest, type MigrationJob } from '../../electron/engine/migration/orchestrator';
import type { MigrationEvent, MigrationResult } from '../../electron/engine/migration/types';
import { type QmpEvent } from '../../electron/engine/qmp';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { expectScopeClean, requireLabGuest } from '../helpers/lab';
import { expectIntact, runningCopies } from '../helpers/migration';

let work: string;
let lab: Lab;
let journal: MigrationJournal;

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-cancel');
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
  journal = new MigrationJournal(join(work, 'state'));
});

afterAll(async () => {
  await lab?.dispose();
  for (const h of ['host-a', 'host-b']) await expectScopeClean(join(work, 'run', h));
  await removeDir(work);
});

const other = (h: string) => (h === 'host-a' ? 'host-b' : 'host-a');

/**
 * Samples, every 5 ms while a migration runs, how many copies QEMU runs: an instant with two is
 * split brain. (A sample is two query-status round trips, so 5 ms is a floor, not a promise.)
 */
function watchCopies(name: string): { stop: () => Promise<{ samples: number; twoRunning: number }> } {
  let on = true;
  let samples = 0;
  let twoRunning = 0;
  const loop = (async () => {
    while (on) {
      const where = await runningCopies(lab, name);
      samples++;
      if (where.length > 1) twoRunning++;
      await delay(5);
    }
  })();
  return {
    stop: async () => {
      on = false;
      await loop;
      return { samples, twoRunning };
    },
  };
}

/** After the job: the copy the result names is the one running copy, and the other host has none. */
async function expectOneCopyWhereTheResultSays(r: MigrationResult): Promise<Guest> {
  expect(r.runningOn, `${r.status}: ${r.reason}`).not.toBeNull();
  expect(await runningCopies(lab, r.guest)).toEqual([r.runningOn]);
  expect(lab.host(r.runningOn === r.from ? r.to : r.from).guest(r.guest)).toBeUndefined();
  return lab.host(r.runningOn!).guest(r.guest)!;
}

async function bootLoaded(name: string): Promise<Guest> {
  const g = await lab.host('host-a').startGuest({ name, memoryMiB: 256 });
  await g.waitReady(60_000);
  await g.labload!.startLoad({ workingSetMiB: 32, rateMBps: 5 }, { timeoutMs: 60_000 });
  await delay(200);
  return g;
}

interface Run {
  job: MigrationJob;
  result: Promise<MigrationResult>;
  statuses: string[];
}

function start(g: Guest, opts: { capabilities?: Record<string, boolean>; bandwidthMBps?: number } = {}, onEvent?: (e: MigrationEvent, job: MigrationJob) => void): Run {
  const statuses: string[] = [];
  const to = other(g.hostName);
  let job!: MigrationJob;
  const run = migrateGuest(
    { guest: g, from: lab.host(g.hostName), to: lab.host(to), journal, options: { keepSourceMs: 0, ...opts } },
    (e) => {
      if (e.type === 'status') statuses.push(e.status);
      onEvent?.(e, job);
    },
  );
  job = run.job;
  return { job, result: run.result, statuses };
}

describe('cancel in each QEMU migration state', () => {
  it('in setup and in active: QEMU cancels, the source keeps running, the destination is gone', async () => {
    let g = await bootLoaded('cancel-early');
    for (const state of ['setup', 'active'] as const) {
      let sentIn: string | null = null;
      const run = start(g, { bandwidthMBps: 50 }, (e, job) => {
        // The cancel goes out the moment QEMU's event says it is in that state.
        if (e.type === 'status' && e.status === state && sentIn === null) {
          sentIn = e.status;
          expect(job.cancel(`cancel in ${state}`)).toBe(true);
        }
      });
      const copies = watchCopies(g.name);
      const r = await run.result;
      const seen = await copies.stop();
      expect(sentIn).toBe(state);
      expect(r.status, r.reason ?? '').toBe('cancelled');
      expect(run.statuses).toContain('cancelled');
      expect(seen.twoRunning).toBe(0);
      expect(seen.samples).toBeGreaterThan(10);
      g = await expectOneCopyWhereTheResultSays(r);
      expect(r.runningOn).toBe(r.from);
    }
    await expectIntact(g);
    await g.stop();
  });

  it('in pre-switchover (pause-before-switchover): accepted while QEMU waits, the source resumes', async () => {
    const g = await bootLoaded('cancel-pre');
    const run = start(g, { capabilities: { 'pause-before-switchover': true } }, (e, job) => {
      if (e.type === 'status' && e.status === 'pre-switchover') expect(job.cancel('cancel in pre-switchover')).toBe(true);
    });
    const copies = watchCopies(g.name);
    const r = await run.result;
    const seen = await copies.stop();
    expect(run.statuses).toContain('pre-switchover');
    expect(r.status, r.reason ?? '').toBe('cancelled');
    expect(seen.twoRunning).toBe(0);
    const back = await expectOneCopyWhereTheResultSays(r);
    expect(r.runningOn).toBe(r.from);
    await expectIntact(back);
    await back.stop();
  });

  it('in device (after Continue): the job refuses, a cancel sent to QEMU anyway is obeyed as QEMU reports it', async () => {
    const g = await bootLoaded('cancel-device');
    let refused: boolean | null = null;
    let sent = false;
    const run = start(g, { capabilities: { 'pause-before-switchover': true } }, (e, job) => {
      if (e.type === 'status' && e.status === 'pre-switchover') job.continueSwitchover();
      if (e.type === 'status' && e.status === 'device' && !sent) {
        sent = true;
        refused = !job.cancel('cancel in device');
        void g.qmp.execute('migrate_cancel').catch(() => {}); // QEMU's own test does this
      }
    });
    const copies = watchCopies(g.name);
    const r = await run.result;
    const seen = await copies.stop();
    expect(run.statuses).toEqual(expect.arrayContaining(['pre-switchover', 'device']));
    expect(sent).toBe(true);
    expect(refused).toBe(true); // the source is stopping: the job's cancel is refused
    expect(seen.twoRunning).toBe(0);
    // QEMU decides: cancelled (back on the source) or completed (the cancel came too late).
    expect(['cancelled', 'completed']).toContain(r.status);
    const here = await expectOneCopyWhereTheResultSays(r);
    expect(r.runningOn).toBe(r.status === 'completed' ? r.to : r.from);
    await expectIntact(here);
    await here.stop();
  });
});

describe('cancel racing the switchover', () => {
  it('20 runs with migrate_cancel within ±20 ms of STOP: one running copy throughout, where the result says, 0 bad pages', async () => {
    let g = await bootLoaded('race');
    /** Time from the job's monitor phase (migrate sent) to QEMU's STOP, from runs that stopped. */
    const toStop: number[] = [];
    const rows: Array<{ run: number; planned: number; offsetMs: number | null; status: string; runningOn: string | null; twoRunning: number; bad: number }> = [];
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    // A calibration run: when does STOP come after migrate, for this guest?
    for (let i = 0; toStop.length < 2 && i < 4; i++) {
      let monitorAt = 0;
      const run = start(g, { bandwidthMBps: 100 }, (e) => {
        if (e.type === 'phase' && e.phase === 'monitor') monitorAt = performance.now();
      });
      const off = g.qmp.onEvent('STOP', (ev: QmpEvent) => toStop.push(ev.receivedAt - monitorAt));
      const r = await run.result;
      off();
      g = await expectOneCopyWhereTheResultSays(r);
    }
    expect(toStop.length).toBe(2);
    const within = () => rows.filter((x) => x.offsetMs !== null && Math.abs(x.offsetMs) <= 20).length + rows.filter((x) => x.offsetMs === null && x.planned < 0).length;
    for (let i = 0; within() < 20 && i < 40; i++) {
      const planned = -20 + ((i * 7) % 41); // -20..+20 ms, spread over the runs
      const src = g;
      let monitorAt = 0;
      let stopAt: number | null = null;
      let cancelAt: number | null = null;
      let timer: NodeJS.Timeout | null = null;
      const sendCancel = () => {
        cancelAt = performance.now();
        void src.qmp.execute('migrate_cancel').catch(() => {});
      };
      const run = start(g, { bandwidthMBps: 100 }, (e) => {
        if (e.type === 'phase' && e.phase === 'monitor') {
          monitorAt = performance.now();
          if (planned < 0) timer = setTimeout(sendCancel, Math.max(0, median(toStop) + planned));
        }
      });
      const off = src.qmp.onEvent('STOP', (ev: QmpEvent) => {
        stopAt = ev.receivedAt;
        toStop.push(ev.receivedAt - monitorAt);
        if (planned >= 0) timer = setTimeout(sendCancel, planned);
      });
      const copies = watchCopies(g.name);
      const r = await run.result;
      const seen = await copies.stop();
      off();
      if (timer) clearTimeout(timer);
      g = await expectOneCopyWhereTheResultSays(r);
      const v = await g.labload!.verify({ timeoutMs: 60_000 });
      // The offset is measured where QEMU stopped; a cancel that came before (and so prevented) the
      // STOP has none: it counts as "before STOP" by its plan.
      const offsetMs = stopAt !== null && cancelAt !== null ? Math.round((cancelAt - stopAt) * 10) / 10 : null;
      rows.push({ run: i + 1, planned, offsetMs, status: r.status, runningOn: r.runningOn, twoRunning: seen.twoRunning, bad: v.bad });
      expect(seen.twoRunning, `run ${i + 1}`).toBe(0);
      expect(v.bad, `run ${i + 1}`).toBe(0);
      expect(['cancelled', 'completed']).toContain(r.status);
      expect(r.runningOn).toBe(r.status === 'completed' ? r.to : r.from);
    }
    console.log(`cancel at switchover: ${rows.length} runs\n${rows.map((x) => `  run ${x.run}: planned ${x.planned} ms, measured ${x.offsetMs ?? 'before STOP'} -> ${x.status} on ${x.runningOn}, two running: ${x.twoRunning}, bad pages: ${x.bad}`).join('\n')}`);
    expect(within()).toBeGreaterThanOrEqual(20);
    expect(rows.some((x) => x.status === 'cancelled')).toBe(true);
    await expectIntact(g);
    await g.stop();
  }, 600_000);
});
