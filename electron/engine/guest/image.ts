/**
 * The MigLab lab guest image: Debian's kernel plus a small initramfs (busybox, labload, the
 * virtio/ext4/pvpanic modules and scripts/guest/init), built without root and cached.
 *
 * Cache layout (root: $MIGLAB_CACHE_DIR, else $XDG_CACHE_HOME/miglab, else ~/.cache/miglab):
 *   <root>/kernel/<release>_<debversion>/   vmlinuz, vmlinux, config, modules/*.ko, manifest.json
 *   <root>/guest/<key>/                     vmlinux (hard link; vmlinuz if no PVH boot),
 *                                           initrd.gz, labload, image.json
 * <key> hashes labload.c, init, the builder version (module set, command line), LABLOAD_VERSION,
 * the kernel package and version, and the busybox binary. Builds are staged in
 * <root>/guest/.tmp-* and renamed into place, so a dir with image.json is always complete;
 * builds for older keys are left alone.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, link, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, delimiter, join, resolve } from 'node:path';
import { findScriptsSubdir } from '../util/scripts-dir';
import { cachePath, defaultCacheRoot } from '../util/paths';
import { buildInitramfs } from './initramfs';
import type { InitramfsEntry } from './initramfs';
import {
  GUEST_MODULE_ROOTS,
  KERNEL_CACHE_VERSION,
  ensureKernel,
  moveIntoPlace,
  newestCachedKernel,
  resolveKernelPackage,
} from './kernel';
import type { CachedKernel, KernelPackage } from './kernel';
import { LABLOAD_VERSION } from './labload-protocol';
import { BUILD_DEPS_HINT, ToolFailedError, runTool, tail, throwIfAborted } from '../util/host-tools';

export { LABLOAD_VERSION } from './labload-protocol';

export interface LabGuestImage {
  /**
   * Absolute path of the kernel for -kernel: the uncompressed ELF vmlinux (QEMU boots it through
   * its PVH entry, skipping the ~2.5 s self-decompression under TCG), or the bzImage when the
   * vmlinux could not be extracted.
   */
  kernel: string;
  /** Absolute path of the gzip'd newc initramfs for -initrd. */
  initrd: string;
  /** Base kernel command line; personalise it with labGuestAppend. */
  append: string;
  labloadVersion: string;
  /** The image's cache dir. */
  dir: string;
}

export interface BuildLabGuestOptions {
  cacheRoot?: string;
  /** Rebuild the initramfs even if a complete image with the same key exists. */
  force?: boolean;
  onProgress?: (step: string, detail?: string) => void;
  signal?: AbortSignal;
}

/** Bump when the build's output changes for the same inputs (layout, flags, module set). */
export const GUEST_BUILDER_VERSION = 1;

/**
 * Base command line, measured under TCG (q35, 1 vCPU, default CPU, 256 MiB):
 * - console=ttyS0: the shell's console (8250 is built in).
 * - quiet: keeps the kernel's chatter off the 115200-baud console; printing it costs ~1 s.
 * - panic=-1: reboot at once on a panic instead of hanging (with QEMU -no-reboot the lab sees
 *   QEMU exit rather than a silent guest). The pvpanic driver reports the panic to QEMU before
 *   that reboot, and QEMU then exits on its own (see qemu/argv.ts).
 * - cryptomgr.notests: skips the crypto self-tests at boot, ~200 ms under TCG.
 * Not added: random.trust_cpu (the default CPU model has no RDRAND, nothing to trust), mitigations=off
 * (no measurable boot gain), initcall blacklists (fragile).
 */
export const LAB_GUEST_BASE_APPEND = 'console=ttyS0 quiet panic=-1 cryptomgr.notests';

/** The kernel's x86 command line limit (COMMAND_LINE_SIZE) minus the terminating NUL. */
const MAX_CMDLINE = 2047;

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

// ---- paths ---------------------------------------------------------------------------------------


/**
 * scripts/guest/ (labload.c, init): $MIGLAB_GUEST_SRC_DIR, else found by walking up from this
 * module (works from the source tree and from a bundle next to it), else under the cwd.
 */
export function guestSourceDir(env: NodeJS.ProcessEnv = process.env): string {
  const ok = (d: string) => existsSync(join(d, 'labload.c')) && existsSync(join(d, 'init'));
  if (env.MIGLAB_GUEST_SRC_DIR) {
    const d = resolve(env.MIGLAB_GUEST_SRC_DIR);
    if (!ok(d)) throw new Error(`MIGLAB_GUEST_SRC_DIR=${d} has no labload.c and init`);
    return d;
  }
  const found = findScriptsSubdir('guest', ok);
  if (found) return found;
  throw new Error('cannot find scripts/guest/labload.c and init; set MIGLAB_GUEST_SRC_DIR to that folder');
}

// ---- command line --------------------------------------------------------------------------------

/** Checks a.b.c.d/nn; returns a sentence when it is not one. */
export function checkGuestIp(ip: string): string | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(ip);
  if (!m) return `guest ip ${JSON.stringify(ip)} must be an IPv4 address with prefix length, e.g. 10.0.0.2/24`;
  if (m.slice(1, 5).some((o) => Number(o) > 255)) return `guest ip ${ip} has an octet above 255`;
  const prefix = Number(m[5]);
  if (prefix < 1 || prefix > 32) return `guest ip ${ip} needs a prefix length between 1 and 32`;
  return null;
}

/**
 * The per-guest kernel command line: `base` (the image's append) with any miglab.name/miglab.ip
 * already in it replaced, then `miglab.name=<name>`, `miglab.ip=<ip>` if given, and `extra`.
 */
export function labGuestAppend(base: string, opts: { name: string; ip?: string; extra?: string }): string {
  if (!NAME_RE.test(opts.name)) {
    throw new Error(
      `guest name ${JSON.stringify(opts.name)} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
  if (opts.ip !== undefined && opts.ip !== '') {
    const bad = checkGuestIp(opts.ip);
    if (bad) throw new Error(bad);
  }
  const extra = (opts.extra ?? '').trim();
  if (/[\0\r\n]/.test(base) || /[\0\r\n]/.test(extra)) throw new Error('kernel command line must be a single line');
  const parts = base
    .split(/\s+/)
    .filter((t) => t && !t.startsWith('miglab.name=') && !t.startsWith('miglab.ip='));
  parts.push(`miglab.name=${opts.name}`);
  if (opts.ip) parts.push(`miglab.ip=${opts.ip}`);
  if (extra) parts.push(extra);
  const line = parts.join(' ');
  if (line.length > MAX_CMDLINE) throw new Error(`kernel command line is ${line.length} characters; the limit is ${MAX_CMDLINE}`);
  return line;
}

// ---- cache key ------------------------------------------------------------------------------------

export interface GuestKeyInputs {
  labloadSource: string | Uint8Array;
  initSource: string | Uint8Array;
  kernelPackage: KernelPackage;
  busyboxSha256: string;
  builderVersion?: number;
  labloadVersion?: string;
}

/** 16 hex digits naming <root>/guest/<key>/. Any change in an input gives another key. */
export function guestCacheKey(inputs: GuestKeyInputs): string {
  const sha = (x: string | Uint8Array) => createHash('sha256').update(x).digest('hex');
  const doc = {
    builder: inputs.builderVersion ?? GUEST_BUILDER_VERSION,
    kernelCache: KERNEL_CACHE_VERSION,
    modules: GUEST_MODULE_ROOTS,
    append: LAB_GUEST_BASE_APPEND,
    labloadVersion: inputs.labloadVersion ?? LABLOAD_VERSION,
    labload: sha(inputs.labloadSource),
    init: sha(inputs.initSource),
    kernel: `${inputs.kernelPackage.name}=${inputs.kernelPackage.version}`,
    busybox: inputs.busyboxSha256,
  };
  return createHash('sha256').update(JSON.stringify(doc)).digest('hex').slice(0, 16);
}

// ---- ELF checks ---------------------------------------------------------------------------------

const EM_X86_64 = 62;
const PT_INTERP = 3;

/** Architecture and linkage of an ELF64 executable (enough to refuse a dynamic busybox). */
export function elfInfo(buf: Buffer): { machine: number; dynamic: boolean } {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2 || buf[5] !== 1) {
    throw new Error('not a little-endian ELF64 file');
  }
  const machine = buf.readUInt16LE(0x12);
  const phoff = Number(buf.readBigUInt64LE(0x20));
  const phentsize = buf.readUInt16LE(0x36);
  const phnum = buf.readUInt16LE(0x38);
  let dynamic = false;
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    if (o + 4 > buf.length) break;
    if (buf.readUInt32LE(o) === PT_INTERP) dynamic = true;
  }
  return { machine, dynamic };
}

/** A static x86_64 busybox: $MIGLAB_BUSYBOX, else busybox on PATH, /bin, /usr/bin. */
export async function findStaticBusybox(env: NodeJS.ProcessEnv = process.env): Promise<{ path: string; data: Buffer }> {
  const candidates = env.MIGLAB_BUSYBOX
    ? [env.MIGLAB_BUSYBOX]
    : [...(env.PATH ?? '').split(delimiter).filter(Boolean).map((d) => join(d, 'busybox')), '/bin/busybox', '/usr/bin/busybox'];
  let dynamicOne: string | null = null;
  for (const c of candidates) {
    let data: Buffer;
    try {
      data = await readFile(c);
    } catch {
      continue;
    }
    let info: { machine: number; dynamic: boolean };
    try {
      info = elfInfo(data);
    } catch {
      continue;
    }
    if (info.machine !== EM_X86_64) continue;
    if (info.dynamic) {
      dynamicOne ??= c;
      continue;
    }
    return { path: c, data };
  }
  if (dynamicOne) {
    throw new Error(
      `${dynamicOne} is a dynamically linked busybox, which cannot run alone in the initramfs. Fix: ${BUILD_DEPS_HINT}`,
    );
  }
  throw new Error(`no static x86_64 busybox found (the guest's shell and tools). Fix: ${BUILD_DEPS_HINT}`);
}

// ---- reading a built image ------------------------------------------------------------------------

interface ImageManifest {
  key: string;
  kernel: string;
  initrd: string;
  append: string;
  labloadVersion: string;
  kernelPackage: KernelPackage;
  kernelRelease: string;
  modules: string[];
  busybox: string;
  builderVersion: number;
  builtAt: string;
}

async function loadImage(dir: string): Promise<{ image: LabGuestImage; manifest: ImageManifest } | null> {
  try {
    const m = JSON.parse(await readFile(join(dir, 'image.json'), 'utf8')) as ImageManifest;
    const kernel = join(dir, m.kernel);
    const initrd = join(dir, m.initrd);
    await stat(kernel);
    await stat(initrd);
    return { image: { kernel, initrd, append: m.append, labloadVersion: m.labloadVersion, dir }, manifest: m };
  } catch {
    return null;
  }
}

async function newestImage(root: string): Promise<LabGuestImage | null> {
  const base = cachePath(root, 'guest');
  let names: string[];
  try {
    names = await readdir(base);
  } catch {
    return null;
  }
  let best: { img: LabGuestImage; at: string } | null = null;
  for (const n of names) {
    if (n.startsWith('.') || n.includes('.old-')) continue;
    const got = await loadImage(join(base, n));
    if (got && (!best || got.manifest.builtAt > best.at)) best = { img: got.image, at: got.manifest.builtAt };
  }
  return best?.img ?? null;
}

interface Inputs {
  labloadPath: string;
  labloadSource: Buffer;
  initSource: Buffer;
  busybox: { path: string; data: Buffer; sha256: string };
  kernelPackage: KernelPackage;
  /** Set when apt could not be asked and a cached kernel stands in. */
  cachedKernel: CachedKernel | null;
  key: string;
}

async function gatherInputs(root: string, signal?: AbortSignal, progress?: (s: string, d?: string) => void): Promise<Inputs> {
  const src = guestSourceDir();
  const labloadPath = join(src, 'labload.c');
  const [labloadSource, initSource] = await Promise.all([readFile(labloadPath), readFile(join(src, 'init'))]);
  const bb = await findStaticBusybox();
  const busybox = { ...bb, sha256: createHash('sha256').update(bb.data).digest('hex') };
  let kernelPackage: KernelPackage;
  let cachedKernel: CachedKernel | null = null;
  try {
    kernelPackage = await resolveKernelPackage({ signal });
  } catch (err) {
    throwIfAborted(signal);
    cachedKernel = await newestCachedKernel(root);
    if (!cachedKernel) throw err;
    kernelPackage = cachedKernel.package;
    progress?.('kernel: apt unavailable, using the cached kernel', `${kernelPackage.name} ${kernelPackage.version}: ${(err as Error).message}`);
  }
  const key = guestCacheKey({ labloadSource, initSource, kernelPackage, busyboxSha256: busybox.sha256 });
  return { labloadPath, labloadSource, initSource, busybox, kernelPackage, cachedKernel, key };
}

/**
 * The built image for the current inputs, or (when the inputs cannot be worked out, e.g. no apt)
 * the newest complete build. Never builds; null when there is none.
 */
export async function findLabGuest(opts: { cacheRoot?: string } = {}): Promise<LabGuestImage | null> {
  const root = opts.cacheRoot ?? defaultCacheRoot();
  // Every guest start asks, a migration's destination included: reading and hashing the inputs
  // (busybox alone is 2 MB) each time is wasted work, so a found image is remembered briefly,
  // as the kernel package look-up is.
  const memo = foundImages.get(root);
  if (memo && performance.now() - memo.at < FOUND_IMAGE_TTL_MS && existsSync(memo.image.initrd)) return memo.image;
  const image = await lookUpLabGuest(root);
  if (image) foundImages.set(root, { image, at: performance.now() });
  else foundImages.delete(root);
  return image;
}

const FOUND_IMAGE_TTL_MS = 60_000;
const foundImages = new Map<string, { image: LabGuestImage; at: number }>();

async function lookUpLabGuest(root: string): Promise<LabGuestImage | null> {
  let inputs: Inputs;
  try {
    inputs = await gatherInputs(root);
  } catch {
    return newestImage(root);
  }
  return (await loadImage(cachePath(root, 'guest', inputs.key)))?.image ?? null;
}

// ---- building --------------------------------------------------------------------------------------

async function compileLabload(source: string, out: string, signal?: AbortSignal): Promise<void> {
  const args = ['-static', '-O2', '-s', '-Wall', `-DLABLOAD_VERSION="${LABLOAD_VERSION}"`, '-o', out, source];
  try {
    await runTool('gcc', args, { signal });
  } catch (err) {
    if (err instanceof ToolFailedError) {
      const libc = /cannot find -lc|stdio\.h: No such file|crt1\.o/.test(err.stderr);
      throw new Error(
        `compiling labload failed: ${tail(err.stderr, 6)}${libc ? `\nThe static C library is missing. Fix: ${BUILD_DEPS_HINT}` : ''}`,
      );
    }
    throw err;
  }
  const info = elfInfo(await readFile(out));
  if (info.machine !== EM_X86_64) {
    throw new Error('gcc made a non-x86_64 labload; the lab guest is x86_64, so build on an x86_64 host');
  }
  if (info.dynamic) throw new Error(`gcc -static made a dynamic labload. Fix: ${BUILD_DEPS_HINT}`);
}

/** Hard link (same cache filesystem: no 66 MB copy per build), else copy. */
async function linkOrCopy(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch {
    await copyFile(from, to);
  }
}

/** Deletes staging dirs left by builds that were killed (older than an hour). */
async function sweepStale(base: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(base);
  } catch {
    return;
  }
  const cutoff = Date.now() - 3_600_000;
  for (const n of names) {
    if (!n.startsWith('.tmp-') && !n.includes('.old-')) continue;
    try {
      if ((await stat(join(base, n))).mtimeMs < cutoff) await rm(join(base, n), { recursive: true, force: true });
    } catch {
      /* someone else removed it */
    }
  }
}

export function initramfsEntries(parts: {
  init: Uint8Array;
  busybox: Uint8Array;
  labload: Uint8Array;
  modules: Array<{ file: string; data: Uint8Array }>;
  info: string;
  /** busybox --list-full paths (bin/ls, usr/bin/awk, ...): symlinked to /bin/busybox. */
  applets?: readonly string[];
}): InitramfsEntry[] {
  const entries: InitramfsEntry[] = [];
  for (const d of ['bin', 'sbin', 'dev', 'etc', 'etc/miglab', 'lib', 'lib/modules', 'proc', 'sys', 'run', 'mnt', 'usr', 'usr/bin', 'usr/sbin']) {
    entries.push({ type: 'dir', path: d });
  }
  entries.push({ type: 'dir', path: 'tmp', mode: 0o1777 });
  entries.push({ type: 'dir', path: 'root', mode: 0o700 });
  // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
  entries.push({ type: 'char', path: 'dev/console', major: 5, minor: 1, mode: 0o600 });
  entries.push({ type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 });
  entries.push({ type: 'file', path: 'init', data: parts.init, mode: 0o755 });
  entries.push({ type: 'file', path: 'bin/busybox', data: parts.busybox, mode: 0o755 });
  entries.push({ type: 'symlink', path: 'bin/sh', target: 'busybox' });
  entries.push({ type: 'file', path: 'bin/labload', data: parts.labload, mode: 0o755 });
  for (const m of parts.modules) entries.push({ type: 'file', path: `lib/modules/${m.file}`, data: m.data, mode: 0o644 });
  entries.push({
    type: 'file',
    path: 'lib/modules/load-order',
    data: Buffer.from(parts.modules.map((m) => `${m.file}\n`).join('')),
  });
  entries.push({ type: 'file', path: 'etc/miglab/image', data: Buffer.from(parts.info) });
  const taken = new Set(entries.map((e) => e.path));
  for (const a of parts.applets ?? []) {
    const path = a.replace(/^\/+/, '');
    // Only plain paths in the usual bin dirs; never shadow what is already there (sh, init).
    if (!/^(usr\/)?s?bin\/[^/]+$/.test(path) || taken.has(path)) continue;
    taken.add(path);
    entries.push({ type: 'symlink', path, target: '/bin/busybox' });
  }
  return entries;
}

/**
 * Builds (or finds in the cache) the lab guest: resolves the kernel package, downloads and
 * extracts it once, compiles labload, packs the initramfs, and renames the finished dir into
 * <root>/guest/<key>/.
 */
export async function buildLabGuest(opts: BuildLabGuestOptions = {}): Promise<LabGuestImage> {
  const root = opts.cacheRoot ?? defaultCacheRoot();
  const progress = opts.onProgress ?? (() => {});
  const signal = opts.signal;
  throwIfAborted(signal);

  progress('guest: checking inputs');
  const inputs = await gatherInputs(root, signal, progress);
  const guestBase = cachePath(root, 'guest');
  const dir = join(guestBase, inputs.key);
  if (!opts.force) {
    const got = await loadImage(dir);
    if (got) {
      progress('guest: cached', dir);
      return got.image;
    }
  }
  await mkdir(guestBase, { recursive: true });
  await sweepStale(guestBase);
  await sweepStale(cachePath(root, 'kernel'));

  const kernel = inputs.cachedKernel ?? (await ensureKernel(root, { signal, onProgress: progress, pkg: inputs.kernelPackage }));
  throwIfAborted(signal);

  const stage = join(guestBase, `.tmp-${inputs.key}-${randomBytes(4).toString('hex')}`);
  await mkdir(stage, { recursive: true });
  try {
    progress('labload: compiling', `gcc -static -O2 (labload ${LABLOAD_VERSION})`);
    await compileLabload(inputs.labloadPath, join(stage, 'labload'), signal);
    throwIfAborted(signal);

    progress('initramfs: packing', `busybox, labload, ${kernel.modules.length} modules`);
    const modules = await Promise.all(
      kernel.modules.map(async (m) => ({ file: m.file, data: await readFile(join(kernel.dir, 'modules', m.file)) })),
    );
    // Applet symlinks made here save the guest a `busybox --install` at every boot.
    let applets: string[] = [];
    try {
      applets = (await runTool(inputs.busybox.path, ['--list-full'], { signal })).stdout
        .toString('utf8')
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean);
    } catch {
      progress('initramfs: busybox --list-full failed', 'the guest installs its applets at boot instead');
    }
    const info =
      `key=${inputs.key}\nlabload=${LABLOAD_VERSION}\nkernel=${kernel.package.name} ${kernel.package.version}\n` +
      `release=${kernel.release}\nbuilder=${GUEST_BUILDER_VERSION}\n`;
    const initrd = buildInitramfs(
      initramfsEntries({
        init: inputs.initSource,
        busybox: inputs.busybox.data,
        labload: await readFile(join(stage, 'labload')),
        modules,
        info,
        applets,
      }),
    );
    await writeFile(join(stage, 'initrd.gz'), initrd);
    const kernelFile = basename(kernel.boot);
    await linkOrCopy(kernel.boot, join(stage, kernelFile));
    throwIfAborted(signal);

    const manifest: ImageManifest = {
      key: inputs.key,
      kernel: kernelFile,
      initrd: 'initrd.gz',
      append: LAB_GUEST_BASE_APPEND,
      labloadVersion: LABLOAD_VERSION,
      kernelPackage: kernel.package,
      kernelRelease: kernel.release,
      modules: kernel.modules.map((m) => m.name),
      busybox: `${inputs.busybox.path} sha256:${inputs.busybox.sha256}`,
      builderVersion: GUEST_BUILDER_VERSION,
      builtAt: new Date().toISOString(),
    };
    // image.json is written last: a dir that has it is complete.
    await writeFile(join(stage, 'image.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    const placed = await moveIntoPlace(stage, dir, opts.force ?? false);
    const got = await loadImage(dir);
    if (!got) throw new Error(`built the lab guest but ${dir} is not complete`);
    progress(placed ? 'guest: built' : 'guest: built by another process', `${dir} (initrd ${Math.round(initrd.length / 1024)} KiB)`);
    foundImages.set(root, { image: got.image, at: performance.now() }); // what findLabGuest answers now
    return got.image;
  } finally {
    await rm(stage, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }).catch(() => {});
  }
}
