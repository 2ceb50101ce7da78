import { readFileSync } from 'node:fs';
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
  stop(opts: StopOptions = {}): Promise<ExitInfo> {
    if (this.exitInfo) return Promise.resolve(this.exitInfo);
    this.stopping = true;
    return stopEscalating(this, opts);
  }

}

/** What stopping needs of a QEMU, spawned by us or adopted after a restart. */
interface Stoppable {
  readonly exited: Promise<ExitInfo>;
  signal(sig: NodeJS.Signals): void;
}

async function exitsWithin(q: Stoppable, ms: number): Promise<boolean> {
  const ac = new AbortController();
  const r = await Promise.race([q.exited.then(() => true), delay(ms, false, { signal: ac.signal }).catch(() => false)]);
  ac.abort();
  return r;
}

/** quit (if given) -> SIGTERM -> SIGKILL, each with its budget: QEMU is gone after. */
async function stopEscalating(q: Stoppable, opts: StopOptions): Promise<ExitInfo> {
  const { quitTimeoutMs = 3000, termTimeoutMs = 3000 } = opts;
  if (opts.quit) {
    const started = performance.now();
    // A wedged QMP may never answer: the quit request gets the same budget as the exit.
    await Promise.race([opts.quit().catch(() => {}), exitsWithin(q, quitTimeoutMs)]);
    const left = Math.max(0, quitTimeoutMs - (performance.now() - started));
    if (await exitsWithin(q, left)) return q.exited;
  }
  q.signal('SIGTERM');
  if (await exitsWithin(q, termTimeoutMs)) return q.exited;
  q.signal('SIGKILL');
  return q.exited;
}

/** The surface of a running QEMU that a guest needs: ours (QemuProcess) or adopted (AdoptedQemu). */
export type QemuHandle = Pick<QemuProcess, 'exited' | 'pid' | 'running' | 'exit' | 'stop'>;

/**
 * A QEMU another process of ours started (an agent before its restart): not our child, so its
 * exit is noticed by polling, and its exit status and stderr are lost.
 */
export class AdoptedQemu implements QemuHandle {
  readonly exited: Promise<ExitInfo>;
  private exitInfo: ExitInfo | null = null;
  private stopping = false;
  private readonly timer: NodeJS.Timeout;

  constructor(readonly pid: number) {
    let finish!: (e: ExitInfo) => void;
    this.exited = new Promise<ExitInfo>((resolve) => (finish = resolve));
    this.timer = setInterval(() => {
      if (qemuPidAlive(this.pid)) return;
      clearInterval(this.timer);
      this.exitInfo = {
        code: null,
        signal: null,
        stderrTail: 'QEMU was reattached after a restart (of its agent or engine), so its exit status is not known',
        expected: this.stopping,
      };
      finish(this.exitInfo);
    }, 100);
  }

  get running(): boolean {
    return this.exitInfo === null;
  }

  get exit(): ExitInfo | null {
    return this.exitInfo;
  }

  /** Stops watching without touching QEMU: the agent is going away and QEMU stays. */
  forget(): void {
    clearInterval(this.timer);
  }

  signal(sig: NodeJS.Signals): void {
    if (this.exitInfo) return;
    try {
      process.kill(this.pid, sig);
    } catch {
      // already gone
    }
  }

  stop(opts: StopOptions = {}): Promise<ExitInfo> {
    if (this.exitInfo) return Promise.resolve(this.exitInfo);
    this.stopping = true;
    return stopEscalating(this, opts);
  }
}

/** Alive and not a zombie: a reparented QEMU may wait unreaped under a pid 1 that never reaps. */
export function qemuPidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}
