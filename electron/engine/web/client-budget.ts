// What one browser-mode WebSocket may cost the engine, teacher and spectator alike: how many
// commands a second, and how many bytes of answers and events may wait unread for it. A client
// over the first gets 'rate-limited' answers; over the second it is disconnected and the engine
// goes on. The real UI stays far below both (it sends a command per click or keystroke and reads
// as fast as the page renders).
import type { WebSocket } from 'ws';
import { RateLimit } from '../util/rate-limit';

/** Commands a second a client may send, and the burst it may send at once. */
export const COMMANDS_PER_SECOND = 100;
export const COMMAND_BURST = 200;
/** A client this far behind gets no more events until it catches up (its answers still come). */
export const EVENT_SKIP_BYTES = 8 * 1024 * 1024;
/** A client this far behind is disconnected: nothing it asks may grow the engine's memory further. */
export const MAX_UNREAD_BYTES = 16 * 1024 * 1024;
/** The close code a disconnected slow reader sees (4000-4999 are for applications). */
export const CLOSE_TOO_FAR_BEHIND = 4008;
/** A slow reader that was closed gets this long to read that far; then its socket and backlog go. */
const CLOSE_GRACE_MS = 10_000;

export class ClientBudget {
  private readonly rate = new RateLimit(COMMANDS_PER_SECOND, COMMAND_BURST);

  constructor(private readonly ws: WebSocket) {}

  /** Takes one command from the budget: false when the client sends faster than it may. */
  takeCommand(): boolean {
    return this.rate.take();
  }

  /** Events wait while the client is behind: the next lab snapshot catches it up. */
  skipsEvents(): boolean {
    return this.ws.bufferedAmount > EVENT_SKIP_BYTES;
  }

  /**
   * Whether `bytes` more would leave more than MAX_UNREAD_BYTES unread; if so the client is
   * closed (it sees the code and reason once it reads that far) and gets nothing more.
   */
  overflows(bytes: number): boolean {
    if (this.ws.bufferedAmount + bytes <= MAX_UNREAD_BYTES) return false;
    const mib = Math.round(MAX_UNREAD_BYTES / 2 ** 20);
    this.ws.close(CLOSE_TOO_FAR_BEHIND, `Too far behind: over ${mib} MiB of answers unread; reload the page`);
    setTimeout(() => this.ws.terminate(), CLOSE_GRACE_MS).unref();
    return true;
  }
}
