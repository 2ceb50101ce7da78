// Where an agent's QEMU may send a migration stream: the hosts of the engine's lab, as the engine
// told it (labPeers), each an IPv4 address with its migration port range. Nothing else: not the
// agent's own loopback services, not a cloud metadata service, not a broadcast.
import { isIPv4 } from 'node:net';
import type { LabPeer } from '../host';

/** The first octets of an IPv4 address, as a number (canonical dotted quad only). */
function octets(address: string): number[] | null {
  if (!isIPv4(address)) return null;
  const parts = address.split('.');
  // isIPv4 takes "127.000.0.1" on some versions; QEMU's resolver would read it otherwise.
  if (parts.some((p) => String(Number(p)) !== p)) return null;
  return parts.map(Number);
}

type Scope = 'loopback' | 'link-local' | 'global';

function scopeOf(o: number[]): Scope {
  if (o[0] === 127) return 'loopback';
  if (o[0] === 169 && o[1] === 254) return 'link-local';
  return 'global';
}

/**
 * Why the agent listening on `agentAddress` will not send migration streams to `peer`, or null.
 * - 0.0.0.0/8, multicast, 240/4 and broadcast are never a host.
 * - Loopback and link-local only for an agent that itself listens in that scope: an agent on
 *   127.0.0.1 is reachable from its own machine only, by users who reach its loopback services
 *   anyway (a lab on one machine); an agent on 169.254/16 is two laptops on a cable. An agent on
 *   a LAN address never needs either, and there they lead to its own services or to a cloud's
 *   metadata service (169.254.169.254, refused everywhere).
 * - Ports below 1024 are never a migration port (--ports starts at 1024).
 */
export function peerProblem(peer: LabPeer, agentAddress: string): string | null {
  const o = octets(peer.address);
  if (!o) return `"${peer.address}" is not an IPv4 address written as four plain numbers (agents listen on IPv4)`;
  if (o[0] === 0) return `${peer.address} is not a host's address (0.0.0.0/8 means "this host, any interface")`;
  if (o[0]! >= 224) return `${peer.address} is a multicast, reserved or broadcast address, not one host`;
  if (peer.address === '169.254.169.254') return '169.254.169.254 is the cloud metadata service, not a lab host';
  const scope = scopeOf(o);
  const own = octets(agentAddress);
  if (scope !== 'global' && (!own || scopeOf(own) !== scope)) {
    return `${peer.address} is a ${scope} address, and this agent listens on ${agentAddress}: for it, ${peer.address} is its own machine, not another lab host`;
  }
  const { first, last } = peer.ports;
  if (!Number.isInteger(first) || !Number.isInteger(last) || first < 1024 || last > 65535 || first > last) {
    return `the port range ${first}-${last} of ${peer.address} is not FIRST-LAST within 1024-65535`;
  }
  return null;
}

/** The peers an agent on `agentAddress` accepts: what the engine tells it (the others it would refuse). */
export function usablePeers(agentAddress: string, peers: readonly LabPeer[]): LabPeer[] {
  return peers.filter((p) => peerProblem(p, agentAddress) === null);
}

/**
 * tcp:ADDRESS:PORT with a canonical IPv4 address and port, or null. QEMU resolves the address
 * with getaddrinfo, which reads "127.1" or "0x7f.1" as loopback: only the plain form is compared.
 */
export function parseTcpUri(uri: unknown): { address: string; port: number } | null {
  if (typeof uri !== 'string') return null;
  const m = /^tcp:([0-9.]{7,15}):([1-9][0-9]{0,4})$/.exec(uri);
  if (!m || !octets(m[1]!)) return null;
  const port = Number(m[2]);
  return port <= 65535 ? { address: m[1]!, port } : null;
}

export function describePeers(peers: readonly LabPeer[]): string {
  return peers.length ? peers.map((p) => `${p.address}:${p.ports.first}-${p.ports.last}`).join(', ') : 'none';
}
