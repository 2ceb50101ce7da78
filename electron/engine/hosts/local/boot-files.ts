// What a local host checks and decides about a guest's boot files before QEMU starts.
import { stat } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { tracksTcgWritesExactly, type Accelerator } from '../../qemu/binary';

const runFile = promisify(execFile);

/**
 * Only for QEMUs older than 10.0 (QEMU 10 tracks TCG's writes exactly; see qemu/private-qemu.ts).
 * Under TCG, QEMU 7.2 misses guest writes made through long-lived softmmu TLB entries while it
 * migrates, and a guest kernel that writes memory during a migration is then corrupted on the
 * destination (measured: 0 of 7 migrations at 100 MB/s survived without it; with it, 29 of 29
 * on an idle machine, about 9 in 10 on a loaded one). With page-table isolation on, every kernel entry and exit reloads CR3, which makes
 * TCG flush its TLB, so stale entries rarely live long enough to matter. KVM tracks dirty pages
 * in hardware and does not need it.
 */
export const TCG_SAFE_APPEND = 'pti=on';

/**
 * Whether the lab guest boots with TCG_SAFE_APPEND: under TCG with a QEMU older than 10.0.
 * MIGLAB_GUEST_PTI=on|off overrides it, to measure the difference (npm run bench:tcg).
 */
export function labGuestNeedsPti(accel: Accelerator, qemu: { major: number }, env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.MIGLAB_GUEST_PTI === 'on') return true;
  if (env.MIGLAB_GUEST_PTI === 'off') return false;
  return accel === 'tcg' && !tracksTcgWritesExactly(qemu);
}

export class GuestImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestImageError';
  }
}

export async function fileMustExist(path: string, what: string, hint: string): Promise<void> {
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new GuestImageError(`${what} ${path} is not a file: ${hint}`);
  } catch (err) {
    if (err instanceof GuestImageError) throw err;
    throw new GuestImageError(`${what} ${path} does not exist: ${hint}`);
  }
}

/**
 * qemu-img tells qcow2 from raw, so QEMU never has to guess (guessing raw is unsafe). -U: a
 * migration destination reads the image the running source QEMU holds locked.
 */
export async function detectDiskFormat(path: string): Promise<'qcow2' | 'raw'> {
  try {
    const { stdout } = await runFile('qemu-img', ['info', '-U', '--output=json', path], { timeout: 10_000 });
    const fmt = (JSON.parse(stdout) as { format?: string }).format;
    if (fmt === 'qcow2' || fmt === 'raw') return fmt;
    throw new GuestImageError(`Disk image ${path} is in ${fmt} format: convert it with "qemu-img convert -O qcow2"`);
  } catch (err) {
    if (err instanceof GuestImageError) throw err;
    throw new GuestImageError(
      `Could not read disk image ${path} with qemu-img (${(err as Error).message.split('\n')[0]}): ` +
        'install qemu-utils, or give the format explicitly',
    );
  }
}
