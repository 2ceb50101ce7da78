// Starting a `miglab agent` process and reading the line it prints once it listens: for
// namespace hosts (netns-lab.ts), the tests and the benchmark.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { findUpwards } from '../../util/scripts-dir';
import type { AgentStartInfo } from './protocol';

export interface AgentProcess {
  proc: ChildProcess;
  info: AgentStartInfo;
  /** What it wrote to stderr so far (its log). */
  log: () => string;
  /** Resolves with the exit code once it has gone. */
  exited: Promise<number | null>;
}

export interface AgentLaunch {
  name: string;
  /** ADDRESS:PORT (port 0: any free one). */
  listen: string;
  dataDir: string;
  extra?: string[];
  /** Runs the argv some other way (inside a namespace, say); default: a child of this process. */
  spawnWith?: (command: string, args: string[]) => ChildProcess;
}

export function miglabBin(): string {
  const bin = findUpwards(join('scripts', 'miglab.mjs'), existsSync);
  if (!bin) throw new Error('Cannot find scripts/miglab.mjs to start an agent: run from the MigLab source tree');
  return bin;
}

/** Starts an agent with --json and waits (30 s at most) for the line it prints once it listens. */
export async function launchAgent(l: AgentLaunch): Promise<AgentProcess> {
  const args = [miglabBin(), 'agent', '--name', l.name, '--listen', l.listen, '--data-dir', l.dataDir, '--json', ...(l.extra ?? [])];
  const proc = l.spawnWith ? l.spawnWith(process.execPath, args) : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const info = await new Promise<AgentStartInfo>((resolve, reject) => {
    const lines = createInterface({ input: proc.stdout! });
    const timer = setTimeout(() => reject(new Error(`The agent of ${l.name} did not start within 30 s: ${log.trim()}`)), 30_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(line) as AgentStartInfo);
      } catch {
        reject(new Error(`The agent of ${l.name} printed "${line}": ${log.trim()}`));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`The agent of ${l.name} exited (${code}) before it listened: ${log.trim()}`));
    });
  });
  return { proc, info, log: () => log, exited };
}
