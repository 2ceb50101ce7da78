// What a local host writes next to each guest's sockets (guest.json), so that a host object made
// after a restart (an engine or agent restarted under running guests) can find and adopt them.
import { readFile, rename, rmdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { qemuPidAlive } from '../../qemu/process';
import { type GuestSpec } from '../../qemu/spec';
import { TEMP_PREFIX } from '../../util/fs';

/** guest.json: what adopting the guest's QEMU takes. */
export interface GuestRecord {
  version: 1;
  spec: GuestSpec;
  pid: number;
  qmpSocket: string;
  labload: boolean;
  nic: { localPort: number; switchPort: { id: number; address: string; port: number } } | null;
}

export const RECORD_FILE = 'guest.json';

export async function writeRecord(dir: string, record: GuestRecord): Promise<void> {
  const tmp = join(dir, `${RECORD_FILE}.tmp`);
  await writeFile(tmp, JSON.stringify(record));
  await rename(tmp, join(dir, RECORD_FILE));
}

/**
 * Removes an engine's temp runtime dir (one makeTempDir made, by its name) once nothing is left in
 * it: the folder a dead engine's last adopted guest lived in. Anything else is left alone.
 */
export async function removeIfEmptyTempDir(dir: string): Promise<void> {
  if (!basename(dir).startsWith(TEMP_PREFIX)) return;
  await rmdir(dir).catch(() => {}); // not empty, or gone already: not ours to remove
}

export async function readRecord(dir: string): Promise<GuestRecord | null> {
  try {
    const r = JSON.parse(await readFile(join(dir, RECORD_FILE), 'utf8')) as GuestRecord;
    return r.version === 1 && typeof r.pid === 'number' && r.spec?.name ? r : null;
  } catch {
    return null;
  }
}

/** The pid still runs the QEMU of that record (and not a process that reused the pid). */
export async function isQemuOf(record: GuestRecord): Promise<boolean> {
  if (!qemuPidAlive(record.pid)) return false;
  try {
    return (await readFile(`/proc/${record.pid}/cmdline`, 'utf8')).includes(record.qmpSocket);
  } catch {
    return false;
  }
}
