// An agent is not trusted with the engine's files. What it says about its guests is checked with
// the API's schema, and a guest from an agent lands on a local host only from that host's own
// image library (a lab file's images: folder). The agent is a real `miglab agent`; a proxy in
// front of it (test/helpers/lying-agent.ts) lies about its guests, as a compromised one would.
import { link, copyFile, mkdir, readFile, realpath, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RemoteHost } from '../../electron/engine/hosts/remote/remote-host';
import { LocalHost } from '../../electron/engine/hosts/local/local-host';
import { RefusedGuestError } from '../../electron/engine/hosts/remote/guest-descriptor';
import type { Guest } from '../../electron/engine/hosts/host';
import type { LabGuestImage } from '../../electron/engine/guest/image';
import { Lab } from '../../electron/engine/lab/lab';
import { LabService } from '../../electron/engine/api/service';
import { labFromFile, readLabFile } from '../../electron/engine/lab/lab-file';
import { destinationSpec, runPreflight } from '../../electron/engine/migration/preflight';
import { migrateGuest } from '../../electron/engine/migration/orchestrator';
import type { PreflightCheck } from '../../electron/engine/migration/types';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { requireLabGuest } from '../helpers/lab';
import { commandLine, qemuPids } from '../helpers/leaks';
import { completeDespiteTcgCrashes } from '../helpers/migration';
import { startAgent, stopAgent, type AgentProcess } from '../helpers/agents';
import { startLyingAgent, type LyingAgent } from '../helpers/lying-agent';
import { fingerprintOf, writeBootDisk } from '../helpers/boot-disk';

let work: string;
let image: LabGuestImage;
let agent: AgentProcess;
let lying: LyingAgent;
let lab: Lab;
/** The teacher's file a lying agent points at: it must never be opened. */
let secret: string;
/** Reads of it would show in its access time: set in the past, below its modification time. */
let secretTimes: { atimeMs: number; mtimeMs: number };
/** A file with the same times, read at the end: shows that this file system records reads. */
let control: string;

/** A host reached through the lying proxy: a fresh connection sees the agent's guests as the proxy now tells them. */
const throughLiar = () => RemoteHost.connect({ name: 'liar', url: lying.url, token: agent.info.pairingToken!, fingerprint: lying.fingerprint });

async function linkOrCopy(from: string, to: string): Promise<void> {
  await link(from, to).catch(() => copyFile(from, to));
}

/** What the lab guest's initramfs needs as a kernel guest that runs labload. */
const kernelBoot = (name: string) => ({ kind: 'kernel' as const, kernel: 'boot/vmlinux', initrd: 'boot/initrd.gz', append: `${image.append} miglab.name=${name} pti=on`, labload: true });

/** The honest guest's descriptor with its boot source replaced. */
const bootOfHonest = (boot: unknown) => (d: Record<string, unknown>) => (d.name === 'honest' ? { ...d, spec: { ...(d.spec as object), boot } } : d);

async function disksCheck(guest: Guest, from: RemoteHost, to: LocalHost): Promise<PreflightCheck> {
  const out = await runPreflight({ guest, from, to, capabilities: {} });
  if (out.port !== null) to.releaseMigrationPort(out.port);
  return out.checks.find((c) => c.name === 'disks')!;
}

beforeAll(async () => {
  image = await requireLabGuest();
  work = await makeTempDir('it-agent-trust');
  // The agent's library and this machine's hold the same lab kernel, each under boot/.
  for (const lib of ['agent-lib', 'lib']) {
    await mkdir(join(work, lib, 'boot'), { recursive: true });
    await linkOrCopy(image.kernel, join(work, lib, 'boot', 'vmlinux'));
    await linkOrCopy(image.initrd, join(work, lib, 'boot', 'initrd.gz'));
    await writeBootDisk(join(work, lib, 'boot.raw')); // a copy each, never one file
  }
  secret = join(work, 'teacher-bashrc');
  await writeFile(secret, 'export TEACHER_SECRET=1\n');
  control = join(work, 'control');
  await writeFile(control, 'read me\n');
  for (const f of [secret, control]) await utimes(f, new Date(Date.now() - 2 * 86_400_000), new Date(Date.now() - 86_400_000));
  secretTimes = await stat(secret);
  await symlink(secret, join(work, 'lib', 'boot', 'escape')); // inside the library, leading out of it
  agent = await startAgent({ name: 'agent-trust', listen: '127.0.0.1:0', dataDir: join(work, 'agent'), extra: ['--ports', '50600-50639', '--images', join(work, 'agent-lib')] });
  lying = await startLyingAgent(agent, join(work, 'liar-identity'));
  // The lab as a teacher writes it: images: is relative to the lab file's folder.
  await writeFile(join(work, 'lab.yaml'), [
    'images: ./lib',
    'network: null',
    'hosts:',
    '  - name: here',
    '  - name: far',
    `    agent: { url: "${agent.info.url}", token: ${agent.info.pairingToken}, fingerprint: "${agent.info.fingerprint}" }`,
    '',
  ].join('\n'));
  lab = await labFromFile(await readLabFile(join(work, 'lab.yaml')), { runtimeDir: join(work, 'run') });
  await lab.startGuest('far', { name: 'honest', boot: kernelBoot('honest') });
}, 120_000);

afterAll(async () => {
  await lab?.dispose();
  await lying?.close();
  if (agent) await stopAgent(agent);
  expect(await qemuPids(work)).toEqual([]);
  await removeDir(work);
});

describe('what an agent says about its guests', () => {
  it('refuses a guest whose spec fails the API\'s schema, naming the agent and the problem; the lab shows the others', async () => {
    const base = { handle: 9000, state: 'running', pid: null, uptimeMs: 1000, labload: false, switchPort: null, adopted: false };
    let handle = base.handle;
    const bad = (name: string, extra: Record<string, unknown>, spec: Record<string, unknown> = {}) => ({ ...base, handle: ++handle, name, spec: { name, ...spec }, ...extra });
    lying.extraGuests = [];
    for (const d of [
      bad('evil-mem', {}, { memoryMiB: 10 ** 9 }),
      bad('evil-proto', {}, { boot: { kind: 'disk', path: 'json:{"driver":"file","filename":"/etc/passwd"}' } }),
      bad('evil-nul', {}, { boot: { kind: 'kernel', kernel: 'boot/vmlinux\0/etc/passwd' } }),
      bad('evil-kind', {}, { boot: { kind: 'floppy' } }),
      bad('evil-name', {}, { name: 'honest' }),
      bad('evil-state', { state: 'pwned' }),
      42,
    ]) lying.extraGuests.push(d);
    const seen = await throughLiar();
    try {
      expect(seen.guests().map((g) => g.name)).toEqual(['honest']);
      expect(seen.guest('honest')!.spec.boot).toMatchObject({ kind: 'kernel', kernel: 'boot/vmlinux' });
      const refused = Object.fromEntries(seen.refusedGuests);
      expect(Object.keys(refused).sort()).toEqual(['(unnamed)', 'evil-kind', 'evil-mem', 'evil-name', 'evil-nul', 'evil-proto', 'evil-state']);
      const agentNamed = `Agent liar (${lying.url}) described guest`;
      expect(refused['evil-mem']).toContain(`${agentNamed} "evil-mem" in a way MigLab does not accept, so the lab does not show it: spec.memoryMiB:`);
      expect(refused['evil-proto']).toMatch(/spec\.boot\.path: "json:\{.*" reads as a QEMU protocol \(json:\), not a file: for a file with a colon in its name, write \.\/json:/);
      expect(refused['evil-nul']).toMatch(/spec\.boot\.kernel: the path holds a NUL character/);
      expect(refused['evil-kind']).toMatch(/spec\.boot/);
      expect(refused['evil-name']).toMatch(/its spec names it "honest"/);
      expect(refused['evil-state']).toMatch(/state: /);
      expect(refused['(unnamed)']).toMatch(/^Agent liar .* described a guest .*descriptor: /);
      // The teacher sees which guests were left out and why, in the lab view's host card.
      const service = new LabService(new Lab([seen], { network: null }));
      try {
        const view = service.snapshot().hosts[0]!;
        expect(view.guests.map((g) => g.name)).toEqual(['honest']);
        expect(Object.fromEntries(view.refusedGuests!.map((r) => [r.guest, r.problem]))).toEqual(refused);
      } finally {
        service.close();
      }
    } finally {
      lying.extraGuests = [];
      await seen.disconnect();
    }
  });

  it('refuses a started guest the agent describes wrongly: no guest in the lab, a guest-refused event, and the guest stopped on the agent', async () => {
    lying.rewrite = (d) => (d.name === 'bad-start' ? { ...d, spec: { ...(d.spec as object), boot: { kind: 'disk', path: 'nbd:127.0.0.1:10809' } } } : d);
    const liar = await throughLiar();
    const events: Array<[string | null, string]> = [];
    liar.on('guest-refused', (guest, problem) => events.push([guest, problem]));
    try {
      const err = await liar.startGuest({ name: 'bad-start', memoryMiB: 128 }).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(RefusedGuestError);
      expect((err as Error).message).toMatch(/guest "bad-start" .* spec\.boot\.path: "nbd:127\.0\.0\.1:10809" reads as a QEMU protocol \(nbd:\)/);
      expect(liar.guest('bad-start')).toBeUndefined();
      // Its guest-started event came through the proxy too, refused the same way.
      for (let i = 0; i < 50 && !events.length; i++) await delay(100);
      expect(events).toEqual([['bad-start', expect.stringContaining('reads as a QEMU protocol (nbd:)')]]);
      // Started but refused: the engine had the agent stop it rather than leave it unseen.
      const far = lab.host('far');
      for (let i = 0; i < 100 && far.guest('bad-start'); i++) await delay(100);
      expect(far.guest('bad-start')).toBeUndefined();
      expect(far.guest('honest')).toBeDefined();
    } finally {
      lying.rewrite = (d) => d;
      await liar.disconnect();
    }
  });
});

describe('a guest from an agent on a local host', () => {
  it('is refused by pre-flight when its images are not in the local library, naming the path; the migration stops before any local QEMU opens the file', async () => {
    const here = lab.host('here') as LocalHost;
    const cases: Array<[boot: Record<string, string>, problem: RegExp]> = [
      [{ kind: 'disk', path: secret }, new RegExp(`The disk image path "${secret}" is absolute: give a path inside here's image library \\(${join(work, 'lib')}\\)`)],
      [{ kind: 'disk', path: '/etc/passwd' }, /The disk image path "\/etc\/passwd" is absolute/],
      [{ kind: 'kernel', kernel: 'boot/vmlinux', initrd: '../../../../etc/passwd' }, /The initrd path "\.\.\/\.\.\/\.\.\/\.\.\/etc\/passwd" climbs out with "\.\."/],
      [{ kind: 'disk', path: 'boot/escape' }, /The disk image "boot\/escape" leads out of here's image library \(a symlink\?\)/],
      [{ kind: 'kernel', kernel: 'boot/nothing' }, new RegExp(`There is no kernel "boot/nothing" in here's image library`)],
    ];
    for (const [boot, problem] of cases) {
      lying.rewrite = bootOfHonest(boot);
      const liar = await throughLiar();
      try {
        const guest = liar.guest('honest')!;
        expect(guest.spec.boot).toEqual(expect.objectContaining(boot)); // the lie got through to the engine's view
        const disks = await disksCheck(guest, liar, here);
        expect(disks.status).toBe('fail');
        expect(disks.message).toMatch(/^here will not open the images agent liar reported for honest: /);
        expect(disks.message).toMatch(problem);
        await expect(destinationSpec(guest, liar, here)).rejects.toThrow(problem);
        if (boot.path === secret) {
          const r = await migrateGuest({ guest, from: liar, to: here, options: { acceptWarnings: true } }).result;
          expect(r).toMatchObject({ status: 'failed', failure: 'preflight', runningOn: 'liar' });
          expect(r.reason).toContain(secret);
        }
      } finally {
        lying.rewrite = (d) => d;
        await liar.disconnect();
      }
    }
    // Nothing on this machine opened the teacher's file: no local guest, no QEMU naming it,
    // the file as it was, and not even read (reads show in its access time on this file system).
    expect(here.guests()).toEqual([]);
    expect(await qemuPids(secret)).toEqual([]);
    expect(await qemuPids('/etc/passwd')).toEqual([]);
    const after = await stat(secret);
    expect(after.mtimeMs).toBe(secretTimes.mtimeMs);
    expect(after.atimeMs).toBe(secretTimes.atimeMs);
    await readFile(control);
    expect((await stat(control)).atimeMs).toBeGreaterThan(secretTimes.atimeMs); // a read would have shown
    expect(await readFile(secret, 'utf8')).toBe('export TEACHER_SECRET=1\n');
    expect(lab.host('far').guest('honest')!.state).not.toBe('failed');
  });

  it('passes a lab guest (the local host boots its own), and resolves names in the cached lab guest when no images: folder is given', async () => {
    const plain = new LocalHost({ name: 'plain', runtimeDir: join(work, 'plain') });
    try {
      expect(await plain.imageLibrary()).toBe(image.dir);
      const cached = await realpath(image.dir);
      lying.rewrite = bootOfHonest({ kind: 'kernel', kernel: basename(image.kernel), initrd: basename(image.initrd) });
      let liar = await throughLiar();
      try {
        const spec = await destinationSpec(liar.guest('honest')!, liar, plain);
        expect(spec.boot).toMatchObject({ kind: 'kernel', kernel: join(cached, basename(image.kernel)), initrd: join(cached, basename(image.initrd)) });
        await expect(destinationSpec(liar.guest('honest')!, liar, plain)).resolves.toMatchObject({ name: 'honest', memoryMiB: 256 });
      } finally {
        await liar.disconnect();
      }
      lying.rewrite = bootOfHonest({ kind: 'lab' });
      liar = await throughLiar();
      try {
        expect(await disksCheck(liar.guest('honest')!, liar, plain)).toMatchObject({ status: 'pass', message: 'The guest has no disk: only memory and device state move.' });
      } finally {
        await liar.disconnect();
      }
    } finally {
      lying.rewrite = (d) => d;
      await plain.dispose();
    }
  });

  it('lands on a local host from the lab file\'s images: folder: the destination QEMU opens the library\'s copy', async () => {
    const far = lab.host('far');
    const here = lab.host('here') as LocalHost;
    const honest = far.guest('honest')!;
    await honest.waitReady(90_000);
    const lib = await realpath(join(work, 'lib'));
    expect(await disksCheck(honest, far as RemoteHost, here)).toMatchObject({
      status: 'pass',
      message: `here has the guest's kernel and initrd in its image library: ${join(lib, 'boot', 'vmlinux')}, ${join(lib, 'boot', 'initrd.gz')}.`,
    });
    const r = await completeDespiteTcgCrashes(lab, 'honest', () => migrateGuest({ guest: far.guest('honest')!, from: far, to: here }).result);
    expect(r.status, `${r.reason} ${r.qemuMessage}`).toBe('completed');
    const moved = here.guest('honest')!;
    expect(moved.spec.boot).toMatchObject({ kind: 'kernel', kernel: join(lib, 'boot', 'vmlinux'), initrd: join(lib, 'boot', 'initrd.gz') });
    const argv = await commandLine(moved.pid!);
    expect(argv).toContain(join(lib, 'boot', 'vmlinux'));
    expect(argv).not.toContain('agent-lib');
    await moved.stop();
  });

  it('refuses a disk guest from an agent in pre-flight: the hosts would not open the same file, and no local QEMU opens the library image', async () => {
    const far = lab.host('far');
    const here = lab.host('here') as LocalHost;
    const libDisk = join(await realpath(join(work, 'lib')), 'boot.raw');
    const before = await fingerprintOf(libDisk);
    const g = await lab.startGuest('far', { name: 'disky', memoryMiB: 64, boot: { kind: 'disk', path: 'boot.raw', format: 'raw', readyPattern: 'MIGLAB-DISK-WROTE' } });
    await g.waitReady(60_000); // its boot sector wrote to its disk (the agent's overlay) and read it back
    const r = await migrateGuest({ guest: g, from: far, to: here }).result;
    expect(r.status).toBe('failed');
    expect(r.failure).toBe('preflight');
    expect(r.runningOn).toBe('far');
    expect(r.checks.find((c) => c.name === 'disks')).toMatchObject({
      status: 'fail',
      message: expect.stringMatching(/disky boots from a disk, and far keeps its disks in its own image library, so the two hosts would not open the same file.*storage migration is not in MigLab yet/),
    });
    expect(r.phases.map((p) => p.name)).toEqual(['preflight']); // no destination QEMU was started
    expect(here.guest('disky')).toBeUndefined();
    expect(await fingerprintOf(libDisk)).toBe(before);
    await g.stop();
  });
});
