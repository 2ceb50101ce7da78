// The destination prepared while the Migrate dialog is open, through the LabService as the app and
// browser mode drive it, with real QEMU: a pre-flight starts exactly one paused destination QEMU
// (-S -incoming defer), a second pre-flight keeps it, the migration that follows runs on it (the
// same process), and it is stopped when the dialog closes, when pre-flight fails, after its idle
// time, when its guest stops, and when the service goes. Nothing is left behind.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ApiCommand, ApiResults } from '../../electron/engine/api/contract';
import { ApiError } from '../../electron/engine/api/commands';
import { followMigration } from '../../electron/engine/api/follow-migration';
import { LabService } from '../../electron/engine/api/service';
import type { Guest } from '../../electron/engine/hosts/host';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { queryStatus } from '../../electron/engine/qmp';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { expectScopeClean, requireLabGuest } from '../helpers/lab';
import { pidAlive, qemuPids } from '../helpers/leaks';

const GUEST = 'prep1';

let work: string;
let lab: Lab;
let service: LabService;
const hostDir = (host: string) => join(work, 'run', host);

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-prepared');
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
  service = new LabService(lab);
  const g = await lab.startGuest('host-a', { name: GUEST, memoryMiB: 256 });
  await g.waitReady(90_000);
}, 120_000);

afterAll(async () => {
  await service?.close();
  await lab?.dispose();
  for (const h of ['host-a', 'host-b']) await expectScopeClean(hostDir(h));
  await removeDir(work);
});

function run<K extends ApiCommand['type']>(command: Extract<ApiCommand, { type: K }>, on = service): Promise<ApiResults[K]> {
  return on.execute(command) as Promise<ApiResults[K]>;
}

/** The copy of the guest waiting on `host` for its migration, once its QEMU is up. */
async function preparedOn(host: string): Promise<Guest> {
  for (let i = 0; i < 200; i++) {
    const g = lab.host(host).guest(GUEST);
    if (g?.state === 'incoming' && g.pid !== undefined) return g;
    await delay(50);
  }
  throw new Error(`No destination of ${GUEST} was prepared on ${host}`);
}

/** The host that runs the guest now, and the other one. */
function sides(): { source: string; other: string } {
  const source = lab.hosts().find((h) => { const g = h.guest(GUEST); return g && g.state !== 'incoming' && !g.exit; })!.name;
  return { source, other: source === 'host-a' ? 'host-b' : 'host-a' };
}

/** Waits until `host` has no QEMU of its own left (a stop takes a QMP quit and the exit). */
async function expectNoQemuOn(host: string): Promise<void> {
  for (let i = 0; i < 100 && (await qemuPids(hostDir(host))).length; i++) await delay(50);
  expect(await qemuPids(hostDir(host))).toEqual([]);
  expect(lab.host(host).guest(GUEST)).toBeUndefined();
}

describe('a destination prepared by the pre-flight', () => {
  it('is not prepared for a spectator, whose pre-flight is refused', async () => {
    const refused = await service.execute({ type: 'preflight', guest: GUEST, to: 'host-b' }, { role: 'spectator' }).catch((e: ApiError) => e);
    expect(refused).toBeInstanceOf(ApiError);
    expect(refused).toMatchObject({ code: 'forbidden', message: expect.stringContaining('"preflight" is for the teacher') });
    await delay(300);
    expect(await qemuPids(hostDir('host-b'))).toEqual([]);
  });

  it('starts exactly one destination QEMU, paused and waiting for the stream, which a second pre-flight keeps', async () => {
    const pre = await run({ type: 'preflight', guest: GUEST, to: 'host-b' });
    // The prepared copy is the guest's own, not "another guest of that name" on host-b.
    expect(pre.checks.filter((c) => c.status === 'fail')).toEqual([]);
    const dst = await preparedOn('host-b');
    expect(await qemuPids(hostDir('host-b'))).toEqual([dst.pid]);
    // QEMU's word: -incoming, never ran guest code.
    expect(await queryStatus(dst.qmp)).toMatchObject({ running: false, status: 'inmigrate' });
    // The dialog asks again (a capability ticked): same QEMU, no second one, checks still pass.
    const again = await run({ type: 'preflight', guest: GUEST, to: 'host-b', capabilities: { xbzrle: true } });
    expect(again.checks.filter((c) => c.status === 'fail')).toEqual([]);
    expect(again.checks.find((c) => c.name === 'destination')?.status).toBe('pass');
    await delay(300);
    expect(await qemuPids(hostDir('host-b'))).toEqual([dst.pid]);
    expect(lab.host('host-b').guest(GUEST)).toBe(dst);
  });

  it('is stopped by releasePreparedDestination (the dialog closed), and a second release finds none', async () => {
    const dst = await preparedOn('host-b');
    expect(await run({ type: 'releasePreparedDestination', guest: GUEST })).toEqual({ guest: GUEST, released: true });
    expect(pidAlive(dst.pid!)).toBe(false);
    await expectNoQemuOn('host-b');
    expect(await run({ type: 'releasePreparedDestination', guest: GUEST })).toEqual({ guest: GUEST, released: false });
  });

  it('is stopped by a pre-flight that fails (no migration can take it) and not started where the guest runs', async () => {
    await run({ type: 'preflight', guest: GUEST, to: 'host-b' });
    await preparedOn('host-b');
    const refused = await run({ type: 'preflight', guest: GUEST, to: 'host-b', capabilities: { 'x-colo': true } });
    expect(refused.checks.find((c) => c.name === 'capabilities')?.status).toBe('fail');
    await expectNoQemuOn('host-b');
    // Towards its own host: refused, and it prepares nothing there.
    const own = await run({ type: 'preflight', guest: GUEST, to: 'host-a' });
    expect(own.checks.find((c) => c.name === 'destination')?.status).toBe('fail');
    await delay(300);
    expect(await qemuPids(hostDir('host-a'))).toEqual([lab.host('host-a').guest(GUEST)!.pid]);
  });

  it('is stopped when nobody migrates within its idle time', async () => {
    const quick = new LabService(lab, null, { preparedIdleMs: 1500 });
    try {
      await run({ type: 'preflight', guest: GUEST, to: 'host-b' }, quick);
      const dst = await preparedOn('host-b');
      await delay(500);
      expect(pidAlive(dst.pid!)).toBe(true);
      await expectNoQemuOn('host-b'); // within 1.5 s + the stop
      expect(dst.exit).not.toBeNull();
    } finally {
      await quick.close();
    }
  });

  it('is the destination the migration then runs on: the same QEMU process', async () => {
    await run({ type: 'preflight', guest: GUEST, to: 'host-b' });
    const dst = await preparedOn('host-b');
    const phases: string[] = [];
    const m = followMigration(service, { type: 'migrate', guest: GUEST, to: 'host-b' }, (ev) => {
      if (ev.type === 'phase') phases.push(ev.phase);
    });
    // A second click while the first is handed its destination: refused, not a second job.
    const twice = await run({ type: 'migrate', guest: GUEST, to: 'host-b' }).catch((e: ApiError) => e);
    expect(twice).toMatchObject({ code: 'invalid', message: `A migration of ${GUEST} is starting: wait for it, or cancel it` });
    const r = await m.result;
    expect(r.status, r.reason ?? '').toBe('completed');
    expect(r.runningOn).toBe('host-b');
    expect(phases).toContain('prepare');
    const arrived = lab.host('host-b').guest(GUEST)!;
    expect(arrived).toBe(dst);
    expect(arrived.pid).toBe(dst.pid);
    expect(await queryStatus(arrived.qmp)).toMatchObject({ running: true, status: 'running' });
    expect(await qemuPids(hostDir('host-b'))).toEqual([dst.pid]);
    await expectNoQemuOn('host-a'); // the source quit; nothing prepared stays behind
    // Nothing is left to release: the job owns what it took.
    expect(await run({ type: 'releasePreparedDestination', guest: GUEST })).toEqual({ guest: GUEST, released: false });
  }, 120_000);

  it('is stopped when the service closes', async () => {
    const { other } = sides();
    const closing = new LabService(lab);
    await run({ type: 'preflight', guest: GUEST, to: other }, closing);
    const dst = await preparedOn(other);
    await closing.close();
    expect(pidAlive(dst.pid!)).toBe(false);
    await expectNoQemuOn(other);
  });

  it('is stopped when its guest stops', async () => {
    const { source, other } = sides();
    await run({ type: 'preflight', guest: GUEST, to: other });
    const dst = await preparedOn(other);
    await run({ type: 'stopGuest', host: source, guest: GUEST });
    for (let i = 0; i < 100 && pidAlive(dst.pid!); i++) await delay(50);
    expect(pidAlive(dst.pid!)).toBe(false);
    expect(await qemuPids(hostDir('host-a'))).toEqual([]);
    expect(await qemuPids(hostDir('host-b'))).toEqual([]);
  });
});
