// Typed wrappers for the QMP commands MigLab uses. They take a minimal executor rather
// than QmpClient so a remote host agent can implement the same interface later.
import { QmpDisconnectedError, QmpError } from './errors';
import type {
  AnnounceParameters,
  CalcDirtyRateArgs,
  CpuInfoFast,
  DirtyRateInfo,
  DirtyRateMeasureMode,
  DirtyRateStatus,
  DirtyRateVcpu,
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
  TimeUnit,
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

// ---- dirty rate ----

const DIRTY_RATE_MODES: readonly DirtyRateMeasureMode[] = ['page-sampling', 'dirty-ring', 'dirty-bitmap'];
const DIRTY_RATE_STATUSES: readonly DirtyRateStatus[] = ['unstarted', 'measuring', 'measured'];
const TIME_UNITS: readonly TimeUnit[] = ['second', 'millisecond'];

/** A QMP answer that does not match QEMU's schema: named, with what was wrong, never passed on. */
function badAnswer(command: string, what: string, value: unknown): QmpError {
  let shown: string;
  try {
    shown = JSON.stringify(value) ?? String(value);
  } catch {
    shown = String(value);
  }
  if (shown.length > 120) shown = `${shown.slice(0, 120)}...`;
  return new QmpError(`QEMU's answer to ${command} does not match its schema: ${what} (got ${shown})`, { command });
}

/**
 * Starts measuring how fast the guest dirties its memory; returns once QEMU accepted (poll
 * query-dirty-rate). Mode dirty-ring is refused here: it needs KVM's dirty ring, and QEMU 7.2
 * under TCG crashes (SIGSEGV) when asked for it.
 */
export async function calcDirtyRate(exec: QmpExecutor, args: CalcDirtyRateArgs, opts?: QmpCommandOptions): Promise<void> {
  const time = args['calc-time'];
  if (!Number.isSafeInteger(time) || time <= 0) {
    throw new RangeError(`calc-dirty-rate needs a whole, positive calc-time; got ${String(time)}`);
  }
  const pages = args['sample-pages'];
  if (pages !== undefined && (!Number.isSafeInteger(pages) || pages <= 0)) {
    throw new RangeError(`calc-dirty-rate needs a whole, positive sample-pages; got ${String(pages)}`);
  }
  if (args.mode === 'dirty-ring') {
    throw new RangeError('calc-dirty-rate mode dirty-ring needs KVM\'s dirty ring (QEMU 7.2 under TCG crashes on it): use page-sampling');
  }
  const wire: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(args)) if (value !== undefined) wire[key] = value;
  await exec.execute('calc-dirty-rate', wire, opts);
}

/** The state of the last dirty-rate measurement, checked member by member against QEMU's schema. */
export async function queryDirtyRate(
  exec: QmpExecutor,
  calcTimeUnit?: TimeUnit,
  opts?: QmpCommandOptions,
): Promise<DirtyRateInfo> {
  const cmd = 'query-dirty-rate';
  const raw = await exec.execute<unknown>(cmd, calcTimeUnit === undefined ? undefined : { 'calc-time-unit': calcTimeUnit }, opts);
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw badAnswer(cmd, 'not an object', raw);
  const r = raw as Record<string, unknown>;
  const int = (key: string, min: number): number => {
    const v = r[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw badAnswer(cmd, `${key} is not a whole number >= ${min}`, v);
    return v;
  };
  const oneOf = <T extends string>(key: string, allowed: readonly T[]): T => {
    const v = r[key];
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) throw badAnswer(cmd, `${key} is not one of ${allowed.join(', ')}`, v);
    return v as T;
  };
  const info: DirtyRateInfo = {
    status: oneOf('status', DIRTY_RATE_STATUSES),
    'start-time': int('start-time', 0),
    'calc-time': int('calc-time', 0),
    'sample-pages': int('sample-pages', 0),
    mode: oneOf('mode', DIRTY_RATE_MODES),
  };
  // QEMU reports -1 when page sampling found no RAM to sample.
  if (r['dirty-rate'] !== undefined) info['dirty-rate'] = int('dirty-rate', -1);
  if (r['calc-time-unit'] !== undefined) info['calc-time-unit'] = oneOf('calc-time-unit', TIME_UNITS);
  if (calcTimeUnit !== undefined && (info['calc-time-unit'] ?? 'second') !== calcTimeUnit) {
    throw badAnswer(cmd, `calc-time-unit is not the ${calcTimeUnit} asked for`, r['calc-time-unit']);
  }
  if (r['vcpu-dirty-rate'] !== undefined) {
    const list = r['vcpu-dirty-rate'];
    if (!Array.isArray(list)) throw badAnswer(cmd, 'vcpu-dirty-rate is not a list', list);
    info['vcpu-dirty-rate'] = list.map((v): DirtyRateVcpu => {
      const o = v as Record<string, unknown> | null;
      const id = o?.id;
      const rate = o?.['dirty-rate'];
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0 || typeof rate !== 'number' || !Number.isSafeInteger(rate) || rate < -1) {
        throw badAnswer(cmd, 'a vcpu-dirty-rate entry is not {id, dirty-rate} in whole numbers', v);
      }
      return { id, 'dirty-rate': rate };
    });
  }
  return info;
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
