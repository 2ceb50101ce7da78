// What an agent says about its guests is input from the network, checked like anything a user
// types before the engine believes it: a guest's spec names the files its QEMU opens, and a
// migration carries that spec to other hosts.
import { z } from 'zod';
import type { GuestDescriptor } from './protocol';
import { InvalidGuestSpecError, parseGuestSpec, type GuestSpec } from '../../qemu/spec';
import type { GuestState } from '../host';

export const GUEST_STATES = ['starting', 'incoming', 'booting', 'ready', 'running', 'stopping', 'stopped', 'failed'] as const satisfies readonly GuestState[];

export const isGuestState = (s: unknown): s is GuestState => (GUEST_STATES as readonly unknown[]).includes(s);

const port = z.number().int().min(1).max(65535);

/** The descriptor's own fields; its spec is checked by the API's schema (parseGuestSpec). */
const DescriptorSchema = z.object({
  handle: z.number().int().min(1).max(2 ** 31),
  name: z.string().min(1).max(64),
  spec: z.record(z.string(), z.unknown()),
  state: z.enum(GUEST_STATES),
  pid: z.number().int().positive().nullable(),
  uptimeMs: z.number().min(0).max(10 * 365 * 24 * 3600_000),
  labload: z.boolean(),
  switchPort: z.object({ id: z.number().int().min(0), address: z.string().max(64), port }).nullable(),
  adopted: z.boolean(),
  kernelAppend: z.string().max(4096).nullable().optional(),
});

/** A descriptor the engine may act on: every field checked, the spec parsed with its defaults. */
export interface CheckedDescriptor extends Omit<GuestDescriptor, 'spec' | 'state'> {
  spec: GuestSpec;
  state: GuestState;
}

export class RefusedGuestError extends Error {
  constructor(
    readonly agent: string,
    /** The guest's name as the agent gave it, when it gave a usable one. */
    readonly guest: string | null,
    readonly problems: string[],
  ) {
    super(
      `Agent ${agent} described ${guest ? `guest "${guest}"` : 'a guest'} in a way MigLab does not accept, so the lab does not show it: ` +
        `${problems.join('; ')}. Check that this agent runs the same MigLab version and is the machine you paired with.`,
    );
    this.name = 'RefusedGuestError';
  }
}

const printable = (s: unknown): string | null => (typeof s === 'string' && /^[\x20-\x7e]{1,64}$/.test(s) ? s : null);

/** Checks what agent `agent` said about a guest; throws a RefusedGuestError listing every problem. */
export function checkGuestDescriptor(raw: unknown, agent: string): CheckedDescriptor {
  const guest = printable((raw as { name?: unknown } | null)?.name);
  const r = DescriptorSchema.safeParse(raw);
  if (!r.success) throw new RefusedGuestError(agent, guest, r.error.issues.map((i) => `${i.path.join('.') || 'descriptor'}: ${i.message}`));
  let spec: GuestSpec;
  try {
    spec = parseGuestSpec(r.data.spec);
  } catch (err) {
    if (!(err instanceof InvalidGuestSpecError)) throw err;
    throw new RefusedGuestError(agent, guest, err.problems.map((p) => `spec.${p}`));
  }
  if (spec.name !== r.data.name) throw new RefusedGuestError(agent, guest, [`its spec names it "${spec.name}"`]);
  return { ...r.data, spec };
}
