// The one API contract between the lab engine and every front end: the renderer (over Electron
// IPC or a WebSocket in browser mode) and the CLI. Types, and pure helpers re-exported for the UI:
// the renderer imports nothing else of the engine, so every value here must come from a module
// without Node imports (type-only imports from anywhere are erased). The engine validates what
// arrives with the schemas in ./commands.
import type { GuestState } from '../hosts/host';
import type { JobState, MigrationEvent, MigrationResult, PreflightCheck } from '../migration/types';
import type { LinkProfile, LinkRelayStats } from '../network/link-profile';
import type { PortInfo } from '../network/switch';
import type { ApiCommand, ApiErrorCode } from './commands';
import type { StrategyName } from '../migration/strategies/strategy';
export type { StrategyName };

// For the UI: each from a module with no Node imports.
export { formatBytes, formatBytesRate, formatMs } from '../util/format';
export { MIGRATION_OUTCOMES, MIGRATION_PHASES } from '../migration/types';
export { capabilityRefusal } from '../migration/capabilities';
export { DOWNTIME_POLICIES, DOWNTIME_POLICY_NAMES } from '../migration/downtime-policy';
export type {
  DowntimePolicyName, DowntimePolicyReport, DowntimeStep, JobState, MigrationPass, MigrationResult, NetworkMacMove, PhaseSpan, PreflightCheck, Prediction, ProbeSample,
} from '../migration/types';
export type { LinkProfile, LinkRelayStats } from '../network/link-profile';

export const API_VERSION = 1;

export interface GuestView {
  name: string;
  host: string;
  state: GuestState;
  memoryMiB: number;
  vcpus: number;
  boot: 'lab' | 'kernel' | 'disk';
  ip: string | null;
  mac: string | null;
  /** The lab switch port its NIC is on. */
  switchPort: number | null;
  /** The lab guest runs labload: heartbeats, a workload, integrity checks. */
  labload: boolean;
  /** The workload labload runs now; null when idle or without labload. */
  workload: { rateMBps: number; workingSetMiB: number } | null;
}

/** A convergence strategy as the Migrate dialog offers it: explained, and whether both QEMUs can run it. */
export interface StrategyView {
  name: StrategyName;
  title: string;
  explanation: string;
  /** null: both QEMUs offer what it needs; else why not (the capability one of them lacks). */
  unavailable: string | null;
}

export interface HostView {
  name: string;
  /** The host's kind, as the host describes itself ('local', 'remote', ...). */
  kind: string;
  address: string;
  guests: GuestView[];
  /** A remote host's agent address (wss://...); never its token. */
  agentUrl?: string;
  /** A remote host's link to its agent: its guests keep running while it is 'reconnecting'. */
  connection?: 'connected' | 'reconnecting' | 'closed';
  /** Guests a remote host's agent described in a way the engine refuses: left out of the lab, with why. */
  refusedGuests?: Array<{ guest: string; problem: string }>;
}

/** How to reach a LAN host's `miglab agent`: the three things it printed when it started. */
export interface AgentRef {
  /** wss://ADDRESS:PORT/v1/agent */
  url: string;
  /** The pairing token, mlt_... */
  token: string;
  /** SHA-256 of the agent's certificate: a different certificate is refused. */
  fingerprint: string;
}

export interface MigrationView {
  id: string;
  guest: string;
  from: string;
  to: string;
  state: JobState;
  /** ISO time the job started. */
  startedAt: string;
  result: MigrationResult | null;
  /** The stream is encrypted with QEMU's TLS (lab CA). Absent: not said (treat as false). */
  tls?: boolean;
  /** The link profile asked for (fields left out are neutral); null or absent: no link emulation. */
  link?: Partial<LinkProfile> | null;
}

export interface NetworkView {
  subnet: string;
  probe: { ip: string; mac: string };
  ports: PortInfo[];
}

export interface LabSnapshot {
  apiVersion: number;
  hosts: HostView[];
  migrations: MigrationView[];
  network: NetworkView | null;
}

// What a front end may ask, inferred from the schema that checks it (./commands).
export type { ApiCommand, ApiErrorCode } from './commands';

/** 'set' takes a profile (only the fields given change); 'cut' resets every connection until 'restore'. */
export type LinkAction = Extract<ApiCommand, { type: 'linkControl' }>['action'];

/** A guest to boot: the lab guest, or a custom kernel or disk image on the host. */
export type GuestBootInput = NonNullable<Extract<ApiCommand, { type: 'startGuest' }>['guest']['boot']>;

export interface ApiResults {
  snapshot: LabSnapshot;
  /**
   * The checks a migration would run now, and the capabilities both QEMUs offer. Meanwhile the
   * destination QEMU starts, paused, for the migration that may follow (released on failure).
   */
  preflight: { checks: PreflightCheck[]; capabilities: string[]; strategies: StrategyView[] };
  startGuest: GuestView;
  stopGuest: { guest: string; host: string };
  migrate: { id: string };
  cancelMigration: { cancelled: boolean };
  continueMigration: { id: string };
  rollbackMigration: { id: string };
  /** What recovery did (outcome, where the guest runs now, its actions). */
  resumeSource: { guest: string; outcome: string; runningOn: string | null; actions: string[] };
  /** released: there was one, and it is stopped. */
  releasePreparedDestination: { guest: string; released: boolean };
  /** The relay's counters and profile right after the action. */
  linkControl: LinkRelayStats;
  setMigrationParameters: { id: string };
  setWorkload: { guest: string; rateMBps: number; workingSetMiB: number };
  consoleInput: { bytes: number };
  consoleHistory: { guest: string; text: string };
  addHost: HostView;
  removeHost: { name: string };
  /** The lab as a lab file (YAML). */
  exportLab: { yaml: string };
}

/** Commands a spectator (read-only view) may send. */
export const READ_ONLY_COMMANDS: ReadonlyArray<ApiCommand['type']> = ['snapshot', 'consoleHistory', 'exportLab'];

/** What the engine tells every front end, as it happens. */
export type ApiEvent =
  | { type: 'lab'; snapshot: LabSnapshot }
  | { type: 'migration'; id: string; guest: string; event: MigrationEvent }
  | { type: 'console'; guest: string; host: string; data: string };

/** One message on the wire, each way (WebSocket in browser mode, IPC in the app). */
export type ClientMessage = { id: number; command: ApiCommand };
export type ApiRole = 'teacher' | 'spectator';

/** What a front end hears first: the API version the engine speaks, and what it may do. */
export interface Hello {
  apiVersion: number;
  role: ApiRole;
}

/** A command's answer, the same on every wire (WebSocket, IPC): its result, or the error with its code. */
export type ApiReply<R = ApiResults[ApiCommand['type']]> = { ok: true; result: R } | ApiFailure;
export type ApiFailure = { ok: false; error: { message: string; code: ApiErrorCode } };

export type ServerMessage =
  | { hello: Hello }
  | ({ id: number } & ApiReply)
  | { event: ApiEvent };

/** window.lab in the desktop app: what the preload exposes to the renderer. */
export interface LabBridge {
  hello(): Promise<Hello>;
  call<K extends ApiCommand['type']>(command: Extract<ApiCommand, { type: K }>): Promise<ApiReply<ApiResults[K]>>;
  /** Returns the way to stop listening. */
  onEvent(listener: (ev: ApiEvent) => void): () => void;
}
