// Link emulation and encrypted migration through the API, with a real lab: a migration over an
// emulated 30 MB/s link, a pulled cable mid-migration (the guest stays on its source), a QEMU TLS
// migration with the lab CA's certificates, and what the API refuses (spectators, bad profiles).
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import type { ApiEvent, ApiResults, ServerMessage } from '../../electron/engine/api/contract';
import { LabService } from '../../electron/engine/api/service';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { MigrationJournal } from '../../electron/engine/migration/journal';
import type { MigrationEvent, MigrationResult } from '../../electron/engine/migration/types';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { WebServer } from '../../electron/engine/web/server';
import { queryMigrateParameters } from '../../electron/engine/qmp';
import { requireLabGuest } from '../helpers/lab';
import { qemuPids } from '../helpers/leaks';
import { completeDespiteTcgCrashes, expectOneCopyOn } from '../helpers/migration';

const GUEST = 'lk1';

let work: string;
let lab: Lab;
let service: LabService;
const events: ApiEvent[] = [];
const waiters = new Set<() => void>();

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-link-api');
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run'), network: { subnet: '10.84.0.0/24' } });
  const state = join(work, 'state');
  service = new LabService(lab, new MigrationJournal(state), { stateDir: state });
  service.on('event', (ev) => {
    events.push(ev);
    for (const w of [...waiters]) w();
  });
  await service.execute({ type: 'startGuest', host: 'host-a', guest: { name: GUEST } });
  await lab.host('host-a').guest(GUEST)!.waitReady(90_000);
});

afterAll(async () => {
  service?.close();
  await lab?.dispose();
  if (!work) return;
  try {
    expect(await qemuPids(join(work, 'run'))).toEqual([]);
    for (const h of ['host-a', 'host-b']) {
      // Nothing may stay, not even the TLS credentials (a private key) the lab put there.
      const dir = join(work, 'run', h);
      expect(await qemuPids(dir)).toEqual([]);
      expect(existsSync(dir) ? await readdir(dir) : []).toEqual([]);
    }
  } finally {
    await removeDir(work);
  }
});

/** The events of one migration, in order. */
function eventsOf(id: string): MigrationEvent[] {
  return events.flatMap((e) => (e.type === 'migration' && e.id === id ? [e.event] : []));
}

/** Resolves with the first event of migration `id` that matches, already heard or still to come. */
function waitFor<T extends MigrationEvent>(id: string, match: (e: MigrationEvent) => e is T, timeoutMs = 120_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const found = eventsOf(id).find(match);
      if (!found) return false;
      clearTimeout(timer);
      waiters.delete(check);
      resolve(found);
      return true;
    };
    const timer = setTimeout(() => {
      waiters.delete(check);
      reject(new Error(`migration ${id}: no matching event within ${timeoutMs} ms`));
    }, timeoutMs);
    if (!check()) waiters.add(check);
  });
}

const isResult = (e: MigrationEvent): e is Extract<MigrationEvent, { type: 'result' }> => e.type === 'result';

async function migrate(to: string, options: Record<string, unknown>): Promise<{ id: string; result: MigrationResult }> {
  const { id } = (await service.execute({ type: 'migrate', guest: GUEST, to, options })) as ApiResults['migrate'];
  const done = await waitFor(id, isResult);
  return { id, result: done.result };
}

/** Where the guest runs now, by the lab's own records. */
function hostOfGuest(): string {
  return lab.hosts().find((h) => h.guest(GUEST) && !h.guest(GUEST)!.exit)!.name;
}

/** The ApiError a command is refused with. */
async function refusal(command: unknown): Promise<{ code: string; message: string }> {
  try {
    await service.execute(command);
  } catch (err) {
    return { code: (err as { code: string }).code, message: (err as Error).message };
  }
  throw new Error(`${JSON.stringify(command)} was not refused`);
}

describe('link emulation through the API', () => {
  let linkedId = '';

  it('migrates over a 30 MB/s emulated link; its counters arrive as events and in the result', async () => {
    let id = '';
    const result = await completeDespiteTcgCrashes(lab, GUEST, async () => {
      const r = await migrate('host-b', { link: { bandwidthMBps: 30 } });
      id = r.id;
      return r.result;
    });
    linkedId = id;
    expect(result.runningOn).toBe('host-b');
    expect(result.tls).toBe(false);
    expect(result.link).not.toBeNull();
    expect(result.link!.profile).toEqual({ bandwidthMBps: 30, latencyMs: 0, lossPercent: 0 });
    expect(result.link!.cut).toBe(false);
    // The whole stream went through the relay, at no more than the link's rate.
    const through = result.link!.bytesForward;
    expect(through).toBeGreaterThanOrEqual(result.transferredBytes!);
    expect(result.totalTimeMs!).toBeGreaterThanOrEqual(((through / 30e6) * 1000) * 0.8);
    const links = eventsOf(id).filter((e) => e.type === 'link');
    expect(links.length).toBeGreaterThanOrEqual(1);
    // Counters grow while the stream flows (the service asks for them about twice a second).
    const forward = links.map((e) => (e.type === 'link' ? e.stats.bytesForward : 0));
    expect(forward).toEqual([...forward].sort((a, b) => a - b));
    expect(forward.some((b) => b > 0)).toBe(true); // heard before the result, not only in it
    // The snapshot says what the migration was asked for.
    const view = service.snapshot().migrations.find((m) => m.id === id)!;
    expect(view).toMatchObject({ tls: false, link: { bandwidthMBps: 30 }, state: 'completed' });
    await expectOneCopyOn(lab, GUEST, 'host-b');
  });

  it('pulls the cable mid-migration: the migration fails and the guest stays on its source', async () => {
    expect(hostOfGuest()).toBe('host-b');
    const { id } = (await service.execute({ type: 'migrate', guest: GUEST, to: 'host-a', options: { link: { bandwidthMBps: 5 } } })) as ApiResults['migrate'];
    await waitFor(id, (e): e is Extract<MigrationEvent, { type: 'phase' }> => e.type === 'phase' && e.phase === 'monitor', 60_000);
    // A change of one field keeps the others: the bandwidth limit stays while the latency changes.
    const set = (await service.execute({ type: 'linkControl', id, action: 'set', profile: { latencyMs: 10 } })) as ApiResults['linkControl'];
    expect(set.profile).toEqual({ bandwidthMBps: 5, latencyMs: 10, lossPercent: 0 });
    // Mid-stream: the live counters (asked for while the stream flows) show bytes going through.
    const flowing = await waitFor(id, (e): e is Extract<MigrationEvent, { type: 'link' }> => e.type === 'link' && e.stats.bytesForward > 0, 10_000);
    expect(flowing.stats.connections).toBe(1);
    const cut = (await service.execute({ type: 'linkControl', id, action: 'cut' })) as ApiResults['linkControl'];
    expect(cut.cut).toBe(true);
    expect(cut.connections).toBe(0);
    const { result } = await waitFor(id, isResult);
    expect(result.status, result.reason ?? '').toBe('failed');
    expect(result.runningOn).toBe('host-b');
    expect(result.link).toMatchObject({ cut: true });
    expect(result.link!.bytesForward).toBeGreaterThan(0);
    const linkEvents = eventsOf(id).filter((e) => e.type === 'link');
    expect(linkEvents.some((e) => e.type === 'link' && e.stats.cut)).toBe(true);
    expect(lab.host('host-a').guest(GUEST)).toBeUndefined();
    await expectOneCopyOn(lab, GUEST, 'host-b');

    // The job is over: its link went with it, and the API says so.
    for (const action of ['restore', 'cut'] as const) {
      const r = await refusal({ type: 'linkControl', id, action });
      expect(r.code).toBe('failed');
      expect(r.message).toContain('is over (failed)');
    }
    // The first migration's link is long closed too.
    expect((await refusal({ type: 'linkControl', id: linkedId, action: 'cut' })).message).toContain('is over (completed)');
  });

  it('migrates over QEMU TLS with the lab CA\'s certificates', async () => {
    const from = hostOfGuest();
    const to = from === 'host-a' ? 'host-b' : 'host-a';
    let id = '';
    const result = await completeDespiteTcgCrashes(lab, GUEST, async () => {
      const r = await migrate(to, { tls: true });
      id = r.id;
      return r.result;
    });
    expect(result.tls).toBe(true);
    expect(result.link).toBeNull();
    expect(result.runningOn).toBe(to);
    expect(service.snapshot().migrations.find((m) => m.id === id)).toMatchObject({ tls: true, link: null });
    // The lab CA lives in the state dir the service was given, not in the user's.
    expect(existsSync(join(work, 'state', 'lab-ca'))).toBe(true);
    expect(eventsOf(id).some((e) => e.type === 'link')).toBe(false);
    const guest = await expectOneCopyOn(lab, GUEST, to);
    // The QEMU that runs the guest now took it in over TLS: its tls-creds are the lab's.
    expect((await queryMigrateParameters(guest.qmp))['tls-creds']).toBeTruthy();
    for (const h of ['host-a', 'host-b']) expect(existsSync(join(work, 'run', h, '.qemu-tls'))).toBe(true);

    // A migration without link emulation has no cable to pull: the orchestrator's words.
    const r = await refusal({ type: 'linkControl', id, action: 'cut' });
    expect(r).toMatchObject({ code: 'failed', message: expect.stringContaining('no emulated link') });
  });
});

describe('what the API refuses', () => {
  it('turns a spectator\'s linkControl away, and lets the teacher\'s through', async () => {
    const server = await WebServer.start(service, { port: 0, uiDir: null });
    const ask = (token: string, command: unknown) =>
      new Promise<ServerMessage>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${server.address.port}/api?token=${token}`);
        ws.on('error', reject);
        ws.on('open', () => ws.send(JSON.stringify({ id: 1, command })));
        ws.on('message', (data) => {
          const m = JSON.parse(String(data)) as ServerMessage;
          if ('id' in m && m.id === 1) {
            ws.close();
            resolve(m);
          }
        });
      });
    try {
      const command = { type: 'linkControl', id: 'no-such-migration', action: 'cut' };
      expect(await ask(server.tokens.spectator, command)).toMatchObject({ ok: false, error: { code: 'forbidden' } });
      // The teacher's gets as far as the service, which knows no such migration.
      expect(await ask(server.tokens.teacher, command)).toMatchObject({ ok: false, error: { code: 'not-found', message: expect.stringContaining('no-such-migration') } });
    } finally {
      await server.close();
    }
  });

  it('refuses bad link options, naming the field, before anything starts', async () => {
    const before = service.snapshot().migrations.length;
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ bandwidthMBps: 0 }, 'options.link.bandwidthMBps'],
      [{ bandwidthMBps: 20_000 }, 'options.link.bandwidthMBps'],
      [{ latencyMs: -1 }, 'options.link.latencyMs'],
      [{ latencyMs: 6000 }, 'options.link.latencyMs'],
      [{ lossPercent: 51 }, 'options.link.lossPercent'],
      [{ lossPercent: '1' }, 'options.link.lossPercent'],
      [{ jitterMs: 3 }, 'jitterMs'],
    ];
    for (const [link, field] of bad) {
      const r = await refusal({ type: 'migrate', guest: GUEST, to: 'host-b', options: { link } });
      expect(r.code, JSON.stringify(link)).toBe('invalid');
      expect(r.message, JSON.stringify(link)).toContain(field);
    }
    expect((await refusal({ type: 'migrate', guest: GUEST, to: 'host-b', options: { tls: 'yes' } })).message).toContain('options.tls');
    expect(service.snapshot().migrations).toHaveLength(before);

    expect(await refusal({ type: 'linkControl', id: 'x', action: 'set' })).toMatchObject({ code: 'invalid', message: expect.stringContaining('profile') });
    expect(await refusal({ type: 'linkControl', id: 'x', action: 'cut', profile: { latencyMs: 1 } })).toMatchObject({ code: 'invalid', message: expect.stringContaining('only "set" takes a profile') });
    expect(await refusal({ type: 'linkControl', id: 'x', action: 'set', profile: { lossPercent: 80 } })).toMatchObject({ code: 'invalid', message: expect.stringContaining('profile.lossPercent') });
    expect(await refusal({ type: 'linkControl', id: 'x', action: 'unplug' })).toMatchObject({ code: 'invalid', message: expect.stringContaining('action') });
    expect(await refusal({ type: 'linkControl', id: 'x', action: 'cut' })).toMatchObject({ code: 'not-found' });
  });
});
