// A lab of hosts that are network namespaces on this machine, each with its own `miglab agent`
// reached over TLS through a veth and a bridge, like LAN hosts. The engine (and the lab switch)
// stay in the root namespace on the bridge's address. Used by `miglab demo --netns`, the
// multi-host tests and `npm run bench:agent`. Needs root.
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { NetnsLab, netnsSupport } from '../hosts/netns';
import { RemoteHost } from '../hosts/remote';
import { LabNetwork } from '../network/lab-network';
import type { AgentStartInfo } from '../agent/server';
import { findUpwards } from '../util/scripts-dir';
import { makeTempDir, removeDir } from '../util/fs';
import { Lab } from './lab';

export const NETNS_AGENT_PORT = 7800;

export interface NetnsAgent {
  name: string;
  /** The host's address on the bridge: its agent, migration streams and NICs use it. */
  address: string;
  netns: string;
  dataDir: string;
  info: AgentStartInfo;
  /** The first token it printed: a restarted agent prints none and keeps accepting this one. */
  token: string;
  proc: ChildProcess;
  exited: Promise<number | null>;
  log: () => string;
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

function miglabBin(): string {
  const bin = findUpwards(join('scripts', 'miglab.mjs'), existsSync);
  if (!bin) throw new Error('Cannot find scripts/miglab.mjs to start the agents: run from the MigLab source tree');
  return bin;
}

async function launchAgent(netns: NetnsLab, host: string, dataDir: string, extra: string[]): Promise<Omit<NetnsAgent, 'token'> & { token: string | null }> {
  const h = netns.host(host);
  const proc = netns.spawn(host, process.execPath, [
    miglabBin(), 'agent', '--name', host, '--listen', `${h.address}:${NETNS_AGENT_PORT}`, '--data-dir', dataDir, '--json', ...extra,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const info = await new Promise<AgentStartInfo>((resolve, reject) => {
    const lines = createInterface({ input: proc.stdout! });
    const timer = setTimeout(() => reject(new Error(`The agent of ${host} did not start within 30 s: ${log.trim()}`)), 30_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(line) as AgentStartInfo);
      } catch {
        reject(new Error(`The agent of ${host} printed "${line}": ${log.trim()}`));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`The agent of ${host} exited (${code}) before it listened: ${log.trim()}`));
    });
  });
  return { name: host, address: h.address, netns: h.netns, dataDir, info, token: info.pairingToken, proc, exited, log: () => log };
}

/** One agent per namespace host, each with its own data dir under `dir` and its own port slice. */
export async function startNetnsAgents(netns: NetnsLab, dir: string, extra: string[] = []): Promise<Map<string, NetnsAgent>> {
  const agents = new Map<string, NetnsAgent>();
  for (const [i, h] of netns.hosts.entries()) {
    const first = 49152 + i * 128;
    const a = await launchAgent(netns, h.name, join(dir, h.name), ['--ports', `${first}-${first + 127}`, ...extra]);
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
    // Each namespace has its own port space; the slices only keep logs readable.
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
      const i = names.indexOf(host);
      const first = 49152 + i * 128;
      const a = await launchAgent(netns, host, old.dataDir, ['--ports', `${first}-${first + 127}`, ...extra]);
      const next = { ...a, token: old.token } as NetnsAgent;
      agents.set(host, next);
      return next;
    },
    dispose,
  };
}
