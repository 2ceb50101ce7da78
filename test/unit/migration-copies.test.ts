// The rule book that picks which copy of a guest to keep (copies.ts), case by case: libvirt's
// rules as a table, so a change to one rule shows here before it shows as two running copies.
import { describe, expect, it } from 'vitest';
import { decideCopies, destinationMayHaveRun, type CopyFacts, type CopyState } from '../../electron/engine/migration/copies';

const running: CopyState = { kind: 'alive', runstate: 'running', running: true, migration: 'none' };
const paused = (runstate = 'paused', migration: 'completed' | 'none' | 'failed' | 'cancelled' = 'none'): CopyState =>
  ({ kind: 'alive', runstate, running: false, migration });
const gone: CopyState = { kind: 'gone', exit: 'killed by SIGKILL' };
const unknown: CopyState = { kind: 'unknown', why: 'no answer within 300 ms' };

function facts(f: Partial<CopyFacts>): CopyFacts {
  return {
    source: running, destination: paused('inmigrate'), destinationResumed: false, destinationRan: false,
    sourceCompleted: false, destinationCrashed: false, rollbackAllowed: false, rollbackRequested: false, ...f,
  };
}

describe('decideCopies', () => {
  it('keeps the source, stopping the destination, while the destination never ran', () => {
    expect(decideCopies(facts({}))).toMatchObject({ keep: 'source', stopDestination: true, resumeSource: false, wentBackInTime: false });
    // QEMU completed (a cancel that came too late): the destination holds the guest but never ran.
    expect(decideCopies(facts({ source: paused('postmigrate', 'completed'), destination: paused('paused'), sourceCompleted: true })))
      .toMatchObject({ keep: 'source', stopDestination: true, resumeSource: true });
    // A destination that was resumed while loading and then exited without a RESUME never ran.
    expect(decideCopies(facts({ source: paused('postmigrate', 'completed'), destination: gone, destinationResumed: true, sourceCompleted: true })))
      .toMatchObject({ keep: 'source', stopDestination: false, resumeSource: true });
  });

  it('never resumes the source next to a destination that may run: resumed and not answering', () => {
    const f = facts({ source: paused('postmigrate', 'completed'), destination: unknown, destinationResumed: true, sourceCompleted: true });
    expect(destinationMayHaveRun(f)).toBe(true);
    expect(decideCopies(f)).toMatchObject({ keep: 'attention', pausedOn: 'source', unknown: ['destination'] });
  });

  it('calls an unreachable source unknown, not gone: the never-resumed destination stays paused', () => {
    expect(decideCopies(facts({ source: unknown }))).toMatchObject({ keep: 'attention', unknown: ['source'], pausedOn: null });
    expect(decideCopies(facts({ source: unknown, destination: paused('paused'), sourceCompleted: true }))).toMatchObject({ keep: 'attention', pausedOn: 'destination' });
  });

  it('rolls forward when the source ended after sending the whole guest, and calls it lost before that', () => {
    expect(decideCopies(facts({ source: gone, destination: paused('paused'), sourceCompleted: true }))).toMatchObject({ keep: 'destination', resumeDestination: true });
    expect(decideCopies(facts({ source: gone }))).toMatchObject({ keep: 'lost', stopDestination: true });
    expect(decideCopies(facts({ source: gone, destination: unknown, sourceCompleted: true }))).toMatchObject({ keep: 'attention', unknown: ['destination'] });
  });

  it('keeps a running destination and stops the source once it ran', () => {
    const f = facts({ source: paused('postmigrate', 'completed'), destination: running, destinationResumed: true, destinationRan: true, sourceCompleted: true });
    expect(decideCopies(f)).toMatchObject({ keep: 'destination', resumeDestination: false, stopSource: true });
  });

  it('after the destination ran and crashed: back to the source only where rollback is allowed, else a person chooses', () => {
    const base = { source: paused('postmigrate', 'completed'), destinationResumed: true, destinationRan: true, sourceCompleted: true };
    expect(decideCopies(facts({ ...base, destination: gone }))).toMatchObject({ keep: 'attention', pausedOn: 'source', unknown: [] });
    expect(decideCopies(facts({ ...base, destination: gone, rollbackAllowed: true }))).toMatchObject({ keep: 'source', resumeSource: true, wentBackInTime: true });
    // QEMU says running, the console says oops: crashed all the same.
    expect(decideCopies(facts({ ...base, destination: running, destinationCrashed: true }))).toMatchObject({ keep: 'attention', pausedOn: 'source' });
    expect(decideCopies(facts({ ...base, destination: running, destinationCrashed: true, rollbackAllowed: true }))).toMatchObject({ keep: 'source', stopDestination: true, wentBackInTime: true });
    expect(decideCopies(facts({ ...base, source: gone, destination: gone }))).toMatchObject({ keep: 'lost', stopDestination: false });
    expect(decideCopies(facts({ ...base, source: unknown, destination: gone }))).toMatchObject({ keep: 'attention', unknown: ['source'] });
  });

  it('takes a healthy guest back on request only where rollback is allowed', () => {
    const base = { source: paused('postmigrate', 'completed'), destination: running, destinationResumed: true, destinationRan: true, sourceCompleted: true, rollbackRequested: true };
    expect(decideCopies(facts({ ...base, rollbackAllowed: true }))).toMatchObject({ keep: 'source', stopDestination: true, wentBackInTime: true });
    expect(decideCopies(facts(base))).toMatchObject({ keep: 'destination' });
  });
});
