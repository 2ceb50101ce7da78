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
