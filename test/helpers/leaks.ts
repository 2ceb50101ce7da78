import { readdir, readFile, readlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { TEMP_PREFIX } from '../../electron/engine/util/fs';
import { netnsLeftovers, otherNamespaces } from './netns-leaks';

/** One process as /proc shows it. */
interface Proc {
  pid: number;
  comm: string;
  argv: string[];
  /** The file it runs (/proc/PID/exe); '' when it cannot be read. */
  exe: string;
  /** Its TMPDIR ('/tmp' when unset, '' when unreadable): processes inherit it, so it tells whose run a process is. */
  tmp: string;
}

const trimSlash = (p: string) => p.replace(/\/+$/, '') || '/';

/** A zombie has ended; it only waits for its parent to collect its exit status. */
async function isZombie(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return / Z /.test(stat.slice(stat.lastIndexOf(')') + 1, stat.lastIndexOf(')') + 4));
}

/** Whether a process runs: not gone, and not a zombie either. */
export async function processRuns(pid: number): Promise<boolean> {
  return pidAlive(pid) && !(await isZombie(pid));
}

async function readProc(pid: number): Promise<Proc | null> {
  try {
    if (await isZombie(pid)) return null;
    const [comm, cmdline] = await Promise.all([readFile(`/proc/${pid}/comm`, 'utf8'), readFile(`/proc/${pid}/cmdline`, 'utf8')]);
    // Another user's environment and executable cannot be read: such a process is no run's of ours.
    const environ = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => null);
    const exe = await readlink(`/proc/${pid}/exe`).catch(() => '');
    const tmp = environ === null ? '' : trimSlash(environ.split('\0').find((v) => v.startsWith('TMPDIR='))?.slice('TMPDIR='.length) || '/tmp');
    return { pid, comm: comm.trim(), argv: cmdline.split('\0').filter(Boolean), exe, tmp };
  } catch {
    return null; // the process ended while we looked
  }
}

async function processes(): Promise<Proc[]> {
  const pids = (await readdir('/proc')).filter((e) => /^\d+$/.test(e)).map(Number);
  return (await Promise.all(pids.map(readProc))).filter((p): p is Proc => p !== null);
}

/** The command line of a process, for a report; null once it has gone. */
export async function commandLine(pid: number): Promise<string | null> {
  const p = await readProc(pid);
  return p ? p.argv.join(' ') : null;
}

/** Whether a process shares this process's temp folder, i.e. belongs to this run; false once it has gone. */
export async function sharesOurTempFolder(pid: number): Promise<boolean> {
  return (await readProc(pid))?.tmp === trimSlash(tmpdir());
}

/**
 * PIDs of the QEMU processes MigLab started: those whose command line points into a MigLab
 * temp dir, or into `marker` when given. (Other QEMUs on the machine are none of our business.)
 */
export async function qemuPids(marker = join(tmpdir(), TEMP_PREFIX)): Promise<number[]> {
  return (await processes()).filter((p) => isQemu(p) && p.argv.join('\0').includes(marker)).map((p) => p.pid);
}

const isQemu = (p: Proc) => p.comm.startsWith('qemu-system');

/** The `miglab` subcommand a node process runs (scripts/miglab.mjs, or electron/cli/main.ts through tsx); null for any other process. */
function miglabCommand(p: Proc): string[] | null {
  const bin = p.argv.findIndex((a) => a.endsWith('scripts/miglab.mjs') || a.endsWith('electron/cli/main.ts'));
  return bin >= 0 ? p.argv.slice(bin + 1) : null;
}

const isAgent = (p: Proc) => {
  const cmd = miglabCommand(p);
  return cmd !== null && cmd[0] === 'agent' && cmd[1] !== 'token';
};

/** The kinds of process a run may leave behind, each picked among the processes of this run. */
const KINDS = {
  qemu: isQemu,
  switchd: (p: Proc) => p.comm === 'miglab-switchd',
  agents: isAgent,
  /** Every other `miglab` process: web, start, demo, migrate, recover, guest boot... */
  cli: (p: Proc) => miglabCommand(p) !== null && !isAgent(p),
  /** Chromium, its helpers (zygote, renderers, GPU) and its crash handler. */
  chromium: (p: Proc) => /^(chromium|chrome|chrome_crashpad_handler|headless_shell)$/.test(basename(p.exe)),
};

type ProcessKind = keyof typeof KINDS;

/**
 * Processes of this run by kind: those that share our temp folder (they inherit TMPDIR; the
 * summary reporter gives every run its own), and QEMUs whose command line points into one of our
 * MigLab temp dirs. Another run on the machine, with another TMPDIR, is not ours to judge.
 */
async function processesOfThisRun(): Promise<Record<ProcessKind, number[]>> {
  const ours = trimSlash(tmpdir());
  const marker = join(ours, TEMP_PREFIX);
  const out = { qemu: [], switchd: [], agents: [], cli: [], chromium: [] } as Record<ProcessKind, number[]>;
  for (const p of await processes()) {
    if (p.pid === process.pid) continue;
    const mine = p.tmp === ours || (isQemu(p) && p.argv.join('\0').includes(marker));
    if (!mine) continue;
    for (const kind of Object.keys(KINDS) as ProcessKind[]) {
      if (KINDS[kind](p)) {
        out[kind].push(p.pid);
        break;
      }
    }
  }
  return out;
}

/** Lab switch data planes (miglab-switchd) of this run. */
export async function switchdPids(): Promise<number[]> {
  return (await processesOfThisRun()).switchd;
}

/** `miglab agent` processes of this run. */
export async function agentPids(): Promise<number[]> {
  return (await processesOfThisRun()).agents;
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

/**
 * What a tool keeps in the temp folder on purpose, for the next process to reuse, and so not a
 * leak: tsx's transform cache (tsx-UID), made by the `miglab` processes the tests start. (Chromium
 * and playwright remove their profile and artifact dirs when the browser is closed.)
 */
const TOOL_CACHES = [/^tsx-\d+$/];

/** Everything else in the temp folder that is not a MigLab temp dir. */
export async function otherTempEntries(): Promise<string[]> {
  return (await readdir(tmpdir())).filter((n) => !n.startsWith(TEMP_PREFIX) && !TOOL_CACHES.some((re) => re.test(n))).sort();
}

export interface Snapshot {
  qemu: number[];
  switchd: number[];
  agents: number[];
  /** `miglab` processes other than agents (web, start, demo, migrate, recover...). */
  cli: number[];
  chromium: number[];
  /** MigLab temp dirs (miglab-*) in the temp folder. */
  tempDirs: string[];
  /** Anything else in the temp folder, but for the tool caches above. */
  otherTemp: string[];
  /** This temp folder's network namespaces and links (netnsRunTag() prefix). */
  netns: string[];
  /** Every other network namespace on the machine (doctor's miglab-doctor-PID, any untagged one). */
  otherNetns: string[];
}

export async function snapshot(): Promise<Snapshot> {
  const [procs, tempDirs, otherTemp, netns, otherNetns] = await Promise.all([processesOfThisRun(), miglabTempDirs(), otherTempEntries(), netnsLeftovers(), otherNamespaces()]);
  return { ...procs, tempDirs, otherTemp, netns, otherNetns };
}

/** What exists now that did not exist at `before`. */
export async function leakedSince(before: Snapshot): Promise<Snapshot> {
  const now = await snapshot();
  const fresh = <T>(key: keyof Snapshot) => (now[key] as T[]).filter((x) => !(before[key] as T[]).includes(x));
  return {
    qemu: fresh('qemu'),
    switchd: fresh('switchd'),
    agents: fresh('agents'),
    cli: fresh('cli'),
    chromium: fresh('chromium'),
    tempDirs: fresh('tempDirs'),
    otherTemp: fresh('otherTemp'),
    netns: fresh('netns'),
    otherNetns: fresh('otherNetns'),
  };
}
