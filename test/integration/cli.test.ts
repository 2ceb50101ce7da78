// The `miglab` command as a user runs it: a separate process, JSON on stdout, exit codes.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { expectScopeClean, requireLabGuest } from '../helpers/lab';

const runFile = promisify(execFile);
const bin = join(import.meta.dirname, '..', '..', 'scripts', 'miglab.mjs');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function miglab(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { env: { ...process.env, MIGLAB_RUNTIME_DIR: work, ...env }, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

// Every host the CLI makes lives under `work`, so this file checks its own leftovers only.
let work: string;
beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-cli');
});
afterAll(async () => {
  await expectScopeClean(work);
  await removeDir(work);
});

describe('miglab doctor', () => {
  it('--json lists every check with what it found and a fix', async () => {
    const r = await miglab(['doctor', '--json']);
    expect(r.code).toBe(0);
    const { checks } = JSON.parse(r.stdout) as { checks: Array<{ name: string; ok: boolean; detail: string; fix: string | null }> };
    const names = checks.map((c) => c.name);
    for (const n of ['node', 'qemu', 'migration-capabilities', 'accelerator', 'lab-guest', 'network-namespaces']) {
      expect(names).toContain(n);
    }
    const qemu = checks.find((c) => c.name === 'qemu')!;
    expect(qemu).toMatchObject({ ok: true, fix: null });
    expect(qemu.detail).toMatch(/qemu-system-x86_64 \d+\.\d+\.\d+/);
    expect(checks.find((c) => c.name === 'migration-capabilities')!.detail).toMatch(/events/);
    for (const c of checks) if (!c.ok) expect(c.fix).toBeTruthy();
    // The namespace check makes a namespace to prove it can: it must not leave it behind.
    if (checks.find((c) => c.name === 'network-namespaces')!.ok) {
      const { stdout } = await runFile('ip', ['netns', 'list']);
      expect(stdout).not.toContain('miglab-doctor');
    }
  });

  it('says how to install QEMU when it is missing', async () => {
    const r = await miglab(['doctor', '--json'], { MIGLAB_QEMU: '/nonexistent/qemu-system-x86_64' });
    expect(r.code).toBe(1);
    const qemu = (JSON.parse(r.stdout).checks as Array<{ name: string; ok: boolean; fix: string }>).find((c) => c.name === 'qemu')!;
    expect(qemu.ok).toBe(false);
    expect(qemu.fix).toContain('apt-get install qemu-system-x86');
  });
});

describe('miglab guest', () => {
  it('build --json prints the cached image without rebuilding it', async () => {
    const r = await miglab(['guest', 'build', '--json', '--if-missing']);
    expect(r.code).toBe(0);
    const img = JSON.parse(r.stdout);
    expect(Object.keys(img).sort()).toEqual(['append', 'initrd', 'kernel', 'labloadVersion']);
    expect(existsSync(img.kernel)).toBe(true);
    expect(existsSync(img.initrd)).toBe(true);
    expect(img.append).toContain('console=ttyS0');
  });

  it('boot --json boots the guest, checks heartbeats and integrity, and stops it', async () => {
    const r = await miglab(['guest', 'boot', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.status).toBe('ok');
    expect(['tcg', 'kvm']).toContain(out.accel);
    expect(out.bootToReadyMs).toBeGreaterThan(0);
    expect(out.heartbeatIntervalMs).toBeGreaterThan(9);
    expect(out.heartbeatIntervalMs).toBeLessThan(12.5);
    expect(out.integrity).toMatchObject({ ok: true, bad: 0 });
    expect(out.integrity.pages).toBeGreaterThan(0);
  });

  it('rejects bad arguments with a sentence and exit code 2', async () => {
    const unknown = await miglab(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('Unknown command "frobnicate"');
    const mem = await miglab(['guest', 'boot', '--memory', 'lots']);
    expect(mem.code).toBe(2);
    expect(mem.stderr).toContain('--memory takes a size in MiB');
    const flag = await miglab(['doctor', '--colour']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/Unknown option '--colour'/);
  });
});
