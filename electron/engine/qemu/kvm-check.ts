/**
 * Is KVM usable, not just present? A /dev/kvm that opens is not enough: on some nested
 * hypervisors (measured: a "kvm-pvm" host) /dev/kvm runs real-mode firmware but hangs forever
 * on a stock 64-bit Linux kernel. So MigLab boots the lab guest's kernel under KVM once and waits
 * for its first console line; under a working KVM that takes well under a second.
 *
 * The verdict is cached per machine boot (kernel boot_id), QEMU binary and test kernel, in
 * <cacheRoot>/accel/kvm.json: a broken KVM costs its timeout once per boot, not per command.
 */
import { spawn } from 'node:child_process';
import { constants, existsSync } from 'node:fs';
import { access, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { cachePath } from '../util/paths';

/** How long a kernel gets to print its banner under KVM before KVM is judged unusable. */
export const KVM_TEST_TIMEOUT_MS = 10_000;

export interface KvmVerdict {
  usable: boolean;
  /** A sentence for `miglab doctor`. */
  detail: string;
  /** Milliseconds from spawn to the kernel's banner; null when it never came. */
  bannerMs: number | null;
}

interface CachedVerdict extends KvmVerdict {
  key: string;
}

async function bootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => 'unknown')).trim();
}

/** The newest kernel in `dir`/<release>/ (the lab guest build's kernel cache). */
async function newestCachedKernel(dir: string): Promise<string | null> {
  if (!existsSync(dir)) return null;
  let best: { path: string; mtime: number } | null = null;
  for (const d of await readdir(dir)) {
    for (const f of ['vmlinux', 'vmlinuz']) {
      const p = join(dir, d, f);
      const st = await stat(p).catch(() => null);
      if (!st?.isFile()) continue;
      if (!best || st.mtimeMs > best.mtime) best = { path: p, mtime: st.mtimeMs };
      break; // the uncompressed one boots fastest
    }
  }
  return best?.path ?? null;
}

/**
 * A Linux kernel to test KVM with: the lab guest build's (in `cacheRoot`, else in the user's own
 * cache, for runs with a private cache dir), else the host's own /boot/vmlinuz-*.
 */
export async function findTestKernel(cacheRoot: string): Promise<string | null> {
  return (await findTestKernelIn(cacheRoot))?.kernel ?? null;
}

/** findTestKernel, with the cache the verdict is kept in (the one the kernel came from). */
async function findTestKernelIn(cacheRoot: string): Promise<{ kernel: string; verdictRoot: string } | null> {
  for (const root of [cacheRoot, join(userInfo().homedir, '.cache', 'miglab')]) {
    const k = await newestCachedKernel(cachePath(root, 'kernel'));
    if (k) return { kernel: k, verdictRoot: root };
  }
  const boot = existsSync('/boot') ? (await readdir('/boot')).filter((f) => f.startsWith('vmlinuz-')).sort() : [];
  for (const f of boot.reverse()) {
    const p = join('/boot', f);
    if (await access(p, constants.R_OK).then(() => true, () => false)) return { kernel: p, verdictRoot: cacheRoot };
  }
  return null;
}

/**
 * Boots `kernel` with `qemu` under `accel` and waits for "Linux version" on its serial console
 * (KVM is what is tested; TCG shows the test itself works). The kernel is killed either way.
 */
export function bootKernelBanner(qemu: string, kernel: string, accel: 'kvm' | 'tcg', timeoutMs = KVM_TEST_TIMEOUT_MS): Promise<KvmVerdict> {
  const name = accel.toUpperCase();
  return new Promise((resolve) => {
    const started = performance.now();
    const child = spawn(
      qemu,
      [
        '-machine', 'q35', '-accel', accel, '-m', '128', '-nodefaults', '-no-user-config',
        '-display', 'none', '-no-reboot', '-serial', 'stdio', '-kernel', kernel,
        '-append', 'console=ttyS0 earlyprintk=ttyS0 panic=-1',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    let settled = false;
    const finish = (v: KvmVerdict) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      resolve(v);
    };
    const timer = setTimeout(() => finish({
      usable: false,
      bannerMs: null,
      detail: accel === 'kvm'
        ? `/dev/kvm opens, but a Linux kernel booted under KVM printed nothing in ${timeoutMs / 1000} s (a nested hypervisor that cannot run stock guests?)`
        : `a Linux kernel under ${name} printed nothing in ${timeoutMs / 1000} s`,
    }), timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString('latin1');
      if (out.includes('Linux version')) {
        const ms = Math.round(performance.now() - started);
        finish({ usable: true, bannerMs: ms, detail: `${accel === 'kvm' ? '/dev/kvm' : name} ran a Linux kernel to its banner in ${ms} ms` });
      }
      if (out.length > 65536) out = out.slice(-4096);
    });
    child.stderr.on('data', (d: Buffer) => {
      err = (err + d.toString('utf8')).slice(-2000);
    });
    child.on('error', (e) => finish({ usable: false, bannerMs: null, detail: `QEMU could not start to test ${name}: ${e.message}` }));
    child.on('exit', (code, sig) => {
      const said = err.trim().split('\n').filter((l) => !/warning:/.test(l)).pop() ?? '';
      finish({
        usable: false,
        bannerMs: null,
        detail: `QEMU exited (${code ?? sig}) before a kernel under ${name} printed anything${said ? `: ${said}` : ''}`,
      });
    });
  });
}

/**
 * Boots a kernel under KVM (bootKernelBanner), remembered per machine boot, QEMU binary and
 * kernel; null when there is no kernel to test with.
 */
export async function verifyKvm(qemu: string, cacheRoot: string): Promise<KvmVerdict | null> {
  const found = await findTestKernelIn(cacheRoot);
  if (!found) return null;
  const qst = await stat(qemu).catch(() => null);
  const key = JSON.stringify([await bootId(), qemu, qst?.mtimeMs ?? 0, found.kernel]);
  const file = join(found.verdictRoot, 'accel', 'kvm.json');
  try {
    const cached = JSON.parse(await readFile(file, 'utf8')) as CachedVerdict;
    if (cached.key === key) return { usable: cached.usable, detail: cached.detail, bannerMs: cached.bannerMs };
  } catch {
    /* not tested yet in this boot */
  }
  const v = await bootKernelBanner(qemu, found.kernel, 'kvm');
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, JSON.stringify({ key, ...v }));
  return v;
}
