/**
 * A private QEMU for the lab: Debian's own QEMU 10 build from the bookworm-backports suite,
 * fetched with apt into MigLab's cache and never installed on the system.
 *
 * Why: under TCG, QEMU 7.2 (Debian 12's) misses guest writes while it tracks dirty pages, and a
 * guest that writes memory during a migration then crashes on the destination; QEMU 10 does not
 * (README, "Which QEMU runs the lab"). Everything runs without root and without touching
 * /etc/apt: a private sources list, a private lists dir and a private apt cache, the mirror taken
 * from the machine's own apt sources.
 *
 * Cache layout: <cacheRoot>/qemu/<version>/ holds the unpacked packages (usr/bin/qemu-system-x86_64
 * finds its data in ../share/qemu) and manifest.json; it is staged in <cacheRoot>/qemu/.tmp-* and
 * renamed into place, so a dir with a manifest is always complete.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { readQemuVersion } from './version';
import { cachePath } from '../util/paths';

const run = promisify(execFile);

export const BACKPORTS_SUITE = 'bookworm-backports';
/** The binary package and the two it needs (BIOS blobs, keymaps and helpers). */
export const QEMU_PACKAGES = ['qemu-system-x86', 'qemu-system-common', 'qemu-system-data'] as const;
/** The smallest QEMU that tracks TCG's dirty pages exactly (measured: 7.2 loses writes, 10.0 does not). */
export const EXACT_TCG_TRACKING_MAJOR = 10;

const MANIFEST = 'manifest.json';

export interface PrivateQemu {
  /** .../usr/bin/qemu-system-x86_64 inside the cache. */
  path: string;
  /** Debian's package version, e.g. 1:10.0.2+ds-2+deb13u1~bpo12+1. */
  debVersion: string;
  /** QEMU's own version, e.g. 10.0.2. */
  version: string;
  mirror: string;
  dir: string;
}

interface Manifest {
  debVersion: string;
  version: string;
  mirror: string;
  suite: string;
  packages: string[];
  fetchedAt: string;
}

export class PrivateQemuError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PrivateQemuError';
  }
}

export function privateQemuRoot(cacheRoot: string): string {
  return cachePath(cacheRoot, 'qemu');
}

// ---- the machine's Debian mirror ------------------------------------------------------------

export interface AptSource {
  uri: string;
  suites: string[];
  components: string[];
  signedBy: string | null;
}

/** One-line sources (`deb [opts] URI SUITE COMP...`). */
export function parseOneLineSources(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const m = /^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
    if (!m) continue;
    const signed = /signed-by=(\S+)/.exec(m[1] ?? '');
    out.push({ uri: m[2]!, suites: [m[3]!], components: m[4]!.split(/\s+/).filter(Boolean), signedBy: signed?.[1] ?? null });
  }
  return out;
}

/** deb822 `.sources` stanzas (Types/URIs/Suites/Components/Signed-By). */
export function parseDeb822Sources(text: string): AptSource[] {
  const out: AptSource[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const raw of stanza.split('\n')) {
      if (raw.startsWith('#')) continue;
      const m = /^([A-Za-z-]+):\s*(.*)$/.exec(raw);
      if (m) fields.set(m[1]!.toLowerCase(), m[2]!.trim());
    }
    if (!(fields.get('types') ?? '').split(/\s+/).includes('deb')) continue;
    if ((fields.get('enabled') ?? 'yes').toLowerCase() === 'no') continue;
    const signedBy = fields.get('signed-by');
    for (const uri of (fields.get('uris') ?? '').split(/\s+/).filter(Boolean)) {
      out.push({
        uri,
        suites: (fields.get('suites') ?? '').split(/\s+/).filter(Boolean),
        components: (fields.get('components') ?? '').split(/\s+/).filter(Boolean),
        signedBy: signedBy && signedBy.startsWith('/') ? signedBy : null,
      });
    }
  }
  return out;
}

/** The source that serves Debian 12's main suite: its mirror also serves bookworm-backports. */
export function pickBookwormMirror(sources: AptSource[]): AptSource | null {
  return sources.find((s) => s.suites.includes('bookworm') && s.components.includes('main') && /^https?:\/\//.test(s.uri)) ?? null;
}

export async function readAptSources(etcApt = '/etc/apt'): Promise<AptSource[]> {
  const out: AptSource[] = [];
  const main = join(etcApt, 'sources.list');
  if (existsSync(main)) out.push(...parseOneLineSources(await readFile(main, 'utf8')));
  const partsDir = join(etcApt, 'sources.list.d');
  const parts = existsSync(partsDir) ? (await readdir(partsDir)).sort() : [];
  for (const f of parts) {
    const text = await readFile(join(partsDir, f), 'utf8').catch(() => '');
    if (f.endsWith('.list')) out.push(...parseOneLineSources(text));
    else if (f.endsWith('.sources')) out.push(...parseDeb822Sources(text));
  }
  return out;
}

// ---- finding and checking ---------------------------------------------------------------------

/** The newest complete private QEMU in the cache, or null. */
export async function findPrivateQemu(cacheRoot: string): Promise<PrivateQemu | null> {
  const root = privateQemuRoot(cacheRoot);
  let best: PrivateQemu | null = null;
  for (const name of existsSync(root) ? await readdir(root) : []) {
    if (name.startsWith('.')) continue;
    const dir = join(root, name);
    let m: Manifest;
    try {
      m = JSON.parse(await readFile(join(dir, MANIFEST), 'utf8')) as Manifest;
    } catch {
      continue;
    }
    const path = join(dir, 'usr', 'bin', 'qemu-system-x86_64');
    if (!existsSync(path)) continue;
    const candidate = { path, debVersion: m.debVersion, version: m.version, mirror: m.mirror, dir };
    if (!best || compareVersions(candidate.version, best.version) > 0) best = candidate;
  }
  return best;
}

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) if ((pa[i] ?? 0) !== (pb[i] ?? 0)) return (pa[i] ?? 0) - (pb[i] ?? 0);
  return 0;
}

/** Firmware QEMU looks for by name; Debian's build also searches these system dirs. */
const BIOS_DIRS = ['/usr/share/seabios', '/usr/share/qemu'];

/**
 * Checks that a QEMU binary can run here: every shared library resolves (`ldd`), it answers
 * `--version`, and the PC BIOS it boots guests with is found. Returns its version, or throws a
 * PrivateQemuError that says what is missing.
 */
export async function verifyQemuBinary(path: string): Promise<{ version: string; major: number; minor: number }> {
  let ldd: string;
  try {
    ldd = (await run('ldd', [path], { timeout: 10_000 })).stdout;
  } catch (err) {
    throw new PrivateQemuError(`ldd ${path} failed (${(err as Error).message.split('\n')[0]})`);
  }
  const missing = ldd.split('\n').filter((l) => l.includes('not found')).map((l) => l.trim().split(/\s+/)[0]);
  if (missing.length) throw new PrivateQemuError(`${path} needs libraries this system lacks: ${missing.join(', ')}`);
  const v = await readQemuVersion(path).catch((err: Error) => {
    throw new PrivateQemuError(err.message);
  });
  const own = join(dirname(path), '..', 'share', 'qemu');
  if (![own, ...BIOS_DIRS].some((d) => existsSync(join(d, 'bios-256k.bin')))) {
    throw new PrivateQemuError(`no PC BIOS (bios-256k.bin) for ${path}: install it with "sudo apt-get install seabios"`);
  }
  return v;
}

// ---- fetching ---------------------------------------------------------------------------------

export interface FetchOptions {
  cacheRoot: string;
  etcApt?: string;
  onProgress?: (step: string) => void;
}

async function apt(tool: 'apt-get' | 'apt-cache', opts: string[], args: string[], cwd?: string): Promise<string> {
  try {
    const r = await run(tool, [...opts, ...args], {
      cwd,
      timeout: 300_000,
      maxBuffer: 64 * 2 ** 20,
      env: { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' },
    });
    return r.stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string; code?: string };
    if (e.code === 'ENOENT') throw new PrivateQemuError(`${tool} is not installed: this is not a Debian/Ubuntu system`);
    const said = (e.stderr ?? e.message).trim().split('\n').slice(-3).join(' / ');
    throw new PrivateQemuError(`${tool} ${args.join(' ')} failed: ${said}`);
  }
}

/** `apt-cache policy PKG` output: the candidate version. */
export function parseCandidate(policy: string): string | null {
  const m = /Candidate:\s*(\S+)/.exec(policy);
  return m && m[1] !== '(none)' ? m[1]! : null;
}

/**
 * Fetches QEMU from Debian's bookworm-backports suite into the cache (no root, /etc/apt
 * untouched) and checks that it runs. Returns what is cached when that version is already there.
 */
export async function fetchPrivateQemu(opts: FetchOptions): Promise<PrivateQemu> {
  const say = opts.onProgress ?? (() => {});
  const mirror = pickBookwormMirror(await readAptSources(opts.etcApt));
  if (!mirror) {
    throw new PrivateQemuError(
      'no apt source for Debian 12 (bookworm) main was found in /etc/apt: QEMU 10 comes from its bookworm-backports suite',
    );
  }
  const root = privateQemuRoot(opts.cacheRoot);
  await mkdir(root, { recursive: true });
  const work = await mkdtemp(join(root, '.tmp-'));
  try {
    const lists = join(work, 'lists');
    const cache = join(work, 'cache');
    await mkdir(join(lists, 'partial'), { recursive: true });
    await mkdir(join(cache, 'archives', 'partial'), { recursive: true });
    const sourcesList = join(work, 'sources.list');
    const signed = mirror.signedBy ? `[signed-by=${mirror.signedBy}] ` : '';
    await writeFile(sourcesList, `deb ${signed}${mirror.uri} ${BACKPORTS_SUITE} main\n`);
    const aptOpts = [
      '-o', `Dir::Etc::sourcelist=${sourcesList}`,
      '-o', 'Dir::Etc::sourceparts=-',
      '-o', `Dir::State::Lists=${lists}`,
      '-o', `Dir::Cache=${cache}`,
      // As root apt downloads as _apt, who cannot write into a private cache under /root.
      ...(process.getuid?.() === 0 ? ['-o', 'APT::Sandbox::User=root'] : []),
    ];
    say(`apt-get update (${mirror.uri} ${BACKPORTS_SUITE}, private lists)`);
    await apt('apt-get', aptOpts, ['update', '-qq']);
    const debVersion = parseCandidate(await apt('apt-cache', aptOpts, ['policy', QEMU_PACKAGES[0]]));
    if (!debVersion) throw new PrivateQemuError(`${BACKPORTS_SUITE} offers no ${QEMU_PACKAGES[0]}`);
    const upstream = /^(?:\d+:)?(\d+\.\d+(?:\.\d+)?)/.exec(debVersion)?.[1] ?? debVersion;
    const final = join(root, upstream);
    const have = await findPrivateQemu(opts.cacheRoot);
    if (have && have.debVersion === debVersion) return have;
    say(`apt-get download ${QEMU_PACKAGES.join(' ')} (${debVersion})`);
    const dl = join(work, 'debs');
    await mkdir(dl);
    await apt('apt-get', aptOpts, ['download', ...QEMU_PACKAGES.map((p) => `${p}=${debVersion}`)], dl);
    const tree = join(work, 'tree');
    for (const deb of (await readdir(dl)).filter((f) => f.endsWith('.deb'))) {
      say(`dpkg-deb -x ${deb}`);
      await run('dpkg-deb', ['-x', join(dl, deb), tree], { timeout: 120_000 });
    }
    const binary = join(tree, 'usr', 'bin', 'qemu-system-x86_64');
    const v = await verifyQemuBinary(binary);
    const manifest: Manifest = {
      debVersion,
      version: v.version,
      mirror: mirror.uri,
      suite: BACKPORTS_SUITE,
      packages: [...QEMU_PACKAGES],
      fetchedAt: new Date().toISOString(),
    };
    await writeFile(join(tree, MANIFEST), JSON.stringify(manifest, null, 2));
    await rm(final, { recursive: true, force: true });
    await rename(tree, final);
    const found = await findPrivateQemu(opts.cacheRoot);
    if (!found) throw new PrivateQemuError(`the fetched QEMU did not land in ${final}`);
    return found;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
