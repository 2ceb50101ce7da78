// Each job's phase on disk, written at every transition, so that an engine that restarts can
// tell what became of a guest it was moving. Each write reaches the disk before it resolves
// (fsync of the file and of its folder): a power cut must not leave an older phase than the
// one the job acted on.
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Guest, Host } from '../hosts/host';
import { defaultStateDir, statePath } from '../util/paths';
import { MIGRATION_PHASES, type JobState, type MigrationResult } from './types';
import type { RecoveryReport } from './recovery-report';

/** One QEMU of a job, as the journal names it, so that a new engine can find that very QEMU again. */
export interface JournalCopy {
  host: string;
  address: string;
  /** The host's kind, as its describe() names it ('local', 'remote'). */
  kind: string;
  /** The Guest object's id in the engine that wrote the entry. */
  guestId: string;
  pid: number | null;
  /** A local guest's own folder (its QMP socket and guest.json); null for a remote one (its agent keeps it). */
  runtimeDir: string | null;
}

/** A guest that says where its files live (LocalGuest does). */
/** The journal's record of one copy of a guest: which host, which QEMU, where its files are. */
export function journalCopy(host: Host, guest: Guest): JournalCopy {
  return {
    host: host.name,
    address: host.address,
    kind: host.describe().kind,
    guestId: guest.id,
    pid: guest.pid ?? null,
    // A host that ends with the engine: the next engine adopts the QEMU from this folder.
    runtimeDir: host.describe().outlivesEngine ? null : (guest.runtimeDir ?? null),
  };
}

/** A journal write that did not reach the disk: the job must not act as if it had. */
export class JournalWriteError extends Error {
  constructor(readonly file: string, cause: unknown) {
    const why = (cause as NodeJS.ErrnoException)?.code ?? (cause as Error)?.message ?? String(cause);
    super(`Could not write the migration journal entry ${file} (${why}): check that its folder is writable and the disk is not full`, { cause });
    this.name = 'JournalWriteError';
  }
}

export interface JournalEntry {
  id: string;
  guest: string;
  from: string;
  to: string;
  state: JobState;
  port: number | null;
  startedAt: string;
  updatedAt: string;
  result: MigrationResult | null;
  /** Set by an engine that restarted and settled this job, or tried to (see recovery.ts). */
  recovery?: RecoveryReport;
  // The fields below are absent from entries older engines wrote; recovery reads their absence
  // as "not known" (see recovery.ts), never as false.
  /** The guest's copy on the source host. */
  source?: JournalCopy;
  /** The destination's copy; null until it has been started. */
  destination?: JournalCopy | null;
  /**
   * The job has sent (or is about to send) `cont` to the destination: written BEFORE the `cont`,
   * so that an engine dying in between is read as "may have run". false: it provably never ran.
   */
  destinationResumed?: boolean;
  /** A rollback (the paused source taken back after the destination ran) is under way. */
  rollback?: boolean;
  /**
   * MigLab paused the destination (`stop`: its guest crashed while QEMU ran on). Without it, a
   * destination QEMU in plain "paused" never ran: started with -S, it runs once resumed, and only
   * a `stop` (MigLab's alone) brings a running QEMU back to "paused".
   */
  destinationPaused?: boolean;
  /** How many engines have tried to settle this entry after its own engine stopped. */
  attempts?: number;
}

export class MigrationJournal {
  private readonly dir: string;

  constructor(stateDir: string = defaultStateDir()) {
    this.dir = statePath(stateDir, 'migrations');
  }

  private file(id: string): string {
    return join(this.dir, `${id}.json`);
  }

  private writes = 0;

  /**
   * Atomic and durable: a crash mid-write leaves the previous entry, never half of one, and once
   * this resolves the entry survives a power cut (the file is fsynced before the rename, the
   * folder after it). Rejects with a JournalWriteError naming the file.
   */
  async write(entry: JournalEntry): Promise<void> {
    const file = this.file(entry.id);
    // Its own temp name per write: two writes of one entry must not interleave in one file.
    const tmp = `${file}.${process.pid}.${++this.writes}.tmp`;
    try {
      await mkdir(this.dir, { recursive: true });
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(`${JSON.stringify(entry, null, 2)}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, file);
      await syncDir(this.dir);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => {});
      throw new JournalWriteError(file, err);
    }
  }

  async read(id: string): Promise<JournalEntry | null> {
    try {
      return JSON.parse(await readFile(this.file(id), 'utf8')) as JournalEntry;
    } catch {
      return null;
    }
  }

  async list(): Promise<JournalEntry[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const entries = await Promise.all(names.filter((n) => n.endsWith('.json')).map((n) => this.read(n.slice(0, -5))));
    return entries.filter((e): e is JournalEntry => e !== null).sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  }

  /** Jobs that never reached completed, failed or cancelled: the engine stopped under them. */
  async unfinished(): Promise<JournalEntry[]> {
    // needs-attention is not an end: the next engine asks both QEMUs again.
    return (await this.list()).filter((e) => !['completed', 'failed', 'cancelled', 'not-converged'].includes(e.state));
  }

  async remove(id: string): Promise<void> {
    await rm(this.file(id), { force: true });
  }
}

/** Makes a rename in `dir` durable: the folder's own entry list is written out. */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * What became of the guest of a job the engine lost, from the last phase it wrote: before the
 * switchover the source still holds the guest; from then on, the destination may.
 */
export function likelyLocation(entry: JournalEntry): { host: string; why: string } {
  const idx = MIGRATION_PHASES.indexOf(entry.state as (typeof MIGRATION_PHASES)[number]);
  const switchover = MIGRATION_PHASES.indexOf('switchover');
  if (entry.state === 'completed') return { host: entry.to, why: 'the migration completed' };
  if (entry.state === 'failed' || entry.state === 'cancelled' || entry.state === 'not-converged') return { host: entry.from, why: `the migration ${entry.state}` };
  if (idx < switchover) {
    return { host: entry.from, why: `the engine stopped in ${entry.state}, before the switchover: the source kept the guest` };
  }
  return {
    host: entry.to,
    why: `the engine stopped in ${entry.state}, at or after the switchover: check the destination first, then the source`,
  };
}
