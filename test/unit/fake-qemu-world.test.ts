// The fake QEMU world behaves as QEMU 10 does where the migration job can tell: runstates,
// migration statuses, events and errors, faults. The fault matrix trusts it because of these.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentRpcError } from '../../electron/engine/hosts/remote/rpc';
import { QmpClient, QmpCommandError, type QmpEvent } from '../../electron/engine/qmp';
import { FakeHost, FaultyJournal, type FakeGuest } from '../helpers/fake-host';
import { FakeQemuWorld, SplitBrainDetector, type FakeQemu } from '../helpers/fake-qemu-world';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function worldWith(opts: { dstPaused?: boolean; srcKind?: 'local' | 'remote'; dstKind?: 'local' | 'remote'; reconnectWaitMs?: number } = {}) {
  const world = new FakeQemuWorld();
  const from = new FakeHost(world, { name: 'alpha', kind: opts.srcKind ?? 'local', address: '10.9.0.1', reconnectWaitMs: opts.reconnectWaitMs });
  const to = new FakeHost(world, { name: 'beta', kind: opts.dstKind ?? 'remote', address: '10.9.0.2', destinationStartsPaused: opts.dstPaused ?? true, reconnectWaitMs: opts.reconnectWaitMs });
  cleanups.push(async () => {
    await from.dispose();
    await to.dispose();
    await world.close();
  });
  const src = (await from.startGuest({ name: 'vm1' })) as FakeGuest;
  return { world, from, to, src };
}

/** Starts a destination listening, and the migration towards it; collects both sides' events. */
async function startMigration(env: Awaited<ReturnType<typeof worldWith>>, caps: Record<string, boolean> = {}) {
  const dst = (await env.to.prepareIncoming(env.src.spec)) as FakeGuest;
  const events: string[] = [];
  const dstEvents: string[] = [];
  const name = (ev: QmpEvent) => (ev.event === 'MIGRATION' ? `MIGRATION:${ev.data.status}` : ev.event === 'MIGRATION_PASS' ? `PASS:${ev.data.pass}` : ev.event);
  env.src.qmp.onEvent('*', (ev) => events.push(name(ev)));
  dst.qmp.onEvent('*', (ev) => dstEvents.push(name(ev)));
  const list = Object.entries({ events: true, ...caps }).map(([capability, state]) => ({ capability, state }));
  await env.src.qmp.execute('migrate-set-capabilities', { capabilities: list });
  await dst.qmp.execute('migrate-set-capabilities', { capabilities: list });
  const port = await env.to.allocateMigrationPort();
  await dst.qmp.execute('migrate-incoming', { uri: `tcp:${env.to.address}:${port}` });
  await env.src.qmp.execute('migrate', { uri: `tcp:${env.to.address}:${port}` });
  return { dst, events, dstEvents };
}

/** Events travel over a real socket: wait (briefly) until the engine's side has them. */
async function until(what: string, ok: () => boolean, timeoutMs = 2000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!ok()) {
    if (performance.now() > end) throw new Error(`Still waiting for ${what} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const status = (g: FakeGuest) => g.qmp.execute<{ status: string; running: boolean }>('query-status');
const migStatus = async (g: FakeGuest) => (await g.qmp.execute<{ status?: string }>('query-migrate')).status;

describe('the fake QEMU world', () => {
  it('migrates as QEMU does: setup, active, passes, STOP, device, completed; the -S destination pauses until cont', async () => {
    const env = await worldWith();
    const held = env.world.hold('destination-loaded');
    const { dst, events, dstEvents } = await startMigration(env);
    expect((await status(dst)).status).toBe('inmigrate');
    await held.reached;
    await until('the destination\'s completed event', () => dstEvents.includes('MIGRATION:completed'));
    await until('the source\'s completed event', () => events.includes('MIGRATION:completed'));
    expect(events).toEqual(['MIGRATION:setup', 'MIGRATION:active', 'PASS:1', 'PASS:2', 'PASS:3', 'STOP', 'MIGRATION:device', 'MIGRATION:completed']);
    expect(dstEvents).toEqual(['MIGRATION:setup', 'MIGRATION:active', 'MIGRATION:completed']);
    expect(await status(env.src)).toEqual({ status: 'postmigrate', running: false });
    expect(await status(dst)).toEqual({ status: 'paused', running: false });
    const info = await env.src.qmp.execute<Record<string, number>>('query-migrate');
    expect(info['total-time']).toBeGreaterThan(0);
    expect(info.downtime).toBeGreaterThan(0);
    expect(info['setup-time']).toBeGreaterThanOrEqual(0);
    held.release();
    await dst.qmp.execute('cont');
    expect(await status(dst)).toEqual({ status: 'running', running: true });
    await until('RESUME from the destination', () => dstEvents.at(-1) === 'RESUME');
  });

  it('cont while inmigrate only sets autostart: the destination starts when the load completes', async () => {
    const env = await worldWith();
    const held = env.world.hold('source-stop');
    const { dst, dstEvents } = await startMigration(env);
    await held.reached;
    await dst.qmp.execute('cont');
    expect((await status(dst)).status).toBe('inmigrate');
    held.release();
    await env.world.settle();
    expect(await status(dst)).toEqual({ status: 'running', running: true });
    await until('RESUME from the destination', () => dstEvents.includes('RESUME'));
  });

  it('refuses cont in finish-migrate and after a panic, as qmp_cont does', async () => {
    const env = await worldWith();
    const held = env.world.hold('device');
    await startMigration(env);
    await held.reached;
    await expect(env.src.qmp.execute('cont')).rejects.toThrow(/Migration is not finalized yet/);
    held.release();
    await env.world.settle();
    const panicked = env.src.qemu;
    // The source is postmigrate now; cont starts it again (what a wrong rollback would do).
    await env.src.qmp.execute('cont');
    expect(panicked.runstate).toBe('running');
    const seen = env.src.qmp.waitForEvent('GUEST_PANICKED', { timeoutMs: 2000 });
    panicked.panic();
    expect((await seen).data).toEqual({ action: 'pause' });
    expect(await status(env.src)).toEqual({ status: 'guest-panicked', running: false });
    await expect(env.src.qmp.execute('cont')).rejects.toThrow(/Resetting the Virtual Machine is required/);
  });

  it.each(['setup', 'active', 'device'] as const)('migrate_cancel in %s: cancelling, cancelled, the source restarted', async (at) => {
    const env = await worldWith();
    const held = env.world.hold(at === 'setup' ? 'migrate-received' : at === 'active' ? 'pass' : 'device');
    const { dst, events } = await startMigration(env);
    await held.reached;
    if (at === 'setup') {
      held.release();
      await until('status setup', () => env.src.qemu.migrationStatus === 'setup');
    }
    await env.src.qmp.execute('migrate_cancel');
    held.release();
    await env.world.settle();
    await until('the cancelled event', () => events.includes('MIGRATION:cancelled'));
    expect(events.filter((e) => e.startsWith('MIGRATION:')).slice(-2)).toEqual(['MIGRATION:cancelling', 'MIGRATION:cancelled']);
    expect(await status(env.src)).toEqual({ status: 'running', running: true });
    if (at === 'setup') {
      // The stream never opened: the destination still waits for one.
      expect(await status(dst)).toEqual({ status: 'inmigrate', running: false });
      return;
    }
    // The stream broke before the destination had the whole state: QEMU exits.
    const exit = await dst.qemu.exited;
    expect(exit).toMatchObject({ code: 1, expected: false });
    expect(exit.stderrTail).toMatch(/load of migration failed/);
    if (at === 'device') {
      await until('RESUME', () => events.at(-1) === 'RESUME');
      expect(events.slice(-3)).toEqual(['MIGRATION:cancelling', 'MIGRATION:cancelled', 'RESUME']);
    }
  });

  it('migrate_cancel after completed is a no-op', async () => {
    const env = await worldWith();
    await startMigration(env);
    await env.world.settle();
    await env.src.qmp.execute('migrate_cancel');
    expect(await migStatus(env.src)).toBe('completed');
    expect((await status(env.src)).status).toBe('postmigrate');
  });

  it('pause-before-switchover waits in pre-switchover for migrate-continue with the right state', async () => {
    const env = await worldWith();
    const held = env.world.hold('pre-switchover');
    const { dst, events } = await startMigration(env, { 'pause-before-switchover': true });
    await held.reached;
    held.release();
    await new Promise((r) => setTimeout(r, 30));
    expect(await migStatus(env.src)).toBe('pre-switchover');
    expect(env.world.quiescent()).toBe(false);
    await expect(env.src.qmp.execute('migrate-continue', { state: 'device' })).rejects.toThrow(/Migration not in expected state: pre-switchover/);
    await env.src.qmp.execute('migrate-continue', { state: 'pre-switchover' });
    await env.world.settle();
    await until('the completed event', () => events.includes('MIGRATION:completed'));
    expect(events).toContain('MIGRATION:pre-switchover');
    expect(await migStatus(env.src)).toBe('completed');
    expect((await status(dst)).status).toBe('paused');
  });

  it('migrate_cancel in pre-switchover restarts the source', async () => {
    const env = await worldWith();
    const held = env.world.hold('pre-switchover');
    const { dst } = await startMigration(env, { 'pause-before-switchover': true });
    await held.reached;
    held.release();
    await env.src.qmp.execute('migrate_cancel');
    await env.world.settle();
    expect(await migStatus(env.src)).toBe('cancelled');
    expect(await status(env.src)).toEqual({ status: 'running', running: true });
    expect(dst.qemu.exit?.code).toBe(1);
  });

  it('a destination that dies mid-stream fails the migration and QEMU restarts the source', async () => {
    const env = await worldWith();
    const held = env.world.hold('device');
    const { dst } = await startMigration(env);
    await held.reached;
    dst.qemu.die({ signal: 'SIGKILL' });
    held.release();
    await env.world.settle();
    const info = await env.src.qmp.execute<{ status: string; 'error-desc': string }>('query-migrate');
    expect(info.status).toBe('failed');
    expect(info['error-desc']).toMatch(/Connection reset by peer/);
    expect(await status(env.src)).toEqual({ status: 'running', running: true });
  });

  it('a source that dies mid-stream makes the destination exit; after completed, the destination keeps its state', async () => {
    const env = await worldWith();
    const held = env.world.hold('pass', { pass: 2 });
    const { dst } = await startMigration(env);
    await held.reached;
    env.src.qemu.die({ signal: 'SIGKILL' });
    held.release();
    expect((await dst.qemu.exited).code).toBe(1);

    const env2 = await worldWith();
    const done = env2.world.hold('source-completed');
    const m2 = await startMigration(env2);
    await done.reached;
    env2.src.qemu.die({ signal: 'SIGSEGV' });
    done.release();
    await env2.world.settle();
    await new Promise((r) => setTimeout(r, 20));
    expect(m2.dst.qemu.exit).toBeNull();
    expect(await status(m2.dst)).toEqual({ status: 'paused', running: false });
  });

  it('a process that dies resolves exited with its signal, and its socket closes', async () => {
    const env = await worldWith();
    const exited = env.src.exited;
    env.src.qemu.die({ signal: 'SIGKILL', stderr: 'killed by the test' });
    expect(await exited).toEqual({ code: null, signal: 'SIGKILL', stderrTail: 'killed by the test', expected: false });
    expect(env.src.exit).not.toBeNull();
    expect(env.from.guest('vm1')).toBeUndefined();
    await expect(status(env.src)).rejects.toThrow();
  });

  it('a dropped QMP socket is a real disconnect; the process lives on and takes a new connection', async () => {
    const env = await worldWith();
    env.src.qemu.dropQmp();
    await new Promise((r) => setTimeout(r, 20));
    await expect(status(env.src)).rejects.toThrow();
    expect(env.src.qemu.runstate).toBe('running');
    const again = new QmpClient();
    await again.connect(env.src.qemu.qmpPath, { timeoutMs: 1000 });
    expect(await again.execute('query-status')).toEqual({ status: 'running', running: true });
    await again.disconnect();
  });

  it('an agent away: calls wait and go on when it is back; events meanwhile are lost', async () => {
    const env = await worldWith({ srcKind: 'remote', dstKind: 'local' });
    const seen: string[] = [];
    env.src.qmp.onEvent('*', (ev) => seen.push(ev.event));
    env.from.agentAway(150);
    const t = performance.now();
    env.src.qemu.panic(); // GUEST_PANICKED and STOP while nobody relays them
    expect(await status(env.src)).toEqual({ status: 'guest-panicked', running: false });
    expect(performance.now() - t).toBeGreaterThanOrEqual(140);
    expect(seen).toEqual([]);
  });

  it('an agent away past reconnectWaitMs: calls throw AgentRpcError disconnected; an exit meanwhile shows when it is back', async () => {
    const env = await worldWith({ srcKind: 'remote', dstKind: 'local', reconnectWaitMs: 100 });
    env.from.agentAway(Infinity);
    const err = await status(env.src).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentRpcError);
    expect((err as AgentRpcError).code).toBe('disconnected');
    expect((err as Error).message).toMatch(/alpha.*unreachable/);
    await expect(env.from.info()).rejects.toThrow(/unreachable/);
    env.src.qemu.die({ code: 1, signal: null });
    await new Promise((r) => setTimeout(r, 20));
    expect(env.src.exit).toBeNull();
    env.from.agentBack();
    expect(env.src.exit).toMatchObject({ code: 1 });
  });

  it('a dead engine: every call hangs; a new engine reattaches to the QEMUs that still run', async () => {
    const env = await worldWith();
    env.from.die();
    const outcome = await Promise.race([status(env.src).then(() => 'answered', () => 'threw'), new Promise((r) => setTimeout(() => r('hangs'), 100))]);
    expect(outcome).toBe('hangs');
    expect(env.src.qemu.runstate).toBe('running');
    const again = await FakeHost.reattach(env.world, env.from.opts);
    cleanups.push(() => again.dispose());
    const g = again.guest('vm1')!;
    expect(await g.qmp.execute('query-status')).toEqual({ status: 'running', running: true });
  });

  it('the split-brain detector sees the instant two copies run (cancel racing a destination that autostarts)', async () => {
    const env = await worldWith({ dstPaused: false });
    const detector = new SplitBrainDetector(env.world, 'vm1');
    const loadedBeforeCancel = env.world.hold('source-completed');
    // With return-path the destination loads first, then the source would complete: cancel between.
    const held = env.world.hold('destination-loaded');
    const { dst } = await startMigration(env, { 'return-path': true });
    await held.reached;
    await env.src.qmp.execute('migrate_cancel');
    held.release();
    await env.world.settle();
    loadedBeforeCancel.release();
    expect(await status(dst)).toEqual({ status: 'running', running: true });
    expect(await status(env.src)).toEqual({ status: 'running', running: true });
    expect(detector.instants.length).toBeGreaterThan(0);
    expect(detector.instants[0]!.running.sort()).toEqual(['vm1@alpha#' + env.src.qemu.id, 'vm1@beta#' + dst.qemu.id].sort());
    detector.stop();
  });

  it('a -S destination under the same race stays paused: no split-brain', async () => {
    const env = await worldWith();
    const detector = new SplitBrainDetector(env.world, 'vm1');
    const held = env.world.hold('destination-loaded');
    const { dst } = await startMigration(env, { 'return-path': true });
    await held.reached;
    await env.src.qmp.execute('migrate_cancel');
    held.release();
    await env.world.settle();
    expect((await status(dst)).status).toBe('paused');
    expect(detector.runningHosts()).toEqual(['alpha']);
    expect(detector.instants).toEqual([]);
  });

  it('answers unknown commands with CommandNotFound and refuses migrate on an incoming QEMU', async () => {
    const env = await worldWith();
    const err = await env.src.qmp.execute('no-such-command').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect((err as QmpCommandError).errorClass).toBe('CommandNotFound');
    const dst = (await env.to.prepareIncoming(env.src.spec)) as FakeGuest;
    await expect(dst.qmp.execute('migrate', { uri: 'tcp:10.9.0.1:1' })).rejects.toThrow(/waiting for an incoming migration/);
    await expect(env.src.qmp.execute('migrate-incoming', { uri: 'tcp:10.9.0.1:1' })).rejects.toThrow(/-incoming/);
  });

  it('a migration towards a port nobody listens on fails with connection refused, the source running on', async () => {
    const env = await worldWith();
    await env.src.qmp.execute('migrate', { uri: 'tcp:10.9.0.2:40000' });
    await env.world.settle();
    const info = await env.src.qmp.execute<{ status: string; 'error-desc': string }>('query-migrate');
    expect(info).toMatchObject({ status: 'failed' });
    expect(info['error-desc']).toMatch(/Connection refused/);
    expect((env.src.qemu as FakeQemu).runstate).toBe('running');
  });

  it('the faulty journal fails exactly the next write, and a dead one never writes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'miglab-fakejournal-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const journal = new FaultyJournal(dir);
    const entry = { id: 'j1', guest: 'vm1', from: 'alpha', to: 'beta', state: 'prepare' as const, port: 1, startedAt: 'a', updatedAt: 'b', result: null };
    journal.failNext();
    await expect(journal.write(entry)).rejects.toThrow(/journal \(state prepare\).*ENOSPC/);
    await journal.write(entry);
    expect((await journal.read('j1'))?.state).toBe('prepare');
    journal.die();
    const w = await Promise.race([journal.write({ ...entry, state: 'listen' }).then(() => 'written'), new Promise((r) => setTimeout(() => r('hangs'), 50))]);
    expect(w).toBe('hangs');
    expect((await journal.read('j1'))?.state).toBe('prepare');
  });
});
