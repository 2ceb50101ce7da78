// QEMU 7.2 (gnutls) takes the lab CA's certificates: two QEMUs on loopback migrate over TLS
// with verify-peer on, and refuse a peer whose certificate another lab CA signed. The VMs have
// no kernel and are paused from the start (-S), so they never run and migrate in a moment.
import { mkdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LabCa, writeQemuTlsDir } from '../../electron/engine/tls/certs';
import { QmpClient, migrate, migrateIncoming, migrateSetParameters, queryMigrate, queryStatus, quit } from '../../electron/engine/qmp';
import type { MigrationInfo } from '../../electron/engine/qmp';
import { findQemu, type QemuBinary } from '../../electron/engine/qemu/binary';
import { QemuProcess, describeExit } from '../../electron/engine/qemu/process';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { qemuPids } from '../helpers/leaks';

interface TinyVm {
  name: string;
  proc: QemuProcess;
  qmp: QmpClient;
}

let qemu: QemuBinary;
let work: string;
let labCa: LabCa;
let otherCa: LabCa;
const vms: TinyVm[] = [];

beforeAll(async () => {
  qemu = await findQemu();
  work = await makeTempDir('it-qemu-tls');
  labCa = await LabCa.loadOrCreate(join(work, 'lab-ca'));
  otherCa = await LabCa.loadOrCreate(join(work, 'other-ca'));
});

afterEach(async () => {
  for (const vm of vms.splice(0)) {
    await vm.proc.stop({ quit: () => quit(vm.qmp, { timeoutMs: 3000 }) });
    await vm.qmp.disconnect();
  }
  // Every QEMU this file started has its sockets under `work`: none may outlive its test.
  expect(await qemuPids(work)).toEqual([]);
});

afterAll(async () => {
  if (work) await removeDir(work);
});

/** A 64 MiB q35 VM with no kernel, paused from the start; `incoming` waits for migrate-incoming. */
async function startVm(name: string, incoming: boolean): Promise<TinyVm> {
  const dir = join(work, name);
  await mkdir(dir, { recursive: true });
  const sock = join(dir, 'qmp.sock');
  const argv = [
    '-machine', 'q35', '-accel', 'tcg', '-m', '64', '-S', '-nodefaults', '-display', 'none',
    '-qmp', `unix:${sock},server=on,wait=off`,
    ...(incoming ? ['-incoming', 'defer'] : []),
  ];
  const proc = new QemuProcess(qemu.path, argv, { cwd: dir });
  const qmp = new QmpClient({ name });
  const vm = { name, proc, qmp };
  vms.push(vm);
  const died = proc.exited.then((exit) => {
    throw new Error(`QEMU ${name} exited at start: ${describeExit(exit)}`);
  });
  await Promise.race([qmp.connect(sock, { retryUntilMs: 15_000 }), died]);
  return vm;
}

/** Makes QEMU's credentials dir for `vm` and adds the tls-creds-x509 object that reads it. */
async function addTlsCreds(vm: TinyVm, ca: LabCa, endpoint: 'server' | 'client'): Promise<void> {
  const leaf = await ca.issue({ commonName: `miglab ${vm.name}`, ipAddresses: ['127.0.0.1'] });
  const dir = join(work, vm.name, 'tls');
  await writeQemuTlsDir(dir, { caCertPem: ca.certPem, ...leaf });
  // QEMU loads and sanity-checks the files here: a key or certificate gnutls rejects fails now.
  await vm.qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'miglab-tls', dir, endpoint, 'verify-peer': true });
}

async function freeTcpPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

async function migrationEnd(vm: TinyVm, timeoutMs = 30_000): Promise<MigrationInfo> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await queryMigrate(vm.qmp);
    if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') return info;
    if (Date.now() > deadline) throw new Error(`migration from ${vm.name} still ${info.status} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Source -> destination over TLS on loopback; the source checks the destination's cert for 127.0.0.1. */
async function migrateOverTls(src: TinyVm, dst: TinyVm): Promise<MigrationInfo> {
  const port = await freeTcpPort();
  await migrateSetParameters(dst.qmp, { 'tls-creds': 'miglab-tls' });
  await migrateSetParameters(src.qmp, { 'tls-creds': 'miglab-tls', 'tls-hostname': '127.0.0.1' });
  await migrateIncoming(dst.qmp, `tcp:127.0.0.1:${port}`);
  await migrate(src.qmp, `tcp:127.0.0.1:${port}`);
  return migrationEnd(src);
}

describe('QEMU with the lab CA\'s certificates', () => {
  it('migrates over TLS with verify-peer on both ends', async () => {
    const src = await startVm('src', false);
    const dst = await startVm('dst', true);
    await addTlsCreds(src, labCa, 'client');
    await addTlsCreds(dst, labCa, 'server');
    expect((await src.qmp.execute<{ 'tls-creds'?: string }>('query-migrate-parameters'))['tls-creds']).toBe('');

    const info = await migrateOverTls(src, dst);
    expect(info.status, info['error-desc']).toBe('completed');
    // A 64 MiB VM that never ran (-S): its RAM is zero pages but for the firmware QEMU loaded
    // (SeaBIOS, 256 KiB with some zero pages), each page sent in full; the rest costs a header each.
    const ram = info.ram!;
    expect(ram['normal-bytes']).toBeGreaterThanOrEqual(128 * 1024);
    expect(ram.transferred).toBeGreaterThanOrEqual(ram['normal-bytes']);
    expect(ram.transferred).toBeLessThanOrEqual((ram.total / 4096) * 4104);
    // The destination finishes loading a moment after the source says completed.
    await expect.poll(async () => (await queryMigrate(dst.qmp)).status, { timeout: 10_000 }).toBe('completed');
    // Arrived in the state it left: never started (-S), so prelaunch, not inmigrate any more.
    expect((await queryStatus(dst.qmp)).status).toBe('prelaunch');
    expect((await src.qmp.execute<{ 'tls-creds'?: string }>('query-migrate-parameters'))['tls-creds']).toBe('miglab-tls');
  });

  it('fails the migration when the source\'s certificate comes from another lab CA', async () => {
    const src = await startVm('src-foreign', false);
    const dst = await startVm('dst-foreign', true);
    await addTlsCreds(src, otherCa, 'client');
    await addTlsCreds(dst, labCa, 'server');

    const info = await migrateOverTls(src, dst);
    expect(info.status).toBe('failed');
    // gnutls's verdict as QEMU passes it on, e.g. "The certificate hasn't got a known issuer"
    expect(info['error-desc']).toMatch(/certificate|TLS/i);
    expect((await queryStatus(dst.qmp)).status).toBe('inmigrate'); // nothing arrived
  });
});
