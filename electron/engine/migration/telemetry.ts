// Turns QEMU's query-migrate answers and MIGRATION_PASS events into MigLab's samples and passes.
// Pure: the orchestrator does the QMP I/O and hands the answers in with its own clock.
import type { MigrationInfo, MigrationStats } from '../qmp';
import type { MigrationPass, MigrationSample } from './types';

/**
 * A counter as QEMU reported it, or null when it did not (QMP answers are cast, not validated):
 * an unreported figure must read as unknown, never as a measured-looking 0.
 */
function reported(n: unknown): number | null {
  return typeof n === 'number' && Number.isFinite(n) ? n : null;
}

/**
 * QEMU reports dirty-pages-rate in pages/s; MigLab speaks bytes/s. Needs both figures: a page
 * size QEMU did not send is not guessed.
 */
function dirtyRateOf(ram: MigrationStats): number | null {
  const pages = reported(ram['dirty-pages-rate']);
  const pageSize = reported(ram['page-size']);
  if (pages === null || pageSize === null || pageSize <= 0) return null;
  return Math.max(0, pages) * pageSize;
}

/**
 * The dirty rate a sample can stand behind. QEMU computes dirty-pages-rate at a bitmap sync, and
 * its first sync (dirty-sync-count 1, when the migration starts) computes none: until the second,
 * the 0 it reports means "not measured yet", not an idle guest.
 */
function sampleDirtyRate(ram: MigrationStats): number | null {
  const syncs = reported(ram['dirty-sync-count']);
  if (syncs === null || syncs < 2) return null;
  return dirtyRateOf(ram);
}

/** One query-migrate answer as a sample; null until QEMU reports both a status and ram stats. */
export function sampleFromInfo(info: MigrationInfo, atMs: number): MigrationSample | null {
  const ram = info.ram;
  if (!ram || !info.status) return null;
  const mbps = reported(ram.mbps);
  return {
    atMs,
    status: info.status,
    transferredBytes: reported(ram.transferred),
    remainingBytes: reported(ram.remaining),
    totalBytes: reported(ram.total),
    dirtyRateBps: sampleDirtyRate(ram),
    // mbps is megabits (10^6) per second.
    throughputBps: mbps === null ? null : (mbps * 1e6) / 8,
    expectedDowntimeMs: reported(info['expected-downtime']),
    cpuThrottlePercent: reported(info['cpu-throttle-percentage']),
    pass: reported(ram['dirty-sync-count']),
    xbzrle: xbzrleOf(info),
    multifdBytes: reported(ram['multifd-bytes']),
  };
}

/** A pass boundary's counters; each null when QEMU did not report it. */
interface Counters {
  transferred: number | null;
  normal: number | null;
  duplicate: number | null;
}

/** QEMU resets its counters when a migration begins: at its start they are 0, as QEMU set them. */
const COUNTERS_AT_START: Counters = { transferred: 0, normal: 0, duplicate: 0 };

function countersOf(info: MigrationInfo | null): Counters | null {
  if (!info) return null;
  if (info.ram) {
    return { transferred: reported(info.ram.transferred), normal: reported(info.ram.normal), duplicate: reported(info.ram.duplicate) };
  }
  // QEMU emits pass 1 from its setup, and query-migrate has no ram stats in `setup`: nothing has
  // been sent yet, and the counters are the ones QEMU reset when the migration began.
  if (info.status === 'setup') return COUNTERS_AT_START;
  return null;
}

/**
 * A delta between two counters, null unless both ends were reported. QEMU's counters never go
 * backwards; a restarted migration's would, and then what the pass sent is unknown, not 0.
 */
function delta(end: number | null | undefined, start: number | null | undefined): number | null {
  if (end === null || end === undefined || start === null || start === undefined || end < start) return null;
  return end - start;
}

interface OpenPass {
  pass: number;
  startMs: number;
  start: Counters | null;
}

/**
 * Builds one MigrationPass per MIGRATION_PASS event. A pass runs from its event to the next one
 * (or to the completion); its figures are the differences between the query-migrate answers
 * fetched at those two moments.
 */
/**
 * The rate the guest dirtied memory during a pass, from QEMU's answer right after the sync that
 * ended it. QEMU 7.2 updates dirty-pages-rate only when a sync comes at least a second after its
 * last update, so for a shorter pass (the rule under TCG) it shows an older period's rate, or 0.
 * The sync's dirty set does not lie: right after it, `remaining` is what the guest dirtied while
 * the pass ran (less the little sent since), so remaining / duration is that pass's rate.
 * Passes under MIN_PASS_FOR_RATE_MS keep QEMU's figure.
 */
export function passDirtyRate(info: MigrationInfo | null, durationMs: number): number | null {
  const ram = info?.ram;
  if (!ram) return null;
  const qemu = dirtyRateOf(ram);
  if (durationMs >= 1000 && qemu !== null && qemu > 0) return qemu;
  // Syncs a few ms apart (QEMU's last rounds before the switchover) make a rate of noise.
  if (durationMs < MIN_PASS_FOR_RATE_MS) return qemu;
  const remaining = reported(ram.remaining);
  return remaining === null ? null : Math.max(0, remaining) / (durationMs / 1000);
}

/** Below this, a pass is too short for its dirty set to say anything about a rate. */
const MIN_PASS_FOR_RATE_MS = 100;

export class PassTracker {
  private open: OpenPass | null = null;
  private highest: number | null = null;
  private finished = false;
  private readonly closed: MigrationPass[] = [];

  /**
   * Pass `pass` began at `atMs`, with `info` fetched then (null if the query failed). Closes the
   * pass in progress and returns it. Stale or repeated events (pass <= the highest seen) and any
   * event after finish() are ignored and return null.
   */
  onPass(pass: number, atMs: number, info: MigrationInfo | null): MigrationPass | null {
    if (this.finished || !Number.isFinite(pass)) return null;
    if (this.highest !== null && pass <= this.highest) return null;
    this.highest = pass;
    const done = this.open ? this.close(this.open, atMs, info) : null;
    // The same answer ends one pass and starts the next, so no byte is counted twice or lost.
    this.open = { pass, startMs: atMs, start: countersOf(info) };
    return done;
  }

  /** The migration ended at `atMs`; `info` is the final query-migrate. Closes the open pass. */
  finish(atMs: number, info: MigrationInfo | null): MigrationPass | null {
    if (this.finished) return null;
    this.finished = true;
    const open = this.open;
    this.open = null;
    return open ? this.close(open, atMs, info) : null;
  }

  /** Closed passes, oldest first (a copy). */
  get passes(): MigrationPass[] {
    return this.closed.slice();
  }

  /** The pass in progress, or null before the first event and after finish(). */
  get current(): number | null {
    return this.open ? this.open.pass : null;
  }

  private close(open: OpenPass, atMs: number, info: MigrationInfo | null): MigrationPass {
    const end = countersOf(info);
    const start = open.start;
    const bytes = delta(end?.transferred, start?.transferred);
    const durationMs = Math.max(0, atMs - open.startMs);
    const record: MigrationPass = {
      pass: open.pass,
      startMs: open.startMs,
      durationMs,
      bytes,
      normalPages: delta(end?.normal, start?.normal),
      zeroPages: delta(end?.duplicate, start?.duplicate),
      dirtyRateBps: passDirtyRate(info, durationMs),
      // A pass of 0 ms has no rate to speak of.
      throughputBps: bytes !== null && durationMs > 0 ? bytes / (durationMs / 1000) : null,
    };
    this.closed.push(record);
    return record;
  }
}

/** Fixed-capacity ring of samples: a long migration keeps its latest `capacity`, in O(1) per push. */
export class SampleRing {
  readonly capacity: number;
  private readonly slots: (MigrationSample | undefined)[];
  private head = 0; // index of the oldest sample
  private size = 0;

  constructor(capacity = 6000) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`SampleRing capacity must be a positive integer, got ${capacity}`);
    }
    this.capacity = capacity;
    this.slots = new Array<MigrationSample | undefined>(capacity).fill(undefined);
  }

  push(sample: MigrationSample): void {
    this.slots[(this.head + this.size) % this.capacity] = sample;
    if (this.size < this.capacity) this.size++;
    else this.head = (this.head + 1) % this.capacity; // overwrote the oldest
  }

  get length(): number {
    return this.size;
  }

  /** The newest sample, or null when empty. */
  get last(): MigrationSample | null {
    if (this.size === 0) return null;
    return this.slots[(this.head + this.size - 1) % this.capacity] ?? null;
  }

  /** Oldest first. */
  toArray(): MigrationSample[] {
    const out: MigrationSample[] = [];
    for (let i = 0; i < this.size; i++) {
      const s = this.slots[(this.head + i) % this.capacity];
      if (s) out.push(s);
    }
    return out;
  }

  clear(): void {
    this.slots.fill(undefined);
    this.head = 0;
    this.size = 0;
  }
}

/** QEMU's xbzrle-cache figures, when it reports them (xbzrle on); each must be a real number. */
function xbzrleOf(info: MigrationInfo): MigrationSample['xbzrle'] {
  const x = info['xbzrle-cache'];
  if (!x) return null;
  const bytes = reported(x.bytes);
  const cacheMissRate = reported(x['cache-miss-rate']);
  const encodingRate = reported(x['encoding-rate']);
  const overflow = reported(x.overflow);
  const cacheSize = reported(x['cache-size']);
  if (bytes === null || cacheMissRate === null || encodingRate === null || overflow === null || cacheSize === null) return null;
  return { bytes, cacheMissRate, encodingRate, overflow, cacheSize };
}
