// QEMU's migration statuses as the job and recovery group them: one list of each, in one place.
import type { MigrationStatus } from '../qmp';

/** The migration has ended, one way or the other. */
export const MIGRATION_TERMINAL: readonly MigrationStatus[] = ['completed', 'failed', 'cancelled'];

/** QEMU is still moving the guest (or winding down after a cancel): it will end on its own. */
export const MIGRATION_IN_FLIGHT: readonly MigrationStatus[] = ['setup', 'active', 'device', 'pre-switchover', 'cancelling', 'wait-unplug'];

export const isTerminal = (s: MigrationStatus | null | undefined): boolean => !!s && MIGRATION_TERMINAL.includes(s);
export const isInFlight = (s: MigrationStatus | null | undefined): boolean => !!s && MIGRATION_IN_FLIGHT.includes(s);
