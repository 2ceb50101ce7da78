// Validation of what front ends send: a browser, a renderer, a spectator's laptop. Nothing
// reaches the engine unless it parses here; an error names the field and what is wrong. The
// ApiCommand type is inferred from the schema, so the contract and the check cannot drift apart.
import { z } from 'zod';
import { AgentFingerprintSchema, AgentTokenSchema, AgentUrlSchema } from '../lab/lab-file';
import { LinkProfileSchema } from '../network/link-profile';
import { DOWNTIME_POLICY_NAMES } from '../migration/downtime-policy';
import { STRATEGY_NAMES, type StrategyName } from '../migration/strategies';
import type { DowntimePolicyName } from '../migration/types';

const name = z.string().min(1).max(64);
/** The names come from the registries, so a new policy or strategy needs no edit here. */
const DowntimePolicySchema = z.enum(DOWNTIME_POLICY_NAMES as [DowntimePolicyName, ...DowntimePolicyName[]]);
const StrategyNameSchema = z.enum(STRATEGY_NAMES as [StrategyName, ...StrategyName[]]);
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
      /** The lab guest, or a custom kernel or disk image on the host (GuestBootInput). */
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
    /** Measure the guest's dirty rate (calc-dirty-rate) and judge it against these migration settings. */
    measureDirtyRate: z.object({
      ms: z.number().int().min(50).max(60_000),
      bandwidthMBps: z.number().min(1).max(100_000),
      downtimeLimitMs: z.number().int().min(1).max(2_000_000).optional(),
      downtimePolicy: DowntimePolicySchema.nullable().optional(),
    }).strict().optional(),
  }).strict(),
  z.object({ type: z.literal('stopGuest'), host: name, guest: name }).strict(),
  /** Runs the job; a destination the pre-flight prepared for this guest on `to` is handed to it. */
  z.object({
    type: z.literal('migrate'),
    guest: name,
    to: name,
    /** Fields of MigrationOptions (migration/types.ts), each optional. */
    options: z.object({
      /** max-bandwidth, MB/s (10^6 bytes). */
      bandwidthMBps: z.number().min(1).max(100_000).optional(),
      /** downtime-limit, ms. */
      downtimeLimitMs: z.number().int().min(1).max(2_000_000).optional(),
      /** Extra capabilities (name -> on/off); each must be offered by both QEMUs. */
      capabilities: z.record(z.string().max(64), z.boolean()).optional(),
      /** query-migrate sampling interval, ms. */
      sampleIntervalMs: z.number().int().min(20).max(1000).optional(),
      /** How often the lab network's probe pings the guest, ms. */
      probeIntervalMs: z.number().int().min(5).max(1000).optional(),
      /** QEMU TLS with the lab CA's certificates. */
      tls: z.boolean().optional(),
      /** Link emulation on the destination; null or left out: a direct stream. */
      link: LinkPatchSchema.nullable().optional(),
      /** How long the paused source stays after the destination runs; null: MigLab's policy. */
      keepSourceMs: z.number().int().min(0).max(600_000).nullable().optional(),
      /** How downtime-limit moves when passes stop making progress (migration/downtime-policy.ts); null: MigLab's default. */
      downtimePolicy: DowntimePolicySchema.nullable().optional(),
      /** Measure the guest's dirty rate first (calc-dirty-rate), ms; pre-flight then says whether pre-copy converges. */
      measureDirtyRateMs: z.number().int().min(50).max(60_000).nullable().optional(),
      /** The convergence strategy and its parameters (migration/strategies/); null: pre-copy. Parameters are checked by the strategy. */
      strategy: z.object({
        name: StrategyNameSchema,
        params: z.record(z.string().max(64), z.union([z.number(), z.string().max(64), z.boolean()])).optional(),
      }).strict().nullable().optional(),
    }).strict().optional(),
    /** Give up (cancel) when not completed by then (the job's default: 10 minutes); from one second (a lesson on giving up) to a day. */
    maxDurationMs: z.number().int().min(1000).max(86_400_000).optional(),
  }).strict(),
  z.object({
    type: z.literal('cancelMigration'),
    id: z.string().max(64),
    /** What the result will say (default "Cancelled from the lab"). */
    reason: z.string().min(1).max(200).optional(),
  }).strict(),
  /** Stops the destination a pre-flight prepared for this guest (the dialog closed without migrating). */
  z.object({ type: z.literal('releasePreparedDestination'), guest: name }).strict(),
  /** With pause-before-switchover: QEMU waits in pre-switchover; this lets it go on (migrate-continue). */
  z.object({ type: z.literal('continueMigration'), id: z.string().max(64) }).strict(),
  /** While the paused source is kept (keepSourceMs): takes a diskless guest back to it. */
  z.object({ type: z.literal('rollbackMigration'), id: z.string().max(64) }).strict(),
  /**
   * A person's choice after needs-attention: the destination ran and failed, the source stands
   * paused; resume it there (going back in time), as `miglab recover --resume-source` does.
   */
  z.object({ type: z.literal('resumeSource'), guest: name }).strict(),
  /** The emulated link of a running migration: pull the cable, plug it back, or change its profile. */
  z.object({
    type: z.literal('linkControl'),
    id: z.string().max(64),
    /** 'set' takes a profile (only the fields given change); 'cut' resets every connection until 'restore'. */
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

/** What a front end may ask. Each command has one result type (ApiResults in ./contract). */
export type ApiCommand = z.infer<typeof CommandSchema>;

/** 'rate-limited': browser mode's per-connection command budget is spent for now (see web/client-budget.ts). */
export type ApiErrorCode = 'invalid' | 'forbidden' | 'not-found' | 'failed' | 'rate-limited';

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
    const cmd: ApiCommand = r.data;
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
