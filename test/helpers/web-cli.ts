// A real `miglab web --json` process for tests: its printed addresses, its teacher's WebSocket,
// and its memory as the kernel counts it.
import { readFile } from 'node:fs/promises';
import WebSocket from 'ws';
import type { ServerMessage } from '../../electron/engine/api/contract';
import { serveMiglab, type CliServer } from './cli';

export interface WebInfo {
  url: string;
  token: string;
  spectatorUrl: string;
  tls: boolean;
  fingerprint: string | null;
  certificate: string | null;
}

export interface WebCli extends CliServer {
  info: WebInfo;
  port: number;
  spectatorToken: string;
}

/** Starts `miglab web ARGS --json` and waits for the JSON it prints once it listens. */
export async function startWebCli(args: string[], env: NodeJS.ProcessEnv): Promise<WebCli> {
  const s = await serveMiglab(['web', ...args, '--json'], env, /^\}$/m, 60_000);
  const info = JSON.parse(s.out()) as WebInfo;
  return { ...s, info, port: Number(new URL(info.url).port), spectatorToken: new URL(info.spectatorUrl).searchParams.get('token')! };
}

/** Ends a `miglab web` the way Ctrl-C does and returns its exit code (SIGKILL after 20 s). */
export async function stopWebCli(s: CliServer | undefined): Promise<number | null> {
  if (!s) return null;
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGINT');
  const t = setTimeout(() => s.child.kill('SIGKILL'), 20_000);
  const code = await s.exited;
  clearTimeout(t);
  return code;
}

/** The resident memory of a process, in bytes (VmRSS in /proc/PID/status). */
export async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (!kb) throw new Error(`/proc/${pid}/status has no VmRSS line`);
  return Number(kb[1]) * 1024;
}

/** Runs one command over a fresh WebSocket with `token` and resolves with its reply. */
export function apiCall(wsUrl: string, token: string, command: Record<string, unknown>, opts: WebSocket.ClientOptions = {}): Promise<ServerMessage> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${wsUrl}/api?token=${token}`, opts);
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`no reply to ${JSON.stringify(command)} within 15 s`));
    }, 15_000);
    ws.once('open', () => ws.send(JSON.stringify({ id: 1, command })));
    ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as ServerMessage;
      if ('id' in m && m.id === 1) {
        clearTimeout(timer);
        ws.close();
        resolve(m);
      }
    });
    ws.once('unexpected-response', (_req, res) => {
      clearTimeout(timer);
      reject(new Error(`HTTP ${res.statusCode}`));
    });
    ws.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}
