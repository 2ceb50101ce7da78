// One error tree for everything the QMP layer can throw, so callers can catch QmpError
// and still tell the failure kinds apart with instanceof. Names live on the prototypes
// so they are right in stack traces without being own properties of every instance.

export interface QmpErrorOptions {
  command?: string;
  cause?: unknown;
}

export class QmpError extends Error {
  static {
    this.prototype.name = 'QmpError';
  }
  /** The QMP command this error belongs to, when there is one. */
  readonly command?: string;

  constructor(message: string, opts: QmpErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    if (opts.command !== undefined) this.command = opts.command;
  }
}

/** Could not open the QMP socket (missing, refused, or not a socket). */
export class QmpConnectError extends QmpError {
  static {
    this.prototype.name = 'QmpConnectError';
  }
  readonly path: string;

  constructor(path: string, cause: unknown, detail?: string) {
    const why = cause instanceof Error ? cause.message : String(cause);
    super(`Could not connect to QMP socket "${path}": ${why}${detail ? ` (${detail})` : ''}`, { cause });
    this.path = path;
  }
}

/** The connection went away (peer closed it, socket error, or disconnect() was called). */
export class QmpDisconnectedError extends QmpError {
  static {
    this.prototype.name = 'QmpDisconnectedError';
  }
}

/** The peer sent something that is not valid QMP; the connection is torn down. */
export class QmpProtocolError extends QmpError {
  static {
    this.prototype.name = 'QmpProtocolError';
  }
}

/** A single message (or an unterminated buffer) grew beyond the configured cap. */
export class QmpMessageTooLargeError extends QmpProtocolError {
  static {
    this.prototype.name = 'QmpMessageTooLargeError';
  }
  readonly limit: number;
  readonly size: number;

  constructor(size: number, limit: number, terminated: boolean) {
    super(
      terminated
        ? `QMP peer sent a ${size}-byte message, over the ${limit}-byte limit`
        : `QMP peer sent more than ${limit} bytes without a newline (${size} bytes buffered); giving up on the connection`,
    );
    this.limit = limit;
    this.size = size;
  }
}

/** QEMU answered a command with {"error": {"class", "desc"}}. */
export class QmpCommandError extends QmpError {
  static {
    this.prototype.name = 'QmpCommandError';
  }
  declare readonly command: string;
  /** QMP's error class, e.g. "GenericError", "CommandNotFound", "DeviceNotFound". */
  readonly errorClass: string;
  readonly desc: string;
  readonly args: Record<string, unknown> | undefined;

  constructor(command: string, args: Record<string, unknown> | undefined, errorClass: string, desc: string) {
    super(`QMP command "${command}" failed: ${errorClass}: ${desc}`, { command });
    this.errorClass = errorClass;
    this.desc = desc;
    this.args = args;
  }
}

export interface QmpTimeoutErrorOptions {
  command?: string;
  /** Set when the wait was for an event rather than a command reply. */
  event?: string;
  /** Free-form description of what was awaited, for waits that are neither. */
  what?: string;
  cause?: unknown;
}

export class QmpTimeoutError extends QmpError {
  static {
    this.prototype.name = 'QmpTimeoutError';
  }
  readonly timeoutMs: number;
  readonly event?: string;

  constructor(timeoutMs: number, opts: QmpTimeoutErrorOptions = {}) {
    let message: string;
    if (opts.command !== undefined) message = `QMP command "${opts.command}" timed out after ${timeoutMs} ms`;
    else if (opts.event !== undefined) message = `Timed out after ${timeoutMs} ms waiting for QMP event "${opts.event}"`;
    else message = `Timed out after ${timeoutMs} ms waiting for ${opts.what ?? 'QMP'}`;
    super(message, { command: opts.command, cause: opts.cause });
    this.timeoutMs = timeoutMs;
    if (opts.event !== undefined) this.event = opts.event;
  }
}

/** The call does not fit the client's current runstate (e.g. execute() while idle). */
export class QmpStateError extends QmpError {
  static {
    this.prototype.name = 'QmpStateError';
  }
  readonly runstate: string;

  constructor(message: string, runstate: string, opts: QmpErrorOptions = {}) {
    super(message, opts);
    this.runstate = runstate;
  }
}
