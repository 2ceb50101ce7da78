import { mkdtemp, rm, access } from 'node:fs/promises';
import { constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Prefix of every temp dir MigLab makes, so leak checks can find them. */
export const TEMP_PREFIX = 'miglab-';

/** Where runtime dirs go: $MIGLAB_RUNTIME_DIR if set (it must exist), else the temp folder. */
export function runtimeParent(): string {
  return process.env.MIGLAB_RUNTIME_DIR || tmpdir();
}

export async function makeTempDir(label: string): Promise<string> {
  // Short paths: UNIX socket paths are limited to 107 bytes.
  return mkdtemp(join(runtimeParent(), `${TEMP_PREFIX}${label}-`));
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
