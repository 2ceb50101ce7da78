// The pre-flight dirty-rate measurement on real lab guests (real QEMU, nothing mocked): an idle
// guest measures low, one running labload's dirtier clearly higher, and the 'dirty-rate' check
// turns that into a pass or a warn. Runs on whichever QEMU the lab picks (MIGLAB_QEMU for 7.2).
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Guest } from '../../electron/engine/hosts/host';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { DIRTY_RATE_SOURCE, measureDirtyRate } from '../../electron/engine/migration/dirty-rate';
import { runPreflight } from '../../electron/engine/migration/preflight';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { expectDirtyingAt, expectScopeClean, requireLabGuest } from '../helpers/lab';

const MiB = 1024 * 1024;
const WS_MIB = 64;
const RATE_MBPS = 50;

let work: string;
let lab: Lab;
let idle: Guest;
let busy: Guest;

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-dirty-rate');
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
  [idle, busy] = await Promise.all([
    lab.host('host-a').startGuest({ name: 'dr-idle', memoryMiB: 256 }),
    lab.host('host-a').startGuest({ name: 'dr-busy', memoryMiB: 256 }),
  ]);
  await Promise.all([idle.waitReady(90_000), busy.waitReady(90_000)]);
  await busy.labload!.startLoad({ workingSetMiB: WS_MIB, rateMBps: RATE_MBPS }, { timeoutMs: 60_000 });
  // The guest's own figure first: it really dirties at about the rate asked.
  await expectDirtyingAt(busy, RATE_MBPS);
}, 180_000);

afterAll(async () => {
  await lab?.dispose();
  for (const h of ['host-a', 'host-b']) await expectScopeClean(join(work, 'run', h));
  await removeDir(work);
});

describe('measureDirtyRate on real QEMU', () => {
  it('measures an idle guest low and a busy one clearly higher', async () => {
    const quiet = await measureDirtyRate(idle, { ms: 1000 });
    const loud = await measureDirtyRate(busy, { ms: 1000 });
    const report = await busy.labload!.report();
    expect(quiet.source).toBe(DIRTY_RATE_SOURCE);
    // QEMU 8.2+ reports the milliseconds it really measured (1000 or a little over); older ones whole seconds.
    for (const m of [quiet, loud]) {
      expect(m.calcTimeMs).toBeGreaterThanOrEqual(1000);
      expect(m.calcTimeMs).toBeLessThan(1100);
    }
    // Idle: heartbeats and the kernel only, a few MiB/s at most.
    expect(quiet.dirtyRateBps).toBeLessThan(5 * MiB);
    // Busy: page sampling over 1 s sees the distinct pages labload rewrote, about its rate
    // (50 MB/s in a 64 MiB working set, so little wraps within the second).
    const guestSaid = report.measuredMBps * 1e6;
    expect(loud.dirtyRateBps, `QEMU ${loud.dirtyRateBps / MiB} MiB/s, labload ${report.measuredMBps} MB/s`).toBeGreaterThan(Math.max(quiet.dirtyRateBps + 15 * MiB, guestSaid * 0.4));
    // Sampling error aside (256 samples here), it cannot be far over the rate nor the working set.
    expect(loud.dirtyRateBps).toBeLessThan(Math.min(guestSaid * 2, WS_MIB * MiB * 1.5));
  }, 60_000);

  it('refuses a measuring time out of range before asking QEMU, and QEMU still measures after', async () => {
    await expect(measureDirtyRate(idle, { ms: 10 })).rejects.toThrow(/over 50 ms to 60 s/);
    await expect(measureDirtyRate(idle, { ms: 100 })).resolves.toMatchObject({ source: DIRTY_RATE_SOURCE });
  }, 30_000);
});

describe("the 'dirty-rate' pre-flight check on real QEMU", () => {
  const ask = { ms: 1000, bandwidthBps: 100e6, bandwidthFrom: "the migration's max-bandwidth", downtimeLimitMs: 300 };

  async function dirtyRateCheck(guest: Guest, measure: typeof ask | undefined) {
    const out = await runPreflight({ guest, from: lab.host('host-a'), to: lab.host('host-b'), capabilities: {}, measureDirtyRate: measure });
    if (out.port !== null) lab.host('host-b').releaseMigrationPort(out.port);
    return out.checks;
  }

  it('is not run unless asked', async () => {
    expect((await dirtyRateCheck(idle, undefined)).map((c) => c.name)).not.toContain('dirty-rate');
  }, 30_000);

  it('passes for the idle guest and warns, naming what would help, for the busy one on a slow link', async () => {
    const quiet = (await dirtyRateCheck(idle, ask)).find((c) => c.name === 'dirty-rate')!;
    expect(quiet, quiet.message).toMatchObject({ status: 'pass' });
    expect(quiet.message).toMatch(/measured by QEMU calc-dirty-rate \(page-sampling\) over 1000 ms.*Pre-copy will converge/);
    // 20 MB/s is well under the busy guest's ~50 MB/s, and its working set is far over 20 MB/s x 300 ms.
    const loud = (await dirtyRateCheck(busy, { ...ask, bandwidthBps: 20e6 })).find((c) => c.name === 'dirty-rate')!;
    expect(loud, loud.message).toMatchObject({ status: 'warn' });
    expect(loud.message).toMatch(/Pre-copy will not converge: .* What would help: A higher bandwidth: at least [\d.]+ MB\/s .* auto-converge: .* post-copy: /);
  }, 60_000);
});
