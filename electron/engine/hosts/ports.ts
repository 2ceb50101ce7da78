import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';

export type PortProtocol = 'tcp' | 'udp';

export interface PortRange {
  first: number;
  last: number;
}

export class NoFreePortError extends Error {
  constructor(address: string, range: PortRange, protocol: PortProtocol = 'tcp') {
    super(
      `No free ${protocol.toUpperCase()} port on ${address} between ${range.first} and ${range.last}: ` +
        'close what uses them or give this host a wider port range',
    );
    this.name = 'NoFreePortError';
  }
}

/** True when we can bind address:port right now. */
export function canBind(address: string, port: number, protocol: PortProtocol = 'tcp'): Promise<boolean> {
  if (protocol === 'udp') {
    return new Promise((resolve) => {
      const sock = createSocket('udp4');
      sock.once('error', () => {
        sock.close();
        resolve(false);
      });
      sock.bind({ address, port, exclusive: true }, () => sock.close(() => resolve(true)));
    });
  }
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ host: address, port, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * Hands out ports from a host's range (TCP for migration streams, UDP for guest NICs): a port in
 * use (by anyone) is skipped for the next free one, and a port we handed out stays reserved
 * until released.
 */
export class PortAllocator {
  private readonly reserved = new Set<number>();
  private next: number;

  constructor(
    private readonly address: string,
    readonly range: PortRange,
    private readonly protocol: PortProtocol = 'tcp',
  ) {
    if (!(range.first >= 1 && range.last <= 65535 && range.first <= range.last)) {
      throw new RangeError(`Port range ${range.first}-${range.last} is not valid: use 1-65535, first <= last`);
    }
    this.next = range.first;
  }

  async allocate(): Promise<number> {
    const size = this.range.last - this.range.first + 1;
    for (let i = 0; i < size; i++) {
      const port = this.next;
      this.next = port === this.range.last ? this.range.first : port + 1;
      if (this.reserved.has(port)) continue;
      if (await canBind(this.address, port, this.protocol)) {
        this.reserved.add(port);
        return port;
      }
    }
    throw new NoFreePortError(this.address, this.range, this.protocol);
  }

  /** Marks a port as ours without probing it: one a guest we reattached already holds. */
  reserve(port: number): void {
    this.reserved.add(port);
  }

  release(port: number): void {
    this.reserved.delete(port);
  }
}
