import type { QmpClient } from '../qmp';

/**
 * Gives a QEMU its tls-creds-x509 object for a migration, read from `dir` (see writeQemuTlsDir).
 * A guest that stayed after a failed TLS migration still has one from then: it is replaced, so
 * credentials installed since are the ones used.
 */
export async function addTlsCredsObject(qmp: QmpClient, dir: string, endpoint: 'server' | 'client'): Promise<string> {
  const id = `miglab-tls-${endpoint}`;
  await qmp.execute('object-del', { id }).catch(() => {});
  await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id, dir, endpoint, 'verify-peer': true });
  return id;
}
