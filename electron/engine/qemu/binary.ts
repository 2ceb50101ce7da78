import { access } from 'node:fs/promises';
import { constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { defaultCacheRoot } from '../util/paths';
import { PromiseCache } from '../util/promise-cache';
import { verifyKvm } from './kvm-check';
import { BACKPORTS_SUITE, EXACT_TCG_TRACKING_MAJOR, findPrivateQemu, verifyQemuBinary } from './private-qemu';
import { parseQemuVersion, readQemuVersion } from './version';

export const QEMU_SYSTEM = 'qemu-system-x86_64';
export const INSTALL_QEMU_HINT = 'sudo apt-get install qemu-system-x86 qemu-utils';

export interface QemuBinary {
  path: string;
  /** e.g. "7.2.22" */
  version: string;
  major: number;
  minor: number;
}

export class QemuNotFoundError extends Error {
  readonly fix = INSTALL_QEMU_HINT;
  constructor(detail: string) {
    super(`QEMU (${QEMU_SYSTEM}) was not found: ${detail}. Install it with: ${INSTALL_QEMU_HINT}`);
    this.name = 'QemuNotFoundError';
  }
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Finds an executable on PATH without a shell. */
export async function whichBinary(name: string, pathEnv = process.env.PATH ?? ''): Promise<string | null> {
  for (const dir of pathEnv.split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (await isExecutable(candidate)) return candidate;
  }
  return null;
}

export { parseQemuVersion };

export type QemuSource = 'env' | 'system' | 'private';

export interface ChosenQemu extends QemuBinary {
  /** Where it came from: $MIGLAB_QEMU, the system's PATH, or MigLab's private cache. */
  source: QemuSource;
  /** Why this QEMU runs the lab, in a sentence (shown by `miglab doctor`). */
  reason: string;
}

/** Runs `path --version`; throws QemuNotFoundError naming the problem. */
async function readBinary(path: string): Promise<QemuBinary> {
  if (!(await isExecutable(path))) throw new QemuNotFoundError(`${path} is not an executable file`);
  try {
    return { path, ...(await readQemuVersion(path)) };
  } catch (err) {
    throw new QemuNotFoundError((err as Error).message);
  }
}

/** True for a QEMU that tracks dirty pages exactly under TCG (see private-qemu.ts). */
export function tracksTcgWritesExactly(q: { major: number }): boolean {
  return q.major >= EXACT_TCG_TRACKING_MAJOR;
}

const chosen = new PromiseCache<ChosenQemu>();

/** Forget the chosen QEMU and accelerator (after a fetch put a new QEMU in the cache). */
export function forgetQemuChoice(): void {
  chosen.clear();
  accelerators.clear();
}

/**
 * The QEMU that runs the lab's guests:
 * 1. $MIGLAB_QEMU when set;
 * 2. the system QEMU when it is 10.0 or newer, or when KVM is usable (the hardware tracks dirty
 *    pages, so QEMU 7.2's TCG write loss does not apply);
 * 3. else the QEMU 10 that set-up fetched into the cache (private-qemu.ts), once it checks out;
 * 4. else the system QEMU, whose lab guests then boot with pti=on (TCG_SAFE_APPEND).
 */
export function findQemu(): Promise<ChosenQemu> {
  const override = process.env.MIGLAB_QEMU;
  const key = `${override ?? ''}\0${process.env.PATH ?? ''}\0${defaultCacheRoot()}\0${process.env.MIGLAB_ACCEL ?? ''}`;
  return chosen.get(key, () => chooseQemu(override));
}

async function chooseQemu(override: string | undefined): Promise<ChosenQemu> {
  if (override) return { ...(await readBinary(override)), source: 'env', reason: 'MIGLAB_QEMU names it' };
  const systemPath = await whichBinary(QEMU_SYSTEM);
  const system = systemPath ? await readBinary(systemPath).catch(() => null) : null;
  if (system && tracksTcgWritesExactly(system)) {
    return { ...system, source: 'system', reason: `the system QEMU is ${system.version}, new enough to track guest writes exactly under TCG` };
  }
  const accel = await chooseAccelerator();
  if (system && accel.accel === 'kvm') {
    return { ...system, source: 'system', reason: `KVM is usable, so the hardware tracks guest writes and the system QEMU ${system.version} is fine` };
  }
  let whyNotPrivate: string;
  const priv = await findPrivateQemu(defaultCacheRoot());
  if (priv) {
    try {
      const v = await verifyQemuBinary(priv.path);
      return {
        path: priv.path, ...v, source: 'private',
        reason: system
          ? `the system QEMU ${system.version} loses guest writes while migrating under TCG; QEMU ${v.version} from Debian's ${BACKPORTS_SUITE} does not (fetched by set-up into ${priv.dir})`
          : `no system QEMU; QEMU ${v.version} from Debian's ${BACKPORTS_SUITE} (fetched by set-up into ${priv.dir})`,
      };
    } catch (err) {
      whyNotPrivate = `the cached QEMU in ${priv.dir} does not run here: ${(err as Error).message}`;
    }
  } else {
    whyNotPrivate = `no QEMU ${EXACT_TCG_TRACKING_MAJOR} was fetched yet ("npm run setup" fetches it on Debian 12)`;
  }
  if (!system) throw new QemuNotFoundError(systemPath ? `${systemPath} does not run` : `it is not on PATH, and ${whyNotPrivate}`);
  return {
    ...system, source: 'system',
    reason: `${whyNotPrivate}: the system QEMU ${system.version} runs the lab, and under TCG the lab guest boots with pti=on, which makes its lost writes rare, not impossible`,
  };
}

export type Accelerator = 'kvm' | 'tcg';

export interface AccelChoice {
  accel: Accelerator;
  /** Why this accelerator: shown by `miglab doctor`. */
  reason: string;
}

const accelerators = new PromiseCache<AccelChoice>();

/**
 * KVM when /dev/kvm is there, we may open it read-write, and a Linux kernel really boots under
 * it (kvm-check.ts); TCG otherwise. MIGLAB_ACCEL=tcg or =kvm decides without testing.
 */
export function chooseAccelerator(devKvm = '/dev/kvm'): Promise<AccelChoice> {
  const key = `${devKvm}\0${process.env.MIGLAB_ACCEL ?? ''}\0${process.env.MIGLAB_QEMU ?? ''}\0${defaultCacheRoot()}`;
  return accelerators.get(key, () => decideAccelerator(devKvm));
}

async function decideAccelerator(devKvm: string): Promise<AccelChoice> {
  if (process.env.MIGLAB_ACCEL === 'tcg') return { accel: 'tcg', reason: 'MIGLAB_ACCEL=tcg asks for TCG' };
  if (process.env.MIGLAB_ACCEL === 'kvm') return { accel: 'kvm', reason: 'MIGLAB_ACCEL=kvm asks for KVM (not tested)' };
  try {
    await access(devKvm, constants.R_OK | constants.W_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? `${devKvm} does not exist` : `${devKvm} is not accessible (${code})`;
    return { accel: 'tcg', reason: `${why}: guests run under TCG emulation, slower but fine for the lab` };
  }
  const root = defaultCacheRoot();
  const qemu = process.env.MIGLAB_QEMU ?? (await whichBinary(QEMU_SYSTEM)) ?? (await findPrivateQemu(root))?.path ?? null;
  const v = qemu ? await verifyKvm(qemu, root) : null;
  if (!v) {
    return { accel: 'kvm', reason: `${devKvm} is usable (not tested with a guest: ${qemu ? 'no Linux kernel to test with yet' : 'no QEMU found'})` };
  }
  if (v.usable) return { accel: 'kvm', reason: v.detail };
  return { accel: 'tcg', reason: `${v.detail}: guests run under TCG emulation instead` };
}
