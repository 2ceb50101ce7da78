import { readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEMP_PREFIX } from '../../electron/engine/util/fs';
import { netnsLeftovers } from './netns-leaks';

/**
 * PIDs of the QEMU processes MigLab started: those whose command line points into a MigLab
 * temp dir, or into `marker` when given. (Other QEMUs on the machine are none of our business.)
 */
export async function qemuPids(marker = join(tmpdir(), TEMP_PREFIX)): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const comm = (await readFile(`/proc/${entry}/comm`, 'utf8')).trim();
      if (!comm.startsWith('qemu-system')) continue;
      const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.includes(marker)) pids.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return pids;
}

/**
 * PIDs of processes that `isOurs(pid)` picks and that share our temp folder (they inherit
 * TMPDIR): another run on the machine with its own TMPDIR is not ours to judge.
 */
async function pidsOfThisRun(isOurs: (pid: string) => Promise<boolean>): Promise<number[]> {
  const pids: number[] = [];
  const ours = tmpdir().replace(/\/+$/, '');
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (!(await isOurs(entry))) continue;
      const env = (await readFile(`/proc/${entry}/environ`, 'utf8')).split('\0');
      const tmp = env.find((v) => v.startsWith('TMPDIR='))?.slice('TMPDIR='.length) ?? '/tmp';
      if (tmp.replace(/\/+$/, '') === ours) pids.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return pids;
}

/** Lab switch data planes (miglab-switchd) of this run. */
export function switchdPids(): Promise<number[]> {
  return pidsOfThisRun(async (pid) => (await readFile(`/proc/${pid}/comm`, 'utf8')).trim() === 'miglab-switchd');
}

/** `miglab agent` processes of this run. */
export function agentPids(): Promise<number[]> {
  return pidsOfThisRun(async (pid) => {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    const bin = argv.findIndex((a) => a.endsWith('miglab.mjs'));
    return bin >= 0 && argv[bin + 1] === 'agent' && argv[bin + 2] !== 'token';
  });
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** MigLab temp dirs (runtime dirs, probes, test dirs) currently in the temp folder. */
export async function miglabTempDirs(): Promise<string[]> {
  return (await readdir(tmpdir())).filter((n) => n.startsWith(TEMP_PREFIX)).sort();
}

export interface Snapshot {
  qemu: number[];
  switchd: number[];
  agents: number[];
  tempDirs: string[];
  /** MigLab network namespaces and their links (ml* names). */
  netns: string[];
}

export async function snapshot(): Promise<Snapshot> {
  return { qemu: await qemuPids(), switchd: await switchdPids(), agents: await agentPids(), tempDirs: await miglabTempDirs(), netns: await netnsLeftovers() };
}

/** What exists now that did not exist at `before`. */
export async function leakedSince(before: Snapshot): Promise<Snapshot> {
  const now = await snapshot();
  return {
    qemu: now.qemu.filter((p) => !before.qemu.includes(p)),
    switchd: now.switchd.filter((p) => !before.switchd.includes(p)),
    agents: now.agents.filter((p) => !before.agents.includes(p)),
    netns: now.netns.filter((x) => !before.netns.includes(x)),
    tempDirs: now.tempDirs.filter((d) => !before.tempDirs.includes(d)),
  };
}
