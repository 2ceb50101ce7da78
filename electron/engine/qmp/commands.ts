// Typed wrappers for the QMP commands MigLab uses. They take a minimal executor rather
// than QmpClient so a remote host agent can implement the same interface later.
import { QmpDisconnectedError } from './errors';
import type {
  AnnounceParameters,
  CpuInfoFast,
  KvmInfo,
  MachineInfo,
  MemorySizeSummary,
  MigrateSetParameters,
  MigrationCapability,
  MigrationCapabilityStatus,
  MigrationInfo,
  MigrationParameters,
  MigrationStatus,
  NameInfo,
  StatusInfo,
  VersionInfo,
} from './types';

export interface QmpCommandOptions {
  timeoutMs?: number;
}

export interface QmpExecutor {
  execute<T = unknown>(cmd: string, args?: Record<string, unknown>, opts?: QmpCommandOptions): Promise<T>;
}

/** "7.2.22" */
export function qemuVersionString(v: VersionInfo): string {
  return `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}`;
}

export function queryVersion(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<VersionInfo> {
  return exec.execute<VersionInfo>('query-version', undefined, opts);
}

export function queryStatus(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<StatusInfo> {
  return exec.execute<StatusInfo>('query-status', undefined, opts);
}

export function queryKvm(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<KvmInfo> {
  return exec.execute<KvmInfo>('query-kvm', undefined, opts);
}

export function queryName(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<NameInfo> {
  return exec.execute<NameInfo>('query-name', undefined, opts);
}

export function queryMachines(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<MachineInfo[]> {
  return exec.execute<MachineInfo[]>('query-machines', undefined, opts);
}

export function queryMemorySizeSummary(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<MemorySizeSummary> {
  return exec.execute<MemorySizeSummary>('query-memory-size-summary', undefined, opts);
}

export function queryCpusFast(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<CpuInfoFast[]> {
  return exec.execute<CpuInfoFast[]>('query-cpus-fast', undefined, opts);
}

// ---- migration ----

export function queryMigrate(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<MigrationInfo> {
  return exec.execute<MigrationInfo>('query-migrate', undefined, opts);
}

export function queryMigrateCapabilities(
  exec: QmpExecutor,
  opts?: QmpCommandOptions,
): Promise<MigrationCapabilityStatus[]> {
  return exec.execute<MigrationCapabilityStatus[]>('query-migrate-capabilities', undefined, opts);
}

export type MigrationCapabilityMap = Partial<Record<MigrationCapability, boolean>> & Record<string, boolean | undefined>;

/** Builds the `capabilities: [{capability, state}]` list; undefined entries are left out. */
export function capabilityList(caps: MigrationCapabilityMap): MigrationCapabilityStatus[] {
  const list: MigrationCapabilityStatus[] = [];
  for (const [capability, state] of Object.entries(caps)) {
    if (state === undefined) continue;
    list.push({ capability: capability as MigrationCapability, state });
  }
  return list;
}

export async function migrateSetCapabilities(
  exec: QmpExecutor,
  caps: MigrationCapabilityMap,
  opts?: QmpCommandOptions,
): Promise<void> {
  await exec.execute('migrate-set-capabilities', { capabilities: capabilityList(caps) }, opts);
}

export function queryMigrateParameters(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<MigrationParameters> {
  return exec.execute<MigrationParameters>('query-migrate-parameters', undefined, opts);
}

export async function migrateSetParameters(
  exec: QmpExecutor,
  params: MigrateSetParameters,
  opts?: QmpCommandOptions,
): Promise<void> {
  // Drop undefined members so the wire message carries only what was meant.
  const args: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(params)) if (value !== undefined) args[key] = value;
  await exec.execute('migrate-set-parameters', args, opts);
}

export interface MigrateOptions extends QmpCommandOptions {
  /** Resume a paused postcopy migration (since 3.0). */
  resume?: boolean;
}

/** Starts an outgoing migration; returns as soon as QEMU accepted it (poll query-migrate or wait for MIGRATION). */
export async function migrate(exec: QmpExecutor, uri: string, opts: MigrateOptions = {}): Promise<void> {
  const args: Record<string, unknown> = { uri };
  if (opts.resume !== undefined) args.resume = opts.resume;
  await exec.execute('migrate', args, timeoutOnly(opts));
}

/** Starts listening on a destination QEMU that was started with `-incoming defer`. */
export async function migrateIncoming(exec: QmpExecutor, uri: string, opts?: QmpCommandOptions): Promise<void> {
  await exec.execute('migrate-incoming', { uri }, opts);
}

export async function migrateCancel(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<void> {
  await exec.execute('migrate_cancel', undefined, opts);
}

/** Lets a migration paused by the pause-before-switchover capability go on. */
export async function migrateContinue(
  exec: QmpExecutor,
  state: MigrationStatus = 'pre-switchover',
  opts?: QmpCommandOptions,
): Promise<void> {
  await exec.execute('migrate-continue', { state }, opts);
}

export async function migrateStartPostcopy(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<void> {
  await exec.execute('migrate-start-postcopy', undefined, opts);
}

// ---- run state ----

export async function stop(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<void> {
  await exec.execute('stop', undefined, opts);
}

export async function cont(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<void> {
  await exec.execute('cont', undefined, opts);
}

/**
 * Asks QEMU to exit. QEMU may close the socket right after (or instead of) replying,
 * so losing the connection during this call counts as success.
 */
export async function quit(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<void> {
  try {
    await exec.execute('quit', undefined, opts);
  } catch (err) {
    if (err instanceof QmpDisconnectedError && err.command === 'quit') return;
    throw err;
  }
}

export async function systemPowerdown(exec: QmpExecutor, opts?: QmpCommandOptions): Promise<void> {
  await exec.execute('system_powerdown', undefined, opts);
}

/** QEMU's migration defaults for self-announce (see migration-params announce-*). */
export const DEFAULT_ANNOUNCE: AnnounceParameters = { initial: 50, max: 550, rounds: 5, step: 100 };

/** Sends gratuitous ARP/RARP from the guest NICs, e.g. after a migration between networks. */
export async function announceSelf(
  exec: QmpExecutor,
  params: Partial<AnnounceParameters> = {},
  opts?: QmpCommandOptions,
): Promise<void> {
  const args: Record<string, unknown> = { ...DEFAULT_ANNOUNCE };
  for (const [key, value] of Object.entries(params)) if (value !== undefined) args[key] = value;
  await exec.execute('announce-self', args, opts);
}

function timeoutOnly(opts: QmpCommandOptions): QmpCommandOptions | undefined {
  return opts.timeoutMs === undefined ? undefined : { timeoutMs: opts.timeoutMs };
}
