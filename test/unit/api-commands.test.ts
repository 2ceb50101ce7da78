// The command schema for what the CLI and the Migrate dialog now send through the LabService: the
// migrate command's deadline and probe interval, a cancel's reason, and the release of a
// prepared destination. Bad input is refused with the field and what is wrong.
import { describe, expect, it } from 'vitest';
import { ApiError, parseCommand } from '../../electron/engine/api/commands';

function refusal(input: unknown): string {
  try {
    parseCommand(input);
  } catch (err) {
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe('invalid');
    return (err as Error).message;
  }
  throw new Error(`accepted: ${JSON.stringify(input)}`);
}

describe('the migrate command', () => {
  it('takes a deadline from 1 s to a day and a probe interval from 5 to 1000 ms', () => {
    const cmd = { type: 'migrate', guest: 'demo', to: 'host-b', maxDurationMs: 120_000, options: { probeIntervalMs: 20, bandwidthMBps: 1000 } };
    expect(parseCommand(cmd)).toEqual(cmd);
    expect(refusal({ ...cmd, maxDurationMs: 999 })).toMatch(/^The command is not valid: maxDurationMs: .*1000/);
    expect(refusal({ ...cmd, maxDurationMs: 86_400_001 })).toMatch(/maxDurationMs: .*86400000/);
    expect(refusal({ ...cmd, maxDurationMs: 1500.5 })).toMatch(/maxDurationMs: .*expected int/);
    expect(refusal({ ...cmd, options: { probeIntervalMs: 4 } })).toMatch(/options\.probeIntervalMs: .*5/);
    expect(refusal({ ...cmd, options: { probeIntervalMs: 1001 } })).toMatch(/options\.probeIntervalMs: .*1000/);
  });

  it('refuses what the job is not asked through this door (the journal, a destination)', () => {
    expect(refusal({ type: 'migrate', guest: 'demo', to: 'host-b', preparedDestination: 'x' })).toMatch(/preparedDestination/);
    expect(refusal({ type: 'migrate', guest: 'demo', to: 'host-b', options: { journal: '/tmp/j' } })).toMatch(/journal/);
  });
});

describe('cancelMigration and releasePreparedDestination', () => {
  it('takes a cancel reason of up to 200 characters', () => {
    expect(parseCommand({ type: 'cancelMigration', id: 'm1', reason: 'Interrupted (SIGINT)' })).toEqual({ type: 'cancelMigration', id: 'm1', reason: 'Interrupted (SIGINT)' });
    expect(refusal({ type: 'cancelMigration', id: 'm1', reason: 'x'.repeat(201) })).toMatch(/reason: .*200/);
    expect(refusal({ type: 'cancelMigration', id: 'm1', reason: '' })).toMatch(/reason: /);
  });

  it('releases by guest name only', () => {
    expect(parseCommand({ type: 'releasePreparedDestination', guest: 'web1' })).toEqual({ type: 'releasePreparedDestination', guest: 'web1' });
    expect(refusal({ type: 'releasePreparedDestination' })).toMatch(/guest: /);
    expect(refusal({ type: 'releasePreparedDestination', guest: 'web1', host: 'host-b' })).toMatch(/host/);
  });
});
