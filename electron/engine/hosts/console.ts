import { EventEmitter } from 'node:events';
import { connectUnix } from '../util/net';
import type { Duplex } from 'node:stream';
import { TailBuffer } from '../util/tail-buffer';

/**
 * A guest's serial console (ttyS0): bytes in both directions plus a scrollback that survives
 * reattaching to another QEMU (the destination of a migration).
 */
export class GuestConsole extends EventEmitter<{ data: [Buffer]; close: [] }> {
  private socket: Duplex | null = null;
  private readonly scrollback: TailBuffer;
  private closed = false;

  constructor(scrollbackBytes = 256 * 1024) {
    super();
    this.scrollback = new TailBuffer(scrollbackBytes);
  }

  /**
   * Connects to a QEMU console chardev socket (a path on this machine) or takes a stream that
   * already carries it (a remote host's), replacing any previous one.
   */
  async attach(target: string | Duplex): Promise<void> {
    const socket: Duplex = typeof target === 'string' ? await connectUnix(target) : target;
    this.detach();
    this.closed = false;
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.scrollback.push(d);
      this.emit('data', d);
    });
    socket.on('error', () => {
      /* closes below */
    });
    socket.on('close', () => {
      if (this.socket === socket) this.socket = null;
    });
  }

  write(data: string | Buffer): void {
    if (!this.socket) throw new Error('The console is not connected: the guest is not running');
    this.socket.write(data);
  }

  text(): string {
    return this.scrollback.text();
  }

  /** Resolves when `pattern` appears in output received after this call (or already, if `fromStart`). */
  waitFor(pattern: RegExp | string, timeoutMs: number, fromStart = false): Promise<string> {
    const test = (s: string) => (typeof pattern === 'string' ? s.includes(pattern) : pattern.test(s));
    let seen = fromStart ? this.text() : '';
    if (fromStart && test(seen)) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const onData = (d: Buffer) => {
        seen += d.toString('utf8');
        if (test(seen)) {
          cleanup();
          resolve(seen);
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`The console did not show ${String(pattern)} within ${timeoutMs} ms; it showed: ${seen.slice(-300)}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('data', onData);
      };
      this.on('data', onData);
    });
  }

  private detach(): void {
    if (this.socket) {
      this.socket.removeAllListeners('data');
      this.socket.destroy();
      this.socket = null;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.detach();
    this.emit('close');
  }
}
