// A lab of hosts that are network namespaces on this machine, each with its own `miglab agent`
// reached over TLS through a veth and a bridge, like LAN hosts. The engine (and the lab switch)
// stay in the root namespace on the bridge's address. Used by `miglab demo --netns`, the
// multi-host tests and `npm run bench:agent`. Needs root.
import { join } from 'node:path';
import { NetnsLab, netnsSupport } from '../network/netns';
import { RemoteHost } from '../hosts/remote/remote-host';
import { LabNetwork } from '../network/lab-network';
import { launchAgent, type AgentProcess } from '../hosts/remote/agent-process';
import { makeTempDir, removeDir } from '../util/fs';
import { Lab } from './lab';

export const NETNS_AGENT_PORT = 7800;

export interface NetnsAgent extends AgentProcess {
  name: string;
  /** The host's address on the bridge: its agent, migration streams and NICs use it. */
  address: string;
  netns: string;
  dataDir: string;
  /** The first token it printed: a restarted agent prints none and keeps accepting this one. */
  token: string;
}

export interface NetnsAgentLab {
  lab: Lab;
  network: LabNetwork;
  netns: NetnsLab;
  agents: Map<string, NetnsAgent>;
  /** The temp dir that holds every agent's data dir (and so every guest's sockets). */
  dir: string;
  /** Kills the agent of a host (SIGKILL by default): its guests keep running. */
  killAgent(host: string, signal?: NodeJS.Signals): Promise<void>;
  /** Starts the host's agent again on the same data dir; it reattaches the guests it finds. */
  restartAgent(host: string): Promise<NetnsAgent>;
  /** Stops every guest, the agents, the switch, the namespaces and the data dirs. */
  dispose(): Promise<void>;
}

/** Each namespace has its own port space; a slice per host only keeps logs readable. */
function portsOf(index: number): string[] {
  const first = 49152 + index * 128;
  return ['--ports', `${first}-${first + 127}`];
}

/** The agent of one namespace host, listening on the host's bridge address. */
async function startHostAgent(netns: NetnsLab, host: string, dataDir: string, extra: string[]): Promise<Omit<NetnsAgent, 'token'> & { token: string | null }> {
  const h = netns.host(host);
  const a = await launchAgent({
    name: host, listen: `${h.address}:${NETNS_AGENT_PORT}`, dataDir,
    extra: [...portsOf(netns.hosts.indexOf(h)), ...extra],
    spawnWith: (cmd, args) => netns.spawn(host, cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }),
  });
  return { ...a, name: host, address: h.address, netns: h.netns, dataDir, token: a.info.pairingToken };
}

/** One agent per namespace host, each with its own data dir under `dir` and its own port slice. */
export async function startNetnsAgents(netns: NetnsLab, dir: string, extra: string[] = []): Promise<Map<string, NetnsAgent>> {
  const agents = new Map<string, NetnsAgent>();
  for (const h of netns.hosts) {
    const a = await startHostAgent(netns, h.name, join(dir, h.name), extra);
    if (!a.token) throw new Error(`The agent of ${h.name} printed no pairing token on its first start`);
    agents.set(h.name, a as NetnsAgent);
  }
  return agents;
}

export async function netnsAgentLab(opts: { hosts?: string[]; subnet?: string; agentArgs?: string[]; reconnectWaitMs?: number } = {}): Promise<NetnsAgentLab> {
  const support = await netnsSupport();
  if (!support.ok) throw new Error(`Namespace hosts cannot be made here: ${support.reason}`);
  const names = opts.hosts ?? ['host-a', 'host-b'];
  const dir = await makeTempDir('netns');
  const netns = await NetnsLab.create({ hosts: names });
  let agents = new Map<string, NetnsAgent>();
  let network: LabNetwork | null = null;
  let lab: Lab | null = null;
  const extra = opts.agentArgs ?? [];
  const stopAgents = async () => {
    for (const a of agents.values()) if (a.proc.exitCode === null && a.proc.signalCode === null) a.proc.kill('SIGTERM');
    await Promise.all([...agents.values()].map((a) => Promise.race([a.exited, new Promise((r) => setTimeout(r, 5000))])));
  };
  const dispose = async () => {
    await lab?.dispose(); // stops every guest through its agent, shuts the switch
    if (!lab) await network?.close();
    await stopAgents();
    await netns.destroy(); // and whatever still runs in the namespaces
    await removeDir(dir);
  };
  try {
    agents = await startNetnsAgents(netns, dir, extra);
    network = new LabNetwork({ ...(opts.subnet ? { subnet: opts.subnet } : {}), address: netns.bridge.address });
    const hosts = await Promise.all(
      [...agents.values()].map((a) =>
        RemoteHost.connect({
          name: a.name, url: a.info.url, token: a.token, fingerprint: a.info.fingerprint, network: network!,
          ...(opts.reconnectWaitMs ? { reconnectWaitMs: opts.reconnectWaitMs } : {}),
        }),
      ),
    );
    lab = new Lab(hosts, { network });
  } catch (err) {
    await dispose().catch(() => {});
    throw err;
  }
  return {
    lab, network, netns, agents, dir,
    async killAgent(host, signal = 'SIGKILL') {
      const a = agents.get(host);
      if (!a) throw new Error(`No agent for host ${host}`);
      a.proc.kill(signal);
      await a.exited;
    },
    async restartAgent(host) {
      const old = agents.get(host);
      if (!old) throw new Error(`No agent for host ${host}`);
      const next = { ...(await startHostAgent(netns, host, old.dataDir, extra)), token: old.token };
      agents.set(host, next);
      return next;
    },
    dispose,
  };
}
