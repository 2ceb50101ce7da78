// The migration's limits, in one place: what a caller may ask for (bandwidth, downtime, sampling,
// how long the source is kept), checked the same way at the start and for a live change.
import { z } from 'zod';
import { LinkProfileSchema } from '../network/link-profile';
import { DOWNTIME_POLICY_NAMES } from './downtime-policy';
import { STRATEGIES, STRATEGY_NAMES, type StrategyName } from './strategies';
import { DEFAULT_MIGRATION_OPTIONS, type DowntimePolicyName, type MigrationOptions } from './types';

export const LIMITS = {
  bandwidthMBps: { min: 1, max: 100_000 },
  downtimeLimitMs: { min: 1, max: 2_000_000 },
  sampleIntervalMs: { min: 20, max: 1000 },
  probeIntervalMs: { min: 5, max: 1000 },
  keepSourceMs: { min: 0, max: 600_000 },
} as const;

const L = LIMITS;
const OptionsSchema = z.object({
  bandwidthMBps: z.number().min(L.bandwidthMBps.min, 'bandwidth must be at least 1 MB/s').max(L.bandwidthMBps.max, 'bandwidth above 100000 MB/s is not a real link').optional(),
  downtimeLimitMs: z.number().int().min(L.downtimeLimitMs.min, 'the downtime limit must be at least 1 ms').max(L.downtimeLimitMs.max, 'QEMU allows at most 2000000 ms of downtime').optional(),
  capabilities: z.record(z.string().regex(/^[a-z0-9-]+$/, 'capability names are lower-case words joined by "-"'), z.boolean()).optional(),
  sampleIntervalMs: z.number().int().min(L.sampleIntervalMs.min, 'sample at most every 20 ms').max(L.sampleIntervalMs.max, 'sample at least every 1000 ms').optional(),
  acceptWarnings: z.boolean().optional(),
  keepSourceMs: z.number().int().min(L.keepSourceMs.min, 'keep the source for 0 ms or more').max(L.keepSourceMs.max, 'keep the source for at most 600000 ms (10 minutes)').nullable().optional(),
  probeIntervalMs: z.number().int().min(L.probeIntervalMs.min, 'probe at most every 5 ms').max(L.probeIntervalMs.max, 'probe at least every 1000 ms').optional(),
  tls: z.boolean().optional(),
  link: LinkProfileSchema.partial().nullable().optional(),
  strategy: z.object({
    name: z.enum(STRATEGY_NAMES as [StrategyName, ...StrategyName[]], { error: `the strategy is one of ${STRATEGY_NAMES.join(', ')}` }),
    params: z.record(z.string(), z.unknown()).optional(),
  }).strict().superRefine((s, ctx) => {
    // Each strategy checks its own parameters, and its words name the problem.
    try {
      STRATEGIES[s.name].parseParams(s.params);
    } catch (err) {
      const issues = (err as z.ZodError).issues ?? [{ path: [], message: (err as Error).message }];
      for (const i of issues) ctx.addIssue({ code: 'custom', path: ['params', ...i.path.map(String)], message: i.message });
    }
  }).nullable().optional(),
  measureDirtyRateMs: z.number().int().min(50, 'measure the dirty rate for at least 50 ms').max(60_000, 'measure the dirty rate for at most 60000 ms').nullable().optional(),
  downtimePolicy: z.enum(DOWNTIME_POLICY_NAMES as [DowntimePolicyName, ...DowntimePolicyName[]], { error: `the downtime policy is one of ${DOWNTIME_POLICY_NAMES.join(', ')}` }).nullable().optional(),
});

export class InvalidMigrationOptionsError extends Error {
  constructor(readonly problems: string[]) {
    super(`The migration options are not valid: ${problems.join('; ')}`);
    this.name = 'InvalidMigrationOptionsError';
  }
}

export function parseMigrationOptions(input: Partial<MigrationOptions> = {}): MigrationOptions {
  const r = OptionsSchema.safeParse(input);
  if (!r.success) throw new InvalidMigrationOptionsError(r.error.issues.map((i) => `${i.path.join('.') || 'options'}: ${i.message}`));
  const defined = Object.fromEntries(Object.entries(r.data).filter(([, v]) => v !== undefined));
  return { ...DEFAULT_MIGRATION_OPTIONS, ...defined };
}
