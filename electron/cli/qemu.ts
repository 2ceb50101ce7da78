import { chooseAccelerator, findQemu, forgetQemuChoice, tracksTcgWritesExactly, type ChosenQemu } from '../engine/qemu/binary';
import { fetchPrivateQemu } from '../engine/qemu/private-qemu';
import { defaultCacheRoot } from '../engine/util/paths';
import { printJson, progress } from './output';

/** A QEMU that loses guest writes under TCG, with no better one chosen: the case QEMU 10 is fetched for. */
async function wantsPrivateQemu(q: ChosenQemu | null): Promise<boolean> {
  if (!q) return true;
  if (q.source !== 'system' || tracksTcgWritesExactly(q)) return false;
  return (await chooseAccelerator()).accel === 'tcg';
}

function describe(q: ChosenQemu): { path: string; version: string; source: string; reason: string } {
  return { path: q.path, version: q.version, source: q.source, reason: q.reason };
}

/**
 * `miglab qemu fetch [--if-needed] [--json]`: fetch QEMU 10 from Debian's bookworm-backports into
 * the cache (no root, /etc/apt untouched). With --if-needed (what set-up runs) it does nothing
 * when the lab already has a QEMU that does not lose writes, and a failed fetch is reported but
 * not fatal: the lab then runs on the system QEMU with pti=on.
 */
export async function qemuFetchCommand(opts: { json: boolean; ifNeeded: boolean }): Promise<number> {
  const before = await findQemu().catch(() => null);
  let fetchError: string | null = null;
  if (!opts.ifNeeded || (await wantsPrivateQemu(before))) {
    try {
      const got = await fetchPrivateQemu({ cacheRoot: defaultCacheRoot(), onProgress: (s) => progress('qemu', s) });
      progress('qemu', `QEMU ${got.version} (${got.debVersion}) is in ${got.dir}`);
    } catch (err) {
      fetchError = (err as Error).message;
      progress('qemu', `could not fetch QEMU 10: ${fetchError}`);
    }
    forgetQemuChoice();
  }
  const chosen = await findQemu().catch((err: Error) => err);
  if (opts.json) {
    printJson({ qemu: chosen instanceof Error ? null : describe(chosen), fetchError, error: chosen instanceof Error ? chosen.message : null });
  } else if (chosen instanceof Error) {
    progress('qemu', chosen.message);
  } else {
    progress('qemu', `the lab runs QEMU ${chosen.version} (${chosen.source}, ${chosen.path}): ${chosen.reason}`);
  }
  if (chosen instanceof Error) return 1;
  return fetchError && !opts.ifNeeded ? 1 : 0;
}

/** `miglab qemu which [--json]`: the QEMU the lab uses, where it came from and why. */
export async function qemuWhichCommand(opts: { json: boolean }): Promise<number> {
  const q = await findQemu();
  if (opts.json) printJson(describe(q));
  else console.log(`QEMU ${q.version} at ${q.path}\nsource: ${q.source}\nwhy: ${q.reason}`);
  return 0;
}
