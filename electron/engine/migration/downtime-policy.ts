// How downtime-limit moves while a migration cannot converge. QEMU switches over as soon as what
// remains fits in downtime-limit at the measured bandwidth, so a low limit gives a short pause when
// the guest allows it, and a policy raises the limit only when passes stop making progress: the
// presets follow the systems users know. A stall that the last step does not cure ends the
// migration (not-converged) instead of copying for ever.
import type { DowntimePolicyName, DowntimePolicyReport, DowntimeStep } from './types';

interface PolicyDefinition {
  /** The limit it starts with; null: the options' downtimeLimitMs. */
  startMs: number | null;
  description: string;
  /** The next limit after a stall at `currentMs`; 'end' when there is none; 'hold' never acts. */
  next(currentMs: number): number | 'end' | 'hold';
}

/** oVirt's steps (its "migration_downtime" convergence schedule, per stalled iteration). */
const OVIRT_STEPS = [100, 150, 200, 300, 400, 500];
/** Proxmox doubles without a cap; MigLab stops there and ends the migration. */
const PROXMOX_CAP_MS = 2000;
/** Nova: live_migration_downtime 500 ms reached in live_migration_downtime_steps (10). */
const NOVA_MAX_MS = 500;
const NOVA_STEPS = 10;

export const DOWNTIME_POLICIES: Readonly<Record<DowntimePolicyName, PolicyDefinition>> = {
  ramp: {
    startMs: OVIRT_STEPS[0]!,
    description: `oVirt's ramp: starts at 100 ms; each stall raises the limit (${OVIRT_STEPS.join(' → ')} ms); a stall at ${OVIRT_STEPS.at(-1)} ms ends the migration as not-converged`,
    next: (cur) => OVIRT_STEPS.find((s) => s > cur) ?? 'end',
  },
  proxmox: {
    startMs: 100,
    description: `Proxmox's way: starts at 100 ms and doubles the limit at each stall; Proxmox would go on doubling, MigLab ends the migration as not-converged past ${PROXMOX_CAP_MS} ms`,
    next: (cur) => (cur * 2 <= PROXMOX_CAP_MS ? cur * 2 : 'end'),
  },
  nova: {
    startMs: NOVA_MAX_MS / NOVA_STEPS,
    description: `Nova's ramp: ${NOVA_STEPS} steps of ${NOVA_MAX_MS / NOVA_STEPS} ms up to ${NOVA_MAX_MS} ms (Nova steps by elapsed time, MigLab at each stall); a stall at ${NOVA_MAX_MS} ms ends the migration as not-converged`,
    next: (cur) => (cur < NOVA_MAX_MS ? Math.min(NOVA_MAX_MS, cur + NOVA_MAX_MS / NOVA_STEPS) : 'end'),
  },
  fixed: {
    startMs: null,
    description: "QEMU's way: the limit stays as set and nothing but the time limit ends the migration",
    next: () => 'hold',
  },
};

export const DOWNTIME_POLICY_NAMES = Object.keys(DOWNTIME_POLICIES) as DowntimePolicyName[];

/** What remained must shrink by this share since the best pass boundary to count as progress. */
export const PROGRESS_SHARE = 0.05;
/** Passes in a row without progress that make a stall. */
export const STALL_PASSES = 2;

/** What the policy wants after a pass boundary. */
export type PolicyAction = { kind: 'hold' } | { kind: 'raise'; step: DowntimeStep } | { kind: 'end'; step: DowntimeStep };

/**
 * The policy of one migration: fed what remained at each pass boundary (QEMU's MIGRATION_PASS,
 * then ram.remaining), it says when to raise the limit and when to give up.
 */
export class DowntimePolicy {
  readonly name: DowntimePolicyName;
  readonly startMs: number;
  private limitMs: number;
  private best: number | null = null;
  private stalled = 0;
  private readonly steps: DowntimeStep[] = [];
  private overridden = false;
  /** It has said 'end' once: the job is ending, nothing more to decide. */
  private ended = false;

  constructor(name: DowntimePolicyName | null, opts: { downtimeLimitMs: number; downtimeLimitGiven: boolean }) {
    // A limit the user chose is kept unless a policy was asked for too.
    this.name = name ?? (opts.downtimeLimitGiven ? 'fixed' : 'ramp');
    const def = DOWNTIME_POLICIES[this.name];
    this.startMs = opts.downtimeLimitGiven || def.startMs === null ? opts.downtimeLimitMs : def.startMs;
    this.limitMs = this.startMs;
  }

  /** A person changed the limit by hand: from now on the policy neither raises nor ends. */
  override(limitMs: number): void {
    this.limitMs = limitMs;
    this.overridden = true;
  }

  /**
   * At the start of `pass` (QEMU's count; pass 1 sends all of RAM), with what remains to send.
   * Passes from 2 on are compared: a new low by PROGRESS_SHARE is progress; STALL_PASSES
   * without it are a stall, which the policy answers with its next limit or with the end;
   * `stillActing` (a strategy that is still tightening, like auto-converge's throttle below its
   * maximum) puts the end off by another stall window.
   */
  onPass(pass: number, remainingBytes: number | null, opts: { stillActing?: boolean } = {}): PolicyAction {
    if (this.overridden || this.ended || pass < 2 || remainingBytes === null) return { kind: 'hold' };
    if (this.best === null || remainingBytes < this.best * (1 - PROGRESS_SHARE)) {
      this.best = this.best === null ? remainingBytes : Math.min(this.best, remainingBytes);
      this.stalled = 0;
      return { kind: 'hold' };
    }
    this.best = Math.min(this.best, remainingBytes);
    if (++this.stalled < STALL_PASSES) return { kind: 'hold' };
    const next = DOWNTIME_POLICIES[this.name].next(this.limitMs);
    if (next === 'hold') return { kind: 'hold' };
    this.stalled = 0;
    // Another remedy still at work (auto-converge's throttle still rising): no giving up yet.
    if (next === 'end' && opts.stillActing) return { kind: 'hold' };
    const mib = (remainingBytes / 2 ** 20).toFixed(1);
    const stall = `${STALL_PASSES} passes without what remains shrinking by ${PROGRESS_SHARE * 100} % (${mib} MiB left at pass ${pass})`;
    if (next === 'end') {
      const step: DowntimeStep = {
        pass, action: 'end', downtimeLimitMs: this.limitMs, remainingBytes,
        why: `${stall}, already at the policy's last limit of ${this.limitMs} ms: the guest dirties its memory as fast as the link carries it, so the migration ends and the guest stays on its source`,
      };
      this.steps.push(step);
      this.ended = true;
      return { kind: 'end', step };
    }
    const step: DowntimeStep = { pass, action: 'raise', downtimeLimitMs: next, remainingBytes, why: `${stall}: downtime-limit raised from ${this.limitMs} to ${next} ms` };
    this.limitMs = next;
    this.steps.push(step);
    return { kind: 'raise', step };
  }

  report(): DowntimePolicyReport {
    const def = DOWNTIME_POLICIES[this.name];
    const description = this.overridden ? `${def.description} (until the limit was changed by hand)` : def.description;
    return { name: this.name, description, startMs: this.startMs, steps: [...this.steps] };
  }
}
