// The wire between the engine and a MigLab agent: one WebSocket over TLS, JSON text frames for
// requests, replies and events (either side may ask), binary frames for guest byte streams.
import { z } from 'zod';

/** 2: the engine tells the agent its lab's hosts (labPeers); things belong to the token that made them. */
export const AGENT_PROTOCOL_VERSION = 2;
/** Path the agent serves its WebSocket on. */
export const AGENT_WS_PATH = '/v1/agent';
/** A message larger than this is refused (and the connection closed by ws). */
export const AGENT_MAX_MESSAGE_BYTES = 1024 * 1024;

export type AgentErrorCode = 'invalid' | 'unknown-method' | 'forbidden' | 'not-found' | 'limit' | 'rate-limited' | 'failed' | 'disconnected' | 'timeout';

export interface WireError {
  code: AgentErrorCode;
  message: string;
}

export type WireMessage =
  | { t: 'req'; id: number; method: string; params?: unknown }
  | { t: 'res'; id: number; ok: true; result: unknown }
  | { t: 'res'; id: number; ok: false; error: WireError }
  | { t: 'evt'; event: string; data: unknown };

export const WireMessageSchema = z.union([
  z.object({ t: z.literal('req'), id: z.number().int().nonnegative(), method: z.string().min(1).max(64), params: z.unknown().optional() }).strict(),
  z.object({ t: z.literal('res'), id: z.number().int().nonnegative(), ok: z.literal(true), result: z.unknown() }).strict(),
  z
    .object({
      t: z.literal('res'),
      id: z.number().int().nonnegative(),
      ok: z.literal(false),
      error: z.object({ code: z.string().max(32), message: z.string().max(8192) }),
    })
    .strict(),
  z.object({ t: z.literal('evt'), event: z.string().min(1).max(64), data: z.unknown() }).strict(),
]);

/** Byte streams carried in binary frames: [kind u8][guest handle u32 BE][bytes]. */
export const STREAM_KIND = { console: 1, labload: 2 } as const;
export type StreamKind = keyof typeof STREAM_KIND;

export function encodeStreamFrame(kind: StreamKind, handle: number, data: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt8(STREAM_KIND[kind], 0);
  header.writeUInt32BE(handle, 1);
  return Buffer.concat([header, data]);
}

export function decodeStreamFrame(frame: Buffer): { kind: StreamKind; handle: number; data: Buffer } | null {
  if (frame.length < 5) return null;
  const code = frame.readUInt8(0);
  const kind = (Object.keys(STREAM_KIND) as StreamKind[]).find((k) => STREAM_KIND[k] === code);
  if (!kind) return null;
  return { kind, handle: frame.readUInt32BE(1), data: frame.subarray(5) };
}

// ---- what the engine asks of the agent ----

const handle = z.number().int().min(1).max(2 ** 31);
const port = z.number().int().min(1).max(65535);

/**
 * QMP commands a peer may run on a guest: the ones the engine sends through RemoteGuest and
 * nothing that reaches the host's files or processes (no object-add, no human-monitor-command,
 * no blockdev, no query that names paths like query-block or query-chardev). Their arguments are
 * checked too (qmp-filter.ts).
 */
export const QMP_ALLOWED = new Set([
  'cont', 'stop', 'quit', 'system_powerdown', 'announce-self',
  'migrate', 'migrate-incoming', 'migrate_cancel', 'migrate-continue',
  'migrate-set-capabilities', 'migrate-set-parameters',
  'query-status', 'query-migrate', 'query-migrate-parameters', 'query-migrate-capabilities',
]);

export const AgentRequestSchemas = {
  hello: z.object({ protocol: z.number().int(), client: z.string().max(200) }).strict(),
  info: z.object({}).strict().optional(),
  guests: z.object({}).strict().optional(),
  startGuest: z.object({ spec: z.record(z.string(), z.unknown()), incoming: z.boolean().optional() }).strict(),
  stopGuest: z.object({ name: z.string().min(1).max(64) }).strict(),
  qmp: z.object({ handle, command: z.string().min(1).max(64), args: z.record(z.string(), z.unknown()).optional() }).strict(),
  consoleHistory: z.object({ handle }).strict(),
  markReady: z.object({ handle }).strict(),
  allocateMigrationPort: z.object({}).strict().optional(),
  releaseMigrationPort: z.object({ port }).strict(),
  openLinkRelay: z.object({ targetPort: port, profile: z.record(z.string(), z.unknown()).optional() }).strict(),
  linkRelay: z
    .object({ port, action: z.enum(['set', 'cut', 'restore', 'stats', 'close']), profile: z.record(z.string(), z.unknown()).optional() })
    .strict(),
  installTls: z.object({ caCertPem: z.string().max(16384), certPem: z.string().max(16384), keyPem: z.string().max(16384) }).strict(),
  addTlsCreds: z.object({ handle, endpoint: z.enum(['server', 'client']) }).strict(),
  labPeers: z
    .object({
      peers: z.array(z.object({ address: z.string().min(1).max(64), ports: z.object({ first: port, last: port }).strict() }).strict()).max(64),
    })
    .strict(),
  ping: z.object({}).strict().optional(),
} as const;

export type AgentMethod = keyof typeof AgentRequestSchemas;

// ---- what the agent asks of the engine: the lab switch lives with the engine ----

export const EngineRequestSchemas = {
  'network.openPort': z
    .object({ guest: z.string().min(1).max(64), peer: z.object({ address: z.string().max(64), port }).strict() })
    .strict(),
} as const;

/** What the agent answers to hello. */
export interface HelloReply {
  name: string;
  protocol: number;
  /** The address QEMU's migration streams and NICs use on the agent's host. */
  address: string;
  /** The agent's migration ports (--ports). */
  ports: { first: number; last: number };
}

/** A guest as the agent describes it. */
export interface GuestDescriptor {
  handle: number;
  name: string;
  spec: Record<string, unknown>;
  state: string;
  pid: number | null;
  /** Milliseconds the guest has been up when described (clocks differ between machines). */
  uptimeMs: number;
  labload: boolean;
  switchPort: { id: number; address: string; port: number } | null;
  /** Reattached after an agent restart: QEMU outlived the agent that started it. */
  adopted: boolean;
  /** The -append its QEMU was started with (Guest.kernelAppend); absent from older agents. */
  kernelAppend?: string | null;
}

// Events the agent sends (RemoteHost.onAgentEvent), each to the connections of the guest's owner
// token only: guest-started (a GuestDescriptor), guest-state {handle, state, previous},
// guest-exited {handle, exit}, qmp-event {handle, event}, port-closed {id} (a NIC's switch port
// the engine can close).

/** The one JSON line `miglab agent` prints once it listens (read by agent-process.ts and the tests). */
export interface AgentStartInfo {
  name: string;
  url: string;
  fingerprint: string;
  /** A new pairing token, shown once: only on the first start (or when none is left). */
  pairingToken: string | null;
  adopted: string[];
}
