// One migration, taken home: the story the UI kept of it as a JSON document, its samples and its
// pre-copy passes as CSV for a spreadsheet, and a browser download to save them. Pure functions
// but download(), which needs a DOM; nothing here touches Node.
import type { MigrationPass, PhaseSpan, PreflightCheck, Prediction } from '../../electron/engine/api/contract';
import type { MigrationTrack } from './store';

/**
 * One sample as exported: what the store keeps per sample, with the time back in ms. A figure
 * QEMU did not report is null in JSON and an empty field in CSV, never 0.
 */
export interface ExportedSample {
  atMs: number;
  remainingBytes: number | null;
  transferredBytes: number | null;
  dirtyRateBps: number | null;
  throughputBps: number | null;
  pass: number | null;
}

/**
 * The store keeps sample times in seconds (for the charts); the job's clock is fractional ms.
 * Rounded to the microsecond, so 1234 ms comes back as 1234, not 1233.9999999999998.
 */
function secondsToMs(s: number): number {
  return Math.round(s * 1e6) / 1e3;
}

/** The samples the store kept (the latest MAX_SAMPLES of them), as objects. */
export function exportedSamples(track: MigrationTrack): ExportedSample[] {
  const s = track.samples;
  return s.t.map((t, i) => ({
    atMs: secondsToMs(t),
    remainingBytes: s.remaining[i] ?? null,
    transferredBytes: s.transferred[i] ?? null,
    dirtyRateBps: s.dirtyRate[i] ?? null,
    throughputBps: s.throughput[i] ?? null,
    pass: s.pass[i] ?? null,
  }));
}

// A migration the UI first saw in a lab snapshot (it connected after it ran) has no events of its
// own, only its result: the result's phases, checks, passes and prediction stand in for them.
function phasesOf(t: MigrationTrack): PhaseSpan[] {
  return t.phases.length > 0 ? t.phases : (t.result?.phases ?? []);
}
function checksOf(t: MigrationTrack): PreflightCheck[] {
  return t.checks.length > 0 ? t.checks : (t.result?.checks ?? []);
}
export function passesOf(t: MigrationTrack): MigrationPass[] {
  return t.passes.length > 0 ? t.passes : (t.result?.passes ?? []);
}
function predictionOf(t: MigrationTrack): Prediction | null {
  return t.prediction ?? t.result?.prediction ?? null;
}

/** Where the migration stands: a result's outcome wins over a state the UI may not have heard change. */
export function stateOf(t: MigrationTrack): MigrationTrack['state'] {
  return t.result?.status ?? t.state;
}

/** A copy with the keys of every plain object sorted, so the document does not depend on the order the engine built them in. */
function sortedKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortedKeys);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort()) out[k] = sortedKeys((value as Record<string, unknown>)[k]);
    return out;
  }
  return value;
}

/**
 * One migration as a JSON document. The top-level keys come in a fixed order (who, where, how it
 * went, the measurements, the result, then the RAM size and longest heartbeat gap); objects the engine made (phases, checks, passes, prediction,
 * network events, result) have their keys sorted. Non-finite numbers become null, as in any JSON.
 */
export function migrationJson(track: MigrationTrack): string {
  const doc = {
    id: track.id,
    guest: track.guest,
    from: track.from,
    to: track.to,
    state: stateOf(track),
    phases: sortedKeys(phasesOf(track)),
    checks: sortedKeys(checksOf(track)),
    passes: sortedKeys(passesOf(track)),
    samples: exportedSamples(track),
    prediction: sortedKeys(predictionOf(track)),
    params: track.params === null ? null : { bandwidthMBps: track.params.bandwidthMBps, downtimeLimitMs: track.params.downtimeLimitMs },
    network: {
      moves: sortedKeys(track.moves),
      announces: track.announces.map((a) => ({ atMs: a.atMs, host: a.host, count: a.count })),
      probe: {
        samples: track.probe.map((p) => ({ seq: p.seq, sentAtMs: p.sentAtMs, rttMs: p.rttMs })),
        sent: track.probeTotals.sent,
        received: track.probeTotals.received,
      },
    },
    result: sortedKeys(track.result),
    totalBytes: track.totalBytes,
    heartbeatGapMs: track.heartbeatGapMs,
  };
  return `${JSON.stringify(doc, null, 2)}\n`;
}

/**
 * One CSV field (RFC 4180): quoted when it holds a comma, a double quote, CR or LF, with inner
 * quotes doubled. null, undefined and non-finite numbers are empty fields.
 */
export function csvField(value: string | number | null | undefined): string {
  if (value === null || value === undefined) return '';
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : '';
  return /[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** Rows of fields as CSV text: '\n' line ends, a final newline. */
export function csv(rows: ReadonlyArray<ReadonlyArray<string | number | null | undefined>>): string {
  return rows.map((r) => r.map(csvField).join(',')).join('\n') + '\n';
}

/** The samples: at_ms,pass,remaining_bytes,transferred_bytes,dirty_rate_bps,throughput_bps. */
export function migrationCsv(track: MigrationTrack): string {
  return csv([
    ['at_ms', 'pass', 'remaining_bytes', 'transferred_bytes', 'dirty_rate_bps', 'throughput_bps'],
    ...exportedSamples(track).map((s) => [s.atMs, s.pass, s.remainingBytes, s.transferredBytes, s.dirtyRateBps, s.throughputBps]),
  ]);
}

/** The pre-copy passes: pass,start_ms,duration_ms,bytes,normal_pages,zero_pages,dirty_rate_bps,throughput_bps. */
export function passesCsv(track: MigrationTrack): string {
  return csv([
    ['pass', 'start_ms', 'duration_ms', 'bytes', 'normal_pages', 'zero_pages', 'dirty_rate_bps', 'throughput_bps'],
    ...passesOf(track).map((p) => [p.pass, p.startMs, p.durationMs, p.bytes, p.normalPages, p.zeroPages, p.dirtyRateBps, p.throughputBps]),
  ]);
}

/** A name part with only letters, digits, '_' and '-': no dots, slashes, spaces or control characters. */
function safePart(s: string, fallback: string, max = 40): string {
  const cleaned = s
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '') // é -> e, not e_
    .replace(/[^A-Za-z0-9_-]+/g, '_')
    .replace(/^[_-]+|[_-]+$/g, '')
    .slice(0, max)
    .replace(/[_-]+$/, '');
  return cleaned || fallback;
}

/** miglab-<guest>-<from>-to-<to>-<first 8 of id>.<ext>, in characters every file system takes. */
export function exportFileName(track: MigrationTrack, ext: string): string {
  const extension = ext.replace(/^\.+/, '').replace(/[^A-Za-z0-9]/g, '').toLowerCase() || 'txt';
  return `miglab-${safePart(track.guest, 'guest')}-${safePart(track.from, 'unknown')}-to-${safePart(track.to, 'unknown')}-${safePart(track.id.slice(0, 8), 'id', 8)}.${extension}`;
}

/**
 * Saves text as a file: a Blob behind a temporary <a download>, clicked, removed; the object URL
 * is revoked on the next task, once the click has started the download.
 */
export function download(name: string, mime: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type: mime }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.rel = 'noopener';
  a.style.display = 'none';
  document.body.appendChild(a);
  try {
    a.click();
  } finally {
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 0);
  }
}
