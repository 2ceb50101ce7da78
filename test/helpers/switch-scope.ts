// What the lab switch's unit tests share: a private switchd build, cleanups run after each test,
// and the check that each test left no UDP socket and no switch process behind.
import { readFileSync, readdirSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, expect, vi } from 'vitest';
import { ensureSwitchd } from '../../electron/engine/network/switchd';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

/** UDP sockets this process holds open (Node names them UDPWrap; match the case loosely). */
export function udpHandles(): number {
  return process.getActiveResourcesInfo().filter((r) => /^udpwrap$/i.test(r)).length;
}

/** miglab-switchd processes that are children of this test process. */
export function switchdChildren(): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, 'utf8');
      if (/^Name:\s+miglab-switchd$/m.test(status) && new RegExp(`^PPid:\\s+${process.pid}$`, 'm').test(status)) pids.push(Number(entry));
    } catch {
      // gone while we looked
    }
  }
  return pids;
}

/** Waits until `check` stops throwing (an event, a counter), polling every 5 ms, at most timeoutMs. */
export function until<T>(check: () => T | Promise<T>, timeoutMs = 2000): Promise<T> {
  return vi.waitFor(check, { timeout: timeoutMs, interval: 5 });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface SwitchScope {
  /** The private cache switchd is built in: pass it as the switch's cacheRoot. */
  readonly cacheRoot: string;
  /** Run after the test, last registered first. */
  readonly cleanups: Array<() => void | Promise<void>>;
}

/** Registers the hooks; call once at the top of a test file. */
export function useSwitchScope(): SwitchScope {
  const scope = { cacheRoot: '', cleanups: [] as Array<() => void | Promise<void>> };
  beforeAll(async () => {
    scope.cacheRoot = await makeTempDir('test-switchd');
    await ensureSwitchd({ cacheRoot: scope.cacheRoot });
  }, 120_000);
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const c of scope.cleanups.splice(0).reverse()) await c();
    // Each test starts from nothing, and whatever a test opened it also closed.
    await until(() => expect(udpHandles()).toBe(0));
    await until(() => expect(switchdChildren()).toEqual([]));
  });
  afterAll(async () => {
    await until(() => expect(udpHandles()).toBe(0));
    expect(switchdChildren()).toEqual([]);
    await removeDir(scope.cacheRoot);
  });
  return scope;
}

/** Frames a test NIC received, and a wait for the one that matches. */
export class FrameInbox {
  readonly frames: Buffer[] = [];
  private readonly wakeups = new Set<() => void>();

  constructor(private readonly who: () => string) {}

  push(frame: Buffer): void {
    this.frames.push(frame);
    for (const w of [...this.wakeups]) w();
  }

  /** The first frame (already here or still to come) that matches, or a rejection after timeoutMs. */
  waitFor(match: (f: Buffer) => boolean, timeoutMs = 2000, what = 'the frame'): Promise<Buffer> {
    const found = this.frames.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const wake = (): void => {
        const f = this.frames.find(match);
        if (!f) return;
        clearTimeout(timer);
        this.wakeups.delete(wake);
        resolve(f);
      };
      const timer = setTimeout(() => {
        this.wakeups.delete(wake);
        reject(new Error(`${this.who()} did not get ${what} within ${timeoutMs} ms (got ${this.frames.length} other frames)`));
      }, timeoutMs);
      this.wakeups.add(wake);
    });
  }
}
