import { z } from 'zod';

/** Guest and host names end up in QEMU options and file names: keep them boring. */
export const labName = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,31}$/, 'use 1-32 lower-case letters, digits or "-", starting with a letter');

const cidr = z
  .string()
  .regex(/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/, 'use an IPv4 address with a prefix, like 10.80.0.11/24')
  .refine((s) => {
    const [addr, prefix] = s.split('/') as [string, string];
    return addr.split('.').every((o) => Number(o) <= 255) && Number(prefix) <= 32;
  }, 'each octet must be 0-255 and the prefix 0-32');

/**
 * A name QEMU would read as a protocol rather than a file (json:{...}, nbd:..., http:...): its
 * block layer parses "-drive file=" that way. "./" in front makes it a plain file name again.
 */
export const PROTOCOL_PREFIX = /^[A-Za-z][A-Za-z0-9+.-]*:/;

/** A file for QEMU to open: never a protocol, never a NUL (file names end there). */
export const hostPath = z
  .string()
  .min(1, 'give a file path')
  .max(4096, 'the path is longer than 4096 characters')
  .refine((p) => !p.includes('\0'), 'the path holds a NUL character')
  .superRefine((p, ctx) => {
    const protocol = PROTOCOL_PREFIX.exec(p)?.[0];
    if (protocol) {
      const shown = p.length > 60 ? `${p.slice(0, 60)}…` : p;
      ctx.addIssue({ code: 'custom', message: `"${shown}" reads as a QEMU protocol (${protocol}), not a file: for a file with a colon in its name, write ./${shown}` });
    }
  });

/** A unicast MAC (the group bit of the first octet clear), as the NIC and the lab switch see it. */
const unicastMac = z
  .string()
  .regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/, 'use six lower-case hex pairs, like 52:54:00:12:34:56')
  .refine((m) => (parseInt(m.slice(0, 2), 16) & 1) === 0, 'the first octet must be even (a unicast address)');

/**
 * For a guest without labload: text its console prints once it has booted (a login prompt, a
 * shell prompt). Seeing it is how MigLab knows the guest is ready to be migrated.
 */
const readyPattern = z.string().min(1).max(200).optional();

/** A QEMU option value we pass through (machine type, CPU model): no commas, no spaces. */
const qemuToken = z.string().regex(/^[A-Za-z0-9_.+-]+$/, 'use letters, digits, ".", "_", "+" or "-" only');

export const BootSchema = z.discriminatedUnion('kind', [
  /** The MigLab lab guest: distro kernel + busybox initramfs + labload. */
  z.object({ kind: z.literal('lab') }),
  /** A user's own kernel and initrd. labload: true if its initramfs runs labload on ttyS1. */
  z.object({
    kind: z.literal('kernel'),
    kernel: hostPath,
    initrd: hostPath.optional(),
    append: z.string().max(2048).optional(),
    labload: z.boolean().default(false),
    readyPattern,
  }),
  /** A user's qcow2 or raw disk image, booted by the firmware. */
  z.object({
    kind: z.literal('disk'),
    path: hostPath,
    format: z.enum(['qcow2', 'raw']).optional(),
    readyPattern,
  }),
]);

export const GuestSpecSchema = z.object({
  name: labName,
  memoryMiB: z.number().int().min(64).max(64 * 1024).default(256),
  /** 1 vCPU by default: under TCG more vCPUs make boot several times slower. */
  vcpus: z.number().int().min(1).max(64).default(1),
  /** QEMU's default CPU model unless set; a named model keeps hosts migration-compatible. */
  cpuModel: qemuToken.optional(),
  machine: qemuToken.default('q35'),
  ip: cidr.optional(),
  /**
   * The NIC's MAC. With one, the guest gets a virtio-net NIC plugged into the lab switch (when
   * its host has one); it is part of the device model, so a migration keeps it.
   */
  mac: unicastMac.optional(),
  boot: BootSchema.default({ kind: 'lab' }),
});

export type GuestSpec = z.output<typeof GuestSpecSchema>;
export type GuestSpecInput = z.input<typeof GuestSpecSchema>;
export type BootSpec = GuestSpec['boot'];

export class InvalidGuestSpecError extends Error {
  constructor(readonly problems: string[]) {
    super(`The guest description is not valid: ${problems.join('; ')}`);
    this.name = 'InvalidGuestSpecError';
  }
}

/** Validates user input into a full spec with defaults, or throws one error listing every problem. */
export function parseGuestSpec(input: unknown): GuestSpec {
  const r = GuestSpecSchema.safeParse(input);
  if (r.success) return r.data;
  throw new InvalidGuestSpecError(
    r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : 'guest'}: ${i.message}`),
  );
}

export type BootFileKind = 'kernel' | 'initrd' | 'disk image';

/** The files a boot source makes QEMU read, each with what it is (the lab guest's are the engine's own). */
export function bootFiles(boot: BootSpec): Array<{ what: BootFileKind; path: string }> {
  if (boot.kind === 'kernel') return [{ what: 'kernel', path: boot.kernel }, ...(boot.initrd ? [{ what: 'initrd' as const, path: boot.initrd }] : [])];
  if (boot.kind === 'disk') return [{ what: 'disk image', path: boot.path }];
  return [];
}

/** The boot source with each of its file paths replaced by what `to` makes of it. */
export function withBootFiles(boot: BootSpec, to: (path: string, what: BootFileKind) => string): BootSpec {
  if (boot.kind === 'kernel') return { ...boot, kernel: to(boot.kernel, 'kernel'), ...(boot.initrd ? { initrd: to(boot.initrd, 'initrd') } : {}) };
  if (boot.kind === 'disk') return { ...boot, path: to(boot.path, 'disk image') };
  return boot;
}
