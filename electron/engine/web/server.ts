// Browser mode: the built UI over HTTP and the API over a WebSocket, behind access tokens.
// The teacher's token can do everything; the spectator token gives a read-only view, so a class
// can follow a migration from their own laptops. Without a valid token: 401 and nothing else.
// Every request comes from anyone who can reach the port: each handler answers bad input with a
// status (400, 401, 403, 404) and never throws, and each WebSocket has a budget (client-budget.ts).
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { ApiError } from '../api/commands';
import { READ_ONLY_COMMANDS, type ApiEvent, type ApiRole, type ServerMessage } from '../api/contract';
import { failureReply, helloFor } from '../api/replies';
import type { LabService } from '../api/service';
import { ClientBudget, COMMANDS_PER_SECOND } from './client-budget';
import { afterAnswers, closeWithStatus, LINGER_MS, parseErrorStatus, trackAnswer } from './connections';
import { locationWithout, parseRequestTarget, sameOrigin, type RequestTarget } from './request-target';
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
  /** Serve HTTPS with this certificate and key (PEM); plain HTTP without. */
  tls?: { certPem: string; keyPem: string };
  /** WebSockets open at once, every role (default MAX_CLIENTS). */
  maxClients?: number;
}

const MAX_MESSAGE_BYTES = 64 * 1024;
/**
 * A class of 60 with a tab or two each fits; each client may hold up to its unread budget, so
 * the count bounds what the engine can be made to buffer in all.
 */
export const MAX_CLIENTS = 128;

function newToken(): string {
  return randomBytes(24).toString('base64url');
}

function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export class WebServer {
  readonly url: string;
  readonly spectatorUrl: string;
  /**
   * The cookie that carries the token, named for this server: cookies ignore ports, so two MigLabs
   * on one machine would otherwise overwrite each other's.
   */
  readonly cookieName = `miglab_${randomBytes(6).toString('hex')}`;
  private readonly clients = new Map<WebSocket, { role: ApiRole; budget: ClientBudget }>();
  private readonly onEvent: (ev: ApiEvent) => void;

  private constructor(
    private readonly http: Server | HttpsServer,
    private readonly wss: WebSocketServer,
    private readonly service: LabService,
    private readonly uiDir: string | null,
    readonly tokens: { teacher: string; spectator: string },
    readonly address: { host: string; port: number },
    readonly tls: boolean,
    private readonly maxClients: number,
  ) {
    const base = `${tls ? 'https' : 'http'}://${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}/`;
    this.url = `${base}?token=${tokens.teacher}`;
    this.spectatorUrl = `${base}?token=${tokens.spectator}`;
    http.on('request', (req, res) => {
      trackAnswer(req.socket, res);
      this.serve(req, res).catch((err: unknown) => this.failed(res, err));
    });
    http.on('upgrade', (req, socket, head) => {
      // The socket is ours now: an error on it (a reset mid-handshake) must not go unheard.
      socket.on('error', () => socket.destroy());
      afterAnswers(socket, () => {
        try {
          this.upgrade(req, socket, head);
        } catch {
          closeWithStatus(socket, '400 Bad Request');
        }
      });
    });
    // Without a listener Node drops a CONNECT without a word: say it is not served here.
    http.on('connect', (_req, socket) => {
      socket.on('error', () => socket.destroy());
      afterAnswers(socket, () => closeWithStatus(socket, '405 Method Not Allowed'));
    });
    // Node answers a request its parser rejects and destroys the socket at once, which loses the
    // answer when the client is still sending, and cuts the answers to earlier requests of the
    // same pipeline. Instead: those are finished, then the 400, then we linger.
    http.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      socket.on('error', () => {}); // a queued response writing after our end must not throw
      if (err.code === 'ECONNRESET') return socket.destroy();
      afterAnswers(socket, () => closeWithStatus(socket, parseErrorStatus(err)));
    });
    this.onEvent = (ev) => this.broadcast({ event: ev });
    service.on('event', this.onEvent);
  }

  static async start(service: LabService, opts: WebServerOptions = {}): Promise<WebServer> {
    const host = opts.host ?? '127.0.0.1';
    const http = opts.tls ? createHttpsServer({ cert: opts.tls.certPem, key: opts.tls.keyPem }) : createServer();
    const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_BYTES });
    await new Promise<void>((resolvePromise, reject) => {
      http.once('error', (err: NodeJS.ErrnoException) =>
        reject(new Error(err.code === 'EADDRINUSE' ? `Port ${opts.port} on ${host} is in use: pick another with --port` : `Cannot listen on ${host}:${opts.port ?? 0}: ${err.message}`)),
      );
      http.listen({ host, port: opts.port ?? 0 }, () => resolvePromise());
    });
    // Listening: later server errors (a failed accept) are the connection's problem, not ours.
    http.on('error', () => {});
    const port = (http.address() as AddressInfo).port;
    const tokens = opts.tokens ?? { teacher: newToken(), spectator: newToken() };
    return new WebServer(http, wss, service, opts.uiDir === undefined ? null : opts.uiDir, tokens, { host, port }, opts.tls !== undefined, opts.maxClients ?? MAX_CLIENTS);
  }

  private cookieToken(req: IncomingMessage): string | null {
    for (const part of (req.headers.cookie ?? '').split(';')) {
      const eq = part.indexOf('=');
      const value = part.slice(eq + 1).trim();
      if (eq > 0 && value && part.slice(0, eq).trim() === this.cookieName) return value;
    }
    return null;
  }

  /** The role a request's token gives, from ?token=, a Bearer header, or the cookie; null: none. */
  private roleOf(req: IncomingMessage, target: RequestTarget): { role: ApiRole; token: string; fromQuery: boolean } | null {
    const q = target.params.get('token');
    const auth = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const candidates: Array<[string | null | undefined, boolean]> = [[q, true], [auth, false], [this.cookieToken(req), false]];
    for (const [t, fromQuery] of candidates) {
      if (!t) continue;
      if (sameToken(t, this.tokens.teacher)) return { role: 'teacher', token: t, fromQuery };
      if (sameToken(t, this.tokens.spectator)) return { role: 'spectator', token: t, fromQuery };
    }
    return null;
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const plain = { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' };
    const target = parseRequestTarget(req.url);
    if (!target) {
      res.writeHead(400, plain).end('400: MigLab serves paths like /, /assets/... and /api.\n');
      return;
    }
    const who = this.roleOf(req, target);
    if (!who) {
      res.writeHead(401, plain);
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
    if (who.fromQuery) {
      // The token moves from the address bar (history, sync, shoulders) into a cookie scripts
      // cannot read, and the browser is sent to the same address without it. The page's own
      // requests (assets, the WebSocket) carry the cookie.
      const secure = this.tls ? '; Secure' : '';
      res.writeHead(303, {
        ...headers,
        'set-cookie': `${this.cookieName}=${who.token}; HttpOnly; SameSite=Strict; Path=/${secure}`,
        location: locationWithout(target, 'token'),
        'content-length': '0',
      });
      res.end();
      return;
    }
    if (!this.uiDir) {
      res.writeHead(503, { ...headers, 'content-type': 'text/plain; charset=utf-8' });
      res.end('The MigLab UI is not built here. The API answers on /api (WebSocket).\n');
      return;
    }
    const file = await existingUiFile(this.uiDir, target.pathname);
    if (!file) {
      res.writeHead(404, { ...headers, 'content-type': 'text/plain; charset=utf-8' }).end('Not found\n');
      return;
    }
    res.writeHead(200, { ...headers, 'content-type': contentType(file) });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    // A file that vanishes mid-read, or a client that leaves, ends this response only.
    pipeline(createReadStream(file), res, () => {});
  }

  /** A handler that threw: the request gets a 500 if it can still get anything, and we go on. */
  private failed(res: ServerResponse, err: unknown): void {
    if (process.env.MIGLAB_DEBUG) process.stderr.write(`miglab web: a request failed: ${(err as Error)?.stack ?? String(err)}\n`);
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' }).end('500: MigLab could not answer this request.\n');
    else res.destroy();
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const target = parseRequestTarget(req.url);
    if (!target) return closeWithStatus(socket, '400 Bad Request');
    if (target.pathname !== '/api') return closeWithStatus(socket, '404 Not Found');
    // A page from another site (or a sandboxed one, Origin "null") must not drive the lab with
    // the teacher's cookie.
    if (!sameOrigin(req.headers.origin, req.headers.host)) return closeWithStatus(socket, '403 Forbidden');
    const who = this.roleOf(req, target);
    if (!who) return closeWithStatus(socket, '401 Unauthorized');
    if (this.clients.size >= this.maxClients) return closeWithStatus(socket, '503 Service Unavailable');
    // ws answers a bad handshake (missing key, wrong version) with a 400 itself.
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, who.role));
  }

  private accept(ws: WebSocket, role: ApiRole): void {
    this.clients.set(ws, { role, budget: new ClientBudget(ws) });
    ws.on('close', () => this.clients.delete(ws));
    // A protocol error (a bad frame): ws has sent its close frame and reads on; cutting the
    // socket at once could reset it before the client reads what we sent.
    ws.on('error', () => setTimeout(() => ws.terminate(), LINGER_MS).unref());
    this.sendTo(ws, { hello: helloFor(role) });
    this.sendTo(ws, { event: { type: 'lab', snapshot: this.service.snapshot() } });
    ws.on('message', (data, isBinary) => {
      this.onMessage(ws, role, data as Buffer, isBinary).catch(() => ws.terminate());
    });
  }

  private async onMessage(ws: WebSocket, role: ApiRole, data: Buffer, isBinary: boolean): Promise<void> {
    const client = this.clients.get(ws);
    if (!client || ws.readyState !== ws.OPEN) return; // closed as too slow: its commands are not run
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
      if (!client.budget.takeCommand()) {
        throw new ApiError('rate-limited', `Too many commands at once: this connection may send about ${COMMANDS_PER_SECOND} a second. Wait a moment and try again.`);
      }
      const type = m.command?.type;
      if (role === 'spectator' && !READ_ONLY_COMMANDS.includes(type as never)) {
        throw new ApiError('forbidden', 'This is a spectator view: it can watch, not act. Ask the teacher for the lab\'s own address.');
      }
      const result = await this.service.execute(m.command, { role });
      this.sendTo(ws, { id, ok: true, result });
    } catch (err) {
      this.sendTo(ws, { id, ...failureReply(err) });
    }
  }

  private sendTo(ws: WebSocket, msg: ServerMessage): void {
    this.sendText(ws, JSON.stringify(msg), 'event' in msg);
  }

  private sendText(ws: WebSocket, text: string, isEvent: boolean): void {
    const client = this.clients.get(ws);
    if (!client || ws.readyState !== ws.OPEN) return;
    if (isEvent && client.budget.skipsEvents()) return; // too far behind: skip events
    if (client.budget.overflows(Buffer.byteLength(text))) return;
    ws.send(text);
  }

  private broadcast(msg: ServerMessage): void {
    if (this.clients.size === 0) return;
    const text = JSON.stringify(msg);
    for (const ws of this.clients.keys()) this.sendText(ws, text, true);
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
