// `miglab demo`'s live lines on a terminal that is not a TTY: a figure QEMU did not report reads
// "n/a", never a measured-looking 0.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { liveDisplay } from '../../electron/cli/demo';
import type { MigrationEvent } from '../../electron/engine/migration/types';

const ttyDescriptor = Object.getOwnPropertyDescriptor(process.stderr, 'isTTY');

function linesOf(events: MigrationEvent[]): string[] {
  const out: string[] = [];
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out.push(String(chunk));
    return true;
  });
  Object.defineProperty(process.stderr, 'isTTY', { value: false, configurable: true });
  const live = liveDisplay('test');
  for (const ev of events) live.onEvent(ev);
  return out.join('').split('\n').filter(Boolean);
}

afterEach(() => {
  vi.restoreAllMocks();
  if (ttyDescriptor) Object.defineProperty(process.stderr, 'isTTY', ttyDescriptor);
  else delete (process.stderr as { isTTY?: boolean }).isTTY;
});

describe('liveDisplay', () => {
  it('shows unreported counters as n/a', () => {
    const lines = linesOf([
      {
        type: 'sample', atMs: 1500,
        sample: { atMs: 1500, status: 'active', transferredBytes: null, remainingBytes: null, totalBytes: null, dirtyRateBps: null, throughputBps: null, expectedDowntimeMs: null, cpuThrottlePercent: null, pass: null },
      },
      { type: 'pass', atMs: 2000, pass: { pass: 2, startMs: 1000, durationMs: 1000, bytes: null, normalPages: null, zeroPages: null, dirtyRateBps: null, throughputBps: null } },
    ]);
    expect(lines).toEqual([
      '  pass n/a  n/a sent  remaining n/a  dirty n/a  link n/a  ',
      '  pass 2: n/a in 1.0 s, dirty rate n/a',
    ]);
  });

  it('shows measured figures, a real 0 among them, as measured', () => {
    const lines = linesOf([
      {
        type: 'sample', atMs: 1500,
        sample: { atMs: 1500, status: 'active', transferredBytes: 50e6, remainingBytes: 0, totalBytes: 200e6, dirtyRateBps: 0, throughputBps: 40e6, expectedDowntimeMs: null, cpuThrottlePercent: null, pass: 1 },
      },
    ]);
    expect(lines).toEqual(['  pass 1  25% sent  remaining 0.0 MB  dirty 0.0 MB/s  link 40.0 MB/s  ']);
  });
});
