// Each job's phase on disk, written at every transition, so that an engine that restarts can
// tell what became of a guest it was moving.
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { MIGRATION_PHASES, type JobState, type MigrationResult } from './types';

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
  /** Set by an engine that restarted and settled this job (see recovery.ts). */
  recovery?: import('./recovery').RecoveryReport;
}

/** $MIGLAB_STATE_DIR, else $XDG_STATE_HOME/miglab, else ~/.local/state/miglab. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MIGLAB_STATE_DIR) return resolve(env.MIGLAB_STATE_DIR);
  if (env.XDG_STATE_HOME) return resolve(env.XDG_STATE_HOME, 'miglab');
  return join(homedir(), '.local', 'state', 'miglab');
}

export class MigrationJournal {
  private readonly dir: string;

  constructor(stateDir: string = defaultStateDir()) {
    this.dir = join(stateDir, 'migrations');
  }

  private file(id: string): string {
    return join(this.dir, `${id}.json`);
  }

  /** Atomic: a crash mid-write leaves the previous entry, never half of one. */
  async write(entry: JournalEntry): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const tmp = `${this.file(entry.id)}.tmp`;
    await writeFile(tmp, `${JSON.stringify(entry, null, 2)}\n`);
    await rename(tmp, this.file(entry.id));
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
    return (await this.list()).filter((e) => !['completed', 'failed', 'cancelled'].includes(e.state));
  }

  async remove(id: string): Promise<void> {
    await rm(this.file(id), { force: true });
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
  if (entry.state === 'failed' || entry.state === 'cancelled') return { host: entry.from, why: `the migration ${entry.state}` };
  if (idx < switchover) {
    return { host: entry.from, why: `the engine stopped in ${entry.state}, before the switchover: the source kept the guest` };
  }
  return {
    host: entry.to,
    why: `the engine stopped in ${entry.state}, at or after the switchover: check the destination first, then the source`,
  };
}
