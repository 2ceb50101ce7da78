// The link relay in front of a real QEMU migration on loopback. The guest is paused from the
// start and has no kernel, so it never runs and migrating it is safe at any moment; a loader
// device fills 48 MiB of its RAM with random bytes so the stream has something to carry (zero
// pages would cross as a few bytes each). (a) The relay's bandwidth is the migration's limit;
// (b) a cut mid-migration fails it on the source, ends the destination QEMU, and the source lives on.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { LinkProfile } from '../../electron/engine/network/link-profile';
import { LinkRelay } from '../../electron/engine/network/link-relay';
import { findQemu } from '../../electron/engine/qemu/binary';
import { QemuProcess, describeExit } from '../../electron/engine/qemu/process';
import {
  QmpClient, migrate, migrateIncoming, migrateSetParameters, queryMigrate, queryStatus, type MigrationInfo,
} from '../../electron/engine/qmp';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay, withTimeout } from '../../electron/engine/util/time';
import { pidAlive } from '../helpers/leaks';

const HOST = '127.0.0.1';
const BLOB_BYTES = 48 * 1024 * 1024;

interface Vm {
  proc: QemuProcess;
  qmp: QmpClient;
}

let dir: string;
let blob: string;
let vms: Vm[] = [];
let relay: LinkRelay | null = null;

beforeEach(async () => {
  dir = await makeTempDir('it-relay');
  blob = join(dir, 'ram.bin');
  await writeFile(blob, randomBytes(BLOB_BYTES));
});

afterEach(async () => {
  await relay?.close();
  relay = null;
  for (const vm of vms) {
    await vm.proc.stop({ quit: () => vm.qmp.execute('quit'), quitTimeoutMs: 2000 });
    await vm.qmp.disconnect();
    expect(vm.proc.pid === undefined || !pidAlive(vm.proc.pid)).toBe(true);
  }
  vms = [];
  await removeDir(dir);
});

/** A QEMU that never runs a guest: paused (-S), no kernel, 48 MiB of its RAM random. */
async function startVm(name: string, incoming: boolean): Promise<Vm> {
  const qemu = await findQemu();
  const sock = join(dir, `${name}.qmp`);
  const argv = [
    '-machine', 'q35', '-accel', 'tcg', '-m', '256', '-S', '-nodefaults', '-display', 'none',
    '-qmp', `unix:${sock},server=on,wait=off`,
    '-device', `loader,file=${blob},addr=0x1000000,force-raw=on`,
    ...(incoming ? ['-incoming', 'defer'] : []),
  ];
  const proc = new QemuProcess(qemu.path, argv, { cwd: dir });
  const qmp = new QmpClient({ name });
  const vm = { proc, qmp };
  vms.push(vm);
  const died = proc.exited.then((exit) => {
    throw new Error(`QEMU ${name} ended before QMP answered: ${describeExit(exit)}`);
  });
  await Promise.race([qmp.connect(sock, { retryUntilMs: 15_000 }), died]);
  return vm;
}

/** Source and destination, the destination listening on a port of its choice, a relay in front of it. */
async function migrationThroughRelay(profile: Partial<LinkProfile>): Promise<{ src: Vm; dst: Vm; relay: LinkRelay }> {
  const src = await startVm('src', false);
  const dst = await startVm('dst', true);
  await migrateIncoming(dst.qmp, `tcp:${HOST}:0`);
  const listening = (await queryMigrate(dst.qmp))['socket-address']?.find((a) => a.type === 'inet');
  if (!listening || listening.type !== 'inet') throw new Error('The destination QEMU did not say which port it listens on');
  relay = await LinkRelay.open({ listen: { address: HOST }, target: { address: HOST, port: Number(listening.port) }, profile });
  // QEMU's own limit far above the relay's, so the link is what limits.
  await migrateSetParameters(src.qmp, { 'max-bandwidth': 1e9 });
  await migrate(src.qmp, `tcp:${HOST}:${relay.port}`);
  return { src, dst, relay };
}

async function waitForStatus(vm: Vm, statuses: string[], timeoutMs: number): Promise<MigrationInfo> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    const info = await queryMigrate(vm.qmp);
    if (info.status && statuses.includes(info.status)) return info;
    if (performance.now() > until) throw new Error(`The migration is ${info.status}, not ${statuses.join(' or ')}, after ${timeoutMs} ms`);
    await delay(50);
  }
}

describe('a QEMU migration through the link relay', () => {
  it('takes as long as a 50 MB/s link allows', async () => {
    const { src, dst, relay } = await migrationThroughRelay({ bandwidthMBps: 50 });
    const startedAt = performance.now();
    const info = await waitForStatus(src, ['completed', 'failed'], 60_000);
    expect(info.status, info['error-desc']).toBe('completed');
    // The source says completed once its socket took the last byte; up to the relay's buffer and
    // the kernel's were still on their way. The destination's completion is the link's end.
    expect((await waitForStatus(dst, ['completed', 'failed'], 10_000)).status).toBe('completed');
    const seconds = (performance.now() - startedAt) / 1000;
    expect((await queryStatus(dst.qmp)).status).not.toBe('inmigrate');
    const transferred = info.ram!.transferred;
    const rate = transferred / 1e6 / seconds;
    console.log(`[relay] ${(transferred / 1e6).toFixed(1)} MB reached the destination in ${seconds.toFixed(2)} s: ${rate.toFixed(1)} MB/s through a 50 MB/s link`);
    expect(transferred).toBeGreaterThan(BLOB_BYTES); // the random RAM crossed, not just zero-page markers
    // At most the link's rate (50 MB/s) plus its small token-bucket burst; at least well above
    // what a stalled relay would give (the wall time includes polling at 50 ms).
    expect(rate).toBeLessThanOrEqual(52);
    expect(rate).toBeGreaterThan(25);
    expect(relay.stats().bytesForward).toBeGreaterThanOrEqual(transferred);
    expect(relay.stats().totalConnections).toBe(1);
  });

  it('fails when the cable is pulled: the destination QEMU exits and the source lives on', async () => {
    const { src, dst, relay } = await migrationThroughRelay({ bandwidthMBps: 2 });
    await delay(500);
    expect((await queryMigrate(src.qmp)).status).toBe('active');
    expect(relay.stats().connections).toBe(1);
    const cutAt = performance.now();
    relay.cut();

    const info = await waitForStatus(src, ['failed', 'completed'], 5000);
    expect(info.status).toBe('failed');
    const failedAfter = performance.now() - cutAt;
    // QEMU 7.2 ends a destination whose incoming migration failed.
    const exit = await withTimeout(dst.proc.exited, 5000, 'the destination QEMU exiting');
    console.log(`[relay] source failed ${Math.round(failedAfter)} ms after the cut (${info['error-desc'] ?? 'no reason given'}); destination: ${describeExit(exit)}`);
    expect(exit.expected).toBe(false);
    expect(exit.code).not.toBe(0);

    expect(src.proc.running).toBe(true);
    const status = await queryStatus(src.qmp);
    expect(status.running).toBe(false);
    expect(typeof status.status).toBe('string');
  });
});
