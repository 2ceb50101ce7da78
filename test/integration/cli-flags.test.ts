// `miglab demo`'s guest, capability and network flags and `miglab web --host`, run as a user runs
// them: each flag must change what happens, and a flag that cannot work is refused with a sentence.
import { execFile } from 'node:child_process';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LabGuestImage } from '../../electron/engine/guest/image';
import { detectQemuCapabilities } from '../../electron/engine/qemu/capabilities';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { jsonOf, runMiglab, serveMiglab, type CliRun } from '../helpers/cli';
import { expectScopeClean, requireLabGuest } from '../helpers/lab';

const runFile = promisify(execFile);
const MiB = 2 ** 20;
/** A boot, a migration and the checks after it, on a loaded 2-core machine under TCG. */
const DEMO_TIMEOUT_MS = 150_000;

let image: LabGuestImage;
let work: string; // runtime dirs of every host the CLI makes: must end empty
let files: string; // the test's own files: disk image, journal
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  image = await requireLabGuest();
  work = await makeTempDir('it-cliflags');
  files = await makeTempDir('it-cliflags-files');
  env = { MIGLAB_RUNTIME_DIR: work, MIGLAB_STATE_DIR: join(files, 'state') };
});

afterAll(async () => {
  await expectScopeClean(work);
  await removeDir(work);
  await removeDir(files);
});

async function demo(args: string[]): Promise<{ run: CliRun; out: Record<string, any> }> {
  const run = await runMiglab(['demo', ...args, '--json'], env);
  return { run, out: jsonOf(run) };
}

/** A guest that went through checks only labload can make reports them as unknown, not as zeros. */
function expectNoLabloadFigures(out: Record<string, any>): void {
  expect(out.integrity).toBeNull();
  expect(out.workload).toBeNull();
  expect(out.guestDowntimeMs).toBeNull();
}

/**
 * A raw boot sector that writes `text` to COM1 (the guest's console, ttyS0) and halts: a custom
 * guest whose "boot" prints a ready pattern, with no OS to wait for.
 */
function bootSector(text: string): Buffer {
  const msg = Buffer.from(`${text}\r\n\0`, 'latin1');
  const code = Buffer.from([
    0xfa, //                  cli
    0x31, 0xc0, //            xor ax, ax
    0x8e, 0xd8, //            mov ds, ax
    0xbe, 0x16, 0x7c, //      mov si, 0x7c16 (msg, just after this code)
    0xba, 0xf8, 0x03, //      mov dx, 0x3f8 (COM1)
    0xac, //            next: lodsb
    0x84, 0xc0, //            test al, al
    0x74, 0x03, //            jz done
    0xee, //                  out dx, al
    0xeb, 0xf8, //            jmp next
    0xf4, //            done: hlt
    0xeb, 0xfd, //            jmp done
  ]);
  const sector = Buffer.alloc(512);
  Buffer.concat([code, msg]).copy(sector);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

describe('miglab demo flags', () => {
  it('--memory 192 --capability xbzrle --subnet 10.89.7.0/24: a 192 MiB guest, xbzrle on in both QEMUs, its NIC in that subnet', async () => {
    const { run, out } = await demo(['--memory', '192', '--capability', 'xbzrle', '--subnet', '10.89.7.0/24']);
    expect(run.code, `${out.reason} ${run.stderr}`).toBe(0);
    expect(out).toMatchObject({ status: 'completed', from: 'host-a', to: 'host-b' });
    // QEMU's RAM total: the 192 MiB of guest RAM plus its small ROM blocks (BIOS, option ROMs).
    expect(out.ramBytes).toBeGreaterThanOrEqual(192 * MiB);
    expect(out.ramBytes).toBeLessThan(196 * MiB);
    // What each QEMU said was on once the job had configured it: xbzrle, and events (always on).
    expect(out.capabilities).toEqual({ source: ['events', 'xbzrle'], destination: ['events', 'xbzrle'] });
    // The lab network in the asked subnet: the guest at .10, its MAC spelling it, the probe pinging it.
    expect(out.network).toMatchObject({ mac: '52:54:00:59:07:0a', ip: '10.89.7.10' });
    expect(out.network.probe.target).toBe('10.89.7.10');
    expect(out.network.probe.received).toBeGreaterThan(0);
    expect(out.network.macMoves).toEqual([expect.objectContaining({ mac: '52:54:00:59:07:0a', fromHost: 'host-a', toHost: 'host-b', cause: 'rarp' })]);
    expect(out.integrity).toMatchObject({ ok: true, bad: 0, heartbeatsContinue: true });
  }, DEMO_TIMEOUT_MS);

  it('refuses a capability this QEMU does not offer, naming it, and leaves the guest on host-a', async () => {
    const offered = (await detectQemuCapabilities()).migrationCapabilities;
    // compress and block were removed in QEMU 9.1; an older QEMU offers both, but no QEMU a made-up one.
    const missing = ['compress', 'block', 'x-teleport'].find((c) => !offered.includes(c))!;
    const { run, out } = await demo(['--capability', missing]);
    expect(run.code).toBe(1);
    expect(out).toMatchObject({ status: 'failed', failure: 'preflight', runningOn: 'host-a', capabilities: null });
    expect(out.reason).toMatch(new RegExp(`(does not offer|offers) ${missing}\\b`));
    expect(out.checks.find((c: { name: string }) => c.name === 'capabilities')).toMatchObject({ status: 'fail' });
    expect(out.phases.map((p: { name: string }) => p.name)).toEqual(['preflight']);
    expect(out.integrity).toMatchObject({ ok: true, bad: 0 }); // checked where it stayed
  }, DEMO_TIMEOUT_MS);

  it('--kernel --initrd --append --ready-pattern boots a custom guest from the given files and command line', async () => {
    // The lab guest's own kernel and initramfs, as a custom guest: its init prints the name it
    // finds on the command line, so the ready pattern can only appear if --append was used.
    const append = 'console=ttyS0 quiet panic=-1 miglab.name=custom-k7';
    const { run, out } = await demo(['--kernel', image.kernel, '--initrd', image.initrd, '--append', append, '--ready-pattern', 'guest custom-k7 up']);
    expect(run.code, `${out.reason} ${run.stderr}`).toBe(0);
    expect(out.status).toBe('completed');
    // Ready because its console printed the pattern, not because it had been up long enough.
    expect(out.checks.find((c: { name: string }) => c.name === 'guest-ready')).toMatchObject({ status: 'pass' });
    expect(out.capabilities).toEqual({ source: ['events'], destination: ['events'] });
    expect(typeof out.downtimeMs).toBe('number'); // QEMU measures that for any guest
    expect(out.passes.length).toBeGreaterThan(0);
    expectNoLabloadFigures(out);
  }, DEMO_TIMEOUT_MS);

  it('--disk with a qcow2 image made by qemu-img and a --ready-pattern its boot sector prints', async () => {
    const raw = join(files, 'boot.raw');
    const disk = join(files, 'boot.qcow2');
    await runFile('qemu-img', ['create', '-q', '-f', 'raw', raw, '1M']);
    const f = await open(raw, 'r+');
    await f.write(bootSector('MIGLAB-DISK-READY 4711'), 0, 512, 0);
    await f.close();
    await runFile('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, disk]);
    const { run, out } = await demo(['--disk', disk, '--ready-pattern', 'MIGLAB-DISK-READY 4711']);
    expect(run.code, `${out.reason} ${run.stderr}`).toBe(0);
    expect(out.status).toBe('completed');
    expect(out.checks.find((c: { name: string }) => c.name === 'guest-ready')).toMatchObject({ status: 'pass' });
    expect(out.checks.find((c: { name: string }) => c.name === 'disks')).toMatchObject({ status: 'pass', message: expect.stringContaining(`disk ${disk} itself (the same file: device `) });
    expect(typeof out.downtimeMs).toBe('number');
    expectNoLabloadFigures(out);
    // The guest never configures its NIC, so the probe got no reply: the network downtime is unknown.
    expect(out.network.networkDowntimeMs).toBeNull();
  }, DEMO_TIMEOUT_MS);

  it('--downtime-policy proxmox runs under that policy and says so, --measure-dirty-rate judges the idle guest first; an unknown policy is refused, naming the known ones', async () => {
    const { run, out } = await demo(['--downtime-policy', 'proxmox', '--measure-dirty-rate', '500']);
    expect(run.code, `${out.reason} ${run.stderr}`).toBe(0);
    expect(out.downtimePolicy).toMatchObject({ name: 'proxmox', startMs: 100 });
    // An idle guest, measured by QEMU over 500 ms: pre-copy converges at 1000 MB/s.
    expect(out.checks.find((c: { name: string }) => c.name === 'dirty-rate')).toMatchObject({ status: 'pass', message: expect.stringMatching(/QEMU/) });
    const bad = await runMiglab(['demo', '--downtime-policy', 'fast'], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--downtime-policy takes one of ramp, proxmox, nova, fixed (got "fast")');
  }, DEMO_TIMEOUT_MS);

  it('refuses --ready-pattern without a custom guest, and --initrd without --kernel', async () => {
    const pattern = await runMiglab(['demo', '--ready-pattern', 'login:'], env);
    expect(pattern.code).toBe(2);
    expect(pattern.stderr).toContain('--ready-pattern goes with --kernel or --disk');
    const initrd = await runMiglab(['demo', '--initrd', image.initrd], env);
    expect(initrd.code).toBe(2);
    expect(initrd.stderr).toContain('--initrd and --append go with --kernel');
  });
});

describe('miglab web --host', () => {
  it('--host 127.0.0.2 listens there only and prints its addresses with that host', async () => {
    const s = await serveMiglab(['web', '--host', '127.0.0.2', '--port', '0'], env, /Spectators \(read-only\) follow at \S+/);
    try {
      const url = new URL(/MigLab is open at (\S+)/.exec(s.out())![1]!);
      const spectator = new URL(/Spectators \(read-only\) follow at (\S+)/.exec(s.out())![1]!);
      expect(url.hostname).toBe('127.0.0.2');
      expect(spectator.host).toBe(url.host);
      expect(s.out()).not.toContain('anyone on the network'); // a loopback address is not the network
      expect((await fetch(`http://127.0.0.2:${url.port}/`)).status).toBe(401);
      expect((await fetch(url, { redirect: 'manual' })).status).toBe(303); // the token moves into a cookie
      // Bound to 127.0.0.2 alone: the same port on 127.0.0.1 has no listener.
      const other = await fetch(`http://127.0.0.1:${url.port}/`).then(() => 'answered', (e: Error & { cause?: { code?: string } }) => e.cause?.code);
      expect(other).toBe('ECONNREFUSED');
    } finally {
      s.child.kill('SIGINT');
      expect(await s.exited).toBe(0);
    }
  });

  it('refuses a --host that is not an address of this machine, saying what to give', async () => {
    const cases: Array<[string, string]> = [
      ['', '--host takes an IP address of this machine, like 127.0.0.1 or 192.168.1.10, or localhost (got "")'],
      ['999.1.1.1', '--host takes an IP address of this machine'],
      ['lab-server', '--host takes an IP address of this machine'],
      ['192.0.2.1', '192.0.2.1 is not an address of this machine: give --host one of its own addresses'],
    ];
    for (const [host, message] of cases) {
      const r = await runMiglab(['web', '--host', host, '--port', '0'], env, 30_000); // a web that serves never ends
      expect(r.code, `--host "${host}": ${r.stderr}`).toBe(2);
      expect(r.stderr).toContain(message);
      expect(r.stdout).toBe('');
    }
  });
});
