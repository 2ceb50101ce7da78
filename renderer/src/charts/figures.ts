// What the migration charts compute from the track, kept apart from the drawing so it can be
// tested: the value range of a bar axis, the switchover threshold, the downtime policy's markers.
import { formatMs, type DowntimeStep } from '../../../electron/engine/api/contract';

/**
 * The value range of a bar chart's axis: from zero, so a bar's height is its size (uPlot's own
 * range hugs the data and would draw 130 MB against 140 MB as a large difference).
 */
export function zeroBasedRange(dataMin: number | null, dataMax: number | null): [number, number] {
  const lo = Math.min(0, dataMin ?? 0);
  const hi = Math.max(0, dataMax ?? 0);
  // Some headroom over the top bar; an empty or all-zero chart still gets an axis.
  return hi === lo ? [lo, lo + 1] : [lo, hi + (hi - lo) * 0.05];
}

export interface SwitchoverThreshold {
  /** Bytes that fit in the downtime limit at the rate used. */
  bytes: number;
  /** The rate used, bytes/s. */
  rateBps: number;
  /** 'measured': QEMU's throughput (query-migrate); 'configured': the bandwidth limit, before QEMU measured. */
  rateSource: 'measured' | 'configured';
  downtimeLimitMs: number;
  /** How it was computed, for a label or a tooltip. */
  how: string;
}

/**
 * QEMU switches over once what remains can be sent within downtime-limit at the throughput it
 * measures; the threshold is that product. null before QEMU's parameters (the limit) are known.
 */
export function switchoverThreshold(
  throughput: ReadonlyArray<number | null>,
  params: { bandwidthMBps: number; downtimeLimitMs: number } | null,
): SwitchoverThreshold | null {
  if (!params) return null;
  let measured: number | null = null;
  for (let i = throughput.length - 1; i >= 0 && measured === null; i--) {
    const v = throughput[i];
    if (v != null && v > 0) measured = v;
  }
  const rateBps = measured ?? params.bandwidthMBps * 1e6;
  const rateSource = measured === null ? 'configured' : 'measured';
  const how =
    rateSource === 'measured'
      ? "computed: QEMU's measured throughput × downtime-limit (the latest query-migrate sample × the limit last set)"
      : "computed: the configured bandwidth limit × downtime-limit (QEMU has not measured its throughput yet)";
  return { bytes: (rateBps * params.downtimeLimitMs) / 1000, rateBps, rateSource, downtimeLimitMs: params.downtimeLimitMs, how };
}

export interface StepMarker {
  /** Seconds of job time (the charts' x). */
  x: number;
  action: DowntimeStep['action'];
  /** Short, on the chart. */
  label: string;
  /** The policy's own words: the tooltip. */
  title: string;
}

/** A vertical marker per downtime-policy step, where it happened on the job's clock. */
export function stepMarkers(steps: ReadonlyArray<{ atMs: number; step: DowntimeStep }>): StepMarker[] {
  return steps.map(({ atMs, step }) => ({
    x: atMs / 1000,
    action: step.action,
    label: step.action === 'raise' ? `limit → ${step.downtimeLimitMs} ms` : 'not converged',
    title: step.why,
  }));
}

/** A step in words for a list: when, which pass, what. */
export function describeStep(step: DowntimeStep, atMs: number | null): string {
  const what = step.action === 'raise' ? `downtime-limit raised to ${step.downtimeLimitMs} ms` : `ended as not converged at ${step.downtimeLimitMs} ms`;
  return `${atMs === null ? '' : `at ${formatMs(atMs)}, `}pass ${step.pass}: ${what}`;
}
