// Pre-flight checks: each pass, warn or fail with a sentence a student understands. A fail
// blocks the migration; a warning lets the user go on.
import { stat } from 'node:fs/promises';
import type { Guest, Host, HostInfo } from '../hosts/host';
import { bootFiles, type GuestSpec } from '../qemu/spec';
import { tracksTcgWritesExactly } from '../qemu/binary';
import { capabilityRefusal } from './capabilities';
import { dirtyRateVerdict, measureDirtyRate, type DirtyRateMeasurement, type DirtyRateVerdictInput } from './dirty-rate';
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
  /**
   * Whether a guest of the same name on `to` is this guest's own destination, prepared ahead of
   * the migration (paused, -incoming defer): not a clash of names.
   */
  ownDestination?: (g: Guest) => boolean;
  /**
   * Measure the guest's dirty rate on its QEMU for `ms` (50..60000) and judge whether pre-copy
   * converges with what the migration will send (check 'dirty-rate'). Absent: no such check.
   */
  measureDirtyRate?: { ms: number } & Omit<DirtyRateVerdictInput, 'ramBytes'>;
}

export interface PreflightOutcome {
  checks: PreflightCheck[];
  /** A migration port reserved on the destination, when the port check passed. */
  port: number | null;
  /** Migration capabilities both QEMUs offer (empty when the hosts could not be asked). */
  capabilities: string[];
  /** What both hosts said of themselves; null when they could not be asked. */
  hosts: { from: HostInfo; to: HostInfo } | null;
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

/** The CPU model a guest without -cpu gets from a host's QEMU for its machine type; null: unknown. */
function defaultCpuModel(host: HostInfo, machine: string): string | null {
  return host.qemuCpu?.machineDefaults[machine] ?? null;
}

/** Flags the source's CPU has and the destination's lacks; null when either host did not say. */
function missingCpuFlags(from: HostInfo, to: HostInfo): string[] | null {
  if (!from.cpu || !to.cpu) return null;
  const there = new Set(to.cpu.flags);
  return from.cpu.flags.filter((f) => !there.has(f));
}

const listed = (xs: string[], max = 8) => xs.slice(0, max).join(', ') + (xs.length > max ? ` and ${xs.length - max} more` : '');

/** A guest whose CPU copies its host's ("host", or "max" under KVM): the two hosts' CPUs are compared. */
function hostCopyCpuCheck(from: HostInfo, to: HostInfo, model: string): PreflightCheck {
  const missing = missingCpuFlags(from, to);
  if (missing === null) {
    const silent = [from, to].filter((h) => !h.cpu).map((h) => h.name).join(' and ');
    return check(
      'cpu-accelerator', 'warn',
      `The guest uses the "${model}" CPU model, which copies the host's CPU, but ${silent} did not say what CPU it has: whether the guest survives the move is unknown. A named model is safer.`,
    );
  }
  if (missing.length) {
    return check(
      'cpu-accelerator', 'fail',
      `The guest uses the "${model}" CPU model, a copy of ${from.name}'s CPU (${from.cpu!.model}); ${to.name}'s CPU (${to.cpu!.model}) lacks ${listed(missing)}, which the guest may be using: it could crash after the move. Give the guest a named CPU model both hosts provide.`,
    );
  }
  return check(
    'cpu-accelerator', 'pass',
    `The guest uses the "${model}" CPU model, a copy of ${from.name}'s CPU (${from.cpu!.model}); ${to.name}'s CPU (${to.cpu!.model}) has every feature it has.`,
  );
}

function cpuCheck(from: HostInfo, to: HostInfo, guest: Guest): PreflightCheck {
  const accel = from.accel.accel;
  if (accel !== to.accel.accel) {
    return check(
      'cpu-accelerator', 'fail',
      `${from.name} runs guests with ${accel.toUpperCase()} but ${to.name} with ${to.accel.accel.toUpperCase()}: a guest cannot move between hardware virtualisation and emulation.`,
    );
  }
  const named = guest.spec.cpuModel;
  const machine = guest.spec.machine;
  if (named === 'host' || (named === 'max' && accel === 'kvm')) return hostCopyCpuCheck(from, to, named);
  if (named === 'max') {
    // Under TCG, "max" is every feature that QEMU version emulates: the QEMU decides, not the CPU.
    if (from.qemu.version === to.qemu.version) {
      return check('cpu-accelerator', 'pass', `The guest uses the "max" CPU model, which under TCG is every feature QEMU ${from.qemu.version} emulates; both hosts run that QEMU.`);
    }
    return check(
      'cpu-accelerator', 'warn',
      `The guest uses the "max" CPU model, which under TCG is every feature its QEMU emulates, and ${from.name} runs QEMU ${from.qemu.version} but ${to.name} ${to.qemu.version}: the guest's CPU may change under it. A named model is safer.`,
    );
  }
  let model = named ?? null;
  let how = `the CPU model "${named}"`;
  if (!named) {
    const src = defaultCpuModel(from, machine);
    const dst = defaultCpuModel(to, machine);
    const silent = [src ? null : from.name, dst ? null : to.name].filter(Boolean);
    if (silent.length) {
      return check(
        'cpu-accelerator', 'warn',
        `The guest uses QEMU's default CPU model for "${machine}", and ${silent.join(' and ')} did not say which model that is: whether the destination gives the guest the same CPU is unknown. Name a CPU model to be sure.`,
      );
    }
    if (src !== dst) {
      return check(
        'cpu-accelerator', 'warn',
        `The guest uses QEMU's default CPU model for "${machine}", which is "${src}" on ${from.name} but "${dst}" on ${to.name}: its CPU would change under it. Name a CPU model both offer.`,
      );
    }
    model = src;
    how = `QEMU's default CPU model for "${machine}", "${src}" on both hosts`;
  }
  const offered = to.qemuCpu?.models;
  if (!offered) {
    return check('cpu-accelerator', 'warn', `The guest uses ${how}, and ${to.name} did not say which CPU models its QEMU offers: whether it can run the guest's CPU is unknown.`);
  }
  if (!offered.includes(model!)) {
    return check('cpu-accelerator', 'fail', `The guest uses ${how}, which QEMU ${to.qemu.version} on ${to.name} does not offer: it cannot run this guest. Pick a CPU model both QEMUs know.`);
  }
  if (accel === 'kvm') {
    // Under KVM a named model also needs the host CPU's features; only equal CPUs prove that here.
    const missing = missingCpuFlags(from, to);
    if (missing === null || missing.length) {
      const why = missing === null ? "MigLab could not compare the two hosts' CPUs" : `${to.name}'s CPU lacks ${listed(missing)}, which ${from.name}'s has`;
      return check('cpu-accelerator', 'warn', `Both hosts use KVM and QEMU on ${to.name} offers ${how}, but ${why}: if the model needs one of those features, the destination cannot provide it.`);
    }
  }
  return check('cpu-accelerator', 'pass', `Both hosts use ${accel.toUpperCase()}, and QEMU on ${to.name} offers ${how}${accel === 'kvm' ? `, on a CPU with every feature of ${from.name}'s` : ''}.`);
}

/**
 * The spec the destination starts. A guest on an agent names its images relative to that agent's
 * library, and an agent may name anything: on a local destination those names must resolve
 * inside the local host's own library, and only the resolved paths reach its QEMU.
 */
export async function destinationSpec(guest: Guest, from: Host, to: Host): Promise<GuestSpec> {
  if (from.describe().imageLibrary && to.resolvePeerSpec) return to.resolvePeerSpec(guest.spec);
  return guest.spec;
}

/**
 * How the destination starts: a disk that came from an agent is a library image here too, so it
 * boots through an overlay (the library file opened read-only), and so does every later copy of
 * that guest. Its writes do not follow it between hosts: there is no storage migration yet.
 */
export async function destinationStart(guest: Guest, from: Host, to: Host): Promise<{ spec: GuestSpec; overlayDisk: boolean }> {
  const overlayDisk = from.describe().imageLibrary || guest.overlayDisk === true;
  return { spec: await destinationSpec(guest, from, to), overlayDisk };
}

/** The destination QEMU for `guest` on `to`: paused, -incoming defer, not yet listening. */
export async function startDestination(guest: Guest, from: Host, to: Host): Promise<Guest> {
  const start = await destinationStart(guest, from, to);
  return to.prepareIncoming(start.spec, { overlayDisk: start.overlayDisk });
}

/**
 * A disk must be the very same file on both hosts: each QEMU opens it, and the destination's
 * writes must land where the source's did. Storage migration (copying the disk) is not in MigLab
 * yet, so anything else is refused. Kernel and initrd are read once at boot: a copy will do.
 */
async function disksCheck(guest: Guest, from: Host, to: Host): Promise<PreflightCheck> {
  if (bootFiles(guest.spec.boot).length === 0) return check('disks', 'pass', `The guest has no disk: only memory and device state move.`);
  const disk = guest.spec.boot.kind === 'disk';
  let spec: GuestSpec | null = null;
  const fromAbout = from.describe();
  const toAbout = to.describe();
  if (toAbout.sharesEngineFiles) {
    // An agent's names must resolve inside this host's library first: a bad one is named as such.
    try {
      spec = await destinationSpec(guest, from, to);
    } catch (err) {
      return check('disks', 'fail', `${to.name} will not open the images agent ${from.name} reported for ${guest.name}: ${(err as Error).message}`);
    }
  }
  if (disk && (!fromAbout.sharesEngineFiles || !toAbout.sharesEngineFiles)) {
    const agent = !fromAbout.sharesEngineFiles ? from.name : to.name;
    return check(
      'disks', 'fail',
      `${guest.name} boots from a disk, and ${agent} keeps its disks in its own image library, so the two hosts would not open the same file and the guest's disk writes would stay behind. ` +
        'A guest with a disk migrates only between hosts that share the image (local hosts); storage migration is not in MigLab yet.',
    );
  }
  if (disk && guest.overlayDisk) {
    return check(
      'disks', 'fail',
      `${guest.name} writes to its own overlay of ${guest.spec.boot.kind === 'disk' ? guest.spec.boot.path : 'its disk'} on ${from.name}, which ${to.name} cannot open: its disk writes would stay behind. Storage migration is not in MigLab yet.`,
    );
  }
  if (!spec) {
    return check('disks', 'warn', `MigLab cannot yet look at ${to.name}'s files: make sure the guest's kernel and initrd are there at the same paths.`);
  }
  const files = bootFiles(spec.boot);
  for (const f of files) {
    try {
      await stat(f.path);
    } catch {
      return check('disks', 'fail', `${to.name} cannot reach ${f.path}, which the guest needs: put it where both hosts can read it.`);
    }
  }
  if (fromAbout.imageLibrary) {
    return check('disks', 'pass', `${to.name} has the guest's ${files.map((f) => f.what).join(' and ')} in its image library: ${files.map((f) => f.path).join(', ')}.`);
  }
  if (spec.boot.kind === 'disk' && guest.spec.boot.kind === 'disk') {
    const [a, b] = await Promise.all([stat(guest.spec.boot.path), stat(spec.boot.path)]);
    if (a.dev !== b.dev || a.ino !== b.ino) {
      return check('disks', 'fail', `${to.name} would open ${spec.boot.path}, which is not the file ${guest.name} runs from (${guest.spec.boot.path}): its disk writes would stay behind.`);
    }
    return check('disks', 'pass', `${to.name} opens the guest's disk ${spec.boot.path} itself (the same file: device ${a.dev}, inode ${a.ino}), so only memory and device state move.`);
  }
  return check('disks', 'pass', `The guest has no disk: only memory and device state move.`);
}

const majorOf = (version: string): number => Number(version.split('.')[0]);

/**
 * Under TCG, QEMU before 10.0 can miss a busy guest's memory writes while it migrates (see
 * TCG_SAFE_APPEND); QEMU 10 does not. On an older QEMU the guest kernel's real command line
 * decides: with pti=on such a loss is rare.
 */
function tcgDirtyTrackingCheck(from: HostInfo, to: HostInfo, guest: Guest): PreflightCheck | null {
  if (from.accel.accel !== 'tcg' && to.accel.accel !== 'tcg') return null;
  const old = [from, to].filter((h) => !tracksTcgWritesExactly({ major: majorOf(h.qemu.version) }));
  if (!old.length) {
    return check(
      'tcg-dirty-tracking', 'pass',
      from.qemu.version === to.qemu.version
        ? `Both hosts run QEMU ${from.qemu.version}, which tracks the guest's memory writes exactly under TCG.`
        : `The hosts run QEMU ${from.qemu.version} and ${to.qemu.version}, which both track the guest's memory writes exactly under TCG.`,
    );
  }
  const risk =
    `Under TCG (no KVM), ${old.map((h) => `${h.name}'s QEMU ${h.qemu.version}`).join(' and ')} can miss memory writes of a busy guest during a migration, ` +
    'and the guest may then crash on the destination (MigLab would put it back on the source).';
  const append = guest.kernelAppend;
  if (append === null) {
    return check(
      'tcg-dirty-tracking', 'warn',
      `${risk} ${guest.name}'s kernel command line is unknown (it booted without -kernel, or its host does not say), so whether "pti=on" guards it is unknown. QEMU 10 on both hosts removes the risk.`,
    );
  }
  if (/(^|\s)pti=on(\s|$)/.test(append)) {
    return check('tcg-dirty-tracking', 'pass', `${risk} ${guest.name}'s kernel was started with pti=on, which makes that rare.`);
  }
  return check(
    'tcg-dirty-tracking', 'warn',
    `${risk} ${guest.name}'s kernel was started without "pti=on" (its command line: "${append.slice(0, 200)}"): add it, or run QEMU 10 on both hosts.`,
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
  // What QEMU lacks first: a name no QEMU offers is most often a typo or an older QEMU.
  const lacking = (c: string) => [from, to].filter((h) => !h.migrationCapabilities.includes(c));
  const missing = wanted.filter((c) => lacking(c).length > 0);
  if (missing.length) {
    const where = (c: string) => {
      const hosts = lacking(c);
      return hosts.length === 2 ? `neither QEMU (${from.name}, ${to.name}) offers ${c}` : `QEMU ${hosts[0]!.qemu.version} on ${hosts[0]!.name} does not offer ${c}`;
    };
    return check('capabilities', 'fail', `${missing.map(where).join('; ')}: switch ${missing.length === 1 ? 'it' : 'them'} off for this migration.`);
  }
  const refused = Object.entries(ctx.capabilities).flatMap(([c, on]) => {
    const why = capabilityRefusal(c, on);
    return why ? [`${c}: ${why}`] : [];
  });
  if (refused.length) return check('capabilities', 'fail', `MigLab will not migrate with ${refused.join('; ')}.`);
  return check('capabilities', 'pass', `Both QEMUs offer the capabilities asked for: ${wanted.join(', ')}.`);
}

/**
 * Never a fail: a guest that will not converge is worth watching not converge. A warn when it will
 * not, or when its QEMU cannot measure (then nothing is known either way).
 */
async function dirtyRateCheck(guest: Guest, ask: NonNullable<PreflightContext['measureDirtyRate']>): Promise<PreflightCheck> {
  if (guest.state !== 'ready' && guest.state !== 'running') {
    return check('dirty-rate', 'warn', `${guest.name} is ${guest.state}, not running, so its dirty rate was not measured: whether pre-copy converges is unknown.`);
  }
  let measured: DirtyRateMeasurement;
  try {
    measured = await measureDirtyRate(guest, { ms: ask.ms });
  } catch (err) {
    return check('dirty-rate', 'warn', `MigLab could not measure ${guest.name}'s dirty rate, so whether pre-copy converges is unknown: ${(err as Error).message}`);
  }
  const { ms: _ms, ...link } = ask;
  const v = dirtyRateVerdict(measured.dirtyRateBps, {
    ...link,
    ramBytes: guest.spec.memoryMiB * 1024 * 1024,
    rateFrom: `measured by ${measured.source} over ${measured.calcTimeMs} ms`,
  });
  const helps = v.helps.length ? ` What would help: ${v.helps.join(' ')}` : '';
  return check('dirty-rate', v.converges === true ? 'pass' : 'warn', v.sentence + helps);
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
    return { checks, port: null, capabilities: [], hosts: null };
  }
  const there = ctx.to.guest(ctx.guest.name);
  if (there && !ctx.ownDestination?.(there)) {
    add(check('destination', 'fail', `${ctx.to.name} already runs a guest called ${ctx.guest.name}: stop it or rename one of them.`));
    return { checks, port: null, capabilities: [], hosts: null };
  }
  let fromInfo: HostInfo;
  let toInfo: HostInfo;
  try {
    [fromInfo, toInfo] = await Promise.all([ctx.from.info(), ctx.to.info()]);
    add(check('destination', 'pass', `${ctx.to.name} answers and can run QEMU ${toInfo.qemu.version}.`));
  } catch (err) {
    add(check('destination', 'fail', `${ctx.to.name} cannot be reached or cannot run QEMU: ${(err as Error).message}`));
    return { checks, port: null, capabilities: [], hosts: null };
  }
  add(memoryCheck(ctx.guest, toInfo));
  add(versionCheck(fromInfo, toInfo, ctx.guest));
  add(cpuCheck(fromInfo, toInfo, ctx.guest));
  add(await disksCheck(ctx.guest, ctx.from, ctx.to));
  const tcg = tcgDirtyTrackingCheck(fromInfo, toInfo, ctx.guest);
  if (tcg) add(tcg);
  const net = networkCheck(ctx.guest, toInfo);
  if (net) add(net);
  add(capabilitiesCheck(ctx, fromInfo, toInfo));
  if (ctx.measureDirtyRate) add(await dirtyRateCheck(ctx.guest, ctx.measureDirtyRate));
  let port: number | null = null;
  try {
    port = await ctx.to.allocateMigrationPort();
    add(check('port', 'pass', `${ctx.to.name} will listen for the migration stream on ${ctx.to.address}:${port}.`));
  } catch (err) {
    add(check('port', 'fail', (err as Error).message));
  }
  const capabilities = fromInfo.migrationCapabilities.filter((c) => toInfo.migrationCapabilities.includes(c));
  return { checks, port, capabilities, hosts: { from: fromInfo, to: toInfo } };
}
