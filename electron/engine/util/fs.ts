import { mkdtemp, rm, access } from 'node:fs/promises';
import { constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Prefix of every temp dir MigLab makes, so leak checks can find them. */
export const TEMP_PREFIX = 'miglab-';

export async function makeTempDir(label: string): Promise<string> {
  // Short paths: UNIX socket paths are limited to 107 bytes.
  return mkdtemp(join(tmpdir(), `${TEMP_PREFIX}${label}-`));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

export async function isReadable(path: string): Promise<boolean> {
  try {
    await access(path, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}
