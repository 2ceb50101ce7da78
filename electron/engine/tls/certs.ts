// TLS identities for `miglab agent` and the lab CA for encrypted migration. The agent's own
// certificate is self-signed and trusted by its pinned SHA-256 fingerprint; the lab CA signs the
// leaf that QEMU's tls-creds-x509 presents on both ends of a migration stream. Keys are ECDSA
// P-256 in PKCS#8 PEM, which both node:tls and QEMU's gnutls read.
import { X509Certificate, createHash, createPrivateKey, randomBytes, type KeyObject } from 'node:crypto';
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type * as X509 from '@peculiar/x509';

export interface TlsIdentity {
  certPem: string;
  keyPem: string;
  /** SHA-256 of the certificate's DER: "AB:CD:...", 32 pairs. */
  fingerprint: string;
}

export const AGENT_KEY_FILE = 'agent-key.pem';
export const AGENT_CERT_FILE = 'agent-cert.pem';
export const LAB_CA_KEY_FILE = 'lab-ca-key.pem';
export const LAB_CA_CERT_FILE = 'lab-ca-cert.pem';

const EC_KEY: EcKeyGenParams & EcKeyImportParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGNING: EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
const VALIDITY_YEARS = 10;
// Hosts' clocks disagree; QEMU refuses a certificate that is "not yet activated".
const BACKDATE_MS = 24 * 3600_000;

// Passed explicitly to every @peculiar/x509 call rather than set as its global default.
const webcrypto = globalThis.crypto;

let x509Module: Promise<typeof X509> | null = null;

/**
 * @peculiar/x509, loaded on first use: it registers its algorithms with tsyringe, which needs
 * the Reflect metadata polyfill in place before it is imported.
 */
function peculiarX509(): Promise<typeof X509> {
  x509Module ??= import('reflect-metadata').then(() => import('@peculiar/x509'));
  return x509Module;
}

export class TlsIdentityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TlsIdentityError';
  }
}

// ---- fingerprints ----

/** SHA-256 of a certificate's DER, as openssl and X509Certificate.fingerprint256 print it. */
export function certFingerprint(pemOrDer: string | Buffer): string {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pemOrDer);
  } catch (err) {
    throw new TlsIdentityError(`Cannot take the fingerprint: the input is not an X.509 certificate in PEM or DER (${(err as Error).message})`);
  }
  return formatFingerprint(createHash('sha256').update(cert.raw).digest('hex'));
}

function formatFingerprint(hex: string): string {
  return hex.toUpperCase().match(/../g)!.join(':');
}

/**
 * The canonical form of a fingerprint a person typed or pasted: with or without colons or
 * spaces, any case, with an optional "sha256:" (or openssl's "sha256 Fingerprint=") prefix.
 */
export function normalizeFingerprint(text: string): string {
  if (typeof text !== 'string') throw new TlsIdentityError(`A fingerprint must be text, not ${typeof text}`);
  const shown = text.length > 120 ? `${text.slice(0, 120)}...` : text;
  const body = text.trim().replace(/^sha-?256(?:\s+fingerprint)?\s*[:=]?\s*/i, '').replace(/[:\s]/g, '');
  if (!/^[0-9a-f]{64}$/i.test(body)) {
    throw new TlsIdentityError(
      `"${shown}" is not a SHA-256 certificate fingerprint: it must be 32 bytes of hex (64 hex digits, colons optional), ` +
        'as "miglab agent" prints it',
    );
  }
  return formatFingerprint(body);
}

// ---- PEM files ----

function toPem(der: ArrayBuffer, label: string): string {
  const body = Buffer.from(der).toString('base64').match(/.{1,64}/g)!.join('\n');
  return `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;
}

async function newKeyPair(): Promise<{ keys: CryptoKeyPair; keyPem: string }> {
  const keys = await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify']);
  return { keys, keyPem: toPem(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY') };
}

/** 16 random bytes, positive and without a leading zero byte, so DER keeps all 16. */
function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x40;
  return b.toString('hex');
}

function validity(notAfterCap?: Date): { notBefore: Date; notAfter: Date } {
  const now = Date.now();
  let notAfter = new Date(now + VALIDITY_YEARS * 365.25 * 24 * 3600_000);
  if (notAfterCap && notAfter > notAfterCap) notAfter = notAfterCap;
  return { notBefore: new Date(now - BACKDATE_MS), notAfter };
}

function sanExtension(x509: typeof X509, ipAddresses: string[] = [], dnsNames: string[] = []): X509.SubjectAlternativeNameExtension | null {
  for (const ip of ipAddresses) if (!isIP(ip)) throw new TlsIdentityError(`"${ip}" is not an IP address, so it cannot go in a certificate's IP names`);
  for (const dns of dnsNames) if (!/^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(dns)) throw new TlsIdentityError(`"${dns}" is not a DNS name`);
  const names: X509.JsonGeneralName[] = [
    ...ipAddresses.map((value) => ({ type: 'ip' as const, value })),
    ...dnsNames.map((value) => ({ type: 'dns' as const, value })),
  ];
  // An empty SAN is not valid DER (GeneralNames has at least one member): leave it out.
  return names.length ? new x509.SubjectAlternativeNameExtension(names) : null;
}

/** A name of just a CN, given as JSON so no character of it is parsed as DN syntax. */
function cnOf(commonName: string): X509.JsonName {
  // X.520 caps a CN at 64 characters; control characters have no place in one.
  const cn = commonName.replace(/[\x00-\x1f\x7f]/g, ' ').trim().slice(0, 64);
  if (!cn) throw new TlsIdentityError(`"${commonName}" cannot be a certificate's common name`);
  return [{ CN: [cn] }];
}

/** Writes through a temp file and a rename, so a crash never leaves half a PEM. */
async function writeAtomic(path: string, text: string, mode: number): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, text, { mode });
  await chmod(tmp, mode); // the umask may have narrowed it; never widened
  await rename(tmp, path);
}

async function readIfExists(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new TlsIdentityError(`Cannot read ${path}: ${(err as Error).message}`);
  }
}

interface LoadedPair {
  certPem: string;
  keyPem: string;
  cert: X509Certificate;
  key: KeyObject;
}

/**
 * Loads a key and its certificate, checking that both parse and belong together. `what` names
 * the pair in errors; `redo` says what deleting the files costs.
 */
async function loadPair(keyPath: string, certPath: string, what: string, redo: string): Promise<LoadedPair | null> {
  const keyPem = await readIfExists(keyPath);
  const certPem = await readIfExists(certPath);
  if (keyPem === null && certPem === null) return null;
  const fix = `Delete ${keyPath} and ${certPath} to make a new ${what}; ${redo}`;
  if (keyPem === null) throw new TlsIdentityError(`The ${what} is incomplete: ${certPath} exists but its key ${keyPath} does not. ${fix}`);
  if (certPem === null) throw new TlsIdentityError(`The ${what} is incomplete: ${keyPath} exists but its certificate ${certPath} does not. ${fix}`);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw new TlsIdentityError(`${certPath} is not a readable PEM certificate (${(err as Error).message}). ${fix}`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new TlsIdentityError(`${keyPath} is not a readable PEM private key (${(err as Error).message}). ${fix}`);
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new TlsIdentityError(`${keyPath} is not an ECDSA P-256 key (it is ${key.asymmetricKeyType}). ${fix}`);
  }
  if (!cert.checkPrivateKey(key)) {
    throw new TlsIdentityError(`${keyPath} is not the key of the certificate ${certPath}: the two files do not belong together. ${fix}`);
  }
  if (new Date(cert.validTo).getTime() < Date.now()) {
    throw new TlsIdentityError(`The ${what} in ${certPath} expired on ${cert.validTo}. ${fix}`);
  }
  // A key file copied around may have lost its mode: keep it private.
  await chmod(keyPath, 0o600).catch(() => {});
  return { certPem, keyPem, cert, key };
}

async function writePair(dir: string, keyFile: string, certFile: string, keyPem: string, certPem: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeAtomic(join(dir, keyFile), keyPem, 0o600);
  await writeAtomic(join(dir, certFile), certPem, 0o644);
}

// ---- the agent's identity ----

/**
 * The agent's key and self-signed certificate in `dir`: loaded when they exist (the
 * fingerprint that clients pinned must survive restarts), made when neither does.
 */
export async function loadOrCreateAgentIdentity(
  dir: string,
  opts: { commonName: string; ipAddresses?: string[]; dnsNames?: string[] },
): Promise<TlsIdentity & { created: boolean }> {
  const keyPath = join(dir, AGENT_KEY_FILE);
  const certPath = join(dir, AGENT_CERT_FILE);
  const loaded = await loadPair(keyPath, certPath, 'agent identity', 'every app that added this agent must then add it again with the new fingerprint (re-pin)');
  if (loaded) return { certPem: loaded.certPem, keyPem: loaded.keyPem, fingerprint: certFingerprint(loaded.certPem), created: false };

  const x509 = await peculiarX509();
  const san = sanExtension(x509, opts.ipAddresses, opts.dnsNames);
  const { keys, keyPem } = await newKeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: randomSerial(),
      name: cnOf(opts.commonName),
      ...validity(),
      keys,
      signingAlgorithm: SIGNING,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, webcrypto),
        ...(san ? [san] : []),
      ],
    },
    webcrypto,
  );
  const certPem = toPem(cert.rawData, 'CERTIFICATE');
  await writePair(dir, AGENT_KEY_FILE, AGENT_CERT_FILE, keyPem, certPem);
  return { certPem, keyPem, fingerprint: certFingerprint(certPem), created: true };
}

// ---- the lab CA ----

/** The lab's own certificate authority: it signs the leaves QEMU uses for encrypted migration. */
export class LabCa {
  readonly fingerprint: string;

  private constructor(
    readonly certPem: string,
    private readonly cert: X509.X509Certificate,
    private readonly signingKey: CryptoKey,
  ) {
    this.fingerprint = certFingerprint(certPem);
  }

  /** The CA in `dir` (lab-ca-key.pem, lab-ca-cert.pem), made when neither file exists. */
  static async loadOrCreate(dir: string): Promise<LabCa> {
    const x509 = await peculiarX509();
    const keyPath = join(dir, LAB_CA_KEY_FILE);
    const certPath = join(dir, LAB_CA_CERT_FILE);
    const loaded = await loadPair(keyPath, certPath, 'lab CA', 'every host must then be given certificates from the new CA');
    if (loaded) {
      if (!loaded.cert.ca) throw new TlsIdentityError(`${certPath} is not a CA certificate (basicConstraints CA is not true). Delete ${keyPath} and ${certPath} to make a new lab CA`);
      const der = loaded.key.export({ type: 'pkcs8', format: 'der' });
      const signingKey = await webcrypto.subtle.importKey('pkcs8', der, EC_KEY, false, ['sign']);
      return new LabCa(loaded.certPem, new x509.X509Certificate(loaded.certPem), signingKey);
    }

    const { keys, keyPem } = await newKeyPair();
    // A name of its own, so two labs' CAs are told apart in QEMU's and gnutls's messages.
    const name = cnOf(`MigLab lab CA ${randomBytes(4).toString('hex')}`);
    const cert = await x509.X509CertificateGenerator.createSelfSigned(
      {
        serialNumber: randomSerial(),
        name,
        ...validity(),
        keys,
        signingAlgorithm: SIGNING,
        extensions: [
          new x509.BasicConstraintsExtension(true, 0, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, webcrypto),
        ],
      },
      webcrypto,
    );
    const certPem = toPem(cert.rawData, 'CERTIFICATE');
    await writePair(dir, LAB_CA_KEY_FILE, LAB_CA_CERT_FILE, keyPem, certPem);
    return new LabCa(certPem, cert, keys.privateKey);
  }

  /**
   * A leaf for one host, good as both TLS server and client (QEMU's migration source is the
   * client, its destination the server). QEMU checks the source's tls-hostname against its IPs.
   */
  async issue(opts: { commonName: string; ipAddresses: string[]; dnsNames?: string[] }): Promise<{ certPem: string; keyPem: string }> {
    const x509 = await peculiarX509();
    const san = sanExtension(x509, opts.ipAddresses, opts.dnsNames);
    if (!san) throw new TlsIdentityError(`A lab certificate for "${opts.commonName}" needs at least one IP address or DNS name`);
    const { keys, keyPem } = await newKeyPair();
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: randomSerial(),
        subject: cnOf(opts.commonName),
        issuer: this.cert.subjectName,
        ...validity(this.cert.notAfter),
        publicKey: keys.publicKey,
        signingKey: this.signingKey,
        signingAlgorithm: SIGNING,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          // gnutls (so QEMU) wants keyEncipherment on a server certificate, even for ECDSA.
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, webcrypto),
          await this.authorityKeyId(x509),
          san,
        ],
      },
      webcrypto,
    );
    return { certPem: toPem(cert.rawData, 'CERTIFICATE'), keyPem };
  }

  /** The CA's own key identifier, so chain builders match the leaf to it by that too. */
  private async authorityKeyId(x509: typeof X509): Promise<X509.AuthorityKeyIdentifierExtension> {
    const ski = this.cert.getExtension(x509.SubjectKeyIdentifierExtension);
    if (ski) return new x509.AuthorityKeyIdentifierExtension(ski.keyId);
    return x509.AuthorityKeyIdentifierExtension.create(this.cert.publicKey, false, webcrypto);
  }
}

// ---- QEMU's credentials directory ----

/**
 * Writes the files QEMU's tls-creds-x509 reads from its `dir=`: the one leaf serves as both
 * the server's and the client's certificate. The three PEMs are checked to belong together
 * first, since QEMU's own complaint about a mismatch comes only when a migration starts.
 */
export async function writeQemuTlsDir(dir: string, creds: { caCertPem: string; certPem: string; keyPem: string }): Promise<void> {
  let ca: X509Certificate;
  let cert: X509Certificate;
  let key: KeyObject;
  try {
    ca = new X509Certificate(creds.caCertPem);
  } catch (err) {
    throw new TlsIdentityError(`The CA certificate for QEMU's TLS is not a readable PEM certificate (${(err as Error).message})`);
  }
  try {
    cert = new X509Certificate(creds.certPem);
  } catch (err) {
    throw new TlsIdentityError(`The certificate for QEMU's TLS is not a readable PEM certificate (${(err as Error).message})`);
  }
  try {
    key = createPrivateKey(creds.keyPem);
  } catch (err) {
    throw new TlsIdentityError(`The key for QEMU's TLS is not a readable PEM private key (${(err as Error).message})`);
  }
  if (!cert.checkPrivateKey(key)) throw new TlsIdentityError("The key for QEMU's TLS is not the key of its certificate");
  if (!ca.ca || !cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
    throw new TlsIdentityError(`The certificate for QEMU's TLS (${cert.subject}) was not issued by the CA given with it (${ca.subject})`);
  }
  // PKCS#8 whatever form the key came in: gnutls reads it, and it is the form we write everywhere.
  const keyPem = key.export({ type: 'pkcs8', format: 'pem' }) as string;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  await writeAtomic(join(dir, 'ca-cert.pem'), creds.caCertPem, 0o644);
  for (const side of ['server', 'client']) {
    await writeAtomic(join(dir, `${side}-cert.pem`), creds.certPem, 0o644);
    await writeAtomic(join(dir, `${side}-key.pem`), keyPem, 0o600);
  }
}
