/**
 * One promise per key, made on first use: a slow look-up (a QEMU probe, a KVM test, a build)
 * runs once per process. A rejected promise is forgotten, so a later call tries again (after
 * the user installed what was missing, say).
 */
export class PromiseCache<V> {
  private readonly entries = new Map<string, Promise<V>>();

  get(key: string, make: () => Promise<V>): Promise<V> {
    let p = this.entries.get(key);
    if (!p) {
      p = make();
      this.entries.set(key, p);
      p.catch(() => this.entries.delete(key));
    }
    return p;
  }

  clear(): void {
    this.entries.clear();
  }
}
