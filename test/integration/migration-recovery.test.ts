// An engine SIGKILLed mid-migration between two local hosts leaves its QEMUs running in its dead
// temp dirs; a new engine recovers from the journal: it adopts both QEMUs, asks them, and leaves
// exactly one copy running, the journal entry closed and nothing behind (QEMU, temp dirs).
import { spawn } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { LocalHost } from '../../electron/engine/hosts/local/local-host';
import { MigrationJournal, type JournalEntry } from '../../electron/engine/migration/journal';
import { recoverInterruptedMigrations } from '../../electron/engine/migration/recovery';
import { QmpClient, cont, queryMigrate, queryStatus } from '../../electron/engine/qmp';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { requireLabGuest } from '../helpers/lab';
import { qemuPids } from '../helpers/leaks';

const ROOT = resolve(__dirname, '../..');
const GUEST = 'rg';

/** The engine that dies: two local hosts, a guest booted on host-a, migrated to host-b by the real job. */
const ENGINE = `
import { LocalHost } from '${ROOT}/electron/engine/hosts/local/local-host.ts';
import { MigrationJournal } from '${ROOT}/electron/engine/migration/journal.ts';
import { migrateGuest } from '${ROOT}/electron/engine/migration/orchestrator.ts';
const [stateDir, bandwidth] = process.argv.slice(2);
const a = new LocalHost({ name: 'host-a' });
const b = new LocalHost({ name: 'host-b' });
const g = await a.startGuest({ name: '${GUEST}', memoryMiB: 256 });
await g.waitReady(90_000);
process.stderr.write('ready\\n');
const { result } = migrateGuest(
  { guest: g, from: a, to: b, journal: new MigrationJournal(stateDir), options: { bandwidthMBps: Number(bandwidth) } },
  (ev) => { if (ev.type === 'phase') process.stderr.write('phase ' + ev.phase + '\\n'); },
);
await result;
process.stderr.write('finished\\n');
`;

let work: string;
let runDir: string;
let stateDir: string;
let hosts: LocalHost[] = [];

beforeAll(async () => {
  await requireLabGuest();
});

beforeEach(async () => {
  work = await makeTempDir('it-recover');
  runDir = join(work, 'run');
  stateDir = join(work, 'state');
  await mkdir(runDir);
  await writeFile(join(work, 'engine.mts'), ENGINE);
});

afterEach(async () => {
  await Promise.all(hosts.map((h) => h.dispose()));
  hosts = [];
  // Whatever a failed case left: no QEMU of this test outlives it.
  for (const pid of await qemuPids(work)) process.kill(pid, 'SIGKILL');
  await removeDir(work);
});

/**
 * Runs the engine until it prints `phase <phase>` (and, with `journalled`, until its journal says
 * so too), then SIGKILLs it: its QEMUs stay behind.
 */
async function engineKilledAt(phase: string, bandwidthMBps: number, journalled = false): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(work, 'engine.mts'), stateDir, String(bandwidthMBps)], {
    cwd: ROOT, env: { ...process.env, MIGLAB_RUNTIME_DIR: runDir }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((res) => child.on('exit', () => res()));
  const end = performance.now() + 150_000;
  while (!stderr.includes(`phase ${phase}\n`) && child.exitCode === null && performance.now() < end) await delay(5);
  const journal = new MigrationJournal(stateDir);
  while (journalled && child.exitCode === null && (await journal.list())[0]?.state !== phase && performance.now() < end) await delay(5);
  child.kill('SIGKILL');
  await exited;
  expect(stderr, stderr).toContain(`phase ${phase}\n`);
  expect(stderr).not.toContain('finished');
}

/** The new engine's hosts: fresh objects with runtime dirs of their own, as after a restart. */
function newEngineHosts(): LocalHost[] {
  hosts = ['host-a', 'host-b'].map((name) => new LocalHost({ name, runtimeDir: join(work, 'new', name) }));
  return hosts;
}

async function theEntry(journal: MigrationJournal): Promise<JournalEntry> {
  const all = await journal.list();
  expect(all).toHaveLength(1);
  return all[0]!;
}

/** Exactly one QEMU of the guest is left, and it runs: on `host`. */
async function expectOneCopyOn(host: string): Promise<void> {
  const running: string[] = [];
  for (const h of hosts) {
    const g = h.guest(GUEST);
    if (g && !g.exit && (await queryStatus(g.qmp)).running) running.push(h.name);
  }
  expect(running).toEqual([host]);
  expect(await qemuPids(work)).toHaveLength(1);
}

/** Stops what is left; then no QEMU and no temp dir of either engine remains. */
async function expectNothingLeft(): Promise<void> {
  await Promise.all(hosts.map((h) => h.dispose()));
  hosts = [];
  expect(await qemuPids(work)).toEqual([]);
  expect(await readdir(runDir)).toEqual([]); // the dead engine's temp dirs went with their guests
}

describe('recovery after the engine was SIGKILLed', () => {
  it('at monitor: the stream still running is cancelled, the destination stopped, the source runs on', async () => {
    await engineKilledAt('monitor', 2, true);
    const journal = new MigrationJournal(stateDir);
    const before = await theEntry(journal);
    expect(before).toMatchObject({ state: 'monitor', destinationResumed: false, source: { kind: 'local', host: 'host-a' }, destination: { kind: 'local', host: 'host-b' } });
    expect(await qemuPids(work)).toHaveLength(2);
    const [r, ...more] = await recoverInterruptedMigrations(newEngineHosts(), journal);
    expect(more).toEqual([]);
    expect(r).toMatchObject({ runningOn: 'host-a', qemuStatus: 'cancelled', final: true, attempts: 1 });
    expect(r!.actions[0]).toMatch(/^the migration was still "(setup|active)" in QEMU: sent migrate_cancel$/);
    // The cancelled stream makes the destination QEMU give up and exit by itself: recovery finds
    // it gone, or still there (then stops it), depending on who is first.
    if (r!.outcome === 'rolled-back') expect(r!.actions).toContain('stopped the destination copy on host-b');
    else expect(r).toMatchObject({ outcome: 'source-kept', why: [expect.stringMatching(/destination gone \(QEMU exited[^)]*\. QEMU said: QEMU was reattached after a restart \(of its agent or engine\), so its exit status is not known\)$/), 'the destination was started paused and never resumed', 'the destination never ran the guest, so the source keeps it'] });
    await expectOneCopyOn('host-a');
    expect(await theEntry(journal)).toMatchObject({ state: 'failed', recovery: { outcome: r!.outcome }, attempts: 1 });
    expect(await journal.unfinished()).toEqual([]);
    await expectNothingLeft();
  }, 240_000);

  it('at switchover: the destination never ran, so it is stopped and the source resumed', async () => {
    await engineKilledAt('switchover', 1000);
    const journal = new MigrationJournal(stateDir);
    // The job emits the phase before its journal write ends: the entry says switchover or monitor.
    expect(await theEntry(journal)).toMatchObject({ state: expect.stringMatching(/^(monitor|switchover)$/), destinationResumed: false });
    const [r] = await recoverInterruptedMigrations(newEngineHosts(), journal);
    // QEMU finished the stream without the engine: the destination holds the whole guest, paused.
    expect(r).toMatchObject({ outcome: 'rolled-back', runningOn: 'host-a', qemuStatus: 'completed', final: true });
    expect(r!.why).toContain('the source had sent the whole guest, but the destination never ran: the source takes it back, so nothing is lost');
    expect(r!.actions).toEqual(['stopped the destination copy on host-b', 'resumed the source copy on host-a, which was paused ("postmigrate")']);
    await expectOneCopyOn('host-a');
    expect(await theEntry(journal)).toMatchObject({ state: 'failed', recovery: { outcome: 'rolled-back', runningOn: 'host-a' } });
    await expectNothingLeft();
  }, 240_000);

  it('at switchover, then the destination resumed (the engine died right after its cont): the destination keeps the guest', async () => {
    await engineKilledAt('switchover', 1000);
    const journal = new MigrationJournal(stateDir);
    const entry = await theEntry(journal);
    // The dead engine's last step, played by hand: journal first, then `cont` once the source completed.
    await journal.write({ ...entry, state: 'confirm', destinationResumed: true });
    const src = new QmpClient({ name: 'test/src' });
    const dst = new QmpClient({ name: 'test/dst' });
    try {
      await src.connect(join(entry.source!.runtimeDir!, 'qmp.sock'));
      await dst.connect(join(entry.destination!.runtimeDir!, 'qmp.sock'));
      for (let i = 0; i < 300 && (await queryMigrate(src)).status !== 'completed'; i++) await delay(50);
      expect((await queryMigrate(src)).status).toBe('completed');
      await cont(dst);
    } finally {
      await src.disconnect();
      await dst.disconnect();
    }
    const [r] = await recoverInterruptedMigrations(newEngineHosts(), journal);
    expect(r).toMatchObject({ outcome: 'completed', runningOn: 'host-b', qemuStatus: 'completed', final: true });
    expect(r!.actions).toEqual(['stopped the source copy on host-a']);
    await expectOneCopyOn('host-b');
    expect(await theEntry(journal)).toMatchObject({ state: 'completed', recovery: { outcome: 'completed' } });
    await expectNothingLeft();
  }, 240_000);
});
