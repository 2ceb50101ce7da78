// Where MigLab keeps what it makes: a cache (rebuildable: guests, QEMU builds) and a state folder
// (kept: the journal, the lab CA, an agent's data). One module, so every front door agrees.
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/** Where MigLab caches what it builds or fetches: $MIGLAB_CACHE_DIR, else $XDG_CACHE_HOME/miglab, else ~/.cache/miglab. */
export function defaultCacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MIGLAB_CACHE_DIR) return resolve(env.MIGLAB_CACHE_DIR);
  if (env.XDG_CACHE_HOME) return resolve(env.XDG_CACHE_HOME, 'miglab');
  return join(homedir(), '.cache', 'miglab');
}

/** $MIGLAB_STATE_DIR, else $XDG_STATE_HOME/miglab, else ~/.local/state/miglab. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MIGLAB_STATE_DIR) return resolve(env.MIGLAB_STATE_DIR);
  if (env.XDG_STATE_HOME) return resolve(env.XDG_STATE_HOME, 'miglab');
  return join(homedir(), '.local', 'state', 'miglab');
}

/** The cache's folders: each rebuilt or fetched again when removed. */
export const CACHE_DIRS = {
  /** Built lab guests, by the hash of their inputs. */
  guest: 'guest',
  /** Debian guest kernels, unpacked. */
  kernel: 'kernel',
  /** The private QEMU 10 build (npm run setup). */
  qemu: 'qemu',
  /** The lab switch's C helper, by source hash. */
  switchd: 'switchd',
} as const;

/** The state folder's contents: kept across runs; losing them loses something. */
export const STATE_DIRS = {
  /** The migration journal: one fsynced file per job in flight. */
  migrations: 'migrations',
  /** The lab CA that signs every host's migration TLS certificate. */
  labCa: 'lab-ca',
  /** `miglab web`'s HTTPS certificates, one folder per address. */
  webTls: 'web-tls',
  /** `miglab agent`'s data dir (its identity, tokens and guests) unless --data-dir says otherwise. */
  agent: 'agent',
} as const;

export function cachePath(cacheRoot: string, dir: keyof typeof CACHE_DIRS, ...rest: string[]): string {
  return join(cacheRoot, CACHE_DIRS[dir], ...rest);
}

export function statePath(stateDir: string, dir: keyof typeof STATE_DIRS, ...rest: string[]): string {
  return join(stateDir, STATE_DIRS[dir], ...rest);
}
