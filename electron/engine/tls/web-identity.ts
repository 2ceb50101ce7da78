// Browser mode on the network serves HTTPS, so the teacher's token never crosses the room in
// clear. Its certificate is self-signed, made like the agent's, and kept per address under
// MigLab's state dir: the fingerprint a browser was told to trust survives restarts.
import { join } from 'node:path';
import { networkInterfaces } from 'node:os';
import { AGENT_CERT_FILE, loadOrCreateAgentIdentity, type TlsIdentity } from './certs';
import { statePath } from '../util/paths';

/** Loopback addresses stay plain HTTP: nothing crosses a network, and browsers trust them as secure. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.') || host === '::ffff:127.0.0.1';
}

/** The certificate's IP names: the address listened on, or every address of the machine for 0.0.0.0 / ::. */
function certificateAddresses(host: string): string[] {
  if (host !== '0.0.0.0' && host !== '::') return [host];
  const all = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address.replace(/%.*$/, '')));
  return [...new Set(all)];
}

/** Where the certificate for `host` lives: <state>/web-tls/<host>. */
export function webTlsDir(stateDir: string, host: string): string {
  return statePath(stateDir, 'webTls', host.replace(/[^0-9A-Za-z.-]/g, '_'));
}

export async function loadOrCreateWebIdentity(stateDir: string, host: string): Promise<TlsIdentity & { dir: string; certFile: string }> {
  const dir = webTlsDir(stateDir, host);
  const id = await loadOrCreateAgentIdentity(dir, { commonName: `MigLab browser mode ${host}`, ipAddresses: certificateAddresses(host) });
  return { certPem: id.certPem, keyPem: id.keyPem, fingerprint: id.fingerprint, dir, certFile: join(dir, AGENT_CERT_FILE) };
}
