// Before a migration starts: how fast does the guest dirty its memory, and can pre-copy outrun it
// over this link? QEMU measures (calc-dirty-rate, page sampling: it hashes a random sample of
// guest pages, waits, and counts the ones that changed); the verdict is computed with the same
// pre-copy model as the live prediction (prediction.ts), so the two never disagree.
import type { Guest } from '../hosts/host';
import { QmpCommandError, calcDirtyRate, queryDirtyRate, type DirtyRateInfo, type TimeUnit } from '../qmp';
import { formatBytes, formatBytesRate, formatMs } from '../util/format';
import { delay } from '../util/time';
import { capabilityRefusal } from './capabilities';
import { ADVICE_PASSES, MAX_PASSES, predict } from './prediction';

export const DIRTY_RATE_SOURCE = 'QEMU calc-dirty-rate (page-sampling)' as const;

/** QEMU 8.2 and later measure for 50 ms to 60 s; older ones for whole seconds, 1 to 60. */
export const DIRTY_RATE_MIN_MS = 50;
export const DIRTY_RATE_MAX_MS = 60_000;

/** QEMU's "MB/s" is bytes >> 20 per second (migration/dirtyrate.c): MiB. */
const MIB = 1024 * 1024;

export interface DirtyRateMeasurement {
  /** Bytes per second, measured by QEMU. */
  dirtyRateBps: number;
  /** How long QEMU measured, as QEMU reports it, ms (whole seconds on a QEMU older than 8.2). */
  calcTimeMs: number;
  source: typeof DIRTY_RATE_SOURCE;
}

export class DirtyRateError extends Error {
  static {
    this.prototype.name = 'DirtyRateError';
  }
}

export interface MeasureDirtyRateOptions {
  /** How long QEMU watches the guest, ms (50..60000; rounded up to whole seconds before QEMU 8.2). */
  ms: number;
  /** Pages QEMU samples per GiB of RAM (QEMU takes 128..16384; its own default is 256 or 512). */
  samplePagesPerGiB?: number;
  /** How often query-dirty-rate is asked once the measuring time is up, ms. */
  pollMs?: number;
  /** How long past the measuring time QEMU may take to say "measured", ms. */
  graceMs?: number;
}

/** More samples than QEMU's default: a 256 MiB lab guest then has one per MiB, not one per 2-4 MiB. */
const DEFAULT_SAMPLE_PAGES = 1024;

/** A QEMU before 8.2 refuses calc-time-unit by name ("Parameter 'calc-time-unit' is unexpected"). */
function lacksTimeUnit(err: unknown): boolean {
  return err instanceof QmpCommandError && /calc-time-unit/.test(err.desc);
}

function answerOf(info: DirtyRateInfo): string {
  const rate = info['dirty-rate'] === undefined ? '' : `, dirty-rate ${info['dirty-rate']}`;
  return `status "${info.status}", mode ${info.mode}${rate}`;
}

/**
 * Asks the guest's QEMU to measure its dirty rate and waits for the answer (bounded by the
 * measuring time plus graceMs). Throws DirtyRateError naming QEMU's answer when it cannot.
 */
export async function measureDirtyRate(guest: Pick<Guest, 'name' | 'qmp'>, opts: MeasureDirtyRateOptions): Promise<DirtyRateMeasurement> {
  const { ms } = opts;
  if (!Number.isSafeInteger(ms) || ms < DIRTY_RATE_MIN_MS || ms > DIRTY_RATE_MAX_MS) {
    throw new DirtyRateError(
      `QEMU measures a dirty rate over ${DIRTY_RATE_MIN_MS} ms to ${DIRTY_RATE_MAX_MS / 1000} s, in whole ms; got ${String(ms)}: pick a time in that range (1000 ms is usual).`,
    );
  }
  const samplePages = opts.samplePagesPerGiB ?? DEFAULT_SAMPLE_PAGES;
  const pollMs = opts.pollMs ?? 100;
  const graceMs = opts.graceMs ?? 5_000;
  const who = `${guest.name}'s QEMU`;
  const refused = (err: unknown): Error =>
    err instanceof QmpCommandError
      ? new DirtyRateError(`${who} would not measure the dirty rate: "${err.desc}".`, { cause: err })
      : new DirtyRateError(`${who} could not be asked to measure the dirty rate: ${(err as Error).message}`, { cause: err });

  let unit: TimeUnit = 'millisecond';
  let waitMs = ms;
  try {
    await calcDirtyRate(guest.qmp, { 'calc-time': ms, 'calc-time-unit': 'millisecond', 'sample-pages': samplePages });
  } catch (err) {
    if (!lacksTimeUnit(err)) throw refused(err);
    // Before QEMU 8.2: whole seconds only.
    unit = 'second';
    waitMs = Math.max(1, Math.ceil(ms / 1000)) * 1000;
    try {
      await calcDirtyRate(guest.qmp, { 'calc-time': waitMs / 1000, 'sample-pages': samplePages });
    } catch (again) {
      throw refused(again);
    }
  }

  await delay(waitMs);
  const deadline = performance.now() + graceMs;
  let info: DirtyRateInfo;
  for (;;) {
    try {
      info = await queryDirtyRate(guest.qmp, unit === 'millisecond' ? unit : undefined);
    } catch (err) {
      throw new DirtyRateError(`${who} did not say how the dirty-rate measurement went: ${(err as Error).message}`, { cause: err });
    }
    if (info.status === 'measured') break;
    if (performance.now() >= deadline) {
      throw new DirtyRateError(
        `${who} had not finished measuring the dirty rate ${formatMs(waitMs + graceMs)} after it started (a ${formatMs(waitMs)} measurement); its last answer: ${answerOf(info)}.`,
      );
    }
    await delay(pollMs);
  }
  // calc-dirty-rate resets QEMU's state to "unstarted" before it returns, so "measured" is ours,
  // unless someone else started another measurement meanwhile: then mode or sampling differ.
  if (info.mode !== 'page-sampling' || info['sample-pages'] !== samplePages) {
    throw new DirtyRateError(
      `${who} answered for another measurement than MigLab's (page-sampling, ${samplePages} pages per GiB): ${answerOf(info)}, ${info['sample-pages']} pages per GiB. Was a second one started meanwhile? Measure again.`,
    );
  }
  const rate = info['dirty-rate'];
  if (rate === undefined || rate < 0) {
    throw new DirtyRateError(
      `${who} finished measuring but gave no dirty rate (${rate === undefined ? 'none' : `dirty-rate ${rate}`}): it found no guest RAM it could sample.`,
    );
  }
  const calcTimeMs = unit === 'millisecond' ? info['calc-time'] : info['calc-time'] * 1000;
  if (calcTimeMs <= 0) throw new DirtyRateError(`${who} says it measured for ${info['calc-time']} ${unit}s: there is no rate over no time.`);
  return { dirtyRateBps: rate * MIB, calcTimeMs, source: DIRTY_RATE_SOURCE };
}

export interface DirtyRateVerdictInput {
  /** Where the dirty rate comes from, for the sentence; default "measured by QEMU". */
  rateFrom?: string;
  /** What the migration may send, bytes/s (max-bandwidth, or the link's rate if lower). */
  bandwidthBps: number;
  /** Where bandwidthBps comes from, for the sentence; default "the migration's max-bandwidth". */
  bandwidthFrom?: string;
  /** downtime-limit, ms. */
  downtimeLimitMs: number;
  /** The guest's RAM: what the first pass sends. */
  ramBytes: number;
  /** The part of RAM the guest keeps rewriting, when known (labload's working set). */
  workingSetBytes?: number;
}

export interface DirtyRateVerdict {
  /** null: no verdict, the sentence says which figure was missing or wrong. */
  converges: boolean | null;
  /** The reasoning in words, each figure saying where it came from. */
  sentence: string;
  /** What would make it converge (or converge sooner), each with why; empty when it converges within ADVICE_PASSES. */
  helps: string[];
}

const usable = (n: number | undefined, positive: boolean): boolean =>
  typeof n === 'number' && Number.isFinite(n) && (positive ? n > 0 : n >= 0);

/** Which input is unusable, named, with what to give instead; null when all are fine. */
function badInput(rateBps: number, o: DirtyRateVerdictInput): string | null {
  if (!usable(rateBps, false)) return `the dirty rate (${String(rateBps)}) is not a number of bytes per second >= 0: measure it first`;
  if (!usable(o.bandwidthBps, true)) return `the bandwidth (${String(o.bandwidthBps)}) is not a number of bytes per second > 0: give the migration's max-bandwidth`;
  if (!usable(o.downtimeLimitMs, false)) return `the downtime limit (${String(o.downtimeLimitMs)}) is not a number of ms >= 0: give the migration's downtime-limit`;
  if (!usable(o.ramBytes, true)) return `the guest's RAM (${String(o.ramBytes)}) is not a number of bytes > 0: give its memory size`;
  if (o.workingSetBytes !== undefined && !usable(o.workingSetBytes, false)) {
    return `the working set (${String(o.workingSetBytes)}) is not a number of bytes >= 0: leave it out when unknown`;
  }
  return null;
}

/** Converges, for advice: within ADVICE_PASSES, so the figure offered is a comfortable one. */
function convergesComfortably(rateBps: number, o: DirtyRateVerdictInput, bandwidthBps: number): boolean {
  const p = predict({
    remainingBytes: o.ramBytes, dirtyRateBps: rateBps, bandwidthBps, downtimeLimitMs: o.downtimeLimitMs,
    workingSetBytes: o.workingSetBytes, capabilitiesOffered: [], capabilitiesOn: [],
  });
  return p.kind === 'eta' && p.passesLeft <= ADVICE_PASSES;
}

/** The least bandwidth (whole MB/s) with which the model converges comfortably; null when none does. */
function bandwidthNeeded(rateBps: number, o: DirtyRateVerdictInput): number | null {
  // At RAM / downtime the whole guest fits in the final copy: it converges at once.
  let hi = Math.max(2 * rateBps, o.downtimeLimitMs > 0 ? (o.ramBytes * 1000) / o.downtimeLimitMs : 0, o.bandwidthBps);
  if (!convergesComfortably(rateBps, o, hi)) return null;
  let lo = o.bandwidthBps;
  for (let i = 0; i < 60 && hi - lo > 1e5; i++) {
    const mid = (lo + hi) / 2;
    if (convergesComfortably(rateBps, o, mid)) hi = mid;
    else lo = mid;
  }
  let mb = Math.ceil(hi / 1e6);
  while (!convergesComfortably(rateBps, o, mb * 1e6)) mb++;
  return mb * 1e6;
}

/** " (MigLab will not switch it on: ...)" when MigLab refuses the capability, else "". */
function refusalNote(capability: string): string {
  const why = capabilityRefusal(capability, true);
  return why ? ` MigLab will not switch it on: ${why}.` : '';
}

function helpsFor(rateBps: number, o: DirtyRateVerdictInput): string[] {
  const link = formatBytesRate(o.bandwidthBps);
  const ws = o.workingSetBytes;
  const helps: string[] = [];
  const needed = bandwidthNeeded(rateBps, o);
  if (needed !== null) {
    helps.push(
      `A higher bandwidth: at least ${formatBytesRate(needed)} (computed: the least with which MigLab's pre-copy model converges within ${ADVICE_PASSES} passes), if the link can carry it.`,
    );
  }
  helps.push(
    `auto-converge: QEMU throttles the guest's vCPUs, step by step, until it dirties less than the ${link} sent; the guest runs slower meanwhile.${refusalNote('auto-converge')}`,
  );
  helps.push(
    `xbzrle: a page sent again goes as the difference from its earlier copy, which is small when the guest rewrites only part of it; the cache (xbzrle-cache-size) must hold ${ws !== undefined ? `the ${formatBytes(ws)} working set` : 'the pages the guest rewrites'}.${refusalNote('xbzrle')}`,
  );
  helps.push(
    `multifd: several streams send in parallel, which helps when one stream's CPU, not the link, limits the rate; it cannot send more than the link carries.${refusalNote('multifd')}`,
  );
  helps.push(
    `post-copy: QEMU switches over first and the destination fetches the pages still missing on demand, so it finishes whatever the dirty rate.${refusalNote('postcopy-ram')}`,
  );
  return helps;
}

/**
 * Will pre-copy converge for a guest dirtying `rateBps` (measured by QEMU) over this link? Pure:
 * QEMU's loop as prediction.ts models it, starting with the whole RAM left to send.
 */
export function dirtyRateVerdict(rateBps: number, o: DirtyRateVerdictInput): DirtyRateVerdict {
  const bad = badInput(rateBps, o);
  if (bad) return { converges: null, sentence: `No verdict: ${bad}.`, helps: [] };
  const p = predict({
    remainingBytes: o.ramBytes, dirtyRateBps: rateBps, bandwidthBps: o.bandwidthBps, downtimeLimitMs: o.downtimeLimitMs,
    workingSetBytes: o.workingSetBytes, capabilitiesOffered: [], capabilitiesOn: [],
  });
  if (p.kind === 'unknown') return { converges: null, sentence: `No verdict: ${p.reason}`, helps: [] };
  const bw = o.bandwidthBps;
  const thresholdBytes = (bw * o.downtimeLimitMs) / 1000;
  const facts =
    `The guest dirties ${formatBytesRate(rateBps)} (${o.rateFrom ?? 'measured by QEMU'}); the migration sends ${formatBytesRate(bw)} (${o.bandwidthFrom ?? "the migration's max-bandwidth"}).`;
  const budget = `${formatBytes(thresholdBytes)} (computed: ${formatBytesRate(bw)} x the ${formatMs(o.downtimeLimitMs)} downtime limit)`;
  const ram = `${formatBytes(o.ramBytes)} of RAM (the guest's memory size)`;
  const ws = o.workingSetBytes;
  const pct = Math.round((rateBps / bw) * 100);
  const share = `each pass leaves about ${pct}% of the last to send (computed: dirty rate / bandwidth)`;

  if (p.kind === 'eta') {
    let why: string;
    if (rateBps === 0) why = 'the guest dirtied nothing while QEMU watched';
    else if (ws !== undefined && ws <= thresholdBytes) why = `its ${formatBytes(ws)} working set (as set) fits in the final copy of ${budget}`;
    else why = share;
    const passes = p.passesLeft === 1 ? '1 pass brings' : `${p.passesLeft} passes bring`;
    // Converging, but slowly: past ADVICE_PASSES the same strategies would shorten it.
    const slow = p.passesLeft > ADVICE_PASSES;
    return {
      converges: true,
      sentence:
        `${facts} Pre-copy will converge${slow ? ', slowly' : ''}: ${why}; about ${passes} the ${ram} under ${budget}, ` +
        `about ${formatMs(p.etaMs)} in all (computed with MigLab's pre-copy model).`,
      helps: slow ? helpsFor(rateBps, o) : [],
    };
  }
  let why: string;
  if (rateBps >= bw) {
    why = ws !== undefined
      ? `the guest dirties at least as fast as the migration sends, so each pass leaves its whole ${formatBytes(ws)} working set (as set) to send again, more than ${budget}`
      : `the guest dirties at least as fast as the migration sends, so what is left never shrinks to ${budget}`;
  } else {
    why = `${share}, so bringing the ${ram} under ${budget} would take more than ${MAX_PASSES} passes (computed with MigLab's pre-copy model)`;
  }
  return { converges: false, sentence: `${facts} Pre-copy will not converge: ${why}.`, helps: helpsFor(rateBps, o) };
}
