// The facts pre-flight checks read from a host and a guest, parsed from what Linux and QEMU give:
// the CPU (/proc/cpuinfo) and the kernel command line a QEMU was started with (its argv).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { parseCpuinfo, readHostCpu } from '../../electron/engine/hosts/local/host-cpu';
import { kernelAppendOf, readProcessArgv } from '../../electron/engine/hosts/local/launch-args';

const CPUINFO = `processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx2 sse
bogomips\t: 4890.88

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx2 avx512f
`;

describe('parseCpuinfo', () => {
  it('takes the first processor\'s model name and flags, sorted and once each', () => {
    expect(parseCpuinfo(CPUINFO)).toEqual({ model: 'AMD EPYC 7B13', flags: ['avx2', 'fpu', 'sse', 'sse2', 'vme'] });
  });

  it('says nothing (null) rather than guess when the model name or the flags are missing', () => {
    expect(parseCpuinfo('processor\t: 0\nflags\t\t: fpu\n')).toBeNull();
    expect(parseCpuinfo('processor\t: 0\nmodel name\t: Some CPU\n')).toBeNull();
    expect(parseCpuinfo('')).toBeNull();
  });

  it('reads this machine\'s CPU, and null for a file that is not there', async () => {
    const cpu = await readHostCpu();
    expect(cpu!.flags).toEqual(expect.arrayContaining(['fpu', 'sse2'])); // every x86-64 CPU has them
    expect(await readHostCpu('/proc/no-such-cpuinfo')).toBeNull();
  });
});

describe('kernelAppendOf', () => {
  it('is the value after -append, null without one', () => {
    expect(kernelAppendOf(['qemu', '-kernel', 'k', '-append', 'console=ttyS0 pti=on', '-m', '256'])).toBe('console=ttyS0 pti=on');
    expect(kernelAppendOf(['qemu', '-drive', 'file=d.qcow2'])).toBeNull();
    expect(kernelAppendOf(['qemu', '-append'])).toBeNull(); // a dangling option has no value
  });

  it('takes the last -append, as QEMU does', () => {
    expect(kernelAppendOf(['qemu', '-append', 'a', '-append', 'b'])).toBe('b');
  });

  it('reads a running process\'s argv from /proc, and [] once it is gone', async () => {
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', '--', '-append', 'pti=on console=ttyS0']);
    try {
      await once(child, 'spawn');
      expect(await readProcessArgv(child.pid!)).toEqual([process.execPath, '-e', 'setInterval(() => {}, 1000)', '--', '-append', 'pti=on console=ttyS0']);
      expect(kernelAppendOf(await readProcessArgv(child.pid!))).toBe('pti=on console=ttyS0');
    } finally {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
    expect(await readProcessArgv(child.pid!)).toEqual([]);
  });
});
