// A guest whose kernel panics, on real QEMU: the pvpanic device and the lab guest's driver make
// QEMU send GUEST_PANICKED, the crash watch reports it with the console's words, and QEMU then
// exits (its default panic action). A guest without the driver is still caught by its console.
import { existsSync } from 'node:fs';
import { mkdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { watchGuestCrash, type GuestCrash } from '../../electron/engine/migration/crash-watch';
import type { Guest } from '../../electron/engine/hosts/host';
import { LocalHost } from '../../electron/engine/hosts/local/local-host';
import { buildQemuArgv } from '../../electron/engine/qemu/argv';
import { findQemu } from '../../electron/engine/qemu/binary';
import { QemuProcess } from '../../electron/engine/qemu/process';
import { parseGuestSpec } from '../../electron/engine/qemu/spec';
import { QmpClient, quit, type QmpEvent } from '../../electron/engine/qmp';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay, withTimeout } from '../../electron/engine/util/time';
import { expectGuestGone, expectScopeClean, requireLabGuest } from '../helpers/lab';

const SYSTEM_QEMU = '/usr/bin/qemu-system-x86_64';
const PANIC_LINE = 'Kernel panic - not syncing: sysrq triggered crash';

let work: string;
let runtimeDir: string;
let host: LocalHost;

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-panic');
  runtimeDir = join(work, 'host-a');
  host = new LocalHost({ name: 'host-a', runtimeDir });
});

afterAll(async () => {
  await host?.dispose();
  await expectScopeClean(runtimeDir);
  await removeDir(work);
});

/**
 * Types a command at the guest's shell and waits for `marker` in what it prints; returns what it
 * printed after the echo of the command line.
 */
async function shell(guest: Guest, command: string, marker: string): Promise<string> {
  const out = guest.console.waitFor(marker, 15_000);
  guest.console.write(`${command}\n`);
  const seen = await out;
  return seen.slice(seen.indexOf('\n') + 1);
}

interface Panicked {
  crash: GuestCrash;
  events: QmpEvent[];
}

/**
 * Panics the guest through its console (sysrq-trigger works whatever kernel.sysrq says) with a
 * crash watch on, and waits for the crash report and for QEMU to end.
 */
async function panic(guest: Guest): Promise<Panicked> {
  const events: QmpEvent[] = [];
  const offEvents = guest.qmp.onEvent('*', (ev) => events.push(ev));
  // 'exit' comes once the host has closed the guest's channels and removed its files.
  const ended = new Promise<void>((resolve) => guest.on('exit', () => resolve()));
  let stopWatch = () => {};
  const crash = new Promise<GuestCrash>((resolve) => (stopWatch = watchGuestCrash(guest, resolve)));
  try {
    // Ordinary output that mentions the words first: the watch must let it pass.
    await shell(guest, 'echo "said: Kernel panic - not syncing, Oops: BUG: general protection fault"; echo typed-$((40+2))', 'typed-42');
    const early = await Promise.race([crash, delay(800, null)]);
    expect(early).toBeNull();
    guest.console.write('echo c > /proc/sysrq-trigger\n');
    const got = await withTimeout(crash, 30_000, 'the crash watch reporting the panic');
    await withTimeout(ended, 15_000, 'QEMU ending after the panic');
    return { crash: got, events };
  } finally {
    stopWatch();
    offEvents();
  }
}

/** What every panicked lab guest shows: QEMU exited by itself, nothing left, its last words kept. */
function expectEndedByPanic(guest: Guest): void {
  expect(guest.exit).toMatchObject({ expected: false, code: 0 });
  expect(guest.state).toBe('failed');
  expectGuestGone(guest);
  // The engine can still read what the guest printed: the console's scrollback outlives QEMU.
  expect(guest.console.text()).toContain(PANIC_LINE);
}

describe('a lab guest that panics', () => {
  it('loads the pvpanic driver, and its panic reaches QEMU as GUEST_PANICKED, then QEMU exits', { timeout: 120_000 }, async () => {
    const guest = await host.startGuest({ name: 'panic1' });
    await guest.waitReady(60_000);
    // The driver is bound to QEMU's ISA device (ACPI QEMU0001).
    const bound = await shell(guest, 'ls /sys/bus/platform/drivers/pvpanic-mmio/; echo listed-$((1+1))', 'listed-2');
    expect(bound).toContain('QEMU0001:00');

    const { crash, events } = await panic(guest);
    const names = events.map((e) => e.event);
    expect(names).toContain('GUEST_PANICKED');
    expect(events.find((e) => e.event === 'GUEST_PANICKED')!.data).toMatchObject({ action: 'poweroff' });
    expect(events.find((e) => e.event === 'SHUTDOWN')!.data).toMatchObject({ guest: true, reason: 'guest-panic' });
    expect(names.indexOf('GUEST_PANICKED')).toBeLessThan(names.indexOf('SHUTDOWN'));
    expect(crash).toEqual({ source: 'pvpanic', words: PANIC_LINE, atMs: events.find((e) => e.event === 'GUEST_PANICKED')!.receivedAt });
    expectEndedByPanic(guest);
  });

  it('is still caught by its console words without the driver, and QEMU exits on the reboot', { timeout: 120_000 }, async () => {
    const guest = await host.startGuest({ name: 'panic2' });
    await guest.waitReady(60_000);
    const modules = await shell(guest, 'rmmod pvpanic_mmio pvpanic; cat /proc/modules; echo removed-$((2+2))', 'removed-4');
    expect(modules).toContain('virtio_pci'); // the list was printed
    expect(modules).not.toContain('pvpanic');

    const before = performance.now();
    const { crash, events } = await panic(guest);
    expect(events.map((e) => e.event)).not.toContain('GUEST_PANICKED');
    // panic=-1 reboots at once, and -no-reboot turns the reboot into QEMU's exit.
    expect(events.find((e) => e.event === 'SHUTDOWN')!.data).toMatchObject({ guest: true, reason: 'guest-reset' });
    expect(crash.source).toBe('console');
    expect(crash.words).toBe(PANIC_LINE);
    expect(crash.atMs).toBeGreaterThan(before);
    expectEndedByPanic(guest);
  });

  it(`panics the same way under the system QEMU (${SYSTEM_QEMU}, 7.2 on Debian 12)`, { timeout: 120_000 }, async (ctx) => {
    const lab = await findQemu();
    if (!existsSync(SYSTEM_QEMU) || lab.path === SYSTEM_QEMU) ctx.skip(); // the test above ran it already, or there is none
    const saved = process.env.MIGLAB_QEMU;
    process.env.MIGLAB_QEMU = SYSTEM_QEMU;
    let guest: Guest;
    try {
      guest = await host.startGuest({ name: 'panic3' });
    } finally {
      if (saved === undefined) delete process.env.MIGLAB_QEMU;
      else process.env.MIGLAB_QEMU = saved;
    }
    expect(await readlink(`/proc/${guest.pid}/exe`)).toBe(SYSTEM_QEMU);
    await guest.waitReady(60_000);
    const { crash, events } = await panic(guest);
    expect(events.find((e) => e.event === 'GUEST_PANICKED')!.data).toMatchObject({ action: 'poweroff' });
    expect(events.find((e) => e.event === 'SHUTDOWN')!.data).toMatchObject({ reason: 'guest-panic' });
    expect(crash).toMatchObject({ source: 'pvpanic', words: PANIC_LINE });
    expectEndedByPanic(guest);
  });
});

describe('the pvpanic device', () => {
  it('is accepted by the lab QEMU and the system QEMU on q35 and pc, at its ISA port', { timeout: 60_000 }, async () => {
    const binaries = [...new Set([(await findQemu()).path, ...(existsSync(SYSTEM_QEMU) ? [SYSTEM_QEMU] : [])])];
    const checked: string[] = [];
    for (const binary of binaries) {
      for (const machine of ['q35', 'pc']) {
        const dir = join(work, `probe-${checked.length}`);
        const sockets = { qmp: join(dir, 'qmp.sock'), console: join(dir, 'console.sock'), control: join(dir, 'control.sock') };
        await mkdir(dir, { recursive: true });
        // No kernel and -S: QEMU builds the machine and its devices, and no guest code runs.
        const argv = buildQemuArgv({ spec: parseGuestSpec({ name: 'probe', machine }), accel: 'tcg', sockets, startPaused: true, incoming: false });
        const proc = new QemuProcess(binary, argv);
        const qmp = new QmpClient({ name: `probe-${machine}` });
        try {
          await Promise.race([
            qmp.connect(sockets.qmp, { retryUntilMs: 15_000 }),
            proc.exited.then((e) => Promise.reject(new Error(`${binary} -machine ${machine} exited: ${e.stderrTail}`))),
          ]);
          const devices = await qmp.execute<Array<{ name: string; type: string }>>('qom-list', { path: '/machine/peripheral-anon' });
          const pvpanic = devices.find((d) => d.type === 'child<pvpanic>');
          expect(pvpanic, `${binary} ${machine}`).toBeDefined();
          const port = await qmp.execute<number>('qom-get', { path: `/machine/peripheral-anon/${pvpanic!.name}`, property: 'ioport' });
          expect(port).toBe(0x505);
          checked.push(`${binary} ${machine}`);
        } finally {
          await proc.stop({ quit: () => quit(qmp) });
          await qmp.disconnect();
          await removeDir(dir);
        }
      }
    }
    expect(checked).toHaveLength(binaries.length * 2);
  });
});
