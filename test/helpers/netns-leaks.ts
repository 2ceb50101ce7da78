import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { listNetnsObjects, netnsRunTag, netnsSupport } from '../../electron/engine/network/netns';

const run = promisify(execFile);

/**
 * Names of the network namespaces and root-namespace links this run's labs would make (prefix
 * netnsRunTag(): "ml" and a tag of our temp folder) present now, for the global leak check. Empty where namespaces cannot be made (not root, no iproute2).
 */
export async function netnsLeftovers(): Promise<string[]> {
  if (!(await netnsSupport()).ok) return [];
  const { namespaces, links } = await listNetnsObjects(netnsRunTag());
  return [...namespaces, ...links];
}

/**
 * Every other named network namespace on the machine: `miglab doctor`'s (miglab-doctor-PID),
 * and any a test made under a name of its own. Empty where namespaces cannot be made.
 */
export async function otherNamespaces(): Promise<string[]> {
  if (!(await netnsSupport()).ok) return [];
  const all = (await listNetnsObjects('')).namespaces;
  const tag = netnsRunTag();
  return all.filter((n) => !n.startsWith(tag));
}

/** The PID in a namespace `miglab doctor` makes to prove it can (miglab-doctor-PID); null for any other name. */
export function doctorNamespacePid(name: string): number | null {
  const m = /^miglab-doctor-(\d+)$/.exec(name);
  return m ? Number(m[1]) : null;
}

/** The processes running inside a namespace. */
export async function namespacePids(name: string): Promise<number[]> {
  const out = await run('ip', ['netns', 'pids', name]).then((r) => r.stdout, () => '');
  return out.split('\n').filter((l) => /^\d+$/.test(l.trim())).map(Number);
}

export async function deleteNamespace(name: string): Promise<void> {
  await run('ip', ['netns', 'delete', name]);
}
