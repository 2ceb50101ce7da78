// The leak check of a whole test run: what the run started or wrote and did not remove.
// Found, then reported (PIDs with command lines, paths, names), and only then cleaned up.
import { existsSync } from 'node:fs';
import { readdir, rm, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { netnsRunTag, removeNetnsLeftovers } from '../../electron/engine/network/netns';
import { commandLine, leakedSince, processRuns, sharesOurTempFolder, snapshot, type Snapshot } from './leaks';
import { deleteNamespace, doctorNamespacePid, namespacePids } from './netns-leaks';
import { otherRunTempFolders, type TestRunDirs } from './test-run';

/** Files under `dir` (relative paths) with their modification times; depth-limited. */
async function fileTimes(dir: string, depth = 4): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const walk = async (d: string, left: number): Promise<void> => {
    const entries = await readdir(d, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      const p = join(d, e.name);
      if (e.isDirectory() && left > 0) await walk(p, left - 1);
      else out.set(relative(dir, p), (await stat(p).catch(() => null))?.mtimeMs ?? 0);
    }
  };
  await walk(dir, depth);
  return out;
}

/** A half-built cache entry: the engine stages builds as .tmp-* (or FILE.PID.tmp) and moves old ones aside as *.old-*. */
const STAGING = /^\.tmp-|\.tmp$|\.old-/;

/** What the run started from: processes, temp folder, namespaces, and the user's own state and cache. */
export interface RunBaseline {
  snapshot: Snapshot;
  /** The user's state dir (~/.local/state/miglab): tests must never write there. */
  userStateDir: string;
  userState: Map<string, number>;
  /** The user's cache (~/.cache/miglab): the engine may fill it, but a test must not leave half-built entries. */
  userCacheDir: string;
  userCache: Map<string, number>;
  /** The run's own MIGLAB_STATE_DIR: a test that wrote there did not give itself its own. */
  runStateDir: string;
}

export async function takeBaseline(dirs: { userStateDir: string; userCacheDir: string; runStateDir: string }): Promise<RunBaseline> {
  return {
    ...dirs,
    snapshot: await snapshot(),
    userState: await fileTimes(dirs.userStateDir),
    userCache: await fileTimes(dirs.userCacheDir, 3),
  };
}

/** One thing left behind: how to name it in the report, and how to remove it (its result, for the report). */
export interface Leak {
  what: string;
  clean: () => Promise<string>;
}

async function killProcess(pid: number): Promise<string> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return `pid ${pid} had already gone`;
  }
  for (let i = 0; i < 50 && (await processRuns(pid)); i++) await new Promise((r) => setTimeout(r, 20));
  return (await processRuns(pid)) ? `pid ${pid} still runs after SIGKILL` : `killed pid ${pid}`;
}

const PROCESS_KINDS: Array<[keyof Snapshot, string]> = [
  ['qemu', 'QEMU'],
  ['switchd', 'lab switch (miglab-switchd)'],
  ['agents', 'miglab agent'],
  ['cli', 'miglab command'],
  ['chromium', 'Chromium'],
];

/** Processes of this run that still run, by kind, with their command lines. */
async function processLeaks(now: Snapshot): Promise<Leak[]> {
  const leaks: Leak[] = [];
  for (const [kind, label] of PROCESS_KINDS) {
    for (const pid of now[kind] as number[]) {
      const cmd = await commandLine(pid);
      if (cmd === null) continue; // ended on its own while we looked
      leaks.push({ what: `${label} process ${pid}: ${cmd}`, clean: () => killProcess(pid) });
    }
  }
  return leaks;
}

/**
 * This run's tagged namespaces and links; and of the other namespaces that appeared, those that
 * are this run's (doctor's, or holding this run's processes) or that nothing shows to be another's.
 */
async function namespaceLeaks(now: Snapshot, run: TestRunDirs): Promise<Leak[]> {
  const leaks: Leak[] = [];
  if (now.netns.length) {
    const tag = netnsRunTag();
    leaks.push({
      what: `this run's network namespaces and links (${tag}*): ${now.netns.join(', ')}`,
      clean: async () => `removed ${Object.values(await removeNetnsLeftovers(tag)).flat().join(', ') || 'nothing (already gone)'}`,
    });
  }
  // Labs of the other test runs on this machine carry their own temp folder's tag.
  const otherTags = otherRunTempFolders(run).map((t) => netnsRunTag(t));
  for (const name of now.otherNetns.filter((n) => !otherTags.some((t) => n.startsWith(t)))) {
    const doctorPid = doctorNamespacePid(name);
    const inside = await namespacePids(name);
    const ownersOfThisRun = (await Promise.all(inside.map(async (pid) => ((await sharesOurTempFolder(pid)) ? pid : null)))).filter((p) => p !== null);
    if (doctorPid !== null) {
      // An ended doctor's namespace is an orphan, whoever ran it; a running doctor's is its run's.
      const ended = !(await processRuns(doctorPid));
      if (ended || (await sharesOurTempFolder(doctorPid))) {
        leaks.push({
          what: `network namespace ${name} (made by miglab doctor, pid ${doctorPid}, ${ended ? 'which has ended' : 'still running'})`,
          clean: async () => (await deleteNamespace(name), `deleted namespace ${name}`),
        });
      }
    } else if (ownersOfThisRun.length) {
      leaks.push({
        what: `network namespace ${name} (untagged; this run's pids ${ownersOfThisRun.join(', ')} run in it)`,
        clean: async () => {
          for (const pid of ownersOfThisRun) await killProcess(pid);
          await deleteNamespace(name);
          return `killed pids ${ownersOfThisRun.join(', ')} and deleted namespace ${name}`;
        },
      });
    } else if (inside.length === 0) {
      // Nothing in it tells whose it is; another program on the machine may have just made it.
      leaks.push({ what: `network namespace ${name} (untagged, appeared during the run, empty)`, clean: async () => `left namespace ${name} alone: nothing shows it is this run's; if it is, remove it with "ip netns delete ${name}"` });
    }
    // Otherwise processes of another run live in it: that run's to judge.
  }
  return leaks;
}

/**
 * Files in the run's shared state dir; files that appeared in the user's state dir; half-built
 * entries that appeared in the user's cache. Anything else on the machine that runs MigLab writes
 * the user's dirs too, so what appeared there is reported but never removed.
 */
async function stateAndCacheLeaks(base: RunBaseline): Promise<Leak[]> {
  const leaks: Leak[] = [];
  const notOurs = (path: string) => async () => `left ${path} as it is: it may not be this run's; remove it if it is`;
  for (const file of (await fileTimes(base.runStateDir)).keys()) {
    const path = join(base.runStateDir, file);
    leaks.push({ what: `file left in the run's shared MIGLAB_STATE_DIR: ${path} (give the test its own state dir and remove it)`, clean: async () => (await rm(path, { force: true }), `removed ${path}`) });
  }
  for (const [file, mtime] of await fileTimes(base.userStateDir)) {
    const before = base.userState.get(file);
    if (before === mtime) continue;
    const path = join(base.userStateDir, file);
    leaks.push({
      what: `file ${before === undefined ? 'written' : 'changed'} in the user's state dir during the run: ${path} (by a test or miglab command without the run's MIGLAB_STATE_DIR, unless MigLab ran outside the tests)`,
      clean: notOurs(path),
    });
  }
  const halfBuilt = new Set<string>();
  for (const file of (await fileTimes(base.userCacheDir, 3)).keys()) {
    if (base.userCache.has(file)) continue;
    const parts = file.split('/');
    const staged = parts.findIndex((p) => STAGING.test(p));
    if (staged >= 0) halfBuilt.add(parts.slice(0, staged + 1).join('/'));
  }
  for (const entry of halfBuilt) {
    const path = join(base.userCacheDir, entry);
    if (existsSync(path)) leaks.push({ what: `half-built entry appeared in the user's cache during the run: ${path} (a build a test interrupted, unless one still runs)`, clean: notOurs(path) });
  }
  return leaks;
}

/** Everything the run left behind since `base`, each with its cleanup. Looks only; changes nothing. */
export async function findRunLeaks(base: RunBaseline, run: TestRunDirs): Promise<Leak[]> {
  const now = await leakedSince(base.snapshot);
  const temp = [...now.tempDirs, ...now.otherTemp].map((name): Leak => {
    const path = join(run.tmp, name);
    return { what: `temp ${name.startsWith('miglab-') ? 'dir' : 'entry'} ${path}`, clean: async () => (await rm(path, { recursive: true, force: true }), `removed ${path}`) };
  });
  return [...(await processLeaks(now)), ...temp, ...(await namespaceLeaks(now, run)), ...(await stateAndCacheLeaks(base))];
}
