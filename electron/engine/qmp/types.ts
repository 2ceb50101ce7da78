// Result and argument types for the QMP commands MigLab uses, transcribed from QEMU's
// qapi schema (migration.json, misc.json, run-state.json, machine.json, net.json).
// Baseline is QEMU 7.2 (checked against its query-qmp-schema); members added or
// dropped by later releases are optional and say so.

// ---- protocol-level ----

export interface QmpGreeting {
  QMP: {
    version: VersionInfo;
    /** Capabilities QEMU offers, e.g. ["oob"]; MigLab enables none of them. */
    capabilities: string[];
  };
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** QEMU's wall-clock timestamp of the event. */
  timestamp: QmpTimestamp;
  /** performance.now() when the client decoded the event (monotonic, ms). */
  receivedAt: number;
}

// ---- misc.json / machine.json ----

export interface VersionTriple {
  major: number;
  minor: number;
  micro: number;
}

export interface VersionInfo {
  qemu: VersionTriple;
  /** Distribution package string, e.g. "Debian 1:7.2+dfsg-7+deb12u18". */
  package: string;
}

export interface KvmInfo {
  enabled: boolean;
  present: boolean;
}

export interface NameInfo {
  name?: string;
}

export interface MemorySizeSummary {
  'base-memory': number;
  'plugged-memory'?: number;
}

export interface CpuInstanceProperties {
  'node-id'?: number;
  'socket-id'?: number;
  'die-id'?: number;
  'cluster-id'?: number;
  'core-id'?: number;
  'thread-id'?: number;
}

export interface CpuInfoFast {
  'cpu-index': number;
  'qom-path': string;
  'thread-id': number;
  props?: CpuInstanceProperties;
  /** QEMU target, e.g. "x86_64". */
  target: string;
}

export interface MachineInfo {
  name: string;
  alias?: string;
  'is-default'?: boolean;
  'cpu-max': number;
  'hotpluggable-cpus': boolean;
  'numa-mem-supported': boolean;
  deprecated: boolean;
  'default-cpu-type'?: string;
  'default-ram-id'?: string;
}

// ---- run-state.json ----

export type RunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo';

export interface StatusInfo {
  running: boolean;
  status: RunState;
  /** Dropped in QEMU 8.1. */
  singlestep?: boolean;
}

// ---- migration.json ----

export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'postcopy-active'
  | 'postcopy-paused'
  /** Since 9.1. */
  | 'postcopy-recover-setup'
  | 'postcopy-recover'
  | 'completed'
  | 'failed'
  | 'colo'
  | 'pre-switchover'
  | 'device'
  | 'wait-unplug';

export interface MigrationStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  /** Always 0 since 1.5; dropped in later QEMU releases. */
  skipped?: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  /** Megabits per second. */
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests': number;
  'page-size': number;
  'multifd-bytes': number;
  'pages-per-second': number;
  'precopy-bytes': number;
  'downtime-bytes': number;
  'postcopy-bytes': number;
  'dirty-sync-missed-zero-copy': number;
}

export interface XBZRLECacheStats {
  'cache-size': number;
  bytes: number;
  pages: number;
  'cache-miss': number;
  'cache-miss-rate': number;
  'encoding-rate': number;
  overflow: number;
}

export interface CompressionStats {
  pages: number;
  busy: number;
  'busy-rate': number;
  'compressed-size': number;
  'compression-rate': number;
}

export interface VfioStats {
  transferred: number;
}

/** SocketAddress as reported in query-migrate's socket-address (flat union on `type`). */
export type SocketAddress =
  | { type: 'inet'; host: string; port: string; numeric?: boolean; to?: number; ipv4?: boolean; ipv6?: boolean }
  | { type: 'unix'; path: string; abstract?: boolean; tight?: boolean }
  | { type: 'vsock'; cid: string; port: string }
  | { type: 'fd'; str: string };

export interface MigrationInfo {
  /** Absent when no migration was ever started. */
  status?: MigrationStatus;
  ram?: MigrationStats;
  /** Block migration statistics; block migration was dropped in QEMU 9.1. */
  disk?: MigrationStats;
  vfio?: VfioStats;
  'xbzrle-cache'?: XBZRLECacheStats;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  'blocked-reasons'?: string[];
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
  /** Dropped with the compress capability in QEMU 9.1. */
  compression?: CompressionStats;
  'socket-address'?: SocketAddress[];
  /** Since 8.1. */
  'dirty-limit-throttle-time-per-round'?: number;
  /** Since 8.1. */
  'dirty-limit-ring-full-time'?: number;
}

export type MigrationCapability =
  | 'xbzrle'
  | 'rdma-pin-all'
  | 'auto-converge'
  | 'zero-blocks'
  /** Dropped in 9.1. */
  | 'compress'
  | 'events'
  | 'postcopy-ram'
  | 'x-colo'
  | 'release-ram'
  /** Dropped in 9.1. */
  | 'block'
  | 'return-path'
  | 'pause-before-switchover'
  | 'multifd'
  | 'dirty-bitmaps'
  | 'postcopy-blocktime'
  | 'late-block-activate'
  | 'x-ignore-shared'
  | 'validate-uuid'
  | 'background-snapshot'
  | 'zero-copy-send'
  | 'postcopy-preempt'
  /** Since 8.1. */
  | 'switchover-ack'
  /** Since 8.1. */
  | 'dirty-limit'
  /** Since 9.0. */
  | 'mapped-ram';

export interface MigrationCapabilityStatus {
  capability: MigrationCapability;
  state: boolean;
}

export type MultiFDCompression = 'none' | 'zlib' | 'zstd' | 'qpl' | 'uadk';

export interface BitmapMigrationBitmapAlias {
  name: string;
  alias: string;
  transform?: { persistent?: boolean };
}

export interface BitmapMigrationNodeAlias {
  'node-name': string;
  alias: string;
  bitmaps: BitmapMigrationBitmapAlias[];
}

/** query-migrate-parameters result. All members optional in the schema. */
export interface MigrationParameters {
  'announce-initial'?: number;
  'announce-max'?: number;
  'announce-rounds'?: number;
  'announce-step'?: number;
  /** compress-* and decompress-threads were dropped in 9.1. */
  'compress-level'?: number;
  'compress-threads'?: number;
  'compress-wait-thread'?: boolean;
  'decompress-threads'?: number;
  'throttle-trigger-threshold'?: number;
  'cpu-throttle-initial'?: number;
  'cpu-throttle-increment'?: number;
  'cpu-throttle-tailslow'?: boolean;
  'tls-creds'?: string;
  'tls-hostname'?: string;
  'tls-authz'?: string;
  /** Bytes per second. */
  'max-bandwidth'?: number;
  /** Since 8.2. Bytes per second. */
  'avail-switchover-bandwidth'?: number;
  /** Milliseconds. */
  'downtime-limit'?: number;
  'x-checkpoint-delay'?: number;
  /** Dropped in 9.1. */
  'block-incremental'?: boolean;
  'multifd-channels'?: number;
  /** Bytes; a power of two multiple of the page size. */
  'xbzrle-cache-size'?: number;
  'max-postcopy-bandwidth'?: number;
  'max-cpu-throttle'?: number;
  'multifd-compression'?: MultiFDCompression;
  'multifd-zlib-level'?: number;
  'multifd-zstd-level'?: number;
  'block-bitmap-mapping'?: BitmapMigrationNodeAlias[];
  /** Since 8.1. */
  'x-vcpu-dirty-limit-period'?: number;
  /** Since 8.1. */
  'vcpu-dirty-limit'?: number;
  /** Since 8.2. */
  mode?: 'normal' | 'cpr-reboot';
  /** Since 9.0. */
  'zero-page-detection'?: 'none' | 'legacy' | 'multifd';
  /** Since 9.1. */
  'direct-io'?: boolean;
}

/** migrate-set-parameters arguments: like MigrationParameters, but tls-* accept null to reset. */
export type MigrateSetParameters = Omit<MigrationParameters, 'tls-creds' | 'tls-hostname' | 'tls-authz'> & {
  'tls-creds'?: string | null;
  'tls-hostname'?: string | null;
  'tls-authz'?: string | null;
};

// ---- net.json ----

/** announce-self arguments; in 7.2 the four timings are mandatory. */
export interface AnnounceParameters {
  /** Initial delay in ms. */
  initial: number;
  /** Maximum delay in ms between packets. */
  max: number;
  rounds: number;
  /** Delay increase in ms between packets. */
  step: number;
  interfaces?: string[];
  id?: string;
}

// ---- migration.json: dirty rate (calc-dirty-rate, query-dirty-rate; since 5.2) ----

/** 'dirty-ring' needs KVM's dirty ring: QEMU 7.2 under TCG crashes (SIGSEGV) when asked for it. */
export type DirtyRateMeasureMode = 'page-sampling' | 'dirty-ring' | 'dirty-bitmap';

/** Since 8.2; before it, calc-time is whole seconds and neither command takes calc-time-unit. */
export type TimeUnit = 'second' | 'millisecond';

export type DirtyRateStatus = 'unstarted' | 'measuring' | 'measured';

export interface DirtyRateVcpu {
  id: number;
  /** MiB/s, as QEMU computes it (bytes >> 20). */
  'dirty-rate': number;
}

/** calc-dirty-rate arguments. */
export interface CalcDirtyRateArgs {
  /** In `calc-time-unit`: QEMU 10 takes 50..60000 ms, QEMU 7.2 1..60 s. */
  'calc-time': number;
  /** Since 8.2. */
  'calc-time-unit'?: TimeUnit;
  /** Pages sampled per GiB of RAM (page-sampling only); QEMU takes 128..16384. */
  'sample-pages'?: number;
  mode?: DirtyRateMeasureMode;
}

/** query-dirty-rate result. */
export interface DirtyRateInfo {
  /** MiB/s; present only once measured, and -1 when QEMU could not sample the guest's RAM. */
  'dirty-rate'?: number;
  status: DirtyRateStatus;
  /** When the measurement started, in seconds of a QEMU clock (not comparable with ours). */
  'start-time': number;
  /** How long QEMU measured, in `calc-time-unit` (seconds before 8.2). */
  'calc-time': number;
  /** Since 8.2. */
  'calc-time-unit'?: TimeUnit;
  /** Per GiB; 0 in the modes that do not sample. */
  'sample-pages': number;
  mode: DirtyRateMeasureMode;
  /** dirty-ring mode only. */
  'vcpu-dirty-rate'?: DirtyRateVcpu[];
}
