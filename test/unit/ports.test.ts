import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { NoFreePortError, PortAllocator, canBind } from '../../electron/engine/hosts/ports';

const servers: Server[] = [];

function occupy(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => {
      servers.push(s);
      resolve();
    });
  });
}

async function freeBase(span: number): Promise<number> {
  // Find a run of free ports to work in, so the test does not depend on what else runs here.
  for (let base = 42000; base < 60000; base += span) {
    let all = true;
    for (let p = base; p < base + span && all; p++) all = await canBind('127.0.0.1', p);
    if (all) return base;
  }
  throw new Error('no free port run found');
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

describe('PortAllocator', () => {
  it('skips a port in use and hands out the next free one', async () => {
    const base = await freeBase(4);
    await occupy(base);
    const ports = new PortAllocator('127.0.0.1', { first: base, last: base + 3 });
    expect(await ports.allocate()).toBe(base + 1);
    expect(await ports.allocate()).toBe(base + 2);
  });

  it('does not hand out a reserved port twice until it is released', async () => {
    const base = await freeBase(2);
    const ports = new PortAllocator('127.0.0.1', { first: base, last: base + 1 });
    const a = await ports.allocate();
    const b = await ports.allocate();
    expect(new Set([a, b]).size).toBe(2);
    await expect(ports.allocate()).rejects.toBeInstanceOf(NoFreePortError);
    ports.release(a);
    expect(await ports.allocate()).toBe(a);
  });

  it('says clearly when the whole range is busy', async () => {
    const base = await freeBase(1);
    await occupy(base);
    const ports = new PortAllocator('127.0.0.1', { first: base, last: base });
    await expect(ports.allocate()).rejects.toThrow(`No free TCP port on 127.0.0.1 between ${base} and ${base}`);
  });

  it('refuses a nonsense range', () => {
    expect(() => new PortAllocator('127.0.0.1', { first: 70000, last: 70001 })).toThrow(/not valid/);
  });
});
