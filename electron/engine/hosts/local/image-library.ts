// An image library: the folder a host's guests from elsewhere (an agent's peer, a guest migrating
// in from an agent) may boot from, and nothing outside it. Shared by the agent and LocalHost.
import { realpath } from 'node:fs/promises';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { bootFiles, withBootFiles, type GuestSpec } from '../../qemu/spec';

/** A path refused by the library; `code` says how (the agent passes it on to its peer). */
export class LibraryPathError extends Error {
  constructor(
    readonly code: 'invalid' | 'forbidden' | 'not-found',
    message: string,
  ) {
    super(message);
    this.name = 'LibraryPathError';
  }
}

/**
 * Resolves a library-relative path (e.g. "alpine/vmlinuz") to a file inside `library`. Absolute
 * paths, ".." segments and symlinks that lead out of the library are refused with a clear error;
 * `owner` names the library in it.
 */
export async function resolveLibraryPath(library: string, path: string, what: string, owner: string): Promise<string> {
  if (typeof path !== 'string' || path.length === 0 || path.length > 1024 || path.includes('\0')) {
    throw new LibraryPathError('invalid', `The ${what} path is empty or not a usable file name`);
  }
  if (isAbsolute(path) || /^[a-zA-Z]:[\\/]/.test(path)) {
    throw new LibraryPathError('forbidden', `The ${what} path "${path}" is absolute: give a path inside ${owner} (${library}), like "images/disk.qcow2"`);
  }
  if (path.split(/[\\/]+/).includes('..')) {
    throw new LibraryPathError('forbidden', `The ${what} path "${path}" climbs out with "..": give a path inside ${owner}`);
  }
  const root = await realpath(library);
  let real: string;
  try {
    real = await realpath(resolve(root, path));
  } catch {
    throw new LibraryPathError('not-found', `There is no ${what} "${path}" in ${owner} (${library})`);
  }
  const rel = relative(root, real);
  if (rel === '' || rel.startsWith(`..${sep}`) || rel === '..' || isAbsolute(rel)) {
    throw new LibraryPathError('forbidden', `The ${what} "${path}" leads out of ${owner} (a symlink?): copy the file into ${library}`);
  }
  return real;
}

/**
 * The spec with each of its boot files resolved inside the library. `library` null: a spec that
 * names files is refused by `noLibrary` (the lab guest names none and passes as it is).
 */
export async function resolveBootInLibrary(
  spec: GuestSpec,
  library: string | null,
  owner: string,
  noLibrary: (what: string, path: string) => Error,
): Promise<GuestSpec> {
  const resolved = new Map<string, string>();
  for (const { path, what } of bootFiles(spec.boot)) {
    if (!library) throw noLibrary(what, path);
    resolved.set(path, await resolveLibraryPath(library, path, what, owner));
  }
  return resolved.size ? { ...spec, boot: withBootFiles(spec.boot, (path) => resolved.get(path)!) } : spec;
}
