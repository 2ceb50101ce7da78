// The crash watch: which console lines are a kernel crash (real Debian 6.1 oopses and panics, and
// ordinary output that only mentions the words), and watchGuestCrash over a real QMP socket (a
// FakeQmpServer sends GUEST_PANICKED) and a real console stream.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { duplexPair, type Duplex } from 'node:stream';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  consoleTail,
  crashWords,
  kernelCrashLine,
  kernelCrashLines,
  watchGuestCrash,
  type CrashWatchedGuest,
  type GuestCrash,
} from '../../electron/engine/migration/crash-watch';
import { GuestConsole } from '../../electron/engine/hosts/console';
import type { ExitInfo } from '../../electron/engine/qemu/process';
import { QmpClient } from '../../electron/engine/qmp/client';
import { FakeQmpServer, sleep, type FakeQmpConnection } from '../helpers/fake-qmp-server';

/** Destination consoles MigLab captured on the build machine (QEMU 7.2's TCG bug, Debian 6.1.0-57). */
const captured = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'tcg-crashes.json'), 'utf8')) as Record<
  string,
  { result: { reason: string; destinationConsoleTail: string | null } }
>;
const OOPS_AND_PANIC = captured['oops-and-panic']!.result.destinationConsoleTail!;
const OOPS_THEN_SILENT = captured['oops-then-silent']!.result.destinationConsoleTail!;

/** The lab guest's console when `echo c > /proc/sysrq-trigger` panicked it (QEMU 10.0.2, 6.1.0-57-amd64), cut short. */
const SYSRQ_PANIC =
  "p1:/# \x1b[6necho c > /proc/sysrq-trigger\r\n" +
  '[    3.066156] sysrq: Trigger a crash\r\n' +
  '[    3.067831] Kernel panic - not syncing: sysrq triggered crash\r\n' +
  '[    3.068285] CPU: 0 PID: 111 Comm: sh Not tainted 6.1.0-57-amd64 #1  Debian 6.1.192-3\r\n' +
  '[    3.069168] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014\r\n' +
  '[    3.071168] Call Trace:\r\n' +
  '[    3.079027]  <TASK>\r\n' +
  '[    3.079487]  dump_stack_lvl+0x44/0x5c\r\n' +
  '[    3.080018]  panic+0x118/0x2f4\r\n' +
  '[    3.080148]  ? _printk+0x68/0x83\r\n' +
  '[    3.080289]  sysrq_handle_crash+0x16/0x20\r\n' +
  '[    3.080471]  __handle_sysrq.cold+0x44/0x11c\r\n' +
  '[    3.080642]  write_sysrq_trigger+0x24/0x40\r\n';

/** A lab guest's console from boot to a person's typing: nothing here is a crash. */
const ORDINARY =
  "miglab: guest p1 up\r\n\r\n\r\nBusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) built-in shell (ash)\r\n" +
  "Enter 'help' for a list of built-in commands.\r\n\r\n" +
  'p1:/# \x1b[6necho Kernel panic - not syncing: Oops: BUG: general protection fault\r\n' +
  'said Kernel panic - not syncing\r\n' +
  "p1:/# \x1b[6nI panic, oops, bug: don't panic\r\n" +
  "sh: I: not found\r\n" +
  'p1:/# \x1b[6ngrep -r "Fatal exception" /etc\r\n' +
  '/etc/notes: after a Fatal exception the kernel stops\r\n' +
  '[   40.120034] traps: sh[131] general protection fault ip:47b7a0 sp:7ffcca728958 error:0 in busybox[401000+11e000]\r\n' +
  '[   41.002211] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [labload:108]\r\n' +
  '[   42.300101] BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 31s!\r\n' +
  '[   43.100000] sysrq: Show Memory\r\n';

describe('kernel crash lines', () => {
  it("are found in a real oops that ends in a panic, in the kernel's order", () => {
    expect(kernelCrashLines(OOPS_AND_PANIC)).toEqual([
      'BUG: unable to handle page fault for address: ffff8880061f9840',
      'Oops: 0011 [#1] PREEMPT SMP NOPTI',
      'Kernel panic - not syncing: Attempted to kill the idle task!',
    ]);
  });

  it('are found in a real oops the kernel survived, and in a sysrq panic', () => {
    expect(kernelCrashLines(OOPS_THEN_SILENT)).toEqual([
      'BUG: kernel NULL pointer dereference, address: 0000000000000000',
      'Oops: 0010 [#1] PREEMPT SMP NOPTI',
    ]);
    expect(kernelCrashLines(SYSRQ_PANIC)).toEqual(['Kernel panic - not syncing: sysrq triggered crash']);
  });

  it('count without a timestamp at the start of a line, and after a prompt when the timestamp is there', () => {
    expect(kernelCrashLine('general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI')).toMatch(/^general protection fault/);
    expect(kernelCrashLine('p1:/# \x1b[6n[   12.558812] Oops: 0002 [#1] PREEMPT SMP NOPTI\r')).toBe('Oops: 0002 [#1] PREEMPT SMP NOPTI');
    expect(kernelCrashLine('[ 7.1] kernel BUG at fs/ext4/inode.c:1234!')).toBe('kernel BUG at fs/ext4/inode.c:1234!');
    expect(kernelCrashLine('[    9.000001] Unable to handle kernel NULL pointer dereference at virtual address 0000000000000008')).not.toBeNull();
    expect(kernelCrashLine('[    9.000002] Internal error: Oops: 0000000096000004 [#1] SMP')).not.toBeNull();
  });

  it('are not found in ordinary output that only mentions the words, nor in lockup reports', () => {
    expect(kernelCrashLines(ORDINARY)).toEqual([]);
    for (const line of ORDINARY.split('\n')) expect(kernelCrashLine(line)).toBeNull();
  });
});

describe('crashWords and consoleTail (moved from the migration job, same behaviour)', () => {
  it("pick the last two lines that explain a crash, as MigLab's captured result says", () => {
    const said = captured['oops-and-panic']!.result.reason;
    expect(said).toContain(`The guest's last words: ${crashWords(OOPS_AND_PANIC)!}`);
    expect(crashWords(OOPS_AND_PANIC)).toBe(
      '[   12.558812] Oops: 0011 [#1] PREEMPT SMP NOPTI / [   12.608663] Kernel panic - not syncing: Attempted to kill the idle task!',
    );
    expect(captured['oops-then-silent']!.result.reason).toContain(`The guest's last words: ${crashWords(OOPS_THEN_SILENT)!}`);
  });

  it('fall back to the last two lines, and to null for an empty console', () => {
    expect(crashWords('one\r\n\x1b[1mtwo\x1b[0m\r\nthree\r\n')).toBe('two / three');
    expect(crashWords('\r\n\r\n')).toBeNull();
    expect(crashWords('x'.repeat(1000))).toHaveLength(400);
  });

  it('consoleTail drops escape sequences and keeps the last characters', () => {
    expect(consoleTail('a\x1b[6nb\x1b[1;31mc')).toBe('abc');
    expect(consoleTail('0123456789', 4)).toBe('6789');
    expect(consoleTail('y'.repeat(20_000))).toHaveLength(16_000);
  });
});

interface Rig {
  guest: CrashWatchedGuest;
  conn: FakeQmpConnection;
  console: GuestConsole;
  /** The QEMU end of the console stream: what is written here is the guest printing. */
  serial: Duplex;
  exit(): void;
  crashes: GuestCrash[];
  watch(settleMs: number): () => void;
}

/** A guest of real parts: a QmpClient on a FakeQmpServer's socket and a GuestConsole on a stream. */
async function rig(): Promise<Rig> {
  const server = await FakeQmpServer.create();
  const client = new QmpClient({ defaultTimeoutMs: 2000 });
  const console = new GuestConsole();
  const [ours, serial] = duplexPair();
  onTestFinished(async () => {
    console.close();
    serial.destroy();
    await client.disconnect();
    await server.close();
  });
  const connP = server.nextConnection();
  await client.connect(server.path);
  await console.attach(ours);
  let exit!: (e: ExitInfo) => void;
  const exited = new Promise<ExitInfo>((resolve) => (exit = resolve));
  const guest: CrashWatchedGuest = { qmp: client, console, exited };
  const crashes: GuestCrash[] = [];
  return {
    guest,
    conn: await connP,
    console,
    serial,
    exit: () => exit({ code: 0, signal: null, stderrTail: '', expected: false }),
    crashes,
    watch: (settleMs) => watchGuestCrash(guest, (c) => crashes.push(c), { settleMs }),
  };
}

/** Writes console bytes and waits until the GuestConsole has them. */
async function print(r: Rig, text: string): Promise<void> {
  const got = r.console.waitFor(text.slice(-12), 2000);
  r.serial.write(text);
  await got;
}

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error('timed out');
    await sleep(5);
  }
}

describe('watchGuestCrash', () => {
  it('reports a panic as pvpanic when GUEST_PANICKED follows the console lines, with their words', async () => {
    const r = await rig();
    r.watch(2000);
    const before = performance.now();
    // The panic line arrives in two pieces, as a serial console delivers it.
    await print(r, SYSRQ_PANIC.slice(0, 120));
    await print(r, SYSRQ_PANIC.slice(120));
    r.conn.event('GUEST_PANICKED', { action: 'poweroff' });
    await until(() => r.crashes.length > 0);
    expect(performance.now() - before).toBeLessThan(1500); // the event, not the 2 s settle, ended the wait
    expect(r.crashes).toEqual([{ source: 'pvpanic', words: 'Kernel panic - not syncing: sysrq triggered crash', atMs: expect.any(Number) }]);
    expect(r.crashes[0]!.atMs).toBeGreaterThan(before);
  });

  it('reports console crash lines after the settle time when no event comes, dated when they arrived', async () => {
    const r = await rig();
    r.watch(150);
    const before = performance.now();
    await print(r, OOPS_THEN_SILENT);
    const printed = performance.now();
    await sleep(60);
    expect(r.crashes).toEqual([]); // still settling
    await until(() => r.crashes.length > 0);
    expect(r.crashes).toEqual([
      {
        source: 'console',
        words: 'BUG: kernel NULL pointer dereference, address: 0000000000000000 / Oops: 0010 [#1] PREEMPT SMP NOPTI',
        atMs: expect.any(Number),
      },
    ]);
    expect(r.crashes[0]!.atMs).toBeGreaterThanOrEqual(before);
    expect(r.crashes[0]!.atMs).toBeLessThanOrEqual(printed);
  });

  it('reports console crash lines at once when QEMU exits (a panic without the driver)', async () => {
    const r = await rig();
    r.watch(10_000);
    await print(r, OOPS_AND_PANIC);
    const exitAt = performance.now();
    r.exit();
    await until(() => r.crashes.length > 0, 1000);
    expect(performance.now() - exitAt).toBeLessThan(500);
    expect(r.crashes).toHaveLength(1);
    expect(r.crashes[0]).toMatchObject({ source: 'console', words: expect.stringMatching(/^BUG: unable to handle page fault.* \/ Oops: 0011 .* \/ Kernel panic - not syncing: Attempted to kill the idle task!$/) });
  });

  it('a panic line the kernel never ended still counts once QEMU exits', async () => {
    const r = await rig();
    r.watch(10_000);
    await print(r, '[    3.067831] Kernel panic - not syncing: sysrq triggered');
    r.exit();
    await until(() => r.crashes.length > 0, 1000);
    expect(r.crashes[0]).toMatchObject({ source: 'console', words: 'Kernel panic - not syncing: sysrq triggered' });
  });

  it('reports GUEST_PANICKED alone, saying the console showed nothing', async () => {
    const r = await rig();
    r.watch(50);
    r.conn.event('GUEST_PANICKED', { action: 'pause' });
    await until(() => r.crashes.length > 0);
    expect(r.crashes).toEqual([{ source: 'pvpanic', words: expect.stringContaining('console showed no crash lines'), atMs: expect.any(Number) }]);
  });

  it('ignores what the console printed before the watch began, and ordinary output after', async () => {
    const r = await rig();
    await print(r, OOPS_AND_PANIC);
    r.watch(30);
    await print(r, ORDINARY);
    r.exit();
    await sleep(150);
    expect(r.crashes).toEqual([]);
  });

  it('fires once, and after it unsubscribes stays silent and leaves no listener behind', async () => {
    const r = await rig();
    const listeners = r.console.listenerCount('data');
    r.watch(30);
    expect(r.console.listenerCount('data')).toBe(listeners + 1);
    r.conn.event('GUEST_PANICKED', { action: 'poweroff' });
    await until(() => r.crashes.length > 0);
    await print(r, SYSRQ_PANIC);
    r.conn.event('GUEST_PANICKED', { action: 'poweroff' });
    await sleep(100);
    expect(r.crashes).toHaveLength(1);
    expect(r.console.listenerCount('data')).toBe(listeners);

    const quiet = await rig();
    const stop = quiet.watch(30);
    stop();
    expect(quiet.console.listenerCount('data')).toBe(listeners);
    await print(quiet, SYSRQ_PANIC);
    quiet.conn.event('GUEST_PANICKED', { action: 'poweroff' });
    quiet.exit();
    await sleep(100);
    expect(quiet.crashes).toEqual([]);
  });
});
