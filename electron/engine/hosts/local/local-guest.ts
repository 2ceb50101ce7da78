// One QEMU a local host runs: its process, QMP, console and labload channel, and its state.
import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import { QmpClient, quit } from '../../qmp';
import { LabloadChannel } from '../../guest/labload-channel';
import { describeExit, type ExitInfo, type QemuHandle } from '../../qemu/process';
import { type GuestSpec } from '../../qemu/spec';
import { removeDir } from '../../util/fs';
import { withTimeout } from '../../util/time';
import { GuestConsole } from '../console';
import type { Duplex } from 'node:stream';
import type { Guest, GuestEventMap, GuestQmp, GuestState } from '../host';

export interface LocalGuestParts {
  spec: GuestSpec;
  hostName: string;
  proc: QemuHandle & { forget?: () => void };
  qmp: QmpClient;
  console: GuestConsole;
  labload: LabloadChannel | null;
  /** labload's socket, for an agent that relays its bytes to the engine. */
  control: Duplex | null;
  dir: string;
  startedAt: number;
  /** The -append QEMU was started with (Guest.kernelAppend). */
  kernelAppend: string | null;
  initialState: GuestState;
  switchPort: Guest['switchPort'];
  adopted: boolean;
  /** Its disk is a library image it boots through an overlay in its dir (StartGuestOptions.overlayDisk). */
  overlayDisk?: boolean;
  /** Runs once QEMU is gone and the guest's folder removed; awaited, so its clean-up ends first. */
  onGone: () => void | Promise<void>;
}

export class LocalGuest extends EventEmitter implements Guest {
  readonly id = randomUUID();
  readonly name: string;
  readonly hostName: string;
  readonly spec: GuestSpec;
  readonly console: GuestConsole;
  readonly labload: LabloadChannel | null;
  readonly startedAt: number;
  readonly kernelAppend: string | null;
  readonly switchPort: Guest['switchPort'];
  readonly adopted: boolean;
  /** Boots its library disk through an overlay: a next destination must do the same. */
  readonly overlayDisk: boolean;
  private readonly client: QmpClient;
  private readonly proc: LocalGuestParts['proc'];
  private current: GuestState;
  private stopPromise: Promise<ExitInfo> | null = null;

  constructor(private readonly parts: LocalGuestParts) {
    super();
    this.spec = parts.spec;
    this.name = parts.spec.name;
    this.hostName = parts.hostName;
    this.console = parts.console;
    this.labload = parts.labload;
    this.startedAt = parts.startedAt;
    this.kernelAppend = parts.kernelAppend;
    this.switchPort = parts.switchPort;
    this.adopted = parts.adopted;
    this.overlayDisk = parts.overlayDisk ?? false;
    this.client = parts.qmp;
    this.proc = parts.proc;
    this.current = parts.initialState;
    if (!this.labload && this.current === 'booting') this.current = 'running';
    this.labload?.waitReady(24 * 3600_000).then(
      () => this.markReady(),
      () => {},
    );
    const pattern = readyPatternOf(this.spec);
    if (!this.labload && pattern && parts.initialState !== 'incoming') {
      this.console.waitFor(pattern, 24 * 3600_000, true).then(
        () => this.markReady(),
        () => {},
      );
    }
    // A destination runs once its migration completes: QEMU says so with RESUME.
    if (parts.initialState === 'incoming') {
      const off = this.client.onEvent('RESUME', () => {
        off();
        if (this.current === 'incoming') this.setState('running');
      });
    }
    void this.proc.exited.then((exit) => this.onExit(exit));
  }

  /**
   * Declares the guest booted: labload said so, its console showed its ready pattern, or (for a
   * migration destination) the copy it was migrated from was ready.
   */
  markReady(): void {
    if (['booting', 'running', 'incoming'].includes(this.current)) this.setState('ready');
  }

  get state(): GuestState {
    return this.current;
  }

  /** The guest's own folder: QMP, console and control sockets, and its guest record. */
  get runtimeDir(): string {
    return this.parts.dir;
  }

  /** The full QMP client (an agent uses commands a peer may not send, like object-add). */
  get qmpClient(): QmpClient {
    return this.client;
  }

  /** labload's raw bytes as they arrive, for an agent to relay; returns the unsubscribe. */
  tapControl(listener: (data: Buffer) => void): () => void {
    const c = this.parts.control;
    if (!c) return () => {};
    c.on('data', listener);
    return () => c.off('data', listener);
  }

  /** Bytes to labload from elsewhere (the engine, through an agent). */
  writeControl(data: Buffer): void {
    const c = this.parts.control;
    if (!c || c.destroyed) throw new Error(`Guest "${this.name}" has no labload channel open`);
    c.write(data);
  }

  /** Closes our channels and leaves QEMU running (see LocalHost.detach). */
  async detach(): Promise<void> {
    this.detached = true;
    this.parts.proc.forget?.();
    this.labload?.close();
    this.console.close();
    await this.client.disconnect();
  }

  private detached = false;

  get qmp(): GuestQmp {
    return this.client;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get exit(): ExitInfo | null {
    return this.proc.exit;
  }

  get exited(): Promise<ExitInfo> {
    return this.proc.exited;
  }

  override on<K extends keyof GuestEventMap>(event: K, listener: (...args: GuestEventMap[K]) => void): this {
    return super.on(event, listener as (...a: unknown[]) => void);
  }

  override off<K extends keyof GuestEventMap>(event: K, listener: (...args: GuestEventMap[K]) => void): this {
    return super.off(event, listener as (...a: unknown[]) => void);
  }

  private setState(next: GuestState): void {
    const prev = this.current;
    if (prev === next) return;
    this.current = next;
    this.emit('state', next, prev);
  }

  async waitReady(timeoutMs = 30_000): Promise<void> {
    if (this.current === 'ready') return;
    if (!this.labload && !readyPatternOf(this.spec)) {
      throw new Error(
        `Guest "${this.name}" does not run labload and has no ready pattern, so it cannot report that it is ready`,
      );
    }
    const gone = new Promise<never>((_, reject) => {
      void this.proc.exited.then((exit) =>
        reject(new Error(`Guest "${this.name}" stopped before it was ready: ${describeExit(exit)}`)),
      );
    });
    gone.catch(() => {});
    let onState: ((state: GuestState) => void) | null = null;
    const ready = new Promise<void>((resolve) => {
      onState = (state: GuestState) => {
        if (state === 'ready') resolve();
      };
      this.on('state', onState);
    });
    try {
      await withTimeout(Promise.race([ready, gone]), timeoutMs, `Guest "${this.name}" reporting ready`);
    } finally {
      if (onState) this.off('state', onState);
    }
  }

  stop(): Promise<ExitInfo> {
    this.stopPromise ??= (async () => {
      if (this.proc.running) this.setState('stopping');
      const exit = await this.proc.stop({ quit: () => quit(this.client) });
      await this.proc.exited;
      await this.release();
      return exit;
    })();
    return this.stopPromise;
  }

  private released: Promise<void> | null = null;

  /** Closes every channel and removes the guest's runtime files; runs once. */
  private release(): Promise<void> {
    this.released ??= (async () => {
      this.labload?.close();
      this.console.close();
      await this.client.disconnect();
      await removeDir(this.parts.dir);
      await this.parts.onGone();
    })();
    return this.released;
  }

  private async onExit(exit: ExitInfo): Promise<void> {
    if (this.detached) return;
    await this.release();
    this.setState(exit.expected ? 'stopped' : 'failed');
    this.emit('exit', exit);
  }
}

function readyPatternOf(spec: GuestSpec): string | undefined {
  return spec.boot.kind === 'lab' ? undefined : spec.boot.readyPattern;
}
