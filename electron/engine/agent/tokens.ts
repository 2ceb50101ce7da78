// The agent's access tokens: one JSON file holding only each token's SHA-256, so reading the
// file never yields a usable token. The running agent and `miglab agent token ...` share the
// file; a revocation by either reaches the other through the file's mtime.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync, unwatchFile, watchFile, type Stats } from 'node:fs';
import { chmod, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

export const TOKEN_PREFIX = 'mlt_';
// mlt_ + base64url of 32 bytes (43 characters, no padding)
const TOKEN_PATTERN = /^mlt_[A-Za-z0-9_-]{43}$/;
const ID_PATTERN = /^[0-9a-f]{8}$/;
/** verify() looks at the file at most this often: often enough for a revocation to bite. */
const STAT_EVERY_MS = 250;
const WATCH_INTERVAL_MS = 500;
const MAX_LABEL = 200;

export interface TokenEntry {
  id: string;
  label: string;
  /** hex SHA-256 of the token text */
  sha256: string;
  createdAt: string;
  revokedAt: string | null;
}

export interface TokenInfo {
  id: string;
  label: string;
  createdAt: string;
  revokedAt: string | null;
}

interface TokenFile {
  version: 1;
  tokens: TokenEntry[];
}

export class TokenStoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenStoreError';
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** What identifies one version of the file: a rename gives a new inode even within one mtime tick. */
function signature(st: Stats | null): string {
  return st ? `${st.ino}:${st.size}:${st.mtimeMs}` : 'missing';
}

function statOrNull(file: string): Stats | null {
  try {
    return statSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

function parseEntry(v: unknown): TokenEntry | null {
  if (typeof v !== 'object' || v === null) return null;
  const e = v as Record<string, unknown>;
  if (typeof e.id !== 'string' || !ID_PATTERN.test(e.id)) return null;
  if (typeof e.label !== 'string') return null;
  if (typeof e.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(e.sha256)) return null;
  if (typeof e.createdAt !== 'string') return null;
  if (e.revokedAt !== null && typeof e.revokedAt !== 'string') return null;
  return { id: e.id, label: e.label, sha256: e.sha256, createdAt: e.createdAt, revokedAt: e.revokedAt };
}

/** The file's entries; missing = none; anything else unreadable is an error naming the file. */
function readTokenFile(file: string): { entries: TokenEntry[]; sig: string } {
  const st = statOrNull(file);
  if (!st) return { entries: [], sig: signature(null) };
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { entries: [], sig: signature(null) };
    throw new TokenStoreError(`Cannot read the token file ${file}: ${(err as Error).message}`);
  }
  const garbled = (why: string) =>
    new TokenStoreError(
      `The token file ${file} is garbled (${why}). Fix it, or delete it to revoke every token ` +
        '(the agent then prints a new pairing token on its next start).',
    );
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw garbled(`not JSON: ${(err as Error).message}`);
  }
  const tokens = (data as Partial<TokenFile> | null)?.tokens;
  if ((data as Partial<TokenFile> | null)?.version !== 1 || !Array.isArray(tokens)) throw garbled('expected {"version": 1, "tokens": [...]}');
  const entries: TokenEntry[] = [];
  for (const [i, raw] of tokens.entries()) {
    const entry = parseEntry(raw);
    if (!entry) throw garbled(`entry ${i} is not {id, label, sha256, createdAt, revokedAt}`);
    entries.push(entry);
  }
  return { entries, sig: signature(st) };
}

/**
 * Tokens as their hashes. verify() is synchronous and cheap (it runs for every connection
 * attempt); changes go through a re-read of the file so two processes do not undo each other.
 */
export class TokenStore {
  private entries: TokenEntry[] = [];
  private sig = 'missing';
  private lastStatAt = 0;
  /** Set while the file cannot be read: every token is refused until it can (fail closed). */
  private loadError: TokenStoreError | null = null;
  private readonly watchers = new Set<() => void>();

  private constructor(readonly file: string) {}

  /** The store in `file`; a missing file is an empty store, a garbled one an error. */
  static async open(file: string): Promise<TokenStore> {
    const store = new TokenStore(file);
    store.load();
    return store;
  }

  /** Why tokens are being refused, when the file became unreadable after open. */
  get problem(): string | null {
    return this.loadError?.message ?? null;
  }

  /** A new token; it is returned this once and never stored. */
  async create(label: string): Promise<{ id: string; token: string }> {
    const clean = String(label).replace(/[\x00-\x1f\x7f]/g, ' ').trim().slice(0, MAX_LABEL);
    this.load();
    const token = `${TOKEN_PREFIX}${randomBytes(32).toString('base64url')}`;
    let id: string;
    do id = randomBytes(4).toString('hex');
    while (this.entries.some((e) => e.id === id));
    const entries = [
      ...this.entries,
      { id, label: clean, sha256: sha256(token).toString('hex'), createdAt: new Date().toISOString(), revokedAt: null },
    ];
    await this.save(entries);
    return { id, token };
  }

  /**
   * Who holds `token`, or null: unknown, revoked, malformed, or anything that is not a string.
   * Never throws; compares hashes in constant time.
   */
  verify(token: string): { id: string; label: string } | null {
    if (typeof token !== 'string' || token.length !== 47 || !TOKEN_PATTERN.test(token)) return null;
    const given = sha256(token);
    this.refresh();
    // A token "miglab agent token new" made a moment ago is in the file but not yet in memory
    // (the file is looked at every STAT_EVERY_MS): an unknown one makes it look now. A stat.
    let found = this.match(given);
    if (!found) {
      this.refresh(true);
      found = this.match(given);
    }
    return found ? { id: found.id, label: found.label } : null;
  }

  /** The active entry whose hash is `given`; every entry is compared, so the time taken does not tell which. */
  private match(given: Buffer): TokenEntry | null {
    if (this.loadError) return null;
    let found: TokenEntry | null = null;
    for (const e of this.entries) {
      const match = timingSafeEqual(given, Buffer.from(e.sha256, 'hex'));
      if (match && e.revokedAt === null) found = e;
    }
    return found;
  }

  /** Revokes by id or by the token itself; false when nothing active matched. */
  async revoke(idOrToken: string): Promise<boolean> {
    if (typeof idOrToken !== 'string') return false;
    this.load();
    const key = idOrToken.trim();
    const hash = TOKEN_PATTERN.test(key) ? sha256(key).toString('hex') : null;
    const target = this.entries.find((e) => e.revokedAt === null && (e.id === key.toLowerCase() || e.sha256 === hash));
    if (!target) return false;
    const now = new Date().toISOString();
    await this.save(this.entries.map((e) => (e === target ? { ...e, revokedAt: now } : e)));
    return true;
  }

  list(): TokenInfo[] {
    this.refresh();
    return this.entries.map(({ id, label, createdAt, revokedAt }) => ({ id, label, createdAt, revokedAt }));
  }

  /**
   * Calls `listener` with the ids of tokens revoked (or removed from the file) since the
   * watch began, by this process or another. Returns the function that stops watching.
   */
  watchRevocations(listener: (ids: string[]) => void): () => void {
    const reported = new Set(this.entries.filter((e) => e.revokedAt !== null).map((e) => e.id));
    const known = new Set(this.entries.map((e) => e.id));
    const check = () => {
      const present = new Map(this.entries.map((e) => [e.id, e]));
      const gone: string[] = [];
      for (const e of this.entries) known.add(e.id);
      for (const id of known) {
        if (reported.has(id)) continue;
        // An unreadable file fails closed: its tokens count as gone.
        const e = this.loadError ? undefined : present.get(id);
        if (!e || e.revokedAt !== null) gone.push(id);
      }
      for (const id of gone) reported.add(id);
      if (gone.length) listener(gone);
    };
    const onChange = () => {
      this.refresh(true);
    };
    this.watchers.add(check);
    // Polling, not inotify: it sees the CLI's rename-over-the-file the same way on every system.
    // Persistent, so a watch left running shows (it holds the process) instead of hiding.
    watchFile(this.file, { interval: WATCH_INTERVAL_MS, persistent: true }, onChange);
    let stopped = false;
    return () => {
      if (stopped) return;
      stopped = true;
      unwatchFile(this.file, onChange);
      this.watchers.delete(check);
    };
  }

  /** Re-reads the file if it changed: at most every STAT_EVERY_MS unless forced. Never throws. */
  private refresh(force = false): void {
    const now = performance.now();
    if (!force && now - this.lastStatAt < STAT_EVERY_MS) return;
    this.lastStatAt = now;
    let sig: string;
    try {
      sig = signature(statOrNull(this.file));
    } catch {
      sig = 'unreadable';
    }
    if (sig === this.sig && !this.loadError) return;
    try {
      this.load();
    } catch (err) {
      this.sig = sig;
      this.loadError = err instanceof TokenStoreError ? err : new TokenStoreError(`Cannot read the token file ${this.file}: ${(err as Error).message}`);
      this.notify();
    }
  }

  /** Reads the file now; throws (naming the file) when it cannot be read. */
  private load(): void {
    const { entries, sig } = readTokenFile(this.file);
    this.entries = entries;
    this.sig = sig;
    this.loadError = null;
    this.lastStatAt = performance.now();
    this.notify();
  }

  /** tmp + rename: a reader sees the old file or the new one, never half of one. */
  private async save(entries: TokenEntry[]): Promise<void> {
    const body: TokenFile = { version: 1, tokens: entries };
    await mkdir(dirname(this.file), { recursive: true, mode: 0o700 });
    const tmp = `${this.file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await writeFile(tmp, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600 });
      await chmod(tmp, 0o600);
      await rename(tmp, this.file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw new TokenStoreError(`Cannot write the token file ${this.file}: ${(err as Error).message}`);
    }
    this.entries = entries;
    this.loadError = null;
    try {
      this.sig = signature(statOrNull(this.file));
    } catch {
      this.sig = 'unreadable';
    }
    this.lastStatAt = performance.now();
    this.notify();
  }

  private notify(): void {
    for (const check of this.watchers) {
      try {
        check();
      } catch {
        // a listener's failure is its own; the store and the other watchers go on
      }
    }
  }
}
