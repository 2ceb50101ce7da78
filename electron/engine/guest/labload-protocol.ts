/**
 * labload's control protocol, host side: parsing what the guest says and formatting commands.
 *
 * The wire (ASCII lines ending in '\n', on the guest's second serial port, ttyS1):
 *
 *   guest -> host
 *     HB <seq> <monotonic_us>                                heartbeat, every hbIntervalMs (10 ms)
 *     READY name=<name> ip=<ip|-> version=<v> [bootUs=<us> settle=quiet|timeout]
 *                                                            once, when boot has settled
 *     R <id> OK [key=value ...]                              a command succeeded
 *     R <id> ERR <message>                                   a command failed (a sentence)
 *   host -> guest
 *     <id> <command> [args]
 *
 * Commands: status | start <workingSetMiB> <rateMBps> | stop | rate <MBps> | hb <intervalMs>
 *           | verify | report | echo <token> | corrupt <page> [flip|stale] (test aid)
 *
 * Units: MB = 10^6 bytes, MiB = 2^20 bytes; a rate of 0 means "as fast as the guest can".
 * `start` and `verify` reply only when done (the initial fill of the working set, the walk over
 * it); heartbeats keep flowing meanwhile. Pure functions only: no I/O here.
 */

/** Version of the in-guest program; compiled into labload and reported in READY and status. */
export const LABLOAD_VERSION = '1.0.0';

/** Longest line the host accepts from the guest; longer ones are dropped as garbage. */
export const MAX_GUEST_LINE = 4096;
/** Longest command line the guest accepts (its buffer is 256 characters). */
export const MAX_COMMAND_LINE = 250;

export interface Heartbeat {
  seq: number;
  /** Guest CLOCK_MONOTONIC in microseconds. */
  guestUs: number;
  /** Host performance.now() when the line was parsed. */
  hostMs: number;
}

export interface ReadyInfo {
  name: string;
  /** The guest's address with prefix (a.b.c.d/nn), or null when it has none. */
  ip: string | null;
  version: string;
  /** Guest monotonic time (since kernel start) when it declared itself ready, if reported. */
  bootUs?: number;
  /** How boot was judged settled: 'quiet' (kernel log quiet) or 'timeout' (gave up waiting). */
  settle?: string;
}

export type GuestLine =
  | { kind: 'hb'; seq: number; guestUs: number }
  | { kind: 'ready'; info: ReadyInfo }
  | { kind: 'reply'; id: string; ok: true; values: Record<string, string> }
  | { kind: 'reply'; id: string; ok: false; message: string };

export interface LabloadStatus {
  ready: boolean;
  name: string;
  ip: string | null;
  version: string;
  loadRunning: boolean;
  wsMiB: number;
  rateMBps: number;
  hbIntervalMs: number;
  filling: boolean;
  verifying: boolean;
  uptimeUs: number;
  hbDropped: number;
}

export interface LoadStartResult {
  wsMiB: number;
  pages: number;
  rateMBps: number;
  /** How long the guest took to allocate and fill the working set (sweep 0). */
  fillUs: number;
}

export interface LoadStopResult {
  wasRunning: boolean;
  dirtiedBytes: number;
  sweeps: number;
}

export interface VerifyResult {
  pages: number;
  bad: number;
  /** Index of the first bad page, -1 when none. */
  firstBad: number;
  /** Counters seen in memory form one valid sweep (all c or c+1, one boundary, in order). */
  sweepOk: boolean;
  counterMin: number;
  counterMax: number;
  /** Sweep position: pages before it carry counter sweep+1, the rest sweep. */
  boundary: number;
  sweep: number;
  verifyUs: number;
}

export interface LoadReport {
  running: boolean;
  dirtiedBytes: number;
  /** Guest monotonic microseconds since the load started (until stop, if stopped). */
  elapsedUs: number;
  /** Dirty rate over the last window (about 1 s) of guest time, MB/s. 0 when not running. */
  measuredMBps: number;
  windowUs: number;
  /** Dirty rate since start, MB/s of guest time. */
  avgMBps: number;
  /** Completed sweeps over the whole working set (the initial fill not counted). */
  sweeps: number;
  pos: number;
  pages: number;
  rateMBps: number;
}

const ID_RE = /^[A-Za-z0-9_.:-]{1,32}$/;
const TOKEN_RE = /^[\x21-\x7e]{1,100}$/;

/** Parses one line from the guest (without its '\n'); null for anything that is not protocol. */
export function parseGuestLine(raw: string): GuestLine | null {
  const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
  if (line.startsWith('HB ')) {
    const m = /^HB (\d{1,15}) (\d{1,18})$/.exec(line);
    if (!m) return null;
    return { kind: 'hb', seq: Number(m[1]), guestUs: Number(m[2]) };
  }
  if (line.startsWith('R ')) {
    const m = /^R (\S+) (OK|ERR)(?: (.*))?$/.exec(line);
    if (!m) return null;
    const id = m[1]!;
    const rest = m[3] ?? '';
    if (m[2] === 'ERR') return { kind: 'reply', id, ok: false, message: rest.trim() || 'unspecified error' };
    const values = parseKeyValues(rest);
    if (!values) return null;
    return { kind: 'reply', id, ok: true, values };
  }
  if (line.startsWith('READY ')) {
    const values = parseKeyValues(line.slice(6));
    if (!values || values.name === undefined || values.version === undefined) return null;
    const info: ReadyInfo = {
      name: values.name,
      ip: values.ip && values.ip !== '-' ? values.ip : null,
      version: values.version,
    };
    if (values.bootUs !== undefined && /^\d+$/.test(values.bootUs)) info.bootUs = Number(values.bootUs);
    if (values.settle !== undefined) info.settle = values.settle;
    return { kind: 'ready', info };
  }
  return null;
}

/** `a=1 b=x` -> {a:'1', b:'x'}; null if a token is not key=value. */
export function parseKeyValues(text: string): Record<string, string> | null {
  const out: Record<string, string> = {};
  for (const tok of text.split(' ')) {
    if (!tok) continue;
    const eq = tok.indexOf('=');
    if (eq <= 0) return null;
    out[tok.slice(0, eq)] = tok.slice(eq + 1);
  }
  return out;
}

/** Builds a command line (with '\n'); throws on ids or arguments that would break the framing. */
export function formatCommand(id: string, cmd: string, args: ReadonlyArray<string | number> = []): string {
  if (!ID_RE.test(id)) throw new Error(`labload command id ${JSON.stringify(id)} is not 1-32 of [A-Za-z0-9_.:-]`);
  if (!/^[a-z]{1,16}$/.test(cmd)) throw new Error(`labload command ${JSON.stringify(cmd)} is not a lowercase word`);
  const parts = [id, cmd];
  for (const a of args) {
    const s = typeof a === 'number' ? formatNumber(a) : a;
    if (!TOKEN_RE.test(s)) {
      throw new Error(`labload argument ${JSON.stringify(s)} must be 1-100 printable characters without spaces`);
    }
    parts.push(s);
  }
  const line = parts.join(' ');
  if (line.length > MAX_COMMAND_LINE) throw new Error(`labload command is longer than ${MAX_COMMAND_LINE} characters`);
  return `${line}\n`;
}

function formatNumber(n: number): string {
  if (!Number.isFinite(n)) throw new Error(`labload argument ${n} is not a finite number`);
  // No exponent notation: the guest parses plain decimals.
  return Number.isInteger(n) ? String(n) : n.toFixed(6).replace(/0+$/, '').replace(/\.$/, '');
}

/** Checks the arguments of `start`; returns a sentence when they are wrong. */
export function checkStartArgs(workingSetMiB: number, rateMBps: number): string | null {
  if (!Number.isInteger(workingSetMiB) || workingSetMiB < 1 || workingSetMiB > 1_048_576) {
    return `working set must be a whole number of MiB between 1 and 1048576, got ${workingSetMiB}`;
  }
  if (!Number.isFinite(rateMBps) || rateMBps < 0) return `rate must be >= 0 MB/s (0 = as fast as possible), got ${rateMBps}`;
  return null;
}

export function checkRate(rateMBps: number): string | null {
  if (!Number.isFinite(rateMBps) || rateMBps < 0) return `rate must be >= 0 MB/s (0 = as fast as possible), got ${rateMBps}`;
  return null;
}

export function checkHeartbeatInterval(ms: number): string | null {
  if (!Number.isFinite(ms) || (ms !== 0 && (ms < 1 || ms > 60_000))) {
    return `heartbeat interval must be 0 (off) or between 1 and 60000 ms, got ${ms}`;
  }
  return null;
}

// ---- typed views of OK replies ----------------------------------------------------------------

function num(values: Record<string, string>, key: string, what: string): number {
  const v = values[key];
  if (v === undefined) throw new Error(`labload ${what} reply has no ${key}`);
  const n = Number(v);
  if (v === '' || !Number.isFinite(n)) throw new Error(`labload ${what} reply has a bad ${key}=${v}`);
  return n;
}

function flag(values: Record<string, string>, key: string, what: string): boolean {
  return num(values, key, what) !== 0;
}

function str(values: Record<string, string>, key: string, what: string): string {
  const v = values[key];
  if (v === undefined) throw new Error(`labload ${what} reply has no ${key}`);
  return v;
}

export function toStatus(v: Record<string, string>): LabloadStatus {
  const ip = str(v, 'ip', 'status');
  return {
    ready: flag(v, 'ready', 'status'),
    name: str(v, 'name', 'status'),
    ip: ip === '-' ? null : ip,
    version: str(v, 'version', 'status'),
    loadRunning: flag(v, 'loadRunning', 'status'),
    wsMiB: num(v, 'wsMiB', 'status'),
    rateMBps: num(v, 'rateMBps', 'status'),
    hbIntervalMs: num(v, 'hbIntervalMs', 'status'),
    filling: v.filling !== undefined ? flag(v, 'filling', 'status') : false,
    verifying: v.verifying !== undefined ? flag(v, 'verifying', 'status') : false,
    uptimeUs: v.uptimeUs !== undefined ? num(v, 'uptimeUs', 'status') : 0,
    hbDropped: v.hbDropped !== undefined ? num(v, 'hbDropped', 'status') : 0,
  };
}

export function toStartResult(v: Record<string, string>): LoadStartResult {
  return {
    wsMiB: num(v, 'wsMiB', 'start'),
    pages: num(v, 'pages', 'start'),
    rateMBps: num(v, 'rateMBps', 'start'),
    fillUs: num(v, 'fillUs', 'start'),
  };
}

export function toStopResult(v: Record<string, string>): LoadStopResult {
  return {
    wasRunning: flag(v, 'wasRunning', 'stop'),
    dirtiedBytes: num(v, 'dirtiedBytes', 'stop'),
    sweeps: num(v, 'sweeps', 'stop'),
  };
}

export function toVerifyResult(v: Record<string, string>): VerifyResult {
  return {
    pages: num(v, 'pages', 'verify'),
    bad: num(v, 'bad', 'verify'),
    firstBad: num(v, 'firstBad', 'verify'),
    sweepOk: flag(v, 'sweepOk', 'verify'),
    counterMin: num(v, 'counterMin', 'verify'),
    counterMax: num(v, 'counterMax', 'verify'),
    boundary: num(v, 'boundary', 'verify'),
    sweep: num(v, 'sweep', 'verify'),
    verifyUs: num(v, 'verifyUs', 'verify'),
  };
}

export function toReport(v: Record<string, string>): LoadReport {
  return {
    running: flag(v, 'running', 'report'),
    dirtiedBytes: num(v, 'dirtiedBytes', 'report'),
    elapsedUs: num(v, 'elapsedUs', 'report'),
    measuredMBps: num(v, 'measuredMBps', 'report'),
    windowUs: num(v, 'windowUs', 'report'),
    avgMBps: num(v, 'avgMBps', 'report'),
    sweeps: num(v, 'sweeps', 'report'),
    pos: num(v, 'pos', 'report'),
    pages: num(v, 'pages', 'report'),
    rateMBps: num(v, 'rateMBps', 'report'),
  };
}

// ---- heartbeat statistics -----------------------------------------------------------------------

export interface HeartbeatStatsSummary {
  count: number;
  /** Largest host-time gap between consecutive heartbeats, ms (0 with fewer than two). */
  maxHostGapMs: number;
  /** Largest guest-time gap between consecutive heartbeats, ms. */
  maxGuestGapMs: number;
  meanHostIntervalMs: number;
  /** Mean interval between heartbeats on the guest's own clock, ms (0 with fewer than two). */
  meanGuestIntervalMs: number;
  /** Standard deviation of the host-time intervals (jitter), ms. */
  jitterMs: number;
  /** Heartbeats missing by sequence number (the guest skipped or the line was lost). */
  missed: number;
  first: Heartbeat | null;
  last: Heartbeat | null;
}

/**
 * Accumulates heartbeats: gaps in host and guest time, counts, and the host-time intervals
 * (about the last `maxIntervals`, oldest dropped) for jitter plots.
 */
export class HeartbeatStats {
  count = 0;
  maxHostGapMs = 0;
  maxGuestGapMs = 0;
  missed = 0;
  first: Heartbeat | null = null;
  last: Heartbeat | null = null;
  /** Host-time intervals between consecutive heartbeats, ms, oldest first. */
  readonly intervals: number[] = [];
  private sum = 0;
  private sumSq = 0;
  private n = 0;

  constructor(private readonly maxIntervals = 20_000) {}

  add(hb: Heartbeat): void {
    const prev = this.last;
    this.count++;
    if (!this.first) this.first = hb;
    this.last = hb;
    if (!prev) return;
    const hostGap = hb.hostMs - prev.hostMs;
    const guestGap = (hb.guestUs - prev.guestUs) / 1000;
    if (hostGap > this.maxHostGapMs) this.maxHostGapMs = hostGap;
    if (guestGap > this.maxGuestGapMs) this.maxGuestGapMs = guestGap;
    if (hb.seq > prev.seq + 1) this.missed += hb.seq - prev.seq - 1;
    this.intervals.push(hostGap);
    // Trim in batches so a long run does not pay for a shift on every heartbeat.
    if (this.intervals.length > this.maxIntervals + Math.ceil(this.maxIntervals / 8)) {
      this.intervals.splice(0, this.intervals.length - this.maxIntervals);
    }
    this.sum += hostGap;
    this.sumSq += hostGap * hostGap;
    this.n++;
  }

  reset(): void {
    this.count = 0;
    this.maxHostGapMs = 0;
    this.maxGuestGapMs = 0;
    this.missed = 0;
    this.first = null;
    this.last = null;
    this.intervals.length = 0;
    this.sum = 0;
    this.sumSq = 0;
    this.n = 0;
  }

  summary(): HeartbeatStatsSummary {
    const mean = this.n ? this.sum / this.n : 0;
    const variance = this.n ? Math.max(0, this.sumSq / this.n - mean * mean) : 0;
    return {
      count: this.count,
      maxHostGapMs: this.maxHostGapMs,
      maxGuestGapMs: this.maxGuestGapMs,
      meanHostIntervalMs: mean,
      meanGuestIntervalMs:
        this.first && this.last && this.count > 1 ? (this.last.guestUs - this.first.guestUs) / 1000 / (this.count - 1) : 0,
      jitterMs: Math.sqrt(variance),
      missed: this.missed,
      first: this.first,
      last: this.last,
    };
  }
}
