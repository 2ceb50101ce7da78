import { spawn, type ChildProcess } from 'node:child_process';
import { TailBuffer } from '../util/tail-buffer';
import { delay } from '../util/time';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last lines QEMU wrote to stderr: its own explanation of what went wrong. */
  stderrTail: string;
  /** True when MigLab asked for the exit (stop), false when QEMU died by itself. */
  expected: boolean;
}

export class QemuStartError extends Error {
  constructor(
    readonly guest: string,
    readonly exit: ExitInfo | null,
    detail: string,
  ) {
    super(`QEMU for guest "${guest}" did not start: ${detail}`);
    this.name = 'QemuStartError';
  }
}

export function describeExit(exit: ExitInfo): string {
  const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
  return exit.stderrTail ? `QEMU ${how}. QEMU said: ${exit.stderrTail}` : `QEMU ${how} without a message`;
}

export interface StopOptions {
  /** Asks QEMU to quit cleanly (QMP `quit`); if absent or failing we go straight to signals. */
  quit?: () => Promise<unknown>;
  quitTimeoutMs?: number;
  termTimeoutMs?: number;
}

/**
 * One QEMU process: spawned from an argv array, its exit noticed and kept with the tail of
 * stderr, and a stop that escalates quit -> SIGTERM -> SIGKILL so it is always gone after.
 */
export class QemuProcess {
  readonly exited: Promise<ExitInfo>;
  private readonly child: ChildProcess;
  private readonly stderr = new TailBuffer(16 * 1024);
  private exitInfo: ExitInfo | null = null;
  private stopping = false;

  constructor(binary: string, readonly argv: string[], opts: { cwd?: string } = {}) {
    this.child = spawn(binary, argv, {
      cwd: opts.cwd,
      stdio: ['ignore', 'ignore', 'pipe'],
      // Its own process group, so a Ctrl-C in the terminal reaches MigLab, which then stops
      // guests in order instead of QEMU dying under a migration.
      detached: true,
    });
    this.child.stderr!.on('data', (d: Buffer) => this.stderr.push(d));
    this.exited = new Promise<ExitInfo>((resolve) => {
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.exitInfo) return;
        this.exitInfo = { code, signal, stderrTail: this.stderr.lastLines(), expected: this.stopping };
        resolve(this.exitInfo);
      };
      this.child.on('error', (err) => {
        this.stderr.push(`\n${err.message}`);
        finish(null, null);
      });
      this.child.on('exit', (code, signal) => {
        // stderr may still hold unread bytes: read them before reporting the exit.
        if (this.child.stderr && !this.child.stderr.readableEnded) {
          this.child.stderr.once('end', () => finish(code, signal));
          setTimeout(() => finish(code, signal), 200).unref();
        } else finish(code, signal);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitInfo === null;
  }

  get exit(): ExitInfo | null {
    return this.exitInfo;
  }

  stderrTail(lines = 8): string {
    return this.stderr.lastLines(lines);
  }

  signal(sig: NodeJS.Signals): void {
    if (this.exitInfo || this.child.pid === undefined) return;
    try {
      this.child.kill(sig);
    } catch {
      // already gone
    }
  }

  /** Always resolves with the exit: a clean quit if QEMU listens, a signal if it does not. */
  async stop(opts: StopOptions = {}): Promise<ExitInfo> {
    if (this.exitInfo) return this.exitInfo;
    this.stopping = true;
    const { quitTimeoutMs = 3000, termTimeoutMs = 3000 } = opts;
    if (opts.quit) {
      const started = performance.now();
      // A wedged QMP may never answer: the quit request gets the same budget as the exit.
      await Promise.race([opts.quit().catch(() => {}), this.exitsWithin(quitTimeoutMs)]);
      const left = Math.max(0, quitTimeoutMs - (performance.now() - started));
      if (await this.exitsWithin(left)) return this.exited;
    }
    this.signal('SIGTERM');
    if (await this.exitsWithin(termTimeoutMs)) return this.exited;
    this.signal('SIGKILL');
    return this.exited;
  }

  private async exitsWithin(ms: number): Promise<boolean> {
    const ac = new AbortController();
    const r = await Promise.race([
      this.exited.then(() => true),
      delay(ms, false, { signal: ac.signal }).catch(() => false),
    ]);
    ac.abort();
    return r;
  }
}
