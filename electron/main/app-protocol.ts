// The miglab://app/ protocol: the built UI, served from its folder with the app's CSP. A request
// can name only files inside that folder.
import { readFile } from 'node:fs/promises';
import { contentType, uiFilePath, UI_CSP } from '../engine/web/ui-files';
import { APP_ORIGIN } from '../engine/api/ipc-channels';

/** The file a miglab://app/ URL names, or null when it is not one inside `uiDir`. */
export function resolveAppFile(uiDir: string, url: string): string | null {
  if (!url.startsWith(`${APP_ORIGIN}/`)) return null;
  let path: string;
  try {
    path = new URL(url).pathname;
  } catch {
    return null;
  }
  return uiFilePath(uiDir, path);
}

/** The handler for protocol.handle(APP_SCHEME, ...). */
export function appProtocolHandler(uiDir: string): (req: Request) => Promise<Response> {
  return async (req) => {
    const file = resolveAppFile(uiDir, req.url);
    if (!file) return new Response('Not found', { status: 404 });
    try {
      const body = await readFile(file);
      return new Response(body, {
        headers: { 'content-type': contentType(file), 'content-security-policy': UI_CSP, 'x-content-type-options': 'nosniff' },
      });
    } catch {
      return new Response('Not found', { status: 404 });
    }
  };
}
