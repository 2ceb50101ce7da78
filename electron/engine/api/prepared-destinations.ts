// Destinations started while the Migrate dialog is open: the pre-flight starts the destination
// QEMU (paused, -incoming defer) for the guest on the host the dialog names, and the migration
// that follows takes it instead of starting its own, so the QEMU start leaves the migration's
// critical path. One per guest; stopped when the dialog closes, after 5 idle minutes, when the
// guest moves or stops, or when the service goes.
import type { Guest, Host } from '../hosts/host';
import { startDestination } from '../migration/preflight';

/** A prepared destination nobody migrated to within this long is stopped (the dialog was left open). */
export const PREPARED_IDLE_MS = 5 * 60_000;

interface Prepared {
  /** The copy that runs the guest now, as it was when the dialog asked. */
  source: Guest;
  to: Host;
  /** The destination once started; null when its start failed (the job then starts its own). */
  started: Promise<Guest | null>;
  idle: NodeJS.Timeout;
}

export class PreparedDestinations {
  private readonly byGuest = new Map<string, Prepared>();
  /** Stops under way (released, replaced, disposed): dispose() waits for them all. */
  private readonly stopping = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly idleMs = PREPARED_IDLE_MS) {}

  /**
   * Starts the destination for `source` on `to`, unless one is already there for that very copy
   * (a second pre-flight of the same dialog); another host's is stopped first. Returns the start,
   * which never rejects: a destination that could not start is simply not prepared.
   */
  prepare(source: Guest, from: Host, to: Host): Promise<Guest | null> {
    if (this.closed) return Promise.resolve(null);
    const have = this.byGuest.get(source.name);
    if (have && have.source === source && have.to === to) {
      have.idle.refresh();
      return have.started;
    }
    if (have) this.drop(source.name, have);
    const started = startDestination(source, from, to)
      .then(
        (dst) => {
          // Its own end (it crashed, or someone stopped it) ends the entry; so does the source's.
          void dst.exited.then(() => this.forgetIf(source.name, entry));
          return dst;
        },
        () => {
          this.forgetIf(source.name, entry);
          return null;
        },
      );
    const entry: Prepared = {
      source, to, started,
      idle: setTimeout(() => this.forgetIf(source.name, entry, true), this.idleMs).unref(),
    };
    this.byGuest.set(source.name, entry);
    // The guest moved (its source copy quits once a migration completes) or stopped.
    void source.exited.then(() => this.forgetIf(source.name, entry, true));
    return started;
  }

  /** The prepared destination of this guest, if any (started or starting), and where. */
  has(guest: string): { to: string } | null {
    const p = this.byGuest.get(guest);
    return p ? { to: p.to.name } : null;
  }

  /**
   * Hands the destination prepared for this copy of the guest on `to` to a migration, which owns
   * it from then on; null when there is none that fits (one for another host or an earlier copy is
   * stopped). Waits for a start still under way.
   */
  async take(source: Guest, to: Host): Promise<Guest | null> {
    const p = this.byGuest.get(source.name);
    if (!p) return null;
    if (p.source !== source || p.to !== to) {
      this.drop(source.name, p);
      return null;
    }
    this.byGuest.delete(source.name);
    clearTimeout(p.idle);
    const dst = await p.started;
    if (!dst || dst.exit || dst.state !== 'incoming' || source.exit) {
      if (dst && !dst.exit) this.track(dst.stop().then(() => {}, () => {}));
      return null;
    }
    return dst;
  }

  /** Stops this guest's prepared destination; false when it had none. */
  async release(guest: string): Promise<boolean> {
    const p = this.byGuest.get(guest);
    if (!p) return false;
    await this.drop(guest, p);
    return true;
  }

  /** Stops every prepared destination (the service goes); later pre-flights prepare nothing. */
  async dispose(): Promise<void> {
    this.closed = true;
    for (const [guest, p] of [...this.byGuest]) this.drop(guest, p);
    while (this.stopping.size) await Promise.all([...this.stopping]);
  }

  private forgetIf(guest: string, entry: Prepared, stop = false): void {
    if (this.byGuest.get(guest) !== entry) return;
    if (stop) this.drop(guest, entry);
    else {
      this.byGuest.delete(guest);
      clearTimeout(entry.idle);
    }
  }

  private drop(guest: string, p: Prepared): Promise<void> {
    if (this.byGuest.get(guest) === p) this.byGuest.delete(guest);
    clearTimeout(p.idle);
    return this.track(p.started.then(async (dst) => {
      if (dst && !dst.exit) await dst.stop().catch(() => {});
    }));
  }

  private track(stop: Promise<void>): Promise<void> {
    this.stopping.add(stop);
    void stop.finally(() => this.stopping.delete(stop));
    return stop;
  }
}
