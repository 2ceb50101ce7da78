// Lab files: what parses, what is refused and how the refusal reads, and the text a lab saves.
import { describe, expect, it } from 'vitest';
import { LabFileError, labFileText, parseLabFile } from '../../electron/engine/lab/lab-file';

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
