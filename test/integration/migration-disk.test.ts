// A guest with a disk between two local hosts that share the image: the destination QEMU opens
// the same file, paused (-S, late-block-activate), and takes the image's write permission only
// when it runs. Sampled throughout, never do two QEMUs hold it; when the destination dies during
// confirm, the source (whose disk the destination has written to) stays paused for a person to
// choose, and nothing writes the image twice over.
import { readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Guest } from '../../electron/engine/hosts/host';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { migrateGuest } from '../../electron/engine/migration/orchestrator';
import type { MigrationResult } from '../../electron/engine/migration/types';
import { queryStatus } from '../../electron/engine/qmp';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { writeBootDisk } from '../helpers/boot-disk';
import { expectScopeClean } from '../helpers/lab';
import { runningCopies } from '../helpers/migration';

let work: string;
let lab: Lab;
let disk: string;

beforeAll(async () => {
  work = await makeTempDir('it-disk');
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
});

afterAll(async () => {
  await lab?.dispose();
  for (const h of ['host-a', 'host-b']) await expectScopeClean(join(work, 'run', h));
  await removeDir(work);
});

/**
 * QEMU's image locking (file-posix.c): a QEMU that holds the "write" permission on an image holds
 * an OFD lock on byte 100 + log2(BLK_PERM_WRITE) = 101 of it. The kernel lists each fd's locks in
 * its fdinfo. Returns the pids among `pids` that hold it now.
 */
async function writersOf(file: string, pids: number[]): Promise<number[]> {
  const holders: number[] = [];
  for (const pid of pids) {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')) !== file) continue;
      const info = await readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8').catch(() => '');
      // "lock:	1: OFDLCK ADVISORY  READ -1 fe:00:2156187 100 101": a byte range, first and last.
      const ranges = [...info.matchAll(/^lock:.*\s(\d+)\s+(\d+)\s*$/gm)].map((m) => [Number(m[1]), Number(m[2])] as const);
      if (ranges.some(([a, b]) => a <= 101 && 101 <= b)) {
        holders.push(pid);
        break;
      }
    }
  }
  return holders;
}

/** Samples the image's writers every 2 ms among every QEMU of the guest on either host. */
function watchWriters(name: string) {
  let on = true;
  let samples = 0;
  let maxWriters = 0;
  const seen = new Set<number>();
  const loop = (async () => {
    while (on) {
      const pids = lab.hosts().map((h) => h.guest(name)?.pid).filter((p): p is number => p !== undefined);
      const w = await writersOf(disk, pids);
      samples++;
      maxWriters = Math.max(maxWriters, w.length);
      for (const p of w) seen.add(p);
      await delay(2);
    }
  })();
  return { stop: async () => ((on = false), await loop, { samples, maxWriters, writers: seen.size }) };
}

async function bootDiskGuest(name: string): Promise<Guest> {
  disk = join(work, `${name}.raw`); // each test its own image: a failed one cannot hold the next one's
  await writeBootDisk(disk);
  const g = await lab.host('host-a').startGuest({ name, memoryMiB: 64, boot: { kind: 'disk', path: disk, format: 'raw', readyPattern: 'MIGLAB-DISK-WROTE' } });
  await g.waitReady(60_000);
  return g;
}

describe('a guest with a shared disk', () => {
  it('moves with one QEMU at a time holding the image for writing', async () => {
    const g = await bootDiskGuest('disky');
    expect(await writersOf(disk, [g.pid!])).toEqual([g.pid]); // the lock is what the sampler thinks it is
    const writers = watchWriters('disky');
    const r = await migrateGuest({ guest: g, from: lab.host('host-a'), to: lab.host('host-b'), options: { keepSourceMs: 0 } }).result;
    const seen = await writers.stop();
    expect(r.status, `${r.reason}`).toBe('completed');
    expect(r.checks.find((c) => c.name === 'disks')).toMatchObject({ status: 'pass', message: expect.stringMatching(/the same file: device \d+, inode \d+/) });
    expect(seen.samples).toBeGreaterThan(20);
    expect(seen.maxWriters).toBe(1);
    expect(seen.writers).toBe(2); // the source until the switchover, the destination after it
    const moved = lab.host('host-b').guest('disky')!;
    expect(await writersOf(disk, [moved.pid!])).toEqual([moved.pid]);
    await moved.stop();
  });

  it('when the destination dies during confirm, the source stays paused and the image never has two writers', async () => {
    const g = await bootDiskGuest('disky2');
    const writers = watchWriters('disky2');
    let killed = false;
    const run = migrateGuest({ guest: g, from: lab.host('host-a'), to: lab.host('host-b'), options: { keepSourceMs: 0 } });
    // The destination dies the moment QEMU says it runs the guest (it has taken the image).
    const killOnResume = run.job.on('event', (e) => {
      if (e.type === 'phase' && e.phase === 'confirm') {
        const dst = run.job.destination!;
        dst.qmp.onEvent('RESUME', () => {
          killed = true;
          process.kill(dst.pid!, 'SIGKILL');
        });
      }
    });
    const r: MigrationResult = await run.result;
    killOnResume.removeAllListeners();
    await delay(200);
    const seen = await writers.stop();
    expect(killed).toBe(true);
    expect(r.status, `${r.reason}`).toBe('needs-attention');
    expect(r.failure).toBe('destination-crashed');
    expect(r.runningOn).toBeNull();
    expect(r.rolledBackMs).toBeNull(); // a disk guest is never taken back on its own
    expect(r.attention).toMatchObject({ pausedOn: ['host-a'], unknown: [], settle: expect.stringMatching(/--resume-source disky2/) });
    expect(seen.maxWriters).toBe(1);
    // The source stands paused, its image released at the switchover: nobody writes it now.
    expect(await runningCopies(lab, 'disky2')).toEqual([]);
    expect((await queryStatus(g.qmp)).status).toBe('postmigrate');
    expect(await writersOf(disk, [g.pid!])).toEqual([]);
    await g.stop();
  });
});
