// `miglab web`: the lab in a browser. Serves the built UI and the API on a local address with an
// access token, plus a read-only spectator address, until Ctrl-C.
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { LabService } from '../engine/api/service';
import { defaultLocalLab, type Lab } from '../engine/lab/lab';
import { LabFileError, labFromFile, readLabFile, type LabFile } from '../engine/lab/lab-file';
import { recoverInterruptedMigrations } from '../engine/migration/recovery';
import { MigrationJournal } from '../engine/migration/journal';
import { WebServer } from '../engine/web/server';
import { isLoopbackHost, loadOrCreateWebIdentity } from '../engine/tls/web-identity';
import { findBuiltUi } from '../engine/web/ui-files';
import { printJson, UsageError } from './output';
import { defaultStateDir } from '../engine/util/paths';
import { describeRecovery } from '../engine/migration/recovery-report';

export interface WebArgs {
  json: boolean;
  port?: string | undefined;
  host?: string | undefined;
  /** A lab file to open instead of the default lab (host-a, host-b). */
  labFile?: string | undefined;
}

export async function webCommand(args: WebArgs): Promise<number> {
  const port = args.port === undefined ? 5199 : Number(args.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port takes a port number from 0 to 65535 (got "${args.port}")`);
  const host = args.host ?? '127.0.0.1';
  // An empty --host would make Node listen on every address and print a URL without a host.
  if (host !== 'localhost' && !isIP(host)) {
    throw new UsageError(`--host takes an IP address of this machine, like 127.0.0.1 or 192.168.1.10, or localhost (got "${host}")`);
  }
  let file: LabFile | null = null;
  if (args.labFile) {
    // `npm start -- lab.yaml` runs in the project folder: a relative path means the user's folder.
    args = { ...args, labFile: resolve(process.env.INIT_CWD ?? process.cwd(), args.labFile) };
    try {
      file = await readLabFile(args.labFile!);
    } catch (err) {
      if (err instanceof LabFileError) throw new UsageError(err.message);
      throw err;
    }
  }
  let lab: Lab;
  try {
    lab = file ? await labFromFile(file, { source: args.labFile! }) : await defaultLocalLab();
  } catch (err) {
    if (err instanceof LabFileError) throw new UsageError(err.message);
    throw err;
  }
  const journal = new MigrationJournal();
  // An engine that restarts: migrations its predecessor left in flight between these agents are
  // settled (one copy of each guest keeps running) and reported.
  for (const r of await recoverInterruptedMigrations(lab.hosts(), journal)) {
    console.log(`A migration was in flight when MigLab last stopped: ${describeRecovery(r)}`);
  }
  const service = new LabService(lab, journal);
  let server: WebServer;
  let identity: Awaited<ReturnType<typeof loadOrCreateWebIdentity>> | null = null;
  try {
    // On the network the token must not travel in clear: HTTPS with a certificate of our own.
    if (!isLoopbackHost(host)) identity = await loadOrCreateWebIdentity(defaultStateDir(), host);
    server = await WebServer.start(service, {
      host, port, uiDir: findBuiltUi(),
      ...(identity ? { tls: { certPem: identity.certPem, keyPem: identity.keyPem } } : {}),
    });
  } catch (err) {
    await service.close();
    await lab.dispose();
    if ((err as NodeJS.ErrnoException).code === 'EADDRNOTAVAIL' || /EADDRNOTAVAIL/.test((err as Error).message)) {
      throw new UsageError(`${host} is not an address of this machine: give --host one of its own addresses (see "ip -brief address")`);
    }
    throw new UsageError((err as Error).message);
  }
  if (args.json) {
    printJson({
      url: server.url, token: server.tokens.teacher, spectatorUrl: server.spectatorUrl,
      tls: server.tls, fingerprint: identity?.fingerprint ?? null, certificate: identity?.certFile ?? null,
    });
  } else {
    console.log(`MigLab is open at ${server.url}`);
    console.log(`Spectators (read-only) follow at ${server.spectatorUrl}`);
    if (identity) {
      console.log(`Listening on ${host}: anyone on the network with a token can reach it, over HTTPS.`);
      console.log(`Its certificate is MigLab's own (${identity.certFile}); browsers warn until it is trusted.`);
      console.log(`Before you accept it, check that its SHA-256 fingerprint is ${identity.fingerprint}`);
    }
    console.log('Ctrl-C stops the lab and every guest in it.');
  }
  if (file) {
    const say = (m: string) => (args.json ? process.stderr : process.stdout).write(`${m}\n`);
    if (file.guests.some((g) => g.start)) say(`Starting the guests of ${args.labFile}: ${file.guests.filter((g) => g.start).map((g) => `${g.name} on ${g.host}`).join(', ')}`);
    void service.startGuests(file.guests, say);
  }
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await server.close();
  await service.close();
  await lab.dispose();
  return 0;
}
