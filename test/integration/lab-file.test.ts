// A lab opened from a lab file with real guests: its hosts, network and guests (one with its
// workload running), hosts added and removed, and the lab saved back as a file.
import { copyFile, link, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ApiEvent } from '../../electron/engine/api/contract';
import { LabService } from '../../electron/engine/api/service';
import type { MigrationResult } from '../../electron/engine/migration/types';
import type { Lab } from '../../electron/engine/lab/lab';
import { labFromFile, parseLabFile, readLabFile } from '../../electron/engine/lab/lab-file';
import { commandLine } from '../helpers/leaks';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { expectDirtyingAt, expectScopeClean, requireLabGuest } from '../helpers/lab';

const FILE = parseLabFile(`
name: two web servers
network: { subnet: 10.90.0.0/24 }
migration: { keepSourceMs: 1500 }
hosts: [{ name: left }, { name: right }]
guests:
  - { name: web1, host: left, workload: { rateMBps: 10, workingSetMiB: 32 } }
  - { name: web2, host: right, memoryMiB: 192 }
  - { name: later, host: right, start: false }
`);

let work: string;
let lab: Lab;
let service: LabService;
const problems: string[] = [];

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-labfile');
  lab = await labFromFile(FILE, { runtimeDir: join(work, 'run') });
  service = new LabService(lab);
  await service.startGuests(FILE.guests, (m) => problems.push(m));
}, 180_000);

afterAll(async () => {
  await service?.close();
  await lab?.dispose();
  for (const h of ['left', 'right', 'spare']) await expectScopeClean(join(work, 'run', h));
  await removeDir(work);
});

describe('a lab from a lab file', () => {
  it('has the file\'s hosts, network and guests, with the workload running', async () => {
    expect(problems).toEqual([]);
    const snap = service.snapshot();
    expect(snap.hosts.map((h) => h.name)).toEqual(['left', 'right']);
    expect(snap.network?.subnet).toBe('10.90.0.0/24');
    const left = snap.hosts[0]!.guests;
    const right = snap.hosts[1]!.guests;
    expect(left).toEqual([expect.objectContaining({ name: 'web1', ip: '10.90.0.10/24', mac: '52:54:00:5a:00:0a', workload: { rateMBps: 10, workingSetMiB: 32 } })]);
    expect(right).toEqual([expect.objectContaining({ name: 'web2', memoryMiB: 192 })]);
    await expectDirtyingAt(lab.host('left').guest('web1')!, 10); // the file's workload
  });

  it('adds a host, refuses to remove one that runs guests, removes an empty one', async () => {
    const added = (await service.execute({ type: 'addHost', name: 'spare' })) as { name: string };
    expect(added.name).toBe('spare');
    await expect(service.execute({ type: 'addHost', name: 'spare' })).rejects.toThrow('There is a host "spare" already');
    await expect(service.execute({ type: 'addHost', name: 'Bad Name' })).rejects.toMatchObject({ code: 'invalid' });
    await expect(service.execute({ type: 'removeHost', name: 'left' })).rejects.toThrow('Host left still runs web1: stop or migrate it first');
    // the new host is a real one: a guest starts there, on the lab network
    const g = (await service.execute({ type: 'startGuest', host: 'spare', guest: { name: 'tmp' } })) as { ip: string };
    expect(g.ip).toBe('10.90.0.12/24');
    await service.execute({ type: 'stopGuest', host: 'spare', guest: 'tmp' });
    await service.execute({ type: 'removeHost', name: 'spare' });
    expect(service.snapshot().hosts.map((h) => h.name)).toEqual(['left', 'right']);
  });

  it('saves the lab as a lab file that opens the same lab', async () => {
    const { yaml } = (await service.execute({ type: 'exportLab' })) as { yaml: string };
    const saved = parseLabFile(yaml);
    expect(saved.hosts).toEqual(FILE.hosts);
    expect(saved.network).toEqual(FILE.network);
    expect(saved.migration).toEqual({ keepSourceMs: 1500 });
    expect(saved.guests).toEqual([
      { name: 'web1', host: 'left', memoryMiB: 256, boot: { kind: 'lab' }, start: true, workload: { rateMBps: 10, workingSetMiB: 32 } },
      { name: 'web2', host: 'right', memoryMiB: 192, boot: { kind: 'lab' }, start: true },
    ]);
  });

  it('migrates by the file\'s policy: the paused source is kept keepSourceMs after the destination runs, and the result says who asked', async () => {
    await lab.host('right').guest('web2')!.waitReady(60_000);
    const done = new Promise<MigrationResult>((resolve) => {
      const on = (e: ApiEvent) => {
        if (e.type === 'migration' && e.guest === 'web2' && e.event.type === 'result') {
          service.off('event', on);
          resolve(e.event.result);
        }
      };
      service.on('event', on);
    });
    await service.execute({ type: 'migrate', guest: 'web2', to: 'left' });
    const r = await done;
    expect(r.status, r.reason ?? '').toBe('completed');
    expect(r.sourceKept).toEqual({ ms: 1500, why: 'the lab file (migration.keepSourceMs) asked to keep the source for 1500 ms' });
    const confirm = r.phases.find((p) => p.name === 'confirm')!;
    expect(confirm.endMs! - confirm.startMs).toBeGreaterThanOrEqual(1500); // the source stood by, paused
    expect(lab.host('right').guest('web2')).toBeUndefined();
    expect(lab.host('left').guest('web2')).toBeDefined();
  });

  it('pre-flight measures a guest\'s dirty rate on request and judges it against the settings asked for', async () => {
    const web1 = lab.hosts().find((h) => h.guest('web1'))!;
    const to = lab.hosts().find((h) => h !== web1)!.name;
    await web1.guest('web1')!.waitReady(60_000);
    const r = (await service.execute({ type: 'preflight', guest: 'web1', to, measureDirtyRate: { ms: 500, bandwidthMBps: 1000 } })) as { checks: { name: string; status: string; message: string }[] };
    await service.execute({ type: 'releasePreparedDestination', guest: 'web1' });
    const dirty = r.checks.find((c) => c.name === 'dirty-rate');
    // web1's workload rewrites 32 MiB at 10 MB/s: far below 1000 MB/s, so pre-copy converges.
    expect(dirty).toMatchObject({ status: 'pass', message: expect.stringMatching(/measured by QEMU calc-dirty-rate .* over 500 ms\); the migration sends 1000\.0 MB\/s \(the bandwidth asked for\)\. Pre-copy will converge/) });
    const plain = (await service.execute({ type: 'preflight', guest: 'web1', to })) as { checks: { name: string }[] };
    await service.execute({ type: 'releasePreparedDestination', guest: 'web1' });
    expect(plain.checks.map((c) => c.name)).not.toContain('dirty-rate');
  });

  it("runs the lab file's downtime policy unless the migration names one, and saves it", async () => {
    lab.migration.downtimePolicy = 'nova'; // as a lab file with migration: { downtimePolicy: nova } opens
    const run = (options?: { downtimePolicy: 'proxmox' }) => new Promise<MigrationResult>((resolve, reject) => {
      const on = (e: ApiEvent) => {
        if (e.type === 'migration' && e.guest === 'web2' && e.event.type === 'result') {
          service.off('event', on);
          resolve(e.event.result);
        }
      };
      service.on('event', on);
      const to = lab.host('left').guest('web2') ? 'right' : 'left';
      service.execute({ type: 'migrate', guest: 'web2', to, ...(options ? { options } : {}) }).catch(reject);
    });
    await lab.host('left').guest('web2')!.waitReady(60_000);
    const byFile = await run();
    expect(byFile.status, byFile.reason ?? '').toBe('completed');
    expect(byFile.downtimePolicy).toMatchObject({ name: 'nova', startMs: 50 });
    const asked = await run({ downtimePolicy: 'proxmox' });
    expect(asked.status, asked.reason ?? '').toBe('completed');
    expect(asked.downtimePolicy).toMatchObject({ name: 'proxmox', startMs: 100 });
    const { yaml } = (await service.execute({ type: 'exportLab' })) as { yaml: string };
    expect(parseLabFile(yaml).migration).toEqual({ keepSourceMs: 1500, downtimePolicy: 'nova' });
  });
});

describe('a lab file in another folder than the engine\'s', () => {
  let dir: string;
  let other: Lab | null = null;
  let otherService: LabService | null = null;

  afterAll(async () => {
    otherService?.close();
    await other?.dispose();
    await expectScopeClean(join(work, 'class-run', 'solo'));
  });

  it('boots a guest from the paths next to the file, as absolute paths QEMU opens from its own folder', async () => {
    const image = await requireLabGuest();
    dir = join(work, 'class');
    await mkdir(join(dir, 'images'), { recursive: true });
    for (const [from, name] of [[image.kernel, 'vmlinux'], [image.initrd, 'initrd.gz']] as const) {
      await link(from, join(dir, 'images', name)).catch(() => copyFile(from, join(dir, 'images', name)));
    }
    await writeFile(join(dir, 'lab.yaml'), [
      'network: null',
      'hosts: [{ name: solo }]',
      'guests:',
      `  - { name: near, host: solo, boot: { kind: kernel, kernel: ./images/vmlinux, initrd: images/initrd.gz, append: "${image.append} miglab.name=near" } }`,
      '',
    ].join('\n'));
    expect(process.cwd()).not.toBe(dir); // the engine runs elsewhere: the paths must not depend on it
    const file = await readLabFile(join(dir, 'lab.yaml'));
    other = await labFromFile(file, { runtimeDir: join(work, 'class-run') });
    otherService = new LabService(other);
    const startProblems: string[] = [];
    await otherService.startGuests(file.guests, (m) => startProblems.push(m));
    expect(startProblems).toEqual([]);
    const g = other.host('solo').guest('near')!;
    expect(g.spec.boot).toMatchObject({ kernel: join(dir, 'images', 'vmlinux'), initrd: join(dir, 'images', 'initrd.gz') });
    const argv = await commandLine(g.pid!);
    expect(argv).toContain(`-kernel ${join(dir, 'images', 'vmlinux')} -initrd ${join(dir, 'images', 'initrd.gz')}`);
    await g.console.waitFor('near', 60_000, true); // the kernel QEMU loaded really boots
    await g.stop();
  });
});
