// Real `miglab agent` processes for tests: on loopback, or inside a network namespace.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import type { AgentStartInfo } from '../../electron/engine/agent/server';

export const MIGLAB_BIN = join(__dirname, '..', '..', 'scripts', 'miglab.mjs');

export interface AgentProcess {
  proc: ChildProcess;
  info: AgentStartInfo;
  /** Everything it wrote to stderr so far (its log). */
  log: () => string;
  /** Resolves with the exit code once it has gone. */
  exited: Promise<number | null>;
}

export interface AgentLaunch {
  name: string;
  listen: string;
  dataDir: string;
  extra?: string[];
  /** Runs the argv some other way (inside a namespace); default: spawn here. */
  spawnWith?: (command: string, args: string[]) => ChildProcess;
}

/** Starts an agent and waits for the line it prints once it listens. */
export async function startAgent(l: AgentLaunch): Promise<AgentProcess> {
  const args = [MIGLAB_BIN, 'agent', '--name', l.name, '--listen', l.listen, '--data-dir', l.dataDir, '--json', ...(l.extra ?? [])];
  const proc = l.spawnWith ? l.spawnWith(process.execPath, args) : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const lines = createInterface({ input: proc.stdout! });
  const info = await new Promise<AgentStartInfo>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent ${l.name} did not start within 30 s: ${log}`)), 30_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(line) as AgentStartInfo);
      } catch {
        reject(new Error(`agent ${l.name} printed "${line}"; its log: ${log}`));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`agent ${l.name} exited (${code}) before listening: ${log}`));
    });
  });
  return { proc, info, log: () => log, exited };
}

/** Stops an agent: SIGTERM (it detaches from its guests), SIGKILL after 5 s. */
export async function stopAgent(a: AgentProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (a.proc.exitCode !== null || a.proc.signalCode !== null) return;
  a.proc.kill(signal);
  const t = setTimeout(() => a.proc.kill('SIGKILL'), 5000);
  await a.exited;
  clearTimeout(t);
}
