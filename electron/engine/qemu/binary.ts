import { execFile } from 'node:child_process';
import { access } from 'node:fs/promises';
import { constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

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

export function parseQemuVersion(output: string): { version: string; major: number; minor: number } | null {
  const m = /QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?/.exec(output);
  if (!m) return null;
  return { version: `${m[1]}.${m[2]}.${m[3] ?? '0'}`, major: Number(m[1]), minor: Number(m[2]) };
}

const cache = new Map<string, Promise<QemuBinary>>();

/** Locates qemu-system-x86_64 ($MIGLAB_QEMU overrides PATH) and reads its version. */
export function findQemu(): Promise<QemuBinary> {
  const override = process.env.MIGLAB_QEMU;
  const key = `${override ?? ''}\0${process.env.PATH ?? ''}`;
  let cached = cache.get(key);
  if (cached) return cached;
  cached = (async () => {
    const path = override ?? (await whichBinary(QEMU_SYSTEM));
    if (!path) throw new QemuNotFoundError('it is not on PATH');
    if (!(await isExecutable(path))) throw new QemuNotFoundError(`${path} is not an executable file`);
    let out: string;
    try {
      out = (await run(path, ['--version'], { timeout: 10_000 })).stdout;
    } catch (err) {
      throw new QemuNotFoundError(`${path} --version failed (${(err as Error).message})`);
    }
    const v = parseQemuVersion(out);
    if (!v) throw new QemuNotFoundError(`${path} printed an unknown version: ${out.trim().slice(0, 80)}`);
    return { path, ...v };
  })();
  cache.set(key, cached);
  cached.catch(() => cache.delete(key)); // a later install should be picked up
  return cached;
}

export type Accelerator = 'kvm' | 'tcg';

export interface AccelChoice {
  accel: Accelerator;
  /** Why this accelerator: shown by `miglab doctor`. */
  reason: string;
}

/** KVM when /dev/kvm is there and we may open it read-write; TCG otherwise. */
export async function chooseAccelerator(devKvm = '/dev/kvm'): Promise<AccelChoice> {
  if (process.env.MIGLAB_ACCEL === 'tcg') return { accel: 'tcg', reason: 'MIGLAB_ACCEL=tcg asks for TCG' };
  try {
    await access(devKvm, constants.R_OK | constants.W_OK);
    return { accel: 'kvm', reason: `${devKvm} is usable` };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? `${devKvm} does not exist` : `${devKvm} is not accessible (${code})`;
    return { accel: 'tcg', reason: `${why}: guests run under TCG emulation, slower but fine for the lab` };
  }
}
