/**
 * Running the host tools the guest builder needs (gcc, apt-get, apt-cache, dpkg-deb, xz):
 * always with an argv array, never a shell string, and with errors that name the tool and
 * say how to get it.
 */
import { spawn, type ChildProcess } from 'node:child_process';

/** The packages that provide what the lab guest build needs on a Debian/Ubuntu host. */
export const BUILD_DEPS_HINT = 'apt-get install busybox-static cpio gcc libc6-dev';

const INSTALL_HINTS: Record<string, string> = {
  gcc: BUILD_DEPS_HINT,
  busybox: BUILD_DEPS_HINT,
  cpio: BUILD_DEPS_HINT,
  'apt-get': 'the guest kernel comes from Debian\'s archive through apt: build on a Debian or Ubuntu host (apt and dpkg installed)',
  'apt-cache': 'the guest kernel comes from Debian\'s archive through apt: build on a Debian or Ubuntu host (apt and dpkg installed)',
  'dpkg-deb': 'apt-get install dpkg',
  xz: 'apt-get install xz-utils',
  zstd: 'apt-get install zstd',
};

export function installHint(tool: string): string {
  return INSTALL_HINTS[tool] ?? `install ${tool}`;
}

export class ToolMissingError extends Error {
  constructor(
    readonly tool: string,
    readonly fix: string,
  ) {
    super(`${tool} was not found on PATH; the lab guest build needs it. Fix: ${fix}`);
    this.name = 'ToolMissingError';
  }
}

export class ToolFailedError extends Error {
  constructor(
    readonly tool: string,
    readonly args: readonly string[],
    readonly code: number | string | null,
    readonly stderr: string,
    message?: string,
  ) {
    super(message ?? `${tool} ${args.join(' ')} failed (${code}): ${tail(stderr) || 'no message'}`);
    this.name = 'ToolFailedError';
  }
}

export function tail(text: string, lines = 8): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

export interface RunOptions {
  cwd?: string;
  signal?: AbortSignal;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

export interface RunResult {
  stdout: Buffer;
  stderr: string;
}

/**
 * Runs `tool args...`; resolves with its output, rejects with ToolMissingError / ToolFailedError,
 * or an AbortError when `signal` fires. The tool runs in its own process group, so an abort
 * also stops what it started (dpkg-deb -x runs tar), and the promise settles only once the
 * process has exited: nothing is still writing when the caller cleans up.
 */
export function runTool(tool: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise<RunResult>((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(abortedError(opts.signal));
      return;
    }
    let child: ChildProcess;
    try {
      child = spawn(tool, args, {
        cwd: opts.cwd,
        env: { ...process.env, LC_ALL: 'C', LANG: 'C', ...opts.env },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
        windowsHide: true,
      });
    } catch (err) {
      reject(err);
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let errLen = 0;
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => {
      // Keep the last 64 KiB of stderr: enough to explain a failure.
      err.push(d);
      errLen += d.length;
      while (errLen > 65536 && err.length > 1) errLen -= err.shift()!.length;
    });
    let why: 'abort' | 'timeout' | null = null;
    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    };
    const onAbort = () => {
      why = 'abort';
      killGroup();
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = opts.timeoutMs
      ? setTimeout(() => {
          why = 'timeout';
          killGroup();
        }, opts.timeoutMs)
      : undefined;
    let spawnError: NodeJS.ErrnoException | null = null;
    child.on('error', (e: NodeJS.ErrnoException) => {
      spawnError = e;
    });
    child.on('close', (code, sig) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (timer) clearTimeout(timer);
      const errText = Buffer.concat(err).toString('utf8');
      if (spawnError?.code === 'ENOENT') reject(new ToolMissingError(tool, installHint(tool)));
      else if (spawnError) reject(spawnError);
      else if (why === 'abort') reject(abortedError(opts.signal));
      else if (why === 'timeout') reject(new ToolFailedError(tool, args, 'timeout', errText, `${tool} took longer than ${opts.timeoutMs} ms`));
      else if (code !== 0) reject(new ToolFailedError(tool, args, code ?? sig, errText));
      else resolve({ stdout: Buffer.concat(out), stderr: errText });
    });
  });
}

export function abortedError(signal?: AbortSignal): Error {
  const reason = signal?.reason instanceof Error ? `: ${signal.reason.message}` : '';
  const err = new Error(`lab guest build was aborted${reason}`);
  err.name = 'AbortError';
  return err;
}

export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw abortedError(signal);
}
