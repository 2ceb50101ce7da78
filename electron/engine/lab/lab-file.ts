// Lab files: a lab (hosts, network, guests and their workloads) as YAML, so a teacher hands the
// same lab to a class. `miglab web lab.yaml`, `npm start -- lab.yaml` and the app open one.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseDocument, stringify } from 'yaml';
import { z } from 'zod';
import { LocalHost } from '../hosts/local';
import { DEFAULT_LAB_SUBNET, LabNetwork, parseSubnet } from '../network/lab-network';
import { BootSchema, labName } from '../qemu/spec';
import { makeTempDir, removeDir } from '../util/fs';
import { RemoteHost } from '../hosts/remote';
import type { Host } from '../hosts/host';
import { normalizeFingerprint } from '../agent/certs';
import { Lab, localPortRange } from './lab';


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
  network: z.object({
    subnet: z.string().default(DEFAULT_LAB_SUBNET),
    /** The switch's address: one every host reaches (default 127.0.0.1, right for local hosts only). */
    address: z.ipv4().optional(),
  }).strict().nullable().default({ subnet: DEFAULT_LAB_SUBNET }),
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

/** Parses and checks a lab file's text; one error lists every problem, with lines for YAML ones. */
export function parseLabFile(text: string, source = 'lab file'): LabFile {
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length) {
    throw new LabFileError(source, doc.errors.map((e) => `line ${e.linePos?.[0]?.line ?? '?'}: ${e.message.split('\n')[0]}`));
  }
  const r = LabFileSchema.safeParse(doc.toJS());
  if (!r.success) throw new LabFileError(source, r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : 'lab'}: ${i.message}`));
  return r.data;
}

export async function readLabFile(path: string): Promise<LabFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new LabFileError(path, [`it cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): check the path`]);
  }
  return parseLabFile(text, path);
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
        hosts.push(new LocalHost({ name: h.name, runtimeDir: join(dir!, h.name), migrationPorts: localPortRange(i), ...(network ? { network } : {}) }));
      }
    }
    return new Lab(hosts, { ...(dir ? { runtimeDir: dir } : {}), ownsDir: !opts.runtimeDir, network });
  } catch (err) {
    await Promise.all(connected.map((h) => h.disconnect()));
    await network?.close();
    if (!opts.runtimeDir && dir) await removeDir(dir);
    throw err;
  }
}
