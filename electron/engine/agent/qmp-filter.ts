// What a peer may ask a guest's QEMU through the agent: named commands (protocol.ts QMP_ALLOWED),
// each with the arguments the engine sends and nothing more, every value checked. A refusal
// names the problem; anything not listed here is refused.
import { QMP_ALLOWED } from '../hosts/remote/protocol';
import { parseTcpUri } from '../hosts/remote/lab-peers';

export interface QmpFilterContext {
  /** Why a migration stream may not go to address:port (null: it may). */
  outgoing(address: string, port: number): string | null;
  /** Why QEMU may not listen on address:port for an incoming migration (null: it may). */
  incoming(address: string, port: number): string | null;
  /** The largest xbzrle cache QEMU may allocate on this host (bytes). */
  maxCacheBytes: number;
}

type Check = (value: unknown, ctx: QmpFilterContext) => string | null;

const int = (min: number, max: number): Check => (v) =>
  typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max ? null : `a whole number from ${min} to ${max}`;
const bool: Check = (v) => (typeof v === 'boolean' ? null : 'true or false');
const oneOf = (...values: string[]): Check => (v) => (typeof v === 'string' && values.includes(v) ? null : `one of ${values.join(', ')}`);
/** Bytes a second: up to 1 TB/s, far past any link. */
const rate = int(0, 1e12);

/** A host name or address for QEMU's TLS check; empty (or null) resets it. */
const tlsHostname: Check = (v) =>
  v === null || v === '' || (typeof v === 'string' && v.length <= 253 && /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(v))
    ? null
    : 'a host name or IPv4 address (letters, digits, dots and hyphens), or empty';

/**
 * migrate-set-parameters: the engine's own (bandwidth, downtime, TLS) and the tuning a class may
 * try. Not tls-authz, block-bitmap-mapping, mode (cpr), direct-io or any x- parameter.
 */
const PARAMETERS: Record<string, Check> = {
  'max-bandwidth': rate,
  'downtime-limit': int(0, 2_000_000), // QEMU's own limit: 2000 s
  'tls-creds': (v) => (v === null || v === '' || v === 'miglab-tls-server' || v === 'miglab-tls-client' ? null : 'empty, or the credentials the agent made: miglab-tls-server or miglab-tls-client (addTlsCreds)'),
  'tls-hostname': tlsHostname,
  'avail-switchover-bandwidth': rate,
  'max-postcopy-bandwidth': rate,
  'xbzrle-cache-size': (v, ctx) => int(0, ctx.maxCacheBytes)(v, ctx),
  'multifd-channels': int(1, 16),
  'multifd-compression': oneOf('none', 'zlib', 'zstd'),
  'multifd-zlib-level': int(0, 9),
  'multifd-zstd-level': int(0, 20),
  'cpu-throttle-initial': int(1, 99),
  'cpu-throttle-increment': int(1, 99),
  'cpu-throttle-tailslow': bool,
  'max-cpu-throttle': int(1, 99),
  'throttle-trigger-threshold': int(1, 100),
  'announce-initial': int(1, 100_000),
  'announce-max': int(1, 100_000),
  'announce-rounds': int(1, 1000),
  'announce-step': int(1, 10_000),
  'zero-page-detection': oneOf('none', 'legacy', 'multifd'),
};

/**
 * migrate-set-capabilities: what a class turns on to watch a migration converge. Not x-colo,
 * block or dirty-bitmaps (disks), mapped-ram or background-snapshot (files), rdma-pin-all or
 * x-ignore-shared.
 */
const CAPABILITIES = new Set([
  'events', 'xbzrle', 'auto-converge', 'zero-blocks', 'compress', 'postcopy-ram', 'release-ram', 'return-path',
  'pause-before-switchover', 'multifd', 'postcopy-blocktime', 'late-block-activate', 'validate-uuid',
  'zero-copy-send', 'postcopy-preempt', 'switchover-ack', 'dirty-limit',
]);

/** Statuses migrate-continue may name (the engine says pre-switchover). */
const CONTINUE_STATES = ['pre-switchover', 'device'];

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function keysProblem(command: string, args: Record<string, unknown>, allowed: readonly string[]): string | null {
  const extra = Object.keys(args).filter((k) => !allowed.includes(k));
  if (!extra.length) return null;
  const takes = allowed.length ? `takes only ${allowed.join(', ')}` : 'takes no arguments';
  return `QMP ${command} ${takes} through the agent, not ${extra.map((k) => JSON.stringify(k)).join(', ')}`;
}

function valuesProblem(command: string, args: Record<string, unknown>, checks: Record<string, Check>, ctx: QmpFilterContext): string | null {
  for (const [key, value] of Object.entries(args)) {
    if (!Object.hasOwn(checks, key)) continue;
    const want = checks[key]!(value, ctx);
    if (want) return `QMP ${command}: ${key} must be ${want} (got ${JSON.stringify(value)?.slice(0, 80)})`;
  }
  return null;
}

function uriProblem(command: 'migrate' | 'migrate-incoming', uri: unknown, ctx: QmpFilterContext): string | null {
  const target = parseTcpUri(uri);
  if (!target) {
    return `Migration URI ${JSON.stringify(uri)?.slice(0, 200)} is refused: only tcp:ADDRESS:PORT with an IPv4 address in plain form is allowed (no exec:, unix:, fd:, file: or host names)`;
  }
  return command === 'migrate' ? ctx.outgoing(target.address, target.port) : ctx.incoming(target.address, target.port);
}

/** Why the agent does not pass this QMP call on (null: it does). */
export function qmpRefusal(command: string, rawArgs: Record<string, unknown> | undefined, ctx: QmpFilterContext): string | null {
  if (!QMP_ALLOWED.has(command)) {
    return `The agent does not pass QMP command "${command}" on: it allows ${[...QMP_ALLOWED].join(', ')}`;
  }
  const args = rawArgs ?? {};
  if (!isPlainObject(args)) return `QMP ${command} takes an object of arguments`;
  switch (command) {
    case 'migrate':
      return keysProblem(command, args, ['uri', 'detach', 'resume']) ?? valuesProblem(command, args, { detach: bool, resume: bool }, ctx) ?? uriProblem(command, args.uri, ctx);
    case 'migrate-incoming':
      return keysProblem(command, args, ['uri']) ?? uriProblem(command, args.uri, ctx);
    case 'migrate-set-parameters':
      return keysProblem(command, args, Object.keys(PARAMETERS)) ?? valuesProblem(command, args, PARAMETERS, ctx);
    case 'migrate-set-capabilities': {
      const problem = keysProblem(command, args, ['capabilities']);
      if (problem) return problem;
      const list = args.capabilities;
      if (!Array.isArray(list) || list.length > 32) return `QMP ${command} takes capabilities: a list of at most 32 {capability, state}`;
      for (const c of list) {
        if (!isPlainObject(c) || keysProblem(command, c, ['capability', 'state']) || typeof c.state !== 'boolean') {
          return `QMP ${command}: each capability is {capability: NAME, state: true or false} (got ${JSON.stringify(c)?.slice(0, 80)})`;
        }
        if (typeof c.capability !== 'string' || !CAPABILITIES.has(c.capability)) {
          return `QMP ${command}: capability ${JSON.stringify(c.capability)?.slice(0, 80)} cannot be set through the agent; it allows ${[...CAPABILITIES].join(', ')}`;
        }
      }
      return null;
    }
    case 'migrate-continue':
      return keysProblem(command, args, ['state']) ?? valuesProblem(command, args, { state: oneOf(...CONTINUE_STATES) }, ctx) ?? (args.state === undefined ? `QMP ${command} needs state` : null);
    case 'announce-self': {
      const timing: Record<string, Check> = { initial: int(1, 100_000), max: int(1, 100_000), rounds: int(1, 1000), step: int(1, 10_000) };
      return keysProblem(command, args, Object.keys(timing)) ?? valuesProblem(command, args, timing, ctx);
    }
    default:
      // cont, stop, quit, system_powerdown, migrate_cancel and the queries take nothing
      return keysProblem(command, args, []);
  }
}
