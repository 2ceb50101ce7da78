// HTTP and WebSocket by hand, for tests that send what no well-behaved client would: raw bytes
// over TCP, responses read back one by one, and WebSocket frames written and read without `ws`.
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

export interface Exchange {
  /** Every byte the server sent. */
  data: Buffer;
  /** The server closed the connection (after our half-close, or on its own) before the timeout. */
  closed: boolean;
  /** A socket error (a reset), if any. */
  error: string | null;
}

/**
 * Connects, writes `chunks` in order and collects what the server sends until it closes the
 * connection or `timeoutMs` passes. We half-close right after writing, or, with `until`, once what
 * came satisfies it (the answers we wait for); `halfClose: false` never does.
 */
export function exchange(
  port: number,
  chunks: Buffer[],
  opts: { host?: string; halfClose?: boolean; until?: (data: Buffer) => boolean; timeoutMs?: number } = {},
): Promise<Exchange> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let error: string | null = null;
    const socket = connect({ host: opts.host ?? '127.0.0.1', port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ data: Buffer.concat(parts), closed: false, error });
    }, opts.timeoutMs ?? 5000);
    let ended = false;
    const endOnce = () => {
      if (ended || opts.halfClose === false) return;
      ended = true;
      socket.end();
    };
    socket.on('data', (d: Buffer) => {
      parts.push(d);
      if (opts.until?.(Buffer.concat(parts))) endOnce();
    });
    socket.on('error', (err) => (error = err.message));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(parts), closed: true, error });
    });
    socket.once('connect', () => {
      for (const c of chunks) socket.write(c);
      if (!opts.until || opts.until(Buffer.alloc(0))) endOnce();
    });
  });
}

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/**
 * The responses in `data`, in order, framed by content-length or chunked encoding. `heads[i]`
 * says whether the i-th request was a HEAD (its response has no body). Stops after a 101 (what
 * follows is WebSocket) or at the first bytes that are not a whole response.
 */
export function parseResponses(data: Buffer, heads: boolean[] = []): RawResponse[] {
  const out: RawResponse[] = [];
  let at = 0;
  while (at < data.length) {
    const end = data.indexOf('\r\n\r\n', at);
    if (end < 0) break;
    const lines = data.subarray(at, end).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!);
    if (!m) break;
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const c = l.indexOf(':');
      if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
    }
    const status = Number(m[1]);
    let p = end + 4;
    let body: Buffer = Buffer.alloc(0);
    if (status === 101) {
      out.push({ status, headers, body });
      break;
    }
    if (!heads[out.length] && status !== 204 && status !== 304) {
      if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
        const pieces: Buffer[] = [];
        for (;;) {
          const nl = data.indexOf('\r\n', p);
          if (nl < 0) return [...out, { status, headers, body: Buffer.concat(pieces) }];
          const size = parseInt(data.subarray(p, nl).toString('latin1'), 16);
          p = nl + 2;
          if (!Number.isFinite(size)) return out;
          if (size === 0) {
            p += 2; // no trailers from this server
            break;
          }
          pieces.push(data.subarray(p, p + size));
          p += size + 2;
        }
        body = Buffer.concat(pieces);
      } else if (headers['content-length'] !== undefined) {
        const n = Number(headers['content-length']);
        body = data.subarray(p, p + n);
        p += n;
      }
    }
    out.push({ status, headers, body });
    at = p;
  }
  return out;
}

/** A masked WebSocket frame from a client: text (0x1) by default, or close (0x8) and so on. */
export function clientFrame(payload: Buffer | string, opcode = 0x1): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const mask = randomBytes(4);
  let head: Buffer;
  if (body.length < 126) head = Buffer.from([0x80 | opcode, 0x80 | body.length]);
  else if (body.length < 65536) {
    head = Buffer.alloc(4);
    head.writeUInt16BE(body.length, 2);
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 126;
  } else {
    head = Buffer.alloc(10);
    head.writeBigUInt64BE(BigInt(body.length), 2);
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 127;
  }
  const masked = Buffer.alloc(body.length);
  for (let i = 0; i < body.length; i++) masked[i] = body[i]! ^ mask[i % 4]!;
  return Buffer.concat([head, mask, masked]);
}

export interface ServerFrame {
  opcode: number;
  payload: Buffer;
}

/** The whole frames at the start of `data` (a server's are unmasked), and how many bytes they took. */
export function readServerFrames(data: Buffer): { frames: ServerFrame[]; used: number } {
  const frames: ServerFrame[] = [];
  let at = 0;
  while (data.length - at >= 2) {
    const opcode = data[at]! & 0x0f;
    let len = data[at + 1]! & 0x7f;
    let p = at + 2;
    if (len === 126) {
      if (data.length - p < 2) break;
      len = data.readUInt16BE(p);
      p += 2;
    } else if (len === 127) {
      if (data.length - p < 8) break;
      len = Number(data.readBigUInt64BE(p));
      p += 8;
    }
    if (data.length - p < len) break;
    frames.push({ opcode, payload: data.subarray(p, p + len) });
    at = p + len;
  }
  return { frames, used: at };
}

/** The request that opens a WebSocket on `path` (with its ?token=), as a browser would send it. */
export function upgradeRequest(port: number, path: string, extra: Record<string, string> = {}): string {
  const headers = {
    host: `127.0.0.1:${port}`,
    connection: 'Upgrade',
    upgrade: 'websocket',
    'sec-websocket-version': '13',
    'sec-websocket-key': randomBytes(16).toString('base64'),
    ...extra,
  };
  return `GET ${path} HTTP/1.1\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`;
}

/** Opens a WebSocket by hand and resolves once the server said 101; the socket is left paused. */
export function openRawWebSocket(port: number, path: string): Promise<{ socket: Socket; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let got = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      got = Buffer.concat([got, d]);
      const end = got.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      socket.pause();
      const head = got.subarray(0, end).toString('latin1');
      if (!head.startsWith('HTTP/1.1 101')) {
        socket.destroy();
        reject(new Error(`The server refused the WebSocket: ${head.split('\r\n')[0]}`));
        return;
      }
      resolve({ socket, rest: got.subarray(end + 4) });
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.once('connect', () => socket.write(upgradeRequest(port, path)));
  });
}
