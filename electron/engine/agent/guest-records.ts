// What the agent keeps next to each guest's own record (guest.json, written by LocalHost): the
// token that owns the guest and the library disk it boots through an overlay. A restarted agent
// reads it back, so an adopted guest keeps its owner and the peer still sees its library path.
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';

const FILE = 'agent.json';

const RecordSchema = z.object({
  version: z.literal(1),
  /** The id of the token whose connection started the guest. */
  owner: z.string().regex(/^[0-9a-f]{8}$/),
  disk: z
    .object({
      /** The image as the peer named it, relative to the library. */
      image: z.string().min(1).max(1024),
      format: z.enum(['qcow2', 'raw']).optional(),
      /** The guest's own copy-on-write overlay, in the agent's data dir. */
      overlay: z.string().min(1).max(4096),
    })
    .strict()
    .nullable(),
});

export type AgentGuestRecord = z.infer<typeof RecordSchema>;

export async function writeAgentRecord(guestDir: string, record: AgentGuestRecord): Promise<void> {
  const tmp = join(guestDir, `${FILE}.tmp`);
  await writeFile(tmp, JSON.stringify(record), { mode: 0o600 });
  await rename(tmp, join(guestDir, FILE));
}

/** The records under a host's runtime dir, by guest (dir) name; unreadable ones are left out. */
export async function readAgentRecords(guestsDir: string): Promise<Map<string, AgentGuestRecord>> {
  const out = new Map<string, AgentGuestRecord>();
  const entries = await readdir(guestsDir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    try {
      const r = RecordSchema.safeParse(JSON.parse(await readFile(join(guestsDir, e.name, FILE), 'utf8')));
      if (r.success) out.set(e.name, r.data);
    } catch {
      // no record: a guest of an agent from before owners were kept
    }
  }
  return out;
}
