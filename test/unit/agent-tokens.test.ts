// The agent's token store on a real file: what it keeps (hashes only), what it accepts, and a
// revocation made by another instance (as the CLI does) reaching a running one.
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenStore } from '../../electron/engine/agent/tokens';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

let work: string;
let n = 0;
const freshFile = () => join(work, `tokens-${++n}.json`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  work = await makeTempDir('ut-tokens');
});

afterAll(async () => {
  await removeDir(work);
});

describe('TokenStore', () => {
  it('accepts a token another instance made a moment ago (the CLI\'s "agent token new", then a connection)', async () => {
    const file = freshFile();
    const agent = await TokenStore.open(file);
    const first = await agent.create('pairing');
    expect(agent.verify(first.token)).not.toBeNull(); // the agent has just looked at its file
    const cli = await TokenStore.open(file);
    const made = await cli.create('laptop of ana');
    expect(agent.verify(made.token)).toMatchObject({ label: 'laptop of ana' });
    expect(agent.verify(`${made.token.slice(0, -1)}${made.token.endsWith('A') ? 'B' : 'A'}`)).toBeNull();
  });

  it('creates, verifies, lists and revokes tokens', async () => {
    const file = freshFile();
    const store = await TokenStore.open(file);
    expect(store.list()).toEqual([]);

    const a = await store.create('laptop');
    const b = await store.create('ci');
    expect(a.token).toMatch(/^mlt_[A-Za-z0-9_-]{43}$/);
    expect(a.id).toMatch(/^[0-9a-f]{8}$/);
    expect(a.token).not.toBe(b.token);
    expect(store.verify(a.token)).toEqual({ id: a.id, label: 'laptop' });
    expect(store.verify(b.token)).toEqual({ id: b.id, label: 'ci' });
    expect(store.list().map((t) => [t.id, t.label, t.revokedAt])).toEqual([
      [a.id, 'laptop', null],
      [b.id, 'ci', null],
    ]);
    expect(Date.parse(store.list()[0]!.createdAt)).toBeGreaterThan(Date.now() - 10_000);

    expect(await store.revoke(a.id)).toBe(true);
    expect(store.verify(a.token)).toBeNull();
    expect(store.verify(b.token)).not.toBeNull();
    expect(await store.revoke(a.id)).toBe(false); // already revoked
    expect(await store.revoke(b.token)).toBe(true); // by the token itself
    expect(store.verify(b.token)).toBeNull();
    expect(await store.revoke('00000000')).toBe(false);
    expect(store.list().every((t) => t.revokedAt !== null)).toBe(true);

    // A token one character off is refused.
    const c = await store.create('c');
    const last = c.token.at(-1) === 'A' ? 'B' : 'A';
    expect(store.verify(c.token.slice(0, -1) + last)).toBeNull();

    // Reopened, everything is as it was.
    const reopened = await TokenStore.open(file);
    expect(reopened.list()).toEqual(store.list());
    expect(reopened.verify(c.token)).toEqual({ id: c.id, label: 'c' });
    expect(reopened.verify(a.token)).toBeNull();
  });

  it('keeps only hashes in a private file', async () => {
    const file = freshFile();
    const store = await TokenStore.open(file);
    const tokens = [await store.create('one'), await store.create('two')];
    await store.revoke(tokens[0]!.id);
    const text = await readFile(file, 'utf8');
    for (const t of tokens) {
      expect(text).not.toContain(t.token);
      expect(text).not.toContain(t.token.slice(4)); // nor its random part
    }
    expect(text).toContain(tokens[1]!.id);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(JSON.parse(text).tokens[0]).toEqual({
      id: tokens[0]!.id,
      label: 'one',
      sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      createdAt: expect.any(String),
      revokedAt: expect.any(String),
    });
  });

  it('returns null for malformed input instead of throwing', async () => {
    const store = await TokenStore.open(freshFile());
    const { token } = await store.create('x');
    const bad: unknown[] = [
      '',
      'mlt_',
      'x'.repeat(1024 * 1024),
      `mlt_${'A'.repeat(1024 * 1024)}`,
      token.replace(/^mlt_/, 'tok_'),
      token.slice(4),
      `${token} `,
      `${token}\n`,
      token.slice(0, 20) + '!' + token.slice(21),
      undefined,
      null,
      42,
      { toString: () => token },
      [token],
      Buffer.from(token),
    ];
    for (const input of bad) expect(store.verify(input as string)).toBeNull();
    expect(store.verify(token)).not.toBeNull();
    expect(await store.revoke(undefined as unknown as string)).toBe(false);
  });

  it('sees a revocation made by another instance on the same file', async () => {
    const file = freshFile();
    const agent = await TokenStore.open(file);
    const { id, token } = await agent.create('pairing');
    const other = await agent.create('other');
    const revoked: string[][] = [];
    const statWatchers = () => process.getActiveResourcesInfo().filter((r) => r === 'StatWatcher').length;
    const watchersBefore = statWatchers();
    const stop = agent.watchRevocations((ids) => revoked.push(ids));
    expect(statWatchers()).toBe(watchersBefore + 1);
    try {
      expect(agent.verify(token)).toEqual({ id, label: 'pairing' });

      const cli = await TokenStore.open(file);
      expect(cli.verify(token)).not.toBeNull();
      expect(await cli.revoke(id)).toBe(true);
      await sleep(300);
      expect(agent.verify(token)).toBeNull();
      expect(agent.verify(other.token)).not.toBeNull();
      expect(agent.list().find((t) => t.id === id)?.revokedAt).not.toBeNull();

      // The watcher reports it once, and the next one that happens with nobody calling verify.
      const deadline = Date.now() + 3000;
      while (revoked.length < 1 && Date.now() < deadline) await sleep(50);
      expect(revoked).toEqual([[id]]);
      await cli.revoke(other.id);
      while (revoked.length < 2 && Date.now() < deadline + 3000) await sleep(50);
      expect(revoked).toEqual([[id], [other.id]]);

      // A token made by the CLI is accepted by the running store too.
      const fresh = await cli.create('from-cli');
      await sleep(300);
      expect(agent.verify(fresh.token)).toEqual({ id: fresh.id, label: 'from-cli' });
      // ... and its own revocations are reported at once.
      await agent.revoke(fresh.id);
      expect(revoked).toEqual([[id], [other.id], [fresh.id]]);
    } finally {
      stop();
    }
    expect(statWatchers()).toBe(watchersBefore); // no poller left running
    stop(); // twice is harmless
    // Stopped: nothing more is reported.
    const late = await agent.create('late');
    await (await TokenStore.open(file)).revoke(late.id);
    await sleep(700);
    expect(revoked).toHaveLength(3);
  });

  it('refuses every token while its file is garbled, and names the file when opening it', async () => {
    const file = freshFile();
    const store = await TokenStore.open(file);
    const { token } = await store.create('x');
    await writeFile(file, '{"version": 1, "tokens": [');
    await expect(TokenStore.open(file)).rejects.toThrow(new RegExp(`The token file ${file} is garbled \\(not JSON.*delete it to revoke every token`));
    await sleep(300);
    expect(store.verify(token)).toBeNull(); // fails closed
    expect(store.problem).toContain(file);
    await expect(store.create('y')).rejects.toThrow(/is garbled/);

    await writeFile(file, JSON.stringify({ version: 1, tokens: [{ id: 'nothex!!', label: 'x' }] }));
    await expect(TokenStore.open(file)).rejects.toThrow(/entry 0 is not \{id, label, sha256, createdAt, revokedAt\}/);
    await writeFile(file, JSON.stringify([1, 2, 3]));
    await expect(TokenStore.open(file)).rejects.toThrow(/expected \{"version": 1, "tokens": \[\.\.\.\]\}/);
  });

  it('treats a missing file as an empty store, made on the first token', async () => {
    const file = join(work, 'not-yet', 'tokens.json');
    const store = await TokenStore.open(file);
    expect(store.list()).toEqual([]);
    const { token } = await store.create('first');
    expect(store.verify(token)).not.toBeNull();
    expect((await stat(join(work, 'not-yet'))).mode & 0o777).toBe(0o700);
  });
});
