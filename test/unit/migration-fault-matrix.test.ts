// Every fault at every phase of a migration, in the fake QEMU world (test/helpers/fake-qemu-world.ts):
// the split-brain detector watches every runstate change, so one instant with two running copies
// fails the case, and so does a guest left running nowhere, or a result that says otherwise.
// Faults are injected at named points (the job's phase events, the world's held points), never
// after sleeps. The expectations are the protocol's (issue 13), not any one job's behaviour.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationJournal } from '../../electron/engine/migration/journal';
import { migrateGuest, type MigrationRequest } from '../../electron/engine/migration/orchestrator';
import { recoverInterruptedMigrations } from '../../electron/engine/migration/recovery';
import type { MigrationEvent, MigrationOptions, MigrationResult } from '../../electron/engine/migration/types';
import { FakeHost, FaultyJournal, type FakeGuest, type FakeHostOptions } from '../helpers/fake-host';
import { FakeQemuWorld, SplitBrainDetector, type FakeQemu, type Hold } from '../helpers/fake-qemu-world';
import type { RecoveryReport } from '../../electron/engine/migration/recovery-report';

const PHASES = ['preflight', 'prepare', 'configure', 'listen', 'migrate', 'monitor', 'switchover', 'pre-switchover', 'confirm', 'cleanup'] as const;
type Phase = (typeof PHASES)[number];

const FAULTS = [
  'destination QEMU dies',
  'source QEMU dies',
  'source QMP socket drops',
  'destination QMP socket drops',
  'source agent away 0.5 s',
  'source agent away past the wait',
  'destination agent away 0.5 s',
  'destination agent away past the wait',
  'journal write fails',
  'cancel arrives',
  'engine dies',
] as const;
type Fault = (typeof FAULTS)[number];

/** "Away past the wait" stands for 30 s: longer than the host waits for its agent and the job asks. */
const SHORT_RECONNECT_WAIT_MS = 300;
const ASK_TIMEOUT_MS = 300;
const SHORT_AWAY_MS = 500;
/** A job that has given no result by then is a failed case (today's job waits 15 s for RESUME in places). */
const RESULT_DEADLINE_MS = 40_000;

/** The phases in which the source still holds the guest's only whole state: nothing has reached a destination. */
const BEFORE_FINAL_FLUSH: Phase[] = ['preflight', 'prepare', 'configure', 'listen', 'migrate', 'monitor', 'switchover', 'pre-switchover'];

/**
 * Cases no protocol can win: the fault itself destroys the guest's only state. The source QEMU
 * dies before its final flush reached a destination; or the destination dies once it has run the
 * guest and the paused source was quit (keepSourceMs 0: the source's state is from the past).
 * What MigLab reports instead is in `reports`; the matrix checks it.
 */
export const IMPOSSIBLE_BY_CONSTRUCTION: ReadonlyArray<{ name: string; dead: 'source' | 'destination'; reports: string }> = [
  ...BEFORE_FINAL_FLUSH.map((phase) => ({
    name: `source QEMU dies at ${phase}`,
    dead: 'source' as const,
    reports: "status 'failed', runningOn null, a reason naming the dead source QEMU",
  })),
  {
    name: 'destination QEMU dies at cleanup',
    dead: 'destination',
    reports:
      "status 'failed' or 'needs-attention' (never 'completed'), runningOn null, a reason naming the dead destination QEMU; " +
      "the paused source holds the guest as it was at the switchover, and `miglab recover --resume-source` takes it back there",
  },
];

const caseName = (phase: Phase, fault: Fault) => `${fault} at ${phase}`;
const impossibleCase = (phase: Phase, fault: Fault) => IMPOSSIBLE_BY_CONSTRUCTION.find((c) => c.name === caseName(phase, fault)) ?? null;

interface CaseOutcome {
  name: string;
  impossible: boolean;
  /** Every broken rule, in words; empty: the case passed. */
  problems: string[];
  splitBrainInstants: number;
  oneCopyAtEnd: boolean;
  summary: string;
}

/** The options the protocol's job takes (keepSourceMs, askTimeoutMs), whatever today's types say. */
type ProtocolRequest = MigrationRequest & { askTimeoutMs?: number; options?: Partial<MigrationOptions> & { keepSourceMs?: number | null } };
type ProtocolResult = MigrationResult & { runningOn: string | null; attention?: { reason: string; pausedOn: string | null; unknown: string[]; settle: string } | null };

function sideOf(fault: Fault): 'source' | 'destination' | null {
  if (fault.startsWith('source')) return 'source';
  if (fault.startsWith('destination')) return 'destination';
  return null;
}

/** The hosts of a case: the side whose agent goes away is the remote one. */
function layout(fault: Fault): { from: FakeHostOptions; to: FakeHostOptions } {
  const srcRemote = fault.startsWith('source agent');
  const wait = fault.endsWith('past the wait') ? SHORT_RECONNECT_WAIT_MS : undefined;
  return {
    from: { name: 'alpha', kind: srcRemote ? 'remote' : 'local', address: '10.9.0.1', reconnectWaitMs: srcRemote ? wait : undefined },
    to: { name: 'beta', kind: srcRemote ? 'local' : 'remote', address: '10.9.0.2', reconnectWaitMs: srcRemote ? undefined : wait },
  };
}

function withDeadline<T>(p: Promise<T>, ms: number): Promise<T | 'deadline'> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<'deadline'>((r) => (timer = setTimeout(() => r('deadline'), ms)))]).finally(() => clearTimeout(timer));
}

async function runCase(phase: Phase, fault: Fault): Promise<CaseOutcome> {
  const name = caseName(phase, fault);
  const impossibleAs = impossibleCase(phase, fault);
  const impossible = impossibleAs !== null;
  const problems: string[] = [];
  const world = new FakeQemuWorld();
  const dir = await mkdtemp(join(tmpdir(), 'miglab-matrix-'));
  const hosts = layout(fault);
  const from = new FakeHost(world, hosts.from);
  const to = new FakeHost(world, hosts.to);
  const journal = new FaultyJournal(dir);
  const engines: FakeHost[] = [from, to];
  const detector = new SplitBrainDetector(world, 'vm1');
  let summary = '';
  try {
    const guest = (await from.startGuest({ name: 'vm1' })) as FakeGuest;
    const source = guest.qemu;
    const destination = (): FakeQemu | undefined => world.qemus.find((q) => q.host === 'beta' && q.guest === 'vm1');
    let injected = false;
    /** For the impossible cases: whether the world agrees the fault destroyed the only state. */
    let onlyStateDestroyed = false;
    const side = sideOf(fault);
    const phasesSeen = new Set<string>();
    const phaseWaiters = new Map<string, () => void>();
    let job: ReturnType<typeof migrateGuest>['job'] | null = null;

    const inject = () => {
      if (injected) return;
      injected = true;
      const dst = destination();
      switch (fault) {
        case 'destination QEMU dies':
          // It ran the guest: the paused source's state is from the past.
          onlyStateDestroyed = !!dst && world.log.some((c) => c.qemu === dst && c.to === 'running');
          return dst!.die({ signal: 'SIGKILL' });
        case 'source QEMU dies':
          onlyStateDestroyed = !dst?.incoming.loaded;
          return source.die({ signal: 'SIGKILL' });
        case 'source QMP socket drops':
          return source.dropQmp();
        case 'destination QMP socket drops':
          return dst!.dropQmp();
        case 'source agent away 0.5 s':
          return from.agentAway(SHORT_AWAY_MS);
        case 'destination agent away 0.5 s':
          return to.agentAway(SHORT_AWAY_MS);
        case 'source agent away past the wait':
          return from.agentAway(Infinity);
        case 'destination agent away past the wait':
          return to.agentAway(Infinity);
        case 'journal write fails':
          return journal.failNext();
        case 'cancel arrives':
          job!.cancel('Cancelled by the fault matrix');
          return;
        case 'engine dies':
          from.die();
          to.die();
          journal.die();
          return;
      }
    };
    /** With pause-before-switchover the user presses Continue once the fault is in. */
    const continueAfterFault = () => {
      if (phase !== 'pre-switchover' || fault === 'cancel arrives' || fault === 'engine dies') return;
      const j = job as unknown as { continueSwitchover?: () => unknown };
      if (typeof j.continueSwitchover !== 'function') {
        problems.push('the job has no continueSwitchover(): a migration paused in pre-switchover cannot go on');
        return;
      }
      void Promise.resolve(j.continueSwitchover.call(job)).catch(() => {});
    };

    // A destination-side QEMU fault at a phase before the destination exists fires as it starts.
    const needsDestination = side === 'destination' && !fault.includes('agent') && (phase === 'preflight' || phase === 'prepare');
    if (needsDestination) to.on('guest-started', () => inject());

    const onEvent = (ev: MigrationEvent) => {
      if (ev.type !== 'phase') return;
      phasesSeen.add(ev.phase);
      phaseWaiters.get(ev.phase)?.();
      if (needsDestination) return;
      if (ev.phase === phase && ['preflight', 'prepare', 'configure', 'listen', 'migrate', 'confirm', 'cleanup'].includes(phase)) inject();
    };
    const phaseSeen = (p: string) => (phasesSeen.has(p) ? Promise.resolve() : new Promise<void>((r) => phaseWaiters.set(p, r)));

    // Phases the job spends waiting on QEMU: the world holds there until the fault is in.
    let hold: Hold | null = null;
    if (phase === 'monitor') hold = world.hold('pass', { guest: 'vm1', pass: 1 });
    if (phase === 'switchover') hold = world.hold('device', { guest: 'vm1' });
    if (phase === 'pre-switchover') hold = world.hold('pre-switchover', { guest: 'vm1' });
    let resultDone = false;

    const request: ProtocolRequest = {
      guest, from, to, journal, askTimeoutMs: ASK_TIMEOUT_MS,
      options: { keepSourceMs: 0, acceptWarnings: true, ...(phase === 'pre-switchover' ? { capabilities: { 'pause-before-switchover': true } } : {}) },
    };
    const started = migrateGuest(request, onEvent);
    job = started.job;
    const resultPromise = started.result as Promise<ProtocolResult>;
    resultPromise.then(() => (resultDone = true), () => (resultDone = true));
    if (hold) {
      const h = hold;
      const jobPhase = phase === 'monitor' ? 'monitor' : 'switchover';
      void Promise.all([h.reached, phaseSeen(jobPhase)]).then(() => {
        if (resultDone) return;
        inject();
        continueAfterFault();
        h.release();
      });
    }

    let result: ProtocolResult | null = null;
    if (fault === 'engine dies') {
      // The old engine answers nothing from now on; wait for it to die, then let QEMU go on alone.
      const deadline = performance.now() + RESULT_DEADLINE_MS;
      while (!injected && !resultDone && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      if (resultDone) result = await resultPromise;
    } else {
      const got = await withDeadline(resultPromise, RESULT_DEADLINE_MS);
      if (got === 'deadline') problems.push(`the job gave no result within ${RESULT_DEADLINE_MS / 1000} s`);
      else result = got;
    }
    if (!injected) problems.push(`the fault was never injected: the job ended before ${phase} (${result ? `${result.status}: ${result.reason}` : 'no result'})`);

    // The result tells the truth about the world at the moment it came.
    if (result) {
      const running = detector.runningHosts();
      summary = `${result.status} runningOn=${result.runningOn} (QEMU runs it on: ${running.join(', ') || 'nothing'}): ${result.reason ?? ''}${result.attention ? ` [attention: ${result.attention.reason}; settle: ${result.attention.settle}]` : ''}`;
      const attentionOk = result.status === 'needs-attention' && !!result.attention?.settle;
      if (impossibleAs && injected) {
        const dead = impossibleAs.dead;
        const deadHost = dead === 'source' ? 'alpha' : 'beta';
        if (!onlyStateDestroyed) problems.push(`the fake world did not destroy the guest's only state when the ${dead} died: not the impossible case`);
        if (dead === 'source' ? result.status !== 'failed' : result.status === 'completed') problems.push(`status is ${result.status}; MigLab should report ${impossibleAs.reports}`);
        if (result.runningOn !== null) problems.push(`runningOn says ${result.runningOn}, but the guest's only state died with the ${dead}`);
        if (!new RegExp(`${dead}|${deadHost}`, 'i').test(result.reason ?? '')) problems.push(`the reason does not name the dead ${dead}: ${result.reason}`);
        if (running.length) problems.push(`a copy runs on ${running.join(', ')} after the ${dead} died with the guest's only state`);
      } else if (result.runningOn === null) {
        // null is the truth only when nothing runs, or the job says it could not tell (needs-attention).
        if (!attentionOk) problems.push(`runningOn is null with status ${result.status}${result.status === 'needs-attention' ? ' and no attention.settle command' : ''}, while QEMU runs it on ${running.join(', ') || 'nothing'}`);
      } else if (running.length === 1) {
        if (result.runningOn !== running[0]) problems.push(`runningOn says ${result.runningOn}, but QEMU runs the guest on ${running[0]}`);
      } else {
        problems.push(`runningOn says ${result.runningOn}, but QEMU runs the guest on ${running.join(' and ') || 'nothing'}`);
      }
    }

    // Let the world settle: agents back, held points released, recovery where the protocol calls for it.
    from.agentBack();
    to.agentBack();
    world.releaseAll();
    if (phase === 'pre-switchover' && injected && result === null && fault !== 'engine dies') continueAfterFault();
    const recover = fault === 'engine dies' || fault.endsWith('past the wait') || result?.status === 'needs-attention';
    let reports: RecoveryReport[] = [];
    if (recover) {
      if (fault !== 'engine dies') {
        from.die(); // the settle command runs as a new engine
        to.die();
      }
      const fresh = [await FakeHost.reattach(world, hosts.from), await FakeHost.reattach(world, hosts.to)];
      engines.push(...fresh);
      // A guest whose newest state died with its destination goes back to its paused source only
      // by a person's choice: the settle command the result names (--resume-source).
      const resumeSource = impossibleAs?.dead === 'destination' ? ['vm1'] : [];
      reports = await recoverInterruptedMigrations(fresh, new MigrationJournal(dir), { waitActiveMs: 2000, resumeSource });
      summary += `; recovery: ${reports.map((r) => `${r.outcome} runningOn=${r.runningOn} (${[...r.why, ...r.actions].join('; ')}${r.attention ? `; attention: ${r.attention.reason}` : ''})`).join(', ') || 'nothing to recover'}`;
    }
    if (!(await world.settle(3000))) problems.push('the world still migrates 3 s after the case ended');
    await new Promise((r) => setTimeout(r, 20)); // quits already sent complete

    const running = detector.runningHosts();
    if (impossibleAs?.dead === 'destination' && injected) {
      if (running.join() !== 'alpha') problems.push(`after --resume-source the guest should run on its source alpha, but runs on ${running.join(', ') || 'nothing'}`);
    } else if (impossible && injected) {
      if (running.length) problems.push(`after settling a copy runs on ${running.join(', ')}, though its state died with the source`);
    } else if (running.length !== 1) {
      problems.push(running.length === 0 ? 'copy lost: no copy runs after settling' : `${running.length} copies run after settling: ${running.join(', ')}`);
    } else if (fault === 'engine dies' && reports.length && reports[0]!.runningOn !== running[0]) {
      problems.push(`recovery says runningOn ${reports[0]!.runningOn}, but QEMU runs the guest on ${running[0]}`);
    }
    if (detector.instants.length) {
      const first = detector.instants[0]!;
      problems.push(`${detector.instants.length} split-brain instant(s); first at ${first.atMs.toFixed(0)} ms: ${first.running.join(' and ')}`);
    }
    return { name, impossible, problems, splitBrainInstants: detector.instants.length, oneCopyAtEnd: running.length === 1, summary };
  } catch (err) {
    problems.push(`the case itself broke: ${(err as Error).stack ?? err}`);
    return { name, impossible, problems, splitBrainInstants: detector.instants.length, oneCopyAtEnd: false, summary };
  } finally {
    detector.stop();
    for (const h of engines) h.die();
    await Promise.all(engines.map((h) => h.dispose()));
    await world.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** MATRIX_ONLY=<text> runs the cases whose name contains it (to look at one case closely). */
const CASES = PHASES.flatMap((phase) => FAULTS.map((fault) => ({ phase, fault, name: caseName(phase, fault) }))).filter(
  (c) => !process.env.MATRIX_ONLY || c.name.includes(process.env.MATRIX_ONLY),
);
const outcomes = new Map<string, CaseOutcome>();

describe('the migration fault matrix', () => {
  beforeAll(async () => {
    // Cases run side by side: each has its own world, hosts, journal and sockets.
    const all = await Promise.all(CASES.map((c) => runCase(c.phase, c.fault)));
    for (const o of all) outcomes.set(o.name, o);
  }, 120_000);

  afterAll(() => {
    const all = [...outcomes.values()];
    const impossible = all.filter((o) => o.impossible && o.problems.length === 0).length;
    const oneCopy = all.filter((o) => !o.impossible && o.problems.length === 0).length;
    const split = all.reduce((n, o) => n + o.splitBrainInstants, 0);
    console.log(`fault matrix: ${all.length} cases, ${oneCopy} one copy, ${impossible} impossible by construction, ${split} split-brain instants`);
  });

  it('without a fault the guest moves: completed, one copy, on the destination', async () => {
    const world = new FakeQemuWorld();
    const dir = await mkdtemp(join(tmpdir(), 'miglab-matrix-'));
    const from = new FakeHost(world, layout('cancel arrives').from);
    const to = new FakeHost(world, layout('cancel arrives').to);
    const detector = new SplitBrainDetector(world, 'vm1');
    try {
      const guest = await from.startGuest({ name: 'vm1' });
      const request: ProtocolRequest = { guest, from, to, journal: new MigrationJournal(dir), options: { keepSourceMs: 0, acceptWarnings: true } };
      const result = (await migrateGuest(request).result) as ProtocolResult;
      expect(result.status, result.reason ?? '').toBe('completed');
      expect(result.runningOn).toBe('beta');
      await world.settle();
      expect(detector.runningHosts()).toEqual(['beta']);
      expect(detector.instants).toEqual([]);
    } finally {
      detector.stop();
      await from.dispose();
      await to.dispose();
      await world.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('names its impossible cases, each a fault that destroys the only state of the guest', () => {
    expect(IMPOSSIBLE_BY_CONSTRUCTION.map((c) => c.name)).toEqual([...BEFORE_FINAL_FLUSH.map((p) => `source QEMU dies at ${p}`), 'destination QEMU dies at cleanup']);
  });

  it.each(CASES)('$name', ({ name }) => {
    const o = outcomes.get(name)!;
    expect(o.problems.join('\n'), `${name}: ${o.summary}`).toBe('');
  });
});
