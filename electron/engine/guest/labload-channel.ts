/**
 * The host side of labload's control channel: a line protocol over the guest's ttyS1, reached
 * through a Duplex (normally a net.Socket connected to QEMU's chardev UNIX socket).
 *
 * - Parses lines robustly: partial lines, several per chunk, a cap on line length, garbage lines
 *   (boot noise, a line cut by a reconnect) counted and ignored.
 * - Heartbeats go to 'heartbeat' listeners with the host time they arrived and into a
 *   HeartbeatStats (max gap in host and guest time, count, intervals for jitter).
 * - Tracks readiness (READY line, or a status reply with ready=1) and sends `status` on every
 *   attach so a late connection still learns it.
 * - Typed commands, each with a timeout; an ERR reply becomes an Error carrying the guest's
 *   sentence; pending calls are rejected when the stream ends or the channel is closed.
 * - attach() may be called again with a new stream (after a migration: the destination QEMU's
 *   socket). Listeners, readiness, statistics and calls still pending carry over: the guest's
 *   state (a verify in progress, say) moved with the guest. The previous stream is destroyed.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { listenToStream } from '../util/stream';
import {
  HeartbeatStats,
  MAX_GUEST_LINE,
  checkHeartbeatInterval,
  checkRate,
  checkStartArgs,
  formatCommand,
  parseGuestLine,
  toReport,
  toStartResult,
  toStatus,
  toStopResult,
  toVerifyResult,
} from './labload-protocol';
import type {
  Heartbeat,
  LabloadStatus,
  LoadReport,
  LoadStartResult,
  LoadStopResult,
  ReadyInfo,
  VerifyResult,
} from './labload-protocol';

export type { Heartbeat, ReadyInfo, LabloadStatus, LoadReport, LoadStartResult, LoadStopResult, VerifyResult };
export { HeartbeatStats } from './labload-protocol';

export type LabloadErrorKind = 'guest' | 'timeout' | 'closed' | 'detached' | 'aborted' | 'protocol' | 'args';

export class LabloadError extends Error {
  constructor(
    readonly kind: LabloadErrorKind,
    /** The command (e.g. "start 64 50"), when the error belongs to one. */
    readonly command: string | null,
    message: string,
  ) {
    super(message);
    this.name = 'LabloadError';
  }
}

export interface LabloadEvents {
  heartbeat: [Heartbeat];
  ready: [ReadyInfo];
  /** A line that is not protocol (kept short). */
  garbage: [string];
  /** A stream was attached (count of attaches so far). */
  attach: [number];
  /** The current stream ended or failed (null when it ended cleanly). */
  detach: [Error | null];
  close: [];
}

export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface LabloadChannelOptions {
  /** Default timeout of quick commands (status, stop, rate, hb, report, echo). */
  commandTimeoutMs?: number;
  /** Longest line accepted from the guest; longer ones are dropped and counted as garbage. */
  maxLineLength?: number;
  /** How many heartbeat intervals the statistics keep. */
  maxIntervals?: number;
}

export interface ChannelCounters {
  bytesIn: number;
  lines: number;
  heartbeats: number;
  garbageLines: number;
  /** Lines longer than the cap (also counted in garbageLines). */
  overlongLines: number;
  /** Replies whose id matched no pending call (late after a timeout, or not ours). */
  strayReplies: number;
  attaches: number;
}

interface Pending {
  command: string;
  resolve: (values: Record<string, string>) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  cleanup: () => void;
}

const DEFAULT_TIMEOUT_MS = 5_000;
const READY_POLL_MS = 1_000;

export class LabloadChannel extends EventEmitter<LabloadEvents> {
  /** Heartbeat statistics across every attached stream. */
  readonly heartbeats: HeartbeatStats;
  readonly counters: ChannelCounters = {
    bytesIn: 0,
    lines: 0,
    heartbeats: 0,
    garbageLines: 0,
    overlongLines: 0,
    strayReplies: 0,
    attaches: 0,
  };

  private stream: Duplex | null = null;
  private detachStream: (() => void) | null = null;
  private buf = '';
  private discarding = false;
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readyInfo: ReadyInfo | null = null;
  private readonly readyWaiters = new Set<(info: ReadyInfo) => void>();
  private closed = false;
  private readonly commandTimeoutMs: number;
  private readonly maxLine: number;

  constructor(stream?: Duplex, opts: LabloadChannelOptions = {}) {
    super();
    this.commandTimeoutMs = opts.commandTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxLine = opts.maxLineLength ?? MAX_GUEST_LINE;
    this.heartbeats = new HeartbeatStats(opts.maxIntervals);
    if (stream) this.attach(stream);
  }

  /** What the guest said in READY (or status), null until it is ready. */
  get ready(): ReadyInfo | null {
    return this.readyInfo;
  }

  get attached(): boolean {
    return this.stream !== null;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Reads from `stream` from now on. A previous stream is detached and destroyed; pending calls,
   * listeners, readiness and statistics stay. Sends `status` so a guest that became ready before
   * we connected says so.
   */
  attach(stream: Duplex): void {
    if (this.closed) throw new LabloadError('closed', null, 'labload channel is closed; make a new one');
    this.dropStream(true);
    this.stream = stream;
    this.buf = '';
    this.discarding = false;
    const onData = (chunk: Buffer | string) => this.onData(chunk);
    const onEnd = () => this.onStreamGone(stream, null);
    const onError = (err: Error) => this.onStreamGone(stream, err);
    this.detachStream = listenToStream(stream, { data: onData, end: onEnd, close: onEnd, error: onError });
    this.counters.attaches++;
    this.emit('attach', this.counters.attaches);
    this.probeStatus();
  }

  /** Stops reading the current stream (destroying it) without closing the channel. */
  detach(): void {
    this.dropStream(true);
  }

  /** Idempotent: rejects pending calls and waiters, destroys the stream. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.dropStream(true);
    this.rejectAll(new LabloadError('closed', null, 'labload channel was closed'));
    this.readyWaiters.clear();
    this.emit('close');
    this.removeAllListeners();
  }

  /**
   * Resolves with the READY info once the guest has settled. Asks `status` now and every second
   * while waiting (a line sent before labload opened its port is lost to its input flush).
   */
  waitReady(timeoutMs: number, signal?: AbortSignal): Promise<ReadyInfo> {
    if (this.readyInfo) return Promise.resolve(this.readyInfo);
    if (this.closed) return Promise.reject(new LabloadError('closed', null, 'labload channel is closed'));
    if (signal?.aborted) return Promise.reject(abortError(signal, 'waiting for READY'));
    return new Promise<ReadyInfo>((resolve, reject) => {
      const started = performance.now();
      const finish = (err: Error | null, info?: ReadyInfo) => {
        clearTimeout(timer);
        clearInterval(poll);
        signal?.removeEventListener('abort', onAbort);
        this.off('close', onClose);
        this.readyWaiters.delete(waiter);
        if (err) reject(err);
        else resolve(info!);
      };
      const waiter = (info: ReadyInfo) => finish(null, info);
      const onAbort = () => finish(abortError(signal!, 'waiting for READY'));
      const onClose = () => finish(new LabloadError('closed', null, 'labload channel closed while waiting for READY'));
      const timer = setTimeout(() => {
        const hb = this.heartbeats.count;
        const detail = !this.stream
          ? 'no stream is attached'
          : hb > 0
            ? `labload is running (${hb} heartbeats) but the guest has not settled`
            : 'no heartbeat from labload either (guest not booted, or the wrong serial port?)';
        finish(
          new LabloadError(
            'timeout',
            null,
            `guest did not report READY within ${Math.round(performance.now() - started)} ms: ${detail}`,
          ),
        );
      }, timeoutMs);
      const poll = setInterval(() => this.probeStatus(), READY_POLL_MS);
      this.readyWaiters.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.on('close', onClose);
      this.probeStatus();
    });
  }

  // ---- commands --------------------------------------------------------------------------------

  async status(opts?: CallOptions): Promise<LabloadStatus> {
    const st = toStatus(await this.command('status', [], opts));
    this.noteStatus(st);
    return st;
  }

  /** Allocates and fills the working set, then starts dirtying; resolves once the fill is done. */
  async startLoad(load: { workingSetMiB: number; rateMBps: number }, opts?: CallOptions): Promise<LoadStartResult> {
    const bad = checkStartArgs(load.workingSetMiB, load.rateMBps);
    if (bad) throw new LabloadError('args', 'start', `labload start: ${bad}`);
    // The fill runs at the guest's speed: allow generously for big working sets under TCG.
    const timeoutMs = opts?.timeoutMs ?? 20_000 + 100 * load.workingSetMiB;
    return toStartResult(await this.command('start', [load.workingSetMiB, load.rateMBps], { ...opts, timeoutMs }));
  }

  async stopLoad(opts?: CallOptions): Promise<LoadStopResult> {
    return toStopResult(await this.command('stop', [], opts));
  }

  async setRate(rateMBps: number, opts?: CallOptions): Promise<number> {
    const bad = checkRate(rateMBps);
    if (bad) throw new LabloadError('args', 'rate', `labload rate: ${bad}`);
    const v = await this.command('rate', [rateMBps], opts);
    return Number(v.rateMBps);
  }

  async setHeartbeatInterval(intervalMs: number, opts?: CallOptions): Promise<number> {
    const bad = checkHeartbeatInterval(intervalMs);
    if (bad) throw new LabloadError('args', 'hb', `labload hb: ${bad}`);
    const v = await this.command('hb', [intervalMs], opts);
    return Number(v.hbIntervalMs);
  }

  /** Walks the working set (dirtying pauses meanwhile); resolves with the page check. */
  async verify(opts?: CallOptions): Promise<VerifyResult> {
    const timeoutMs = opts?.timeoutMs ?? 120_000;
    return toVerifyResult(await this.command('verify', [], { ...opts, timeoutMs }));
  }

  async report(opts?: CallOptions): Promise<LoadReport> {
    return toReport(await this.command('report', [], opts));
  }

  async echo(token: string, opts?: CallOptions): Promise<string> {
    const v = await this.command('echo', [token], opts);
    if (v.token !== token) {
      throw new LabloadError('protocol', `echo ${token}`, `labload echo returned ${JSON.stringify(v.token)} for ${JSON.stringify(token)}`);
    }
    return v.token;
  }

  /**
   * Test aid: damages one page of the working set on purpose ('flip' a bit, or make it 'stale':
   * a consistent page from another sweep), so a check can prove that verify catches it.
   */
  async corruptPage(page: number, how: 'flip' | 'stale' = 'flip', opts?: CallOptions): Promise<void> {
    if (!Number.isInteger(page) || page < 0) throw new LabloadError('args', 'corrupt', `labload corrupt: bad page index ${page}`);
    await this.command('corrupt', [page, how], opts);
  }

  /** Sends one command and resolves with the key=value pairs of its OK reply. */
  command(cmd: string, args: ReadonlyArray<string | number> = [], opts: CallOptions = {}): Promise<Record<string, string>> {
    const id = String(this.nextId++);
    let line: string;
    try {
      line = formatCommand(id, cmd, args);
    } catch (err) {
      return Promise.reject(new LabloadError('args', cmd, (err as Error).message));
    }
    const command = line.slice(id.length + 1, -1);
    if (this.closed) return Promise.reject(new LabloadError('closed', command, `labload ${command}: the channel is closed`));
    if (!this.stream) {
      return Promise.reject(new LabloadError('detached', command, `labload ${command}: no serial stream is attached`));
    }
    const signal = opts.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal, `labload ${command}`));
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<Record<string, string>>((resolve, reject) => {
      const onAbort = () => {
        this.settle(id)?.reject(abortError(signal!, `labload ${command}`));
      };
      const timer = setTimeout(() => {
        this.settle(id)?.reject(
          new LabloadError('timeout', command, `labload ${command}: no reply within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      this.pending.set(id, { command, resolve, reject, timer, cleanup });
      signal?.addEventListener('abort', onAbort, { once: true });
      this.stream!.write(line);
    });
  }

  // ---- internals -------------------------------------------------------------------------------

  private settle(id: string): Pending | undefined {
    const p = this.pending.get(id);
    if (!p) return undefined;
    this.pending.delete(id);
    p.cleanup();
    return p;
  }

  private rejectAll(err: LabloadError): void {
    for (const id of [...this.pending.keys()]) {
      const p = this.settle(id)!;
      p.reject(new LabloadError(err.kind, p.command, `labload ${p.command}: ${err.message}`));
    }
  }

  private probeStatus(): void {
    if (!this.stream || this.closed || this.readyInfo) return;
    this.status({ timeoutMs: 3_000 }).catch(() => {
      /* a probe lost to the guest's input flush or a reconnect: the next one will do */
    });
  }

  private noteStatus(st: LabloadStatus): void {
    if (st.ready && !this.readyInfo) this.setReady({ name: st.name, ip: st.ip, version: st.version });
  }

  private setReady(info: ReadyInfo): void {
    const first = !this.readyInfo;
    // A READY line carries more (bootUs, settle) than a status reply: keep the richer one.
    if (first || info.bootUs !== undefined) this.readyInfo = info;
    if (!first) return;
    this.emit('ready', info);
    for (const w of [...this.readyWaiters]) w(info);
  }

  private dropStream(destroy: boolean): void {
    const s = this.stream;
    if (!s) return;
    this.detachStream?.();
    this.detachStream = null;
    this.stream = null;
    this.buf = '';
    if (destroy) s.destroy();
  }

  private onStreamGone(stream: Duplex, err: Error | null): void {
    if (this.stream !== stream) return;
    this.dropStream(false);
    const why = err ? `the serial stream failed (${err.message})` : 'the serial stream closed before the reply';
    this.rejectAll(new LabloadError('detached', null, why));
    this.emit('detach', err);
  }

  private onData(chunk: Buffer | string): void {
    const text = typeof chunk === 'string' ? chunk : chunk.toString('latin1');
    this.counters.bytesIn += text.length;
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl < 0) break;
      const piece = text.slice(start, nl);
      start = nl + 1;
      if (this.discarding) {
        this.discarding = false;
        this.buf = '';
        continue;
      }
      const line = this.buf + piece;
      this.buf = '';
      if (line.length > this.maxLine) {
        this.counters.overlongLines++;
        this.counters.garbageLines++;
        continue;
      }
      this.onLine(line);
    }
    if (start < text.length && !this.discarding) {
      this.buf += text.slice(start);
      if (this.buf.length > this.maxLine) {
        // Too long already: drop it and everything up to the next newline.
        this.buf = '';
        this.discarding = true;
        this.counters.overlongLines++;
        this.counters.garbageLines++;
      }
    }
  }

  private onLine(line: string): void {
    if (line === '' || line === '\r') return;
    this.counters.lines++;
    const msg = parseGuestLine(line);
    if (!msg) {
      this.counters.garbageLines++;
      this.emit('garbage', line.length > 200 ? `${line.slice(0, 200)}...` : line);
      return;
    }
    switch (msg.kind) {
      case 'hb': {
        const hb: Heartbeat = { seq: msg.seq, guestUs: msg.guestUs, hostMs: performance.now() };
        this.counters.heartbeats++;
        this.heartbeats.add(hb);
        this.emit('heartbeat', hb);
        return;
      }
      case 'ready':
        this.setReady(msg.info);
        return;
      case 'reply': {
        const p = this.settle(msg.id);
        if (!p) {
          this.counters.strayReplies++;
          return;
        }
        if (msg.ok) p.resolve(msg.values);
        else p.reject(new LabloadError('guest', p.command, `labload ${p.command}: ${msg.message}`));
        return;
      }
    }
  }
}

function abortError(signal: AbortSignal, what: string): LabloadError {
  const reason = signal.reason instanceof Error ? `: ${signal.reason.message}` : '';
  return new LabloadError('aborted', null, `${what} was aborted${reason}`);
}
