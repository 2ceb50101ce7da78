// The floor for `npm run bench:migrate`: one live migration done by hand over raw QMP, with
// none of MigLab's machinery (no QMP client, no host, no orchestrator, no checks, no telemetry).
// It spawns the destination QEMU itself, speaks JSON lines on plain sockets, sets what MigLab
// sets (capability `events` on both sides; max-bandwidth and downtime-limit on the source),
// migrates, polls the source until the migration ends and the destination until it runs.
// Kept minimal on purpose: whatever MigLab spends beyond this is its own cost.
import { spawn, type ChildProcess } from 'node:child_process';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { findLabGuest, labGuestAppend } from '../../electron/engine/guest/image';
import { buildQemuArgv } from '../../electron/engine/qemu/argv';
import { chooseAccelerator, findQemu } from '../../electron/engine/qemu/binary';
import type { GuestSpec } from '../../electron/engine/qemu/spec';
import { labGuestNeedsPti, TCG_SAFE_APPEND } from '../../electron/engine/hosts/local/boot-files';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Every QEMU this module spawned that has not exited yet (for a Ctrl-C in the benchmark). */
const live = new Set<ChildProcess>();

/** SIGKILLs every destination QEMU this module started and that still runs. */
export function killAllRaw(): void {
  for (const child of live) child.kill('SIGKILL');
}

type QmpReply = { return?: unknown; error?: { class: string; desc: string } };

/** A QMP connection by hand: newline-framed JSON, one command at a time, events ignored. */
class RawQmp {
  private buf = '';
  private replies: QmpReply[] = [];
  private waiter: ((r: QmpReply | Error) => void) | null = null;
  private gone: Error | null = null;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      this.buf += chunk;
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as QmpReply & { event?: string };
        if (msg.event) continue;
        this.deliver(msg);
      }
    });
    sock.on('error', (err) => this.deliver(err));
    sock.on('close', () => this.deliver(new Error('the QMP socket closed')));
  }

  private deliver(r: QmpReply | Error): void {
    if (r instanceof Error) this.gone ??= r;
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      w(r);
    } else if (!(r instanceof Error)) this.replies.push(r);
  }

  private next(what: string, timeoutMs: number): Promise<QmpReply> {
    const queued = this.replies.shift();
    if (queued) return Promise.resolve(queued);
    if (this.gone) return Promise.reject(new Error(`${what}: ${this.gone.message}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`${what}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = (r) => {
        clearTimeout(timer);
        if (r instanceof Error) reject(new Error(`${what}: ${r.message}`));
        else resolve(r);
      };
    });
  }

  /** Connects (retrying while QEMU has not made its socket yet), reads the greeting, negotiates. */
  static async open(path: string, retryForMs: number, retryEveryMs = 5): Promise<RawQmp> {
    const deadline = performance.now() + retryForMs;
    for (;;) {
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        const qmp = new RawQmp(sock);
        try {
          await qmp.next(`QMP greeting on ${path}`, 10_000);
          await qmp.cmd('qmp_capabilities');
        } catch (err) {
          qmp.close();
          throw err;
        }
        return qmp;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || performance.now() > deadline) throw err;
        await sleep(retryEveryMs);
      }
    }
  }

  async cmd<T = unknown>(execute: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    this.sock.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
    const r = await this.next(execute, timeoutMs);
    if (r.error) throw new Error(`${execute}: ${r.error.desc}`);
    return r.return as T;
  }

  close(): void {
    this.sock.destroy();
  }
}

interface QueryMigrate {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  'error-desc'?: string;
}

/**
 * The destination for a lab guest: the argv of the source's LaunchConfig (as LocalHost builds
 * it: the image's command line, the guest's name and ip, and TCG_SAFE_APPEND where LocalHost adds it) with
 * `incoming: true, startPaused: false` and sockets in `dir`.
 */
export async function labDestination(spec: GuestSpec, dir: string): Promise<{ qemuPath: string; argv: string[]; qmpSocket: string }> {
  const [qemu, accel, image] = await Promise.all([findQemu(), chooseAccelerator(), findLabGuest()]);
  if (!image) throw new Error('The lab guest is not built: run "npx miglab guest build"');
  const sockets = { qmp: join(dir, 'qmp.sock'), console: join(dir, 'console.sock'), control: join(dir, 'control.sock') };
  const append = labGuestAppend(image.append, {
    name: spec.name,
    ...(spec.ip ? { ip: spec.ip } : {}),
    ...(labGuestNeedsPti(accel.accel, qemu) ? { extra: TCG_SAFE_APPEND } : {}),
  });
  const argv = buildQemuArgv({
    spec,
    accel: accel.accel,
    sockets,
    kernel: { kernel: image.kernel, initrd: image.initrd, append },
    startPaused: false,
    incoming: true,
  });
  return { qemuPath: qemu.path, argv, qmpSocket: sockets.qmp };
}

export interface RawMigrateOptions {
  /** The running source QEMU's QMP socket; nobody else may be connected to it (QEMU serves one client). */
  sourceQmp: string;
  qemuPath: string;
  /** The destination's argv (with `-incoming defer`), its QMP socket and working dir. */
  destination: { argv: string[]; qmpSocket: string; cwd: string };
  /** TCP port on 127.0.0.1 the destination listens on. */
  port: number;
  bandwidthMBps: number;
  downtimeLimitMs: number;
  /** query-migrate (and then query-status) polling interval. Default 20 ms. */
  pollMs?: number;
  /** Give up (cancel, kill the destination) after this long. Default 120 s. */
  timeoutMs?: number;
}

/** ms since the destination was spawned at which each step ended. */
export interface RawSteps {
  /** Destination QMP connected and negotiated. */
  dstQmp: number;
  /** Capabilities on both sides, parameters on the source. */
  configured: number;
  listening: number;
  migrateSent: number;
  /** query-migrate said completed (with total-time filled in). */
  completed: number;
  /** query-status on the destination said running. */
  running: number;
}

export interface RawDestination {
  pid: number | undefined;
  /** How the destination QEMU ended (e.g. the guest panicked: -no-reboot makes QEMU exit), when it has. */
  readonly exit: { code: number | null; signal: string | null; stderr: string } | null;
  /** Quits the destination QEMU (SIGKILL if it does not go within 3 s). */
  stop(): Promise<void>;
}

export interface RawMigrateResult {
  status: 'completed' | 'failed' | 'cancelled';
  /** From spawning the destination to the destination running. */
  wallMs: number;
  totalTimeMs: number | null;
  downtimeMs: number | null;
  setupTimeMs: number | null;
  error: string | null;
  steps: Partial<RawSteps>;
  /** Running when completed (the guest's new home); null otherwise (it was killed). */
  destination: RawDestination | null;
}

/** A raw migration that could not finish; `steps` says how far it got (everything it spawned is gone). */
export class RawMigrateError extends Error {
  constructor(
    message: string,
    readonly steps: Partial<RawSteps>,
    readonly totalTimeMs: number | null,
  ) {
    super(message);
    this.name = 'RawMigrateError';
  }
}

function exitOf(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else {
      child.once('exit', () => resolve());
      child.once('error', () => resolve()); // could not be spawned at all: there will be no exit
    }
  });
}

/**
 * Migrates the guest behind `sourceQmp` to a destination QEMU it spawns. Completed: the
 * destination runs and the source has been sent `quit`. Otherwise everything it spawned is gone.
 */
export async function rawQmpMigrate(opts: RawMigrateOptions): Promise<RawMigrateResult> {
  const pollMs = opts.pollMs ?? 20;
  const uri = `tcp:127.0.0.1:${opts.port}`;
  // The source already runs and MigLab's job starts with its QMP connected: connect before the clock.
  const src = await RawQmp.open(opts.sourceQmp, 0);
  let dst: RawQmp | null = null;
  let child: ChildProcess | null = null;
  let migrating = false;
  let totalTimeMs: number | null = null;
  const steps: Partial<RawSteps> = {};
  try {
    const t0 = performance.now();
    const at = () => performance.now() - t0;
    const deadline = t0 + (opts.timeoutMs ?? 120_000);
    child = spawn(opts.qemuPath, opts.destination.argv, { cwd: opts.destination.cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    live.add(child);
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2000)));
    const c = child;
    c.once('exit', () => live.delete(c));
    const died = exitOf(c).then(() => {
      throw new Error(`the destination QEMU exited (${c.exitCode ?? c.signalCode}): ${stderr.trim() || 'no message'}`);
    });
    died.catch(() => {});

    dst = await Promise.race([RawQmp.open(opts.destination.qmpSocket, 15_000), died]);
    steps.dstQmp = at();
    const caps = { capabilities: [{ capability: 'events', state: true }] };
    await Promise.all([src.cmd('migrate-set-capabilities', caps), dst.cmd('migrate-set-capabilities', caps)]);
    await src.cmd('migrate-set-parameters', {
      'max-bandwidth': Math.round(opts.bandwidthMBps * 1e6),
      'downtime-limit': opts.downtimeLimitMs,
    });
    steps.configured = at();
    await dst.cmd('migrate-incoming', { uri });
    steps.listening = at();
    await src.cmd('migrate', { uri });
    migrating = true;
    steps.migrateSent = at();

    let info: QueryMigrate;
    for (;;) {
      info = await Promise.race([src.cmd<QueryMigrate>('query-migrate'), died]);
      if (info.status === 'failed' || info.status === 'cancelled') break;
      // QEMU says completed a moment before it fills in total-time: ask again until it is there.
      if (info.status === 'completed' && (info['total-time'] ?? 0) > 0) break;
      if (performance.now() > deadline) throw new Error(`the migration did not complete in time (status ${info.status})`);
      await Promise.race([sleep(info.status === 'completed' ? 2 : pollMs), died]);
    }
    migrating = false;
    if (info.status !== 'completed') {
      const reason = info['error-desc'] ?? `QEMU says ${info.status}`;
      c.kill('SIGKILL');
      await exitOf(c);
      return {
        status: info.status === 'cancelled' ? 'cancelled' : 'failed', wallMs: at(), totalTimeMs: null, downtimeMs: null,
        setupTimeMs: null, error: reason, steps, destination: null,
      };
    }
    steps.completed = at();
    totalTimeMs = info['total-time'] ?? null;
    for (;;) {
      const st = await Promise.race([dst.cmd<{ status: string }>('query-status'), died]);
      if (st.status === 'running') break;
      if (performance.now() > deadline) throw new Error(`the destination did not start running (it is ${st.status})`);
      await Promise.race([sleep(pollMs), died]);
    }
    steps.running = at();
    const wallMs = at();

    await src.cmd('quit').catch(() => {}); // the guest lives on the destination now
    const d = dst;
    return {
      status: 'completed', wallMs,
      totalTimeMs: info['total-time'] ?? null, downtimeMs: info.downtime ?? null, setupTimeMs: info['setup-time'] ?? null,
      error: null, steps,
      destination: {
        pid: c.pid,
        get exit() {
          return c.exitCode === null && c.signalCode === null ? null : { code: c.exitCode, signal: c.signalCode, stderr: stderr.trim() };
        },
        async stop() {
          await Promise.race([d.cmd('quit').catch(() => {}), sleep(3000)]);
          await Promise.race([exitOf(c), sleep(3000)]);
          c.kill('SIGKILL');
          await exitOf(c);
          d.close();
        },
      },
    };
  } catch (err) {
    if (migrating) await src.cmd('migrate_cancel').catch(() => {});
    dst?.close();
    if (child) {
      child.kill('SIGKILL');
      await exitOf(child);
    }
    throw new RawMigrateError((err as Error).message, steps, totalTimeMs);
  } finally {
    src.close();
  }
}
