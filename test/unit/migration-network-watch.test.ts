// How many announce rounds a migration's network report expects: what the destination QEMU says
// its announce-rounds is (query-migrate-parameters), never an assumed default.
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { Guest } from '../../electron/engine/hosts/host';
import type { LabNetwork } from '../../electron/engine/network/lab-network';
import { MigrationNetworkWatch, announceSchedule } from '../../electron/engine/migration/network-watch';
import type { MigrationParameters } from '../../electron/engine/qmp';

/** A lab network whose switch sees nothing: the report then holds only what the watch learnt. */
function quietNetwork(): LabNetwork {
  const sw = Object.assign(new EventEmitter(), { portInfo: () => [] });
  return { switch: sw } as unknown as LabNetwork;
}

/** A guest without an IP (so no probe) whose QMP answers query-migrate-parameters with `params`. */
function guestAnswering(params: MigrationParameters | Error): Guest {
  const execute = async (cmd: string) => {
    if (cmd !== 'query-migrate-parameters') throw new Error(`unexpected ${cmd}`);
    if (params instanceof Error) throw params;
    return params;
  };
  return { spec: { mac: '52:54:00:00:00:01' }, switchPort: null, qmp: { execute } } as unknown as Guest;
}

async function expectedRounds(params: MigrationParameters | Error): Promise<number | null> {
  const source = guestAnswering({});
  const watch = new MigrationNetworkWatch(quietNetwork(), source, performance.now(), () => {}, 20);
  await watch.start();
  await watch.learnAnnounces(guestAnswering(params));
  return watch.finish().expectedAnnounceFrames;
}

describe('MigrationNetworkWatch: expected announce rounds', () => {
  it('takes the destination QEMU\'s own announce-rounds', async () => {
    expect(await expectedRounds({ 'announce-initial': 50, 'announce-max': 550, 'announce-rounds': 3, 'announce-step': 100 })).toBe(3);
    expect(await expectedRounds({ 'announce-initial': 50, 'announce-max': 550, 'announce-rounds': 5, 'announce-step': 100 })).toBe(5);
  });

  it('is unknown (null), not 5, when the destination does not report it or cannot be asked', async () => {
    expect(await expectedRounds({ 'downtime-limit': 300 })).toBeNull();
    expect(await expectedRounds(new Error('QMP connection closed'))).toBeNull();
  });

  it('knows the rounds even when QEMU leaves out their timing', async () => {
    expect(await expectedRounds({ 'announce-rounds': 4 })).toBe(4);
  });
});

describe('announceSchedule', () => {
  it('spaces the rounds as qemu_announce_self does: initial, then step more each time, up to max', () => {
    expect(announceSchedule({ initial: 50, max: 550, rounds: 5, step: 100 })).toEqual([0, 50, 200, 450, 800]);
    expect(announceSchedule({ initial: 50, max: 120, rounds: 4, step: 100 })).toEqual([0, 50, 170, 290]);
  });
});
