// QMP client: greeting + capabilities negotiation, id-matched command replies, and
// event delivery on top of the generic JSON line protocol.
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  QmpCommandError,
  QmpConnectError,
  QmpDisconnectedError,
  QmpError,
  QmpProtocolError,
  QmpStateError,
  QmpTimeoutError,
} from './errors';
import { JsonLineProtocol } from './protocol';
import type { JsonObject, Runstate } from './protocol';
import type { QmpEvent, QmpGreeting, QmpTimestamp } from './types';

export interface QmpClientOptions {
  /** Cap on one incoming message; default 8 MiB. */
  maxMessageBytes?: number;
  /** Timeout for commands, event waits and negotiation unless given per call; default 10 s. */
  defaultTimeoutMs?: number;
  /** Label for error messages and warnings, e.g. "source" or "destination". */
  name?: string;
}

export interface QmpConnectOptions {
  /** Bound on each socket connect attempt and on the greeting + qmp_capabilities exchange. */
  timeoutMs?: number;
  /**
   * Keep retrying ENOENT/ECONNREFUSED for this many ms from the call (QEMU creates
   * its socket a moment after spawn). Default 0: one attempt.
   */
  retryUntilMs?: number;
}

export interface QmpAttachOptions {
  /** Bound on the greeting + qmp_capabilities exchange. */
  timeoutMs?: number;
}

export interface QmpExecuteOptions {
  /** 0 or Infinity: no timeout. */
  timeoutMs?: number;
  /** Aborting rejects the call with signal.reason; a reply arriving later is ignored. */
  signal?: AbortSignal;
}

export interface QmpWaitOptions {
  predicate?: (ev: QmpEvent) => boolean;
  /** 0 or Infinity: no timeout. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export type QmpEventListener = (ev: QmpEvent) => void;
export type QmpDisconnectListener = (cause: Error | undefined) => void;

interface PendingCall {
  command: string;
  args: Record<string, unknown> | undefined;
  resolve(value: unknown): void;
  reject(err: unknown): void;
  cleanup(): void;
}

interface EventWaiter {
  name: string;
  predicate: ((ev: QmpEvent) => boolean) | undefined;
  resolve(ev: QmpEvent): void;
  reject(err: unknown): void;
  cleanup(): void;
}

interface GreetingWaiter {
  resolve(greeting: QmpGreeting): void;
  reject(err: unknown): void;
}

const DEFAULT_TIMEOUT_MS = 10_000;
// setTimeout fires at once for delays past 2^31-1 ms; treat those as "no timeout".
const MAX_TIMER_MS = 2_147_483_647;

function hasTimeout(ms: number): boolean {
  return Number.isFinite(ms) && ms > 0 && ms <= MAX_TIMER_MS;
}

function isObject(value: unknown): value is JsonObject {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function describe(message: JsonObject): string {
  let text: string;
  try {
    text = JSON.stringify(message);
  } catch {
    text = String(message);
  }
  return text.length > 120 ? `${text.slice(0, 120)}…` : text;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('The operation was aborted', 'AbortError');
}

/**
 * QEMU keeps a monitor's unsent output when its client goes away, and the next client reads it
 * ahead of its greeting: an engine killed mid-migration leaves a MIGRATION event for the engine
 * that adopts its QEMU (seen in test/integration/migration-recovery.test.ts). Those events belong
 * to the old connection and are dropped; more than a few make the peer a broken one.
 */
const MAX_EVENTS_BEFORE_GREETING = 16;

function parseGreeting(message: JsonObject): QmpGreeting {
  const qmp = message.QMP;
  const version = isObject(qmp) ? qmp.version : undefined;
  const triple = isObject(version) ? version.qemu : undefined;
  if (
    !isObject(qmp) ||
    !isObject(version) ||
    !isObject(triple) ||
    typeof triple.major !== 'number' ||
    typeof triple.minor !== 'number' ||
    typeof triple.micro !== 'number' ||
    !Array.isArray(qmp.capabilities)
  ) {
    throw new QmpProtocolError(`Expected a QMP greeting, got: ${describe(message)}`);
  }
  return message as unknown as QmpGreeting;
}

function parseTimestamp(value: unknown): QmpTimestamp {
  if (isObject(value) && typeof value.seconds === 'number' && typeof value.microseconds === 'number') {
    return { seconds: value.seconds, microseconds: value.microseconds };
  }
  // QEMU always sends one; -1 marks "peer did not say" without failing the connection.
  return { seconds: -1, microseconds: -1 };
}

export class QmpClient {
  readonly name: string | undefined;
  readonly defaultTimeoutMs: number;
  readonly #proto: JsonLineProtocol;
  readonly #pending = new Map<string, PendingCall>();
  readonly #waiters = new Set<EventWaiter>();
  readonly #listeners = new Map<string, Set<QmpEventListener>>();
  readonly #disconnectListeners = new Set<QmpDisconnectListener>();
  #greeting: QmpGreeting | undefined;
  #greetingWaiter: GreetingWaiter | undefined;
  /** Events skipped while waiting for this connection's greeting (see MAX_EVENTS_BEFORE_GREETING). */
  #eventsBeforeGreeting = 0;
  #nextId = 0;

  constructor(opts: QmpClientOptions = {}) {
    this.name = opts.name;
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#proto = new JsonLineProtocol(
      {
        onMessage: (message) => this.#onMessage(message),
        onClosed: (cause, wasRunning) => this.#onClosed(cause, wasRunning),
      },
      { maxMessageBytes: opts.maxMessageBytes, label: this.#label() },
    );
  }

  get runstate(): Runstate {
    return this.#proto.runstate;
  }

  /** Greeting of the current connection; undefined when not connected. */
  get greeting(): QmpGreeting | undefined {
    return this.#greeting;
  }

  /** Commands sent and still awaiting a reply. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /** Connects to QEMU's QMP UNIX socket and negotiates capabilities. */
  async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpGreeting> {
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const signal = this.#proto.begin();
    let socket: net.Socket;
    try {
      socket = await dialUnixSocket(path, { retryUntilMs: opts.retryUntilMs ?? 0, timeoutMs, signal });
    } catch (err) {
      if (!signal.aborted) await this.#proto.disconnect();
      throw err;
    }
    return this.#negotiate(socket, signal, timeoutMs);
  }

  /** Same negotiation on a stream the caller already has; the client owns it from now on. */
  async attach(stream: Duplex, opts: QmpAttachOptions = {}): Promise<QmpGreeting> {
    const signal = this.#proto.begin();
    return this.#negotiate(stream, signal, opts.timeoutMs ?? this.defaultTimeoutMs);
  }

  /** Runs one QMP command and resolves with its "return" value. */
  async execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    opts: QmpExecuteOptions = {},
  ): Promise<T> {
    const state = this.runstate;
    if (state !== 'running') {
      throw new QmpStateError(`Cannot execute QMP command "${command}": the client is ${state}, not running`, state, {
        command,
      });
    }
    return (await this.#call(command, args, opts)) as T;
  }

  /** Subscribes to one event name, or to all with '*'. Returns the unsubscribe function. */
  onEvent(name: string, listener: QmpEventListener): () => void {
    let set = this.#listeners.get(name);
    if (!set) {
      set = new Set();
      this.#listeners.set(name, set);
    }
    set.add(listener);
    return () => {
      const current = this.#listeners.get(name);
      current?.delete(listener);
      if (current && current.size === 0) this.#listeners.delete(name);
    };
  }

  /**
   * Resolves with the next matching event. Registration happens synchronously, so
   * an event QEMU sends before the reply of a command executed right after this
   * call is not missed. Rejects on timeout, abort, or disconnect.
   */
  waitForEvent(name: string, opts: QmpWaitOptions = {}): Promise<QmpEvent> {
    const state = this.runstate;
    if (state === 'idle' || state === 'disconnecting') {
      return Promise.reject(
        new QmpStateError(`Cannot wait for QMP event "${name}": the client is ${state}`, state),
      );
    }
    const { signal, predicate } = opts;
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;

    return new Promise<QmpEvent>((resolve, reject) => {
      const timer = hasTimeout(timeoutMs)
        ? setTimeout(() => {
            if (this.#waiters.delete(waiter)) {
              cleanup();
              reject(new QmpTimeoutError(timeoutMs, { event: name }));
            }
          }, timeoutMs)
        : undefined;
      const onAbort = (): void => {
        if (this.#waiters.delete(waiter)) {
          cleanup();
          reject(abortReason(signal!));
        }
      };
      const cleanup = (): void => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const waiter: EventWaiter = { name, predicate, resolve, reject, cleanup };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.add(waiter);
    });
  }

  /**
   * Executes a command and waits for an event it causes (e.g. "stop" -> STOP). The
   * wait is registered before the command is sent.
   */
  async executeAndWaitEvent<T = unknown>(
    command: string,
    args: Record<string, unknown> | undefined,
    eventName: string,
    predicate?: (ev: QmpEvent) => boolean,
    opts: QmpExecuteOptions = {},
  ): Promise<{ result: T; event: QmpEvent }> {
    const cancel = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, cancel.signal]) : cancel.signal;
    const waiting = this.waitForEvent(eventName, { predicate, timeoutMs: opts.timeoutMs, signal });
    // If execute fails we abandon the wait; keep its rejection from going unhandled.
    waiting.catch(() => {});
    let result: T;
    try {
      result = await this.execute<T>(command, args, opts);
    } catch (err) {
      cancel.abort(err);
      throw err;
    }
    return { result, event: await waiting };
  }

  /** Closes the connection. Idempotent; concurrent calls share one promise. */
  disconnect(): Promise<void> {
    return this.#proto.disconnect();
  }

  /** Called once per connection that reached 'running', with the cause (undefined if asked for). */
  onDisconnect(listener: QmpDisconnectListener): () => void {
    this.#disconnectListeners.add(listener);
    return () => {
      this.#disconnectListeners.delete(listener);
    };
  }

  #label(): string {
    return this.name ? `QMP connection "${this.name}"` : 'QMP connection';
  }

  async #negotiate(stream: Duplex, signal: AbortSignal, timeoutMs: number): Promise<QmpGreeting> {
    const started = performance.now();
    try {
      const greeting = new Promise<QmpGreeting>((resolve, reject) => {
        this.#greetingWaiter = { resolve, reject };
        this.#eventsBeforeGreeting = 0;
      });
      this.#proto.attach(stream, signal);
      await this.#withTimeout(greeting, timeoutMs, () => new QmpTimeoutError(timeoutMs, { what: 'the QMP greeting' }));
      const left = hasTimeout(timeoutMs) ? Math.max(1, timeoutMs - (performance.now() - started)) : 0;
      await this.#call('qmp_capabilities', undefined, { timeoutMs: left });
      this.#proto.markRunning(signal);
      return this.#greeting!;
    } catch (err) {
      this.#greetingWaiter = undefined;
      // Torn down under us (bad bytes, EOF, disconnect()): report that cause, not the
      // knock-on failure it caused here (e.g. "cannot send while disconnecting").
      if (signal.aborted) throw signal.reason ?? err;
      await this.#proto.disconnect(err instanceof Error ? err : undefined);
      throw err;
    }
  }

  #withTimeout<T>(promise: Promise<T>, timeoutMs: number, makeError: () => Error): Promise<T> {
    if (!hasTimeout(timeoutMs)) return promise;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(makeError()), timeoutMs);
      promise.then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  #call(command: string, args: Record<string, unknown> | undefined, opts: QmpExecuteOptions): Promise<unknown> {
    if (typeof command !== 'string' || command === '') {
      return Promise.reject(new TypeError('QMP command name must be a non-empty string'));
    }
    if (args !== undefined && !isObject(args)) {
      return Promise.reject(new TypeError(`Arguments for QMP command "${command}" must be a plain object`));
    }
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const id = `__qmp#${String(++this.#nextId).padStart(5, '0')}`;
    const message: JsonObject = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };

    return new Promise<unknown>((resolve, reject) => {
      // Only the path that removes the entry from #pending may settle the promise.
      const settleWith = (err: unknown): void => {
        if (this.#pending.get(id) === entry) {
          this.#pending.delete(id);
          cleanup();
          reject(err);
        }
      };
      const timer = hasTimeout(timeoutMs)
        ? setTimeout(() => settleWith(new QmpTimeoutError(timeoutMs, { command })), timeoutMs)
        : undefined;
      const onAbort = (): void => settleWith(abortReason(signal!));
      const cleanup = (): void => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const entry: PendingCall = { command, args, resolve, reject, cleanup };
      this.#pending.set(id, entry);
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        this.#proto.send(message);
      } catch (err) {
        settleWith(
          err instanceof QmpError
            ? err
            : new QmpError(`Could not send QMP command "${command}": ${(err as Error).message}`, {
                command,
                cause: err,
              }),
        );
      }
    });
  }

  // Throwing here (QmpProtocolError) makes the protocol tear the connection down.
  #onMessage(message: JsonObject): void {
    if (this.#greetingWaiter) {
      if ('event' in message && !('QMP' in message) && this.#eventsBeforeGreeting < MAX_EVENTS_BEFORE_GREETING) {
        this.#eventsBeforeGreeting++;
        return;
      }
      const greeting = parseGreeting(message);
      const waiter = this.#greetingWaiter;
      this.#greetingWaiter = undefined;
      this.#greeting = greeting;
      waiter.resolve(greeting);
      return;
    }
    if ('event' in message) {
      this.#onEventMessage(message);
      return;
    }
    if ('id' in message) {
      this.#onReply(message);
      return;
    }
    if ('QMP' in message) throw new QmpProtocolError('QMP peer sent a second greeting');
    if ('error' in message) {
      // QEMU drops the id when it cannot parse a command; nothing can be matched any more.
      throw new QmpProtocolError(`QMP peer reported an error for no command id: ${describe(message)}`);
    }
    throw new QmpProtocolError(`QMP peer sent a message that is neither a reply nor an event: ${describe(message)}`);
  }

  #onReply(message: JsonObject): void {
    const hasReturn = 'return' in message;
    const hasError = 'error' in message;
    if (hasReturn === hasError) {
      throw new QmpProtocolError(`QMP reply must have exactly one of "return" and "error": ${describe(message)}`);
    }
    let errorClass = '';
    let desc = '';
    if (hasError) {
      const error = message.error;
      if (!isObject(error) || typeof error.class !== 'string' || typeof error.desc !== 'string') {
        throw new QmpProtocolError(`QMP error reply is malformed: ${describe(message)}`);
      }
      errorClass = error.class;
      desc = error.desc;
    }
    const id = message.id;
    const entry = typeof id === 'string' ? this.#pending.get(id) : undefined;
    // Late reply to a call that already timed out or was aborted: nothing to do.
    if (!entry || typeof id !== 'string') return;
    this.#pending.delete(id);
    entry.cleanup();
    if (hasError) entry.reject(new QmpCommandError(entry.command, entry.args, errorClass, desc));
    else entry.resolve(message.return);
  }

  #onEventMessage(message: JsonObject): void {
    const name = message.event;
    if (typeof name !== 'string' || name === '') {
      throw new QmpProtocolError(`QMP event has no valid name: ${describe(message)}`);
    }
    const data = message.data ?? {};
    if (!isObject(data)) throw new QmpProtocolError(`QMP event "${name}" has non-object data: ${describe(message)}`);
    const ev: QmpEvent = {
      event: name,
      data,
      timestamp: parseTimestamp(message.timestamp),
      receivedAt: performance.now(),
    };
    for (const key of [name, '*']) {
      const set = this.#listeners.get(key);
      if (!set) continue;
      for (const listener of [...set]) {
        try {
          listener(ev);
        } catch (err) {
          // A broken listener must not take the connection (or the process) down.
          process.emitWarning(`${this.#label()}: listener for event ${name} threw: ${String(err)}`);
        }
      }
    }
    for (const waiter of [...this.#waiters]) {
      if (waiter.name !== name && waiter.name !== '*') continue;
      let matched: boolean;
      try {
        matched = waiter.predicate ? waiter.predicate(ev) : true;
      } catch (err) {
        this.#waiters.delete(waiter);
        waiter.cleanup();
        waiter.reject(err);
        continue;
      }
      if (!matched) continue;
      this.#waiters.delete(waiter);
      waiter.cleanup();
      waiter.resolve(ev);
    }
  }

  #onClosed(cause: Error | undefined, wasRunning: boolean): void {
    const why = cause ? `the connection closed: ${cause.message}` : 'disconnect() was called';
    // Protocol errors are passed through as-is so callers see what the peer did wrong.
    const protocolError = cause instanceof QmpProtocolError ? cause : undefined;

    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const entry of pending) {
      entry.cleanup();
      entry.reject(
        protocolError ??
          new QmpDisconnectedError(`QMP command "${entry.command}" did not complete because ${why}`, {
            command: entry.command,
            cause,
          }),
      );
    }

    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const waiter of waiters) {
      waiter.cleanup();
      waiter.reject(
        protocolError ??
          new QmpDisconnectedError(`Stopped waiting for QMP event "${waiter.name}" because ${why}`, { cause }),
      );
    }

    const greetingWaiter = this.#greetingWaiter;
    this.#greetingWaiter = undefined;
    greetingWaiter?.reject(
      cause instanceof QmpError
        ? cause
        : new QmpDisconnectedError(`The ${this.#label()} closed before the greeting because ${why}`, { cause }),
    );

    this.#greeting = undefined;
    if (!wasRunning) return;
    for (const listener of [...this.#disconnectListeners]) {
      try {
        listener(cause);
      } catch (err) {
        process.emitWarning(`${this.#label()}: disconnect listener threw: ${String(err)}`);
      }
    }
  }
}

interface DialOptions {
  retryUntilMs: number;
  timeoutMs: number;
  signal: AbortSignal;
}

const RETRIABLE = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

async function dialUnixSocket(path: string, opts: DialOptions): Promise<net.Socket> {
  const started = performance.now();
  let attempts = 0;
  let backoff = 5; // QEMU makes its socket within ~50-150 ms of spawn: poll it closely
  for (;;) {
    attempts++;
    try {
      return await dialOnce(path, opts.timeoutMs, opts.signal);
    } catch (err) {
      if (opts.signal.aborted) {
        throw new QmpDisconnectedError(`Connecting to QMP socket "${path}" was cancelled by disconnect()`, {
          cause: err,
        });
      }
      const code = (err as NodeJS.ErrnoException).code;
      const elapsed = performance.now() - started;
      const left = opts.retryUntilMs - elapsed;
      if (!code || !RETRIABLE.has(code) || left <= 0) {
        throw new QmpConnectError(
          path,
          err,
          attempts > 1 ? `gave up after ${attempts} attempts over ${Math.round(elapsed)} ms` : undefined,
        );
      }
      try {
        await sleep(Math.min(backoff, left), undefined, { signal: opts.signal });
      } catch {
        throw new QmpDisconnectedError(`Connecting to QMP socket "${path}" was cancelled by disconnect()`);
      }
      backoff = Math.min(backoff * 2, 20);
    }
  }
}

function dialOnce(path: string, timeoutMs: number, signal: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path });
    const fail = (err: unknown): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onError = (err: Error): void => fail(err);
    const onAbort = (): void => fail(abortReason(signal));
    const onConnect = (): void => {
      cleanup();
      resolve(socket);
    };
    const timer = hasTimeout(timeoutMs)
      ? setTimeout(
          () => fail(new QmpTimeoutError(timeoutMs, { what: `QMP socket "${path}" to accept the connection` })),
          timeoutMs,
        )
      : undefined;
    const cleanup = (): void => {
      if (timer) clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      socket.off('error', onError);
      socket.off('connect', onConnect);
    };
    socket.on('error', onError);
    socket.on('connect', onConnect);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
