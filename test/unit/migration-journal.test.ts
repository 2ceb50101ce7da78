import { mkdir, mkdtemp, open, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Guest, Host } from '../../electron/engine/hosts/host';
import { JournalWriteError, MigrationJournal, journalCopy, likelyLocation, type JournalCopy, type JournalEntry } from '../../electron/engine/migration/journal';
import type { CopyState } from '../../electron/engine/migration/copies';
import { decideRecovery } from '../../electron/engine/migration/recovery';
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

  it('fsyncs the entry before its rename and the folder after it', async () => {
    const j = new MigrationJournal(dir);
    await j.write(entry({ id: 'warm' })); // the folder exists; what follows is one write
    const probe = await open(join(dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
    await probe.close();
    const realSync = proto.sync;
    const synced: string[] = [];
    // Watches the real fsync (and calls it): which file each one was for, and whether the entry
    // was already renamed into place when it ran.
    const spy = vi.spyOn(proto, 'sync').mockImplementation(async function (this: { fd: number }) {
      const path = await readlink(`/proc/self/fd/${this.fd}`);
      const renamed = (await readdir(join(dir, 'migrations'))).includes('a.json');
      synced.push(`${path.replace(dir, '<dir>').replace(/\.\d+\.\d+\.tmp$/, '.N.tmp')} renamed=${renamed}`);
      return realSync.call(this);
    });
    try {
      await j.write(entry({ id: 'a', state: 'monitor' }));
    } finally {
      spy.mockRestore();
    }
    expect(synced).toEqual(['<dir>/migrations/a.json.N.tmp renamed=false', '<dir>/migrations renamed=true']);
    expect((await j.read('a'))!.state).toBe('monitor');
    expect((await readdir(join(dir, 'migrations'))).sort()).toEqual(['a.json', 'warm.json']);
  });

  it('a write that fails rejects with an error naming the file and the cause, and leaves no temp file', async () => {
    await writeFile(join(dir, 'migrations'), 'not a folder');
    const j = new MigrationJournal(dir);
    const err = await j.write(entry({ id: 'x' })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JournalWriteError);
    expect((err as Error).message).toBe(`Could not write the migration journal entry ${join(dir, 'migrations', 'x.json')} (EEXIST): check that its folder is writable and the disk is not full`);
    expect(await readFile(join(dir, 'migrations'), 'utf8')).toBe('not a folder');
    // A failure after the temp file was written (a folder where the entry goes): the temp file goes.
    await rm(join(dir, 'migrations'));
    await mkdir(join(dir, 'migrations', 'x.json'), { recursive: true });
    await writeFile(join(dir, 'migrations', 'x.json', 'keep'), '');
    const err2 = await j.write(entry({ id: 'x' })).catch((e: unknown) => e);
    expect((err2 as Error).message).toMatch(/^Could not write the migration journal entry .*x\.json \((EISDIR|ENOTEMPTY)\)/);
    expect(await readdir(join(dir, 'migrations'))).toEqual(['x.json']);
  });

  it('a write cut short by a crash leaves the previous entry whole', async () => {
    const j = new MigrationJournal(dir);
    await j.write(entry({ id: 'a', state: 'monitor' }));
    // What a crash between open and rename leaves: half a temp file next to the entry.
    await writeFile(join(dir, 'migrations', 'a.json.4242.7.tmp'), '{"id":"a","state":"switc');
    expect((await j.read('a'))!.state).toBe('monitor');
    expect((await j.unfinished()).map((e) => `${e.id} ${e.state}`)).toEqual(['a monitor']);
  });

  it('reads entries older engines wrote (no copies, no destinationResumed) and keeps the new fields', async () => {
    const j = new MigrationJournal(dir);
    const old = { id: 'old', guest: 'g', from: 'host-a', to: 'host-b', state: 'switchover', port: 49280, startedAt: '2026-11-27T10:00:00.000Z', updatedAt: '2026-11-27T10:00:01.000Z', result: null };
    await j.write(entry({ id: 'warm' }));
    await writeFile(join(dir, 'migrations', 'old.json'), JSON.stringify(old));
    const read = (await j.read('old'))!;
    expect(read).toEqual(old);
    expect(read.destinationResumed).toBeUndefined();
    const src: JournalCopy = { host: 'host-a', address: '127.0.0.1', kind: 'local', guestId: 'g1', pid: 123, runtimeDir: '/tmp/miglab-host-a-x/g' };
    await j.write({ ...read, source: src, destination: null, destinationResumed: false, rollback: false, attempts: 2 });
    expect(await j.read('old')).toEqual({ ...old, source: src, destination: null, destinationResumed: false, rollback: false, attempts: 2 });
    expect(JSON.parse(await readFile(join(dir, 'migrations', 'old.json'), 'utf8')).attempts).toBe(2);
  });

  it('journalCopy names the host, the QEMU and, for a local guest, its folder', () => {
    const local = { name: 'host-a', address: '127.0.0.1', describe: () => ({ kind: 'local', outlivesEngine: false }) } as unknown as Host;
    const remote = { name: 'lan-1', address: '10.0.0.7', describe: () => ({ kind: 'remote', outlivesEngine: true }) } as unknown as Host;
    const localGuest = { id: 'id-1', pid: 4242, runtimeDir: '/tmp/miglab-host-a-abc/g' } as unknown as Guest;
    const remoteGuest = { id: 'id-2', pid: undefined } as unknown as Guest;
    expect(journalCopy(local, localGuest)).toEqual({ host: 'host-a', address: '127.0.0.1', kind: 'local', guestId: 'id-1', pid: 4242, runtimeDir: '/tmp/miglab-host-a-abc/g' });
    expect(journalCopy(remote, remoteGuest)).toEqual({ host: 'lan-1', address: '10.0.0.7', kind: 'remote', guestId: 'id-2', pid: null, runtimeDir: null });
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

describe('recovery decisions (libvirt rules)', () => {
  const up = (runstate: string, migration: Extract<CopyState, { kind: 'alive' }>['migration'] = null): CopyState =>
    ({ kind: 'alive', running: runstate === 'running', runstate, migration });
  const gone: CopyState = { kind: 'gone', exit: 'its QEMU exited' };
  const unknown: CopyState = { kind: 'unknown', why: 'QMP did not answer within 3000 ms' };
  const newEntry = (over: Partial<JournalEntry> = {}) => entry({ state: 'switchover', destinationResumed: false, ...over });
  const brief = (p: ReturnType<typeof decideRecovery>) => ({ stop: p.stop, resume: p.resume, outcome: p.outcome, runningOn: p.runningOn, pausedOn: p.attention?.pausedOn ?? null });

  it('a destination that never ran is stopped and the source resumed, even when the source completed', () => {
    const p = decideRecovery(newEntry(), up('postmigrate', 'completed'), up('paused'));
    expect(brief(p)).toEqual({ stop: ['destination'], resume: 'source', outcome: 'rolled-back', runningOn: 'source', pausedOn: null });
    expect(p.notes).toContain('the source had sent the whole guest, but the destination never ran: the source takes it back, so nothing is lost');
    expect(brief(decideRecovery(newEntry({ state: 'monitor' }), up('running', 'cancelled'), up('inmigrate')))).toEqual({ stop: ['destination'], resume: null, outcome: 'rolled-back', runningOn: 'source', pausedOn: null });
    expect(brief(decideRecovery(newEntry({ state: 'prepare' }), up('running'), gone))).toEqual({ stop: [], resume: null, outcome: 'source-kept', runningOn: 'source', pausedOn: null });
  });

  it('a destination that ran keeps the guest: the source is stopped, never resumed', () => {
    expect(brief(decideRecovery(newEntry({ state: 'confirm', destinationResumed: true }), up('postmigrate', 'completed'), up('running')))).toEqual({ stop: ['source'], resume: null, outcome: 'completed', runningOn: 'destination', pausedOn: null });
    // QEMU's word beats the journal's: a destination that runs did run.
    expect(brief(decideRecovery(newEntry(), up('postmigrate', 'completed'), up('running')))).toEqual({ stop: ['source'], resume: null, outcome: 'completed', runningOn: 'destination', pausedOn: null });
    expect(brief(decideRecovery(newEntry({ destinationResumed: true }), gone, up('running')))).toEqual({ stop: [], resume: null, outcome: 'completed', runningOn: 'destination', pausedOn: null });
  });

  it('a destination that ran and is gone leaves the paused source paused: needs-attention with what settles it', () => {
    const p = decideRecovery(newEntry({ state: 'confirm', destinationResumed: true }), up('postmigrate', 'completed'), gone);
    expect(brief(p)).toEqual({ stop: [], resume: null, outcome: 'needs-attention', runningOn: null, pausedOn: 'source' });
    expect(p.attention!.settle).toMatch(/goes back in time: run "miglab recover LAB\.yaml --resume-source g" to take it back, or stop it/);
    // The same for an entry an older engine wrote at the switchover (no destinationResumed).
    const old = entry({ state: 'switchover' });
    expect(brief(decideRecovery(old, up('postmigrate', 'completed'), gone)).outcome).toBe('needs-attention');
    // ...unless the source QEMU never migrated at all: then nothing can have run elsewhere.
    expect(brief(decideRecovery(old, up('paused'), gone))).toEqual({ stop: [], resume: 'source', outcome: 'source-kept', runningOn: 'source', pausedOn: null });
  });

  it('a rollback under way is finished', () => {
    expect(brief(decideRecovery(newEntry({ state: 'confirm', destinationResumed: true, rollback: true }), up('postmigrate', 'completed'), up('paused')))).toEqual({ stop: ['destination'], resume: 'source', outcome: 'rolled-back', runningOn: 'source', pausedOn: null });
  });

  it('a side that cannot be asked is unknown, never gone: the other copy stays paused', () => {
    // The destination may run the guest: the source is not resumed.
    const p = decideRecovery(newEntry({ destinationResumed: true }), up('postmigrate', 'completed'), unknown);
    expect(brief(p)).toEqual({ stop: [], resume: null, outcome: 'needs-attention', runningOn: null, pausedOn: 'source' });
    expect(p.attention!.reason).toBe('the destination does not answer (QMP did not answer within 3000 ms) and may run the guest, so the source stays paused');
    // The source cannot be asked: the loaded destination, maybe the only full copy, is kept paused.
    expect(brief(decideRecovery(newEntry(), unknown, up('paused')))).toEqual({ stop: [], resume: null, outcome: 'needs-attention', runningOn: null, pausedOn: 'destination' });
    // A destination that never ran cannot run by itself: the source runs, and the entry stays open.
    expect(brief(decideRecovery(newEntry(), up('postmigrate', 'completed'), unknown))).toEqual({ stop: [], resume: 'source', outcome: 'needs-attention', runningOn: 'source', pausedOn: null });
  });

  it('with the source gone, a destination holding the whole guest takes it; otherwise the guest is lost', () => {
    expect(brief(decideRecovery(newEntry(), gone, up('paused', 'completed')))).toEqual({ stop: [], resume: 'destination', outcome: 'completed', runningOn: 'destination', pausedOn: null });
    expect(brief(decideRecovery(newEntry(), gone, up('inmigrate', 'active')))).toEqual({ stop: ['destination'], resume: null, outcome: 'lost', runningOn: null, pausedOn: null });
    expect(brief(decideRecovery(newEntry(), gone, gone))).toEqual({ stop: [], resume: null, outcome: 'lost', runningOn: null, pausedOn: null });
  });

  it('a migration that would not end, or post-copy, is left to a person', () => {
    expect(decideRecovery(newEntry({ state: 'monitor' }), up('running', 'active'), up('inmigrate')).outcome).toBe('needs-attention');
    expect(decideRecovery(newEntry(), up('paused', 'postcopy-active'), up('running')).attention!.reason).toMatch(/post-copy/);
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
