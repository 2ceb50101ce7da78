// One end of an agent connection: requests with ids and timeouts (either side may ask), replies,
// events, and binary stream frames. Used by the agent (server side) and RemoteHost (client side).
import { EventEmitter } from 'node:events';
import type WebSocket from 'ws';
import {
  WireMessageSchema,
  decodeStreamFrame,
  encodeStreamFrame,
  type AgentErrorCode,
  type StreamKind,
  type WireError,
  type WireMessage,
} from './protocol';
import { RateLimit } from '../../util/rate-limit';

export class AgentRpcError extends Error {
  constructor(
    readonly code: AgentErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'AgentRpcError';
  }
}

export type RequestHandler = (method: string, params: unknown) => Promise<unknown>;

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  method: string;
}

export interface RpcPeerEvents {
  event: [name: string, data: unknown];
  stream: [kind: StreamKind, handle: number, data: Buffer];
  close: [reason: string];
  /** A message that was not valid: counted, answered where it had an id, never fatal. */
  invalid: [reason: string];
}

export class RpcPeer extends EventEmitter<RpcPeerEvents> {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closedReason: string | null = null;
  private handler: RequestHandler | null = null;

  constructor(
    private readonly ws: WebSocket,
    private readonly opts: { name: string; timeoutMs?: number; rateLimit?: RateLimit } = { name: 'peer' },
  ) {
    super();
    ws.on('message', (data, isBinary) => this.onMessage(data as Buffer, isBinary));
    ws.on('close', (code, reason) => this.onClose(`closed (${code}${reason.length ? `: ${reason.toString()}` : ''})`));
    ws.on('error', (err) => this.onClose(`failed: ${err.message}`));
  }

  get closed(): boolean {
    return this.closedReason !== null;
  }

  handle(handler: RequestHandler): void {
    this.handler = handler;
  }

  request<T = unknown>(method: string, params?: unknown, timeoutMs = this.opts.timeoutMs ?? 30_000): Promise<T> {
    if (this.closedReason) return Promise.reject(new AgentRpcError('disconnected', `${this.opts.name}: the connection is ${this.closedReason}`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new AgentRpcError('timeout', `${this.opts.name}: "${method}" got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer, method });
      this.send({ t: 'req', id, method, ...(params === undefined ? {} : { params }) });
    });
  }

  emitEvent(event: string, data: unknown): void {
    this.send({ t: 'evt', event, data });
  }

  sendStream(kind: StreamKind, handle: number, data: Buffer): void {
    if (this.closedReason || this.ws.readyState !== this.ws.OPEN) return;
    this.ws.send(encodeStreamFrame(kind, handle, data), { binary: true });
  }

  close(code = 1000, reason = ''): void {
    try {
      this.ws.close(code, reason);
    } catch {
      this.ws.terminate();
    }
    this.onClose(`closed by us${reason ? `: ${reason}` : ''}`);
  }

  private send(msg: WireMessage): void {
    if (this.closedReason || this.ws.readyState !== this.ws.OPEN) return;
    this.ws.send(JSON.stringify(msg));
  }

  private reply(id: number, result: { ok: true; value: unknown } | { ok: false; error: WireError }): void {
    if (result.ok) this.send({ t: 'res', id, ok: true, result: result.value ?? null });
    else this.send({ t: 'res', id, ok: false, error: { code: result.error.code, message: capMessage(result.error.message) } });
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (this.opts.rateLimit && !this.opts.rateLimit.take()) {
      // Said once per message so the peer knows why nothing happened; the connection stays.
      this.emit('invalid', 'rate limited');
      const id = isBinary ? null : peekId(data);
      if (id !== null) this.reply(id, { ok: false, error: { code: 'rate-limited', message: 'Too many requests: slow down (the agent takes at most a few hundred a second)' } });
      return;
    }
    if (isBinary) {
      const frame = decodeStreamFrame(data);
      if (!frame) {
        this.emit('invalid', 'a binary frame with an unknown stream kind');
        return;
      }
      this.emit('stream', frame.kind, frame.handle, frame.data);
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(data.toString('utf8'));
    } catch {
      this.emit('invalid', 'a message that is not JSON');
      this.send({ t: 'evt', event: 'error', data: { code: 'invalid', message: 'A message was not JSON: every text frame must be one JSON object' } });
      return;
    }
    const msg = WireMessageSchema.safeParse(parsed);
    if (!msg.success) {
      const id = peekId(data);
      const message = `A malformed message was refused: ${msg.error.issues.map((i) => `${i.path.join('.') || 'message'}: ${i.message}`).slice(0, 3).join('; ')}`;
      this.emit('invalid', message);
      if (id !== null) this.reply(id, { ok: false, error: { code: 'invalid', message } });
      else this.send({ t: 'evt', event: 'error', data: { code: 'invalid', message: capMessage(message) } });
      return;
    }
    const m = msg.data as WireMessage;
    if (m.t === 'evt') this.emit('event', m.event, m.data);
    else if (m.t === 'res') {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.ok) p.resolve(m.result);
      else p.reject(new AgentRpcError(m.error.code as AgentErrorCode, m.error.message));
    } else void this.serve(m.id, m.method, m.params);
  }

  private async serve(id: number, method: string, params: unknown): Promise<void> {
    if (!this.handler) {
      this.reply(id, { ok: false, error: { code: 'unknown-method', message: `Nothing answers "${method}" here` } });
      return;
    }
    try {
      this.reply(id, { ok: true, value: await this.handler(method, params) });
    } catch (err) {
      const code: AgentErrorCode = err instanceof AgentRpcError ? err.code : 'failed';
      this.reply(id, { ok: false, error: { code, message: (err as Error).message } });
    }
  }

  private onClose(reason: string): void {
    if (this.closedReason) return;
    this.closedReason = reason;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new AgentRpcError('disconnected', `${this.opts.name}: the connection ${reason} before "${p.method}" was answered`));
    }
    this.pending.clear();
    this.emit('close', reason);
  }
}

/** Error messages may quote what the peer sent: kept well under the protocol's 8 KiB limit. */
export function capMessage(message: string, max = 2000): string {
  return message.length <= max ? message : `${message.slice(0, max)}... (${message.length - max} more characters cut)`;
}

/** The id of a request that failed validation, so the refusal can still be matched to it. */
function peekId(data: Buffer): number | null {
  try {
    const v = JSON.parse(data.toString('utf8')) as { t?: unknown; id?: unknown };
    return v && v.t === 'req' && typeof v.id === 'number' && Number.isInteger(v.id) && v.id >= 0 ? v.id : null;
  } catch {
    return null;
  }
}
