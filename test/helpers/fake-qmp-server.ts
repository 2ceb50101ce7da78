// A scriptable QMP server on a real UNIX socket in a private temp dir, for tests of the
// QMP client. It greets, answers qmp_capabilities, and hands every other command to
// a handler or to the test (nextCommand), which replies, sends events or raw bytes,
// waits, or drops the connection.
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEMP_PREFIX } from '../../electron/engine/util/fs';

export interface ReceivedCommand {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: unknown;
  raw: Record<string, unknown>;
}

export type CommandHandler = (cmd: ReceivedCommand, conn: FakeQmpConnection) => void | Promise<void>;

export interface FakeQmpServerOptions {
  /** Object sent as the greeting; a string is sent raw; null sends nothing. Default: a QEMU 7.2 greeting. */
  greeting?: Record<string, unknown> | string | null;
  /** QEMU ends its lines with "\r\n"; default the same. */
  lineEnding?: string;
  /** Answer qmp_capabilities with {"return": {}} unless a handler takes it. Default true. */
  autoCapabilities?: boolean;
  /** Per-command scripts; commands without one queue up for nextCommand(). */
  handlers?: Record<string, CommandHandler>;
  /** Takes every command no handler takes, instead of queueing it (a simulated QEMU answers them all). */
  fallback?: CommandHandler;
  /** Start listening at once (default true); false lets a test create the socket late. */
  listen?: boolean;
}

export const DEFAULT_GREETING = {
  QMP: {
    version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake-qmp' },
    capabilities: ['oob'],
  },
};

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class FakeQmpConnection {
  readonly socket: net.Socket;
  /** Every command received, in order (including qmp_capabilities). */
  readonly received: ReceivedCommand[] = [];
  /** Resolves once the socket has closed. */
  readonly closed: Promise<void>;
  readonly #server: FakeQmpServer;
  readonly #lineEnding: string;
  #buffer = '';
  readonly #queue: ReceivedCommand[] = [];
  readonly #waiting: Array<{ name?: string; resolve: (cmd: ReceivedCommand) => void }> = [];

  constructor(socket: net.Socket, server: FakeQmpServer, lineEnding: string) {
    this.socket = socket;
    this.#server = server;
    this.#lineEnding = lineEnding;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => {
      // The client side may reset the connection; tests look at 'close' instead.
    });
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
  }

  get isClosed(): boolean {
    return this.socket.destroyed;
  }

  /** Next command no handler took (optionally: the next one with this name). */
  nextCommand(name?: string): Promise<ReceivedCommand> {
    const index = this.#queue.findIndex((c) => name === undefined || c.execute === name);
    if (index >= 0) return Promise.resolve(this.#queue.splice(index, 1)[0]!);
    return new Promise((resolve) => this.#waiting.push({ name, resolve }));
  }

  /** The oldest queued command, if any, without waiting. */
  takeCommand(): ReceivedCommand | undefined {
    return this.#queue.shift();
  }

  send(message: Record<string, unknown>): void {
    this.sendRaw(JSON.stringify(message) + this.#lineEnding);
  }

  sendRaw(data: string | Buffer): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(data);
  }

  /** Writes and resolves once the bytes are handed to the kernel, so a later write is a separate read. */
  sendRawFlushed(data: string | Buffer): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed || !this.socket.writable) return resolve();
      this.socket.write(data, () => resolve());
    });
  }

  reply(cmd: ReceivedCommand, ret: unknown = {}): void {
    this.send(cmd.id === undefined ? { return: ret } : { return: ret, id: cmd.id });
  }

  replyError(cmd: ReceivedCommand, errorClass: string, desc: string): void {
    const error = { class: errorClass, desc };
    this.send(cmd.id === undefined ? { error } : { error, id: cmd.id });
  }

  event(name: string, data?: Record<string, unknown>, timestamp = nowTimestamp()): void {
    this.send(data === undefined ? { event: name, timestamp } : { event: name, data, timestamp });
  }

  /** Half-closes (FIN) and waits for the socket to close. */
  async end(): Promise<void> {
    this.socket.end();
    await this.closed;
  }

  /** Drops the connection at once. */
  destroy(): void {
    this.socket.destroy();
  }

  #onData(chunk: Buffer): void {
    this.#buffer += chunk.toString('utf8');
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (!line) continue;
      let raw: unknown;
      try {
        raw = JSON.parse(line);
      } catch {
        continue;
      }
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) continue;
      const obj = raw as Record<string, unknown>;
      const cmd: ReceivedCommand = { execute: String(obj.execute ?? ''), id: obj.id, raw: obj };
      if (obj.arguments !== undefined) cmd.arguments = obj.arguments as Record<string, unknown>;
      this.received.push(cmd);
      this.#dispatch(cmd);
    }
  }

  #dispatch(cmd: ReceivedCommand): void {
    const handler = this.#server.handlers.get(cmd.execute) ?? (cmd.execute === 'qmp_capabilities' && this.#server.autoCapabilities ? undefined : this.#server.fallback);
    if (handler) {
      void Promise.resolve()
        .then(() => handler(cmd, this))
        .catch(() => this.destroy());
      return;
    }
    if (cmd.execute === 'qmp_capabilities' && this.#server.autoCapabilities) {
      this.reply(cmd, {});
      return;
    }
    const index = this.#waiting.findIndex((w) => w.name === undefined || w.name === cmd.execute);
    if (index >= 0) this.#waiting.splice(index, 1)[0]!.resolve(cmd);
    else this.#queue.push(cmd);
  }
}

export class FakeQmpServer {
  readonly dir: string;
  readonly path: string;
  readonly handlers = new Map<string, CommandHandler>();
  readonly fallback: CommandHandler | undefined;
  readonly connections: FakeQmpConnection[] = [];
  autoCapabilities: boolean;
  greeting: Record<string, unknown> | string | null;
  readonly #server: net.Server;
  readonly #lineEnding: string;
  readonly #connWaiters: Array<(conn: FakeQmpConnection) => void> = [];
  readonly #untaken: FakeQmpConnection[] = [];
  #listening = false;
  #closed = false;

  private constructor(dir: string, opts: FakeQmpServerOptions) {
    this.dir = dir;
    this.path = join(dir, 'qmp.sock');
    this.autoCapabilities = opts.autoCapabilities ?? true;
    this.greeting = opts.greeting === undefined ? DEFAULT_GREETING : opts.greeting;
    this.#lineEnding = opts.lineEnding ?? '\r\n';
    this.fallback = opts.fallback;
    for (const [name, handler] of Object.entries(opts.handlers ?? {})) this.handlers.set(name, handler);
    this.#server = net.createServer((socket) => this.#onConnection(socket));
  }

  static async create(opts: FakeQmpServerOptions = {}): Promise<FakeQmpServer> {
    const dir = await mkdtemp(join(tmpdir(), `${TEMP_PREFIX}fakeqmp-`));
    const server = new FakeQmpServer(dir, opts);
    if (opts.listen ?? true) await server.listen();
    return server;
  }

  handle(name: string, handler: CommandHandler): this {
    this.handlers.set(name, handler);
    return this;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.path, () => {
        this.#server.off('error', reject);
        this.#listening = true;
        resolve();
      });
    });
  }

  /** Resolves with the oldest connection not yet handed out, waiting for one if need be. */
  nextConnection(): Promise<FakeQmpConnection> {
    const ready = this.#untaken.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve) => this.#connWaiters.push(resolve));
  }

  /** Sends an event to every open connection (QEMU sends its events to every monitor). */
  broadcast(name: string, data?: Record<string, unknown>): void {
    for (const conn of this.connections) if (!conn.isClosed) conn.event(name, data);
  }

  /** Drops every open connection; the server keeps listening, as QEMU's monitor does. */
  dropConnections(): void {
    for (const conn of this.connections) conn.destroy();
  }

  /** Destroys every connection, stops listening and removes the temp dir. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const conn of this.connections) conn.destroy();
    await Promise.all(this.connections.map((c) => c.closed));
    if (this.#listening) await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await rm(this.dir, { recursive: true, force: true });
  }

  #onConnection(socket: net.Socket): void {
    const conn = new FakeQmpConnection(socket, this, this.#lineEnding);
    this.connections.push(conn);
    if (typeof this.greeting === 'string') conn.sendRaw(this.greeting);
    else if (this.greeting) conn.send(this.greeting);
    const waiter = this.#connWaiters.shift();
    if (waiter) waiter(conn);
    else this.#untaken.push(conn);
  }
}

function nowTimestamp(): { seconds: number; microseconds: number } {
  const us = Date.now() * 1000;
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}
