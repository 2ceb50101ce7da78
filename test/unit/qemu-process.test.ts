// QemuProcess supervision on ordinary child processes (Node scripts standing in for a QEMU that
// misbehaves in ways a real one rarely does on cue): exit capture and the stop escalation.
import { describe, expect, it } from 'vitest';
import { QemuProcess, describeExit } from '../../electron/engine/qemu/process';
import { pidAlive } from '../helpers/leaks';

const node = process.execPath;

function script(code: string): QemuProcess {
  return new QemuProcess(node, ['-e', code]);
}

/** Waits until the script has said "ready" on stderr, i.e. its signal handlers are in place. */
async function ready(p: QemuProcess): Promise<void> {
  while (!p.stderrTail().includes('ready')) await new Promise((r) => setTimeout(r, 20));
}

describe('QemuProcess', () => {
  it('keeps the exit code and the tail of stderr of a process that dies by itself', async () => {
    const p = script("process.stderr.write('qemu-system-x86_64: -device foo: no such device\\n'); process.exit(1)");
    const exit = await p.exited;
    expect(exit).toMatchObject({ code: 1, signal: null, expected: false });
    expect(exit.stderrTail).toContain('no such device');
    expect(describeExit(exit)).toBe('QEMU exited with code 1. QEMU said: qemu-system-x86_64: -device foo: no such device');
    expect(p.running).toBe(false);
  });

  it('stops through quit when the process listens', async () => {
    const p = script("setInterval(() => {}, 1000); process.on('SIGUSR2', () => process.exit(0)); process.stderr.write('ready\\n')");
    await ready(p);
    const exit = await p.stop({ quit: async () => p.signal('SIGUSR2') });
    expect(exit).toMatchObject({ code: 0, signal: null, expected: true });
  });

  it('escalates to SIGTERM when quit does not answer', async () => {
    const p = script('setInterval(() => {}, 1000)');
    const exit = await p.stop({ quit: () => new Promise(() => {}), quitTimeoutMs: 200, termTimeoutMs: 2000 });
    expect(exit.signal).toBe('SIGTERM');
    expect(pidAlive(p.pid!)).toBe(false);
  });

  it('escalates to SIGKILL when SIGTERM is ignored', async () => {
    const p = script("process.on('SIGTERM', () => {}); setInterval(() => {}, 1000); process.stderr.write('ready\\n')");
    await ready(p);
    const exit = await p.stop({ quit: () => Promise.reject(new Error('QMP gone')), quitTimeoutMs: 100, termTimeoutMs: 300 });
    expect(exit).toMatchObject({ signal: 'SIGKILL', expected: true });
    expect(pidAlive(p.pid!)).toBe(false);
  });

  it('reports a binary that cannot be started', async () => {
    const p = new QemuProcess('/nonexistent/qemu-system-x86_64', []);
    const exit = await p.exited;
    expect(exit.code).toBeNull();
    expect(exit.stderrTail).toContain('ENOENT');
  });
});
