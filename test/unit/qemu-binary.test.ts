import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { chooseAccelerator, parseQemuVersion, whichBinary } from '../../electron/engine/qemu/binary';
import { TailBuffer } from '../../electron/engine/util/tail-buffer';

describe('QEMU binary helpers', () => {
  it('parses the version QEMU prints', () => {
    expect(parseQemuVersion('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright')).toEqual({
      version: '7.2.22', major: 7, minor: 2,
    });
    expect(parseQemuVersion('QEMU emulator version 9.1\n')).toEqual({ version: '9.1.0', major: 9, minor: 1 });
    expect(parseQemuVersion('something else')).toBeNull();
  });

  it('finds executables on a PATH without a shell, and not plain files', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'which-'));
    try {
      await writeFile(join(dir, 'tool'), '#!/bin/sh\n', { mode: 0o755 });
      await writeFile(join(dir, 'data'), 'x', { mode: 0o644 });
      expect(await whichBinary('tool', `/nonexistent:${dir}`)).toBe(join(dir, 'tool'));
      expect(await whichBinary('data', dir)).toBeNull();
    } finally {
      await rm(dir, { recursive: true });
    }
  });

  it('falls back to TCG with a reason when /dev/kvm is missing', async () => {
    const choice = await chooseAccelerator('/nonexistent/kvm');
    expect(choice.accel).toBe('tcg');
    expect(choice.reason).toMatch(/does not exist/);
  });
});

describe('TailBuffer', () => {
  it('keeps only the last bytes and the last lines', () => {
    const t = new TailBuffer(10);
    t.push('0123456789');
    t.push('abc');
    expect(t.text()).toBe('3456789abc');
    const l = new TailBuffer(1000);
    l.push('one\ntwo\n\nthree\n');
    expect(l.lastLines(2)).toBe('two\nthree');
  });
});
