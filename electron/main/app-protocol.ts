// The miglab://app/ protocol: the built UI, served from its folder with the app's CSP. A request
// can name only files inside that folder.
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { APP_CSP, APP_ORIGIN } from './channels';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.woff2': 'font/woff2',
};

/** The file a miglab://app/ URL names, or null when it is not one inside `uiDir`. */
export function resolveAppFile(uiDir: string, url: string): string | null {
  if (!url.startsWith(`${APP_ORIGIN}/`)) return null;
  let path: string;
  try {
    path = decodeURIComponent(new URL(url).pathname);
  } catch {
    return null;
  }
  if (path.includes('\0')) return null;
  const root = resolve(uiDir);
  const file = resolve(join(root, normalize(path === '/' ? '/index.html' : path)));
  return file.startsWith(root + sep) ? file : null;
}

/** The handler for protocol.handle(APP_SCHEME, ...). */
export function appProtocolHandler(uiDir: string): (req: Request) => Promise<Response> {
  return async (req) => {
    const file = resolveAppFile(uiDir, req.url);
    if (!file) return new Response('Not found', { status: 404 });
    try {
      const body = await readFile(file);
      return new Response(body, {
        headers: { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'content-security-policy': APP_CSP, 'x-content-type-options': 'nosniff' },
      });
    } catch {
      return new Response('Not found', { status: 404 });
    }
  };
}
