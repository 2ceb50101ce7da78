// Convergence strategies with real QEMU guests: each strategy's capabilities and parameters reach
// both QEMUs as it declares, its figures reach the samples, and the guest arrives intact.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Guest } from '../../electron/engine/hosts/host';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { MigrationJournal } from '../../electron/engine/migration/journal';
import { migrateGuest } from '../../electron/engine/migration/orchestrator';
import type { MigrationEvent, MigrationOptions, MigrationSample } from '../../electron/engine/migration/types';
import { queryMigrateCapabilities, queryMigrateParameters } from '../../electron/engine/qmp';
import type { MigrationParameters } from '../../electron/engine/qmp/types';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { expectScopeClean, requireLabGuest } from '../helpers/lab';
import { expectIntact, expectOneCopyOn } from '../helpers/migration';

let work: string;
let lab: Lab;
let journal: MigrationJournal;

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-strategies');
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
  journal = new MigrationJournal(join(work, 'state'));
});

afterAll(async () => {
  await lab?.dispose();
  for (const h of ['host-a', 'host-b']) await expectScopeClean(join(work, 'run', h));
  await removeDir(work);
});

interface Seen {
  /** What each QEMU said once the job had configured it (at 'listen'). */
  source: { caps: string[]; params: MigrationParameters } | null;
  destination: { caps: string[]; params: MigrationParameters } | null;
  samples: MigrationSample[];
}

async function qemuSays(g: Guest): Promise<{ caps: string[]; params: MigrationParameters }> {
  const caps = (await queryMigrateCapabilities(g.qmp)).filter((c) => c.state).map((c) => c.capability);
  return { caps, params: await queryMigrateParameters(g.qmp) };
}

/** Boots a lab guest with a workload, migrates it to host-b with `options`, and records what QEMU said. */
async function migrateWith(name: string, load: { ws: number; rate: number }, options: Partial<MigrationOptions>) {
  const g = await lab.host('host-a').startGuest({ name, memoryMiB: 256 });
  await g.waitReady(60_000);
  await g.labload!.startLoad({ workingSetMiB: load.ws, rateMBps: load.rate }, { timeoutMs: 60_000 });
  await delay(300);
  const seen: Seen = { source: null, destination: null, samples: [] };
  const asked: Promise<void>[] = [];
  const { job, result } = migrateGuest({ guest: g, from: lab.host('host-a'), to: lab.host('host-b'), journal, options }, (e: MigrationEvent) => {
    if (e.type === 'sample') seen.samples.push(e.sample);
    if (e.type === 'phase' && e.phase === 'listen') {
      asked.push(qemuSays(g).then((s) => void (seen.source = s)));
      asked.push(qemuSays(job.destination!).then((s) => void (seen.destination = s)));
    }
  });
  const r = await result;
  await Promise.all(asked);
  return { r, seen };
}

describe('convergence strategies', () => {
  it('auto-converge: the throttle it asks for is set on the source, and QEMU reports its throttle in the samples', async () => {
    // 32 MiB rewritten at up to 100 MB/s against 30 MB/s: plain pre-copy stalls (see migration.test.ts).
    const { r, seen } = await migrateWith('ac', { ws: 32, rate: 100 }, {
      bandwidthMBps: 30, strategy: { name: 'auto-converge', params: { initialPercent: 40, incrementPercent: 20 } },
    });
    expect(r.strategy).toEqual({ name: 'auto-converge', params: { initialPercent: 40, incrementPercent: 20 } });
    expect(seen.source?.caps).toContain('auto-converge');
    expect(seen.source?.params).toMatchObject({ 'cpu-throttle-initial': 40, 'cpu-throttle-increment': 20 });
    // The throttle QEMU applied, straight from query-migrate: at least its first step.
    expect(Math.max(...seen.samples.map((s) => s.cpuThrottlePercent ?? 0))).toBeGreaterThanOrEqual(40);
    expect(r.status, r.reason ?? '').toBe('completed');
    const moved = await expectOneCopyOn(lab, 'ac', 'host-b');
    await expectIntact(moved);
    await moved.stop();
  });

  it('xbzrle: the cache it asks for is set, and the samples carry QEMU\'s cache figures', async () => {
    const { r, seen } = await migrateWith('xb', { ws: 16, rate: 20 }, { bandwidthMBps: 100, strategy: { name: 'xbzrle', params: { cacheMiB: 32 } } });
    expect(r.status, r.reason ?? '').toBe('completed');
    expect(seen.source?.caps).toContain('xbzrle');
    expect(seen.source?.params['xbzrle-cache-size']).toBe(32 * 2 ** 20);
    const withCache = seen.samples.filter((s) => s.xbzrle);
    expect(withCache.length).toBeGreaterThan(0);
    expect(withCache.at(-1)!.xbzrle!.cacheSize).toBe(32 * 2 ** 20);
    const moved = await expectOneCopyOn(lab, 'xb', 'host-b');
    await expectIntact(moved);
    await moved.stop();
  });

  it('multifd: both QEMUs get the channels it asks for, and the memory goes over them', async () => {
    const { r, seen } = await migrateWith('mf', { ws: 8, rate: 10 }, { strategy: { name: 'multifd', params: { channels: 3 } } });
    expect(r.status, r.reason ?? '').toBe('completed');
    for (const side of [seen.source, seen.destination]) {
      expect(side?.caps).toContain('multifd');
      expect(side?.params['multifd-channels']).toBe(3);
    }
    expect(Math.max(...seen.samples.map((s) => s.multifdBytes ?? 0))).toBeGreaterThan(0);
    const moved = await expectOneCopyOn(lab, 'mf', 'host-b');
    await expectIntact(moved);
    await moved.stop();
  });
});
