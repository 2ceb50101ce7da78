import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GUEST_BUILDER_VERSION, LABLOAD_VERSION, LAB_GUEST_BASE_APPEND, checkGuestIp, elfInfo, findLabGuest, guestCacheKey, initramfsEntries, labGuestAppend } from '../../electron/engine/guest/image';
import { buildCpio, buildInitramfs, parseCpio } from '../../electron/engine/guest/initramfs';
import {
  bzImagePayload,
  extractVmlinux,
  hasPvhNote,
  kernelCacheDirName,
  modinfoDeps,
  moduleNameOf,
  moveIntoPlace,
  orderModules,
  parseAptCandidate,
  parseAptDepends,
  parseAptShowDepends,
  parseMetaDepends,
  parseModulesDep,
  readModinfo,
  resolveModules,
} from '../../electron/engine/guest/kernel';
import { LABLOAD_VERSION as PROTOCOL_VERSION } from '../../electron/engine/guest/labload-protocol';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { defaultCacheRoot } from '../../electron/engine/util/paths';

// ---- a tiny ELF64 writer for synthetic modules and kernels -----------------------------------------

function makeElf(opts: {
  sections?: Array<{ name: string; data: Buffer }>;
  notes?: Array<{ name: string; type: number; desc: Buffer }>;
  interp?: boolean;
  machine?: number;
}): Buffer {
  const align4 = (b: Buffer) => Buffer.concat([b, Buffer.alloc((4 - (b.length % 4)) % 4)]);
  const notes = Buffer.concat(
    (opts.notes ?? []).map((n) => {
      const name = Buffer.from(`${n.name}\0`);
      const h = Buffer.alloc(12);
      h.writeUInt32LE(name.length, 0);
      h.writeUInt32LE(n.desc.length, 4);
      h.writeUInt32LE(n.type, 8);
      return Buffer.concat([h, align4(name), align4(n.desc)]);
    }),
  );
  const phdrs: Array<{ type: number; off: number; size: number }> = [];
  const phnum = (opts.interp ? 1 : 0) + (notes.length ? 1 : 0);
  let off = 64 + phnum * 56;
  const interpData = Buffer.from('/lib64/ld-linux-x86-64.so.2\0');
  const chunks: Buffer[] = [];
  if (opts.interp) {
    phdrs.push({ type: 3, off, size: interpData.length });
    chunks.push(interpData);
    off += interpData.length;
  }
  if (notes.length) {
    phdrs.push({ type: 4, off, size: notes.length });
    chunks.push(notes);
    off += notes.length;
  }
  const sections = [...(opts.sections ?? [])];
  const names = ['', ...sections.map((s) => s.name), '.shstrtab'];
  const shstr = Buffer.from(`${names.join('\0')}\0`);
  const nameOffsets: number[] = [];
  let p = 0;
  for (const n of names) {
    nameOffsets.push(p);
    p += n.length + 1;
  }
  const secHeaders: Array<{ name: number; off: number; size: number }> = [{ name: 0, off: 0, size: 0 }];
  sections.forEach((s, i) => {
    secHeaders.push({ name: nameOffsets[i + 1]!, off, size: s.data.length });
    chunks.push(s.data);
    off += s.data.length;
  });
  secHeaders.push({ name: nameOffsets[names.length - 1]!, off, size: shstr.length });
  chunks.push(shstr);
  off += shstr.length;
  const shoff = off;
  const eh = Buffer.alloc(64);
  eh.writeUInt32BE(0x7f454c46, 0);
  eh[4] = 2;
  eh[5] = 1;
  eh[6] = 1;
  eh.writeUInt16LE(2, 0x10);
  eh.writeUInt16LE(opts.machine ?? 62, 0x12);
  eh.writeUInt32LE(1, 0x14);
  eh.writeBigUInt64LE(64n, 0x20);
  eh.writeBigUInt64LE(BigInt(shoff), 0x28);
  eh.writeUInt16LE(64, 0x34);
  eh.writeUInt16LE(56, 0x36);
  eh.writeUInt16LE(phnum, 0x38);
  eh.writeUInt16LE(64, 0x3a);
  eh.writeUInt16LE(secHeaders.length, 0x3c);
  eh.writeUInt16LE(secHeaders.length - 1, 0x3e);
  const ph = Buffer.alloc(phnum * 56);
  phdrs.forEach((h, i) => {
    ph.writeUInt32LE(h.type, i * 56);
    ph.writeBigUInt64LE(BigInt(h.off), i * 56 + 0x08);
    ph.writeBigUInt64LE(BigInt(h.size), i * 56 + 0x20);
  });
  const sh = Buffer.alloc(secHeaders.length * 64);
  secHeaders.forEach((h, i) => {
    sh.writeUInt32LE(h.name, i * 64);
    sh.writeBigUInt64LE(BigInt(h.off), i * 64 + 0x18);
    sh.writeBigUInt64LE(BigInt(h.size), i * 64 + 0x20);
  });
  return Buffer.concat([eh, ph, ...chunks, sh]);
}

function fakeModule(name: string, info: string[]): Buffer {
  return makeElf({
    sections: [
      { name: '.text', data: Buffer.from('code') },
      { name: '.modinfo', data: Buffer.from([...info, `name=${name}`].map((x) => `${x}\0`).join('')) },
    ],
  });
}

const pvhNote = { name: 'Xen', type: 18, desc: Buffer.alloc(8) };

// ---- tests ------------------------------------------------------------------------------------------

describe('cache key', () => {
  const base = {
    labloadSource: 'int main(){}',
    initSource: '#!/bin/sh\n',
    kernelPackage: { name: 'linux-image-6.1.0-56-amd64', version: '6.1.192-2' },
    busyboxSha256: 'ab'.repeat(32),
  };

  it('is 16 hex digits and stable for the same inputs', () => {
    const k = guestCacheKey(base);
    expect(k).toMatch(/^[0-9a-f]{16}$/);
    expect(guestCacheKey({ ...base, labloadSource: Buffer.from('int main(){}') })).toBe(k);
  });

  it('changes with every input', () => {
    const k = guestCacheKey(base);
    const variants = [
      { ...base, labloadSource: 'int main(){return 1;}' },
      { ...base, initSource: '#!/bin/sh\necho\n' },
      { ...base, kernelPackage: { ...base.kernelPackage, version: '6.1.193-1' } },
      { ...base, kernelPackage: { ...base.kernelPackage, name: 'linux-image-6.1.0-57-amd64' } },
      { ...base, busyboxSha256: 'cd'.repeat(32) },
      { ...base, builderVersion: GUEST_BUILDER_VERSION + 1 },
      { ...base, labloadVersion: `${LABLOAD_VERSION}-x` },
    ];
    const keys = variants.map((v) => guestCacheKey(v));
    for (const other of keys) expect(other).not.toBe(k);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('exports one labload version for the builder and the protocol', () => {
    expect(LABLOAD_VERSION).toBe(PROTOCOL_VERSION);
  });
});

describe('cache root', () => {
  it('prefers MIGLAB_CACHE_DIR, then XDG_CACHE_HOME, then ~/.cache', () => {
    expect(defaultCacheRoot({ MIGLAB_CACHE_DIR: '/x/y', XDG_CACHE_HOME: '/c' })).toBe('/x/y');
    expect(defaultCacheRoot({ XDG_CACHE_HOME: '/c' })).toBe('/c/miglab');
    expect(defaultCacheRoot({})).toMatch(/\.cache\/miglab$/);
  });
});

describe('labGuestAppend', () => {
  it('adds name, ip and extra to the base', () => {
    expect(labGuestAppend(LAB_GUEST_BASE_APPEND, { name: 'src' })).toBe(`${LAB_GUEST_BASE_APPEND} miglab.name=src`);
    expect(labGuestAppend('console=ttyS0 quiet', { name: 'vm-1', ip: '10.0.0.2/24', extra: ' loglevel=7 ' })).toBe(
      'console=ttyS0 quiet miglab.name=vm-1 miglab.ip=10.0.0.2/24 loglevel=7',
    );
  });

  it('replaces a name and ip already in the base', () => {
    const once = labGuestAppend('console=ttyS0', { name: 'a', ip: '10.0.0.2/24' });
    expect(labGuestAppend(once, { name: 'b' })).toBe('console=ttyS0 miglab.name=b');
  });

  it('the base command line is quiet and has the console on ttyS0', () => {
    expect(LAB_GUEST_BASE_APPEND.split(' ')).toEqual(expect.arrayContaining(['console=ttyS0', 'quiet', 'panic=-1']));
  });

  it('refuses bad names, addresses and multi-line input', () => {
    expect(() => labGuestAppend('', { name: 'two words' })).toThrow(/guest name/);
    expect(() => labGuestAppend('', { name: '-x' })).toThrow(/guest name/);
    expect(() => labGuestAppend('', { name: 'a'.repeat(64) })).toThrow(/guest name/);
    expect(() => labGuestAppend('', { name: 'a', ip: '10.0.0.2' })).toThrow(/prefix length/);
    expect(() => labGuestAppend('', { name: 'a', ip: '10.0.0.256/24' })).toThrow(/octet/);
    expect(() => labGuestAppend('', { name: 'a', ip: '10.0.0.2/33' })).toThrow(/between 1 and 32/);
    expect(() => labGuestAppend('', { name: 'a', extra: 'x\ny' })).toThrow(/single line/);
    expect(() => labGuestAppend('', { name: 'a', extra: 'x'.repeat(3000) })).toThrow(/limit/);
    expect(checkGuestIp('192.168.1.10/16')).toBeNull();
  });
});

describe('initramfs (newc)', () => {
  it('round-trips, root-owned, with parents, symlinks and device nodes', () => {
    const cpio = buildCpio([
      { type: 'file', path: 'init', data: Buffer.from('#!/bin/sh\n'), mode: 0o755 },
      { type: 'file', path: '/lib/modules/a.ko', data: Buffer.from('abc') },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
      { type: 'char', path: 'dev/console', major: 5, minor: 1 },
      { type: 'dir', path: 'tmp', mode: 0o1777 },
    ]);
    expect(cpio.length % 4).toBe(0);
    const members = parseCpio(cpio);
    expect(members.map((m) => m.path)).toEqual(['init', 'lib', 'lib/modules', 'lib/modules/a.ko', 'bin', 'bin/sh', 'dev', 'dev/console', 'tmp']);
    for (const m of members) expect([m.uid, m.gid]).toEqual([0, 0]);
    const by = Object.fromEntries(members.map((m) => [m.path, m]));
    expect(by.init!.mode).toBe(0o100755);
    expect(by.init!.data.toString()).toBe('#!/bin/sh\n');
    expect(by['lib/modules/a.ko']!.data.toString()).toBe('abc');
    expect(by['bin/sh']!.mode & 0o170000).toBe(0o120000);
    expect(by['bin/sh']!.data.toString()).toBe('busybox');
    expect(by['dev/console']).toMatchObject({ mode: 0o020600, rdevMajor: 5, rdevMinor: 1 });
    expect(by.tmp!.mode).toBe(0o041777);
  });

  it('is reproducible and gzip-compressed', () => {
    const entries = [{ type: 'file' as const, path: 'x', data: Buffer.from('y') }];
    const a = buildInitramfs(entries);
    expect(a.subarray(0, 2).toString('hex')).toBe('1f8b');
    expect(gunzipSync(a).equals(buildCpio(entries))).toBe(true);
    expect(buildInitramfs(entries).equals(a)).toBe(true);
  });

  it('refuses duplicate and escaping paths', () => {
    expect(() => buildCpio([{ type: 'dir', path: 'a' }, { type: 'dir', path: 'a/' }])).toThrow(/twice/);
    expect(() => buildCpio([{ type: 'dir', path: '../etc' }])).toThrow(/bad initramfs path/);
  });

  it('lays out the guest: executable /init, busybox, labload, modules in order, applets', () => {
    const entries = initramfsEntries({
      init: Buffer.from('#!/bin/busybox sh\n'),
      busybox: Buffer.from('BB'),
      labload: Buffer.from('LL'),
      modules: [
        { file: 'virtio_ring.ko', data: Buffer.from('1') },
        { file: 'virtio.ko', data: Buffer.from('2') },
      ],
      info: 'key=x\n',
      applets: ['bin/ls', 'usr/bin/awk', 'sbin/ifconfig', 'bin/sh', 'linuxrc', 'bin/../etc/x'],
    });
    const members = parseCpio(gunzipSync(buildInitramfs(entries)));
    const by = Object.fromEntries(members.map((m) => [m.path, m]));
    expect(by.init!.mode).toBe(0o100755);
    expect(by['bin/labload']!.mode).toBe(0o100755);
    expect(by['bin/busybox']!.mode).toBe(0o100755);
    expect(by['dev/console']).toMatchObject({ rdevMajor: 5, rdevMinor: 1 });
    expect(by['lib/modules/load-order']!.data.toString()).toBe('virtio_ring.ko\nvirtio.ko\n');
    expect(by['bin/sh']!.data.toString()).toBe('busybox'); // not shadowed by the applet list
    expect(by['bin/ls']!.data.toString()).toBe('/bin/busybox');
    expect(by['usr/bin/awk']!.data.toString()).toBe('/bin/busybox');
    expect(by.linuxrc).toBeUndefined();
    expect(members.some((m) => m.path.includes('..'))).toBe(false);
  });
});

describe('kernel package resolution (parsers)', () => {
  it('reads apt-cache depends and policy', () => {
    expect(parseAptDepends('linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n')).toBe('linux-image-6.1.0-56-amd64');
    expect(parseAptDepends('linux-image-amd64\n  Depends: <linux-image-virtual>\n')).toBeNull();
    expect(parseAptDepends('')).toBeNull();
    const policy = 'linux-image-6.1.0-56-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n';
    expect(parseAptCandidate(policy)).toBe('6.1.192-2');
    expect(parseAptCandidate('x:\n  Candidate: (none)\n')).toBeNull();
  });

  it('reads the candidate record of apt-cache show', () => {
    const show = 'Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n';
    expect(parseAptShowDepends(show)).toEqual({ name: 'linux-image-6.1.0-56-amd64', version: '6.1.192-2' });
    expect(parseAptShowDepends('Package: x\n')).toBeNull();
  });

  it('reads the meta package Depends field', () => {
    expect(parseMetaDepends('linux-image-6.1.0-56-amd64 (= 6.1.192-2)')).toEqual({
      name: 'linux-image-6.1.0-56-amd64',
      version: '6.1.192-2',
    });
    expect(parseMetaDepends('linux-image-6.1.0-56-amd64')).toEqual({ name: 'linux-image-6.1.0-56-amd64', version: '' });
  });

  it('names the kernel cache dir by release and package version', () => {
    expect(kernelCacheDirName({ name: 'linux-image-6.1.0-56-amd64', version: '1:6.1.192-2' })).toBe('6.1.0-56-amd64_1_6.1.192-2');
  });
});

describe('kernel modules', () => {
  it('reads .modinfo from an ELF module', () => {
    const info = readModinfo(fakeModule('ext4', ['depends=jbd2,mbcache,crc16', 'softdep=pre: crypto-crc32c', 'alias=fs-ext4', 'alias=ext3']));
    expect(info.get('name')).toEqual(['ext4']);
    expect(info.get('alias')).toEqual(['fs-ext4', 'ext3']);
    expect(modinfoDeps(info)).toEqual({ depends: ['jbd2', 'mbcache', 'crc16'], softPre: ['crypto-crc32c'] });
    expect(modinfoDeps(readModinfo(fakeModule('x', ['depends=', 'softdep=pre: a b post: c'])))).toEqual({
      depends: [],
      softPre: ['a', 'b'],
    });
    expect(() => readModinfo(Buffer.from('not elf'.padEnd(80)))).toThrow(/not an ELF/);
    expect(() => readModinfo(makeElf({ sections: [{ name: '.text', data: Buffer.from('x') }] }))).toThrow(/no .modinfo/);
  });

  it('names modules the kernel way', () => {
    expect(moduleNameOf('kernel/arch/x86/crypto/crc32c-intel.ko')).toBe('crc32c_intel');
    expect(moduleNameOf('a/virtio_net.ko.xz')).toBe('virtio_net');
    expect(parseModulesDep('kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko:\n')).toEqual(
      new Map([
        ['kernel/a.ko', ['kernel/b.ko', 'kernel/c.ko']],
        ['kernel/b.ko', []],
      ]),
    );
  });

  it('orders dependencies first, skips built-ins, reports cycles and missing modules', async () => {
    const deps: Record<string, string[]> = { a: ['b', 'c'], b: ['c', 'builtin1'], c: [], d: ['a'] };
    const graph = (d: Record<string, string[]>) => ({
      paths: new Map(Object.keys(d).map((k) => [k, `kernel/${k}.ko`])),
      builtin: new Set(['builtin1']),
      deps: async (n: string) => d[n] ?? [],
    });
    expect((await orderModules(['d', 'c'], graph(deps))).map((m) => m.name)).toEqual(['c', 'b', 'a', 'd']);
    await expect(orderModules(['x'], graph({ x: ['y'], y: ['x'] }))).rejects.toThrow(/cycle: x -> y -> x/);
    await expect(orderModules(['x'], graph({ x: ['nope'] }))).rejects.toThrow(/no module nope \(needed by x\)/);
  });

  describe('resolveModules in an extracted package', () => {
    let dir = '';
    beforeAll(async () => {
      dir = await makeTempDir('guest-image-unit');
      const k = join(dir, 'kernel');
      const put = async (rel: string, data: Buffer) => {
        await mkdir(join(k, rel, '..'), { recursive: true });
        await writeFile(join(k, rel), data);
      };
      await put('drivers/virtio/virtio_ring.ko', fakeModule('virtio_ring', ['depends=']));
      await put('drivers/virtio/virtio.ko', fakeModule('virtio', ['depends=virtio_ring']));
      await put('drivers/net/virtio_net.ko.gz', gzipSync(fakeModule('virtio_net', ['depends=virtio_ring,virtio,net_failover'])));
      await put('drivers/net/net_failover.ko', fakeModule('net_failover', ['depends=failover']));
      await put('net/core/failover.ko', fakeModule('failover', ['depends=']));
      await put('fs/ext4/ext4.ko', fakeModule('ext4', ['depends=jbd2', 'softdep=pre: crypto-crc32c']));
      await put('fs/jbd2/jbd2.ko', fakeModule('jbd2', ['depends=', 'softdep=pre: crypto-crc32c']));
      await put('arch/x86/crypto/crc32c-intel.ko', fakeModule('crc32c_intel', ['alias=crypto-crc32c']));
      await put('crypto/crc32c_generic.ko', fakeModule('crc32c_generic', ['alias=crypto-crc32c', 'alias=crypto-crc32c-generic']));
      await writeFile(join(dir, 'modules.builtin'), 'kernel/lib/crc16.ko\n');
    });
    afterAll(async () => {
      await removeDir(dir);
    });

    it('follows depends= and soft pre-deps (preferring the generic crc32c), decompressing .ko.gz', async () => {
      const order = await resolveModules(dir, ['virtio_net', 'ext4']);
      expect(order.map((m) => m.name)).toEqual([
        'virtio_ring',
        'virtio',
        'failover',
        'net_failover',
        'virtio_net',
        'crc32c_generic',
        'jbd2',
        'ext4',
      ]);
      expect(order.find((m) => m.name === 'virtio_net')!.path).toBe('kernel/drivers/net/virtio_net.ko.gz');
    });

    it('uses modules.dep when the package has one', async () => {
      await writeFile(join(dir, 'modules.dep'), 'kernel/drivers/virtio/virtio.ko:\n');
      try {
        expect((await resolveModules(dir, ['virtio'])).map((m) => m.name)).toEqual(['virtio']);
      } finally {
        await removeDir(join(dir, 'modules.dep'));
      }
    });
  });
});

describe('kernel image helpers', () => {
  it('finds the PVH note and tells static from dynamic executables', () => {
    expect(hasPvhNote(makeElf({ notes: [pvhNote] }))).toBe(true);
    expect(hasPvhNote(makeElf({ notes: [{ name: 'GNU', type: 18, desc: Buffer.alloc(4) }] }))).toBe(false);
    expect(hasPvhNote(Buffer.from('nope'))).toBe(false);
    expect(elfInfo(makeElf({}))).toEqual({ machine: 62, dynamic: false });
    expect(elfInfo(makeElf({ interp: true, machine: 183 }))).toEqual({ machine: 183, dynamic: true });
  });

  it('pulls the vmlinux out of a bzImage', async () => {
    const vmlinux = makeElf({ notes: [pvhNote] });
    const payload = Buffer.concat([gzipSync(vmlinux), Buffer.alloc(4)]);
    const bz = Buffer.alloc(1024 + 16 + payload.length);
    bz[0x1f1] = 1; // setup sectors: the payload area starts at (1 + 1) * 512
    bz.write('HdrS', 0x202, 'latin1');
    bz.writeUInt16LE(0x20f, 0x206);
    bz.writeUInt32LE(16, 0x248);
    bz.writeUInt32LE(payload.length, 0x24c);
    payload.copy(bz, 1024 + 16);
    expect(bzImagePayload(bz)?.format).toBe('gzip');
    expect(bzImagePayload(Buffer.alloc(1024))).toBeNull();

    const dir = await makeTempDir('guest-image-unit');
    try {
      await writeFile(join(dir, 'vmlinuz'), bz);
      const out = await extractVmlinux(join(dir, 'vmlinuz'), dir);
      expect(out?.equals(vmlinux)).toBe(true);
      // Without the PVH note there is nothing to boot directly.
      const plain = Buffer.concat([gzipSync(makeElf({})), Buffer.alloc(4)]);
      const bz2 = Buffer.concat([bz.subarray(0, 1040), plain]);
      bz2.writeUInt32LE(plain.length, 0x24c);
      await writeFile(join(dir, 'vmlinuz2'), bz2);
      expect(await extractVmlinux(join(dir, 'vmlinuz2'), dir)).toBeNull();
    } finally {
      await removeDir(dir);
    }
  });
});

describe('cache directories', () => {
  it('moves a staged build into place, replacing only when asked', async () => {
    const root = await makeTempDir('guest-image-unit');
    try {
      const stage = join(root, '.tmp-a');
      const final = join(root, 'a');
      await mkdir(stage);
      await writeFile(join(stage, 'f'), '1');
      expect(await moveIntoPlace(stage, final)).toBe(true);
      await mkdir(stage);
      await writeFile(join(stage, 'f'), '2');
      expect(await moveIntoPlace(stage, final, false)).toBe(false);
      expect(await readFile(join(final, 'f'), 'utf8')).toBe('1');
      expect(await moveIntoPlace(stage, final, true)).toBe(true);
      expect(await readFile(join(final, 'f'), 'utf8')).toBe('2');
      expect((await readdir(root)).sort()).toEqual(['a']);
    } finally {
      await removeDir(root);
    }
  });

  it('findLabGuest finds nothing in an empty cache and ignores unfinished builds', async () => {
    const root = await makeTempDir('guest-image-unit');
    try {
      expect(await findLabGuest({ cacheRoot: root })).toBeNull();
      const partial = join(root, 'guest', '.tmp-0123456789abcdef-1');
      await mkdir(partial, { recursive: true });
      await writeFile(join(partial, 'vmlinux'), 'k');
      await writeFile(join(partial, 'initrd.gz'), 'i');
      expect(await findLabGuest({ cacheRoot: root })).toBeNull();
    } finally {
      await removeDir(root);
    }
  });
});
