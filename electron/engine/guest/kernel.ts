/**
 * The lab guest's kernel: Debian's distro kernel, fetched without root.
 *
 * 1. `apt-cache show --no-all-versions linux-image-amd64`: the candidate meta package's Depends
 *    names the versioned package and its exact version (linux-image-6.1.0-NN-amd64 (= V)); a local
 *    look-up, no network (`apt-cache depends` + `apt-cache policy` as the fallback).
 * 2. If <cacheRoot>/kernel/<release>_<version>/ is complete, that is all.
 * 3. Otherwise `apt-get download <pkg>=<version>` into a temp dir, `dpkg-deb -x`, copy vmlinuz,
 *    extract the uncompressed vmlinux from it (for a direct PVH boot), and copy the modules the
 *    guest needs (resolved with their dependencies from modules.dep, or from the modules' own
 *    .modinfo `depends=`/`softdep=` when the package ships no modules.dep, which Debian's does
 *    not: its postinst runs depmod), decompressed, then rename the staged dir into place. The
 *    70 MB .deb and the 400 MB tree are deleted.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { ToolFailedError, runTool, tail, throwIfAborted } from '../util/host-tools';
import { cachePath } from '../util/paths';

export const KERNEL_META_PACKAGE = 'linux-image-amd64';

/**
 * Modules the guest loads (their dependencies come along): virtio transport, NIC and disk, ext4,
 * and pvpanic. crc32c is ext4's and jbd2's soft dependency (through the crypto API); the generic
 * one works on every CPU model. pvpanic_mmio (with its common part, pvpanic) is the driver of
 * QEMU's ISA `-device pvpanic`, which QEMU describes in ACPI as QEMU0001: with it a panicking
 * kernel tells QEMU, which sends GUEST_PANICKED (Debian 6.1 builds PVPANIC_MMIO and PVPANIC_PCI
 * as modules; the PCI one is for `-device pvpanic-pci`, which the lab does not use).
 */
export const GUEST_MODULE_ROOTS: readonly string[] = [
  'virtio_ring',
  'virtio',
  'virtio_pci',
  'virtio_net',
  'virtio_blk',
  'ext4',
  'pvpanic_mmio',
];

/** Bump when the kernel cache layout or module selection changes. */
export const KERNEL_CACHE_VERSION = 1;

export interface KernelPackage {
  /** e.g. linux-image-6.1.0-56-amd64 */
  name: string;
  /** Debian package version, e.g. 6.1.192-2 */
  version: string;
}

export interface KernelModule {
  name: string;
  /** File name inside the cache's modules/ dir (always an uncompressed .ko). */
  file: string;
  /** Path inside the package it came from. */
  from: string;
}

export interface CachedKernel {
  dir: string;
  /** The distro's compressed bzImage. */
  vmlinuz: string;
  /**
   * What to boot: the uncompressed ELF vmlinux when it could be extracted and has a PVH entry
   * (QEMU then loads it directly and the guest skips decompressing itself, which costs ~2.5 s
   * under TCG), else the bzImage.
   */
  boot: string;
  package: KernelPackage;
  /** uname -r of the kernel, e.g. 6.1.0-56-amd64 */
  release: string;
  /** In load order: every module after its dependencies. */
  modules: KernelModule[];
}

interface KernelManifest {
  cacheVersion: number;
  package: KernelPackage;
  release: string;
  /** File name of the kernel to boot: 'vmlinux' (PVH) or 'vmlinuz'. */
  boot: string;
  roots: string[];
  modules: KernelModule[];
  createdAt: string;
}

type Progress = (step: string, detail?: string) => void;

export function kernelCacheDirName(pkg: KernelPackage): string {
  const release = pkg.name.replace(/^linux-image-/, '');
  return sanitize(`${release}_${pkg.version}`);
}

function sanitize(s: string): string {
  return s.replace(/[^A-Za-z0-9._+-]/g, '_');
}

// ---- resolving the package (no network) ----------------------------------------------------------

export class AptError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AptError';
  }
}

/** Parses `apt-cache depends <meta>` output: the first linux-image-* it depends on. */
export function parseAptDepends(text: string): string | null {
  for (const line of text.split('\n')) {
    const m = /^\s*\|?Depends:\s*(linux-image-\S+)/.exec(line);
    if (m && !m[1]!.startsWith('<')) return m[1]!;
  }
  return null;
}

/** Parses `apt-cache policy <pkg>` output: the candidate version, null if none. */
export function parseAptCandidate(text: string): string | null {
  const m = /^\s*Candidate:\s*(\S+)/m.exec(text);
  if (!m || m[1] === '(none)') return null;
  return m[1]!;
}

/** Parses dpkg-deb -f's Depends field of the meta package: `linux-image-X (= V)`. */
export function parseMetaDepends(field: string): KernelPackage | null {
  const m = /(linux-image-[^\s,(]+)\s*(?:\(\s*=\s*([^\s)]+)\s*\))?/.exec(field);
  if (!m) return null;
  return { name: m[1]!, version: m[2] ?? '' };
}

const UPDATE_HINT = 'run `apt-get update` (as root) so apt knows the archive, then try again';

/** Reads the Depends line of an `apt-cache show` record. */
export function parseAptShowDepends(text: string): KernelPackage | null {
  const m = /^Depends:\s*(.*)$/m.exec(text);
  return m ? parseMetaDepends(m[1]!) : null;
}

let memo: { at: number; pkg: KernelPackage } | null = null;
const MEMO_MS = 60_000;

/**
 * Names the kernel package the meta package currently points to, from apt's lists (no network):
 * `apt-cache show --no-all-versions linux-image-amd64` (the candidate's Depends carries the exact
 * version), with `apt-cache depends` + `apt-cache policy` as the fallback. Each apt-cache call
 * costs about a second, so the answer is remembered for a minute.
 */
export async function resolveKernelPackage(opts: { signal?: AbortSignal; fresh?: boolean } = {}): Promise<KernelPackage> {
  if (!opts.fresh && memo && Date.now() - memo.at < MEMO_MS) return memo.pkg;
  let pkg: KernelPackage | null = null;
  try {
    const show = (await runTool('apt-cache', ['show', '--no-all-versions', KERNEL_META_PACKAGE], opts)).stdout.toString('utf8');
    pkg = parseAptShowDepends(show);
  } catch (err) {
    if (err instanceof ToolFailedError) {
      throw new AptError(
        `apt does not know ${KERNEL_META_PACKAGE} (${tail(err.stderr, 2) || 'no packages found'}): ${UPDATE_HINT}`,
      );
    }
    throw err;
  }
  if (!pkg || !pkg.version) {
    const depends = (await runTool('apt-cache', ['depends', KERNEL_META_PACKAGE], opts)).stdout.toString('utf8');
    const name = parseAptDepends(depends) ?? pkg?.name ?? null;
    if (!name) throw new AptError(`apt-cache names no linux-image package for ${KERNEL_META_PACKAGE}: ${UPDATE_HINT}`);
    const policy = (await runTool('apt-cache', ['policy', name], opts)).stdout.toString('utf8');
    const version = parseAptCandidate(policy);
    if (!version) throw new AptError(`apt has no installable version of ${name}: ${UPDATE_HINT}`);
    pkg = { name, version };
  }
  memo = { at: Date.now(), pkg };
  return pkg;
}

// ---- the cache ---------------------------------------------------------------------------------

async function readManifest(dir: string): Promise<KernelManifest | null> {
  try {
    const m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as KernelManifest;
    if (m.cacheVersion !== KERNEL_CACHE_VERSION) return null;
    await stat(join(dir, 'vmlinuz'));
    await stat(join(dir, m.boot));
    for (const mod of m.modules) await stat(join(dir, 'modules', mod.file));
    return m;
  } catch {
    return null;
  }
}

function toCached(dir: string, m: KernelManifest): CachedKernel {
  return {
    dir,
    vmlinuz: join(dir, 'vmlinuz'),
    boot: join(dir, m.boot),
    package: m.package,
    release: m.release,
    modules: m.modules,
  };
}

function sameRoots(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** A complete cached kernel for this package, or null. */
export async function findCachedKernel(cacheRoot: string, pkg: KernelPackage): Promise<CachedKernel | null> {
  const dir = cachePath(cacheRoot, 'kernel', kernelCacheDirName(pkg));
  const m = await readManifest(dir);
  if (!m || !sameRoots(m.roots, GUEST_MODULE_ROOTS)) return null;
  return toCached(dir, m);
}

/** The most recently made complete cached kernel, whatever its version (for offline use). */
export async function newestCachedKernel(cacheRoot: string): Promise<CachedKernel | null> {
  const base = cachePath(cacheRoot, 'kernel');
  let names: string[];
  try {
    names = await readdir(base);
  } catch {
    return null;
  }
  let best: { k: CachedKernel; at: string } | null = null;
  for (const n of names) {
    if (n.startsWith('.')) continue;
    const m = await readManifest(join(base, n));
    if (!m || !sameRoots(m.roots, GUEST_MODULE_ROOTS)) continue;
    if (!best || m.createdAt > best.at) best = { k: toCached(join(base, n), m), at: m.createdAt };
  }
  return best?.k ?? null;
}

/**
 * Returns the cached kernel for the candidate package, downloading and extracting it first if
 * needed. If apt cannot even name the package (no apt, no lists) and some kernel is cached,
 * that one is used.
 */
export async function ensureKernel(
  cacheRoot: string,
  opts: { signal?: AbortSignal; onProgress?: Progress; pkg?: KernelPackage } = {},
): Promise<CachedKernel> {
  const progress = opts.onProgress ?? (() => {});
  let pkg = opts.pkg;
  if (!pkg) {
    progress('kernel: resolving', KERNEL_META_PACKAGE);
    try {
      pkg = await resolveKernelPackage(opts);
    } catch (err) {
      const cached = await newestCachedKernel(cacheRoot);
      if (!cached) throw err;
      progress('kernel: using cached', `${cached.package.name} ${cached.package.version} (${(err as Error).message})`);
      return cached;
    }
  }
  const found = await findCachedKernel(cacheRoot, pkg);
  if (found) {
    progress('kernel: cached', `${pkg.name} ${pkg.version}`);
    return found;
  }
  return fetchKernel(cacheRoot, pkg, opts);
}

async function fetchKernel(
  cacheRoot: string,
  pkg: KernelPackage,
  opts: { signal?: AbortSignal; onProgress?: Progress },
): Promise<CachedKernel> {
  const progress = opts.onProgress ?? (() => {});
  const base = cachePath(cacheRoot, 'kernel');
  await mkdir(base, { recursive: true });
  const work = join(base, `.tmp-${kernelCacheDirName(pkg)}-${randomBytes(4).toString('hex')}`);
  const stage = join(work, 'stage');
  const tree = join(work, 'tree');
  await mkdir(join(stage, 'modules'), { recursive: true });
  try {
    progress(`kernel: downloading ${pkg.name}`, pkg.version);
    const spec = pkg.version ? `${pkg.name}=${pkg.version}` : pkg.name;
    try {
      await runTool('apt-get', ['download', spec], { cwd: work, signal: opts.signal });
    } catch (err) {
      if (err instanceof ToolFailedError) throw new AptError(explainAptDownload(spec, err.stderr));
      throw err;
    }
    const deb = (await readdir(work)).find((f) => f.endsWith('.deb'));
    if (!deb) throw new AptError(`apt-get download ${spec} finished but left no .deb in ${work}`);
    const debPath = join(work, deb);
    const fields = (await runTool('dpkg-deb', ['-f', debPath, 'Package', 'Version'], opts)).stdout.toString('utf8');
    const gotVersion = /^Version:\s*(\S+)/m.exec(fields)?.[1] ?? pkg.version;
    throwIfAborted(opts.signal);

    progress('kernel: extracting', deb);
    await runTool('dpkg-deb', ['-x', debPath, tree], opts);
    await rm(debPath, { force: true });
    throwIfAborted(opts.signal);

    const bootFiles = await readdir(join(tree, 'boot'));
    const vmlinuzName = bootFiles.find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuzName) throw new Error(`${pkg.name} has no /boot/vmlinuz-*: not a kernel image package?`);
    const release = vmlinuzName.slice('vmlinuz-'.length);
    await copyFile(join(tree, 'boot', vmlinuzName), join(stage, 'vmlinuz'));
    const config = bootFiles.find((f) => f.startsWith('config-'));
    if (config) await copyFile(join(tree, 'boot', config), join(stage, 'config'));

    progress('kernel: extracting vmlinux', 'uncompressed, for a direct (PVH) boot');
    let boot = 'vmlinuz';
    try {
      const vmlinux = await extractVmlinux(join(stage, 'vmlinuz'), work, opts.signal);
      if (vmlinux) {
        await writeFile(join(stage, 'vmlinux'), vmlinux);
        boot = 'vmlinux';
      } else {
        progress('kernel: no PVH entry', 'booting the compressed kernel (slower under TCG)');
      }
    } catch (err) {
      throwIfAborted(opts.signal);
      progress('kernel: could not extract vmlinux', `${(err as Error).message}; booting the compressed kernel (slower under TCG)`);
    }

    progress('kernel: resolving modules', GUEST_MODULE_ROOTS.join(' '));
    const modDir = await findModulesDir(tree, release);
    const order = await resolveModules(modDir, GUEST_MODULE_ROOTS, opts.signal);
    const modules: KernelModule[] = [];
    for (const m of order) {
      const file = `${m.name}.ko`;
      const data = await readModuleFile(join(modDir, m.path), opts.signal);
      await writeFile(join(stage, 'modules', file), data);
      modules.push({ name: m.name, file, from: m.path });
    }
    const manifest: KernelManifest = {
      cacheVersion: KERNEL_CACHE_VERSION,
      package: { name: pkg.name, version: gotVersion },
      release,
      boot,
      roots: [...GUEST_MODULE_ROOTS],
      modules,
      createdAt: new Date().toISOString(),
    };
    await writeFile(join(stage, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);

    const final = join(base, kernelCacheDirName(manifest.package));
    await rm(tree, { recursive: true, force: true });
    // Another build may have finished the same kernel meanwhile: keep theirs if it is complete
    // (a build of the initramfs may be reading it right now); replace only a broken one.
    if (!(await moveIntoPlace(stage, final, false))) {
      const theirs = await readManifest(final);
      if (theirs && sameRoots(theirs.roots, GUEST_MODULE_ROOTS)) return toCached(final, theirs);
      await moveIntoPlace(stage, final, true);
    }
    progress('kernel: ready', `${pkg.name} ${gotVersion}, ${modules.length} modules`);
    return toCached(final, manifest);
  } finally {
    await rm(work, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }).catch(() => {});
  }
}

function explainAptDownload(spec: string, stderr: string): string {
  const said = tail(stderr, 3);
  if (/Unable to locate package|Can't select|has no installation candidate|No packages found|not found/i.test(stderr)) {
    return `apt-get download ${spec} failed: apt does not know that package (${said}). Fix: ${UPDATE_HINT}`;
  }
  if (/404|Not Found/i.test(stderr)) {
    return `apt-get download ${spec} failed: the archive no longer has that version (${said}). Fix: ${UPDATE_HINT}`;
  }
  return `apt-get download ${spec} failed: ${said || 'no message'}. Check that Debian's archive is reachable (network, proxy), or ${UPDATE_HINT}`;
}

/**
 * Renames a staged directory to its final name. If the final dir exists already (another build
 * won the race, or a forced rebuild), it is moved aside first and deleted after.
 */
export async function moveIntoPlace(stage: string, final: string, replace = true): Promise<boolean> {
  try {
    await rename(stage, final);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
  }
  if (!replace) return false;
  const aside = `${final}.old-${randomBytes(4).toString('hex')}`;
  await rename(final, aside);
  await rename(stage, final);
  await rm(aside, { recursive: true, force: true });
  return true;
}

async function findModulesDir(tree: string, release: string): Promise<string> {
  for (const p of [join(tree, 'lib', 'modules', release), join(tree, 'usr', 'lib', 'modules', release)]) {
    try {
      if ((await stat(p)).isDirectory()) return p;
    } catch {
      /* try the next */
    }
  }
  throw new Error(`the kernel package has no lib/modules/${release}`);
}

// ---- vmlinux from bzImage ---------------------------------------------------------------------

export type PayloadFormat = 'xz' | 'gzip' | 'zstd' | 'lzma' | 'bzip2' | 'lz4' | 'lzo' | 'unknown';

/** The compressed kernel inside a bzImage (boot protocol >= 2.08), or null if it is not one. */
export function bzImagePayload(bz: Buffer): { format: PayloadFormat; data: Buffer } | null {
  if (bz.length < 0x260 || bz.toString('latin1', 0x202, 0x206) !== 'HdrS') return null;
  if (bz.readUInt16LE(0x206) < 0x208) return null;
  const setupSects = bz[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + bz.readUInt32LE(0x248);
  const len = bz.readUInt32LE(0x24c);
  if (start + len > bz.length || len < 16) return null;
  const data = bz.subarray(start, start + len);
  const hex = data.subarray(0, 6).toString('hex');
  const format: PayloadFormat = hex.startsWith('fd377a585a00')
    ? 'xz'
    : hex.startsWith('1f8b')
      ? 'gzip'
      : hex.startsWith('28b52ffd')
        ? 'zstd'
        : hex.startsWith('5d00')
          ? 'lzma'
          : hex.startsWith('425a68')
            ? 'bzip2'
            : hex.startsWith('02214c18')
              ? 'lz4'
              : hex.startsWith('894c5a')
                ? 'lzo'
                : 'unknown';
  return { format, data };
}

const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** True when an ELF64 kernel carries the Xen PVH entry note QEMU needs to boot it directly. */
export function hasPvhNote(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return false;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 0x28 > elf.length || elf.readUInt32LE(ph) !== 4 /* PT_NOTE */) continue;
    let off = Number(elf.readBigUInt64LE(ph + 0x08));
    const end = off + Number(elf.readBigUInt64LE(ph + 0x20));
    while (off + 12 <= end && end <= elf.length) {
      const namesz = elf.readUInt32LE(off);
      const descsz = elf.readUInt32LE(off + 4);
      const type = elf.readUInt32LE(off + 8);
      const name = elf.toString('latin1', off + 12, off + 12 + Math.max(0, namesz - 1));
      if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
      off += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}

/**
 * Decompresses the ELF vmlinux out of a bzImage. Null when the payload format is not handled
 * here or the result has no PVH entry; throws when a needed tool is missing or fails.
 */
export async function extractVmlinux(bzImagePath: string, workDir: string, signal?: AbortSignal): Promise<Buffer | null> {
  const payload = bzImagePayload(await readFile(bzImagePath));
  if (!payload) return null;
  // The build appends the uncompressed size (4 bytes) after the compressed stream.
  const stream = payload.data.subarray(0, payload.data.length - 4);
  let elf: Buffer;
  if (payload.format === 'gzip') {
    elf = gunzipSync(stream);
  } else if (payload.format === 'xz' || payload.format === 'zstd') {
    const tmp = join(workDir, `payload.${payload.format}`);
    await writeFile(tmp, stream);
    try {
      elf =
        payload.format === 'xz'
          ? (await runTool('xz', ['-dc', '--single-stream', tmp], { signal })).stdout
          : (await runTool('zstd', ['-dcq', tmp], { signal })).stdout;
    } finally {
      await rm(tmp, { force: true });
    }
  } else {
    return null;
  }
  return hasPvhNote(elf) ? elf : null;
}

// ---- modules -----------------------------------------------------------------------------------

const MODULE_FILE_RE = /\.ko(\.xz|\.zst|\.gz)?$/;

/** Module name as the kernel spells it: file name without .ko*, dashes as underscores. */
export function moduleNameOf(file: string): string {
  return basename(file).replace(MODULE_FILE_RE, '').replace(/-/g, '_');
}

/** Reads a module, decompressing .ko.xz / .ko.zst / .ko.gz. */
export async function readModuleFile(path: string, signal?: AbortSignal): Promise<Buffer> {
  if (path.endsWith('.ko')) return readFile(path);
  if (path.endsWith('.gz')) return gunzipSync(await readFile(path));
  if (path.endsWith('.xz')) return (await runTool('xz', ['-dc', path], { signal })).stdout;
  if (path.endsWith('.zst')) return (await runTool('zstd', ['-dcq', path], { signal })).stdout;
  throw new Error(`not a kernel module: ${path}`);
}

/** The key=value strings of an ELF64 object's .modinfo section (values of repeated keys kept). */
export function readModinfo(elf: Buffer): Map<string, string[]> {
  const info = new Map<string, string[]>();
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46) throw new Error('not an ELF file');
  if (elf[4] !== 2 || elf[5] !== 1) throw new Error('only little-endian ELF64 modules are supported');
  const shoff = Number(elf.readBigUInt64LE(0x28));
  const shentsize = elf.readUInt16LE(0x3a);
  const shnum = elf.readUInt16LE(0x3c);
  const shstrndx = elf.readUInt16LE(0x3e);
  const sh = (i: number) => {
    const o = shoff + i * shentsize;
    return {
      name: elf.readUInt32LE(o),
      offset: Number(elf.readBigUInt64LE(o + 0x18)),
      size: Number(elf.readBigUInt64LE(o + 0x20)),
    };
  };
  if (shoff <= 0 || shstrndx >= shnum || shoff + shnum * shentsize > elf.length) throw new Error('bad ELF section table');
  const strtab = sh(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = sh(i);
    const nameStart = strtab.offset + s.name;
    const nameEnd = elf.indexOf(0, nameStart);
    if (elf.toString('latin1', nameStart, nameEnd) !== '.modinfo') continue;
    const text = elf.toString('latin1', s.offset, s.offset + s.size);
    for (const entry of text.split('\0')) {
      const eq = entry.indexOf('=');
      if (eq <= 0) continue;
      const k = entry.slice(0, eq);
      const list = info.get(k) ?? [];
      list.push(entry.slice(eq + 1));
      info.set(k, list);
    }
    return info;
  }
  throw new Error('ELF file has no .modinfo section (not a kernel module?)');
}

/** Dependencies of a module from its .modinfo: hard `depends=` and `softdep=pre:` names. */
export function modinfoDeps(info: Map<string, string[]>): { depends: string[]; softPre: string[] } {
  const depends = (info.get('depends') ?? [])
    .flatMap((d) => d.split(','))
    .map((d) => d.trim().replace(/-/g, '_'))
    .filter(Boolean);
  const softPre: string[] = [];
  for (const sd of info.get('softdep') ?? []) {
    // "pre: a b post: c"
    let mode = '';
    for (const tok of sd.split(/\s+/)) {
      if (tok === 'pre:' || tok === 'post:') mode = tok;
      else if (tok && mode === 'pre:') softPre.push(tok);
    }
  }
  return { depends, softPre };
}

/** modules.dep: "kernel/a/b.ko: kernel/c.ko kernel/d.ko" -> path -> dependency paths. */
export function parseModulesDep(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const deps = line.slice(colon + 1).trim();
    out.set(line.slice(0, colon).trim(), deps ? deps.split(/\s+/) : []);
  }
  return out;
}

export interface ModuleGraph {
  /** module name -> path relative to the modules dir */
  paths: Map<string, string>;
  /** module name -> names it needs loaded first (hard deps, then resolved soft pre-deps) */
  deps(name: string): Promise<string[]>;
  builtin: Set<string>;
}

/**
 * Orders `roots` and everything they need so each module comes after its dependencies
 * (depth-first, post-order; a cycle is an error). Built-in modules are skipped; any other
 * missing module is an error (soft dependencies are only listed when they were found).
 */
export async function orderModules(
  roots: readonly string[],
  graph: ModuleGraph,
): Promise<Array<{ name: string; path: string }>> {
  const out: Array<{ name: string; path: string }> = [];
  const done = new Set<string>();
  const onStack = new Set<string>();
  const visit = async (name: string, chain: string[]): Promise<void> => {
    if (done.has(name)) return;
    if (onStack.has(name)) throw new Error(`module dependency cycle: ${[...chain, name].join(' -> ')}`);
    const path = graph.paths.get(name);
    if (!path) {
      if (graph.builtin.has(name)) return;
      throw new Error(`the kernel package has no module ${name} (needed by ${chain.join(' -> ') || 'the lab guest'})`);
    }
    onStack.add(name);
    for (const d of await graph.deps(name)) await visit(d, [...chain, name]);
    onStack.delete(name);
    done.add(name);
    out.push({ name, path });
  };
  for (const r of roots) await visit(r, []);
  return out;
}

async function walkModules(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const ent of await readdir(join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${ent.name}` : ent.name;
    if (ent.isDirectory()) out.push(...(await walkModules(dir, r)));
    else if (MODULE_FILE_RE.test(ent.name)) out.push(r);
  }
  return out;
}

/** Resolves `roots` in an extracted modules dir (lib/modules/<release>) into load order. */
export async function resolveModules(
  modDir: string,
  roots: readonly string[],
  signal?: AbortSignal,
): Promise<Array<{ name: string; path: string }>> {
  const files = await walkModules(join(modDir, 'kernel'), '');
  const paths = new Map<string, string>();
  for (const f of files) paths.set(moduleNameOf(f), `kernel/${f}`);
  const builtin = new Set<string>();
  try {
    for (const l of (await readFile(join(modDir, 'modules.builtin'), 'utf8')).split('\n')) {
      if (l.trim()) builtin.add(moduleNameOf(l.trim()));
    }
  } catch {
    /* optional */
  }
  let depFile: Map<string, string[]> | null = null;
  try {
    depFile = parseModulesDep(await readFile(join(modDir, 'modules.dep'), 'utf8'));
  } catch {
    depFile = null; // Debian's package: depmod runs at install time, so read .modinfo instead
  }
  const infoCache = new Map<string, Map<string, string[]>>();
  const modinfo = async (name: string) => {
    let info = infoCache.get(name);
    if (!info) {
      throwIfAborted(signal);
      info = readModinfo(await readModuleFile(join(modDir, paths.get(name)!), signal));
      infoCache.set(name, info);
    }
    return info;
  };
  // Soft deps name aliases ("crypto-crc32c"): find the module that provides it, preferring a
  // *_generic one (works on every CPU). Guess by name first, then scan the crypto modules.
  let aliasIndex: Map<string, string[]> | null = null;
  const resolveAlias = async (alias: string): Promise<string | null> => {
    const n = alias.replace(/-/g, '_');
    if (paths.has(n)) return n;
    const bare = n.replace(/^crypto_/, '');
    for (const guess of [`${bare}_generic`, bare]) if (paths.has(guess)) return guess;
    if (!aliasIndex) {
      aliasIndex = new Map();
      for (const [name, p] of paths) {
        if (!/\/crypto\//.test(p)) continue;
        for (const a of (await modinfo(name)).get('alias') ?? []) {
          const list = aliasIndex.get(a) ?? [];
          list.push(name);
          aliasIndex.set(a, list);
        }
      }
    }
    const providers = aliasIndex.get(alias) ?? [];
    return providers.find((p) => p.endsWith('_generic')) ?? providers[0] ?? null;
  };
  const graph: ModuleGraph = {
    paths,
    builtin,
    async deps(name) {
      const info = await modinfo(name);
      const { depends, softPre } = modinfoDeps(info);
      let hard = depends;
      if (depFile) {
        const fromDep = depFile.get(paths.get(name)!);
        if (fromDep) hard = fromDep.map((p) => moduleNameOf(p));
      }
      const soft: string[] = [];
      for (const alias of softPre) {
        const m = await resolveAlias(alias);
        if (m && m !== name) soft.push(m);
      }
      return [...hard, ...soft];
    },
  };
  return orderModules(roots, graph);
}

/** sha256 of a file, hex. */
export async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

