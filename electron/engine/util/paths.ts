import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/** Where MigLab caches what it builds or fetches: $MIGLAB_CACHE_DIR, else $XDG_CACHE_HOME/miglab, else ~/.cache/miglab. */
export function defaultCacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MIGLAB_CACHE_DIR) return resolve(env.MIGLAB_CACHE_DIR);
  if (env.XDG_CACHE_HOME) return resolve(env.XDG_CACHE_HOME, 'miglab');
  return join(homedir(), '.cache', 'miglab');
}
