// A library disk image is a golden image: every guest that boots it gets its own qcow2 overlay in
// the agent's data dir, and QEMU opens the library file only as the overlay's read-only backing
// file. So no peer can change what the next one boots.
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createDiskOverlay } from '../hosts/local/disk-overlay';
import { detectDiskFormat } from '../hosts/local/boot-files';

export class DiskOverlays {
  constructor(private readonly dir: string) {}

  /** A new overlay over `image` (an absolute path inside the library) for one guest. */
  async create(guestName: string, image: string, format?: 'qcow2' | 'raw'): Promise<string> {
    const baseFormat = format ?? (await detectDiskFormat(image));
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const path = join(this.dir, `${guestName}-${randomBytes(4).toString('hex')}.qcow2`);
    await createDiskOverlay(image, baseFormat, path);
    return path;
  }

  async remove(path: string): Promise<void> {
    if (!path.startsWith(`${this.dir}/`)) return; // only ever our own files
    await rm(path, { force: true });
  }

  /** Removes every overlay but those still in use (after a restart: the adopted guests'). */
  async removeAllBut(inUse: ReadonlySet<string>): Promise<void> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    await Promise.all(names.map((n) => join(this.dir, n)).filter((p) => !inUse.has(p)).map((p) => rm(p, { force: true })));
  }
}
