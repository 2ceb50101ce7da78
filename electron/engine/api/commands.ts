// Validation of what front ends send: a browser, a renderer, a spectator's laptop. Nothing
// reaches the engine unless it parses here; an error names the field and what is wrong.
import { z } from 'zod';
import { AgentFingerprintSchema, AgentTokenSchema, AgentUrlSchema } from '../lab/lab-file';
import { LinkProfileSchema } from '../network/link-relay';
import type { ApiCommand, ApiErrorCode } from './contract';

const name = z.string().min(1).max(64);
/** A file on the host that runs the guest: absolute, so nothing depends on the engine's folder. */
const path = z.string().min(2).max(1024).refine((p) => p.startsWith('/') && !p.includes('\0'), 'give an absolute path on the host');

/**
 * A link profile's fields, each optional, with the relay's own ranges. Not LinkProfileSchema.partial():
 * zod 4 fills a left-out field with its default there, and a 'set' of the latency alone would
 * then also lift the bandwidth limit.
 */
const link = LinkProfileSchema.shape;
const LinkPatchSchema = z.object({
  bandwidthMBps: link.bandwidthMBps.unwrap().optional(),
  latencyMs: link.latencyMs.unwrap().optional(),
  lossPercent: link.lossPercent.unwrap().optional(),
}).strict();

export const CommandSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('snapshot') }).strict(),
  z.object({
    type: z.literal('startGuest'),
    host: name,
    guest: z.object({
      name,
      memoryMiB: z.number().int().min(64).max(65536).optional(),
      boot: z.discriminatedUnion('kind', [
        z.object({ kind: z.literal('lab') }).strict(),
        z.object({ kind: z.literal('kernel'), kernel: path, initrd: path.optional(), append: z.string().max(2048).optional(), readyPattern: z.string().min(1).max(200).optional() }).strict(),
        z.object({ kind: z.literal('disk'), path, readyPattern: z.string().min(1).max(200).optional() }).strict(),
      ]).optional(),
    }).strict(),
  }).strict(),
  z.object({
    type: z.literal('preflight'),
    guest: name,
    to: name,
    capabilities: z.record(z.string().max(64), z.boolean()).optional(),
  }).strict(),
  z.object({ type: z.literal('stopGuest'), host: name, guest: name }).strict(),
  z.object({
    type: z.literal('migrate'),
    guest: name,
    to: name,
    options: z.object({
      bandwidthMBps: z.number().min(1).max(100_000).optional(),
      downtimeLimitMs: z.number().int().min(1).max(2_000_000).optional(),
      capabilities: z.record(z.string().max(64), z.boolean()).optional(),
      sampleIntervalMs: z.number().int().min(20).max(1000).optional(),
      /** How often the lab network's probe pings the guest, ms. */
      probeIntervalMs: z.number().int().min(5).max(1000).optional(),
      /** QEMU TLS with the lab CA's certificates. */
      tls: z.boolean().optional(),
      /** Link emulation on the destination; null or left out: a direct stream. */
      link: LinkPatchSchema.nullable().optional(),
      /** How long the paused source stays after the destination runs; null: MigLab's policy. */
      keepSourceMs: z.number().int().min(0).max(600_000).nullable().optional(),
    }).strict().optional(),
    /** From one second (a lesson on giving up) to a day. */
    maxDurationMs: z.number().int().min(1000).max(86_400_000).optional(),
  }).strict(),
  z.object({ type: z.literal('cancelMigration'), id: z.string().max(64), reason: z.string().min(1).max(200).optional() }).strict(),
  z.object({ type: z.literal('releasePreparedDestination'), guest: name }).strict(),
  z.object({ type: z.literal('continueMigration'), id: z.string().max(64) }).strict(),
  z.object({ type: z.literal('rollbackMigration'), id: z.string().max(64) }).strict(),
  z.object({ type: z.literal('resumeSource'), guest: name }).strict(),
  z.object({
    type: z.literal('linkControl'),
    id: z.string().max(64),
    action: z.enum(['cut', 'restore', 'set']),
    profile: LinkPatchSchema.optional(),
  }).strict(),
  z.object({
    type: z.literal('setMigrationParameters'),
    id: z.string().max(64),
    bandwidthMBps: z.number().min(1).max(100_000).optional(),
    downtimeLimitMs: z.number().int().min(1).max(2_000_000).optional(),
  }).strict(),
  z.object({
    type: z.literal('setWorkload'),
    guest: name,
    rateMBps: z.number().min(0).max(100_000),
    workingSetMiB: z.number().int().min(1).max(65536),
  }).strict(),
  z.object({ type: z.literal('consoleInput'), guest: name, data: z.string().max(4096) }).strict(),
  z.object({ type: z.literal('consoleHistory'), guest: name }).strict(),
  z.object({
    type: z.literal('addHost'),
    name,
    /** A LAN host: its agent's address, token and certificate fingerprint. Without it, a local host. */
    agent: z.object({ url: AgentUrlSchema, token: AgentTokenSchema, fingerprint: AgentFingerprintSchema }).strict().optional(),
  }).strict(),
  z.object({ type: z.literal('removeHost'), name }).strict(),
  z.object({ type: z.literal('exportLab') }).strict(),
]);

export class ApiError extends Error {
  constructor(
    readonly code: ApiErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** The command, or an ApiError('invalid') that lists every problem. */
export function parseCommand(input: unknown): ApiCommand {
  const r = CommandSchema.safeParse(input);
  if (r.success) {
    const cmd = r.data as ApiCommand;
    // A rule between two fields, which a discriminated union's members cannot refine.
    if (cmd.type === 'linkControl' && (cmd.action === 'set') !== (cmd.profile !== undefined)) {
      throw new ApiError('invalid', cmd.action === 'set'
        ? 'The command is not valid: profile: "set" needs the profile to set (any of bandwidthMBps, latencyMs, lossPercent)'
        : `The command is not valid: profile: only "set" takes a profile ("${cmd.action}" does not)`);
    }
    return cmd;
  }
  const problems = r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : 'command'}: ${i.message}`);
  throw new ApiError('invalid', `The command is not valid: ${problems.join('; ')}`);
}
