// A LAN host added to a running lab through the API, as the app's "Add LAN host" form does:
// a real `miglab agent` on loopback, its token and pinned fingerprint, refusals that say what is
// wrong, a guest booted there through the service, the lab saved without the token, the host's
// connection dropping and coming back in the snapshots, and the host removed again.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentRef, ApiEvent, HostView, LabSnapshot } from '../../electron/engine/api/contract';
import { ApiError } from '../../electron/engine/api/commands';
import { LabService } from '../../electron/engine/api/service';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { LabFileError, labFromFile, parseLabFile } from '../../electron/engine/lab/lab-file';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { startAgent, stopAgent, type AgentProcess } from '../helpers/agents';
import { expectScopeClean, requireLabGuest } from '../helpers/lab';
import { qemuPids } from '../helpers/leaks';

let work: string;
let agent: AgentProcess;
let lab: Lab;
let service: LabService;
let ref: AgentRef;
const events: ApiEvent[] = [];

const OTHER_FINGERPRINT = 'AB:'.repeat(31) + 'CD';

function launchAgent(listen: string): Promise<AgentProcess> {
  return startAgent({ name: 'lan-agent', listen, dataDir: join(work, 'agent'), extra: ['--ports', '50300-50399'] });
}

/** The ApiError a command is refused with (fails the test if it is not refused). */
async function refusal(command: unknown): Promise<ApiError> {
  const err = await service.execute(command).then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(ApiError);
  return err as ApiError;
}

/** Resolves with the first lab snapshot the service pushes (from now on) that matches. */
function nextSnapshot(match: (s: LabSnapshot) => boolean, timeoutMs: number): Promise<LabSnapshot> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      service.off('event', onEvent);
      reject(new Error(`no matching lab snapshot within ${timeoutMs} ms; last: ${JSON.stringify(service.snapshot().hosts)}`));
    }, timeoutMs);
    const onEvent = (ev: ApiEvent) => {
      if (ev.type !== 'lab' || !match(ev.snapshot)) return;
      clearTimeout(timer);
      service.off('event', onEvent);
      resolve(ev.snapshot);
    };
    service.on('event', onEvent);
  });
}

const hostIn = (s: LabSnapshot, name: string): HostView | undefined => s.hosts.find((h) => h.name === name);

beforeAll(async () => {
  await requireLabGuest();
  work = await makeTempDir('it-lanhost');
  agent = await launchAgent('127.0.0.1:0');
  ref = { url: agent.info.url, token: agent.info.pairingToken!, fingerprint: agent.info.fingerprint };
  lab = await defaultLocalLab({ runtimeDir: join(work, 'run'), network: { subnet: '10.82.0.0/24' } });
  service = new LabService(lab);
  service.on('event', (ev) => events.push(ev));
});

afterAll(async () => {
  service?.close();
  await lab?.dispose();
  if (agent) await stopAgent(agent);
  // The agent detaches from its guests on SIGTERM: a guest the test left would still run.
  expect(await qemuPids(work)).toEqual([]);
  for (const h of ['host-a', 'host-b']) await expectScopeClean(join(work, 'run', h));
  await removeDir(work);
  expect(existsSync(work)).toBe(false);
});

describe('adding a LAN host through the API', () => {
  it('refuses a wrong token, a certificate that is not the pinned one and an unreachable agent; the lab stays as it was', async () => {
    const before = service.snapshot().hosts;
    const badToken = await refusal({ type: 'addHost', name: 'lan-a', agent: { ...ref, token: `mlt_${'w'.repeat(43)}` } });
    expect(badToken.code).toBe('failed');
    expect(badToken.message).toMatch(/refused the token \(401\)/);
    const badPin = await refusal({ type: 'addHost', name: 'lan-a', agent: { ...ref, fingerprint: OTHER_FINGERPRINT } });
    expect(badPin.code).toBe('failed');
    expect(badPin.message).toContain('not the pinned');
    expect(badPin.message).toContain(agent.info.fingerprint); // what it did present
    const nobody = await refusal({ type: 'addHost', name: 'lan-a', agent: { ...ref, url: 'wss://127.0.0.1:1' } });
    expect(nobody.code).toBe('failed');
    expect(nobody.message).toMatch(/Cannot reach the agent at 127\.0\.0\.1:1/);
    expect(service.snapshot().hosts).toEqual(before);
  });

  it('refuses a malformed agent reference before connecting, naming each field', async () => {
    const bad = await refusal({ type: 'addHost', name: 'lan-a', agent: { url: 'http://127.0.0.1:7800', token: 'secret', fingerprint: 'AB:CD' } });
    expect(bad.code).toBe('invalid');
    expect(bad.message).toMatch(/agent\.url: write the agent address as wss:\/\/HOST:PORT/);
    expect(bad.message).toMatch(/agent\.token: the token starts with mlt_/);
    expect(bad.message).toMatch(/agent\.fingerprint: the fingerprint is the SHA-256/);
    expect((await refusal({ type: 'addHost', name: 'lan-a', agent: { url: ref.url, fingerprint: ref.fingerprint } })).code).toBe('invalid');
    expect((await refusal({ type: 'addHost', name: 'lan-a', agent: { ...ref, extra: 1 } })).code).toBe('invalid');
    // a name the lab has already: refused before any connection, as for a local host
    const taken = await refusal({ type: 'addHost', name: 'host-a', agent: ref });
    expect(taken.code).toBe('invalid');
    expect(taken.message).toContain('There is a host "host-a" already');
    expect(service.snapshot().hosts.map((h) => h.name)).toEqual(['host-a', 'host-b']);
  });

  it('adds the host: a remote host with its agent address, connected, pushed to the front ends', async () => {
    const pushed = nextSnapshot((s) => hostIn(s, 'lan-a') !== undefined, 5000);
    const added = (await service.execute({ type: 'addHost', name: 'lan-a', agent: ref })) as HostView;
    expect(added).toEqual({ name: 'lan-a', kind: 'remote', address: '127.0.0.1', guests: [], agentUrl: ref.url, connection: 'connected' });
    expect(hostIn(await pushed, 'lan-a')).toEqual(added);
    const snap = service.snapshot();
    expect(snap.hosts.map((h) => h.name)).toEqual(['host-a', 'host-b', 'lan-a']);
    expect(hostIn(snap, 'host-a')).not.toHaveProperty('agentUrl');
    // no snapshot carries a token
    expect(JSON.stringify(events)).not.toContain(ref.token);
  });

  it('boots a lab guest on the LAN host through the service, on the lab network', async () => {
    const ready = nextSnapshot((s) => hostIn(s, 'lan-a')?.guests.some((g) => g.name === 'lan-g1' && g.state === 'ready') ?? false, 90_000);
    const g = (await service.execute({ type: 'startGuest', host: 'lan-a', guest: { name: 'lan-g1' } })) as { host: string; ip: string; labload: boolean };
    expect(g).toMatchObject({ host: 'lan-a', ip: '10.82.0.10/24', labload: true });
    const snap = await ready;
    const guest = hostIn(snap, 'lan-a')!.guests[0]!;
    expect(guest.switchPort).not.toBeNull();
    expect(snap.network?.ports.map((p) => p.host)).toContain('lan-a');
    // its console came through the agent to the API
    const { text } = (await service.execute({ type: 'consoleHistory', guest: 'lan-g1' })) as { text: string };
    expect(text).toMatch(/guest lan-g1 up at 10\.82\.0\.10/);
  }, 120_000);

  it('saves the lab with the agent address and fingerprint and without the token', async () => {
    const { yaml } = (await service.execute({ type: 'exportLab' })) as { yaml: string };
    expect(yaml).toContain(ref.url);
    expect(yaml).toContain(agent.info.fingerprint);
    expect(yaml).not.toContain(ref.token);
    expect(yaml).not.toContain('mlt_');
    const saved = parseLabFile(yaml);
    expect(saved.hosts).toEqual([{ name: 'host-a' }, { name: 'host-b' }, { name: 'lan-a', agent: { url: ref.url, fingerprint: agent.info.fingerprint } }]);
    expect(saved.network).toEqual({ subnet: '10.82.0.0/24' }); // the switch is on 127.0.0.1: no address to write
    expect(saved.guests).toEqual([{ name: 'lan-g1', host: 'lan-a', memoryMiB: 256, boot: { kind: 'lab' }, start: true }]);
    // opening that file asks for the token back, before it starts or connects anything
    const err = await labFromFile(saved, { runtimeDir: join(work, 'never') }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LabFileError);
    expect((err as LabFileError).problems).toEqual(["host lan-a has no token: add the token its agent printed, or make one with 'miglab agent token new'"]);
    expect(existsSync(join(work, 'never'))).toBe(false);
  });

  it('refuses to remove the LAN host while it runs a guest', async () => {
    const busy = await refusal({ type: 'removeHost', name: 'lan-a' });
    expect(busy.code).toBe('invalid');
    expect(busy.message).toBe('Host lan-a still runs lan-g1: stop or migrate it first');
    expect(hostIn(service.snapshot(), 'lan-a')).toBeDefined();
  });

  it('stops the guest, shows the host reconnecting while its agent restarts, then removes it', async () => {
    const pid = (lab.host('lan-a').guest('lan-g1')!).pid!;
    await service.execute({ type: 'stopGuest', host: 'lan-a', guest: 'lan-g1' });
    expect(hostIn(service.snapshot(), 'lan-a')!.guests).toEqual([]);
    expect(await qemuPids(work)).not.toContain(pid);
    // the agent goes away and comes back on the same address: the snapshots say so
    const down = nextSnapshot((s) => hostIn(s, 'lan-a')?.connection === 'reconnecting', 10_000);
    await stopAgent(agent);
    await down;
    const up = nextSnapshot((s) => hostIn(s, 'lan-a')?.connection === 'connected', 20_000);
    agent = await launchAgent(new URL(ref.url).host);
    expect(agent.info.url).toBe(ref.url);
    expect(agent.info.fingerprint).toBe(ref.fingerprint); // the same identity, from its data dir
    await up;
    await service.execute({ type: 'removeHost', name: 'lan-a' });
    expect(service.snapshot().hosts.map((h) => h.name)).toEqual(['host-a', 'host-b']);
    await expect(service.execute({ type: 'startGuest', host: 'lan-a', guest: { name: 'x' } })).rejects.toMatchObject({ code: 'not-found' });
  }, 60_000);
});
