import { describe, expect, it } from 'vitest';
import { QemuEventClock } from '../../electron/engine/migration/source-watch';

/** An event QEMU stamped at `qemuMs` (its wall clock), that reached the engine `delayMs` later. */
function at(clock: { job: number }, qemuMs: number, receivedJobMs: number) {
  const now = performance.now();
  return {
    timestamp: { seconds: Math.floor(qemuMs / 1000), microseconds: Math.round((qemuMs % 1000) * 1000) },
    // receivedAt is performance.now() at receipt; jobNow() is job time now.
    receivedAt: now - (clock.job - receivedJobMs),
  };
}

describe('QemuEventClock', () => {
  it("places events by QEMU's timestamps, anchored at the first one's arrival", () => {
    const job = { job: 0 };
    const clock = new QemuEventClock(() => job.job);
    const base = 1_796_700_000_000;
    job.job = 1000;
    expect(clock.jobMs(at(job, base, 1000))).toBeCloseTo(1000, 0);
    // The second pass began 250.5 ms later on QEMU's clock, but reached a busy engine 40 ms late.
    job.job = 1290.5;
    expect(clock.jobMs(at(job, base + 250.5, 1290.5))).toBeCloseTo(1250.5, 0);
  });

  it('never places an event after it arrived, nor believes a clock that jumped', () => {
    const job = { job: 500 };
    const clock = new QemuEventClock(() => job.job);
    const base = 1_796_700_000_000;
    clock.jobMs(at(job, base, 500));
    job.job = 600;
    expect(clock.jobMs(at(job, base + 5000, 600))).toBeCloseTo(600, 0); // QEMU's clock ran ahead
    job.job = 700;
    expect(clock.jobMs(at(job, base - 3_600_000, 700))).toBeCloseTo(700 - 10_000, 0); // set back an hour
  });

  it("uses the engine's time for an event without a usable timestamp", () => {
    const job = { job: 42 };
    const clock = new QemuEventClock(() => job.job);
    expect(clock.jobMs({ timestamp: { seconds: -1, microseconds: -1 }, receivedAt: performance.now() })).toBeCloseTo(42, 0);
  });
});
