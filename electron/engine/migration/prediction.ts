// Will this pre-copy converge, and when? A model of QEMU's loop, simple enough to explain in a
// lab: each pass sends what the guest dirtied during the previous one, and QEMU switches over
// once what is left fits in the downtime budget (threshold = bandwidth x downtime-limit).
import type { Prediction } from './types';
import { capabilityRefusal } from './capabilities';
import { formatBytes, formatBytesRate, formatMs } from '../util/format';

export interface PredictionInput {
  remainingBytes: number;
  dirtyRateBps: number;
  /** Measured throughput if known, else the configured max-bandwidth. Bytes/s. */
  bandwidthBps: number;
  downtimeLimitMs: number;
  /** The guest's dirtying working set, when the lab knows it (labload). */
  workingSetBytes?: number;
  capabilitiesOffered: string[];
  capabilitiesOn: string[];
  throttlePercent?: number;
  /**
   * What remained at the last pass boundary after the first pass (what a sync found dirty): within
   * a pass, remaining only shrinks as pages go, so whether the working set is all dirty again is
   * read at the boundary. Absent: the current remaining is used.
   */
  boundaryRemainingBytes?: number;
}

/** Beyond this many passes QEMU would, in practice, go on for ever: call it non-convergent. */
export const MAX_PASSES = 30;

/** Advice aims at a comfortable convergence, not one that scrapes in at pass 30. */
export const ADVICE_PASSES = 10;

/** A downtime limit longer than this is no longer a live migration worth suggesting. */
const MAX_SUGGESTED_DOWNTIME_MS = 10_000;

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 'es'}`;
}

interface Model {
  remaining: number;
  dirty: number;
  bandwidth: number;
  downtimeMs: number;
  /** Infinity when unknown. */
  workingSet: number;
}

type Run =
  | { converges: true; passes: number; etaMs: number }
  | { converges: false; passesNeeded: number };

function thresholdOf(m: Model): number {
  return (m.bandwidth * m.downtimeMs) / 1000;
}

/** Plays QEMU's loop forward: r(n+1) = min(W, r(n) x D/B), until r <= threshold. */
function run(m: Model): Run {
  const t = thresholdOf(m);
  const b = m.bandwidth;
  if (m.remaining <= t) return { converges: true, passes: 0, etaMs: (m.remaining / b) * 1000 };
  // What is left never shrinks: it grows to, and then stays at, the working set.
  if (m.dirty >= b && m.workingSet > t) return { converges: false, passesNeeded: Infinity };
  let r = m.remaining;
  let seconds = 0;
  let n = 0;
  while (r > t) {
    if (n >= MAX_PASSES) {
      // Past the first pass r <= W, so the cap no longer bites: the rest is a geometric series.
      const more = Math.ceil(Math.log(t / r) / Math.log(m.dirty / b));
      return { converges: false, passesNeeded: n + Math.max(1, more) };
    }
    seconds += r / b;
    r = Math.min(m.workingSet, (r * m.dirty) / b);
    n++;
  }
  return { converges: true, passes: n, etaMs: (seconds + r / b) * 1000 };
}

/**
 * The lowest value in (lo, hi] at which `ok` holds, given that it fails at lo, holds at hi and is
 * monotonic in between (more bandwidth or downtime never hurts convergence).
 */
function lowestPassing(lo: number, hi: number, ok: (x: number) => boolean): number {
  for (let i = 0; i < 60 && hi - lo > hi * 1e-9; i++) {
    const mid = (lo + hi) / 2;
    if (ok(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}

/**
 * `raw` rounded up to a multiple of `step` (what the message shows) that still passes: the
 * search lands a hair above the exact edge, which must not push 1.6 s up to 1.7 s.
 */
function roundUpPassing(raw: number, step: number, ok: (x: number) => boolean): number {
  let x = Math.ceil(raw / step - 1e-6) * step;
  while (!ok(x)) x += step;
  return x;
}

function adviceFor(m: Model, input: PredictionInput): string[] {
  const advice: string[] = [];
  const offered = new Set(input.capabilitiesOffered);
  const on = new Set(input.capabilitiesOn);
  // An advised setting must converge for a structural reason (D < B, or W <= threshold) and
  // comfortably; "what is left happens to fit right now" does not last past the next sync.
  const converges = (x: Model): boolean => {
    if (x.dirty >= x.bandwidth && x.workingSet > thresholdOf(x)) return false;
    const r = run(x);
    return r.converges && r.passes <= ADVICE_PASSES;
  };

  if (m.downtimeMs > 0) {
    // Above the dirty rate with a threshold holding everything left, or with one holding the
    // whole working set, it converges within a pass; search down for the least that still does.
    let hi = Math.max((m.remaining * 1000) / m.downtimeMs, 2 * m.dirty);
    if (Number.isFinite(m.workingSet)) hi = Math.min(hi, (m.workingSet * 1000) / m.downtimeMs);
    if (hi > m.bandwidth) {
      const ok = (bw: number): boolean => converges({ ...m, bandwidth: bw });
      // Whole MB/s, rounded up, so the figure shown is one that works.
      const target = roundUpPassing(lowestPassing(m.bandwidth, hi, ok), 1e6, ok);
      const after = run({ ...m, bandwidth: target });
      const passes = after.converges ? after.passes : ADVICE_PASSES;
      const why =
        Number.isFinite(m.workingSet) && target * (m.downtimeMs / 1000) >= m.workingSet
          ? `the ${formatBytes(m.workingSet)} working set then fits in the ${formatMs(m.downtimeMs)} downtime limit`
          : `above the guest's ${formatBytesRate(m.dirty)} dirty rate, QEMU would switch over within ${plural(passes, 'pass')}`;
      advice.push(`Raise the bandwidth to at least ${formatBytesRate(target)} (max-bandwidth, if the link can carry it): ${why}.`);
    }
  }

  // A longer downtime limit raises the threshold. While D >= B only a threshold holding the
  // whole working set lasts (what is left keeps growing to it), so W unknown means no advice;
  // while D < B, a threshold holding everything left converges at once, so search below it.
  let dtHi = Infinity;
  if (m.dirty >= m.bandwidth) {
    if (Number.isFinite(m.workingSet)) dtHi = (m.workingSet / m.bandwidth) * 1000;
  } else {
    dtHi = (Math.min(m.remaining, m.workingSet) / m.bandwidth) * 1000;
  }
  if (Number.isFinite(dtHi) && dtHi > m.downtimeMs) {
    const ok = (dt: number): boolean => converges({ ...m, downtimeMs: dt });
    const raw = lowestPassing(m.downtimeMs, dtHi, ok);
    // Rounded up to what formatMs shows, so the figure shown is one that works.
    const target = roundUpPassing(raw, raw < 1000 ? 10 : 100, ok);
    if (target <= MAX_SUGGESTED_DOWNTIME_MS) {
      const after = run({ ...m, downtimeMs: target });
      const passes = after.converges ? after.passes : ADVICE_PASSES;
      const why =
        Number.isFinite(m.workingSet) && (m.bandwidth * target) / 1000 >= m.workingSet
          ? `at ${formatBytesRate(m.bandwidth)} the whole ${formatBytes(m.workingSet)} working set then fits in one final copy`
          : `at ${formatBytesRate(m.bandwidth)} QEMU would then switch over within ${plural(passes, 'pass')}`;
      advice.push(`Raise the downtime limit to ${formatMs(target)} (the guest stays paused up to that long): ${why}.`);
    }
  }

  if (offered.has('auto-converge') && !on.has('auto-converge')) {
    advice.push(
      `Enable auto-converge: QEMU then throttles the guest's CPUs, step by step, until it dirties less than the ${formatBytesRate(m.bandwidth)} the link sends.`,
    );
  }

  // Advice is only what MigLab lets the user do: post-copy waits until it is a MigLab strategy.
  if (offered.has('postcopy-ram') && capabilityRefusal('postcopy-ram', true) === null) {
    const how = on.has('postcopy-ram') ? 'Switch to post-copy now (migrate-start-postcopy)' : 'Use post-copy (postcopy-ram)';
    advice.push(
      `${how}: QEMU switches over first and the destination fetches the remaining ${formatBytes(m.remaining)} on demand, whatever the dirty rate.`,
    );
  }
  return advice;
}

/** What remains is "the whole working set" within this share of it (either way): after pass 1, not during it. */
const SATURATED_SHARE = 0.9;

/**
 * Advice for a saturated working set: only what makes the working set fit in one final copy
 * (its size, not the measured rate, decides), or a strategy that does not need it to.
 */
function workingSetAdvice(m: Model, input: PredictionInput): string[] {
  const advice: string[] = [];
  const bw = Math.ceil((m.workingSet / (m.downtimeMs / 1000)) / 1e6) * 1e6;
  if (m.downtimeMs > 0) advice.push(`Raise the bandwidth to at least ${formatBytesRate(bw)}: the ${formatBytes(m.workingSet)} working set then fits in the ${formatMs(m.downtimeMs)} downtime limit.`);
  const rawDt = (m.workingSet / m.bandwidth) * 1000;
  // Rounded up to what formatMs shows, so the figure shown is one that works.
  const step = rawDt < 1000 ? 10 : 100;
  const dt = Math.ceil(rawDt / step) * step;
  if (dt <= MAX_SUGGESTED_DOWNTIME_MS) advice.push(`Raise the downtime limit to ${formatMs(dt)} (the guest stays paused up to that long): at ${formatBytesRate(m.bandwidth)} the working set then fits in one final copy.`);
  const offered = new Set(input.capabilitiesOffered);
  const on = new Set(input.capabilitiesOn);
  if (offered.has('auto-converge') && !on.has('auto-converge')) {
    advice.push(`Enable auto-converge: QEMU throttles the guest's CPUs until the working set is no longer all dirty by the end of a pass.`);
  }
  if (offered.has('postcopy-ram') && capabilityRefusal('postcopy-ram', true) === null) {
    advice.push(`Use post-copy: QEMU switches over first and the destination fetches the remaining ${formatBytes(m.remaining)} on demand.`);
  }
  return advice;
}

function invalid(n: number): boolean {
  return !Number.isFinite(n) || n < 0;
}

export function predict(input: PredictionInput): Prediction {
  const { remainingBytes, dirtyRateBps, bandwidthBps, downtimeLimitMs } = input;
  if (!Number.isFinite(bandwidthBps) || bandwidthBps <= 0) {
    return { kind: 'unknown', reason: 'No bandwidth is known yet (nothing measured, no max-bandwidth), so there is no estimate.' };
  }
  if (invalid(remainingBytes)) return { kind: 'unknown', reason: 'QEMU has not yet reported how much is left to send.' };
  if (invalid(dirtyRateBps)) return { kind: 'unknown', reason: 'QEMU has not yet reported the guest\'s dirty rate.' };
  if (invalid(downtimeLimitMs)) return { kind: 'unknown', reason: 'The downtime limit is not known.' };

  const ws = input.workingSetBytes;
  const m: Model = {
    remaining: remainingBytes,
    dirty: dirtyRateBps,
    bandwidth: bandwidthBps,
    downtimeMs: downtimeLimitMs,
    workingSet: ws !== undefined && Number.isFinite(ws) && ws >= 0 ? ws : Infinity,
  };
  const t = thresholdOf(m);
  const throttle = input.throttlePercent ?? 0;
  const throttled = input.capabilitiesOn.includes('auto-converge') && throttle > 0;
  // Slotted in right after the dirty rate, which it explains.
  const note = throttled ? ` (with auto-converge throttling its CPUs by ${Math.round(throttle)}%)` : '';
  const dirties = `the guest dirties ${formatBytesRate(m.dirty)}${note}`;
  const budget = `the ${formatBytes(t)} that fits in the ${formatMs(m.downtimeMs)} downtime limit`;
  // The writable working set (Clark et al. 2005): once each pass finds the whole working set
  // dirty again, what remains stops shrinking whatever the guest's rate, and the rate measured
  // over a pass (remaining / pass time) is only a floor of the real one. The verdict then rests on
  // the working set alone: it must fit in what the downtime limit lets QEMU send.
  const atBoundary = input.boundaryRemainingBytes ?? m.remaining;
  if (Number.isFinite(m.workingSet) && m.workingSet > t && atBoundary >= SATURATED_SHARE * m.workingSet && atBoundary <= m.workingSet / SATURATED_SHARE && m.dirty > 0) {
    const reason = `Each pass finds the guest's whole ${formatBytes(m.workingSet)} working set dirty again${note} (it dirties at least ${formatBytesRate(m.dirty)}), so what remains stays near ${formatBytes(m.workingSet)}: more than ${budget} at ${formatBytesRate(m.bandwidth)}.`;
    return { kind: 'will-not-converge', reason, advice: workingSetAdvice(m, input) };
  }
  const r = run(m);

  if (r.converges) {
    const eta = formatMs(r.etaMs);
    let reason: string;
    if (r.passes === 0) {
      reason = `The ${formatBytes(m.remaining)} left is within ${budget} at ${formatBytesRate(m.bandwidth)}${note}: QEMU can switch over now, and the final copy takes about ${eta}.`;
    } else if (m.dirty === 0) {
      reason = `The guest is not dirtying memory${note}: one pass sends the ${formatBytes(m.remaining)} left at ${formatBytesRate(m.bandwidth)}, about ${eta}.`;
    } else if (m.workingSet <= t) {
      reason = `The guest's ${formatBytes(m.workingSet)} working set${note} is within ${budget} at ${formatBytesRate(m.bandwidth)}: one more pass sends the ${formatBytes(m.remaining)} left, then QEMU switches over, about ${eta} in all.`;
    } else {
      reason = `${cap(dirties)} and the link sends ${formatBytesRate(m.bandwidth)}: ${plural(r.passes, 'pass')} should bring the ${formatBytes(m.remaining)} left under ${budget}, about ${eta} in all.`;
    }
    return { kind: 'eta', etaMs: r.etaMs, passesLeft: r.passes, reason };
  }

  let reason: string;
  if (m.dirty >= m.bandwidth) {
    const link = `the link sends ${m.dirty === m.bandwidth ? 'just' : 'only'} ${formatBytesRate(m.bandwidth)}`;
    if (Number.isFinite(m.workingSet)) {
      reason = `${cap(dirties)} in a ${formatBytes(m.workingSet)} working set but ${link}: each pass leaves the whole working set to send again, more than ${budget}.`;
    } else if (m.dirty === m.bandwidth) {
      reason = `${cap(dirties)} and ${link}: each pass leaves as much to send as the last, so what is left never falls to ${budget}.`;
    } else {
      reason = `${cap(dirties)} but ${link}: each pass leaves more to send than the last, so what is left never falls to ${budget}.`;
    }
  } else {
    const pct = Math.round((m.dirty / m.bandwidth) * 100);
    const needed = Number.isFinite(r.passesNeeded)
      ? `would take about ${r.passesNeeded} passes, more than ${MAX_PASSES}: in practice QEMU would go on copying for ever`
      : 'would never happen: QEMU would go on copying for ever';
    reason = `${cap(dirties)} and the link sends ${formatBytesRate(m.bandwidth)}, so each pass leaves ${pct}% of the last to send: getting the ${formatBytes(m.remaining)} left under ${budget} ${needed}.`;
  }
  return { kind: 'will-not-converge', reason, advice: adviceFor(m, input) };
}

function cap(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
