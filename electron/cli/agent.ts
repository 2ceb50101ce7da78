// `miglab agent`: runs on each lab host; `miglab agent token new|list|revoke` manages its tokens.
import { mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { isIPv4 } from 'node:net';
import { AgentServer } from '../engine/agent/server';
import { TokenStore } from '../engine/agent/tokens';
import { labName } from '../engine/qemu/spec';
import { printJson, UsageError } from './output';
import { defaultStateDir, statePath } from '../engine/util/paths';

export interface AgentArgs {
  json: boolean;
  listen?: string | undefined;
  'data-dir'?: string | undefined;
  images?: string | undefined;
  name?: string | undefined;
  'max-guests'?: string | undefined;
  'max-memory'?: string | undefined;
  ports?: string | undefined;
  label?: string | undefined;
}

export const DEFAULT_AGENT_PORT = 7800;

function dataDirOf(args: AgentArgs): string {
  return resolve(args['data-dir'] ?? statePath(defaultStateDir(), 'agent'));
}

function parseListen(text: string | undefined): { address: string; port: number } {
  if (text === undefined) return { address: '127.0.0.1', port: DEFAULT_AGENT_PORT };
  const m = /^(.+):(\d{1,5})$/.exec(text);
  const address = m ? m[1]! : text;
  const port = m ? Number(m[2]) : DEFAULT_AGENT_PORT;
  if (!isIPv4(address)) throw new UsageError(`--listen takes ADDRESS:PORT with the IPv4 address other hosts reach this one at, like 192.168.1.20:${DEFAULT_AGENT_PORT} (got "${text}")`);
  if (address === '0.0.0.0') throw new UsageError('--listen needs the one address other hosts reach this host at (migration streams and NICs use it too), not 0.0.0.0');
  if (port > 65535) throw new UsageError(`--listen: port ${port} is not in 0-65535 (0: any free port)`);
  return { address, port };
}

function positiveInt(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} takes a whole number above 0 (got "${text}")`);
  return n;
}

function parsePorts(text: string | undefined): { first: number; last: number } | undefined {
  if (text === undefined) return undefined;
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(text);
  const first = Number(m?.[1]);
  const last = Number(m?.[2]);
  if (!m || first < 1024 || last > 65535 || first > last) throw new UsageError(`--ports takes FIRST-LAST between 1024 and 65535, like 49152-49407 (got "${text}")`);
  return { first, last };
}

export async function agentCommand(args: AgentArgs): Promise<number> {
  const { address, port } = parseListen(args.listen);
  const name = args.name ?? hostname().split('.')[0]!.toLowerCase();
  if (!labName.safeParse(name).success) throw new UsageError(`"${name}" is not a usable host name: give one with --name (letters, digits, - and _)`);
  const dataDir = dataDirOf(args);
  const maxGuests = positiveInt(args['max-guests'], '--max-guests');
  const maxMemoryMiB = positiveInt(args['max-memory'], '--max-memory');
  const portRange = parsePorts(args.ports);
  const imagesDir = resolve(args.images ?? join(dataDir, 'images'));
  if (!args.images) await mkdir(imagesDir, { recursive: true, mode: 0o700 });
  const say = (line: string) => process.stderr.write(`[agent ${name}] ${line}\n`);
  const { server, info } = await AgentServer.start({
    name, address, port, dataDir,
    imagesDir,
    ...(maxGuests ? { maxGuests } : {}),
    ...(maxMemoryMiB ? { maxMemoryMiB } : {}),
    ...(portRange ? { portRange } : {}),
    log: say,
  });
  if (args.json) process.stdout.write(`${JSON.stringify({ event: 'listening', ...info })}\n`);
  else {
    console.log(`MigLab agent "${name}" listens on ${info.url}`);
    console.log(`Certificate fingerprint (SHA-256): ${info.fingerprint}`);
    if (info.pairingToken) console.log(`Pairing token (shown once, keep it): ${info.pairingToken}`);
    else console.log('Pairing tokens were made before; make another with "miglab agent token new".');
    console.log('Add this host in MigLab with its address, the token and the fingerprint.');
  }
  // The agent's guests outlive it on purpose (a restart reattaches them): a signal detaches, it
  // does not stop them. These replace the CLI's stop-every-guest handlers.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.removeAllListeners(sig);
  await new Promise<void>((resolveStop) => {
    const stop = (sig: NodeJS.Signals) => {
      say(`${sig}: closing; guests keep running and the next agent on ${dataDir} reattaches them`);
      void server.close({ stopGuests: false }).finally(resolveStop);
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    process.once('SIGHUP', stop);
  });
  return 0;
}

export async function agentTokenCommand(action: string | undefined, target: string | undefined, args: AgentArgs): Promise<number> {
  const store = await TokenStore.open(join(dataDirOf(args), 'tokens.json'));
  switch (action) {
    case 'new': {
      const t = await store.create(args.label ?? 'pairing');
      if (args.json) printJson(t);
      else console.log(`New token ${t.id} (shown once): ${t.token}`);
      return 0;
    }
    case 'list':
      if (args.json) printJson(store.list());
      else for (const t of store.list()) console.log(`${t.id}  ${t.label}  made ${t.createdAt}${t.revokedAt ? `  REVOKED ${t.revokedAt}` : ''}`);
      return 0;
    case 'revoke': {
      if (!target) throw new UsageError('Say which token to revoke: "miglab agent token revoke ID" (see "miglab agent token list")');
      const known = store.list().find((t) => t.id === target);
      if (known?.revokedAt) {
        console.log(`Token ${target} was already revoked (${known.revokedAt}).`);
        return 0;
      }
      if (!(await store.revoke(target))) throw new UsageError(`No token "${target}": see "miglab agent token list"`);
      console.log(`Token ${target} is revoked; a running agent drops its connections within a second.`);
      return 0;
    }
    default:
      throw new UsageError('Use "miglab agent token new", "miglab agent token list" or "miglab agent token revoke ID"');
  }
}
