// Lab files: what parses, what is refused and how the refusal reads, and the text a lab saves.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LabFileError, MAX_LAB_FILE_BYTES, labFileText, labFromFile, parseLabFile, readLabFile } from '../../electron/engine/lab/lab-file';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

const GOOD = `
name: two web servers
network:
  subnet: 10.90.0.0/24
hosts:
  - name: left
  - name: right
guests:
  - name: web1
    host: left
    workload: { rateMBps: 10, workingSetMiB: 32 }
  - name: web2
    host: right
    memoryMiB: 192
    start: false
`;

function problems(text: string): string[] {
  try {
    parseLabFile(text, 'test.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(LabFileError);
    expect((err as Error).message).toContain('The lab file test.yaml cannot be used: ');
    return (err as LabFileError).problems;
  }
  throw new Error('it parsed');
}

describe('lab files', () => {
  it('parse with defaults filled in', () => {
    const lab = parseLabFile(GOOD);
    expect(lab.hosts).toEqual([{ name: 'left' }, { name: 'right' }]);
    expect(lab.network).toEqual({ subnet: '10.90.0.0/24' });
    expect(lab.guests[0]).toEqual({ name: 'web1', host: 'left', memoryMiB: 256, boot: { kind: 'lab' }, workload: { rateMBps: 10, workingSetMiB: 32 }, start: true });
    expect(lab.guests[1]).toMatchObject({ name: 'web2', memoryMiB: 192, start: false });
    // the smallest lab: one host; the network is on by default
    expect(parseLabFile('hosts: [{ name: solo }]')).toEqual({ hosts: [{ name: 'solo' }], network: { subnet: '10.80.0.0/24' }, guests: [] });
    expect(parseLabFile('hosts: [{ name: solo }]\nnetwork: null').network).toBeNull();
  });

  it('save as text that parses back to the same lab', () => {
    const lab = parseLabFile(GOOD);
    const text = labFileText(lab);
    expect(text.startsWith('# MigLab lab file')).toBe(true);
    expect(parseLabFile(text)).toEqual(lab);
  });

  it('parses the downtime policy and refuses one it does not know, naming them', () => {
    expect(parseLabFile('hosts: [{ name: solo }]\nmigration: { downtimePolicy: proxmox }').migration).toEqual({ downtimePolicy: 'proxmox' });
    expect(problems('hosts: [{ name: solo }]\nmigration: { downtimePolicy: fast }')).toEqual([expect.stringMatching(/^migration\.downtimePolicy: .*"ramp"/)]);
  });

  it('parse the migration policy (keepSourceMs), round-trip it, and refuse a bad one naming it', () => {
    const lab = parseLabFile('hosts: [{ name: solo }]\nmigration: { keepSourceMs: 5000 }');
    expect(lab.migration).toEqual({ keepSourceMs: 5000 });
    expect(parseLabFile(labFileText(lab))).toEqual(lab);
    expect(parseLabFile('hosts: [{ name: solo }]\nmigration: { keepSourceMs: null }').migration).toEqual({ keepSourceMs: null });
    expect(problems('hosts: [{ name: solo }]\nmigration: { keepSourceMs: -1 }')).toEqual([expect.stringMatching(/^migration\.keepSourceMs: /)]);
    expect(problems('hosts: [{ name: solo }]\nmigration: { keepSourceMs: 900000 }')).toEqual([expect.stringMatching(/^migration\.keepSourceMs: /)]);
    expect(problems('hosts: [{ name: solo }]\nmigration: { keep: 1 }')).toEqual([expect.stringMatching(/^migration: .*keep/)]);
  });

  it('refuse broken YAML, naming the line', () => {
    expect(problems('hosts:\n  - name: a\n  bad: [\n')[0]).toMatch(/^line \d+: /);
  });

  it('refuse what makes no lab, listing every problem', () => {
    expect(problems('hosts: []')).toEqual(['hosts: a lab needs at least one host']);
    const p = problems(`
hosts: [{ name: a }, { name: a }, { name: Bad_Name }]
network: { subnet: 10.80.0.5/24 }
guests:
  - { name: g, host: nowhere, memoryMiB: 1 }
  - { name: g, host: a }
  - { name: k, host: a, boot: { kind: disk, path: /x.qcow2 }, workload: { rateMBps: 5, workingSetMiB: 8 } }
colour: blue
`);
    expect(p).toEqual(expect.arrayContaining([
      expect.stringMatching(/^hosts\.2\.name: use 1-32 lower-case letters/),
      expect.stringMatching(/^guests\.0\.memoryMiB: /),
      expect.stringMatching(/^lab: Unrecognized key.*colour/i),
    ]));
    // the cross-checks run once the shapes are right
    const q = problems(`
hosts: [{ name: a }, { name: a }]
network: { subnet: 10.80.0.5/24 }
guests:
  - { name: g, host: nowhere }
  - { name: g, host: a }
  - { name: k, host: a, boot: { kind: disk, path: /x.qcow2 }, workload: { rateMBps: 5, workingSetMiB: 8 } }
`);
    expect(q).toEqual(expect.arrayContaining([
      'hosts.1.name: two hosts are called "a"',
      'guests.0.host: there is no host "nowhere" in this lab (it has a)',
      'guests.1.name: two guests are called "g"',
      'guests.2.workload: only the lab guest runs a workload (labload)',
      expect.stringMatching(/^network\.subnet: .*did you mean 10\.80\.0\.0\/24\?/),
    ]));
  });
});

describe('lab files with LAN hosts (miglab agent)', () => {
  const FP = 'AB:'.repeat(31) + 'CD';
  const TOKEN = 'mlt_' + 'x'.repeat(32);

  it('parse an agent host with its token, and without one (a shared file)', () => {
    const lab = parseLabFile(`
network: { subnet: 10.90.0.0/24, address: 192.168.1.10 }
hosts:
  - name: here
  - name: lan-a
    agent: { url: "wss://192.168.1.20:7800/v1/agent", token: ${TOKEN}, fingerprint: "${FP}" }
  - name: lan-b
    agent: { url: "wss://192.168.1.21:7800", fingerprint: "${FP.toLowerCase().replaceAll(':', '')}" }
`);
    expect(lab.network).toEqual({ subnet: '10.90.0.0/24', address: '192.168.1.10' });
    expect(lab.hosts).toEqual([
      { name: 'here' },
      { name: 'lan-a', agent: { url: 'wss://192.168.1.20:7800/v1/agent', token: TOKEN, fingerprint: FP } },
      { name: 'lan-b', agent: { url: 'wss://192.168.1.21:7800', fingerprint: FP.toLowerCase().replaceAll(':', '') } },
    ]);
    // what Save lab file writes (no token) parses back to the same lab
    expect(parseLabFile(labFileText(lab))).toEqual(lab);
  });

  it('refuse a bad agent address, token and fingerprint, listing every problem', () => {
    const p = problems(`
network: { subnet: 10.90.0.0/24, address: not-an-ip }
hosts:
  - name: lan-a
    agent: { url: "http://192.168.1.20:7800", token: mlt_short, fingerprint: "AB:CD" }
  - name: lan-b
    agent: { url: "wss://192.168.1.21:7800", fingerprint: "${FP}", password: x }
  - name: lan-c
    agent: { token: ${TOKEN}, fingerprint: "${FP}" }
`);
    expect(p).toEqual(expect.arrayContaining([
      expect.stringMatching(/^network\.address: /),
      'hosts.0.agent.url: write the agent address as wss://HOST:PORT, as "miglab agent" prints it',
      'hosts.0.agent.token: the token starts with mlt_, as "miglab agent" prints it',
      'hosts.0.agent.fingerprint: the fingerprint is the SHA-256 of the agent certificate: 32 hex bytes, as "miglab agent" prints it',
      expect.stringMatching(/^hosts\.1\.agent: Unrecognized key.*password/i),
      expect.stringMatching(/^hosts\.2\.agent\.url: /),
    ]));
    expect(p).toHaveLength(6);
  });
});

describe('opening a lab file with LAN hosts', () => {
  it('refuses agent hosts without a token before anything starts, naming each one', async () => {
    const FP = 'AB:'.repeat(31) + 'CD';
    const file = parseLabFile(`
hosts:
  - name: here
  - name: lan-a
    agent: { url: "wss://192.0.2.1:7800", fingerprint: "${FP}" }
  - name: lan-b
    agent: { url: "wss://192.0.2.2:7800", fingerprint: "${FP}" }
`);
    const err = await labFromFile(file, { source: 'class.yaml' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LabFileError);
    expect((err as LabFileError).problems).toEqual([
      "host lan-a has no token: add the token its agent printed, or make one with 'miglab agent token new'",
      "host lan-b has no token: add the token its agent printed, or make one with 'miglab agent token new'",
    ]);
    expect((err as Error).message).toMatch(/^The lab file class\.yaml cannot be used: host lan-a has no token/);
  });
});

describe('every lab-file problem is a LabFileError that names it', () => {
  let work: string;
  beforeAll(async () => {
    work = await makeTempDir('ut-labfile');
  });
  afterAll(async () => {
    await removeDir(work);
  });

  const readProblems = async (path: string): Promise<string[]> => {
    const err = await readLabFile(path).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(LabFileError);
    expect((err as Error).message).toContain(`The lab file ${path} cannot be used: `);
    return (err as LabFileError).problems;
  };

  it('a YAML alias bomb ("billion laughs")', () => {
    const levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
    for (let i = 1; i < 10; i++) {
      const prev = String.fromCharCode(96 + i);
      levels.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9).fill(`*${prev}`).join(',')}]`);
    }
    const bomb = `${levels.join('\n')}\nhosts: [{ name: solo }]\n`;
    expect(bomb.length).toBeLessThan(1000);
    expect(problems(bomb)).toEqual(['it repeats YAML aliases (*name) so often that it would grow without bound (a "billion laughs" file): a lab file needs few aliases or none']);
  });

  it('an alias to an anchor that is not there', () => {
    expect(problems('hosts: [{ name: *nowhere }]')).toEqual([expect.stringMatching(/^the YAML cannot be read: Unresolved alias .*nowhere/)]);
  });

  it('text, or a file, larger than 1 MiB', async () => {
    const big = `hosts: [{ name: solo }]\n${'#'.repeat(MAX_LAB_FILE_BYTES)}\n`;
    expect(problems(big)).toEqual([expect.stringMatching(/more than the 1 MiB a lab file may be/)]);
    await writeFile(join(work, 'big.yaml'), `hosts: [{ name: solo }]\n${'#'.repeat(2 * MAX_LAB_FILE_BYTES)}\n`);
    expect(await readProblems(join(work, 'big.yaml'))).toEqual([expect.stringMatching(/^it is 2\.0 MiB, more than the 1 MiB a lab file may be/)]);
  });

  it('a folder, or a file that is not there', async () => {
    expect(await readProblems(work)).toEqual(['it is not a file: give the path of a .yaml lab file']);
    expect(await readProblems(join(work, 'nope.yaml'))).toEqual(['it cannot be read (ENOENT): check the path']);
  });
});

describe('paths in a lab file', () => {
  let work: string;
  beforeAll(async () => {
    work = await makeTempDir('ut-labfile-paths');
    await mkdir(join(work, 'class'));
  });
  afterAll(async () => {
    await removeDir(work);
  });

  const FP = 'AB:'.repeat(31) + 'CD';
  const TOKEN = 'mlt_' + 'x'.repeat(32);
  const text = (bootHere: string, bootThere = '{ kind: kernel, kernel: alpine/vmlinuz }') => `
images: ./images
network: null
hosts:
  - name: here
  - name: there
    agent: { url: "wss://192.0.2.1:7800", token: ${TOKEN}, fingerprint: "${FP}" }
guests:
  - { name: mine, host: here, boot: ${bootHere} }
  - { name: theirs, host: there, boot: ${bootThere} }
`;

  it('resolve against the lab file\'s folder, not the engine\'s; an agent\'s guest keeps its library-relative ones', async () => {
    const file = join(work, 'class', 'lab.yaml');
    await writeFile(file, text('{ kind: kernel, kernel: ./k/vmlinuz, initrd: k/initrd.gz }'));
    expect(process.cwd()).not.toBe(join(work, 'class'));
    const lab = await readLabFile(file);
    expect(lab.images).toBe(join(work, 'class', 'images'));
    expect(lab.guests[0]!.boot).toEqual({ kind: 'kernel', kernel: join(work, 'class', 'k', 'vmlinuz'), initrd: join(work, 'class', 'k', 'initrd.gz'), labload: false });
    expect(lab.guests[1]!.boot).toEqual({ kind: 'kernel', kernel: 'alpine/vmlinuz', labload: false });
    // given as text with its folder, the same
    expect(parseLabFile(await readFile(file, 'utf8'), 'lab.yaml', { dir: join(work, 'class') })).toEqual(lab);
  });

  it('refuse a relative path when the file\'s folder is not known, and an absolute one on an agent host', () => {
    expect(problems(text('{ kind: disk, path: disk.qcow2 }', '{ kind: disk, path: /srv/disk.qcow2 }'))).toEqual([
      'guests.0.boot.path: "disk.qcow2" is relative, and this lab file has no folder to find it in: write an absolute path',
      'guests.1.boot.path: "/srv/disk.qcow2" is absolute, but host there is an agent: name the file relative to its image library (the agent\'s --images folder)',
      'images: "./images" is relative, and this lab file has no folder to find it in: write an absolute path',
    ]);
  });

  it('refuse a name QEMU would read as a protocol; ./ makes it a file next to the lab file', () => {
    const dir = join(work, 'class');
    const p = (() => {
      try {
        parseLabFile(text('{ kind: disk, path: "nbd:127.0.0.1:10809" }', '{ kind: disk, path: "json:{}" }'), 'test.yaml', { dir });
      } catch (err) {
        expect(err).toBeInstanceOf(LabFileError);
        return (err as LabFileError).problems;
      }
      throw new Error('it parsed');
    })();
    expect(p).toEqual([
      'guests.0.boot.path: "nbd:127.0.0.1:10809" reads as a QEMU protocol (nbd:), not a file: for a file with a colon in its name, write ./nbd:127.0.0.1:10809',
      'guests.1.boot.path: "json:{}" reads as a QEMU protocol (json:), not a file: for a file with a colon in its name, write ./json:{}',
    ]);
    const lab = parseLabFile(text('{ kind: disk, path: "./nbd:127.0.0.1:10809" }'), 'test.yaml', { dir });
    expect(lab.guests[0]!.boot).toEqual({ kind: 'disk', path: join(dir, 'nbd:127.0.0.1:10809') });
  });

  it('an images: folder that is not there stops the lab before anything starts', async () => {
    const lab = parseLabFile(text('{ kind: lab }'), 'class.yaml', { dir: join(work, 'class') });
    const err = await labFromFile(lab, { source: 'class.yaml' }).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(LabFileError);
    expect((err as LabFileError).problems).toEqual([`images: ${join(work, 'class', 'images')} is not a folder: create it and put the images guests may use in it, or leave images: out`]);
  });
});
