// The one API contract between the lab engine and every front end: the renderer (over Electron
// IPC or a WebSocket in browser mode) and the CLI. Types only, so the renderer can import it
// without pulling in Node: the engine validates what arrives with the schemas in ./commands.
import type { GuestState } from '../hosts/host';
import type { JobState, MigrationEvent, MigrationOptions, MigrationResult, PreflightCheck } from '../migration/types';
import type { LinkProfile, LinkRelayStats } from '../network/link-relay';
import type { PortInfo } from '../network/switch';

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

export interface HostView {
  name: string;
  kind: 'local' | 'remote';
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

/** What a front end may ask. Each command has one result type (ApiResults). */
export type ApiCommand =
  | { type: 'snapshot' }
  | { type: 'startGuest'; host: string; guest: { name: string; memoryMiB?: number; boot?: GuestBootInput } }
  | { type: 'preflight'; guest: string; to: string; capabilities?: Record<string, boolean> }
  | { type: 'stopGuest'; host: string; guest: string }
  /**
   * Runs the job; a destination the pre-flight prepared for this guest on `to` is handed to it.
   * maxDurationMs: give up (cancel) when not completed by then (the job's default: 10 minutes).
   */
  | { type: 'migrate'; guest: string; to: string; options?: Partial<Pick<MigrationOptions, 'bandwidthMBps' | 'downtimeLimitMs' | 'capabilities' | 'sampleIntervalMs' | 'probeIntervalMs' | 'tls' | 'link' | 'keepSourceMs'>>; maxDurationMs?: number }
  /** reason: what the result will say (default "Cancelled from the lab"). */
  | { type: 'cancelMigration'; id: string; reason?: string }
  /** With pause-before-switchover: QEMU waits in pre-switchover; this lets it go on (migrate-continue). */
  | { type: 'continueMigration'; id: string }
  /** While the paused source is kept (keepSourceMs): takes a diskless guest back to it. */
  | { type: 'rollbackMigration'; id: string }
  /**
   * A person's choice after needs-attention: the destination ran and failed, the source stands
   * paused; resume it there (going back in time), as `miglab recover --resume-source` does.
   */
  | { type: 'resumeSource'; guest: string }
  /** Stops the destination a pre-flight prepared for this guest (the dialog closed without migrating). */
  | { type: 'releasePreparedDestination'; guest: string }
  /** The emulated link of a running migration: pull the cable, plug it back, or change its profile. */
  | { type: 'linkControl'; id: string; action: LinkAction; profile?: Partial<LinkProfile> }
  | { type: 'setMigrationParameters'; id: string; bandwidthMBps?: number; downtimeLimitMs?: number }
  | { type: 'setWorkload'; guest: string; rateMBps: number; workingSetMiB: number }
  | { type: 'consoleInput'; guest: string; data: string }
  | { type: 'consoleHistory'; guest: string }
  | { type: 'addHost'; name: string; agent?: AgentRef }
  | { type: 'removeHost'; name: string }
  | { type: 'exportLab' };

/** 'set' takes a profile (only the fields given change); 'cut' resets every connection until 'restore'. */
export type LinkAction = 'cut' | 'restore' | 'set';

/** A guest to boot: the lab guest, or a custom kernel or disk image on the host. */
export type GuestBootInput =
  | { kind: 'lab' }
  | { kind: 'kernel'; kernel: string; initrd?: string; append?: string; readyPattern?: string }
  | { kind: 'disk'; path: string; readyPattern?: string };

export interface ApiResults {
  snapshot: LabSnapshot;
  /**
   * The checks a migration would run now, and the capabilities both QEMUs offer. Meanwhile the
   * destination QEMU starts, paused, for the migration that may follow (released on failure).
   */
  preflight: { checks: PreflightCheck[]; capabilities: string[] };
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

export type ServerMessage =
  | { hello: { apiVersion: number; role: ApiRole } }
  | { id: number; ok: true; result: ApiResults[ApiCommand['type']] }
  | { id: number; ok: false; error: { message: string; code: ApiErrorCode } }
  | { event: ApiEvent };

/** 'rate-limited': browser mode's per-connection command budget is spent for now (see web/client-budget.ts). */
export type ApiErrorCode = 'invalid' | 'forbidden' | 'not-found' | 'failed' | 'rate-limited';
