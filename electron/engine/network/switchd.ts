// Finding, or building, miglab-switchd: the lab switch's data plane (scripts/switch/switchd.c).
// Built with gcc (which the lab guest needs too) into the cache, keyed by a hash of its source.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { cachePath, defaultCacheRoot } from '../util/paths';
import { PromiseCache } from '../util/promise-cache';
import { runTool } from '../util/host-tools';
import { findScriptsSubdir } from '../util/scripts-dir';

export class SwitchdBuildError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SwitchdBuildError';
  }
}

const built = new PromiseCache<string>(); // a failed build is tried again next time

/** The switchd binary: $MIGLAB_SWITCHD, else the cached build of this source, built if missing. */
export function ensureSwitchd(opts: { cacheRoot?: string } = {}): Promise<string> {
  if (process.env.MIGLAB_SWITCHD) return Promise.resolve(process.env.MIGLAB_SWITCHD);
  const root = opts.cacheRoot ?? defaultCacheRoot();
  return built.get(root, () => build(root));
}

async function build(cacheRoot: string): Promise<string> {
  const dir = findScriptsSubdir('switch', (d) => existsSync(join(d, 'switchd.c')));
  if (!dir) throw new SwitchdBuildError('Cannot find scripts/switch/switchd.c (the lab switch): run MigLab from its source tree, or set MIGLAB_SWITCHD to a built miglab-switchd');
  const src = join(dir, 'switchd.c');
  const key = createHash('sha256').update(await readFile(src)).digest('hex').slice(0, 16);
  const out = cachePath(cacheRoot, 'switchd', key, 'miglab-switchd');
  if (existsSync(out)) return out;
  await mkdir(cachePath(cacheRoot, 'switchd', key), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    await runTool('gcc', ['-O2', '-Wall', '-o', tmp, src], { timeoutMs: 60_000 });
    await rename(tmp, out); // atomic: another process never runs a half-written binary
  } catch (err) {
    await rm(tmp, { force: true });
    throw new SwitchdBuildError(`Could not build the lab switch (${src}): ${(err as Error).message}`);
  }
  return out;
}
