// Image paths from a peer name files inside the agent's image library, and nothing else.
import { realpath } from 'node:fs/promises';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { AgentRpcError } from './rpc';

/**
 * Resolves a library-relative path (e.g. "alpine/vmlinuz") to a file inside `library`. Absolute
 * paths, ".." segments and symlinks that lead out of the library are refused with a clear error.
 * `owner` names the library in those errors (a local host's library uses it too).
 */
export async function resolveLibraryPath(library: string | null, path: string, what: string, owner = "the agent's image library"): Promise<string> {
  if (!library) {
    throw new AgentRpcError('forbidden', `This agent has no image library, so it cannot boot a ${what}: start it with --images DIR`);
  }
  if (typeof path !== 'string' || path.length === 0 || path.length > 1024 || path.includes('\0')) {
    throw new AgentRpcError('invalid', `The ${what} path is empty or not a usable file name`);
  }
  if (isAbsolute(path) || /^[a-zA-Z]:[\\/]/.test(path)) {
    throw new AgentRpcError('forbidden', `The ${what} path "${path}" is absolute: give a path inside ${owner} (${library}), like "images/disk.qcow2"`);
  }
  if (path.split(/[\\/]+/).includes('..')) {
    throw new AgentRpcError('forbidden', `The ${what} path "${path}" climbs out with "..": give a path inside ${owner}`);
  }
  const root = await realpath(library);
  let real: string;
  try {
    real = await realpath(resolve(root, path));
  } catch {
    throw new AgentRpcError('not-found', `There is no ${what} "${path}" in ${owner} (${library})`);
  }
  const rel = relative(root, real);
  if (rel === '' || rel.startsWith(`..${sep}`) || rel === '..' || isAbsolute(rel)) {
    throw new AgentRpcError('forbidden', `The ${what} "${path}" leads out of ${owner} (a symlink?): copy the file into ${library}`);
  }
  return real;
}
