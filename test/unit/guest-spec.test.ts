import { describe, expect, it } from 'vitest';
import { InvalidGuestSpecError, parseGuestSpec } from '../../electron/engine/qemu/spec';

describe('parseGuestSpec', () => {
  it('fills in the lab defaults', () => {
    expect(parseGuestSpec({ name: 'web1' })).toEqual({
      name: 'web1',
      memoryMiB: 256,
      vcpus: 1,
      machine: 'q35',
      boot: { kind: 'lab' },
    });
  });

  it('accepts custom kernels and disks', () => {
    expect(parseGuestSpec({ name: 'k', boot: { kind: 'kernel', kernel: '/k' } }).boot).toEqual({
      kind: 'kernel',
      kernel: '/k',
      labload: false,
    });
    expect(parseGuestSpec({ name: 'd', boot: { kind: 'disk', path: '/d.img', format: 'raw' } }).boot.kind).toBe('disk');
  });

  it('names every problem in one error', () => {
    let err: unknown;
    try {
      parseGuestSpec({ name: 'Bad Name', memoryMiB: 3, ip: '10.0.0.300/24', cpuModel: 'host,+x' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidGuestSpecError);
    const e = err as InvalidGuestSpecError;
    expect(e.problems.map((p) => p.split(':')[0])).toEqual(['name', 'memoryMiB', 'cpuModel', 'ip']);
    expect(e.message).toMatch(/name: use 1-32 lower-case letters/);
    expect(e.message).toMatch(/ip: each octet must be 0-255/);
  });

  it('refuses an unknown boot kind and a missing kernel path', () => {
    expect(() => parseGuestSpec({ name: 'x', boot: { kind: 'floppy' } })).toThrow(/boot/);
    expect(() => parseGuestSpec({ name: 'x', boot: { kind: 'kernel' } })).toThrow(/boot\.kernel/);
  });
});

describe('file paths in a guest spec', () => {
  const disk = (path: string) => ({ name: 'd', boot: { kind: 'disk', path } });

  it('refuses a name QEMU would read as a protocol, telling to write ./name for a file', () => {
    for (const [path, protocol] of [
      ['json:{"driver":"file","filename":"/etc/passwd"}', 'json:'],
      ['nbd:127.0.0.1:10809', 'nbd:'],
      ['http://example.com/disk.img', 'http:'],
      ['file:/etc/passwd', 'file:'],
      ['gluster+tcp:x', 'gluster+tcp:'],
    ] as const) {
      let err: unknown;
      try {
        parseGuestSpec(disk(path));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidGuestSpecError);
      expect((err as InvalidGuestSpecError).problems).toEqual([
        `boot.path: "${path}" reads as a QEMU protocol (${protocol}), not a file: for a file with a colon in its name, write ./${path}`,
      ]);
    }
    expect(() => parseGuestSpec({ name: 'k', boot: { kind: 'kernel', kernel: '/k', initrd: 'nbd:x' } })).toThrow(/boot\.initrd: "nbd:x" reads as a QEMU protocol/);
  });

  it('accepts a colon after the first slash, which QEMU reads as part of a file name', () => {
    for (const path of ['./nbd:127.0.0.1:10809', '/srv/images/a:b.qcow2', 'images/a:b.qcow2']) {
      expect(parseGuestSpec(disk(path)).boot).toEqual({ kind: 'disk', path });
    }
  });

  it('refuses a NUL in a path (a file name ends there)', () => {
    expect(() => parseGuestSpec(disk('/ok\0/etc/passwd'))).toThrow(/boot\.path: the path holds a NUL character/);
  });
});
