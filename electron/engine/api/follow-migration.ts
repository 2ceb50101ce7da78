// A migration as a front end without a UI loop (the CLI, the demo) runs it: the `migrate` command
// to a LabService, then that migration's events until its result, like the app and browser mode.
import type { MigrationEvent, MigrationResult } from '../migration/types';
import type { ApiCommand, ApiEvent } from './contract';
import type { LabService } from './service';

export interface FollowedMigration {
  /** The migration's id, once the service accepted the command; rejects with its ApiError. */
  readonly id: Promise<string>;
  /**
   * The result once the job is over, with the figures that settle after the outcome (the last
   * result-update, if one came); rejects when the service refused the command.
   */
  readonly result: Promise<MigrationResult>;
  /** cancelMigration: false when the migration is past cancelling (or was refused). */
  cancel(reason: string): Promise<boolean>;
  /** continueMigration: lets a migration waiting in pre-switchover go on; false when the service refused. */
  continue(): Promise<boolean>;
}

export function followMigration(
  service: LabService,
  command: Extract<ApiCommand, { type: 'migrate' }>,
  onEvent: (ev: MigrationEvent) => void = () => {},
): FollowedMigration {
  // The job may speak before execute() hands back its id: events of this guest wait by id until then.
  const early = new Map<string, MigrationEvent[]>();
  let mine: string | null = null;
  let updated: MigrationResult | null = null;
  const deliver = (ev: MigrationEvent) => {
    if (ev.type === 'result-update') updated = ev.result;
    onEvent(ev);
  };
  const listen = (e: ApiEvent) => {
    if (e.type !== 'migration' || e.guest !== command.guest) return;
    if (mine === null) {
      const queue = early.get(e.id) ?? [];
      queue.push(e.event);
      early.set(e.id, queue);
    } else if (e.id === mine) deliver(e.event);
  };
  service.on('event', listen);
  const id = (service.execute(command) as Promise<{ id: string }>).then((r) => {
    mine = r.id;
    for (const ev of early.get(r.id) ?? []) deliver(ev);
    early.clear();
    return r.id;
  });
  const result = id
    .then((i) => service.migrationDone(i))
    .then((r) => updated ?? r)
    .finally(() => service.off('event', listen));
  id.catch(() => {}); // whoever awaits result hears of it there
  return {
    id,
    result,
    cancel: async (reason) => {
      const r = (await service.execute({ type: 'cancelMigration', id: await id, reason }).catch(() => ({ cancelled: false }))) as { cancelled: boolean };
      return r.cancelled;
    },
    continue: async () => service.execute({ type: 'continueMigration', id: await id }).then(() => true, () => false),
  };
}
