import { describe, expect, it } from 'vitest';
import { buildQemuArgv, qemuOptValue, type LaunchConfig } from '../../electron/engine/qemu/argv';
import { parseGuestSpec } from '../../electron/engine/qemu/spec';

function config(over: Partial<LaunchConfig> = {}): LaunchConfig {
  return {
    spec: parseGuestSpec({ name: 'g1' }),
    accel: 'tcg',
    sockets: { qmp: '/run/x/qmp.sock', console: '/run/x/console.sock', control: '/run/x/control.sock' },
    kernel: { kernel: '/img/vmlinuz', initrd: '/img/initrd.gz', append: 'console=ttyS0' },
    startPaused: true,
    incoming: false,
    ...over,
  };
}

/** The value following a flag, e.g. valueOf(argv, '-m'). */
function valuesOf(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag ? [argv[i + 1]!] : []));
}

describe('buildQemuArgv', () => {
  it('builds the lab defaults: q35, TCG, 256 MiB, one vCPU, no default devices', () => {
    const argv = buildQemuArgv(config());
    expect(valuesOf(argv, '-machine')).toEqual(['q35,accel=tcg']);
    expect(valuesOf(argv, '-m')).toEqual(['256M']);
    expect(valuesOf(argv, '-smp')).toEqual(['1']);
    expect(argv).toContain('-nodefaults');
    expect(argv).not.toContain('-cpu'); // QEMU's default model under TCG: fastest boot
    expect(valuesOf(argv, '-kernel')).toEqual(['/img/vmlinuz']);
    expect(valuesOf(argv, '-initrd')).toEqual(['/img/initrd.gz']);
    expect(valuesOf(argv, '-append')).toEqual(['console=ttyS0']);
    expect(argv).toContain('-S');
    expect(argv).not.toContain('-incoming');
  });

  it('puts QMP, console and control on UNIX sockets, console on ttyS0 and control on ttyS1', () => {
    const argv = buildQemuArgv(config());
    const chardevs = valuesOf(argv, '-chardev');
    expect(chardevs).toEqual([
      'socket,id=qmp,path=/run/x/qmp.sock,server=on,wait=off',
      'socket,id=console,path=/run/x/console.sock,server=on,wait=off',
      'socket,id=control,path=/run/x/control.sock,server=on,wait=off',
    ]);
    expect(valuesOf(argv, '-device')).toEqual(['isa-serial,chardev=console,index=0', 'isa-serial,chardev=control,index=1', 'pvpanic']);
    expect(valuesOf(argv, '-mon')).toEqual(['chardev=qmp,mode=control']);
  });

  it('gives every guest a pvpanic device and leaves the panic to end QEMU, on q35 and pc alike', () => {
    for (const machine of ['q35', 'pc']) {
      const argv = buildQemuArgv(config({ spec: parseGuestSpec({ name: 'g1', machine }) }));
      expect(valuesOf(argv, '-device').filter((d) => d.startsWith('pvpanic'))).toEqual(['pvpanic']);
      // QEMU's default panic action (shutdown) with no -no-shutdown: a panicked guest's QEMU exits.
      expect(argv).toContain('-no-reboot');
      expect(argv).not.toContain('-no-shutdown');
      expect(argv).not.toContain('-action');
    }
  });

  it('gives a migration destination the same device model (pvpanic too) plus -incoming defer, -S only when asked', () => {
    const src = buildQemuArgv(config());
    const dst = buildQemuArgv(config({ incoming: true, startPaused: false }));
    expect(valuesOf(dst, '-incoming')).toEqual(['defer']);
    expect(dst).not.toContain('-S');
    expect(buildQemuArgv(config({ incoming: true, startPaused: true }))).toContain('-S');
    const strip = (a: string[]) => a.filter((x) => !['-S', '-incoming', 'defer'].includes(x));
    expect(strip(dst)).toEqual(strip(src));
    expect(valuesOf(dst, '-device')).toContain('pvpanic');
  });

  it('uses KVM, a CPU model, vCPUs and memory from the spec', () => {
    const spec = parseGuestSpec({ name: 'big', memoryMiB: 1024, vcpus: 2, cpuModel: 'Skylake-Client' });
    const argv = buildQemuArgv(config({ spec, accel: 'kvm' }));
    expect(valuesOf(argv, '-machine')).toEqual(['q35,accel=kvm']);
    expect(valuesOf(argv, '-cpu')).toEqual(['Skylake-Client']);
    expect(valuesOf(argv, '-smp')).toEqual(['2']);
    expect(valuesOf(argv, '-m')).toEqual(['1024M']);
  });

  it('attaches a disk image as virtio with its format, escaping commas in the path', () => {
    const { kernel: _k, ...rest } = config();
    const argv = buildQemuArgv({ ...rest, disk: { path: '/img/a,b.qcow2', format: 'qcow2' } });
    expect(valuesOf(argv, '-drive')).toEqual(['file=/img/a,,b.qcow2,format=qcow2,if=virtio']);
    expect(argv).not.toContain('-kernel');
  });

  it('keeps paths with spaces as single argv elements (no shell involved)', () => {
    const argv = buildQemuArgv(config({ kernel: { kernel: '/my images/vm linuz', append: 'console=ttyS0 quiet' } }));
    expect(valuesOf(argv, '-kernel')).toEqual(['/my images/vm linuz']);
    expect(valuesOf(argv, '-append')).toEqual(['console=ttyS0 quiet']);
  });

  it('doubles commas for QEMU option values', () => {
    expect(qemuOptValue('a,b,,c')).toBe('a,,b,,,,c');
  });
});
