/**
 * A small writer for the Linux initramfs format: a "newc" cpio archive (070701 headers), gzip'd.
 *
 * Written here rather than by `cpio -o -H newc` so that every entry is owned by root and device
 * nodes (/dev/console) can be created without being root, and so the output is byte-for-byte
 * reproducible (fixed inode numbers and mtimes).
 */
import { gzipSync } from 'node:zlib';

export type InitramfsEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/** Fixed mtime for every entry (2024-01-01T00:00:00Z) so archives are reproducible. */
const MTIME = 1_704_067_200;

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function normalise(path: string): string {
  const p = path.replace(/^\/+/, '').replace(/\/+$/, '');
  if (!p || p.split('/').some((s) => s === '' || s === '.' || s === '..')) {
    throw new Error(`bad initramfs path ${JSON.stringify(path)}`);
  }
  return p;
}

/**
 * Builds the uncompressed newc archive. Parent directories that are not listed are added
 * (mode 0755) before their first child; entries keep the given order otherwise.
 */
export function buildCpio(entries: readonly InitramfsEntry[]): Buffer {
  const chunks: Buffer[] = [];
  let ino = 1;
  const seen = new Set<string>();

  const push = (name: string, mode: number, data: Uint8Array, nlink: number, rdevMajor = 0, rdevMinor = 0) => {
    const nameBytes = Buffer.from(`${name}\0`, 'utf8');
    const header =
      '070701' +
      hex8(ino++) +
      hex8(mode) +
      hex8(0) + // uid: root
      hex8(0) + // gid: root
      hex8(nlink) +
      hex8(name === 'TRAILER!!!' ? 0 : MTIME) +
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(rdevMajor) +
      hex8(rdevMinor) +
      hex8(nameBytes.length) +
      hex8(0); // check (unused by newc)
    chunks.push(Buffer.from(header, 'ascii'), nameBytes, Buffer.alloc(pad4(110 + nameBytes.length)));
    if (data.length) chunks.push(Buffer.from(data.buffer, data.byteOffset, data.length), Buffer.alloc(pad4(data.length)));
  };

  const ensureParents = (path: string) => {
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!seen.has(dir)) {
        seen.add(dir);
        push(dir, S_IFDIR | 0o755, new Uint8Array(0), 2);
      }
    }
  };

  for (const e of entries) {
    const path = normalise(e.path);
    if (seen.has(path)) throw new Error(`initramfs path listed twice: ${path}`);
    ensureParents(path);
    seen.add(path);
    switch (e.type) {
      case 'dir':
        push(path, S_IFDIR | (e.mode ?? 0o755), new Uint8Array(0), 2);
        break;
      case 'file':
        push(path, S_IFREG | (e.mode ?? 0o644), e.data, 1);
        break;
      case 'symlink':
        push(path, S_IFLNK | 0o777, Buffer.from(e.target, 'utf8'), 1);
        break;
      case 'char':
        push(path, S_IFCHR | (e.mode ?? 0o600), new Uint8Array(0), 1, e.major, e.minor);
        break;
    }
  }
  push('TRAILER!!!', 0, new Uint8Array(0), 1);
  return Buffer.concat(chunks);
}

/** The gzip'd archive, as the kernel wants it for -initrd. */
export function buildInitramfs(entries: readonly InitramfsEntry[]): Buffer {
  return gzipSync(buildCpio(entries), { level: 9 });
}

export interface CpioMember {
  path: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  rdevMajor: number;
  rdevMinor: number;
  data: Buffer;
}

/** Reads a newc archive back (for tests and for inspecting a built image). */
export function parseCpio(archive: Buffer): CpioMember[] {
  const out: CpioMember[] = [];
  let off = 0;
  for (;;) {
    if (off + 110 > archive.length) throw new Error('cpio archive ends without a trailer');
    const magic = archive.toString('ascii', off, off + 6);
    if (magic !== '070701') throw new Error(`bad cpio magic ${JSON.stringify(magic)} at offset ${off}`);
    const field = (i: number) => parseInt(archive.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const uid = field(2);
    const gid = field(3);
    const size = field(6);
    const rdevMajor = field(9);
    const rdevMinor = field(10);
    const nameSize = field(11);
    const nameStart = off + 110;
    const path = archive.toString('utf8', nameStart, nameStart + nameSize - 1);
    const dataStart = nameStart + nameSize + pad4(110 + nameSize);
    const data = archive.subarray(dataStart, dataStart + size);
    off = dataStart + size + pad4(size);
    if (path === 'TRAILER!!!') return out;
    out.push({ path, mode, uid, gid, size, rdevMajor, rdevMinor, data });
  }
}
