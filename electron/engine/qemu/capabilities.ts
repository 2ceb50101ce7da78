// What a QEMU binary offers, asked of QEMU itself once per binary (-machine none, then QMP):
// its version, migration capabilities and guest CPU models. Detected, never assumed.
import { join } from 'node:path';
import { QmpClient, queryMachines, queryMigrateCapabilities, queryVersion, qemuVersionString, type QmpExecutor } from '../qmp';
import { makeTempDir, removeDir } from '../util/fs';
import { PromiseCache } from '../util/promise-cache';
import { findQemu } from './binary';
import { QemuProcess, QemuStartError, describeExit } from './process';

export interface QemuCapabilities {
  version: string;
  /** Migration capabilities this QEMU offers: detected, never assumed. */
  migrationCapabilities: string[];
  /** The guest CPU models this QEMU offers; null when it would not say. */
  cpu: QemuCpuOffer | null;
}

/** What a QEMU can give a guest as its CPU, as query-cpu-definitions and query-machines say. */
export interface QemuCpuOffer {
  /** Every CPU model name -cpu accepts (qemu64, max, Skylake-Server, ...). */
  models: string[];
  /** The CPU model each machine type (and alias, like q35) gets without -cpu, by model name. */
  machineDefaults: Record<string, string>;
}

interface CpuDefinition {
  name: string;
  /** The QOM type, which query-machines names as a machine's default-cpu-type. */
  typename?: string;
}

/** null when this QEMU does not answer (an old or odd build): the CPU check then says unknown. */
async function queryCpuOffer(qmp: QmpExecutor): Promise<QemuCpuOffer | null> {
  try {
    const [defs, machines] = await Promise.all([qmp.execute<CpuDefinition[]>('query-cpu-definitions'), queryMachines(qmp)]);
    const byType = new Map(defs.filter((d) => d.typename).map((d) => [d.typename!, d.name]));
    const machineDefaults: Record<string, string> = {};
    for (const m of machines) {
      const model = m['default-cpu-type'] ? byType.get(m['default-cpu-type']) : undefined;
      if (!model) continue;
      machineDefaults[m.name] = model;
      if (m.alias) machineDefaults[m.alias] = model;
    }
    return { models: defs.map((d) => d.name).sort(), machineDefaults };
  } catch {
    return null;
  }
}

const detected = new PromiseCache<QemuCapabilities>();

/**
 * Asks a QEMU binary what it can do by starting it with no machine and querying QMP.
 * Cached per binary path: the answer does not change while we run.
 */
export function detectQemuCapabilities(binaryPath?: string): Promise<QemuCapabilities> {
  return detected.get(binaryPath ?? '', () => askQemu(binaryPath));
}

async function askQemu(binaryPath?: string): Promise<QemuCapabilities> {
  const path = binaryPath ?? (await findQemu()).path;
  const dir = await makeTempDir('qemu-caps');
  const sock = join(dir, 'qmp.sock');
  const proc = new QemuProcess(path, [
    '-machine', 'none', '-nodefaults', '-no-user-config', '-display', 'none',
    '-chardev', `socket,id=qmp,path=${sock},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control',
  ]);
  const qmp = new QmpClient({ name: 'capabilities' });
  try {
    await Promise.race([
      qmp.connect(sock, { retryUntilMs: 10_000 }),
      proc.exited.then((exit) => {
        throw new QemuStartError('capabilities', exit, describeExit(exit));
      }),
    ]);
    const version = qemuVersionString(await queryVersion(qmp));
    const caps = await queryMigrateCapabilities(qmp);
    return { version, migrationCapabilities: caps.map((c) => c.capability), cpu: await queryCpuOffer(qmp) };
  } finally {
    await qmp.disconnect();
    await proc.stop();
    await removeDir(dir);
  }
}
