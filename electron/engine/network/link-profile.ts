// A link profile: what the link relay emulates (bandwidth, latency, loss), how it is checked, and
// the relay's counters. Pure, with no Node imports: the API contract, the UI and the commands'
// schema use it without the relay itself (link-relay.ts).
import { z } from 'zod';

export interface LinkProfile {
  /** MB/s (1e6 bytes) per connection and direction; null: as fast as the sockets go. */
  bandwidthMBps: number | null;
  /** One-way delay, ms. */
  latencyMs: number;
  /** Share of segments lost (each one costs a retransmission timeout), %. */
  lossPercent: number;
}

export const NEUTRAL_LINK: Readonly<LinkProfile> = Object.freeze({ bandwidthMBps: null, latencyMs: 0, lossPercent: 0 });

export const LinkProfileSchema = z
  .object({
    bandwidthMBps: z.number().min(0.1).max(10_000).nullable().default(null),
    latencyMs: z.number().min(0).max(5000).default(0),
    lossPercent: z.number().min(0).max(50).default(0),
  })
  .strict();

const FIELD_RANGES: Record<keyof LinkProfile, string> = {
  bandwidthMBps: 'a number of MB/s from 0.1 to 10000, or null for no limit',
  latencyMs: 'a number of ms from 0 to 5000 (one way)',
  lossPercent: 'a percentage from 0 to 50',
};

export class LinkProfileError extends Error {
  constructor(
    readonly fields: string[],
    problems: string[],
  ) {
    super(`The link profile is not valid: ${problems.join('; ')}`);
    this.name = 'LinkProfileError';
  }
}

function shown(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === undefined) return 'nothing';
  try {
    return typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v);
  } catch {
    return String(v);
  }
}

/** A full profile (missing fields take the neutral values), or a LinkProfileError naming every bad field. */
export function parseLinkProfile(input: unknown): LinkProfile {
  const r = LinkProfileSchema.safeParse(input);
  if (r.success) return r.data;
  const fields: string[] = [];
  const problems: string[] = [];
  const given = (typeof input === 'object' && input !== null ? input : {}) as Record<string, unknown>;
  for (const issue of r.error.issues) {
    const field = issue.path[0];
    if (issue.code === 'unrecognized_keys') {
      fields.push(...issue.keys);
      problems.push(`unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')} (a link profile has bandwidthMBps, latencyMs, lossPercent)`);
    } else if (typeof field === 'string' && field in FIELD_RANGES) {
      if (fields.includes(field)) continue;
      fields.push(field);
      problems.push(`${field} must be ${FIELD_RANGES[field as keyof LinkProfile]} (got ${shown(given[field])})`);
    } else {
      problems.push(`give an object with bandwidthMBps, latencyMs and lossPercent (got ${shown(input)})`);
    }
  }
  throw new LinkProfileError(fields, problems);
}

export interface LinkRelayStats {
  /** Connections open now. */
  connections: number;
  /** Connections relayed since open (not those turned away while cut). */
  totalConnections: number;
  /** Bytes delivered to the target (client -> target). */
  bytesForward: number;
  /** Bytes delivered to clients (target -> client). */
  bytesBackward: number;
  /** Segments "lost", each one a retransmission stall. */
  lossStalls: number;
  /** Bytes held in the relay, both directions, all connections. */
  queuedBytes: number;
  cut: boolean;
  profile: LinkProfile;
}
