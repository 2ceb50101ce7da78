// The emulated link of one migration (a relay on the destination): opened once the destination
// listens, its counters reported twice a second while the stream flows, closed with the job.
import type { Host, LinkRelayControl } from '../hosts/host';
import type { LinkProfile, LinkRelayStats } from '../network/link-profile';

const REPORT_MS = 500;

export class LinkWatch {
  private relay: LinkRelayControl | null = null;
  private last: LinkRelayStats | null = null;
  private reportedAt = -Infinity;

  constructor(
    private readonly profile: Partial<LinkProfile> | null,
    private readonly describe: () => { guest: string; to: string; phase: string },
    private readonly onStats: (stats: LinkRelayStats) => void,
  ) {}

  /** The port the source connects to: the relay's with a profile, else the destination's own. */
  async open(to: Host, port: number): Promise<number> {
    if (!this.profile) return port;
    this.relay = await to.openLinkRelay(port, this.profile);
    this.publish(await this.relay.stats());
    return this.relay.port;
  }

  get stats(): LinkRelayStats | null {
    return this.last;
  }

  /** Counters while the stream flows, at most twice a second; never throws. */
  report(): void {
    const relay = this.relay;
    if (!relay || performance.now() - this.reportedAt < REPORT_MS) return;
    this.reportedAt = performance.now();
    void relay.stats().then((s) => this.publish(s), () => {});
  }

  /** Change the profile, pull the cable or plug it back. */
  async control(action: { profile: Partial<LinkProfile> } | 'cut' | 'restore'): Promise<LinkRelayStats> {
    if (!this.relay) {
      const { guest, to, phase } = this.describe();
      if (!this.profile) throw new Error('This migration has no emulated link: start it with the link option');
      if (this.last) throw new Error(`The migration of ${guest} is over (${phase}): its emulated link closed with it`);
      throw new Error(`The emulated link of ${guest}'s migration opens once ${to} listens (the migration is at ${phase}): try again in a moment`);
    }
    const stats = action === 'cut' ? await this.relay.cut() : action === 'restore' ? await this.relay.restore() : await this.relay.setProfile(action.profile);
    this.publish(stats);
    return stats;
  }

  /** Closes the relay, keeping its last counters for the result. */
  async close(): Promise<void> {
    const relay = this.relay;
    if (!relay) return;
    this.relay = null;
    this.last = await relay.stats().catch(() => this.last);
    await relay.close().catch(() => {});
  }

  private publish(stats: LinkRelayStats): void {
    this.last = stats;
    this.onStats(stats);
  }
}
