import { describe, expect, it } from 'vitest';
import { QmpCommandError, QmpDisconnectedError, type QmpCommandOptions } from '../../electron/engine/qmp';
import type { GuestQmp } from '../../electron/engine/hosts/host';
import {
  DIRTY_RATE_SOURCE,
  DirtyRateError,
  dirtyRateVerdict,
  measureDirtyRate,
  type DirtyRateVerdictInput,
} from '../../electron/engine/migration/dirty-rate';
import { ADVICE_PASSES, MAX_PASSES } from '../../electron/engine/migration/prediction';

const MiB = 1024 * 1024;

/**
 * A QEMU's dirty-rate commands as QEMU 7.2 and 10.0.2 behave (checked against both on this
 * machine): 7.2 refuses calc-time-unit by name and measures whole seconds; "measured" after
 * calc-time; the answer can be tampered with by `answer`.
 */
class DirtyRateQemu {
  readonly calls: Array<{ cmd: string; args: Record<string, unknown> | undefined }> = [];
  private state: Record<string, unknown> = { status: 'unstarted', 'sample-pages': 0, mode: 'page-sampling', 'start-time': 0, 'calc-time': 0 };
  private doneAt = 0;
  constructor(
    private readonly version: 7 | 10,
    private readonly rateMiBps: number,
    private readonly answer: (a: Record<string, unknown>) => unknown = (a) => a,
    private readonly refuse?: (cmd: string) => Error | undefined,
  ) {}

  execute = async <T = unknown>(cmd: string, args?: Record<string, unknown>, _opts?: QmpCommandOptions): Promise<T> => {
    this.calls.push({ cmd, args });
    const err = this.refuse?.(cmd);
    if (err) throw err;
    if (this.version === 7 && args?.['calc-time-unit'] !== undefined) {
      throw new QmpCommandError(cmd, args, 'GenericError', "Parameter 'calc-time-unit' is unexpected");
    }
    if (cmd === 'calc-dirty-rate') {
      const ms = args!['calc-time-unit'] === 'millisecond' ? (args!['calc-time'] as number) : (args!['calc-time'] as number) * 1000;
      this.state = { status: 'unstarted', 'sample-pages': args!['sample-pages'] ?? 512, mode: 'page-sampling', 'start-time': 33326, 'calc-time': ms };
      this.doneAt = performance.now() + ms;
      return {} as T;
    }
    if (cmd === 'query-dirty-rate') {
      const ms = this.state['calc-time'] as number;
      const measured = performance.now() >= this.doneAt;
      const unit = (args?.['calc-time-unit'] as string | undefined) ?? 'second';
      const a: Record<string, unknown> = {
        ...this.state,
        status: measured ? 'measured' : 'measuring',
        'calc-time': unit === 'millisecond' ? ms : Math.floor(ms / 1000),
        ...(this.version === 10 ? { 'calc-time-unit': unit } : {}),
        ...(measured ? { 'dirty-rate': this.rateMiBps } : {}),
      };
      return this.answer(a) as T;
    }
    throw new Error(`unexpected ${cmd}`);
  };

  guest(): { name: string; qmp: GuestQmp } {
    return { name: 'g1', qmp: this as unknown as GuestQmp };
  }
}

describe('measureDirtyRate', () => {
  it('QEMU 10: measures in milliseconds and returns the rate in bytes/s (QEMU\'s MB/s is MiB/s)', async () => {
    const q = new DirtyRateQemu(10, 48);
    const m = await measureDirtyRate(q.guest(), { ms: 120, pollMs: 10 });
    expect(m).toEqual({ dirtyRateBps: 48 * MiB, calcTimeMs: 120, source: DIRTY_RATE_SOURCE });
    expect(q.calls[0]).toEqual({ cmd: 'calc-dirty-rate', args: { 'calc-time': 120, 'calc-time-unit': 'millisecond', 'sample-pages': 1024 } });
    expect(q.calls.slice(1).every((c) => c.cmd === 'query-dirty-rate' && c.args?.['calc-time-unit'] === 'millisecond')).toBe(true);
  });

  it('QEMU 7.2: falls back to whole seconds, rounded up, when calc-time-unit is refused', async () => {
    const q = new DirtyRateQemu(7, 3);
    const t0 = performance.now();
    const m = await measureDirtyRate(q.guest(), { ms: 300, pollMs: 10 });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(990);
    expect(m).toEqual({ dirtyRateBps: 3 * MiB, calcTimeMs: 1000, source: DIRTY_RATE_SOURCE });
    expect(q.calls.slice(0, 2).map((c) => c.args)).toEqual([
      { 'calc-time': 300, 'calc-time-unit': 'millisecond', 'sample-pages': 1024 },
      { 'calc-time': 1, 'sample-pages': 1024 },
    ]);
    expect(q.calls.slice(2).every((c) => c.cmd === 'query-dirty-rate' && c.args === undefined)).toBe(true);
  });

  it.each([49, 60_001, 1.5, Number.NaN])('refuses a measuring time of %s ms, naming the range, before asking QEMU', async (ms) => {
    const q = new DirtyRateQemu(10, 1);
    await expect(measureDirtyRate(q.guest(), { ms })).rejects.toThrow(/over 50 ms to 60 s, in whole ms; got .*: pick a time in that range/);
    expect(q.calls).toEqual([]);
  });

  it('a refusal names QEMU\'s own words', async () => {
    const busy = new DirtyRateQemu(10, 1, undefined, (cmd) =>
      cmd === 'calc-dirty-rate' ? new QmpCommandError(cmd, {}, 'GenericError', 'the dirty rate is already being measured.') : undefined);
    await expect(measureDirtyRate(busy.guest(), { ms: 100 })).rejects.toThrow(
      new DirtyRateError('g1\'s QEMU would not measure the dirty rate: "the dirty rate is already being measured.".'));
    const gone = new DirtyRateQemu(10, 1, undefined, (cmd) => new QmpDisconnectedError('QMP connection closed', { command: cmd }));
    await expect(measureDirtyRate(gone.guest(), { ms: 100 })).rejects.toThrow(/g1's QEMU could not be asked to measure the dirty rate: QMP connection closed/);
  });

  it('QEMU that measured nothing (dirty-rate -1) is an error naming that answer', async () => {
    const q = new DirtyRateQemu(10, -1);
    await expect(measureDirtyRate(q.guest(), { ms: 60, pollMs: 10 })).rejects.toThrow(/finished measuring but gave no dirty rate \(dirty-rate -1\): it found no guest RAM/);
  });

  it('gives up, bounded, when QEMU never finishes, with its last answer', async () => {
    const q = new DirtyRateQemu(10, 5, (a) => ({ ...a, status: 'measuring', 'dirty-rate': undefined }));
    const t0 = performance.now();
    await expect(measureDirtyRate(q.guest(), { ms: 60, pollMs: 10, graceMs: 150 })).rejects.toThrow(
      /had not finished measuring the dirty rate 210 ms after it started \(a 60 ms measurement\); its last answer: status "measuring", mode page-sampling\./);
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  it('refuses an answer for another measurement, and a hostile answer', async () => {
    const other = new DirtyRateQemu(10, 5, (a) => ({ ...a, 'sample-pages': 512 }));
    await expect(measureDirtyRate(other.guest(), { ms: 60, pollMs: 10 })).rejects.toThrow(/answered for another measurement than MigLab's \(page-sampling, 1024 pages per GiB\)/);
    const hostile = new DirtyRateQemu(10, 5, (a) => ({ ...a, 'dirty-rate': 'lots' }));
    await expect(measureDirtyRate(hostile.guest(), { ms: 60, pollMs: 10 })).rejects.toThrow(/did not say how the dirty-rate measurement went: QEMU's answer to query-dirty-rate does not match its schema: dirty-rate/);
  });
});

describe('dirtyRateVerdict', () => {
  const lab: DirtyRateVerdictInput = { bandwidthBps: 125e6, downtimeLimitMs: 300, ramBytes: 256 * MiB };

  it('an idle guest converges in one pass: every figure says where it came from', () => {
    const v = dirtyRateVerdict(0, lab);
    expect(v).toEqual({
      converges: true,
      sentence:
        "The guest dirties 0.0 MB/s (measured by QEMU); the migration sends 125.0 MB/s (the migration's max-bandwidth). " +
        'Pre-copy will converge: the guest dirtied nothing while QEMU watched; about 1 pass brings the 268.4 MB of RAM (the guest\'s memory size) ' +
        'under 37.5 MB (computed: 125.0 MB/s x the 300 ms downtime limit), about 2.1 s in all (computed with MigLab\'s pre-copy model).',
      helps: [],
    });
  });

  it('a slow dirtier converges, with the share each pass leaves computed', () => {
    const v = dirtyRateVerdict(25e6, { ...lab, rateFrom: 'measured by QEMU over 1000 ms', bandwidthFrom: 'the link' });
    expect(v.converges).toBe(true);
    expect(v.sentence).toMatch(/^The guest dirties 25\.0 MB\/s \(measured by QEMU over 1000 ms\); the migration sends 125\.0 MB\/s \(the link\)\. Pre-copy will converge: each pass leaves about 20% of the last to send \(computed: dirty rate \/ bandwidth\); about 2 passes bring/);
    expect(v.helps).toEqual([]);
  });

  it('a working set that fits the final copy converges whatever the rate', () => {
    const v = dirtyRateVerdict(500e6, { ...lab, workingSetBytes: 16 * MiB });
    expect(v.converges).toBe(true);
    expect(v.sentence).toMatch(/its 16\.8 MB working set \(as set\) fits in the final copy of 37\.5 MB/);
  });

  it('a guest dirtying faster than the link does not converge: the helps name each strategy, with figures', () => {
    const v = dirtyRateVerdict(50 * MiB, { ...lab, bandwidthBps: 20e6, workingSetBytes: 64 * MiB });
    expect(v.converges).toBe(false);
    expect(v.sentence).toMatch(/Pre-copy will not converge: the guest dirties at least as fast as the migration sends, so each pass leaves its whole 67\.1 MB working set \(as set\) to send again, more than 6\.0 MB \(computed: 20\.0 MB\/s x the 300 ms downtime limit\)\.$/);
    expect(v.helps.map((h) => h.split(':')[0])).toEqual(['A higher bandwidth', 'auto-converge', 'xbzrle', 'multifd', 'post-copy']);
    const need = Number(/at least ([\d.]+) MB\/s/.exec(v.helps[0]!)![1]) * 1e6;
    // The figure offered converges within ADVICE_PASSES; one MB/s less does not.
    expect(dirtyRateVerdict(50 * MiB, { ...lab, bandwidthBps: need, workingSetBytes: 64 * MiB }).converges).toBe(true);
    expect(dirtyRateVerdict(50 * MiB, { ...lab, bandwidthBps: need, workingSetBytes: 64 * MiB }).helps).toEqual([]);
    expect(dirtyRateVerdict(50 * MiB, { ...lab, bandwidthBps: need - 1e6, workingSetBytes: 64 * MiB }).helps).not.toEqual([]);
    expect(v.helps[2]).toMatch(/must hold the 67\.1 MB working set/);
    // MigLab's own refusal is named where it refuses (post-copy today).
    expect(v.helps[4]).toMatch(/MigLab will not switch it on: post-copy is not a MigLab strategy yet/);
  });

  it('below the link but too close to it: more passes than QEMU would make, so no', () => {
    const v = dirtyRateVerdict(118e6, { ...lab, bandwidthBps: 120e6, downtimeLimitMs: 50 });
    expect(v.converges).toBe(false);
    expect(v.sentence).toMatch(new RegExp(`each pass leaves about 98% of the last to send .* would take more than ${MAX_PASSES} passes`));
  });

  it('converging slowly (past the advice horizon) still says what would help', () => {
    const v = dirtyRateVerdict(50 * MiB, { ...lab, bandwidthBps: 60e6, downtimeLimitMs: 100 });
    expect(v.converges).toBe(true);
    expect(v.sentence).toMatch(/Pre-copy will converge, slowly: .* about \d+ passes bring/);
    expect(Number(/about (\d+) passes bring/.exec(v.sentence)![1])).toBeGreaterThan(ADVICE_PASSES);
    expect(v.helps[0]).toMatch(/^A higher bandwidth: at least \d+\.0 MB\/s/);
  });

  it.each([
    [Number.NaN, lab, /the dirty rate \(NaN\) is not a number of bytes per second >= 0: measure it first/],
    [-1, lab, /the dirty rate \(-1\)/],
    [1e6, { ...lab, bandwidthBps: 0 }, /the bandwidth \(0\) is not a number of bytes per second > 0: give the migration's max-bandwidth/],
    [1e6, { ...lab, downtimeLimitMs: Number.POSITIVE_INFINITY }, /the downtime limit \(Infinity\)/],
    [1e6, { ...lab, ramBytes: 0 }, /the guest's RAM \(0\)/],
    [1e6, { ...lab, workingSetBytes: -5 }, /the working set \(-5\) .* leave it out when unknown/],
  ])('no verdict for unusable figures, naming which: rate %s', (rate, input, message) => {
    const v = dirtyRateVerdict(rate, input);
    expect(v.converges).toBeNull();
    expect(v.helps).toEqual([]);
    expect(v.sentence).toMatch(/^No verdict: /);
    expect(v.sentence).toMatch(message);
  });
});
