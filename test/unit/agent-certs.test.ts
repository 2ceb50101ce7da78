// The agent's TLS identity and the lab CA, checked with node:crypto's own X.509 code and a real
// TLS handshake pinned by fingerprint (as the engine connects to an agent).
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, createServer, type Server } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LabCa,
  certFingerprint,
  loadOrCreateAgentIdentity,
  normalizeFingerprint,
  writeQemuTlsDir,
  type TlsIdentity,
} from '../../electron/engine/tls/certs';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

let work: string;

beforeAll(async () => {
  work = await makeTempDir('ut-certs');
});

afterAll(async () => {
  await removeDir(work);
});

const mode = async (path: string) => (await stat(path)).mode & 0o777;

describe('the agent identity', () => {
  it('is made once, then loaded with the same fingerprint', async () => {
    const dir = join(work, 'agent', 'tls'); // parent does not exist yet
    const made = await loadOrCreateAgentIdentity(dir, { commonName: 'miglab-agent host-a', ipAddresses: ['127.0.0.1'], dnsNames: ['host-a.lab'] });
    expect(made.created).toBe(true);
    expect(made.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(await mode(dir)).toBe(0o700);
    expect(await mode(join(dir, 'agent-key.pem'))).toBe(0o600);
    expect(await readFile(join(dir, 'agent-cert.pem'), 'utf8')).toBe(made.certPem);

    const cert = new X509Certificate(made.certPem);
    expect(cert.checkPrivateKey(createPrivateKey(made.keyPem))).toBe(true);
    expect(made.fingerprint).toBe(cert.fingerprint256);
    expect(made.fingerprint).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    expect(cert.subject).toBe('CN=miglab-agent host-a');
    expect(cert.subjectAltName).toBe('IP Address:127.0.0.1, DNS:host-a.lab');
    expect(cert.verify(cert.publicKey)).toBe(true); // self-signed
    const years = (Date.parse(cert.validTo) - Date.now()) / (365 * 24 * 3600_000);
    expect(years).toBeGreaterThan(9.9);

    const again = await loadOrCreateAgentIdentity(dir, { commonName: 'something else' });
    expect(again).toEqual({ ...made, created: false });
  });

  it('takes different random serials and keys each time one is made', async () => {
    const a = await loadOrCreateAgentIdentity(join(work, 'serial-a'), { commonName: 'a' });
    const b = await loadOrCreateAgentIdentity(join(work, 'serial-b'), { commonName: 'a' });
    const [ca, cb] = [new X509Certificate(a.certPem), new X509Certificate(b.certPem)];
    expect(ca.serialNumber).toMatch(/^[0-9A-F]{32}$/);
    expect(ca.serialNumber).not.toBe(cb.serialNumber);
    expect(a.fingerprint).not.toBe(b.fingerprint);
  });

  it('refuses a key that is not its certificate\'s, naming the files and the fix', async () => {
    const one = join(work, 'mismatch-1');
    const two = join(work, 'mismatch-2');
    await loadOrCreateAgentIdentity(one, { commonName: 'one' });
    const other = await loadOrCreateAgentIdentity(two, { commonName: 'two' });
    await writeFile(join(one, 'agent-key.pem'), other.keyPem);
    const err = await loadOrCreateAgentIdentity(one, { commonName: 'one' }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain(join(one, 'agent-key.pem'));
    expect((err as Error).message).toMatch(/not the key of the certificate/);
    expect((err as Error).message).toMatch(/Delete .*agent-key\.pem and .*agent-cert\.pem.*re-pin/);
  });

  it('refuses garbled PEM and a half identity with an error naming the file', async () => {
    const dir = join(work, 'garbled');
    await loadOrCreateAgentIdentity(dir, { commonName: 'g' });
    const goodCert = await readFile(join(dir, 'agent-cert.pem'), 'utf8');
    await writeFile(join(dir, 'agent-cert.pem'), '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n');
    await expect(loadOrCreateAgentIdentity(dir, { commonName: 'g' })).rejects.toThrow(
      new RegExp(`${join(dir, 'agent-cert.pem')} is not a readable PEM certificate.*Delete`),
    );
    await writeFile(join(dir, 'agent-cert.pem'), goodCert);
    await writeFile(join(dir, 'agent-key.pem'), 'garbage');
    await expect(loadOrCreateAgentIdentity(dir, { commonName: 'g' })).rejects.toThrow(
      new RegExp(`${join(dir, 'agent-key.pem')} is not a readable PEM private key.*Delete`),
    );

    const half = join(work, 'half');
    const made = await loadOrCreateAgentIdentity(half, { commonName: 'h' });
    await removeDir(join(half, 'agent-cert.pem'));
    await expect(loadOrCreateAgentIdentity(half, { commonName: 'h' })).rejects.toThrow(/incomplete: .*agent-key\.pem exists but its certificate .*agent-cert\.pem does not/);
    expect(await readFile(join(half, 'agent-key.pem'), 'utf8')).toBe(made.keyPem); // nothing overwritten
  });

  it('refuses a name that cannot go in a certificate', async () => {
    await expect(loadOrCreateAgentIdentity(join(work, 'bad-ip'), { commonName: 'x', ipAddresses: ['10.0.0.300'] })).rejects.toThrow(
      /"10\.0\.0\.300" is not an IP address/,
    );
  });
});

describe('fingerprints', () => {
  it('are the SHA-256 of the DER, for PEM and DER input alike', async () => {
    const id = await loadOrCreateAgentIdentity(join(work, 'fp'), { commonName: 'fp' });
    const cert = new X509Certificate(id.certPem);
    expect(certFingerprint(id.certPem)).toBe(cert.fingerprint256);
    expect(certFingerprint(cert.raw)).toBe(cert.fingerprint256);
    expect(() => certFingerprint('hello')).toThrow(/not an X\.509 certificate/);
  });

  it('normalize from the forms people paste', () => {
    const canonical = 'AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89';
    const bare = canonical.replace(/:/g, '');
    for (const form of [
      canonical,
      canonical.toLowerCase(),
      bare,
      bare.toLowerCase(),
      `sha256:${bare}`,
      `SHA256:${canonical}`,
      `sha256 Fingerprint=${canonical}`,
      canonical.replace(/:/g, ' '),
      `  ${canonical}\n`,
    ]) {
      expect(normalizeFingerprint(form), form).toBe(canonical);
    }
  });

  it('refuse anything that is not 32 bytes of hex, saying what is expected', () => {
    const bare = 'ab'.repeat(32);
    for (const bad of ['', bare.slice(2), `${bare}ab`, `${bare.slice(2)}zz`, 'md5:' + bare, 'AB:CD', 'x'.repeat(10_000)]) {
      expect(() => normalizeFingerprint(bad), bad.slice(0, 20)).toThrow(/is not a SHA-256 certificate fingerprint: it must be 32 bytes of hex/);
    }
    expect(() => normalizeFingerprint(42 as unknown as string)).toThrow(/must be text/);
  });
});

describe('the lab CA', () => {
  it('issues leaves that verify against it, with the IP in the SAN and the usages QEMU checks', async () => {
    const dir = join(work, 'ca');
    const ca = await LabCa.loadOrCreate(dir);
    expect(await mode(join(dir, 'lab-ca-key.pem'))).toBe(0o600);
    const caCert = new X509Certificate(ca.certPem);
    expect(caCert.ca).toBe(true);
    expect(ca.fingerprint).toBe(caCert.fingerprint256);

    const leaf = await ca.issue({ commonName: 'host-b', ipAddresses: ['192.0.2.7', '127.0.0.1'], dnsNames: ['host-b.lab'] });
    const cert = new X509Certificate(leaf.certPem);
    expect(cert.verify(caCert.publicKey)).toBe(true);
    expect(cert.checkIssued(caCert)).toBe(true);
    expect(cert.ca).toBe(false);
    expect(cert.checkPrivateKey(createPrivateKey(leaf.keyPem))).toBe(true);
    expect(leaf.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(cert.checkIP('192.0.2.7')).toBe('192.0.2.7');
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(cert.checkIP('192.0.2.8')).toBeUndefined();
    expect(cert.checkHost('host-b.lab')).toBe('host-b.lab');
    expect(cert.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'])); // node names EKU "keyUsage"
    expect(Date.parse(cert.validFrom)).toBeLessThan(Date.now() - 3600_000); // room for clock skew between hosts

    // A leaf of another CA does not verify against this one.
    const other = await LabCa.loadOrCreate(join(work, 'ca-other'));
    expect(other.fingerprint).not.toBe(ca.fingerprint);
    const foreign = new X509Certificate((await other.issue({ commonName: 'x', ipAddresses: ['127.0.0.1'] })).certPem);
    expect(foreign.verify(caCert.publicKey)).toBe(false);

    // Reloaded, it is the same CA, and it still signs.
    const again = await LabCa.loadOrCreate(dir);
    expect(again.certPem).toBe(ca.certPem);
    expect(again.fingerprint).toBe(ca.fingerprint);
    const later = new X509Certificate((await again.issue({ commonName: 'host-c', ipAddresses: ['10.1.2.3'] })).certPem);
    expect(later.verify(caCert.publicKey)).toBe(true);
    expect(later.serialNumber).not.toBe(cert.serialNumber);
  });

  it('refuses a leaf without any name, and an agent identity as its CA', async () => {
    const ca = await LabCa.loadOrCreate(join(work, 'ca-names'));
    await expect(ca.issue({ commonName: 'nameless', ipAddresses: [] })).rejects.toThrow(/needs at least one IP address or DNS name/);
    const dir = join(work, 'not-a-ca');
    const id = await loadOrCreateAgentIdentity(dir, { commonName: 'leaf' });
    await writeFile(join(dir, 'lab-ca-key.pem'), id.keyPem);
    await writeFile(join(dir, 'lab-ca-cert.pem'), id.certPem);
    await expect(LabCa.loadOrCreate(dir)).rejects.toThrow(/lab-ca-cert\.pem is not a CA certificate/);
  });

  it('writes the directory layout QEMU reads, private keys private', async () => {
    const ca = await LabCa.loadOrCreate(join(work, 'ca-qemu'));
    const leaf = await ca.issue({ commonName: 'host-a', ipAddresses: ['127.0.0.1'] });
    const dir = join(work, 'qemu-tls');
    await writeQemuTlsDir(dir, { caCertPem: ca.certPem, ...leaf });
    expect(await mode(dir)).toBe(0o700);
    expect(await readFile(join(dir, 'ca-cert.pem'), 'utf8')).toBe(ca.certPem);
    for (const side of ['server', 'client']) {
      expect(await readFile(join(dir, `${side}-cert.pem`), 'utf8')).toBe(leaf.certPem);
      expect(await readFile(join(dir, `${side}-key.pem`), 'utf8')).toBe(leaf.keyPem);
      expect(await mode(join(dir, `${side}-key.pem`))).toBe(0o600);
    }
    // Written again (new creds), the files are replaced.
    const next = await ca.issue({ commonName: 'host-a', ipAddresses: ['127.0.0.1'] });
    await writeQemuTlsDir(dir, { caCertPem: ca.certPem, ...next });
    expect(await readFile(join(dir, 'server-cert.pem'), 'utf8')).toBe(next.certPem);

    // Creds that do not belong together are refused before QEMU sees them.
    const other = await LabCa.loadOrCreate(join(work, 'ca-qemu-other'));
    await expect(writeQemuTlsDir(join(work, 'qemu-bad'), { caCertPem: other.certPem, ...leaf })).rejects.toThrow(/was not issued by the CA given with it/);
    await expect(writeQemuTlsDir(join(work, 'qemu-bad'), { caCertPem: ca.certPem, certPem: leaf.certPem, keyPem: next.keyPem })).rejects.toThrow(
      /not the key of its certificate/,
    );
  });
});

describe('a TLS handshake pinned by fingerprint', () => {
  let identity: TlsIdentity;
  let server: Server;
  let port: number;

  beforeAll(async () => {
    identity = await loadOrCreateAgentIdentity(join(work, 'tls-agent'), { commonName: 'miglab-agent tls', ipAddresses: ['127.0.0.1'] });
    server = createServer({ key: identity.keyPem, cert: identity.certPem, minVersion: 'TLSv1.3' }, (sock) => sock.end('hello over TLS\n'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    port = (server.address() as { port: number }).port;
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
  });

  /** What connect.ts does: the chain is not checked (self-signed), the pin is. */
  function connectPinned(pin: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const sock = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
      sock.once('error', reject);
      sock.once('secureConnect', () => {
        const seen = sock.getPeerCertificate().fingerprint256;
        if (seen !== normalizeFingerprint(pin)) {
          sock.destroy();
          reject(new Error(`fingerprint mismatch: saw ${seen}`));
          return;
        }
        let data = '';
        sock.setEncoding('utf8');
        sock.on('data', (d: string) => (data += d));
        sock.once('end', () => resolve(data));
      });
    });
  }

  it('succeeds when the pinned fingerprint is the agent\'s', async () => {
    expect(await connectPinned(identity.fingerprint.replace(/:/g, '').toLowerCase())).toBe('hello over TLS\n');
  });

  it('lets the client see a different certificate than the one it pinned', async () => {
    const stranger = await loadOrCreateAgentIdentity(join(work, 'tls-stranger'), { commonName: 'stranger' });
    await expect(connectPinned(stranger.fingerprint)).rejects.toThrow(`fingerprint mismatch: saw ${identity.fingerprint}`);
  });
});
