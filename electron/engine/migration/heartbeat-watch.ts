// The guest's own view of a migration (labload's heartbeats, host receive times): the last beat
// the source delivered before the switchover, the first the destination delivers after it, and
// whether the destination keeps beating.
import type { Guest } from '../hosts/host';
import type { Heartbeat } from '../guest/labload-channel';

export class HeartbeatWatch {
  private srcLast: Heartbeat | null = null;
  private dstFirst: Heartbeat | null = null;
  private stopped = false;
  private readonly offs: Array<() => void> = [];
  private readonly firstWaiters: Array<() => void> = [];

  constructor(
    source: Guest,
    /** Called with the guest's downtime as it saw it, once the destination's first beat arrives. */
    private readonly onGap: (gapMs: number) => void,
  ) {
    const ch = source.labload;
    if (!ch) return;
    const onBeat = (hb: Heartbeat) => {
      if (!this.stopped) this.srcLast = hb;
    };
    ch.on('heartbeat', onBeat);
    this.offs.push(() => ch.off('heartbeat', onBeat));
  }

  /** The source stopped (QEMU's STOP): later source beats are buffered ones, not the guest running. */
  sourceStopped(): void {
    this.stopped = true;
  }

  watchDestination(dst: Guest): void {
    const ch = dst.labload;
    if (!ch) return;
    const onBeat = (hb: Heartbeat) => {
      if (this.dstFirst) return;
      this.dstFirst = hb;
      for (const w of this.firstWaiters.splice(0)) w();
      if (this.srcLast) this.onGap(hb.hostMs - this.srcLast.hostMs);
    };
    ch.on('heartbeat', onBeat);
    this.offs.push(() => ch.off('heartbeat', onBeat));
  }

  /** Resolves at the destination's first heartbeat (at once if it came already). */
  firstDestinationBeat(): Promise<void> {
    if (this.dstFirst) return Promise.resolve();
    return new Promise((resolve) => this.firstWaiters.push(resolve));
  }

  get destinationBeating(): boolean {
    return this.dstFirst !== null;
  }

  /** Last source beat to first destination beat, 0.1 ms; null without labload or a beat on each side. */
  guestDowntimeMs(): number | null {
    if (!this.srcLast || !this.dstFirst) return null;
    return Math.round((this.dstFirst.hostMs - this.srcLast.hostMs) * 10) / 10;
  }

  close(): void {
    for (const off of this.offs.splice(0)) off();
  }
}
