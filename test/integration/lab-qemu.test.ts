// Which QEMU runs the lab, and why: the rule set-up and the engine follow (qemu/binary.ts), the
// private QEMU 10 fetched from bookworm-backports (qemu/private-qemu.ts), the KVM test
// (qemu/kvm-check.ts), and the fallback to the system QEMU with pti=on.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LocalHost } from '../../electron/engine/hosts/local/local-host';
import { chooseAccelerator, findQemu, forgetQemuChoice, whichBinary } from '../../electron/engine/qemu/binary';
import { findTestKernel, bootKernelBanner } from '../../electron/engine/qemu/kvm-check';
import {
  PrivateQemuError,
  fetchPrivateQemu,
  findPrivateQemu,
  pickBookwormMirror,
  readAptSources,
  verifyQemuBinary,
} from '../../electron/engine/qemu/private-qemu';
import { parseQemuVersion } from '../../electron/engine/qemu/version';
import { defaultCacheRoot } from '../../electron/engine/util/paths';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { requireLabGuest } from '../helpers/lab';
import { TCG_SAFE_APPEND } from '../../electron/engine/hosts/local/boot-files';

const runFile = promisify(execFile);
const root = join(__dirname, '..', '..');

async function systemQemu(): Promise<{ path: string; major: number; version: string } | null> {
  const path = await whichBinary('qemu-system-x86_64');
  if (!path) return null;
  const v = parseQemuVersion((await runFile(path, ['--version'])).stdout);
  return v ? { path, ...v } : null;
}

/** Every file under /etc/apt with its content hash: fetching must change none of it. */
async function aptFingerprint(dir = '/etc/apt'): Promise<string> {
  const h = createHash('sha256');
  for (const f of (await readdir(dir, { recursive: true })).map(String).sort()) {
    const p = join(dir, f);
    const st = await stat(p).catch(() => null);
    if (!st?.isFile()) continue;
    h.update(`${f}\0${st.mtimeMs}\0`);
    h.update(await readFile(p));
  }
  return h.digest('hex');
}

describe('the lab\'s QEMU', () => {
  it('follows the rule: MIGLAB_QEMU, else a system QEMU >= 10 or under KVM, else QEMU 10 from the cache', async () => {
    const q = await findQemu();
    const sys = await systemQemu();
    const accel = await chooseAccelerator();
    if (process.env.MIGLAB_QEMU) {
      expect(q).toMatchObject({ source: 'env', path: process.env.MIGLAB_QEMU });
    } else if (sys && (sys.major >= 10 || accel.accel === 'kvm')) {
      expect(q).toMatchObject({ source: 'system', path: sys.path });
    } else {
      // Debian 12 under TCG: set-up fetched QEMU 10 into the cache.
      expect(q.source).toBe('private');
      expect(q.major).toBeGreaterThanOrEqual(10);
      expect(q.path.startsWith(join(defaultCacheRoot(), 'qemu'))).toBe(true);
      expect(q.reason).toMatch(/bookworm-backports/);
    }
  });

  it('is what "miglab doctor --json" names, with its version and source', async () => {
    const q = await findQemu();
    const { stdout } = await runFile(join(root, 'node_modules', '.bin', 'tsx'), [join(root, 'electron', 'cli', 'main.ts'), 'doctor', '--json'], {
      cwd: root,
      timeout: 60_000,
    }).catch((err: { stdout: string }) => ({ stdout: err.stdout })); // exit 1 when an optional check fails
    const checks = (JSON.parse(stdout) as { checks: Array<Record<string, unknown>> }).checks;
    const qemu = checks.find((c) => c.name === 'qemu')!;
    expect(qemu).toMatchObject({ ok: true, version: q.version, source: q.source });
    expect(qemu.detail).toContain(q.path);
    expect(qemu.detail).toContain(q.reason);
    const accel = checks.find((c) => c.name === 'accelerator')!;
    expect(accel.detail).toContain((await chooseAccelerator()).reason);
  });
});

describe('fetching QEMU 10 from bookworm-backports into a private cache', () => {
  let cacheRoot: string;
  beforeAll(async () => {
    cacheRoot = await makeTempDir('qemu-fetch');
  });
  afterAll(async () => {
    await removeDir(cacheRoot);
  });

  it('fetches, unpacks and checks it without touching /etc/apt, or says why it cannot', async () => {
    const before = await aptFingerprint();
    const mirror = pickBookwormMirror(await readAptSources());
    const steps: string[] = [];
    if (!mirror) {
      // Not Debian 12: the error says where QEMU 10 would have come from.
      await expect(fetchPrivateQemu({ cacheRoot, onProgress: (s) => steps.push(s) })).rejects.toThrow(/no apt source for Debian 12/);
      return;
    }
    const got = await fetchPrivateQemu({ cacheRoot, onProgress: (s) => steps.push(s) });
    expect(got.dir).toBe(join(cacheRoot, 'qemu', got.version));
    expect(Number(got.version.split('.')[0])).toBeGreaterThanOrEqual(10);
    expect(got.debVersion).toMatch(/bpo12/);
    expect(got.mirror).toBe(mirror.uri);
    expect(steps.some((s) => s.startsWith('apt-get update'))).toBe(true);
    // The binary runs and reports the version the manifest names.
    const v = await verifyQemuBinary(got.path);
    expect(v.version).toBe(got.version);
    expect(existsSync(join(got.dir, 'usr', 'share', 'qemu', 'kvmvapic.bin'))).toBe(true);
    // Nothing half-done is left, and the machine's apt configuration is untouched.
    expect((await readdir(join(cacheRoot, 'qemu'))).filter((n) => n.startsWith('.'))).toEqual([]);
    expect(await aptFingerprint()).toBe(before);
    expect(await findPrivateQemu(cacheRoot)).toEqual(got);
  }, 300_000);

  it('refuses a binary that cannot run, naming it', async () => {
    const fake = join(cacheRoot, 'not-qemu');
    await writeFile(fake, '#!/bin/sh\nexit 1\n');
    await chmod(fake, 0o755);
    const err = await verifyQemuBinary(fake).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PrivateQemuError);
    expect((err as Error).message).toContain(fake);
  });
});

describe('a private QEMU that does not run: the system QEMU, with pti=on under TCG', () => {
  const saved = { cache: process.env.MIGLAB_CACHE_DIR, accel: process.env.MIGLAB_ACCEL, qemu: process.env.MIGLAB_QEMU };
  let work: string;
  let host: LocalHost | undefined;

  afterEach(async () => {
    await host?.dispose();
    host = undefined;
    for (const [k, v] of [['MIGLAB_CACHE_DIR', saved.cache], ['MIGLAB_ACCEL', saved.accel], ['MIGLAB_QEMU', saved.qemu]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    forgetQemuChoice();
    if (work) await removeDir(work);
  });

  /** The -append of the QEMU that runs `pid`, from /proc (what really runs, not what we meant). */
  async function launchedAppend(pid: number): Promise<{ binary: string; append: string }> {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    return { binary: argv[0]!, append: argv[argv.indexOf('-append') + 1]! };
  }

  it('falls back to the system QEMU 7.x and boots the lab guest with pti=on; QEMU 10 boots it without', async () => {
    const sys = await systemQemu();
    expect(sys, 'set-up installs the system QEMU (qemu-system-x86)').not.toBeNull();
    const image = await requireLabGuest();
    const realCache = defaultCacheRoot();
    const realAccel = (await chooseAccelerator()).accel;
    work = await makeTempDir('qemu-fallback');
    // A cache whose QEMU "10" is broken: a manifest and a binary that does not run.
    const broken = join(work, 'cache', 'qemu', '10.0.2');
    await mkdir(join(broken, 'usr', 'bin'), { recursive: true });
    await writeFile(join(broken, 'manifest.json'), JSON.stringify({ debVersion: '1:10.0.2', version: '10.0.2', mirror: 'x', suite: 'x', packages: [], fetchedAt: '' }));
    await writeFile(join(broken, 'usr', 'bin', 'qemu-system-x86_64'), '#!/bin/sh\nexit 1\n');
    await chmod(join(broken, 'usr', 'bin', 'qemu-system-x86_64'), 0o755);
    delete process.env.MIGLAB_QEMU;
    process.env.MIGLAB_CACHE_DIR = join(work, 'cache');
    process.env.MIGLAB_ACCEL = 'tcg';
    forgetQemuChoice();
    const q = await findQemu();
    if (sys!.major >= 10) {
      expect(q).toMatchObject({ source: 'system', path: sys!.path });
      return; // a system QEMU 10 needs no fallback
    }
    expect(q).toMatchObject({ source: 'system', path: sys!.path, version: sys!.version });
    expect(q.reason).toMatch(/does not run here/);
    expect(q.reason).toMatch(/pti=on/);
    host = new LocalHost({ name: 'host-a', runtimeDir: join(work, 'host-a'), cacheRoot: dirname(dirname(image.dir)) });
    const g = await host.startGuest({ name: 'pti' });
    const launched = await launchedAppend(g.pid!);
    expect(launched.binary).toBe(sys!.path);
    expect(launched.append.split(' ')).toContain(TCG_SAFE_APPEND);
    await host.dispose();
    host = undefined;

    // With the QEMU 10 set-up fetched the lab guest boots without it. (Set-up fetches none where
    // KVM is usable: then there is no QEMU 10 here to try.)
    const ten = (await findPrivateQemu(realCache))?.path;
    if (!ten) {
      expect(realAccel, 'set-up fetches QEMU 10 whenever KVM is not usable').toBe('kvm');
      return;
    }
    process.env.MIGLAB_QEMU = ten!;
    forgetQemuChoice();
    expect((await findQemu()).major).toBeGreaterThanOrEqual(10);
    host = new LocalHost({ name: 'host-b', runtimeDir: join(work, 'host-b'), cacheRoot: dirname(dirname(image.dir)) });
    const g10 = await host.startGuest({ name: 'nopti' });
    const l10 = await launchedAppend(g10.pid!);
    expect(l10.binary).toBe(ten);
    expect(l10.append.split(' ')).not.toContain(TCG_SAFE_APPEND);
  }, 120_000);
});

describe('the KVM test boots a real kernel and waits for its banner', () => {
  it('sees the banner of a kernel that runs (under TCG here), and says when none comes or QEMU fails', async () => {
    const q = await findQemu();
    const kernel = await findTestKernel(defaultCacheRoot());
    expect(kernel, 'the lab guest build caches its kernel').not.toBeNull();
    const ok = await bootKernelBanner(q.path, kernel!, 'tcg', 60_000);
    expect(ok.usable).toBe(true);
    expect(ok.bannerMs).toBeGreaterThan(0);
    const slow = await bootKernelBanner(q.path, kernel!, 'tcg', 30);
    expect(slow).toMatchObject({ usable: false, bannerMs: null });
    expect(slow.detail).toMatch(/printed nothing/);
    const bad = await bootKernelBanner(q.path, '/nonexistent/vmlinux', 'tcg', 30_000);
    expect(bad.usable).toBe(false);
    expect(bad.detail).toMatch(/QEMU exited/);
  }, 120_000);
});
