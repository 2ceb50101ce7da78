import { listNetnsObjects, netnsRunTag, netnsSupport } from '../../electron/engine/hosts/netns';

/**
 * Names of the network namespaces and root-namespace links this run's labs would make (prefix
 * netnsRunTag(): "ml" and a tag of our temp folder) present now, for the global leak check. Empty where namespaces cannot be made (not root, no iproute2).
 */
export async function netnsLeftovers(): Promise<string[]> {
  if (!(await netnsSupport()).ok) return [];
  const { namespaces, links } = await listNetnsObjects(netnsRunTag());
  return [...namespaces, ...links];
}
