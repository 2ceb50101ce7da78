import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MigrationJournal, likelyLocation, type JournalEntry } from '../../electron/engine/migration/journal';
import { InvalidMigrationOptionsError, parseMigrationOptions } from '../../electron/engine/migration/orchestrator';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'journal-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const entry = (over: Partial<JournalEntry>): JournalEntry => ({
  id: 'j1', guest: 'g', from: 'host-a', to: 'host-b', state: 'preflight', port: 49280,
  startedAt: '2026-11-27T10:00:00.000Z', updatedAt: '2026-11-27T10:00:00.000Z', result: null, ...over,
});

describe('MigrationJournal', () => {
  it('keeps the latest phase of each job and lists the unfinished ones', async () => {
    const j = new MigrationJournal(dir);
    await j.write(entry({ id: 'a', state: 'monitor' }));
    await j.write(entry({ id: 'b', state: 'completed', startedAt: '2026-11-27T11:00:00.000Z' }));
    await j.write(entry({ id: 'a', state: 'switchover' }));
    expect((await j.read('a'))!.state).toBe('switchover');
    expect((await j.list()).map((e) => e.id)).toEqual(['a', 'b']);
    expect((await j.unfinished()).map((e) => e.id)).toEqual(['a']);
    await j.remove('a');
    expect(await j.read('a')).toBeNull();
  });

  it('tells where a lost job left its guest', () => {
    expect(likelyLocation(entry({ state: 'monitor' })).host).toBe('host-a');
    expect(likelyLocation(entry({ state: 'prepare' })).why).toMatch(/before the switchover/);
    expect(likelyLocation(entry({ state: 'switchover' })).host).toBe('host-b');
    expect(likelyLocation(entry({ state: 'cleanup' })).host).toBe('host-b');
    expect(likelyLocation(entry({ state: 'completed' })).host).toBe('host-b');
    expect(likelyLocation(entry({ state: 'failed' })).host).toBe('host-a');
  });
});

describe('migration options', () => {
  it('fills the defaults: bandwidth set explicitly, events on, 100 ms samples', () => {
    expect(parseMigrationOptions({})).toMatchObject({ bandwidthMBps: 1000, downtimeLimitMs: 300, sampleIntervalMs: 100, capabilities: {} });
    expect(parseMigrationOptions({ bandwidthMBps: 50 }).bandwidthMBps).toBe(50);
  });

  it('names every bad option', () => {
    try {
      parseMigrationOptions({ bandwidthMBps: 0, sampleIntervalMs: 5, capabilities: { 'Bad Cap': true } });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(InvalidMigrationOptionsError);
      const msg = (e as Error).message;
      expect(msg).toMatch(/bandwidthMBps: bandwidth must be at least 1 MB\/s/);
      expect(msg).toMatch(/sampleIntervalMs: sample at most every 20 ms/);
      expect(msg).toMatch(/capabilities/);
    }
  });
});
