// The QEMU launcher with real QEMU: destinations with the source's device model, custom guests,
// and bad input that must produce errors a person can act on.
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestImageError, LocalHost } from '../../electron/engine/hosts/local';
import { canBind } from '../../electron/engine/hosts/ports';
import { migrate, migrateIncoming, queryMigrate, queryStatus } from '../../electron/engine/qmp';
import { QemuStartError } from '../../electron/engine/qemu/process';
import { InvalidGuestSpecError } from '../../electron/engine/qemu/spec';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { expectGuestGone, expectScopeClean, requireLabGuest } from '../helpers/lab';

const run = promisify(execFile);

let work: string;
let hostA: LocalHost;
let hostB: LocalHost;

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-launcher');
  hostA = new LocalHost({ name: 'host-a', runtimeDir: join(work, 'a'), migrationPorts: { first: 47100, last: 47199 } });
  hostB = new LocalHost({ name: 'host-b', runtimeDir: join(work, 'b'), migrationPorts: { first: 47200, last: 47299 } });
});

afterAll(async () => {
  await Promise.all([hostA?.dispose(), hostB?.dispose()]);
  await expectScopeClean(join(work, 'a'));
  await expectScopeClean(join(work, 'b'));
  await removeDir(work);
});

describe('a migration destination', () => {
  it('starts with -incoming defer and the source\'s device model, and takes the running guest', async () => {
    const src = await hostA.startGuest({ name: 'mover', memoryMiB: 256 });
    await src.waitReady(60_000); // never migrate a guest that is still booting
    const dst = await hostB.startGuest(src.spec, { incoming: true });
    expect(dst.state).toBe('incoming');
    expect((await queryStatus(dst.qmp)).status).toBe('inmigrate');

    const port = await hostB.allocateMigrationPort();
    await migrateIncoming(dst.qmp, `tcp:127.0.0.1:${port}`);
    const done = src.qmp.waitForEvent('MIGRATION', {
      predicate: (e) => ['completed', 'failed'].includes(String(e.data.status)),
      timeoutMs: 60_000,
    });
    await src.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    await migrate(src.qmp, `tcp:127.0.0.1:${port}`);
    expect((await done).data.status).toBe('completed');
    expect((await queryMigrate(src.qmp)).status).toBe('completed');
    hostB.releaseMigrationPort(port);

    // The guest carries on at the destination: heartbeats, its memory, its answers.
    const ch = dst.labload!;
    const beats = ch.heartbeats.count;
    await new Promise((r) => setTimeout(r, 500));
    expect(ch.heartbeats.count).toBeGreaterThan(beats);
    expect((await queryStatus(dst.qmp)).status).toBe('running');
    expect(await ch.echo('after-migration')).toBe('after-migration');

    await src.stop();
    expectGuestGone(src);
    await dst.stop();
    expectGuestGone(dst);
  });
});

describe('custom guests', () => {
  it('boots a user\'s own kernel and initrd, with labload measurements marked unavailable', async () => {
    const image = await requireLabGuest();
    const g = await hostA.startGuest({
      name: 'custom-kernel',
      boot: { kind: 'kernel', kernel: image.kernel, initrd: image.initrd, append: `${image.append} miglab.name=custom-kernel` },
    });
    expect(g.labload).toBeNull();
    expect(g.state).toBe('running');
    await expect(g.waitReady(1000)).rejects.toThrow(/does not run labload/);
    await g.console.waitFor(/custom-kernel.*#/, 60_000, true);
    const exit = await g.stop();
    expect(exit.expected).toBe(true);
    expectGuestGone(g);
  });

  it('launches a qcow2 disk image, its format read by qemu-img', async () => {
    const disk = join(work, 'disk.qcow2');
    await run('qemu-img', ['create', '-f', 'qcow2', disk, '64M']);
    const g = await hostA.startGuest({ name: 'custom-disk', memoryMiB: 128, boot: { kind: 'disk', path: disk } });
    expect(g.labload).toBeNull();
    const blocks = await g.qmp.execute<Array<{ inserted?: { image: { format: string; filename: string } } }>>('query-block');
    expect(blocks.some((b) => b.inserted?.image.format === 'qcow2' && b.inserted.image.filename === disk)).toBe(true);
    await g.stop();
    expectGuestGone(g);
  });
});

describe('bad input', () => {
  it('names an image path that does not exist', async () => {
    const missing = join(work, 'no-such-kernel');
    const err = await hostA.startGuest({ name: 'nokernel', boot: { kind: 'kernel', kernel: missing } }).catch((e) => e);
    expect(err).toBeInstanceOf(GuestImageError);
    expect(err.message).toContain(missing);
    expect(err.message).toMatch(/does not exist/);
    expect(hostA.guests()).toHaveLength(0);
  });

  it('carries QEMU\'s own message when QEMU exits at start', async () => {
    const err = await hostA.startGuest({ name: 'badcpu', cpuModel: 'no-such-cpu' }).catch((e) => e);
    expect(err).toBeInstanceOf(QemuStartError);
    expect(err.message).toMatch(/did not start/);
    expect(err.message).toMatch(/no-such-cpu/); // QEMU: unable to find CPU model 'no-such-cpu'
    expect(err.exit.code).not.toBe(0);
    expect(hostA.guests()).toHaveLength(0);
  });

  it('lists every problem of an invalid guest description', async () => {
    const err = await hostA.startGuest({ name: 'Bad!', memoryMiB: 1 }).catch((e) => e);
    expect(err).toBeInstanceOf(InvalidGuestSpecError);
    expect(err.problems).toHaveLength(2);
  });

  it('refuses a second guest with the same name on a host', async () => {
    const g = await hostA.startGuest({ name: 'twin' });
    await expect(hostA.startGuest({ name: 'twin' })).rejects.toThrow(/already runs on host host-a/);
    await g.stop();
  });

  it('moves on to the next free port when one is in use', async () => {
    const first = 47300;
    const host = new LocalHost({ name: 'host-p', runtimeDir: join(work, 'p'), migrationPorts: { first, last: first + 5 } });
    const busy: Server = createServer();
    await new Promise<void>((r) => busy.listen(first, '127.0.0.1', () => r()));
    try {
      const port = await host.allocateMigrationPort();
      expect(port).toBe(first + 1);
      expect(await canBind('127.0.0.1', port)).toBe(true); // reserved for QEMU, not held by us
    } finally {
      await new Promise((r) => busy.close(r));
      await host.dispose();
    }
  });
});
