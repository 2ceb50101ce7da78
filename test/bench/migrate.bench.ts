// npm run bench:migrate: MigLab's live migration against a raw-QMP floor (raw-qmp-migrate.ts),
// in the same run, alternating, for an idle lab guest and one dirtying memory. Each run boots a
// fresh guest on host-a (not measured), then migrates it once, MigLab's way (migrateGuest to
// host-b) or the raw way (a destination QEMU the raw script spawns itself), and tears down.
// Prints a table per scenario and writes test-artifacts/bench/migrate.json. A benchmark, not a test.
// --smoke: one run each way per scenario (see smoke.ts); a run that did not complete fails it.
import { readFile, mkdir, writeFile } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { LabloadChannel } from '../../electron/engine/guest/labload-channel';
import type { Guest, Host } from '../../electron/engine/hosts/host';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { migrateGuest } from '../../electron/engine/migration/orchestrator';
import { DEFAULT_MIGRATION_OPTIONS, type MigrationPhase } from '../../electron/engine/migration/types';
import { chooseAccelerator, findQemu } from '../../electron/engine/qemu/binary';
import type { QmpClient } from '../../electron/engine/qmp';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { qemuPids } from '../helpers/leaks';
import { RawMigrateError, killAllRaw, labDestination, rawQmpMigrate, type RawDestination, type RawSteps } from './raw-qmp-migrate';
import { failSmokeOn, resultFile, setting, smokeBanner } from './smoke';
import { runBenchmark, teardownOnStop } from './stop-signals';

const RUNS = setting('BENCH_RUNS', 5, 1, { whole: true });
const GUEST = 'bench';
const MEMORY_MIB = 256;
/** The same options both ways: MigLab's default bandwidth, a 300 ms downtime limit. */
const BANDWIDTH_MBPS = DEFAULT_MIGRATION_OPTIONS.bandwidthMBps;
const DOWNTIME_LIMIT_MS = 300;
const TARGET = { wallRatio: 1.05, outsideMs: 100, samplingPct: 2 };

interface Scenario {
  key: 'idle' | 'dirty';
  title: string;
  load: { workingSetMiB: number; rateMBps: number } | null;
}

const SCENARIOS: Scenario[] = [
  { key: 'idle', title: `idle lab guest, ${MEMORY_MIB} MiB`, load: null },
  { key: 'dirty', title: `lab guest dirtying 64 MiB at 100 MB/s, ${MEMORY_MIB} MiB`, load: { workingSetMiB: 64, rateMBps: 100 } },
];

type Method = 'miglab' | 'raw';

interface Run {
  scenario: Scenario['key'];
  method: Method;
  run: number;
  status: string;
  error: string | null;
  /** MigLab: the result's failure category, where the orchestrator gives one. */
  failure: string | null;
  /**
   * MigLab: job start to the guest confirmed on the destination (running there, heartbeats
   * resumed): the result's resumedAtMs when the orchestrator reports it, else the start of
   * 'cleanup'. Raw: destination spawned to query-status "running".
   */
  wallMs: number | null;
  /** MigLab: job start to the start of 'cleanup' (after any post-switchover watch of the destination). */
  cleanupStartMs: number | null;
  /** MigLab: from the guest confirmed on the destination to cleanup (the orchestrator's watch, if any). */
  confirmWatchMs: number | null;
  /** MigLab: from QEMU's RESUME on the destination to the guest's first heartbeat there. */
  heartbeatConfirmMs?: number | null;
  /** MigLab only: the whole job, cleanup (source quit) included. */
  jobWallMs: number | null;
  totalTimeMs: number | null;
  downtimeMs: number | null;
  setupTimeMs: number | null;
  /** wallMs - totalTimeMs: what is spent outside QEMU's own migration. */
  outsideMs: number | null;
  /** MigLab only: heartbeat gap as the host saw it. */
  guestDowntimeMs: number | null;
  passes: number | null;
  samplingMs: number | null;
  samplingCount: number | null;
  /** samplingMs as a % of QEMU's total-time (the time sampling runs in). */
  samplingPct: number | null;
  /** MigLab: duration of each phase. */
  phasesMs: Partial<Record<MigrationPhase, number>> | null;
  /** MigLab: when each phase started, on the job's clock (0 = the job was made). */
  phaseStartMs: Partial<Record<MigrationPhase, number>> | null;
  /** Raw: ms since spawn at which each step ended. */
  steps: Partial<RawSteps> | null;
  /**
   * After a completed migration: heartbeats arrive from the destination during the second after
   * it, and its QEMU still runs at the end of it (a guest that panics makes QEMU exit: -no-reboot).
   */
  guestAliveAfter: boolean | null;
  /** The destination's console tail when the guest died there. */
  deathNote: string | null;
  /** MigLab: every query-migrate round trip on the source (sampling, passes, final figures). */
  queries: { count: number; totalMs: number; maxMs: number; inSwitchoverMs: number } | null;
  /** MigLab, job clock: QEMU's MIGRATION completed event, and the destination's first heartbeat. */
  completedEventAtMs: number | null;
  firstDstBeatAtMs: number | null;
}

/** The median (the mean of the two middle values for an even count). */
function median(xs: Array<number | null | undefined>): number {
  const v = xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const mid = v.length / 2;
  return v.length % 2 ? v[Math.floor(mid)]! : (v[mid - 1]! + v[mid]!) / 2;
}

const fmt = (n: number | null | undefined, d = 1) => (typeof n === 'number' && Number.isFinite(n) ? n.toFixed(d) : '-');
const round1 = (n: number) => Math.round(n * 10) / 10;

function emptyRun(scenario: Scenario['key'], method: Method, run: number): Run {
  return {
    scenario, method, run, status: 'error', error: null, failure: null, wallMs: null, cleanupStartMs: null, confirmWatchMs: null, jobWallMs: null, totalTimeMs: null, downtimeMs: null,
    setupTimeMs: null, outsideMs: null, guestDowntimeMs: null, passes: null, samplingMs: null, samplingCount: null,
    samplingPct: null, phasesMs: null, phaseStartMs: null, steps: null, guestAliveAfter: null, deathNote: null, queries: null,
    completedEventAtMs: null, firstDstBeatAtMs: null,
  };
}

// ---- the lab, and stopping everything whatever happens -------------------------------------------

let lab: Lab | null = null;
let runtimeDir: string | null = null;
const rawDirs = new Set<string>();
const allRawDirs: string[] = [];
let stopping = false;
let tearingDown: Promise<void> | null = null;

function teardown(): Promise<void> {
  tearingDown ??= (async () => {
    stopping = true;
    killAllRaw();
    await lab?.dispose().catch((err: Error) => console.error(`stopping the lab: ${err.message}`));
    for (const d of rawDirs) await removeDir(d);
    if (runtimeDir) await removeDir(runtimeDir);
  })();
  return tearingDown;
}

teardownOnStop('every guest of the benchmark', teardown);

// ---- one run each way ----------------------------------------------------------------------------

/** A fresh lab guest on `host`, ready, with the scenario's load running (not measured). */
async function bootGuest(host: Host, sc: Scenario): Promise<Guest> {
  if (stopping) throw new Error('stopping');
  const guest = await host.startGuest({ name: GUEST, memoryMiB: MEMORY_MIB });
  try {
    await guest.waitReady(60_000);
    if (sc.load) {
      await guest.labload!.startLoad(sc.load, { timeoutMs: 60_000 });
      await delay(500); // let the dirty rate settle
    }
  } catch (err) {
    await guest.stop();
    throw err;
  }
  return guest;
}

const SURVIVAL_MS = 1000;

function connectUnix(path: string): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const s = createConnection(path);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Counts the heartbeats a labload control socket delivers for SURVIVAL_MS (not timed). */
async function heartbeatsOn(controlSocket: string): Promise<number> {
  let sock: Socket;
  try {
    sock = await connectUnix(controlSocket);
  } catch {
    return 0; // QEMU has gone: its sockets went with it
  }
  const ch = new LabloadChannel(sock);
  let n = 0;
  ch.on('heartbeat', () => n++);
  await delay(SURVIVAL_MS);
  ch.close();
  return n;
}

function panicLine(consoleText: string): string | null {
  const lines = consoleText.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  return lines.find((l) => /Kernel panic|BUG:|general protection|Oops/.test(l)) ?? lines.at(-1) ?? null;
}

async function migLabRun(l: Lab, sc: Scenario, run: number): Promise<Run> {
  const from = l.host('host-a');
  const to = l.host('host-b');
  const out = emptyRun(sc.key, 'miglab', run);
  const guest = await bootGuest(from, sc);
  // Times every query-migrate on the source (the job's own clock starts in migrateGuest, below).
  const qmp = guest.qmp as { execute: Guest['qmp']['execute'] };
  const execute = qmp.execute.bind(qmp);
  const calls: Array<{ startMs: number; ms: number }> = [];
  let jobT0 = performance.now();
  qmp.execute = (async (cmd: string, args?: Record<string, unknown>, opts?: { timeoutMs?: number }) => {
    if (cmd !== 'query-migrate') return execute(cmd, args, opts);
    const t = performance.now();
    try {
      return await execute(cmd, args, opts);
    } finally {
      calls.push({ startMs: t - jobT0, ms: performance.now() - t });
    }
  }) as Guest['qmp']['execute'];
  try {
    jobT0 = performance.now();
    const { job, result } = migrateGuest(
      {
        guest, from, to,
        options: { bandwidthMBps: BANDWIDTH_MBPS, downtimeLimitMs: DOWNTIME_LIMIT_MS },
        ...(sc.load ? { workingSetBytes: sc.load.workingSetMiB * 2 ** 20 } : {}),
        maxDurationMs: 120_000,
      },
      (ev) => {
        if (ev.type === 'status' && ev.status === 'completed') out.completedEventAtMs ??= round1(ev.atMs);
        if (ev.type === 'heartbeat-gap') out.firstDstBeatAtMs ??= round1(ev.atMs);
      },
    );
    const r = await result;
    out.status = r.status;
    out.error = r.reason;
    out.failure = (r as { failure?: string | null }).failure ?? null;
    out.jobWallMs = r.wallTimeMs;
    out.totalTimeMs = r.totalTimeMs;
    out.downtimeMs = r.downtimeMs;
    out.setupTimeMs = r.setupTimeMs;
    out.guestDowntimeMs = r.guestDowntimeMs;
    out.passes = r.passes.length;
    out.samplingMs = round1(job.samplingMs);
    out.samplingCount = job.samplingCount;
    out.phasesMs = Object.fromEntries(r.phases.map((p) => [p.name, round1((p.endMs ?? r.wallTimeMs) - p.startMs)]));
    out.phaseStartMs = Object.fromEntries(r.phases.map((p) => [p.name, round1(p.startMs)]));
    const sw = r.phases.find((p) => p.name === 'switchover');
    const inSwitchover = (c: { startMs: number; ms: number }) =>
      !!sw && c.startMs + c.ms > sw.startMs && c.startMs < (sw.endMs ?? Infinity);
    out.queries = {
      count: calls.length,
      totalMs: round1(calls.reduce((a, c) => a + c.ms, 0)),
      maxMs: round1(Math.max(0, ...calls.map((c) => c.ms))),
      inSwitchoverMs: round1(calls.filter(inSwitchover).reduce((a, c) => a + c.ms, 0)),
    };
    const cleanup = r.phases.find((p) => p.name === 'cleanup');
    if (r.status === 'completed' && cleanup) {
      // Newer orchestrators say when the guest was confirmed on the destination and may then
      // watch it for a while (the paused source as the fallback) before cleanup.
      // The comparable end is the one the raw script stops at: QEMU on the destination runs the
      // guest (RESUME). MigLab then also waits for the guest's own first heartbeat (heartbeatConfirmMs).
      const runningAtMs = r.destinationRunningAtMs ?? r.resumedAtMs ?? null;
      out.cleanupStartMs = round1(cleanup.startMs);
      out.wallMs = round1(runningAtMs ?? cleanup.startMs);
      out.heartbeatConfirmMs = r.resumedAtMs !== null && runningAtMs !== null ? round1(r.resumedAtMs - runningAtMs) : null;
      out.confirmWatchMs = round1(cleanup.startMs - (r.resumedAtMs ?? out.wallMs));
      if (r.totalTimeMs !== null) {
        out.outsideMs = round1(out.wallMs - r.totalTimeMs);
        out.samplingPct = Math.round((job.samplingMs / r.totalTimeMs) * 10_000) / 100;
      }
      // confirm saw the first heartbeats; does the guest stay up?
      const moved = job.destination;
      const before = moved?.labload?.heartbeats.count ?? 0;
      await delay(SURVIVAL_MS);
      out.guestAliveAfter = !!moved && !moved.exit && (moved.labload?.heartbeats.count ?? 0) > before;
      if (!out.guestAliveAfter) {
        out.status = 'guest-died';
        out.deathNote = panicLine(moved?.console.text() ?? '');
      }
    } else if (job.destination) {
      out.deathNote = panicLine(job.destination.console.text());
    }
    return out;
  } finally {
    qmp.execute = execute;
    await guest.stop(); // the source (already gone after a completed job)
    await to.guest(GUEST)?.stop();
  }
}

let argvChecked = false;

/**
 * The raw destination must be the destination MigLab would start: the source's own command
 * line with its sockets moved, without -S, with -incoming defer. Checked once per benchmark.
 */
async function checkSameDeviceModel(guest: Guest, srcDir: string, dstDir: string, dstArgv: string[]): Promise<void> {
  if (argvChecked) return;
  const cmdline = (await readFile(`/proc/${guest.pid}/cmdline`, 'utf8')).split('\0').slice(1, -1);
  const expected = [...cmdline.filter((a) => a !== '-S').map((a) => a.replaceAll(srcDir, dstDir)), '-incoming', 'defer'];
  if (JSON.stringify(expected) !== JSON.stringify(dstArgv)) {
    throw new Error(`the raw destination's argv is not the source's:\n  source-derived ${expected.join(' ')}\n  raw            ${dstArgv.join(' ')}`);
  }
  argvChecked = true;
}

async function rawRun(l: Lab, rtDir: string, sc: Scenario, run: number): Promise<Run> {
  const from = l.host('host-a');
  const to = l.host('host-b');
  const out = emptyRun(sc.key, 'raw', run);
  const guest = await bootGuest(from, sc);
  const dir = await makeTempDir('raw');
  rawDirs.add(dir);
  allRawDirs.push(dir);
  let port: number | null = null;
  let dest: RawDestination | null = null;
  try {
    const srcDir = join(rtDir, from.name, GUEST);
    const plan = await labDestination(guest.spec, dir);
    await checkSameDeviceModel(guest, srcDir, dir, plan.argv);
    // QEMU serves one client per QMP socket: MigLab's client lets go of the source's.
    await (guest.qmp as unknown as Pick<QmpClient, 'disconnect'>).disconnect();
    port = await to.allocateMigrationPort();
    let r: Awaited<ReturnType<typeof rawQmpMigrate>>;
    try {
      r = await rawQmpMigrate({
        sourceQmp: join(srcDir, 'qmp.sock'),
        qemuPath: plan.qemuPath,
        destination: { argv: plan.argv, qmpSocket: plan.qmpSocket, cwd: dir },
        port,
        bandwidthMBps: BANDWIDTH_MBPS,
        downtimeLimitMs: DOWNTIME_LIMIT_MS,
      });
    } catch (err) {
      if (!(err instanceof RawMigrateError)) throw err;
      out.error = err.message;
      out.steps = Object.fromEntries(Object.entries(err.steps).map(([k, v]) => [k, round1(v)]));
      out.totalTimeMs = err.totalTimeMs;
      if (err.steps.completed !== undefined) {
        // QEMU completed the migration, then the destination stopped answering or died: as
        // MigLab's confirm would say, the guest did not survive the move.
        out.status = 'guest-died';
        out.deathNote = `after the migration completed, the destination failed: ${err.message}`;
      }
      return out;
    }
    dest = r.destination;
    out.status = r.status;
    out.error = r.error;
    out.steps = Object.fromEntries(Object.entries(r.steps).map(([k, v]) => [k, round1(v)]));
    out.totalTimeMs = r.totalTimeMs;
    out.downtimeMs = r.downtimeMs;
    out.setupTimeMs = r.setupTimeMs;
    if (r.status === 'completed') {
      out.wallMs = round1(r.wallMs);
      if (r.totalTimeMs !== null) out.outsideMs = round1(r.wallMs - r.totalTimeMs);
      // Not timed. Nobody was connected to the destination's console, so a panic there is lost
      // unless it comes after we connect: connect to it first.
      let consoleText = '';
      const con = await connectUnix(join(dir, 'console.sock')).catch(() => null);
      con?.on('data', (d: Buffer) => (consoleText = (consoleText + d.toString('latin1')).slice(-4000)));
      con?.on('error', () => {});
      const beats = await heartbeatsOn(join(dir, 'control.sock'));
      await delay(50);
      con?.destroy();
      out.guestAliveAfter = beats > 0 && r.destination?.exit === null;
      if (!out.guestAliveAfter) {
        out.status = 'guest-died';
        out.deathNote = panicLine(consoleText) ?? (r.destination?.exit ? `QEMU exited (${r.destination.exit.code ?? r.destination.exit.signal})` : 'no heartbeats');
      }
    }
    return out;
  } finally {
    await dest?.stop();
    if (port !== null) to.releaseMigrationPort(port);
    await guest.stop(); // the source: already quit by the raw script when it completed
    await removeDir(dir);
    rawDirs.delete(dir);
  }
}

// ---- summary and table ---------------------------------------------------------------------------

/** MigLab's phases against the raw script's steps that do the same job. */
type StepPart = MigrationPhase | 'before-preflight' | 'confirm-to-resumed' | 'confirm-watch';
const STEP_ROWS: Array<{ label: string; miglab: StepPart[]; raw: [keyof RawSteps | null, keyof RawSteps] | null }> = [
  { label: 'job made -> preflight | -', miglab: ['before-preflight'], raw: null },
  { label: 'preflight | -', miglab: ['preflight'], raw: null },
  { label: 'prepare | spawn + QMP', miglab: ['prepare'], raw: [null, 'dstQmp'] },
  { label: 'configure | configure', miglab: ['configure'], raw: ['dstQmp', 'configured'] },
  { label: 'listen | migrate-incoming', miglab: ['listen'], raw: ['configured', 'listening'] },
  { label: 'migrate | migrate', miglab: ['migrate'], raw: ['listening', 'migrateSent'] },
  { label: 'monitor+switchover | poll to completed', miglab: ['monitor', 'switchover'], raw: ['migrateSent', 'completed'] },
  { label: 'confirm to guest confirmed | until running', miglab: ['confirm-to-resumed'], raw: ['completed', 'running'] },
  { label: 'confirm: watch (not in wall) | -', miglab: ['confirm-watch'], raw: null },
  { label: 'cleanup (not in wall) | -', miglab: ['cleanup'], raw: null },
];

function stepPart(r: Run, p: StepPart): number {
  if (p === 'before-preflight') return r.phaseStartMs?.preflight ?? NaN;
  if (p === 'confirm-watch') return r.confirmWatchMs ?? NaN;
  if (p === 'confirm-to-resumed') return (r.phasesMs?.confirm ?? NaN) - (r.confirmWatchMs ?? NaN);
  return r.phasesMs?.[p] ?? NaN;
}

const verdict = (value: number, ok: boolean): boolean | null => (Number.isFinite(value) ? ok : null);

function summarize(runs: Run[], sc: Scenario) {
  const ok = (m: Method) => runs.filter((r) => r.scenario === sc.key && r.method === m && r.status === 'completed');
  const mig = ok('miglab');
  const raw = ok('raw');
  const pairs = mig
    .map((m) => [m, raw.find((r) => r.run === m.run)] as const)
    .filter((p): p is readonly [Run, Run] => !!p[1] && !!p[0].wallMs && !!p[1].wallMs);
  const migWall = median(mig.map((r) => r.wallMs));
  const rawWall = median(raw.map((r) => r.wallMs));
  const steps = STEP_ROWS.map((row) => ({
    label: row.label,
    miglabMs: median(mig.map((r) => row.miglab.reduce((s, p) => s + stepPart(r, p), 0))),
    rawMs: row.raw
      ? median(raw.map((r) => {
          const [a, b] = row.raw!;
          return (r.steps?.[b] ?? NaN) - (a ? (r.steps?.[a] ?? NaN) : 0);
        }))
      : null,
  }));
  const outcomes = (m: Method) => {
    const all = runs.filter((r) => r.scenario === sc.key && r.method === m);
    return {
      of: all.length,
      guestDied: all.filter(
        (r) =>
          r.status === 'guest-died' ||
          r.failure === 'destination-crashed' ||
          /right after the switchover|heartbeats did not resume|did not resume its heartbeats/.test(r.error ?? ''),
      ).length,
      deathNotes: all.map((r) => r.deathNote).filter((n): n is string => !!n),
    };
  };
  const migOut = outcomes('miglab');
  const rawOut = outcomes('raw');
  const confirmStart = (r: Run) => r.phaseStartMs?.confirm ?? NaN;
  const miglab = {
    completed: mig.length,
    ...migOut,
    wallMs: migWall,
    jobWallMs: median(mig.map((r) => r.jobWallMs)),
    cleanupStartMs: median(mig.map((r) => r.cleanupStartMs)),
    totalTimeMs: median(mig.map((r) => r.totalTimeMs)),
    downtimeMs: median(mig.map((r) => r.downtimeMs)),
    setupTimeMs: median(mig.map((r) => r.setupTimeMs)),
    outsideMs: median(mig.map((r) => r.outsideMs)),
    guestDowntimeMs: median(mig.map((r) => r.guestDowntimeMs)),
    passes: median(mig.map((r) => r.passes)),
    samplingCount: median(mig.map((r) => r.samplingCount)),
    samplingMs: median(mig.map((r) => r.samplingMs)),
    samplingPct: median(mig.map((r) => r.samplingPct)),
    samplingPctMax: Math.max(...mig.map((r) => r.samplingPct ?? NaN)),
    queryMigrateCalls: median(mig.map((r) => r.queries?.count)),
    queryMigrateMaxMs: median(mig.map((r) => r.queries?.maxMs)),
    queryMigrateInSwitchoverMs: median(mig.map((r) => r.queries?.inSwitchoverMs)),
    /** From QEMU's MIGRATION completed event to the confirm phase. */
    completedToConfirmMs: median(mig.map((r) => (r.completedEventAtMs === null ? NaN : confirmStart(r) - r.completedEventAtMs))),
    /** From the start of confirm to the destination's first heartbeat. */
    confirmToFirstBeatMs: median(mig.map((r) => (r.firstDstBeatAtMs === null ? NaN : r.firstDstBeatAtMs - confirmStart(r)))),
  };
  const rawSummary = {
    completed: raw.length,
    ...rawOut,
    wallMs: rawWall,
    totalTimeMs: median(raw.map((r) => r.totalTimeMs)),
    downtimeMs: median(raw.map((r) => r.downtimeMs)),
    setupTimeMs: median(raw.map((r) => r.setupTimeMs)),
    outsideMs: median(raw.map((r) => r.outsideMs)),
  };
  const wallRatio = migWall / rawWall;
  // QEMU's total-time varies a lot from run to run on a shared machine and is the same work both
  // ways: both walls at the median total-time of all runs gives a less noisy estimate of the ratio.
  const pooledTotal = median([...mig, ...raw].map((r) => r.totalTimeMs));
  const wallRatioAtPooledTotal = (pooledTotal + miglab.outsideMs) / (pooledTotal + rawSummary.outsideMs);
  return {
    scenario: sc.key,
    title: sc.title,
    miglab,
    raw: rawSummary,
    wallRatio,
    pairedWallRatioMedian: median(pairs.map(([m, r]) => m.wallMs! / r.wallMs!)),
    pooledTotalTimeMs: pooledTotal,
    wallRatioAtPooledTotal,
    steps,
    targets: {
      // met: null when there is nothing to judge (no completed runs).
      wallRatio: { value: wallRatio, target: `<= ${TARGET.wallRatio}`, met: verdict(wallRatio, wallRatio <= TARGET.wallRatio) },
      outsideMs: { value: miglab.outsideMs, rawFloorMs: rawSummary.outsideMs, target: `<= ${TARGET.outsideMs}`, met: verdict(miglab.outsideMs, miglab.outsideMs <= TARGET.outsideMs) },
      samplingPct: { value: miglab.samplingPct, target: `< ${TARGET.samplingPct}`, met: verdict(miglab.samplingPct, miglab.samplingPct < TARGET.samplingPct) },
    },
  };
}

function printTable(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const r of rows) console.log(`| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`);
}

function printSummary(s: ReturnType<typeof summarize>): void {
  const m = s.miglab;
  const r = s.raw;
  console.log(
    `\n${s.title}: medians of the completed runs (guest alive on the destination): MigLab ${m.completed}/${m.of}, raw ${r.completed}/${r.of}` +
      (m.guestDied || r.guestDied ? `; the guest died on the destination in ${m.guestDied} MigLab and ${r.guestDied} raw runs` : ''),
  );
  printTable([
    ['metric', 'MigLab', 'raw', 'MigLab/raw'],
    ['migration wall ms (to guest running on dest.)', fmt(m.wallMs), fmt(r.wallMs), fmt(s.wallRatio, 2)],
    ['job start -> cleanup start ms (incl. watch)', fmt(m.cleanupStartMs), '-', ''],
    ['job wall ms (incl. source quit)', fmt(m.jobWallMs), '-', ''],
    ['QEMU total-time ms', fmt(m.totalTimeMs), fmt(r.totalTimeMs), fmt(m.totalTimeMs / r.totalTimeMs, 2)],
    ['QEMU setup-time ms', fmt(m.setupTimeMs), fmt(r.setupTimeMs), ''],
    ['QEMU downtime ms', fmt(m.downtimeMs), fmt(r.downtimeMs), ''],
    ['outside total-time ms (wall - total-time)', fmt(m.outsideMs), fmt(r.outsideMs), fmt(m.outsideMs - r.outsideMs, 1) + ' more'],
    ['guest-seen downtime ms (heartbeat gap)', fmt(m.guestDowntimeMs), '-', ''],
    ['pre-copy passes', fmt(m.passes, 0), '-', ''],
    ['sampling: query-migrate calls', fmt(m.samplingCount, 0), '-', ''],
    ['sampling: ms in query-migrate', fmt(m.samplingMs), '-', ''],
    ['sampling cost % of total-time', fmt(m.samplingPct, 2), '-', ''],
    ['all query-migrate: calls', fmt(m.queryMigrateCalls, 0), '-', ''],
    ['all query-migrate: slowest ms', fmt(m.queryMigrateMaxMs), '-', ''],
    ['all query-migrate: ms overlapping switchover', fmt(m.queryMigrateInSwitchoverMs), '-', ''],
    ['MIGRATION completed event -> confirm ms', fmt(m.completedToConfirmMs), '-', ''],
    ['confirm start -> first dest. heartbeat ms', fmt(m.confirmToFirstBeatMs), '-', ''],
  ]);
  console.log('');
  printTable([
    ['MigLab phase | raw step (medians, ms)', 'MigLab', 'raw'],
    ...s.steps.map((st) => [st.label, fmt(st.miglabMs), st.rawMs === null ? '-' : fmt(st.rawMs)]),
  ]);
  const say = (met: boolean | null) => (met === null ? 'not measured (no completed runs to judge)' : met ? 'met' : 'NOT met');
  const t = s.targets;
  console.log(`  wall ratio MigLab/raw ${fmt(s.wallRatio, 2)} (paired median ${fmt(s.pairedWallRatioMedian, 2)}; target <= ${TARGET.wallRatio}): ${say(t.wallRatio.met)}`);
  console.log(
    `    (estimate with both at the median total-time of all runs, ${fmt(s.pooledTotalTimeMs, 0)} ms: ${fmt(s.wallRatioAtPooledTotal, 2)}; ` +
      'total-time is the same work both ways and is the noisiest part)',
  );
  console.log(
    `  MigLab outside total-time ${fmt(m.outsideMs, 0)} ms (target <= ${TARGET.outsideMs} ms; the raw floor's own, starting its destination included: ${fmt(r.outsideMs, 0)} ms): ${say(t.outsideMs.met)}`,
  );
  console.log(`  sampling cost ${fmt(m.samplingPct, 2)} % of total-time (max ${fmt(m.samplingPctMax, 2)} %; target < ${TARGET.samplingPct} %): ${say(t.samplingPct.met)}`);
  for (const note of new Set([...m.deathNotes, ...r.deathNotes])) console.log(`  guest died on the destination: ${note}`);
}

function runLine(r: Run): string {
  const who = r.method === 'miglab' ? 'MigLab' : 'raw   ';
  if (r.status === 'guest-died') {
    return `${r.scenario} run ${r.run} ${who}: migration completed (wall ${fmt(r.wallMs, 0)} ms, total-time ${fmt(r.totalTimeMs, 0)}) but the guest died on the destination: ${r.deathNote ?? ''}`;
  }
  if (r.status !== 'completed') {
    return `${r.scenario} run ${r.run} ${who}: ${r.status}: ${r.error ?? ''}${r.deathNote ? ` Destination console: ${r.deathNote}` : ''}`;
  }
  const extra =
    r.method === 'miglab'
      ? `, job ${fmt(r.jobWallMs, 0)}, passes ${r.passes}, sampling ${fmt(r.samplingPct, 2)} % (${r.samplingCount} calls)`
      : '';
  return `${r.scenario} run ${r.run} ${who}: wall ${fmt(r.wallMs, 0)} ms, total-time ${fmt(r.totalTimeMs, 0)}, downtime ${fmt(r.downtimeMs, 0)}, outside ${fmt(r.outsideMs, 0)}${extra}`;
}

// ---- main ----------------------------------------------------------------------------------------

async function main(): Promise<void> {
  smokeBanner();
  const [qemu, accel] = await Promise.all([findQemu(), chooseAccelerator()]);
  console.log(
    `migration benchmark: QEMU ${qemu.version}, ${accel.accel.toUpperCase()}, ${MEMORY_MIB} MiB, 1 vCPU, ` +
      `${BANDWIDTH_MBPS} MB/s, downtime limit ${DOWNTIME_LIMIT_MS} ms, ${RUNS} MigLab + ${RUNS} raw runs per scenario`,
  );
  runtimeDir = await makeTempDir('bench-mig');
  lab = await defaultLocalLab({ runtimeDir });
  const runs: Run[] = [];
  let probeMs = NaN;
  try {
    // QEMU's capabilities are probed once per process (a QEMU started for it): not per migration.
    const t = performance.now();
    await Promise.all(lab.hosts().map((h) => h.info()));
    probeMs = performance.now() - t;
    console.log(`(host info + QEMU capability probe, once per process, outside the runs: ${fmt(probeMs, 0)} ms)\n`);
    for (const sc of SCENARIOS) {
      for (let i = 1; i <= RUNS; i++) {
        // ABBA order, so drift in the machine's load hits both ways alike.
        const order: Method[] = i % 2 === 1 ? ['miglab', 'raw'] : ['raw', 'miglab'];
        for (const method of order) {
          if (stopping) throw new Error('interrupted');
          let r: Run;
          try {
            r = method === 'miglab' ? await migLabRun(lab, sc, i) : await rawRun(lab, runtimeDir, sc, i);
          } catch (err) {
            if (stopping) throw err;
            r = { ...emptyRun(sc.key, method, i), error: (err as Error).message };
          }
          runs.push(r);
          console.log(runLine(r));
        }
      }
    }
  } finally {
    await teardown();
  }

  const summaries = SCENARIOS.map((sc) => summarize(runs, sc));
  for (const s of summaries) printSummary(s);
  console.log(
    '\nwall: MigLab from job start to QEMU running the guest on the destination (destinationRunningAtMs: RESUME), ' +
      'the same end as the raw script; MigLab then waits for the guest\'s first heartbeat there (row "RESUME -> first heartbeat") and watches it; ' +
      'raw from spawning the destination to query-status "running". Sampling cost: time in query-migrate round trips / QEMU total-time.',
  );

  const left = (await Promise.all([runtimeDir, ...allRawDirs].map((d) => qemuPids(d)))).flat();
  if (left.length) console.log(`WARNING: QEMU processes of this benchmark still run: ${left.join(', ')}`);

  const file = resultFile('migrate');
  await mkdir(dirname(file), { recursive: true });
  await writeFile(
    file,
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        qemu: qemu.version,
        accel: accel.accel,
        memoryMiB: MEMORY_MIB,
        options: { bandwidthMBps: BANDWIDTH_MBPS, downtimeLimitMs: DOWNTIME_LIMIT_MS },
        runsPerMethod: RUNS,
        probeMs: round1(probeMs),
        targets: TARGET,
        summary: summaries,
        runs,
      },
      (_, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : typeof v === 'number' ? Math.round(v * 100) / 100 : v),
      2,
    )}\n`,
  );
  console.log(`written to ${file}`);
  failSmokeOn([
    ...runs.filter((r) => r.status !== 'completed').map((r) => `${r.scenario} run ${r.run} ${r.method}: ${r.status}${r.error ? `: ${r.error}` : ''}${r.deathNote ? ` (${r.deathNote})` : ''}`),
    ...(left.length ? [`QEMU processes left running: ${left.join(', ')}`] : []),
  ]);
}

await runBenchmark(main);
