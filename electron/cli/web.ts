// `miglab web`: the lab in a browser. Serves the built UI and the API on a local address with an
// access token, plus a read-only spectator address, until Ctrl-C.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LabService } from '../engine/api/service';
import { defaultLocalLab } from '../engine/lab/lab';
import { MigrationJournal } from '../engine/migration/journal';
import { WebServer } from '../engine/web/server';
import { printJson, UsageError } from './output';

export interface WebArgs {
  json: boolean;
  port?: string | undefined;
  host?: string | undefined;
}

/** The renderer as Forge's Vite plugin builds it, found from this module or the cwd. */
export function findBuiltUi(): string | null {
  const starts = [dirname(fileURLToPath(import.meta.url)), process.cwd()];
  for (const start of starts) {
    let d = start;
    for (let i = 0; i < 6; i++) {
      const cand = join(d, '.vite', 'renderer', 'main_window');
      if (existsSync(join(cand, 'index.html'))) return cand;
      const up = dirname(d);
      if (up === d) break;
      d = up;
    }
  }
  return null;
}

export async function webCommand(args: WebArgs): Promise<number> {
  const port = args.port === undefined ? 5199 : Number(args.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port takes a port number from 0 to 65535 (got "${args.port}")`);
  const host = args.host ?? '127.0.0.1';
  const lab = await defaultLocalLab();
  const service = new LabService(lab, new MigrationJournal());
  let server: WebServer;
  try {
    server = await WebServer.start(service, { host, port, uiDir: findBuiltUi() });
  } catch (err) {
    service.close();
    await lab.dispose();
    throw new UsageError((err as Error).message);
  }
  if (args.json) {
    printJson({ url: server.url, token: server.tokens.teacher, spectatorUrl: server.spectatorUrl });
  } else {
    console.log(`MigLab is open at ${server.url}`);
    console.log(`Spectators (read-only) follow at ${server.spectatorUrl}`);
    if (host !== '127.0.0.1' && host !== 'localhost') console.log(`Listening on ${host}: anyone on the network with a token can reach it.`);
    console.log('Ctrl-C stops the lab and every guest in it.');
  }
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await server.close();
  service.close();
  await lab.dispose();
  return 0;
}
