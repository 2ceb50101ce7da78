// A lab opened from a lab file with real guests: its hosts, network and guests (one with its
// workload running), hosts added and removed, and the lab saved back as a file.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LabService } from '../../electron/engine/api/service';
import type { Lab } from '../../electron/engine/lab/lab';
import { labFromFile, parseLabFile } from '../../electron/engine/lab/lab-file';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { expectDirtyingAt, expectScopeClean, requireLabGuest } from '../helpers/lab';

const FILE = parseLabFile(`
name: two web servers
network: { subnet: 10.90.0.0/24 }
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
  service?.close();
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
    expect(saved.guests).toEqual([
      { name: 'web1', host: 'left', memoryMiB: 256, boot: { kind: 'lab' }, start: true, workload: { rateMBps: 10, workingSetMiB: 32 } },
      { name: 'web2', host: 'right', memoryMiB: 192, boot: { kind: 'lab' }, start: true },
    ]);
  });
});
