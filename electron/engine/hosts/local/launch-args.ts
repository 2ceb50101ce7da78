// The kernel command line a guest really got: read back from the argv QEMU was started with,
// not from the spec that asked for it (the host adds to it, e.g. pti=on under TCG on old QEMU).
import { readFile } from 'node:fs/promises';

/** The value of QEMU's -append in an argv; null when the guest booted without one. */
export function kernelAppendOf(argv: readonly string[]): string | null {
  const i = argv.lastIndexOf('-append');
  return i >= 0 && i + 1 < argv.length ? argv[i + 1]! : null;
}

/** A running process's argv from /proc (a guest reattached after a restart); [] when unreadable. */
export async function readProcessArgv(pid: number): Promise<string[]> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').slice(0, -1);
  } catch {
    return [];
  }
}
