import { join } from 'node:path';
import { QmpClient, queryMigrateCapabilities, queryVersion, qemuVersionString } from '../qmp';
import { makeTempDir, removeDir } from '../util/fs';
import { findQemu } from './binary';
import { QemuProcess, QemuStartError, describeExit } from './process';

export interface QemuProbe {
  version: string;
  /** Migration capabilities this QEMU offers: detected, never assumed. */
  migrationCapabilities: string[];
}

const probes = new Map<string, Promise<QemuProbe>>();

/**
 * Asks a QEMU binary what it can do by starting it with no machine and querying QMP.
 * Cached per binary path: the answer does not change while we run.
 */
export function probeQemu(binaryPath?: string): Promise<QemuProbe> {
  const key = binaryPath ?? '';
  let p = probes.get(key);
  if (!p) {
    p = runProbe(binaryPath);
    probes.set(key, p);
    p.catch(() => probes.delete(key));
  }
  return p;
}

async function runProbe(binaryPath?: string): Promise<QemuProbe> {
  const path = binaryPath ?? (await findQemu()).path;
  const dir = await makeTempDir('probe');
  const sock = join(dir, 'qmp.sock');
  const proc = new QemuProcess(path, [
    '-machine', 'none', '-nodefaults', '-no-user-config', '-display', 'none',
    '-chardev', `socket,id=qmp,path=${sock},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control',
  ]);
  const qmp = new QmpClient({ name: 'probe' });
  try {
    await Promise.race([
      qmp.connect(sock, { retryUntilMs: 10_000 }),
      proc.exited.then((exit) => {
        throw new QemuStartError('probe', exit, describeExit(exit));
      }),
    ]);
    const version = qemuVersionString(await queryVersion(qmp));
    const caps = await queryMigrateCapabilities(qmp);
    return { version, migrationCapabilities: caps.map((c) => c.capability) };
  } finally {
    await qmp.disconnect();
    await proc.stop();
    await removeDir(dir);
  }
}
