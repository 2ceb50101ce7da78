// Connections that end without a response object: a refused upgrade, a CONNECT, a request Node's
// parser rejected. Each gets its status line after the answers already under way on the same
// connection, then a graceful close.
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/** How long a refused connection may go on sending before it is cut. */
export const LINGER_MS = 2000;
const closing = new WeakSet<Duplex>();

/**
 * Answers a request that gets no HTTP response object (a refused upgrade, a CONNECT, one Node's
 * parser rejected) with a status and closes. We half-close and read on for a moment: closing
 * outright while the client still sends would reset the connection, and a reset can destroy our
 * answer before the client reads it.
 */
export function closeWithStatus(socket: Duplex, status: string): void {
  if (closing.has(socket)) return;
  closing.add(socket);
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  socket.resume();
  const cut = setTimeout(() => socket.destroy(), LINGER_MS);
  cut.unref();
  socket.once('close', () => clearTimeout(cut));
}

/** The answers not yet fully written on each connection (pipelined requests queue theirs). */
const answering = new WeakMap<Duplex, Set<ServerResponse>>();

export function trackAnswer(socket: Duplex, res: ServerResponse): void {
  let set = answering.get(socket);
  if (!set) answering.set(socket, (set = new Set()));
  set.add(res);
  res.once('close', () => set.delete(res));
}

/**
 * Runs `then` once the answers to earlier requests on this connection are written: a pipelined
 * upgrade or a malformed request must not put its status line in front of (or in the middle of)
 * those answers. A connection that closes meanwhile runs it too (it then has nothing to send).
 */
export function afterAnswers(socket: Duplex, then: () => void): void {
  const pending = [...(answering.get(socket) ?? [])];
  if (pending.length === 0 || socket.destroyed) return then();
  let done = false;
  const go = () => {
    if (done) return;
    done = true;
    then();
  };
  socket.once('close', go);
  void Promise.all(pending.map((res) => new Promise((r) => res.once('close', r)))).then(go);
}

/** The status for a request Node's parser gave up on. */
export function parseErrorStatus(err: NodeJS.ErrnoException): string {
  if (err.code === 'HPE_HEADER_OVERFLOW') return '431 Request Header Fields Too Large';
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return '408 Request Timeout';
  return '400 Bad Request';
}
