// The `miglab` command as a user runs it, for tests: a separate process, its output and exit code.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { MIGLAB_BIN } from './agents';
import { delay } from '../../electron/engine/util/time';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `miglab ARGS` to its end with `env` on top of this process's environment. */
/** `input`: what the user types (stdin is then closed); without it stdin stays open and silent. */
export function runMiglab(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 180_000, input?: string): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [MIGLAB_BIN, ...args], { env: { ...process.env, ...env }, timeout: timeoutMs, maxBuffer: 16 * 2 ** 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** The JSON a `--json` run printed, or a failure that shows what it printed instead. */
export function jsonOf<T = Record<string, any>>(r: CliRun): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`miglab printed no JSON (exit ${r.code}); stdout: ${r.stdout.slice(0, 2000)}; stderr: ${r.stderr.slice(-2000)}`);
  }
}

export interface CliServer {
  child: ChildProcess;
  exited: Promise<number | null>;
  out: () => string;
  err: () => string;
}

/** Starts a long-running `miglab ARGS` (web, start) and waits until its stdout matches `ready`. */
export async function serveMiglab(args: string[], env: NodeJS.ProcessEnv, ready: RegExp, timeoutMs = 30_000): Promise<CliServer> {
  const child = spawn(process.execPath, [MIGLAB_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const end = performance.now() + timeoutMs;
  while (!ready.test(stdout) && child.exitCode === null && performance.now() < end) await delay(50);
  if (!ready.test(stdout)) {
    child.kill('SIGKILL');
    await exited;
    throw new Error(`miglab ${args.join(' ')} did not print ${ready} within ${timeoutMs} ms; stdout: ${stdout}; stderr: ${stderr}`);
  }
  return { child, exited, out: () => stdout, err: () => stderr };
}
