import { createServer } from 'node:net';

export interface PortRange {
  first: number;
  last: number;
}

export class NoFreePortError extends Error {
  constructor(address: string, range: PortRange) {
    super(
      `No free TCP port on ${address} between ${range.first} and ${range.last}: ` +
        'close what uses them or give this host a wider port range',
    );
    this.name = 'NoFreePortError';
  }
}

/** True when we can bind address:port right now. */
export function canBind(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ host: address, port, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * Hands out migration ports from a host's range: a port in use (by anyone) is skipped for
 * the next free one, and a port we handed out stays reserved until released.
 */
export class PortAllocator {
  private readonly reserved = new Set<number>();
  private next: number;

  constructor(
    private readonly address: string,
    readonly range: PortRange,
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
      if (await canBind(this.address, port)) {
        this.reserved.add(port);
        return port;
      }
    }
    throw new NoFreePortError(this.address, this.range);
  }

  release(port: number): void {
    this.reserved.delete(port);
  }
}
