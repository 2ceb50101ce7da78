// Lab hosts as network namespaces, by hand: `up` makes them and holds them until SIGINT/SIGTERM,
// `down` removes what a crashed run left, `list` shows what exists.
//   npx tsx scripts/netns/netns-hosts.ts up host-a host-b [--prefix P] [--subnet S]
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { NetnsLab, listNetnsObjects, removeNetnsLeftovers } from '../../electron/engine/network/netns';
import { startNetnsAgents } from '../../electron/engine/lab/netns-lab';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

const USAGE = `Usage:
  netns-hosts up <host> [<host>...] [--prefix P] [--subnet S] [--agents]
      make one namespace per host on a bridge, print {prefix, subnet, bridge, hosts} as JSON,
      and keep them until SIGINT or SIGTERM, then remove them; with --agents, start
      "miglab agent" in each and print a lab file for them too (open it with "miglab web")
  netns-hosts down --prefix P    remove every namespace and link whose name starts with P
  netns-hosts list [--prefix P]  print the namespaces and links that start with P (default "ml")
`;

class UsageError extends Error {}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/**
 * Resolves with the first SIGINT/SIGTERM. Installed before anything is made, so none is lost; a
 * later one is ignored, so an impatient second Ctrl-C cannot cut the removal short.
 */
function stopSignal(): Promise<NodeJS.Signals> {
  // Signal listeners do not keep Node running: this timer does, until a signal comes.
  const keepAlive = setInterval(() => {}, 1 << 30);
  return new Promise((resolve) => {
    let seen = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (seen) process.stderr.write(`[netns] ${sig}: still removing the lab\n`);
      seen = true;
      clearInterval(keepAlive);
      resolve(sig);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

async function up(hosts: string[], prefix: string | undefined, subnet: string | undefined, withAgents: boolean): Promise<number> {
  if (!hosts.length) throw new UsageError('"up" needs at least one host name, like: up host-a host-b');
  const stopped = stopSignal();
  // A signal during create() waits for it: create() either returns a lab to destroy or has removed
  // what it made.
  const lab = await NetnsLab.create({ hosts, prefix, subnet });
  const dir = withAgents ? await makeTempDir('netns-agents') : null;
  try {
    const agents = dir ? await startNetnsAgents(lab, dir) : null;
    const agentHosts = agents && [...agents.values()].map((a) => ({ name: a.name, agent: { url: a.info.url, token: a.token, fingerprint: a.info.fingerprint } }));
    printJson({
      prefix: lab.prefix, subnet: lab.subnet, bridge: lab.bridge, hosts: lab.hosts,
      ...(agentHosts ? { labFile: stringify({ network: { subnet: '10.80.0.0/24', address: lab.bridge.address }, hosts: agentHosts }) } : {}),
    });
    const sig = await stopped;
    process.stderr.write(`[netns] ${sig}: removing lab ${lab.prefix}\n`);
  } finally {
    await lab.destroy(); // and the agents in it; their guests too
    if (dir) await removeDir(dir);
  }
  return 0;
}

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: { prefix: { type: 'string' }, subnet: { type: 'string' }, agents: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  const [cmd, ...rest] = positionals;
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  switch (cmd) {
    case 'up':
      return up(rest, values.prefix, values.subnet, values.agents ?? false);
    case 'down':
      if (rest.length) throw new UsageError(`"down" takes no host names (got ${rest.join(' ')})`);
      if (values.subnet) throw new UsageError('"down" takes --prefix only');
      if (!values.prefix) throw new UsageError('"down" needs --prefix P: the prefix "up" printed');
      if (values.prefix.length < 3 || !values.prefix.startsWith('ml')) {
        throw new UsageError(`"down --prefix ${values.prefix}": a lab prefix starts with "ml" and has at least 3 characters`);
      }
      printJson(await removeNetnsLeftovers(values.prefix));
      return 0;
    case 'list':
      if (rest.length || values.subnet) throw new UsageError('"list" takes --prefix only');
      printJson(await listNetnsObjects(values.prefix ?? 'ml'));
      return 0;
    case undefined:
      throw new UsageError('Say what to do: up, down or list');
    default:
      throw new UsageError(`Unknown command "${cmd}": use up, down or list`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    if (err instanceof UsageError) {
      process.stderr.write(`netns-hosts: ${err.message}\n\n${USAGE}`);
      process.exit(2);
    }
    process.stderr.write(`netns-hosts: ${err.message}\n`);
    process.exit(1);
  },
);
