// Faults across namespace hosts, each repeated: the destination QEMU killed, the link cut, the
// destination agent killed, and the engine killed and restarted, all mid-migration. After each:
// exactly one copy of the guest runs (on the source unless the switchover happened), its
// heartbeats go on, its memory is intact, and nothing is left behind.
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { Guest } from '../../electron/engine/hosts/host';
import { netnsAgentLab, type NetnsAgentLab } from '../../electron/engine/lab/netns-lab';
import { listNetnsObjects } from '../../electron/engine/network/netns';
import { migrateGuest, type MigrationJob } from '../../electron/engine/migration/orchestrator';
import type { MigrationOptions, MigrationResult } from '../../electron/engine/migration/types';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { qemuPids } from '../helpers/leaks';
import { requireLabGuest } from '../helpers/lab';
import { expectOneCopyOn } from '../helpers/migration';
import { MIGLAB_BIN } from '../helpers/agents';

/** Each fault this many times: 5 in CI, as the issue asks; 2 on a developer's run. */
const REPEATS = Number(process.env.MIGLAB_FAULT_REPEATS ?? (process.env.CI ? 5 : 2));
const GUEST = 'fg';

let work: string;
let n: NetnsAgentLab;
let prefix: string;
const stateDir = () => join(work, 'state');

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-faults');
  process.env.MIGLAB_STATE_DIR = stateDir(); // this file's own migration journal
  n = await netnsAgentLab({ subnet: '10.83.0.0/24', reconnectWaitMs: 30_000 });
  prefix = n.netns.prefix;
  const g = await n.lab.startGuest('host-a', { name: GUEST, memoryMiB: 256 });
  await g.waitReady(90_000);
  // A pattern in 32 MiB to check after every fault; the guest stays idle while it moves.
  await g.labload!.startLoad({ workingSetMiB: 32, rateMBps: 1 }, { timeoutMs: 60_000 });
  await g.labload!.stopLoad();
}, 180_000);

afterAll(async () => {
  const dir = n?.dir;
  await n?.dispose();
  delete process.env.MIGLAB_STATE_DIR;
  if (prefix) expect(await listNetnsObjects(prefix)).toEqual({ namespaces: [], links: [] });
  if (dir) expect(await qemuPids(dir)).toEqual([]);
  for (const a of n?.agents.values() ?? []) expect(a.proc.exitCode !== null || a.proc.signalCode !== null).toBe(true);
  await removeDir(work);
});

function where(): { from: string; to: string; guest: Guest } {
  const from = n.lab.hosts().find((h) => h.guest(GUEST) && !h.guest(GUEST)!.exit)!;
  const to = n.lab.hosts().find((h) => h !== from)!;
  return { from: from.name, to: to.name, guest: from.guest(GUEST)! };
}

/** Starts a migration slow enough to be hit mid-stream, and calls `fault` once it streams. */
async function migrateWithFault(options: Partial<MigrationOptions>, fault: (job: MigrationJob, to: string) => Promise<void>): Promise<MigrationResult> {
  const { from, to, guest } = where();
  let hit: Promise<void> | null = null;
  const { job, result } = migrateGuest(
    { guest, from: n.lab.host(from), to: n.lab.host(to), options: { bandwidthMBps: 20, ...options }, network: n.network, maxDurationMs: 120_000 },
    (ev) => {
      if (ev.type === 'phase' && ev.phase === 'monitor' && !hit) hit = delay(800).then(() => fault(job, to));
    },
  );
  const r = await result;
  expect(hit, 'the fault was injected mid-migration').not.toBeNull();
  await hit;
  return r;
}

/** One copy, heartbeats going, memory intact, and only that guest's QEMU on the machine. */
async function expectSettled(host: string, opts: { nicOnOurSwitch?: boolean } = {}): Promise<void> {
  const g = await expectOneCopyOn(n.lab, GUEST, host);
  const v = await g.labload!.verify({ timeoutMs: 60_000 });
  expect(v.bad).toBe(0);
  expect(v.pages).toBeGreaterThan(0);
  // The destination's runtime files and its switch port are gone with it.
  for (let i = 0; i < 50 && (await qemuPids(n.dir)).length !== 1; i++) await delay(100);
  expect(await qemuPids(n.dir)).toEqual([g.pid]);
  // A guest moved by another engine got its NIC from that engine's switch, which died with it.
  const ours = opts.nicOnOurSwitch ?? true;
  expect(n.network.switch.portInfo().filter((p) => p.guest === GUEST).map((p) => p.host)).toEqual(ours ? [host] : []);
}

describe(`faults across namespace hosts (each ${REPEATS}x)`, () => {
  it('the destination QEMU killed mid-migration: the source keeps the guest', async () => {
    for (let i = 0; i < REPEATS; i++) {
      const { from } = where();
      const r = await migrateWithFault({}, async (job) => {
        process.kill(job.destination!.pid!, 'SIGKILL');
      });
      expect(r.status).toBe('failed');
      expect(r.runningOn).toBe(from);
      await expectSettled(from);
    }
  }, 120_000 * REPEATS);

  it('the link cut mid-migration: the stream fails, the source keeps the guest', async () => {
    for (let i = 0; i < REPEATS; i++) {
      const { from } = where();
      const r = await migrateWithFault({ bandwidthMBps: 1000, link: { bandwidthMBps: 20 } }, async (job) => {
        const stats = await job.link('cut');
        expect(stats.cut).toBe(true);
      });
      expect(r.status).toBe('failed');
      expect(r.runningOn).toBe(from);
      expect(r.link?.cut).toBe(true);
      expect(r.link?.bytesForward).toBeGreaterThan(0);
      await expectSettled(from);
    }
  }, 120_000 * REPEATS);

  it('the destination agent killed mid-migration and restarted: one copy, where QEMU left it', async () => {
    for (let i = 0; i < REPEATS; i++) {
      const { from, to } = where();
      const r = await migrateWithFault({}, async (_job, dest) => {
        await n.killAgent(dest);
        await delay(1000);
        const a = await n.restartAgent(dest);
        expect(a.info.adopted).toContain(GUEST); // the incoming QEMU outlived its agent
      });
      // QEMU streams without the agents: usually it completes; either way, one copy.
      expect(r.runningOn, `${r.status}: ${r.reason}`).toBe(r.status === 'completed' ? to : from);
      await expectSettled(r.runningOn!);
    }
  }, 120_000 * REPEATS);

  it('the engine killed mid-migration and restarted: the new engine settles it', async () => {
    const labFile = join(work, 'lab.yaml');
    await writeFile(labFile, stringify({
      network: { subnet: '10.83.0.0/24', address: n.netns.bridge.address },
      hosts: [...n.agents.values()].map((a) => ({ name: a.name, agent: { url: a.info.url, token: a.token, fingerprint: a.info.fingerprint } })),
    }));
    const cli = (args: string[]) => spawn(process.execPath, [MIGLAB_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MIGLAB_STATE_DIR: stateDir() } });
    let nicElsewhere = false; // once moved by a killed engine, the NIC is on that engine's dead switch
    for (let i = 0; i < REPEATS; i++) {
      const { from, to } = where();
      // Engine 1: a separate `miglab migrate` process, killed once the stream runs.
      const engine = cli(['migrate', labFile, GUEST, '--to', to, '--bandwidth', '20', '--json']);
      let err = '';
      const killed = new Promise<void>((resolve, reject) => {
        engine.stderr!.on('data', (d: Buffer) => {
          err += d.toString();
          if (/phase monitor/.test(err) && engine.exitCode === null && !engine.killed) {
            setTimeout(() => {
              engine.kill('SIGKILL');
              resolve();
            }, 800);
          }
        });
        engine.once('exit', () => (engine.killed ? resolve() : reject(new Error(`the migrate engine ended by itself: ${err}`))));
      });
      await killed;
      // Engine 2: `miglab recover` reconnects to the agents and settles what was in flight.
      const rec = cli(['recover', labFile, '--json']);
      let out = '';
      let recErr = '';
      rec.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      rec.stderr!.on('data', (d: Buffer) => (recErr += d.toString()));
      const code = await new Promise<number | null>((resolve) => rec.once('exit', resolve));
      expect(code, recErr).toBe(0);
      const { recovered } = JSON.parse(out) as { recovered: Array<{ guest: string; outcome: string; runningOn: string; lastPhase: string }> };
      expect(recovered).toHaveLength(1);
      expect(recovered[0]!.guest).toBe(GUEST);
      // rolled-back: the destination copy was stopped; source-kept: it had already given up (its
      // stream cancelled, its QEMU exited) by the time the new engine asked.
      expect(['completed', 'rolled-back', 'source-kept']).toContain(recovered[0]!.outcome);
      expect(recovered[0]!.runningOn).toBe(recovered[0]!.outcome === 'completed' ? to : from);
      // This test's own engine saw it all through the agents' events.
      for (let t = 0; t < 100 && where().from !== recovered[0]!.runningOn; t++) await delay(100);
      const moved = recovered[0]!.outcome === 'completed';
      await expectSettled(recovered[0]!.runningOn, { nicOnOurSwitch: !moved && !nicElsewhere });
      nicElsewhere ||= moved;
    }
  }, 150_000 * REPEATS);
});
