import { describe, expect, it } from 'vitest';
import type { MigrationInfo, MigrationStats } from '../../electron/engine/qmp';
import type { MigrationSample } from '../../electron/engine/migration/types';
import { PassTracker, SampleRing, sampleFromInfo } from '../../electron/engine/migration/telemetry';

// A 256 MiB guest as QEMU 7.2's query-migrate reports it: 4 KiB pages, zero pages cost 9 bytes
// on the wire (8-byte header + 1 fill byte), normal pages their 4096 bytes plus a header.
const PAGE = 4096;
const TOTAL = 268435456;

function ram(over: Partial<MigrationStats>): MigrationStats {
  const normal = over.normal ?? 0;
  return {
    transferred: 0,
    remaining: TOTAL,
    total: TOTAL,
    duplicate: 0,
    skipped: 0,
    normal,
    'normal-bytes': normal * PAGE,
    'dirty-pages-rate': 0,
    mbps: 0,
    'dirty-sync-count': 1,
    'postcopy-requests': 0,
    'page-size': PAGE,
    'multifd-bytes': 0,
    'pages-per-second': 0,
    'precopy-bytes': over.transferred ?? 0,
    'downtime-bytes': 0,
    'postcopy-bytes': 0,
    'dirty-sync-missed-zero-copy': 0,
    ...over,
  };
}

/** What QEMU 7.2 answers while in setup: a status, no ram stats. */
const SETUP: MigrationInfo = { status: 'setup' };

/** End of pass 1: all of RAM walked once, 64 MiB of it in use (16384 pages), the rest zero pages. */
const AFTER_PASS_1: MigrationInfo = {
  status: 'active',
  'setup-time': 4,
  'total-time': 2104,
  'expected-downtime': 300,
  ram: ram({
    transferred: 67553280, // 16384 x 4096 + 49152 x 9 + 2048 of stream headers
    remaining: 10485760,
    normal: 16384,
    duplicate: 49152,
    'dirty-pages-rate': 2560, // 10 MiB/s
    mbps: 257.35,
    'dirty-sync-count': 2,
    'pages-per-second': 31207,
  }),
};

/** End of pass 2: the 10 MiB dirtied during pass 1, plus a few pages that became zero. */
const AFTER_PASS_2: MigrationInfo = {
  status: 'active',
  'setup-time': 4,
  'total-time': 2404,
  'expected-downtime': 41,
  'cpu-throttle-percentage': 20,
  ram: ram({
    transferred: 78203240, // + 2600 x 4096 + 40 x 9
    remaining: 1228800,
    normal: 18984,
    duplicate: 49192,
    'dirty-pages-rate': 2500,
    mbps: 283.99,
    'dirty-sync-count': 3,
    'pages-per-second': 8800,
  }),
};

const COMPLETED: MigrationInfo = {
  status: 'completed',
  'setup-time': 4,
  'total-time': 2554,
  downtime: 38,
  ram: ram({
    transferred: 79432040, // + 300 x 4096
    remaining: 0,
    normal: 19284,
    duplicate: 49192,
    'dirty-pages-rate': 2500,
    mbps: 288.1,
    'dirty-sync-count': 3,
  }),
};

function sample(i: number): MigrationSample {
  return {
    atMs: i * 100,
    status: 'active',
    transferredBytes: i * 1000,
    remainingBytes: TOTAL - i * 1000,
    totalBytes: TOTAL,
    dirtyRateBps: 0,
    throughputBps: 0,
    expectedDowntimeMs: null,
    cpuThrottlePercent: 0,
    pass: 1,
  };
}

describe('sampleFromInfo', () => {
  it('converts pages/s, megabits/s and QEMU names into bytes and MigLab names', () => {
    const s = sampleFromInfo(AFTER_PASS_2, 2404);
    expect(s).toEqual({
      atMs: 2404,
      status: 'active',
      transferredBytes: 78203240,
      remainingBytes: 1228800,
      totalBytes: 268435456,
      dirtyRateBps: 2500 * 4096,
      throughputBps: (283.99 * 1e6) / 8,
      expectedDowntimeMs: 41,
      cpuThrottlePercent: 20,
      pass: 3,
      // QEMU's own figures: no xbzrle-cache without xbzrle, and what went over multifd (nothing).
      xbzrle: null,
      multifdBytes: 0,
    });
  });

  it("carries QEMU's xbzrle-cache figures while xbzrle is on, and none that are not numbers", () => {
    const x = { 'cache-size': 33554432, bytes: 1200, pages: 30, 'cache-miss': 4, 'cache-miss-rate': 0.25, 'encoding-rate': 3.5, overflow: 1 };
    expect(sampleFromInfo({ ...AFTER_PASS_2, 'xbzrle-cache': x }, 1)?.xbzrle).toEqual({ bytes: 1200, cacheMissRate: 0.25, encodingRate: 3.5, overflow: 1, cacheSize: 33554432 });
    expect(sampleFromInfo({ ...AFTER_PASS_2, 'xbzrle-cache': { ...x, bytes: 'lots' as unknown as number } }, 1)?.xbzrle).toBeNull();
  });

  it('reports an absent expected-downtime and an absent throttle as null, not 0', () => {
    const s = sampleFromInfo(COMPLETED, 2554);
    expect(s?.expectedDowntimeMs).toBeNull();
    expect(s?.cpuThrottlePercent).toBeNull();
    expect(s?.status).toBe('completed');
    expect(s?.remainingBytes).toBe(0);
  });

  it('uses the page size QEMU reports (e.g. 64 KiB pages on some hosts)', () => {
    const info: MigrationInfo = { status: 'active', ram: ram({ 'page-size': 65536, 'dirty-pages-rate': 100, 'dirty-sync-count': 2 }) };
    expect(sampleFromInfo(info, 0)?.dirtyRateBps).toBe(6553600);
  });

  it('reports every counter QEMU left out as null (unknown), never as a measured-looking 0', () => {
    const s = sampleFromInfo({ status: 'active', ram: {} as MigrationStats }, 10);
    expect(s).toEqual({
      atMs: 10, status: 'active', transferredBytes: null, remainingBytes: null, totalBytes: null, dirtyRateBps: null,
      throughputBps: null, expectedDowntimeMs: null, cpuThrottlePercent: null, pass: null, xbzrle: null, multifdBytes: null,
    });
    // A counter that is not a number (QMP answers are cast, not validated) is unknown too.
    const odd = sampleFromInfo({ status: 'active', ram: { ...ram({}), transferred: 'x' as unknown as number, mbps: Number.NaN } }, 0);
    expect(odd?.transferredBytes).toBeNull();
    expect(odd?.throughputBps).toBeNull();
    expect(odd?.remainingBytes).toBe(TOTAL); // the rest as reported
  });

  it('leaves the dirty rate unknown without a page size, rather than guessing one', () => {
    const { 'page-size': _omitted, ...noPageSize } = ram({ 'dirty-pages-rate': 100, 'dirty-sync-count': 2 });
    expect(sampleFromInfo({ status: 'active', ram: noPageSize as MigrationStats }, 0)?.dirtyRateBps).toBeNull();
    // A real 0 from QEMU, measured at a sync after the first, stays 0: an idle guest.
    expect(sampleFromInfo({ status: 'active', ram: ram({ 'dirty-pages-rate': 0, 'dirty-sync-count': 2 }) }, 0)?.dirtyRateBps).toBe(0);
  });

  it('leaves the dirty rate unknown during the first pass: QEMU has measured none before its second sync', () => {
    // QEMU 7.2 and 10 both say 0 then, whatever the guest does (seen: "not dirtying memory" in the
    // UI for a guest writing 20 MB/s).
    expect(sampleFromInfo({ status: 'active', ram: ram({ 'dirty-pages-rate': 0, 'dirty-sync-count': 1 }) }, 0)?.dirtyRateBps).toBeNull();
    const { 'dirty-sync-count': _none, ...noSyncCount } = ram({ 'dirty-pages-rate': 0 });
    expect(sampleFromInfo({ status: 'active', ram: noSyncCount as MigrationStats }, 0)?.dirtyRateBps).toBeNull();
  });

  it('returns null without ram stats (setup) or without a status (never migrated)', () => {
    expect(sampleFromInfo(SETUP, 0)).toBeNull();
    expect(sampleFromInfo({}, 0)).toBeNull();
    expect(sampleFromInfo({ ram: AFTER_PASS_1.ram }, 0)).toBeNull();
  });
});

describe('PassTracker', () => {
  it('builds each pass from the query-migrate answers at its start and end', () => {
    const t = new PassTracker();
    expect(t.current).toBeNull();
    // QEMU emits pass 1 from its setup, before query-migrate has ram stats.
    expect(t.onPass(1, 0, SETUP)).toBeNull();
    expect(t.current).toBe(1);

    const p1 = t.onPass(2, 2100, AFTER_PASS_1);
    expect(p1).toEqual({
      pass: 1,
      startMs: 0,
      durationMs: 2100,
      bytes: 67553280,
      normalPages: 16384,
      zeroPages: 49152,
      dirtyRateBps: 10485760,
      throughputBps: 67553280 / 2.1,
    });
    expect(t.current).toBe(2);

    const p2 = t.onPass(3, 2400, AFTER_PASS_2);
    expect(p2).toMatchObject({ pass: 2, startMs: 2100, durationMs: 300, bytes: 10649960, normalPages: 2600, zeroPages: 40 });
    expect(p2?.throughputBps).toBeCloseTo(10649960 / 0.3, 3);
    // 300 ms is too short for QEMU to update dirty-pages-rate (it still shows an older period's):
    // the dirty set found by the sync that ended the pass, over its duration, is the pass's rate.
    expect(p2?.dirtyRateBps).toBeCloseTo(1228800 / 0.3, 3);

    // The final pass (QEMU's sync with the guest paused) ends at completion.
    const p3 = t.finish(2554, COMPLETED);
    expect(p3).toMatchObject({ pass: 3, startMs: 2400, durationMs: 154, bytes: 1228800, normalPages: 300, zeroPages: 0 });
    expect(p3?.dirtyRateBps).toBe(0); // the guest was paused: nothing left dirty
    // a pass of a few ms (back-to-back syncs at the switchover) keeps QEMU's own figure
    const quick = new PassTracker();
    quick.onPass(1, 0, SETUP);
    expect(quick.onPass(2, 5, AFTER_PASS_2)?.dirtyRateBps).toBe(2500 * 4096);
    expect(t.current).toBeNull();

    expect(t.passes.map((p) => p.pass)).toEqual([1, 2, 3]);
    // Every byte lands in exactly one pass.
    expect(t.passes.reduce((sum, p) => sum + (p.bytes ?? Number.NaN), 0)).toBe(79432040);
  });

  it('ignores duplicated and out-of-order events', () => {
    const t = new PassTracker();
    t.onPass(1, 0, SETUP);
    expect(t.onPass(1, 50, AFTER_PASS_1)).toBeNull(); // duplicate
    const p1 = t.onPass(2, 2100, AFTER_PASS_1);
    expect(p1?.pass).toBe(1);
    expect(t.onPass(2, 2150, AFTER_PASS_2)).toBeNull(); // duplicate, later
    expect(t.onPass(1, 2200, AFTER_PASS_2)).toBeNull(); // stale
    expect(t.current).toBe(2);
    const p2 = t.onPass(3, 2400, AFTER_PASS_2);
    // Measured from pass 2's real start, not from the ignored events.
    expect(p2).toMatchObject({ pass: 2, startMs: 2100, durationMs: 300, bytes: 10649960 });
    expect(t.passes).toHaveLength(2);
  });

  it('accepts a gap in pass numbers (a lost event): the open pass runs to the next one seen', () => {
    const t = new PassTracker();
    t.onPass(1, 0, SETUP);
    const p = t.onPass(3, 2400, AFTER_PASS_2);
    expect(p).toMatchObject({ pass: 1, durationMs: 2400, bytes: 78203240, normalPages: 18984 });
    expect(t.current).toBe(3);
  });

  it('reports null (unknown), not 0, for a pass whose start or end answer is missing', () => {
    const t = new PassTracker();
    t.onPass(1, 0, null); // the query failed
    const p1 = t.onPass(2, 2100, AFTER_PASS_1);
    expect(p1).toMatchObject({ pass: 1, durationMs: 2100, bytes: null, normalPages: null, zeroPages: null, throughputBps: null });
    // The end answer is still good for the dirty rate of the pass that just ended.
    expect(p1?.dirtyRateBps).toBe(10485760);

    const p2 = t.onPass(3, 2400, null);
    expect(p2).toMatchObject({ pass: 2, durationMs: 300, bytes: null, dirtyRateBps: null, throughputBps: null });

    // Pass 3 started without an answer: nothing to subtract from.
    const p3 = t.finish(2554, COMPLETED);
    expect(p3).toMatchObject({ pass: 3, bytes: null, normalPages: null, zeroPages: null, throughputBps: null });
  });

  it('handles a pass event before any answer at all', () => {
    const t = new PassTracker();
    expect(t.onPass(4, 1000, null)).toBeNull();
    expect(t.current).toBe(4);
    expect(t.passes).toEqual([]);
    expect(t.finish(1500, null)).toMatchObject({ pass: 4, startMs: 1000, durationMs: 500, bytes: null, dirtyRateBps: null, throughputBps: null });
  });

  it('does not count an answer with neither ram stats nor setup status as zero', () => {
    const t = new PassTracker();
    t.onPass(1, 0, { status: 'active' });
    expect(t.onPass(2, 2100, AFTER_PASS_1)?.bytes).toBeNull();
  });

  it('reports counters that go backwards (a restarted migration) as unknown, not as 0', () => {
    const t = new PassTracker();
    t.onPass(2, 2100, AFTER_PASS_2);
    const p = t.onPass(3, 2400, AFTER_PASS_1); // counters lower than at the start
    expect(p).toMatchObject({ bytes: null, normalPages: null, zeroPages: null, throughputBps: null });
  });

  it('clamps a clock that goes backwards and has no throughput for a zero-length pass', () => {
    const t = new PassTracker();
    t.onPass(1, 500, SETUP);
    const p = t.onPass(2, 400, AFTER_PASS_1);
    expect(p).toMatchObject({ durationMs: 0, bytes: 67553280, throughputBps: null });
  });

  it('keeps one counter QEMU left out unknown while the others of the pass are measured', () => {
    const t = new PassTracker();
    t.onPass(1, 0, SETUP);
    const { normal: _omitted, ...noNormal } = AFTER_PASS_1.ram!;
    const p = t.onPass(2, 2100, { ...AFTER_PASS_1, ram: noNormal as MigrationStats });
    expect(p).toMatchObject({ bytes: 67553280, normalPages: null, zeroPages: 49152 });
  });

  it('finishes once, ignores events after finishing, and finishes cleanly with no pass open', () => {
    const empty = new PassTracker();
    expect(empty.finish(100, COMPLETED)).toBeNull();
    expect(empty.passes).toEqual([]);

    const t = new PassTracker();
    t.onPass(1, 0, SETUP);
    expect(t.finish(2554, COMPLETED)?.pass).toBe(1);
    expect(t.finish(2600, COMPLETED)).toBeNull();
    expect(t.onPass(2, 2700, COMPLETED)).toBeNull(); // a late event
    expect(t.current).toBeNull();
    expect(t.passes).toHaveLength(1);
  });

  it('hands out a copy of its passes', () => {
    const t = new PassTracker();
    t.onPass(1, 0, SETUP);
    t.onPass(2, 2100, AFTER_PASS_1);
    t.passes.pop();
    expect(t.passes).toHaveLength(1);
  });
});

describe('SampleRing', () => {
  it('starts empty', () => {
    const r = new SampleRing();
    expect(r.capacity).toBe(6000);
    expect(r.length).toBe(0);
    expect(r.last).toBeNull();
    expect(r.toArray()).toEqual([]);
  });

  it('keeps order below capacity', () => {
    const r = new SampleRing(4);
    [1, 2, 3].forEach((i) => r.push(sample(i)));
    expect(r.length).toBe(3);
    expect(r.toArray().map((s) => s.atMs)).toEqual([100, 200, 300]);
    expect(r.last?.atMs).toBe(300);
  });

  it('wraps, dropping the oldest, oldest first', () => {
    const r = new SampleRing(3);
    for (let i = 1; i <= 5; i++) r.push(sample(i));
    expect(r.length).toBe(3);
    expect(r.toArray().map((s) => s.atMs)).toEqual([300, 400, 500]);
    expect(r.last?.atMs).toBe(500);
    r.push(sample(6));
    r.push(sample(7));
    r.push(sample(8)); // exactly one more full turn
    expect(r.toArray().map((s) => s.atMs)).toEqual([600, 700, 800]);
  });

  it('keeps only the latest 6000 of a long migration', () => {
    const r = new SampleRing();
    for (let i = 1; i <= 15000; i++) r.push(sample(i));
    expect(r.length).toBe(6000);
    const all = r.toArray();
    expect(all).toHaveLength(6000);
    expect(all[0]?.atMs).toBe(9001 * 100);
    expect(r.last?.atMs).toBe(15000 * 100);
  });

  it('clears', () => {
    const r = new SampleRing(2);
    r.push(sample(1));
    r.push(sample(2));
    r.push(sample(3));
    r.clear();
    expect(r.length).toBe(0);
    expect(r.last).toBeNull();
    r.push(sample(4));
    expect(r.toArray().map((s) => s.atMs)).toEqual([400]);
  });

  it('rejects a capacity that is not a positive integer', () => {
    expect(() => new SampleRing(0)).toThrow(RangeError);
    expect(() => new SampleRing(-1)).toThrow(RangeError);
    expect(() => new SampleRing(2.5)).toThrow(RangeError);
  });
});
