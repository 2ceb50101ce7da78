// Browser mode: the built UI over HTTP and the API over a WebSocket, behind access tokens.
// The teacher's token can do everything; the spectator token gives a read-only view, so a class
// can follow a migration from their own laptops. Without a valid token: 401 and nothing else.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { ApiError } from '../api/commands';
import { API_VERSION, READ_ONLY_COMMANDS, type ApiEvent, type ApiRole, type ServerMessage } from '../api/contract';
import type { LabService } from '../api/service';
import { contentType, existingUiFile, UI_CSP } from './ui-files';

export interface WebServerOptions {
  /** Where to listen; 127.0.0.1 unless the teacher opens it to the room on purpose. */
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** The built UI (index.html and its assets); null serves a page saying it is not built. */
  uiDir?: string | null;
  /** Fixed tokens (tests); random ones by default. */
  tokens?: { teacher: string; spectator: string };
}

const COOKIE = 'miglab_token';
const MAX_MESSAGE_BYTES = 64 * 1024;
/** A client this far behind gets no more events until it catches up (never unbounded memory). */
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;

function newToken(): string {
  return randomBytes(24).toString('base64url');
}

function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function cookieToken(req: IncomingMessage): string | null {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [k, v] = part.trim().split('=');
    if (k === COOKIE && v) return v;
  }
  return null;
}

export class WebServer {
  readonly url: string;
  readonly spectatorUrl: string;
  private readonly clients = new Map<WebSocket, ApiRole>();
  private readonly onEvent: (ev: ApiEvent) => void;

  private constructor(
    private readonly http: Server,
    private readonly wss: WebSocketServer,
    private readonly service: LabService,
    private readonly uiDir: string | null,
    readonly tokens: { teacher: string; spectator: string },
    readonly address: { host: string; port: number },
  ) {
    const base = `http://${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}/`;
    this.url = `${base}?token=${tokens.teacher}`;
    this.spectatorUrl = `${base}?token=${tokens.spectator}`;
    http.on('request', (req, res) => void this.serve(req, res));
    http.on('upgrade', (req, socket, head) => this.upgrade(req, socket, head));
    this.onEvent = (ev) => this.broadcast({ event: ev });
    service.on('event', this.onEvent);
  }

  static async start(service: LabService, opts: WebServerOptions = {}): Promise<WebServer> {
    const host = opts.host ?? '127.0.0.1';
    const http = createServer();
    const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_BYTES });
    await new Promise<void>((resolvePromise, reject) => {
      http.once('error', (err: NodeJS.ErrnoException) =>
        reject(new Error(err.code === 'EADDRINUSE' ? `Port ${opts.port} on ${host} is in use: pick another with --port` : `Cannot listen on ${host}:${opts.port ?? 0}: ${err.message}`)),
      );
      http.listen({ host, port: opts.port ?? 0 }, () => resolvePromise());
    });
    const port = (http.address() as AddressInfo).port;
    const tokens = opts.tokens ?? { teacher: newToken(), spectator: newToken() };
    return new WebServer(http, wss, service, opts.uiDir === undefined ? null : opts.uiDir, tokens, { host, port });
  }

  /** The role a request's token gives, from ?token=, a Bearer header, or the cookie; null: none. */
  private roleOf(req: IncomingMessage): { role: ApiRole; token: string; fromQuery: boolean } | null {
    const url = new URL(req.url ?? '/', 'http://x');
    const q = url.searchParams.get('token');
    const auth = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const candidates: Array<[string | null | undefined, boolean]> = [[q, true], [auth, false], [cookieToken(req), false]];
    for (const [t, fromQuery] of candidates) {
      if (!t) continue;
      if (sameToken(t, this.tokens.teacher)) return { role: 'teacher', token: t, fromQuery };
      if (sameToken(t, this.tokens.spectator)) return { role: 'spectator', token: t, fromQuery };
    }
    return null;
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const who = this.roleOf(req);
    if (!who) {
      res.writeHead(401, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
      res.end('401: MigLab needs the access token: open the address "miglab web" printed, with its ?token=.\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    const headers: Record<string, string> = {
      'content-security-policy': UI_CSP,
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
      'cache-control': 'no-store',
    };
    // The token moves from the address bar into a cookie that scripts cannot read, so the page's
    // own requests (assets, the WebSocket) carry it.
    if (who.fromQuery) headers['set-cookie'] = `${COOKIE}=${who.token}; HttpOnly; SameSite=Strict; Path=/`;
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (!this.uiDir) {
      res.writeHead(503, { ...headers, 'content-type': 'text/plain; charset=utf-8' });
      res.end('The MigLab UI is not built here. The API answers on /api (WebSocket).\n');
      return;
    }
    const file = await existingUiFile(this.uiDir, path);
    if (!file) {
      res.writeHead(404, { ...headers, 'content-type': 'text/plain; charset=utf-8' }).end('Not found\n');
      return;
    }
    res.writeHead(200, { ...headers, 'content-type': contentType(file) });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    createReadStream(file).pipe(res);
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const who = this.roleOf(req);
    const origin = req.headers.origin;
    // A page from another site must not drive the lab with the teacher's cookie.
    const foreign = origin !== undefined && new URL(origin).host !== req.headers.host;
    if (url.pathname !== '/api' || !who || foreign) {
      const status = url.pathname !== '/api' ? '404 Not Found' : foreign ? '403 Forbidden' : '401 Unauthorized';
      socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, who.role));
  }

  private accept(ws: WebSocket, role: ApiRole): void {
    this.clients.set(ws, role);
    ws.on('close', () => this.clients.delete(ws));
    ws.on('error', () => ws.terminate());
    this.sendTo(ws, { hello: { apiVersion: API_VERSION, role } });
    this.sendTo(ws, { event: { type: 'lab', snapshot: this.service.snapshot() } });
    ws.on('message', (data, isBinary) => void this.onMessage(ws, role, data as Buffer, isBinary));
  }

  private async onMessage(ws: WebSocket, role: ApiRole, data: Buffer, isBinary: boolean): Promise<void> {
    let id = -1;
    try {
      if (isBinary) throw new ApiError('invalid', 'Send commands as JSON text');
      let msg: unknown;
      try {
        msg = JSON.parse(data.toString('utf8'));
      } catch {
        throw new ApiError('invalid', 'The message is not JSON');
      }
      const m = msg as { id?: unknown; command?: { type?: unknown } };
      if (typeof m !== 'object' || m === null || !Number.isInteger(m.id)) throw new ApiError('invalid', 'A message is {"id": <integer>, "command": {...}}');
      id = m.id as number;
      const type = m.command?.type;
      if (role === 'spectator' && !READ_ONLY_COMMANDS.includes(type as never)) {
        throw new ApiError('forbidden', 'This is a spectator view: it can watch, not act. Ask the teacher for the lab\'s own address.');
      }
      const result = await this.service.execute(m.command);
      this.sendTo(ws, { id, ok: true, result });
    } catch (err) {
      const e = err instanceof ApiError ? err : new ApiError('failed', (err as Error).message);
      this.sendTo(ws, { id, ok: false, error: { message: e.message, code: e.code } });
    }
  }

  private sendTo(ws: WebSocket, msg: ServerMessage): void {
    if (ws.readyState !== ws.OPEN) return;
    if ('event' in msg && ws.bufferedAmount > MAX_BUFFERED_BYTES) return; // too far behind: skip events
    ws.send(JSON.stringify(msg));
  }

  private broadcast(msg: ServerMessage): void {
    for (const ws of this.clients.keys()) this.sendTo(ws, msg);
  }

  /** Closes every connection and stops listening. */
  async close(): Promise<void> {
    this.service.off('event', this.onEvent);
    for (const ws of this.clients.keys()) ws.terminate();
    this.wss.close();
    const closed = new Promise<void>((r) => this.http.close(() => r()));
    this.http.closeAllConnections();
    await closed;
  }
}
