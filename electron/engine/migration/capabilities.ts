// Which QEMU migration capabilities a MigLab migration may switch on, and why the others may not.
// A capability changes the protocol under the orchestrator's feet: one that keeps two running
// copies (x-colo) or is not a live migration at all (background-snapshot) would break "exactly
// one copy"; one the job must drive (pause-before-switchover) is allowed because it does. So this is an
// allowlist: a name it does not know is refused too, with what to do.
import type { MigrationCapability } from '../qmp/types';

export type CapabilityPolicy = { allowed: true; what: string } | { allowed: false; why: string };

const POST_COPY = 'post-copy is not a MigLab strategy yet: after its switch neither host holds the whole guest, and the orchestrator has no recovery for that';

/** Every capability QEMU 7.2 to 10 knows, with MigLab's handling. */
export const CAPABILITY_POLICY: Record<MigrationCapability, CapabilityPolicy> = {
  events: { allowed: true, what: 'migration state events; always on, the orchestrator follows the migration by them' },
  xbzrle: { allowed: true, what: 'sends changed pages as deltas against a cache of what was sent' },
  'auto-converge': { allowed: true, what: 'throttles the guest\'s vCPUs when memory is dirtied faster than it is sent' },
  compress: { allowed: true, what: 'compresses pages with zlib threads (QEMU before 9.1)' },
  multifd: { allowed: true, what: 'sends memory over several TCP connections' },
  'zero-copy-send': { allowed: true, what: 'multifd sends pages without copying them (needs locked memory)' },
  'return-path': { allowed: true, what: 'the destination answers the source on the same stream' },
  'late-block-activate': { allowed: true, what: 'the destination takes its disks only when it starts running' },
  'switchover-ack': { allowed: true, what: 'the source waits for the destination\'s go before the switchover (needs return-path)' },
  'dirty-limit': { allowed: true, what: 'limits the guest\'s dirty rate per vCPU (needs KVM\'s dirty ring)' },
  'postcopy-ram': { allowed: false, why: POST_COPY },
  'postcopy-blocktime': { allowed: false, why: POST_COPY },
  'postcopy-preempt': { allowed: false, why: POST_COPY },
  'release-ram': { allowed: false, why: POST_COPY },
  'pause-before-switchover': {
    allowed: true,
    what: 'a teaching step: QEMU stops the guest before the switchover and waits; the job shows what remains and goes on with "Continue" (migrate-continue), or cancels',
  },
  'x-colo': { allowed: false, why: 'COLO fault tolerance keeps two running copies of the guest by design, and MigLab keeps exactly one' },
  'background-snapshot': { allowed: false, why: 'it writes a snapshot and keeps the guest on its host: it is not a live migration' },
  'validate-uuid': { allowed: false, why: 'MigLab starts QEMU without -uuid, so both sides have the same empty UUID and the check proves nothing' },
  'x-ignore-shared': { allowed: false, why: 'it skips RAM in shared memory backends, which MigLab guests do not use the way it needs: the guest\'s memory would not move' },
  'mapped-ram': { allowed: false, why: 'it is for migrating to a file, and MigLab migrates over TCP' },
  'rdma-pin-all': { allowed: false, why: 'it is for RDMA transport, and MigLab migrates over TCP' },
  block: { allowed: false, why: 'block migration (removed in QEMU 9.1) copies disks; storage migration is not in MigLab yet' },
  'zero-blocks': { allowed: false, why: 'it belongs to block migration, which MigLab does not use' },
  'dirty-bitmaps': { allowed: false, why: 'it migrates block dirty bitmaps, for storage migration, which MigLab does not do yet' },
};

/** Why MigLab will not set `name` to `on` for a migration; null when it may. */
export function capabilityRefusal(name: string, on: boolean): string | null {
  if (name === 'events') return on ? null : 'events stays on: the orchestrator follows the migration by its events';
  if (!on) return null; // switching a capability off keeps QEMU's plain pre-copy
  const policy = Object.hasOwn(CAPABILITY_POLICY, name) ? CAPABILITY_POLICY[name as MigrationCapability] : null;
  if (!policy) return `MigLab does not know what ${name} does to a migration, so it cannot keep its promise of exactly one copy with it on: leave it off`;
  return policy.allowed ? null : policy.why;
}
