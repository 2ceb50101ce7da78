import { describe, expect, it } from 'vitest';
import { DOWNTIME_POLICIES, DowntimePolicy, STALL_PASSES } from '../../electron/engine/migration/downtime-policy';
import { parseMigrationOptions } from '../../electron/engine/migration/limits';

const MiB = 2 ** 20;

/** Feeds passes 1.. with what remained at each boundary; returns the actions that were not 'hold'. */
function run(policy: DowntimePolicy, remaining: (number | null)[]) {
  return remaining.flatMap((r, i) => {
    const a = policy.onPass(i + 1, r);
    return a.kind === 'hold' ? [] : [{ pass: i + 1, kind: a.kind, limit: a.step.downtimeLimitMs }];
  });
}

describe('the downtime policy', () => {
  it('starts low by default (ramp, 100 ms), and keeps a limit the user gave (fixed)', () => {
    expect(new DowntimePolicy(null, { downtimeLimitMs: 300, downtimeLimitGiven: false })).toMatchObject({ name: 'ramp', startMs: 100 });
    expect(new DowntimePolicy(null, { downtimeLimitMs: 250, downtimeLimitGiven: true })).toMatchObject({ name: 'fixed', startMs: 250 });
    // A policy asked for with a limit starts from that limit.
    expect(new DowntimePolicy('proxmox', { downtimeLimitMs: 40, downtimeLimitGiven: true })).toMatchObject({ name: 'proxmox', startMs: 40 });
    expect(new DowntimePolicy('nova', { downtimeLimitMs: 300, downtimeLimitGiven: false }).startMs).toBe(50);
  });

  it('holds while what remains keeps shrinking, whatever the limit', () => {
    const p = new DowntimePolicy('ramp', { downtimeLimitMs: 300, downtimeLimitGiven: false });
    expect(run(p, [256 * MiB, 64 * MiB, 40 * MiB, 30 * MiB, 20 * MiB, 12 * MiB, 8 * MiB])).toEqual([]);
    expect(p.report().steps).toEqual([]);
  });

  it("ramps as oVirt does on a stalled guest, then ends it as not-converged", () => {
    const p = new DowntimePolicy('ramp', { downtimeLimitMs: 300, downtimeLimitGiven: false });
    // Pass 1 sends all of RAM; from pass 2 the working set (32 MiB) is all dirty again each pass.
    const acts = run(p, [256 * MiB, ...Array(14).fill(32 * MiB)]);
    expect(acts).toEqual([
      { pass: 4, kind: 'raise', limit: 150 },
      { pass: 6, kind: 'raise', limit: 200 },
      { pass: 8, kind: 'raise', limit: 300 },
      { pass: 10, kind: 'raise', limit: 400 },
      { pass: 12, kind: 'raise', limit: 500 },
      { pass: 14, kind: 'end', limit: 500 },
    ]);
    const end = p.report().steps.at(-1)!;
    expect(end.why).toMatch(/^2 passes without what remains shrinking by 5 % \(32\.0 MiB left at pass 14\), already at the policy's last limit of 500 ms/);
    expect(p.report()).toMatchObject({ name: 'ramp', startMs: 100, description: DOWNTIME_POLICIES.ramp.description });
  });

  it('counts small wobbles as no progress, and a real drop as progress that resets the stall', () => {
    const p = new DowntimePolicy('ramp', { downtimeLimitMs: 300, downtimeLimitGiven: false });
    // 3 % less is noise; 20 % less is progress.
    expect(run(p, [256 * MiB, 100 * MiB, 97 * MiB, 80 * MiB, 79 * MiB])).toEqual([]);
    expect(p.onPass(6, 80 * MiB)).toMatchObject({ kind: 'raise', step: { downtimeLimitMs: 150, pass: 6 } });
  });

  it('doubles as Proxmox does, up to 2000 ms, then ends', () => {
    const p = new DowntimePolicy('proxmox', { downtimeLimitMs: 300, downtimeLimitGiven: false });
    const limits = run(p, [256 * MiB, ...Array(2 + STALL_PASSES * 6).fill(10 * MiB)]).map((a) => `${a.kind} ${a.limit}`);
    expect(limits).toEqual(['raise 200', 'raise 400', 'raise 800', 'raise 1600', 'end 1600']);
  });

  it('never acts when fixed, after a change by hand, or without figures from QEMU', () => {
    const fixed = new DowntimePolicy('fixed', { downtimeLimitMs: 300, downtimeLimitGiven: false });
    expect(run(fixed, [256 * MiB, ...Array(20).fill(32 * MiB)])).toEqual([]);
    const byHand = new DowntimePolicy('ramp', { downtimeLimitMs: 300, downtimeLimitGiven: false });
    byHand.override(700);
    expect(run(byHand, [256 * MiB, ...Array(20).fill(32 * MiB)])).toEqual([]);
    expect(byHand.report().description).toMatch(/until the limit was changed by hand/);
    const blind = new DowntimePolicy('ramp', { downtimeLimitMs: 300, downtimeLimitGiven: false });
    expect(run(blind, Array(20).fill(null))).toEqual([]);
  });

  it('is checked as an option, naming the policies', () => {
    expect(parseMigrationOptions({ downtimePolicy: 'nova' }).downtimePolicy).toBe('nova');
    expect(() => parseMigrationOptions({ downtimePolicy: 'fast' as never })).toThrow('downtimePolicy: the downtime policy is one of ramp, proxmox, nova, fixed');
  });
});

describe('the downtime policy beside another remedy', () => {
  it('does not give up while a strategy still acts (auto-converge tightening), and does once it has done its most', () => {
    const p = new DowntimePolicy('ramp', { downtimeLimitMs: 300, downtimeLimitGiven: false });
    const stuck = [256 * MiB, ...Array(11).fill(32 * MiB)];
    run(p, stuck); // raised to 500 ms by pass 12
    expect(p.onPass(13, 32 * MiB, { stillActing: true })).toEqual({ kind: 'hold' });
    expect(p.onPass(14, 32 * MiB, { stillActing: true })).toEqual({ kind: 'hold' });
    expect(p.onPass(15, 32 * MiB, { stillActing: false })).toEqual({ kind: 'hold' });
    expect(p.onPass(16, 32 * MiB, { stillActing: false })).toMatchObject({ kind: 'end', step: { pass: 16, downtimeLimitMs: 500 } });
  });
});
