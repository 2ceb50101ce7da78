import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * `rel` (a folder of the source tree, e.g. scripts/guest or .vite/renderer/main_window) found by
 * walking up from this module (works from the source tree and from a bundle next to it), else
 * from the cwd; null when no candidate passes `ok`.
 */
export function findUpwards(rel: string, ok: (dir: string) => boolean): string | null {
  const starts: string[] = [];
  try {
    starts.push(dirname(fileURLToPath(import.meta.url)));
  } catch {
    /* not a file: URL (bundled differently) */
  }
  starts.push(process.cwd());
  for (const start of starts) {
    let d = start;
    for (let i = 0; i < 8; i++) {
      const cand = join(d, rel);
      if (ok(cand)) return cand;
      const up = dirname(d);
      if (up === d) break;
      d = up;
    }
  }
  return null;
}

/** scripts/<sub> (C sources and guest files the engine builds from). */
export function findScriptsSubdir(sub: string, ok: (dir: string) => boolean): string | null {
  return findUpwards(join('scripts', sub), ok);
}
