// A token bucket, for every front door that must bound what a peer may send: the agent's RPC
// connections and failed logins, and the web server's clients.
/** Token bucket: `rate` messages a second, bursts up to `burst`. */
export class RateLimit {
  private tokens: number;
  private last = performance.now();
  constructor(
    private readonly rate: number,
    private readonly burst: number,
  ) {
    this.tokens = burst;
  }
  take(): boolean {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
