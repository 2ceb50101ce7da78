// IPv4 subnets as labs write them ("10.80.0.0/24"): one reader for the lab network and for the
// namespaces of a netns lab, each caller with its own prefix bounds and its own words.
import { ipv4ToNumber, numberToIpv4 } from './frame';

export interface Subnet {
  network: number;
  prefix: number;
  /** Addresses in it; host numbers 1 .. size-2 are usable. */
  size: number;
}

/** Why a text is not a usable subnet. */
export type SubnetProblem =
  | { problem: 'form' }
  | { problem: 'address'; why: string }
  | { problem: 'prefix' }
  /** Host bits set; `network` is the subnet it probably meant ("10.80.0.0/24"). */
  | { problem: 'host-bits'; network: string };

export function readSubnet(text: string, bounds: { minPrefix: number; maxPrefix: number }): Subnet | SubnetProblem {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(text);
  if (!m) return { problem: 'form' };
  let network: number;
  try {
    network = ipv4ToNumber(m[1]!);
  } catch (err) {
    return { problem: 'address', why: (err as Error).message };
  }
  const prefix = Number(m[2]);
  if (prefix < bounds.minPrefix || prefix > bounds.maxPrefix) return { problem: 'prefix' };
  const size = 2 ** (32 - prefix);
  if (network % size !== 0) return { problem: 'host-bits', network: `${numberToIpv4(network - (network % size))}/${prefix}` };
  return { network, prefix, size };
}

export function isSubnet(r: Subnet | SubnetProblem): r is Subnet {
  return !('problem' in r);
}

export function subnetText(s: Pick<Subnet, 'network' | 'prefix'>): string {
  return `${numberToIpv4(s.network)}/${s.prefix}`;
}

/** Whether two subnets share an address (one holds the other, or they are the same). */
export function subnetsOverlap(a: Pick<Subnet, 'network' | 'prefix'>, b: Pick<Subnet, 'network' | 'prefix'>): boolean {
  const size = 2 ** (32 - Math.min(a.prefix, b.prefix));
  return Math.floor(a.network / size) === Math.floor(b.network / size);
}
