/**
 * Notices a guest whose kernel crashed, whether or not it runs labload: QEMU's GUEST_PANICKED
 * (the guest's pvpanic driver reports a panic, see qemu/argv.ts) and kernel oops or panic lines on
 * its console.
 */
import type { Guest } from '../hosts/host';

export interface GuestCrash {
  /** pvpanic: QEMU sent GUEST_PANICKED. console: the console showed kernel crash lines. */
  source: 'pvpanic' | 'console';
  /** The crash lines the console showed (what happened, in the kernel's words), or a sentence when it showed none. */
  words: string;
  /** performance.now() when the first sign arrived (the first crash line, or the event). */
  atMs: number;
}

export interface CrashWatchOptions {
  /**
   * How long console crash lines wait before they are reported. A panicking kernel prints its
   * panic line before it calls pvpanic, and QEMU's GUEST_PANICKED follows (measured under TCG: 20 ms
   * after the line), or QEMU exits (panic=-1's reboot, ended by -no-reboot): either ends the wait at
   * once. The wait also lets a whole oops print, so the words say what happened. Default 500 ms.
   */
  settleMs?: number;
}

const ESCAPES = /\x1b\[[0-9;?]*[A-Za-z]/g;

/** A printk timestamp, "[   12.558812] ": the kernel's own mark on every console line it prints. */
const STAMP = String.raw`\[\s*\d+\.\d+\]\s*`;

/**
 * The words x86 Linux (and arm64's for the two marked) starts an oops or panic line with.
 * `BUG:` leaves out the lockup watchdogs: they report a stall (what TCG on a busy host or a long
 * pause can cause), and the kernel carries on.
 */
const CRASH_WORDS = [
  'Kernel panic - not syncing',
  'Oops:',
  'Internal error: Oops', // arm64
  String.raw`BUG:(?! (?:soft|workqueue) lockup)`,
  'kernel BUG at',
  'general protection fault',
  'Fatal exception',
  'Unable to handle kernel', // arm64 and older x86
].join('|');

/**
 * A kernel crash line: the words at the start of a line, or right after a printk timestamp (a
 * kernel line printed in the middle of one of the shell's, after a prompt). Anchored and
 * case-sensitive because the kernel always starts these lines with them, while ordinary output
 * has them inside a line: a command typed at a prompt ("panic", "Oops" after the prompt), a
 * program's message that mentions them, and `traps: sh[1] general protection fault ip:...` (a
 * process's crash, which the kernel survives) do not count. Not told apart: a program printing
 * the kernel's exact wording at the start of a line, or dmesg showing an old oops again.
 */
const CRASH_LINE = new RegExp(String.raw`(?:^|${STAMP})((?:${CRASH_WORDS}).*)$`);

/** Longest unfinished line kept while waiting for its end (a stream with no newline stays bounded). */
const MAX_LINE = 4096;
/** Console text kept after the watch starts, for the words. */
const MAX_SEEN = 64 * 1024;
const MAX_WORDS = 400;

/** The crash part of one console line ("Oops: 0011 [#1] ..."), or null when it is not a kernel crash line. */
export function kernelCrashLine(line: string): string | null {
  const m = CRASH_LINE.exec(line.replace(ESCAPES, '').replace(/\r/g, '').trimEnd());
  return m ? m[1]! : null;
}

/** Every kernel crash line in a console text, in order, each once, without timestamps. */
export function kernelCrashLines(console: string): string[] {
  const out: string[] = [];
  for (const line of console.split('\n')) {
    const hit = kernelCrashLine(line);
    if (hit && !out.includes(hit)) out.push(hit);
  }
  return out;
}

/** What a crash report says: the first crash lines (the first says what went wrong), at most 400 characters. */
function wordsOf(console: string): string | null {
  const lines = kernelCrashLines(console).slice(0, 3);
  return lines.length ? lines.join(' / ').slice(0, MAX_WORDS) : null;
}

/** The last lines a guest printed that explain a crash (a kernel panic, an oops). */
export function crashWords(console: string): string | null {
  const lines = console.split('\n').map((l) => l.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').trim()).filter(Boolean);
  const panic = lines.filter((l) => /panic|Oops|BUG:|general protection|Fatal exception/i.test(l));
  const pick = panic.length ? panic.slice(-2) : lines.slice(-2);
  return pick.length ? pick.join(' / ').slice(0, 400) : null;
}

/** A console's last 16 KB, escape sequences removed: room for a whole kernel oops and its panic. */
export function consoleTail(console: string, maxChars = 16_000): string {
  return console.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').slice(-maxChars);
}

/** What the watch needs of a guest (a Guest of any host has it). */
export type CrashWatchedGuest = Pick<Guest, 'qmp' | 'console' | 'exited'>;

/**
 * Calls `onCrash` once when the guest's kernel crashes: at once on GUEST_PANICKED; on console
 * crash lines printed after this call, once `settleMs` has passed or QEMU has exited, whichever
 * is first (a GUEST_PANICKED in that time makes it a pvpanic crash). Returns the unsubscribe.
 */
export function watchGuestCrash(
  guest: CrashWatchedGuest,
  onCrash: (crash: GuestCrash) => void,
  opts: CrashWatchOptions = {},
): () => void {
  const settleMs = opts.settleMs ?? 500;
  let seen = '';
  let line = '';
  let firstLineAt: number | null = null;
  let timer: NodeJS.Timeout | null = null;
  let done = false;

  const fire = (source: GuestCrash['source'], atMs: number) => {
    if (done) return;
    stop();
    const words =
      wordsOf(seen) ??
      (source === 'pvpanic' ? "the guest's kernel reported a panic through pvpanic; its console showed no crash lines" : '');
    onCrash({ source, words, atMs });
  };

  const onData = (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    seen = (seen + text).slice(-MAX_SEEN);
    if (firstLineAt !== null) return; // already waiting: `seen` gathers the rest of the oops
    const parts = (line + text).split('\n');
    line = parts.pop()!.slice(-MAX_LINE);
    // The unfinished line counts too: QEMU may exit before the kernel ends it.
    if (![...parts, line].some((l) => kernelCrashLine(l) !== null)) return;
    firstLineAt = performance.now();
    timer = setTimeout(() => fire('console', firstLineAt!), settleMs);
  };

  const offPanic = guest.qmp.onEvent('GUEST_PANICKED', (ev) => fire('pvpanic', ev.receivedAt));
  guest.console.on('data', onData);
  void guest.exited.then(
    () => {
      if (firstLineAt !== null) fire('console', firstLineAt);
    },
    () => {},
  );

  function stop(): void {
    done = true;
    if (timer) clearTimeout(timer);
    timer = null;
    offPanic();
    guest.console.off('data', onData);
  }
  return stop;
}
