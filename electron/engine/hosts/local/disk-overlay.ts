// A golden image stays golden: a guest boots a library disk through a qcow2 overlay of its own,
// and QEMU opens the library file only as the overlay's read-only backing file.
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Creates the qcow2 overlay `path` over `image`. The backing format is stated (-F), never probed
 * from the image's bytes. Errors name neither path: an agent passes them to its peer.
 */
export async function createDiskOverlay(image: string, baseFormat: 'qcow2' | 'raw', path: string): Promise<void> {
  try {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', image, '-F', baseFormat, path], { timeout: 20_000 });
  } catch (err) {
    await rm(path, { force: true });
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error('qemu-img is needed to give a library disk image its overlay: install qemu-utils');
    }
    const why = ((err as { stderr?: string }).stderr || (err as Error).message).trim().split('\n')[0]!.replaceAll(path, 'the overlay').replaceAll(image, 'the image');
    throw new Error(`The disk image cannot be booted through an overlay (${why}): check its format (qcow2 or raw)`);
  }
}
