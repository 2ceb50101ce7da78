// Lab files: a lab (hosts, network, guests and their workloads) as YAML, so a teacher hands the
// same lab to a class. `miglab web lab.yaml`, `npm start -- lab.yaml` and the app open one.
import { open, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parseDocument, stringify } from 'yaml';
import { z } from 'zod';
import { LocalHost } from '../hosts/local/local-host';
import { DEFAULT_LAB_SUBNET, LabNetwork, parseSubnet } from '../network/lab-network';
import { BootSchema, bootFiles, hostPath, labName, withBootFiles } from '../qemu/spec';
import { makeTempDir, removeDir } from '../util/fs';
import { RemoteHost } from '../hosts/remote/remote-host';
import type { Host } from '../hosts/host';
import { normalizeFingerprint } from '../tls/certs';
import { Lab, localPortRange } from './lab';
import { DOWNTIME_POLICY_NAMES } from '../migration/downtime-policy';
import type { DowntimePolicyName } from '../migration/types';


export const AgentUrlSchema = z.string().max(300).regex(/^wss:\/\/[^/\s]+(\/.*)?$/, 'write the agent address as wss://HOST:PORT, as "miglab agent" prints it');
export const AgentTokenSchema = z.string().regex(/^mlt_[A-Za-z0-9_-]{20,100}$/, 'the token starts with mlt_, as "miglab agent" prints it');
export const AgentFingerprintSchema = z.string().max(200).refine((f) => {
  try {
    normalizeFingerprint(f);
    return true;
  } catch {
    return false;
  }
}, 'the fingerprint is the SHA-256 of the agent certificate: 32 hex bytes, as "miglab agent" prints it');

/**
 * How the engine reaches a host that runs `miglab agent`: what the agent printed when it started.
 * The token may be left out of a file that is shared (a saved lab never holds one); such a file
 * opens only once each agent host has its token again.
 */
export const AgentRefSchema = z.object({
  url: AgentUrlSchema,
  token: AgentTokenSchema.optional(),
  fingerprint: AgentFingerprintSchema,
}).strict();

export const LabFileSchema = z.object({
  name: z.string().max(200).optional(),
  /**
   * The image library of this machine's hosts: the only files a guest that migrates here from an
   * agent may boot from (default: the cached lab guest). Relative to the lab file's folder.
   */
  images: hostPath.optional(),
  network: z.object({
    subnet: z.string().default(DEFAULT_LAB_SUBNET),
    /** The switch's address: one every host reaches (default 127.0.0.1, right for local hosts only). */
    address: z.ipv4().optional(),
  }).strict().nullable().default({ subnet: DEFAULT_LAB_SUBNET }),
  /** How this lab's migrations run, unless a migration says otherwise. */
  migration: z.object({
    /**
     * Keep the paused source this long after the destination runs, so that a diskless guest can
     * be taken back on request (null: MigLab's policy, see MigrationOptions.keepSourceMs).
     */
    keepSourceMs: z.number().int().min(0).max(600_000).nullable().optional(),
    /** The downtime policy (ramp, proxmox, nova, fixed); null or left out: MigLab's default. */
    downtimePolicy: z.enum(DOWNTIME_POLICY_NAMES as [DowntimePolicyName, ...DowntimePolicyName[]]).nullable().optional(),
  }).strict().optional(),
  hosts: z.array(z.object({ name: labName, agent: AgentRefSchema.optional() }).strict()).min(1, 'a lab needs at least one host').max(16),
  guests: z.array(z.object({
    name: labName,
    host: labName,
    memoryMiB: z.number().int().min(64).max(65536).default(256),
    boot: BootSchema.default({ kind: 'lab' }),
    workload: z.object({ rateMBps: z.number().min(0).max(100_000), workingSetMiB: z.number().int().min(1).max(65536) }).strict().optional(),
    /** Start the guest when the lab opens (default true). */
    start: z.boolean().default(true),
  }).strict()).default([]),
}).strict().superRefine((lab, ctx) => {
  const hosts = new Set<string>();
  lab.hosts.forEach((h, i) => {
    if (hosts.has(h.name)) ctx.addIssue({ code: 'custom', path: ['hosts', i, 'name'], message: `two hosts are called "${h.name}"` });
    hosts.add(h.name);
  });
  const guests = new Set<string>();
  lab.guests.forEach((g, i) => {
    if (guests.has(g.name)) ctx.addIssue({ code: 'custom', path: ['guests', i, 'name'], message: `two guests are called "${g.name}"` });
    guests.add(g.name);
    if (!hosts.has(g.host)) ctx.addIssue({ code: 'custom', path: ['guests', i, 'host'], message: `there is no host "${g.host}" in this lab (it has ${[...hosts].join(', ')})` });
    if (g.workload && g.boot.kind !== 'lab') ctx.addIssue({ code: 'custom', path: ['guests', i, 'workload'], message: 'only the lab guest runs a workload (labload)' });
  });
  if (lab.network) {
    try {
      parseSubnet(lab.network.subnet);
    } catch (err) {
      ctx.addIssue({ code: 'custom', path: ['network', 'subnet'], message: (err as Error).message });
    }
  }
});

export type LabFile = z.output<typeof LabFileSchema>;

export class LabFileError extends Error {
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`The lab file ${source} cannot be used: ${problems.join('; ')}`);
    this.name = 'LabFileError';
  }
}

/** A lab file is a few kilobytes of YAML; anything much larger is the wrong file, or an attack. */
export const MAX_LAB_FILE_BYTES = 1024 * 1024;

const tooLarge = (bytes: string) => `it is ${bytes}, more than the 1 MiB a lab file may be (one is a few kilobytes of YAML): check that this is the right file`;

/** The YAML as plain data; any problem (a syntax error, an alias bomb) as a LabFileError. */
function yamlData(text: string, source: string): unknown {
  if (text.length > MAX_LAB_FILE_BYTES || Buffer.byteLength(text) > MAX_LAB_FILE_BYTES) throw new LabFileError(source, [tooLarge('larger')]);
  let doc: ReturnType<typeof parseDocument>;
  try {
    doc = parseDocument(text, { prettyErrors: true });
  } catch (err) {
    throw new LabFileError(source, [`the YAML cannot be read: ${(err as Error).message.split('\n')[0]}`]);
  }
  if (doc.errors.length) {
    throw new LabFileError(source, doc.errors.map((e) => `line ${e.linePos?.[0]?.line ?? '?'}: ${e.message.split('\n')[0]}`));
  }
  try {
    return doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    const message = (err as Error).message.split('\n')[0]!;
    if (/alias count/i.test(message)) {
      throw new LabFileError(source, ['it repeats YAML aliases (*name) so often that it would grow without bound (a "billion laughs" file): a lab file needs few aliases or none']);
    }
    throw new LabFileError(source, [`the YAML cannot be read: ${message}`]);
  }
}

/**
 * Makes the file's paths absolute: each relative one names a file next to the lab file, whatever
 * folder the engine runs in (QEMU runs in yet another, the guest's). A guest on an agent host
 * keeps its paths: they are relative to that agent's image library, where the agent looks.
 */
function resolvePaths(lab: LabFile, source: string, dir: string | undefined): LabFile {
  const problems: string[] = [];
  const onAgent = new Set(lab.hosts.filter((h) => h.agent).map((h) => h.name));
  const field = { kernel: 'kernel', initrd: 'initrd', 'disk image': 'path' } as const;
  const here = (path: string, where: string): string => {
    if (isAbsolute(path)) return path;
    if (dir) return resolve(dir, path);
    problems.push(`${where}: "${path}" is relative, and this lab file has no folder to find it in: write an absolute path`);
    return path;
  };
  const guests = lab.guests.map((g, i) => {
    if (!onAgent.has(g.host)) return { ...g, boot: withBootFiles(g.boot, (p, what) => here(p, `guests.${i}.boot.${field[what]}`)) };
    for (const f of bootFiles(g.boot)) {
      if (isAbsolute(f.path)) {
        problems.push(`guests.${i}.boot.${field[f.what]}: "${f.path}" is absolute, but host ${g.host} is an agent: name the file relative to its image library (the agent's --images folder)`);
      }
    }
    return g;
  });
  const images = lab.images === undefined ? undefined : here(lab.images, 'images');
  if (problems.length) throw new LabFileError(source, problems);
  return { ...lab, ...(images !== undefined ? { images } : {}), guests };
}

export interface ParseLabFileOptions {
  /** The folder the lab file is in: its relative paths name files there. */
  dir?: string;
}

/** Parses and checks a lab file's text; one error lists every problem, with lines for YAML ones. */
export function parseLabFile(text: string, source = 'lab file', opts: ParseLabFileOptions = {}): LabFile {
  const r = LabFileSchema.safeParse(yamlData(text, source));
  if (!r.success) throw new LabFileError(source, r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : 'lab'}: ${i.message}`));
  return resolvePaths(r.data, source, opts.dir);
}

/** At most MAX_LAB_FILE_BYTES of a regular file: a FIFO or a device is not waited on or read forever. */
async function readCapped(path: string): Promise<string> {
  const cannot = (err: unknown) =>
    new LabFileError(path, [`it cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): check the path`]);
  const st = await stat(path).catch((err: unknown) => {
    throw cannot(err);
  });
  if (!st.isFile()) throw new LabFileError(path, ['it is not a file: give the path of a .yaml lab file']);
  if (st.size > MAX_LAB_FILE_BYTES) throw new LabFileError(path, [tooLarge(`${(st.size / 2 ** 20).toFixed(1)} MiB`)]);
  const fh = await open(path, 'r').catch((err: unknown) => {
    throw cannot(err);
  });
  try {
    const buf = Buffer.alloc(MAX_LAB_FILE_BYTES + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, null);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > MAX_LAB_FILE_BYTES) throw new LabFileError(path, [tooLarge('larger')]); // it grew since the stat
    }
    return buf.subarray(0, n).toString('utf8');
  } catch (err) {
    throw err instanceof LabFileError ? err : cannot(err);
  } finally {
    await fh.close();
  }
}

export async function readLabFile(path: string): Promise<LabFile> {
  return parseLabFile(await readCapped(path), path, { dir: dirname(resolve(path)) });
}

/** The YAML for a lab file (what "Save lab file" writes). */
export function labFileText(lab: LabFile): string {
  return `# MigLab lab file: open it with "npm start -- <file>" or "npx miglab web <file>"\n${stringify(lab)}`;
}

/**
 * The lab a file describes: its hosts (on this machine, or reached through their agents) and its
 * network. Its guests are started by LabService.startGuests, which also sets their workloads.
 * An agent host without a token is refused before anything starts or connects.
 */
export async function labFromFile(file: LabFile, opts: { runtimeDir?: string; source?: string } = {}): Promise<Lab> {
  const tokenless = file.hosts.filter((h) => h.agent && !h.agent.token).map((h) => h.name);
  if (tokenless.length) {
    throw new LabFileError(
      opts.source ?? 'lab file',
      tokenless.map((name) => `host ${name} has no token: add the token its agent printed, or make one with 'miglab agent token new'`),
    );
  }
  if (file.images && file.hosts.some((h) => !h.agent)) {
    const st = await stat(file.images).catch(() => null);
    if (!st?.isDirectory()) {
      throw new LabFileError(opts.source ?? 'lab file', [`images: ${file.images} is not a folder: create it and put the images guests may use in it, or leave images: out`]);
    }
  }
  const network = file.network
    ? new LabNetwork({ subnet: file.network.subnet, ...(file.network.address ? { address: file.network.address } : {}) })
    : null;
  // Only local hosts keep sockets here: a lab of agents has no runtime dir to leave behind (an
  // engine run that is killed, say).
  const dir = opts.runtimeDir ?? (file.hosts.some((h) => !h.agent) ? await makeTempDir('lab') : null);
  const connected: RemoteHost[] = [];
  try {
    const hosts: Host[] = [];
    for (const [i, h] of file.hosts.entries()) {
      if (h.agent) {
        const remote = await RemoteHost.connect({ name: h.name, ...h.agent, token: h.agent.token!, ...(network ? { network } : {}) });
        connected.push(remote);
        hosts.push(remote);
      } else {
        hosts.push(new LocalHost({
          name: h.name, runtimeDir: join(dir!, h.name), migrationPorts: localPortRange(i),
          ...(network ? { network } : {}), ...(file.images ? { imagesDir: file.images } : {}),
        }));
      }
    }
    return new Lab(hosts, { ...(dir ? { runtimeDir: dir } : {}), ownsDir: !opts.runtimeDir, network, ...(file.migration ? { migration: file.migration } : {}) });
  } catch (err) {
    await Promise.all(connected.map((h) => h.disconnect()));
    await network?.close();
    if (!opts.runtimeDir && dir) await removeDir(dir);
    throw err;
  }
}
