// Pre-flight checks: each pass, warn or fail with a sentence a student understands. A fail
// blocks the migration; a warning lets the user go on.
import { stat } from 'node:fs/promises';
import type { Guest, Host, HostInfo } from '../hosts/host';
import type { CheckStatus, PreflightCheck } from './types';

/** QEMU's own overhead on top of guest RAM, so a destination is not filled to the brim. */
const QEMU_OVERHEAD_MIB = 128;
/** A guest without any way to say it is ready must at least have been up this long. */
export const UNREADY_GRACE_MS = 30_000;

export interface PreflightContext {
  guest: Guest;
  from: Host;
  to: Host;
  /** Capabilities the user asked for, beyond `events`. */
  capabilities: Record<string, boolean>;
}

export interface PreflightOutcome {
  checks: PreflightCheck[];
  /** A migration port reserved on the destination, when the port check passed. */
  port: number | null;
  /** Migration capabilities both QEMUs offer (empty when the hosts could not be asked). */
  capabilities: string[];
}

const check = (name: string, status: CheckStatus, message: string): PreflightCheck => ({ name, status, message });

function readinessCheck(guest: Guest): PreflightCheck {
  if (guest.state === 'ready') return check('guest-ready', 'pass', `${guest.name} has finished booting and said it is ready.`);
  if (guest.state === 'booting' || guest.state === 'starting') {
    return check(
      'guest-ready', 'fail',
      `${guest.name} is still booting. Migrating a guest while its kernel starts up can corrupt it on the destination: wait until it reports ready.`,
    );
  }
  if (guest.state === 'running') {
    const upMs = performance.now() - guest.startedAt;
    if (upMs < UNREADY_GRACE_MS) {
      return check(
        'guest-ready', 'fail',
        `${guest.name} cannot say when it has booted (no labload, no ready pattern) and started only ${Math.round(upMs / 1000)} s ago: ` +
          `wait ${Math.ceil((UNREADY_GRACE_MS - upMs) / 1000)} s more, or give it a ready pattern.`,
      );
    }
    return check(
      'guest-ready', 'warn',
      `${guest.name} cannot say when it has booted (no labload, no ready pattern); it has been up ${Math.round(upMs / 1000)} s, so it has probably finished.`,
    );
  }
  return check('guest-ready', 'fail', `${guest.name} is ${guest.state}, not running: there is nothing to migrate.`);
}

function memoryCheck(guest: Guest, to: HostInfo): PreflightCheck {
  const need = guest.spec.memoryMiB + QEMU_OVERHEAD_MIB;
  const free = to.memory.freeMiB;
  if (free >= need) return check('destination-memory', 'pass', `${to.name} has ${free} MiB free; the guest needs about ${need} MiB.`);
  return check(
    'destination-memory', 'fail',
    `${to.name} has only ${free} MiB free, and the guest needs about ${need} MiB (${guest.spec.memoryMiB} MiB of RAM plus QEMU itself).`,
  );
}

function versionCheck(from: HostInfo, to: HostInfo, guest: Guest): PreflightCheck {
  const [fa, fb] = from.qemu.version.split('.').map(Number) as [number, number];
  const [ta, tb] = to.qemu.version.split('.').map(Number) as [number, number];
  const machine = guest.spec.machine;
  if (from.qemu.version === to.qemu.version) {
    return check('qemu-version', 'pass', `Both hosts run QEMU ${from.qemu.version}, so the "${machine}" machine type is the same on both.`);
  }
  if (ta > fa || (ta === fa && tb >= fb)) {
    return check(
      'qemu-version', 'warn',
      `${to.name} runs a newer QEMU (${to.qemu.version}) than ${from.name} (${from.qemu.version}). Migrating forward is supported, but "${machine}" may name a newer machine version there: pin a versioned machine type to be safe.`,
    );
  }
  return check(
    'qemu-version', 'fail',
    `${to.name} runs an older QEMU (${to.qemu.version}) than ${from.name} (${from.qemu.version}): QEMU only promises migration to the same or a newer version.`,
  );
}

function cpuCheck(from: HostInfo, to: HostInfo, guest: Guest): PreflightCheck {
  const cpu = guest.spec.cpuModel ?? 'QEMU\'s default CPU model';
  if (from.accel.accel !== to.accel.accel) {
    return check(
      'cpu-accelerator', 'fail',
      `${from.name} runs guests with ${from.accel.accel.toUpperCase()} but ${to.name} with ${to.accel.accel.toUpperCase()}: a guest cannot move between hardware virtualisation and emulation.`,
    );
  }
  if (guest.spec.cpuModel === 'host' || guest.spec.cpuModel === 'max') {
    return check(
      'cpu-accelerator', 'warn',
      `The guest uses the "${guest.spec.cpuModel}" CPU model, which copies the host's CPU: if the two hosts' CPUs differ, the guest may crash after the move. A named model is safer.`,
    );
  }
  return check('cpu-accelerator', 'pass', `Both hosts use ${from.accel.accel.toUpperCase()}, and the guest uses ${cpu}, which both can provide.`);
}

async function disksCheck(guest: Guest, to: Host): Promise<PreflightCheck> {
  const boot = guest.spec.boot;
  const files =
    boot.kind === 'disk' ? [boot.path] : boot.kind === 'kernel' ? [boot.kernel, ...(boot.initrd ? [boot.initrd] : [])] : [];
  if (files.length === 0) return check('disks', 'pass', `The guest has no disk: only memory and device state move.`);
  if (to.kind !== 'local') {
    return check('disks', 'warn', `MigLab cannot yet look at ${to.name}'s files: make sure the guest's images are there at the same paths.`);
  }
  for (const f of files) {
    try {
      await stat(f);
    } catch {
      return check('disks', 'fail', `${to.name} cannot reach ${f}, which the guest needs: put it where both hosts can read it.`);
    }
  }
  if (boot.kind === 'disk') {
    return check('disks', 'pass', `${to.name} reads the guest's disk ${boot.path} directly (shared storage), so only memory and device state move.`);
  }
  return check('disks', 'pass', `The guest has no disk: only memory and device state move.`);
}

/** See TCG_SAFE_APPEND: under TCG a guest kernel needs pti=on to survive a migration intact. */
function tcgDirtyTrackingCheck(from: HostInfo, guest: Guest): PreflightCheck | null {
  if (from.accel.accel !== 'tcg') return null;
  const boot = guest.spec.boot;
  if (boot.kind === 'lab') {
    return check('tcg-dirty-tracking', 'pass', 'Under TCG the lab guest runs with pti=on, which keeps QEMU\'s tracking of its memory writes exact.');
  }
  if (boot.kind === 'kernel' && /(^|\s)pti=on(\s|$)/.test(boot.append ?? '')) {
    return check('tcg-dirty-tracking', 'pass', 'The guest kernel runs with pti=on, which keeps QEMU\'s tracking of its memory writes exact under TCG.');
  }
  return check(
    'tcg-dirty-tracking', 'warn',
    'Under TCG (no KVM), QEMU 7.2 can miss memory writes of a busy guest during a migration, and the guest may then crash on the destination (MigLab would put it back on the source). A Linux guest is safe with "pti=on" on its kernel command line.',
  );
}

/** A guest's NIC is part of its device model: the destination must have a switch to plug it into. */
function networkCheck(guest: Guest, to: HostInfo): PreflightCheck | null {
  if (!guest.switchPort || !guest.spec.mac) return null;
  if (!to.labNetwork) {
    return check(
      'network', 'fail',
      `${guest.name} has a NIC (${guest.spec.mac}) on the lab switch, but ${to.name} is not on the lab network: its copy would have a NIC plugged into nothing. Add ${to.name} to the lab network first.`,
    );
  }
  return check(
    'network', 'pass',
    `${guest.name}'s NIC (${guest.spec.mac}) will plug into a new port of the lab switch on ${to.name}; the switch will see the MAC move there when QEMU announces it.`,
  );
}

function capabilitiesCheck(ctx: PreflightContext, from: HostInfo, to: HostInfo): PreflightCheck {
  const wanted = ['events', ...Object.entries(ctx.capabilities).filter(([, on]) => on).map(([c]) => c)];
  const missing = wanted.filter((c) => !from.migrationCapabilities.includes(c) || !to.migrationCapabilities.includes(c));
  if (missing.length) {
    return check(
      'capabilities', 'fail',
      `QEMU on ${missing.length === 1 ? 'one of the hosts' : 'the hosts'} does not offer ${missing.join(', ')}: switch ${missing.length === 1 ? 'it' : 'them'} off for this migration.`,
    );
  }
  return check('capabilities', 'pass', `Both QEMUs offer the capabilities asked for: ${wanted.join(', ')}.`);
}

/** Runs every check; reserves a migration port on the destination when one is free. */
export async function runPreflight(ctx: PreflightContext, onCheck: (c: PreflightCheck) => void = () => {}): Promise<PreflightOutcome> {
  const checks: PreflightCheck[] = [];
  const add = (c: PreflightCheck) => {
    checks.push(c);
    onCheck(c);
  };
  add(readinessCheck(ctx.guest));
  if (ctx.from === ctx.to || ctx.from.name === ctx.to.name) {
    add(check('destination', 'fail', `${ctx.guest.name} already runs on ${ctx.to.name}: pick another host as the destination.`));
    return { checks, port: null, capabilities: [] };
  }
  if (ctx.to.guest(ctx.guest.name)) {
    add(check('destination', 'fail', `${ctx.to.name} already runs a guest called ${ctx.guest.name}: stop it or rename one of them.`));
    return { checks, port: null, capabilities: [] };
  }
  let fromInfo: HostInfo;
  let toInfo: HostInfo;
  try {
    [fromInfo, toInfo] = await Promise.all([ctx.from.info(), ctx.to.info()]);
    add(check('destination', 'pass', `${ctx.to.name} answers and can run QEMU ${toInfo.qemu.version}.`));
  } catch (err) {
    add(check('destination', 'fail', `${ctx.to.name} cannot be reached or cannot run QEMU: ${(err as Error).message}`));
    return { checks, port: null, capabilities: [] };
  }
  add(memoryCheck(ctx.guest, toInfo));
  add(versionCheck(fromInfo, toInfo, ctx.guest));
  add(cpuCheck(fromInfo, toInfo, ctx.guest));
  add(await disksCheck(ctx.guest, ctx.to));
  const tcg = tcgDirtyTrackingCheck(fromInfo, ctx.guest);
  if (tcg) add(tcg);
  const net = networkCheck(ctx.guest, toInfo);
  if (net) add(net);
  add(capabilitiesCheck(ctx, fromInfo, toInfo));
  let port: number | null = null;
  try {
    port = await ctx.to.allocateMigrationPort();
    add(check('port', 'pass', `${ctx.to.name} will listen for the migration stream on ${ctx.to.address}:${port}.`));
  } catch (err) {
    add(check('port', 'fail', (err as Error).message));
  }
  const capabilities = fromInfo.migrationCapabilities.filter((c) => toInfo.migrationCapabilities.includes(c));
  return { checks, port, capabilities };
}
