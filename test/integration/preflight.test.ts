// Every pre-flight check's pass, warn and fail paths, on real hosts with real QEMU guests. Where a
// path needs a machine this one cannot be (less memory, an older QEMU, another CPU), the real
// host is wrapped so that its info() says so; everything else it answers stays real.
import { readFile, symlink } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RemoteHost } from '../../electron/engine/hosts/remote/remote-host';
import { LocalHost } from '../../electron/engine/hosts/local/local-host';
import { parseCpuinfo } from '../../electron/engine/hosts/local/host-cpu';
import { kernelAppendOf } from '../../electron/engine/hosts/local/launch-args';
import type { Guest, Host, HostInfo } from '../../electron/engine/hosts/host';
import { defaultLocalLab, localPortRange, type Lab } from '../../electron/engine/lab/lab';
import { runPreflight, type PreflightContext, type PreflightOutcome } from '../../electron/engine/migration/preflight';
import type { PreflightCheck } from '../../electron/engine/migration/types';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import type { LabGuestImage } from '../../electron/engine/guest/image';
import { expectScopeClean, requireLabGuest } from '../helpers/lab';
import { qemuPids } from '../helpers/leaks';
import { startAgent, stopAgent, type AgentProcess } from '../helpers/agents';

let work: string;
let lab: Lab;
let image: LabGuestImage;
let hostA: Host;
let hostB: Host;
/** The lab guest, with a NIC on the lab switch: booting in the first test, ready after it. */
let ready: Guest;
/** Custom kernel guests that cannot say when they have booted; one with pti=on, one without. */
let plain: Guest;
let withPti: Guest;
/** plain's kernel: a link the disks test removes. */
let plainKernel: string;

const ALL_CHECKS = ['guest-ready', 'destination', 'destination-memory', 'qemu-version', 'cpu-accelerator', 'disks', 'tcg-dirty-tracking', 'network', 'capabilities', 'port'];

/** The real host, but its info() says what `change` makes of the real answer: a machine this one cannot be. */
function hostSaying(host: Host, change: (real: HostInfo) => Partial<HostInfo>, props: Partial<Record<keyof Host, unknown>> = {}): Host {
  return new Proxy(host, {
    get(target, key) {
      if (key === 'info') return async () => ({ ...(await target.info()), ...change(await target.info()) });
      if (key in props) return props[key as keyof Host];
      const v = Reflect.get(target, key, target) as unknown;
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

/** The real guest with some of what it says replaced. */
function guestSaying(guest: Guest, props: Partial<Record<keyof Guest, unknown>>): Guest {
  return new Proxy(guest, {
    get(target, key) {
      if (key in props) return props[key as keyof Guest];
      const v = Reflect.get(target, key, target) as unknown;
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

/** runPreflight, with the port it reserved released again. */
async function preflight(ctx: Partial<PreflightContext> & { guest: Guest }): Promise<PreflightOutcome> {
  const full: PreflightContext = { from: hostA, to: hostB, capabilities: {}, ...ctx };
  const out = await runPreflight(full);
  if (out.port !== null) full.to.releaseMigrationPort(out.port);
  return out;
}

async function checkOf(name: string, ctx: Partial<PreflightContext> & { guest: Guest }): Promise<PreflightCheck | undefined> {
  return (await preflight(ctx)).checks.find((c) => c.name === name);
}

/** The -append a running QEMU really has, from /proc. */
async function appendInProc(pid: number): Promise<string | null> {
  return kernelAppendOf((await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0'));
}

const majorOf = (info: HostInfo) => Number(info.qemu.version.split('.')[0]);

beforeAll(async () => {
  image = await requireLabGuest();
  work = await makeTempDir('it-preflight');
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
  hostA = lab.host('host-a');
  hostB = lab.host('host-b');
  ready = await lab.startGuest('host-a', { name: 'pf-ready' });
});

afterAll(async () => {
  await lab?.dispose();
  for (const h of ['host-a', 'host-b']) await expectScopeClean(join(work, 'run', h));
  await removeDir(work);
});

describe('guest-ready', () => {
  it('fails for a guest still booting, passes once it said it is ready', async () => {
    // Asked right after QEMU started: a lab guest takes seconds to boot under TCG.
    const early = await checkOf('guest-ready', { guest: ready });
    expect(early).toMatchObject({ status: 'fail', message: expect.stringMatching(/still booting/) });
    await ready.waitReady(90_000);
    expect(await checkOf('guest-ready', { guest: ready })).toMatchObject({ status: 'pass' });
  });

  it('fails for a guest that cannot say it booted and started under 30 s ago; warns after that', async () => {
    plainKernel = join(work, 'vmlinux-plain');
    await symlink(image.kernel, plainKernel);
    plain = await hostA.startGuest({ name: 'pf-plain', boot: { kind: 'kernel', kernel: plainKernel, initrd: image.initrd, append: `${image.append} miglab.name=pf-plain` } });
    withPti = await hostA.startGuest({ name: 'pf-pti', boot: { kind: 'kernel', kernel: image.kernel, initrd: image.initrd, append: `${image.append} miglab.name=pf-pti pti=on` } });
    expect(plain.state).toBe('running'); // no labload, no ready pattern: readiness unknown
    const young = await checkOf('guest-ready', { guest: plain });
    expect(young).toMatchObject({ status: 'fail', message: expect.stringMatching(/cannot say when it has booted .* started only \d+ s ago: wait \d+ s more/) });
    const old = await checkOf('guest-ready', { guest: guestSaying(plain, { startedAt: performance.now() - 31_000 }) });
    expect(old).toMatchObject({ status: 'warn', message: expect.stringMatching(/it has been up 31 s, so it has probably finished/) });
  });

  it('fails for a guest that is not running: a migration destination, then a stopped one', async () => {
    const incoming = await hostB.prepareIncoming({ ...plain.spec, name: 'pf-incoming' });
    expect(await checkOf('guest-ready', { guest: incoming, from: hostB, to: hostA })).toMatchObject({ status: 'fail', message: 'pf-incoming is incoming, not running: there is nothing to migrate.' });
    await incoming.stop();
    expect(await checkOf('guest-ready', { guest: incoming, from: hostB, to: hostA })).toMatchObject({ status: 'fail', message: 'pf-incoming is stopped, not running: there is nothing to migrate.' });
  });
});

describe('a ready lab guest between two real hosts (real QEMU, nothing wrapped)', () => {
  it('passes every check, in order, and reserves a port in the destination\'s range', async () => {
    const out = await runPreflight({ guest: ready, from: hostA, to: hostB, capabilities: {} });
    hostB.releaseMigrationPort(out.port!);
    expect(out.checks.map((c) => c.name)).toEqual(ALL_CHECKS);
    for (const c of out.checks) expect(c, c.message).toMatchObject({ status: 'pass' });
    // host-b is the lab's second local host, with the second range of migration ports.
    const range = localPortRange(1);
    expect(out.port).toBeGreaterThanOrEqual(range.first);
    expect(out.port).toBeLessThanOrEqual(range.last);
    expect(out.capabilities).toContain('events');
    const info = await hostA.info();
    const tcg = out.checks.find((c) => c.name === 'tcg-dirty-tracking')!;
    if (majorOf(info) >= 10) expect(tcg.message).toMatch(new RegExp(`Both hosts run QEMU ${info.qemu.version}, which tracks`));
    else expect(tcg.message).toMatch(/started with pti=on/);
    expect(out.checks.find((c) => c.name === 'cpu-accelerator')!.message).toMatch(/QEMU's default CPU model for "q35", "qemu64" on both hosts/);
  });

  it('reads real facts: the host\'s CPU, its QEMU\'s CPU models, and the command line each guest was launched with', async () => {
    const info = await hostA.info();
    expect(info.cpu).toEqual(parseCpuinfo(await readFile('/proc/cpuinfo', 'utf8')));
    expect(info.cpu!.flags.length).toBeGreaterThan(10); // any x86-64 CPU has fpu, sse, sse2, ...
    expect(info.qemuCpu!.models).toEqual(expect.arrayContaining(['qemu64', 'max', 'host']));
    expect(info.qemuCpu!.machineDefaults.q35).toBe('qemu64');
    for (const g of [ready, plain, withPti]) expect(g.kernelAppend).toBe(await appendInProc(g.pid!));
    expect(plain.kernelAppend).toBe(`${image.append} miglab.name=pf-plain`);
    // The lab guest's command line is the host's doing: pti=on only where QEMU needs it (< 10, TCG).
    expect(/(^|\s)pti=on(\s|$)/.test(ready.kernelAppend!)).toBe(majorOf(info) < 10 && info.accel.accel === 'tcg');
  });
});

describe('destination', () => {
  it('fails for the host the guest is on, even reached through another object of the same name', async () => {
    for (const to of [hostA, hostSaying(hostA, () => ({}))]) {
      const out = await preflight({ guest: ready, to });
      expect(out.checks.map((c) => [c.name, c.status])).toEqual([['guest-ready', 'pass'], ['destination', 'fail']]);
      expect(out.checks[1]!.message).toBe('pf-ready already runs on host-a: pick another host as the destination.');
    }
  });

  it('fails when the destination already runs a guest of that name', async () => {
    const twin = await hostB.prepareIncoming(ready.spec);
    try {
      const out = await preflight({ guest: ready });
      expect(out.checks.at(-1)).toMatchObject({ name: 'destination', status: 'fail', message: 'host-b already runs a guest called pf-ready: stop it or rename one of them.' });
      expect(out.port).toBeNull();
    } finally {
      await twin.stop();
    }
  });

  it('fails, and stops there, when the destination cannot be asked', async () => {
    const dead = hostSaying(hostB, () => {
      throw new Error('connect ECONNREFUSED 10.9.9.9:7443');
    });
    const out = await preflight({ guest: ready, to: dead });
    expect(out.checks.map((c) => c.name)).toEqual(['guest-ready', 'destination']);
    expect(out.checks[1]).toMatchObject({ status: 'fail', message: 'host-b cannot be reached or cannot run QEMU: connect ECONNREFUSED 10.9.9.9:7443' });
  });
});

describe('destination-memory', () => {
  it('fails one MiB short of the guest\'s RAM plus QEMU\'s 128 MiB, passes at exactly that', async () => {
    const need = ready.spec.memoryMiB + 128;
    const short = await checkOf('destination-memory', { guest: ready, to: hostSaying(hostB, (r) => ({ memory: { ...r.memory, freeMiB: need - 1 } })) });
    expect(short).toMatchObject({ status: 'fail', message: `host-b has only ${need - 1} MiB free, and the guest needs about ${need} MiB (256 MiB of RAM plus QEMU itself).` });
    const enough = await checkOf('destination-memory', { guest: ready, to: hostSaying(hostB, (r) => ({ memory: { ...r.memory, freeMiB: need } })) });
    expect(enough).toMatchObject({ status: 'pass' });
  });
});

describe('qemu-version', () => {
  it('warns for a newer QEMU on the destination and fails for an older one', async () => {
    const real = (await hostA.info()).qemu.version;
    const newer = await checkOf('qemu-version', { guest: ready, to: hostSaying(hostB, (r) => ({ qemu: { ...r.qemu, version: `${majorOf(r) + 1}.0.0` } })) });
    expect(newer).toMatchObject({ status: 'warn', message: expect.stringMatching(new RegExp(`runs a newer QEMU \\(${majorOf(await hostA.info()) + 1}\\.0\\.0\\) than host-a \\(${real.replace(/\./g, '\\.')}\\)`)) });
    const older = await checkOf('qemu-version', { guest: ready, to: hostSaying(hostB, (r) => ({ qemu: { ...r.qemu, version: '1.0.0' } })) });
    expect(older).toMatchObject({ status: 'fail', message: expect.stringMatching(/older QEMU \(1\.0\.0\).*same or a newer version/) });
  });
});

describe('cpu-accelerator', () => {
  const otherAccel = (r: HostInfo) => ({ accel: { accel: r.accel.accel === 'tcg' ? 'kvm' as const : 'tcg' as const, reason: 'wrapped' } });
  const bothTcg = () => ({ accel: { accel: 'tcg' as const, reason: 'wrapped' } });
  const bothKvm = () => ({ accel: { accel: 'kvm' as const, reason: 'wrapped' } });
  const modelled = (cpuModel: string) => guestSaying(ready, { spec: { ...ready.spec, cpuModel } });

  it('fails between hardware virtualisation and emulation', async () => {
    const c = await checkOf('cpu-accelerator', { guest: ready, to: hostSaying(hostB, otherAccel) });
    expect(c).toMatchObject({ status: 'fail', message: expect.stringMatching(/cannot move between hardware virtualisation and emulation/) });
  });

  it('passes a named model the destination\'s QEMU offers, fails one it does not (its real model list)', async () => {
    expect(await checkOf('cpu-accelerator', { guest: modelled('qemu64') })).toMatchObject({ status: 'pass', message: expect.stringMatching(/offers the CPU model "qemu64"/) });
    const unknown = await checkOf('cpu-accelerator', { guest: modelled('Imaginary-CPU') });
    expect(unknown).toMatchObject({ status: 'fail', message: expect.stringMatching(/the CPU model "Imaginary-CPU", which QEMU [\d.]+ on host-b does not offer/) });
  });

  it('says unknown (warn, never pass) when the destination does not say which models it offers', async () => {
    const silent = hostSaying(hostB, () => ({ qemuCpu: null }));
    expect(await checkOf('cpu-accelerator', { guest: modelled('qemu64'), to: silent })).toMatchObject({ status: 'warn', message: expect.stringMatching(/did not say which CPU models .* is unknown/) });
    expect(await checkOf('cpu-accelerator', { guest: ready, to: silent })).toMatchObject({ status: 'warn', message: expect.stringMatching(/host-b did not say which model that is/) });
  });

  it('warns when the machine type\'s default CPU model differs between the hosts', async () => {
    const other = hostSaying(hostB, (r) => ({ qemuCpu: { ...r.qemuCpu!, machineDefaults: { ...r.qemuCpu!.machineDefaults, q35: 'Skylake-Server' } } }));
    expect(await checkOf('cpu-accelerator', { guest: ready, to: other })).toMatchObject({ status: 'warn', message: expect.stringMatching(/"qemu64" on host-a but "Skylake-Server" on host-b/) });
  });

  it('compares the hosts\' real CPUs for the "host" model: passes for the same CPU, fails for one lacking features, warns when unknown', async () => {
    const same = await checkOf('cpu-accelerator', { guest: modelled('host') });
    expect(same).toMatchObject({ status: 'pass', message: expect.stringMatching(/has every feature it has/) });
    const flags = (await hostA.info()).cpu!.flags;
    const lesser = hostSaying(hostB, (r) => ({ cpu: { model: 'Older CPU', flags: r.cpu!.flags.filter((f) => f !== flags[0] && f !== flags[1]) } }));
    expect(await checkOf('cpu-accelerator', { guest: modelled('host'), to: lesser })).toMatchObject({ status: 'fail', message: expect.stringContaining(`(Older CPU) lacks ${flags[0]}, ${flags[1]}, which the guest may be using`) });
    const silent = hostSaying(hostB, () => ({ cpu: null }));
    expect(await checkOf('cpu-accelerator', { guest: modelled('host'), to: silent })).toMatchObject({ status: 'warn', message: expect.stringMatching(/host-b did not say what CPU it has: whether the guest survives the move is unknown/) });
  });

  it('under TCG passes "max" between equal QEMUs and warns between different ones', async () => {
    const tcgA = hostSaying(hostA, bothTcg);
    expect(await checkOf('cpu-accelerator', { guest: modelled('max'), from: tcgA, to: hostSaying(hostB, bothTcg) })).toMatchObject({ status: 'pass' });
    const newer = hostSaying(hostB, (r) => ({ ...bothTcg(), qemu: { ...r.qemu, version: `${majorOf(r) + 1}.0.0` } }));
    expect(await checkOf('cpu-accelerator', { guest: modelled('max'), from: tcgA, to: newer })).toMatchObject({ status: 'warn', message: expect.stringMatching(/the guest's CPU may change under it/) });
  });

  it('under KVM treats "max" as a copy of the host, and warns for a named model when the destination CPU lacks features', async () => {
    const kvmA = hostSaying(hostA, bothKvm);
    const lesser = hostSaying(hostB, (r) => ({ ...bothKvm(), cpu: { model: 'Older CPU', flags: r.cpu!.flags.slice(1) } }));
    expect(await checkOf('cpu-accelerator', { guest: modelled('max'), from: kvmA, to: lesser })).toMatchObject({ status: 'fail', message: expect.stringMatching(/"max" CPU model, a copy of host-a's CPU/) });
    expect(await checkOf('cpu-accelerator', { guest: modelled('qemu64'), from: kvmA, to: lesser })).toMatchObject({ status: 'warn', message: expect.stringMatching(/host-b's CPU lacks .* the destination cannot provide it/) });
    expect(await checkOf('cpu-accelerator', { guest: modelled('qemu64'), from: kvmA, to: hostSaying(hostB, bothKvm) })).toMatchObject({ status: 'pass', message: expect.stringMatching(/on a CPU with every feature of host-a's/) });
  });
});

describe('disks', () => {
  it('passes a guest without a disk, warns for a destination whose files it cannot look at, fails for a kernel the destination cannot reach', async () => {
    expect(await checkOf('disks', { guest: ready })).toMatchObject({ status: 'pass', message: 'The guest has no disk: only memory and device state move.' });
    const remote = hostSaying(hostB, (r) => r, { describe: () => ({ ...hostB.describe(), kind: 'remote', transport: 'agent-tls', imageLibrary: true, sharesEngineFiles: false, outlivesEngine: true }) });
    expect(await checkOf('disks', { guest: plain, to: remote })).toMatchObject({ status: 'warn', message: expect.stringMatching(/cannot yet look at host-b's files/) });
    expect(await checkOf('disks', { guest: plain })).toMatchObject({ status: 'pass' });
    await removeDir(plainKernel); // the kernel pf-plain booted from is gone: a destination could not start it
    expect(await checkOf('disks', { guest: plain })).toMatchObject({ status: 'fail', message: `host-b cannot reach ${plainKernel}, which the guest needs: put it where both hosts can read it.` });
  });
});

describe('tcg-dirty-tracking', () => {
  const on = (version: string) => (r: HostInfo) => ({ qemu: { ...r.qemu, version }, accel: { accel: 'tcg' as const, reason: 'wrapped' } });

  it('passes with QEMU 10 on both hosts, whatever the command line', async () => {
    const c = await checkOf('tcg-dirty-tracking', { guest: plain, from: hostSaying(hostA, on('10.0.2')), to: hostSaying(hostB, on('10.1.0')) });
    expect(c).toMatchObject({ status: 'pass', message: 'The hosts run QEMU 10.0.2 and 10.1.0, which both track the guest\'s memory writes exactly under TCG.' });
  });

  it('below QEMU 10 reads the command line the guest really got: pass with pti=on, warn without, warn when unknown', async () => {
    const from = hostSaying(hostA, on('7.2.22'));
    const to = hostSaying(hostB, on('7.2.22'));
    expect(await checkOf('tcg-dirty-tracking', { guest: withPti, from, to })).toMatchObject({ status: 'pass', message: expect.stringMatching(/pf-pti's kernel was started with pti=on, which makes that rare/) });
    const without = await checkOf('tcg-dirty-tracking', { guest: plain, from, to });
    expect(without).toMatchObject({ status: 'warn', message: expect.stringContaining(`pf-plain's kernel was started without "pti=on" (its command line: "${plain.kernelAppend}")`) });
    const unknown = await checkOf('tcg-dirty-tracking', { guest: guestSaying(withPti, { kernelAppend: null }), from, to });
    expect(unknown).toMatchObject({ status: 'warn', message: expect.stringMatching(/kernel command line is unknown/) });
  });

  it('counts one old QEMU as enough risk, and names it', async () => {
    const c = await checkOf('tcg-dirty-tracking', { guest: plain, from: hostSaying(hostA, on('10.0.2')), to: hostSaying(hostB, on('8.2.2')) });
    expect(c).toMatchObject({ status: 'warn', message: expect.stringMatching(/^Under TCG \(no KVM\), host-b's QEMU 8\.2\.2 can miss/) });
  });

  it('is not a check under KVM', async () => {
    const kvm = () => ({ accel: { accel: 'kvm' as const, reason: 'wrapped' } });
    const out = await preflight({ guest: plain, from: hostSaying(hostA, kvm), to: hostSaying(hostB, kvm) });
    expect(out.checks.map((c) => c.name)).not.toContain('tcg-dirty-tracking');
    expect(out.checks.map((c) => c.name)).toContain('cpu-accelerator');
  });
});

describe('network', () => {
  it('passes a guest with a NIC to a host on the lab network, fails one that is not, and is no check for a guest without a NIC', async () => {
    expect(await checkOf('network', { guest: ready })).toMatchObject({ status: 'pass', message: expect.stringContaining(`pf-ready's NIC (${ready.spec.mac}) will plug into a new port`) });
    const offNet = hostSaying(hostB, () => ({ labNetwork: false }));
    expect(await checkOf('network', { guest: ready, to: offNet })).toMatchObject({ status: 'fail', message: expect.stringMatching(/host-b is not on the lab network: .*Add host-b to the lab network first/) });
    expect(plain.spec.mac).toBeUndefined();
    expect((await preflight({ guest: plain })).checks.map((c) => c.name)).not.toContain('network');
  });
});

describe('capabilities', () => {
  it('fails a capability neither QEMU offers, and one only the source offers; passes one both offer', async () => {
    const none = await checkOf('capabilities', { guest: ready, capabilities: { 'x-no-such-thing': true } });
    expect(none).toMatchObject({ status: 'fail', message: 'neither QEMU (host-a, host-b) offers x-no-such-thing: switch it off for this migration.' });
    const lacking = hostSaying(hostB, (r) => ({ migrationCapabilities: r.migrationCapabilities.filter((c) => c !== 'auto-converge') }));
    const version = (await hostB.info()).qemu.version;
    expect(await checkOf('capabilities', { guest: ready, to: lacking, capabilities: { 'auto-converge': true } })).toMatchObject({
      status: 'fail',
      message: `QEMU ${version} on host-b does not offer auto-converge: switch it off for this migration.`,
    });
    expect(await checkOf('capabilities', { guest: ready, capabilities: { 'auto-converge': true, xbzrle: false } })).toMatchObject({ status: 'pass', message: 'Both QEMUs offer the capabilities asked for: events, auto-converge.' });
  });

  it('refuses what QEMU offers but would break "exactly one copy": x-colo, background-snapshot, validate-uuid, post-copy; and events off; allows pause-before-switchover, which the job drives', async () => {
    const offered = (await hostA.info()).migrationCapabilities;
    const reasons: Record<string, RegExp> = {
      'x-colo': /two running copies/,
      'background-snapshot': /not a live migration/,
      'validate-uuid': /without -uuid/,
      'postcopy-ram': /post-copy is not a MigLab strategy yet/,
    };
    const asked = Object.keys(reasons).filter((c) => offered.includes(c));
    expect(asked.length, `this QEMU offers ${offered.join(', ')}`).toBeGreaterThanOrEqual(4);
    for (const c of asked) {
      const got = (await checkOf('capabilities', { guest: ready, capabilities: { [c]: true } }))!;
      expect(got.status, c).toBe('fail');
      expect(got.message).toMatch(new RegExp(`^MigLab will not migrate with ${c}: `));
      expect(got.message).toMatch(reasons[c]!);
    }
    // All at once: each named with its reason.
    const all = (await checkOf('capabilities', { guest: ready, capabilities: Object.fromEntries(asked.map((c) => [c, true])) }))!;
    for (const c of asked) expect(all.message).toContain(`${c}: `);
    // Off is always fine; events cannot be switched off.
    expect(await checkOf('capabilities', { guest: ready, capabilities: Object.fromEntries(asked.map((c) => [c, false])) })).toMatchObject({ status: 'pass' });
    expect(await checkOf('capabilities', { guest: ready, capabilities: { events: false } })).toMatchObject({ status: 'fail', message: expect.stringMatching(/events stays on/) });
    expect(await checkOf('capabilities', { guest: ready, capabilities: { 'pause-before-switchover': true } })).toMatchObject({ status: 'pass' });
  });
});

describe('port', () => {
  let taken: Server;
  let narrow: LocalHost;

  afterAll(async () => {
    await narrow?.dispose();
    await new Promise<void>((resolve) => (taken ? taken.close(() => resolve()) : resolve()));
  });

  it('fails when every port of the destination\'s range is in use', async () => {
    taken = createServer();
    await new Promise<void>((resolve) => taken.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
    const port = (taken.address() as { port: number }).port;
    narrow = new LocalHost({ name: 'host-narrow', runtimeDir: join(work, 'narrow'), migrationPorts: { first: port, last: port } });
    const out = await preflight({ guest: ready, to: narrow });
    expect(out.checks.at(-1)).toMatchObject({ name: 'port', status: 'fail', message: `No free TCP port on 127.0.0.1 between ${port} and ${port}: close what uses them or give this host a wider port range` });
    expect(out.port).toBeNull();
  });
});

describe('a guest on an agent', () => {
  let agent: AgentProcess;
  let remote: RemoteHost;

  afterAll(async () => {
    await remote?.dispose();
    if (agent) await stopAgent(agent);
    expect(await qemuPids(join(work, 'agent'))).toEqual([]);
  });

  it('tells the engine its host\'s CPU, its QEMU\'s models and the command line its QEMU really got', async () => {
    agent = await startAgent({ name: 'agent-pf', listen: '127.0.0.1:0', dataDir: join(work, 'agent'), extra: ['--ports', '50400-50419'] });
    remote = await RemoteHost.connect({ name: 'host-r', url: agent.info.url, token: agent.info.pairingToken!, fingerprint: agent.info.fingerprint });
    const [info, local] = await Promise.all([remote.info(), hostA.info()]);
    expect(info.cpu).toEqual(local.cpu); // the same machine under both
    expect(info.qemuCpu).toEqual(local.qemuCpu);
    // A destination-to-be: a lab guest's QEMU started with its kernel and command line, not yet running.
    const g = await remote.prepareIncoming({ name: 'pf-remote', memoryMiB: 256, vcpus: 1, machine: 'q35', boot: { kind: 'lab' } });
    expect(g.kernelAppend).toBe(await appendInProc(g.pid!)); // the agent runs on this machine: /proc shows its QEMU
    expect(g.kernelAppend).toContain('miglab.name=pf-remote');
    // What the tcg check reads of a remote guest is that command line, as for a local one.
    const old = (r: HostInfo) => ({ qemu: { ...r.qemu, version: '7.2.22' }, accel: { accel: 'tcg' as const, reason: 'wrapped' } });
    const c = await checkOf('tcg-dirty-tracking', { guest: g, from: hostSaying(remote, old), to: hostSaying(hostA, old) });
    expect(c!.status).toBe(/(^|\s)pti=on(\s|$)/.test(g.kernelAppend!) ? 'pass' : 'warn');
    expect(c!.message).toContain('pf-remote');
    await g.stop();
  });
});
