// Generic newline-framed JSON protocol over a byte stream, with an explicit runstate.
// Knows nothing about QMP commands or events; QmpClient layers those on top.
import type { Duplex } from 'node:stream';
import { listenToStream } from '../util/stream';
import { QmpDisconnectedError, QmpMessageTooLargeError, QmpProtocolError, QmpStateError } from './errors';

export type Runstate = 'idle' | 'connecting' | 'running' | 'disconnecting';

export type JsonObject = Record<string, unknown>;

/** QEMU's own monitor buffers are far smaller; 8 MiB leaves room for query-qmp-schema. */
export const DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

const NEWLINE = 0x0a;

function snippet(text: string, max = 80): string {
  return JSON.stringify(text.length > max ? `${text.slice(0, max)}…` : text);
}

/** Parses one line (without its '\n'); returns undefined for blank lines. */
export function parseJsonLine(line: Buffer): JsonObject | undefined {
  const text = line.toString('utf8');
  if (text.trim() === '') return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new QmpProtocolError(`QMP peer sent invalid JSON: ${snippet(text)}`, { cause: err });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new QmpProtocolError(`QMP peer sent a JSON value that is not an object: ${snippet(text)}`);
  }
  return value as JsonObject;
}

export function encodeJsonLine(message: JsonObject): string {
  // JSON.stringify never emits a raw newline, so one message is always one line.
  return `${JSON.stringify(message)}\n`;
}

/**
 * Splits a byte stream into JSON objects, one per '\n'-terminated line.
 * Partial lines are kept until their newline arrives; a line (or an unterminated
 * buffer) over maxMessageBytes throws instead of growing memory.
 */
export class LineDecoder {
  readonly maxMessageBytes: number;
  #parts: Buffer[] = [];
  #buffered = 0;

  constructor(maxMessageBytes: number = DEFAULT_MAX_MESSAGE_BYTES) {
    if (!Number.isInteger(maxMessageBytes) || maxMessageBytes < 1) {
      throw new RangeError(`maxMessageBytes must be a positive integer, got ${maxMessageBytes}`);
    }
    this.maxMessageBytes = maxMessageBytes;
  }

  /** Bytes held for an unterminated line. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  /**
   * Yields every complete message in `chunk`, lazily, so a consumer that tears the
   * connection down part-way can stop. Throws QmpProtocolError on bad input, after
   * the messages that preceded it have been yielded.
   */
  *push(chunk: Buffer): Generator<JsonObject, void, undefined> {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(NEWLINE, start);
      if (nl === -1) break;
      const piece = chunk.subarray(start, nl);
      start = nl + 1;
      const length = this.#buffered + piece.length;
      if (length > this.maxMessageBytes) {
        this.reset();
        throw new QmpMessageTooLargeError(length, this.maxMessageBytes, true);
      }
      const line = this.#buffered === 0 ? piece : Buffer.concat([...this.#parts, piece], length);
      this.#parts = [];
      this.#buffered = 0;
      const message = parseJsonLine(line);
      if (message !== undefined) yield message;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      const length = this.#buffered + rest.length;
      if (length > this.maxMessageBytes) {
        this.reset();
        throw new QmpMessageTooLargeError(length, this.maxMessageBytes, false);
      }
      // Copy so a small tail does not pin a large socket chunk in memory.
      this.#parts.push(Buffer.from(rest));
      this.#buffered = length;
    }
  }

  reset(): void {
    this.#parts = [];
    this.#buffered = 0;
  }
}

export interface JsonLineProtocolOptions {
  maxMessageBytes?: number;
  /** Names the connection in error messages, e.g. 'QMP connection "source"'. */
  label?: string;
}

export interface JsonLineProtocolHandlers {
  /** Called for each decoded message while connecting or running. Throwing tears the connection down. */
  onMessage(message: JsonObject): void;
  /**
   * Called once per connection, after the stream is closed and the runstate is
   * back to 'idle'. `cause` is undefined when disconnect() was asked for.
   */
  onClosed(cause: Error | undefined, wasRunning: boolean): void;
}

interface Connection {
  stream?: Duplex;
  decoder: LineDecoder;
  abort: AbortController;
  wasRunning: boolean;
  closing?: Promise<void>;
  detach?: () => void;
}

// How long disconnect() waits for a destroyed stream to report 'close'.
const CLOSE_WAIT_MS = 2000;

/**
 * Runstate machine plus reader/writer for one connection at a time:
 * idle -> connecting -> running -> disconnecting -> idle. Any fatal condition
 * (bad input, socket error, EOF) goes through the same disconnect path.
 */
export class JsonLineProtocol {
  readonly maxMessageBytes: number;
  readonly label: string;
  #state: Runstate = 'idle';
  #conn: Connection | undefined;
  readonly #handlers: JsonLineProtocolHandlers;

  constructor(handlers: JsonLineProtocolHandlers, opts: JsonLineProtocolOptions = {}) {
    this.#handlers = handlers;
    this.maxMessageBytes = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    // Validate once, up front, rather than on first connect.
    new LineDecoder(this.maxMessageBytes);
    this.label = opts.label ?? 'connection';
  }

  get runstate(): Runstate {
    return this.#state;
  }

  /**
   * idle -> connecting. The returned signal aborts when this connection is torn
   * down, so a caller still dialling can give up.
   */
  begin(): AbortSignal {
    if (this.#state !== 'idle') {
      throw new QmpStateError(`Cannot start a new ${this.label}: the client is ${this.#state}`, this.#state);
    }
    const conn: Connection = {
      decoder: new LineDecoder(this.maxMessageBytes),
      abort: new AbortController(),
      wasRunning: false,
    };
    this.#conn = conn;
    this.#state = 'connecting';
    return conn.abort.signal;
  }

  /** Hands the stream to the protocol; it is destroyed on disconnect. */
  attach(stream: Duplex, signal: AbortSignal): void {
    const conn = this.#conn;
    if (
      !conn ||
      conn.abort.signal !== signal ||
      signal.aborted ||
      this.#state !== 'connecting' ||
      conn.stream ||
      stream.destroyed
    ) {
      stream.destroy();
      throw new QmpDisconnectedError(`The ${this.label} was closed before the stream could be attached`);
    }
    conn.stream = stream;

    const onData = (chunk: Buffer | string): void => {
      if (this.#conn !== conn || conn.closing) return;
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
      try {
        for (const message of conn.decoder.push(bytes)) {
          this.#handlers.onMessage(message);
          // A handler may have torn the connection down; drop whatever follows.
          if (this.#conn !== conn || conn.closing) return;
        }
      } catch (err) {
        void this.#teardown(conn, toError(err));
      }
    };
    const onEnd = (): void => {
      void this.#teardown(conn, new QmpDisconnectedError(`The ${this.label} was closed by the peer`));
    };
    const onClose = (): void => {
      void this.#teardown(conn, new QmpDisconnectedError(`The ${this.label} was closed`));
    };
    const onError = (err: Error): void => {
      void this.#teardown(
        conn,
        new QmpDisconnectedError(`The ${this.label} failed: ${err.message}`, { cause: err }),
      );
    };
    conn.detach = listenToStream(stream, { data: onData, end: onEnd, close: onClose, error: onError });
  }

  markRunning(signal: AbortSignal): void {
    const conn = this.#conn;
    if (!conn || conn.abort.signal !== signal || this.#state !== 'connecting') {
      throw new QmpDisconnectedError(`The ${this.label} was closed during negotiation`);
    }
    conn.wasRunning = true;
    this.#state = 'running';
  }

  /** Writes one message. Throws if there is no usable stream. */
  send(message: JsonObject): void {
    const conn = this.#conn;
    const stream = conn?.stream;
    if (!conn || !stream || conn.closing || (this.#state !== 'connecting' && this.#state !== 'running')) {
      throw new QmpStateError(`Cannot send on the ${this.label}: the client is ${this.#state}`, this.#state);
    }
    const line = encodeJsonLine(message);
    stream.write(line, (err) => {
      if (err) {
        void this.#teardown(
          conn,
          new QmpDisconnectedError(`Writing to the ${this.label} failed: ${err.message}`, { cause: err }),
        );
      }
    });
  }

  /**
   * Tears the current connection down. Idempotent: concurrent callers share one
   * promise; calling it while idle resolves at once.
   */
  disconnect(cause?: Error): Promise<void> {
    const conn = this.#conn;
    if (!conn) return Promise.resolve();
    return this.#teardown(conn, cause);
  }

  #teardown(conn: Connection, cause: Error | undefined): Promise<void> {
    if (conn.closing) return conn.closing;
    if (this.#conn !== conn) return Promise.resolve();
    // Publish the shared promise before anything below can re-enter (abort listeners run synchronously).
    let finished!: () => void;
    conn.closing = new Promise<void>((resolve) => (finished = resolve));
    this.#state = 'disconnecting';
    conn.abort.abort(cause ?? new QmpDisconnectedError(`The ${this.label} was closed by disconnect()`));
    conn.detach?.();
    conn.decoder.reset();
    const stream = conn.stream;
    stream?.destroy();
    void (async () => {
      if (stream) await waitForClose(stream);
      // Back to idle before anyone hears about it, so a handler may reconnect at once.
      this.#conn = undefined;
      this.#state = 'idle';
      try {
        this.#handlers.onClosed(cause, conn.wasRunning);
      } catch (err) {
        // Teardown must always complete; a broken handler is reported, not rethrown.
        process.emitWarning(`${this.label}: close handler threw: ${toError(err).message}`);
      }
      finished();
    })();
    return conn.closing;
  }
}

function toError(err: unknown): Error {
  return err instanceof Error ? err : new QmpProtocolError(`QMP protocol failure: ${String(err)}`);
}

function waitForClose(stream: Duplex): Promise<void> {
  if (stream.closed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      stream.off('close', done);
      resolve();
    };
    // A custom Duplex with emitClose:false would never say 'close'; don't hang on it.
    const timer = setTimeout(done, CLOSE_WAIT_MS);
    timer.unref();
    stream.on('close', done);
  });
}
