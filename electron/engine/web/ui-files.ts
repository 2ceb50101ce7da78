// The built UI as files to serve, for both front doors: browser mode's HTTP server and the
// desktop app's miglab://app/ protocol. One policy, one path check, one place that finds it.
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { findUpwards } from '../util/scripts-dir';

/** The UI's content security policy: our scripts, our styles, our own WebSocket, nothing else. */
export const UI_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.woff2': 'font/woff2',
  '.map': 'application/json',
};

export function contentType(file: string): string {
  return TYPES[extname(file)] ?? 'application/octet-stream';
}

/** The file a URL path names inside `root` ("/" is index.html), or null: no path can leave it. */
export function uiFilePath(root: string, urlPath: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (decoded.includes('\0')) return null;
  const base = resolve(root);
  const file = resolve(join(base, normalize(decoded === '/' ? '/index.html' : decoded)));
  return file.startsWith(base + sep) ? file : null;
}

/** As uiFilePath, and only when that file exists. */
export async function existingUiFile(root: string, urlPath: string): Promise<string | null> {
  const file = uiFilePath(root, urlPath);
  if (!file) return null;
  try {
    return (await stat(file)).isFile() ? file : null;
  } catch {
    return null;
  }
}

/** The renderer as Forge's Vite plugin builds it (.vite/renderer/main_window), or null. */
export function findBuiltUi(): string | null {
  return findUpwards(join('.vite', 'renderer', 'main_window'), (d) => existsSync(join(d, 'index.html')));
}
