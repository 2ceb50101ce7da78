// Image paths from a peer name files inside the agent's image library, and nothing else.
import { LibraryPathError, resolveBootInLibrary } from '../hosts/local/image-library';
import type { GuestSpec } from '../qemu/spec';
import { AgentRpcError } from '../hosts/remote/rpc';

/** A peer's guest spec with its library-relative image paths resolved; nothing else touched. */
export async function resolveSpecPaths(spec: GuestSpec, library: string | null): Promise<GuestSpec> {
  try {
    return await resolveBootInLibrary(
      spec,
      library,
      "the agent's image library",
      (what) => new AgentRpcError('forbidden', `This agent has no image library, so it cannot boot a ${what}: start it with --images DIR`),
    );
  } catch (err) {
    throw err instanceof LibraryPathError ? new AgentRpcError(err.code, err.message) : err;
  }
}
