// Real `miglab agent` processes for tests: started by the engine's own launcher.
import { miglabBin, type AgentProcess } from '../../electron/engine/hosts/remote/agent-process';

export { launchAgent as startAgent, type AgentProcess } from '../../electron/engine/hosts/remote/agent-process';

export const MIGLAB_BIN = miglabBin();

/** Stops an agent: SIGTERM (it detaches from its guests), SIGKILL after 5 s. */
export async function stopAgent(a: AgentProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (a.proc.exitCode !== null || a.proc.signalCode !== null) return;
  a.proc.kill(signal);
  const t = setTimeout(() => a.proc.kill('SIGKILL'), 5000);
  await a.exited;
  clearTimeout(t);
}
