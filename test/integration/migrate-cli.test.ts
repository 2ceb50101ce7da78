// `miglab migrate` and `miglab recover` as a user runs them, against two namespace hosts that each
// run `miglab agent` (root): a plain migration, one with --tls, one through an emulated link, and
// then the recovery outcomes a stopped engine can leave behind: source-kept (the source has the
// guest, the destination nothing; paused or not) and lost (no copy anywhere). One guest serves
// the whole file. This test's own engine stays connected to both agents, so it sees every copy.
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { LabCa } from '../../electron/engine/tls/certs';
import type { Guest } from '../../electron/engine/hosts/host';
import { listNetnsObjects } from '../../electron/engine/network/netns';
import { netnsAgentLab, type NetnsAgentLab } from '../../electron/engine/lab/netns-lab';
import { MigrationJournal, type JournalEntry } from '../../electron/engine/migration/journal';
import type { MigrationResult } from '../../electron/engine/migration/types';
import { queryStatus } from '../../electron/engine/qmp';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { jsonOf, runMiglab, type CliRun } from '../helpers/cli';
import { requireLabGuest } from '../helpers/lab';
import { qemuPids } from '../helpers/leaks';
import { expectOneCopyOn } from '../helpers/migration';
import type { RecoveryReport } from '../../electron/engine/migration/recovery-report';

const GUEST = 'mc';

let work: string;
let n: NetnsAgentLab;
let prefix: string;
let labFile: string;
let journal: MigrationJournal;
const cliEnv = () => ({ MIGLAB_STATE_DIR: join(work, 'state') });

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-migrate-cli');
  journal = new MigrationJournal(join(work, 'state'));
  n = await netnsAgentLab({ subnet: '10.84.0.0/24' });
  prefix = n.netns.prefix;
  const g = await n.lab.startGuest('host-a', { name: GUEST, memoryMiB: 256 });
  await g.waitReady(90_000);
  // A pattern in 32 MiB, checked wherever the guest lands; the guest stays idle while it moves.
  await g.labload!.startLoad({ workingSetMiB: 32, rateMBps: 1 }, { timeoutMs: 60_000 });
  await g.labload!.stopLoad();
  labFile = join(work, 'lab.yaml');
  await writeFile(labFile, stringify({
    network: { subnet: '10.84.0.0/24', address: n.netns.bridge.address },
    hosts: [...n.agents.values()].map((a) => ({ name: a.name, agent: { url: a.info.url, token: a.token, fingerprint: a.info.fingerprint } })),
  }));
}, 180_000);

afterAll(async () => {
  const dir = n?.dir;
  await n?.dispose();
  if (prefix) expect(await listNetnsObjects(prefix)).toEqual({ namespaces: [], links: [] });
  if (dir) expect(await qemuPids(dir)).toEqual([]);
  await removeDir(work);
});

async function migrate(to: string, flags: string[] = [], input?: string): Promise<{ run: CliRun; r: MigrationResult }> {
  const run = await runMiglab(['migrate', labFile, GUEST, '--to', to, ...flags, '--json'], cliEnv(), 180_000, input);
  return { run, r: jsonOf<MigrationResult>(run) };
}

/** This test's engine sees the guest on `host` alone (the agents told it), running, memory intact. */
async function expectArrived(host: string): Promise<Guest> {
  const holders = () => n.lab.hosts().filter((h) => h.guest(GUEST) && !h.guest(GUEST)!.exit).map((h) => h.name);
  for (let i = 0; i < 100 && holders().join() !== host; i++) await delay(100);
  expect(holders()).toEqual([host]); // no other copy, not even a paused one
  const g = await expectOneCopyOn(n.lab, GUEST, host);
  const v = await g.labload!.verify({ timeoutMs: 60_000 });
  expect(v).toMatchObject({ bad: 0, sweepOk: true });
  expect(v.pages).toBe(8192);
  return g;
}

function hostAddress(name: string): string {
  return n.netns.host(name).address;
}

describe('miglab migrate between namespace agents', () => {
  it('moves the guest to the destination, across the veths, and journals the job as completed', async () => {
    const { run, r } = await migrate('host-b');
    expect(run.code, `${r.reason} ${run.stderr}`).toBe(0);
    expect(r).toMatchObject({ status: 'completed', guest: GUEST, from: 'host-a', to: 'host-b', runningOn: 'host-b', tls: false, link: null });
    // The stream went to host-b's own address on the bridge.
    expect(r.checks.find((c) => c.name === 'port')!.message).toMatch(new RegExp(`on ${hostAddress('host-b').replaceAll('.', '\\.')}:\\d+`));
    expect(r.passes.length).toBeGreaterThan(0);
    expect(run.stderr).toMatch(/phase migrate\nphase monitor\n/);
    expect((await journal.list()).map((e) => [e.id, e.state])).toEqual([[r.id, 'completed']]);
    await expectArrived('host-b');
  }, 150_000);

  it('--tls: the destination QEMU takes the stream only over TLS, with certificates from the lab CA', async () => {
    const { run, r } = await migrate('host-a', ['--tls']);
    expect(run.code, `${r.reason} ${run.stderr}`).toBe(0);
    expect(r).toMatchObject({ status: 'completed', from: 'host-b', to: 'host-a', tls: true });
    // The lab CA was made in the run's state dir, and the CLI says which one it used.
    expect(existsSync(join(work, 'state', 'lab-ca'))).toBe(true);
    const ca = await LabCa.loadOrCreate(join(work, 'state', 'lab-ca'));
    expect(run.stderr).toContain(`TLS: every host has a certificate from the lab CA (${ca.fingerprint.slice(0, 23)}...)`);
    const g = await expectArrived('host-a');
    // QEMU's own word: the copy that received the stream had TLS credentials set for it, and a
    // QEMU with tls-creds refuses a stream that is not TLS.
    const params = await g.qmp.execute<{ 'tls-creds'?: string }>('query-migrate-parameters');
    expect(params['tls-creds']).toBe('miglab-tls-server');
  }, 150_000);

  it('--link-bandwidth/--link-latency/--link-loss: the stream goes through the relay, its counters in the output', async () => {
    const { run, r } = await migrate('host-b', ['--link-bandwidth', '50', '--link-latency', '5', '--link-loss', '0.2']);
    expect(run.code, `${r.reason} ${run.stderr}`).toBe(0);
    expect(r).toMatchObject({ status: 'completed', from: 'host-a', to: 'host-b', tls: false });
    expect(r.link).toMatchObject({ profile: { bandwidthMBps: 50, latencyMs: 5, lossPercent: 0.2 }, cut: false, totalConnections: 1 });
    // Everything QEMU sent crossed the relay, no faster than the emulated link, with some segments "lost".
    expect(r.link!.bytesForward).toBeGreaterThanOrEqual(r.transferredBytes! * 0.95);
    expect(r.transferredBytes! / 1e3 / r.totalTimeMs!).toBeLessThan(50 * 1.15);
    expect(r.link!.lossStalls).toBeGreaterThan(0);
    await expectArrived('host-b');
  }, 150_000);

  it('--pause-before-switchover: QEMU stops the guest and waits until Enter, then the migration goes on', async () => {
    const { run, r } = await migrate('host-a', ['--pause-before-switchover'], '\n');
    expect(run.code, `${r.reason} ${run.stderr}`).toBe(0);
    expect(r).toMatchObject({ status: 'completed', from: 'host-b', to: 'host-a' });
    expect(run.stderr).toContain('QEMU has stopped the guest before the switchover and waits: press Enter to continue (Ctrl-C cancels)');
    // QEMU's pre-switchover comes with its STOP: the prompt, then the switchover goes on to confirm.
    expect(run.stderr.indexOf('press Enter')).toBeLessThan(run.stderr.indexOf('phase confirm'));
    await expectArrived('host-a');
    const back = await migrate('host-b');
    expect(back.r.status, back.r.reason ?? '').toBe('completed');
    await expectArrived('host-b');
  }, 150_000);

  it('--keep-source: the paused source is kept, and "back" takes the guest back to it, saying how far back in time', async () => {
    const { run, r } = await migrate('host-a', ['--keep-source', '20000'], 'back\n');
    expect(run.code).toBe(1); // it did not move
    expect(run.stderr).toContain(`${GUEST} runs on host-a; its paused source is kept 20.0 s: type "back" and Enter to take it back there`);
    expect(r).toMatchObject({ status: 'cancelled', failure: 'rolled-back', from: 'host-b', to: 'host-a', runningOn: 'host-b', sourceKept: { ms: 20000 } });
    expect(r.rolledBackMs).toBeGreaterThan(0);
    expect(r.reason).toMatch(new RegExp(`^Taken back to host-b on request\\. It ran on host-a for \\d+ ms; what it did there is lost\\.`));
    expect(r.phases.map((p) => p.name)).toContain('confirm');
    expect(r.phases.map((p) => p.name)).not.toContain('cleanup');
    await expectArrived('host-b');
  }, 150_000);
});

describe('miglab recover', () => {
  /** A job the journal says was in flight when its engine stopped. */
  async function inFlight(state: JournalEntry['state'], from: string, to: string): Promise<string> {
    const id = randomUUID();
    const at = new Date().toISOString();
    // As this engine writes them: the destination not yet resumed (its `cont` comes after the switchover).
    await journal.write({ id, guest: GUEST, from, to, state, port: null, startedAt: at, updatedAt: at, result: null, destination: null, destinationResumed: false });
    return id;
  }

  async function recoverJson(): Promise<{ run: CliRun; recovered: RecoveryReport[] }> {
    const run = await runMiglab(['recover', labFile, '--json'], cliEnv());
    return { run, recovered: jsonOf<{ recovered: RecoveryReport[] }>(run).recovered };
  }

  it('source-kept: the engine stopped while preparing; the source runs the guest, the destination has none', async () => {
    const id = await inFlight('prepare', 'host-b', 'host-a');
    const { run, recovered } = await recoverJson();
    expect(run.code, run.stderr).toBe(0);
    expect(recovered).toEqual([expect.objectContaining({ id, guest: GUEST, from: 'host-b', to: 'host-a', lastPhase: 'prepare', outcome: 'source-kept', runningOn: 'host-b', actions: [] })]);
    expect(await journal.read(id)).toMatchObject({ state: 'failed', recovery: { outcome: 'source-kept' } });
    await expectOneCopyOn(n.lab, GUEST, 'host-b');
  });

  it('source-kept: a source left paused at the switchover, with no destination, is resumed', async () => {
    const g = n.lab.host('host-b').guest(GUEST)!;
    await g.qmp.execute('stop');
    expect((await queryStatus(g.qmp)).running).toBe(false);
    const id = await inFlight('switchover', 'host-b', 'host-a');
    const run = await runMiglab(['recover', labFile], cliEnv());
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout.trim()).toBe(`${GUEST} (host-b -> host-a, stopped in switchover): source-kept, runs on host-b; resumed the source copy on host-b, which was paused ("paused")`);
    expect(await journal.read(id)).toMatchObject({ state: 'failed', recovery: { outcome: 'source-kept', runningOn: 'host-b' } });
    expect((await queryStatus(g.qmp)).running).toBe(true);
    await expectArrived('host-b');
  });

  it('needs-attention when the destination ran and is gone: the source stays paused until --resume-source takes it back', async () => {
    const g = n.lab.host('host-b').guest(GUEST)!;
    await g.qmp.execute('stop'); // as after the switchover: the source paused, its destination resumed
    const at = new Date().toISOString();
    const id = randomUUID();
    await journal.write({ id, guest: GUEST, from: 'host-b', to: 'host-a', state: 'confirm', port: null, startedAt: at, updatedAt: at, result: null, destination: null, destinationResumed: true });
    const first = await recoverJson();
    expect(first.run.code).toBe(1);
    expect(first.recovered).toEqual([expect.objectContaining({ id, outcome: 'needs-attention', runningOn: null, attention: expect.objectContaining({ pausedOn: 'host-b', settle: expect.stringContaining(`--resume-source ${GUEST}`) }) })]);
    expect((await queryStatus(g.qmp)).running).toBe(false); // never resumed on a guess
    expect(await journal.read(id)).toMatchObject({ state: 'confirm', attempts: 1 }); // retried by the next engine
    const chosen = await runMiglab(['recover', labFile, '--resume-source', GUEST, '--json'], cliEnv());
    expect(chosen.code, chosen.stderr).toBe(0);
    expect(jsonOf<{ recovered: RecoveryReport[] }>(chosen).recovered).toEqual([expect.objectContaining({ id, outcome: 'rolled-back', runningOn: 'host-b' })]);
    expect(await journal.read(id)).toMatchObject({ state: 'failed', recovery: { outcome: 'rolled-back' } });
    await expectArrived('host-b');
  });

  it('lost: the guest died while no engine watched, and neither host has a copy', async () => {
    const g = n.lab.host('host-b').guest(GUEST)!;
    process.kill(g.pid!, 'SIGKILL');
    await g.exited;
    for (let i = 0; i < 50 && n.lab.hosts().some((h) => h.guest(GUEST)); i++) await delay(100);
    const id = await inFlight('monitor', 'host-b', 'host-a');
    const { run, recovered } = await recoverJson();
    expect(run.code).toBe(1); // a lost guest is a failure of the recovery
    expect(recovered).toEqual([expect.objectContaining({ id, outcome: 'lost', runningOn: null, lastPhase: 'monitor', actions: ['no running copy of the guest was found on either host'] })]);
    expect(await journal.read(id)).toMatchObject({ state: 'failed', recovery: { outcome: 'lost' } });
    // Settled once: a second engine finds nothing in flight.
    const again = await runMiglab(['recover', labFile], cliEnv());
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('No migration was in flight between these hosts.');
    expect(await qemuPids(n.dir)).toEqual([]);
  });
});
