import type { Accelerator } from './binary';
import type { GuestSpec } from './spec';

/** Everything the argv builder needs, with paths already resolved and checked. */
export interface LaunchConfig {
  spec: GuestSpec;
  accel: Accelerator;
  sockets: { qmp: string; console: string; control: string };
  kernel?: { kernel: string; initrd?: string; append: string };
  disk?: { path: string; format: 'qcow2' | 'raw' };
  /**
   * A virtio-net NIC carried over UDP to a lab switch port (QEMU's dgram netdev, no root).
   * `local` is QEMU's own socket; the switch accepts this NIC's frames from there only.
   */
  nic?: { mac: string; local: { address: string; port: number }; remote: { address: string; port: number } };
  /** Start with vCPUs stopped (-S) so nothing the guest prints is lost before we connect. */
  startPaused: boolean;
  /** Start as a migration destination: `-incoming defer`, then `migrate-incoming` over QMP. */
  incoming: boolean;
}

/** QEMU's option parser splits on ","; a literal comma is written ",,". */
export function qemuOptValue(value: string): string {
  return value.replaceAll(',', ',,');
}

function unixChardev(id: string, path: string): string[] {
  return ['-chardev', `socket,id=${id},path=${qemuOptValue(path)},server=on,wait=off`];
}

/**
 * The argv for one guest. Source and destination of a migration are built from the same
 * config, differing only in `incoming`, so their device models match by construction.
 * Never joined into a shell string: spawn() gets this array as is.
 */
export function buildQemuArgv(cfg: LaunchConfig): string[] {
  const { spec } = cfg;
  const argv = [
    '-name', `guest=${spec.name}`,
    '-machine', `${spec.machine},accel=${cfg.accel}`,
    '-m', `${spec.memoryMiB}M`,
    '-smp', String(spec.vcpus),
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    // A guest panic or reboot ends QEMU, so supervision notices it instead of a silent reboot loop.
    '-no-reboot',
    ...unixChardev('qmp', cfg.sockets.qmp),
    '-mon', 'chardev=qmp,mode=control',
    // ttyS0: the console a person types into; ttyS1: labload's heartbeat and control port.
    // Both exist for every guest, so custom and lab guests share one device model.
    ...unixChardev('console', cfg.sockets.console),
    '-device', 'isa-serial,chardev=console,index=0',
    ...unixChardev('control', cfg.sockets.control),
    '-device', 'isa-serial,chardev=control,index=1',
    // pvpanic (ISA port 0x505, ACPI QEMU0001; q35 and pc, QEMU 7.2 and 10 alike): a guest kernel
    // with its driver reports a panic to QEMU, which sends GUEST_PANICKED, so a crash is seen
    // without labload. QEMU's default panic action is `shutdown`: GUEST_PANICKED {action:
    // poweroff}, runstate guest-panicked, then SHUTDOWN {reason: guest-panic} and QEMU exits
    // (-no-reboot does not change that; -no-shutdown or -action panic=pause would keep it
    // paused). Exiting is chosen: host supervision sees an exit it did not ask for, so no paused
    // QEMU is left that nobody stops, and the panic text is already in the console's scrollback
    // by then (the kernel prints it before it calls the panic notifiers, where pvpanic tells
    // QEMU: 20 ms earlier under TCG). A guest without the driver panics into panic=-1's reboot,
    // which -no-reboot also turns into QEMU's exit.
    '-device', 'pvpanic',
  ];
  if (spec.cpuModel) argv.push('-cpu', spec.cpuModel);
  if (cfg.kernel) {
    argv.push('-kernel', cfg.kernel.kernel);
    if (cfg.kernel.initrd) argv.push('-initrd', cfg.kernel.initrd);
    argv.push('-append', cfg.kernel.append);
  }
  if (cfg.disk) {
    argv.push('-drive', `file=${qemuOptValue(cfg.disk.path)},format=${cfg.disk.format},if=virtio`);
  }
  if (cfg.nic) {
    const { local, remote, mac } = cfg.nic;
    argv.push(
      '-netdev',
      `dgram,id=net0,local.type=inet,local.host=${local.address},local.port=${local.port},` +
        `remote.type=inet,remote.host=${remote.address},remote.port=${remote.port}`,
      // romfile= : no PXE option ROM; lab guests boot from -kernel or a disk, never the network.
      '-device', `virtio-net-pci,netdev=net0,mac=${mac},romfile=`,
    );
  }
  if (cfg.startPaused) argv.push('-S');
  if (cfg.incoming) argv.push('-incoming', 'defer');
  return argv;
}
