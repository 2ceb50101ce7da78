// npm run bench:agent: what driving QEMU through `miglab agent` costs, against QEMU spawned here.
// 1. The same migration between two local hosts and between two namespace hosts through their
//    agents (TLS over a veth), interleaved; 2. an agent's own CPU and memory with 0 and 4 guests;
// 3. an agent SIGKILLed under 4 guests and restarted: how soon it reattaches them, the engine is
//    back and heartbeats flow again; 4. faults repeated (destination QEMU killed, link cut): the
//    guest stays, once, on the source, memory intact. A benchmark: it prints, it asserts nothing.
// Needs root (network namespaces). Prints tables and writes test-artifacts/bench/agent.json.
// --smoke: one run of each, 2 idle guests, 1 s samples (see smoke.ts); a migration that did not
// complete, a fault that left other than one intact copy, a restart that did not reattach
// everything, or anything left behind fails it.
import { execFileSync } from 'node:child_process';
import { readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import type { Guest, Host } from '../../electron/engine/hosts/host';
import { listNetnsObjects, netnsRunTag } from '../../electron/engine/network/netns';
import type { RemoteHost } from '../../electron/engine/hosts/remote/remote-host';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { netnsAgentLab, type NetnsAgentLab } from '../../electron/engine/lab/netns-lab';
import { migrateGuest, type MigrationJob } from '../../electron/engine/migration/orchestrator';
import type { MigrationOptions, MigrationResult } from '../../electron/engine/migration/types';
import { chooseAccelerator, findQemu } from '../../electron/engine/qemu/binary';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { agentPids, qemuPids } from '../helpers/leaks';
import { runningCopies } from '../helpers/copies';
import { failSmokeOn, resultFile, setting, SMOKE, smokeBanner } from './smoke';
import { runBenchmark, teardownOnStop } from './stop-signals';

const RUNS = setting('BENCH_AGENT_RUNS', 5, 1, { whole: true }); // migrations each way, per setup
const RESTARTS = setting('BENCH_AGENT_RESTARTS', 5, 1, { whole: true });
const FAULTS = setting('BENCH_AGENT_FAULTS', 10, 1, { whole: true }); // per fault
const GUEST = 'bench';
const MEMORY_MIB = 256;
const PATTERN_MIB = 64;
const IDLE_GUESTS = SMOKE ? 2 : 4;
const IDLE_GUEST_MIB = 128;
const SETTLE_MS = SMOKE ? 500 : 3000;
const SAMPLE_MS = SMOKE ? 1000 : 10_000;
const RSS_EVERY_MS = 250;
const FAULT_AFTER_MS = 800;
/** The same options for both setups: the rest are MigLab's defaults. */
const OPTIONS: Partial<MigrationOptions> = { bandwidthMBps: 1000 };
const TARGET_RATIO = 1.1;
const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

// ---- small helpers ---------------------------------------------------------------------------------

function median(xs: Array<number | null | undefined>): number {
  const v = xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const mid = v.length / 2;
  return v.length % 2 ? v[Math.floor(mid)]! : (v[mid - 1]! + v[mid]!) / 2;
}

/** Nearest-rank percentile. */
function pct(xs: Array<number | null | undefined>, p: number): number {
  const v = xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  return v.length ? v[Math.min(v.length - 1, Math.ceil((p / 100) * v.length) - 1)]! : NaN;
}

const max = (xs: number[]) => (xs.length ? Math.max(...xs) : NaN);
const min = (xs: number[]) => (xs.length ? Math.min(...xs) : NaN);
const fmt = (n: number | null | undefined, d = 0) => (typeof n === 'number' && Number.isFinite(n) ? n.toFixed(d) : '-');

function printTable(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  console.log(line(rows[0]!));
  console.log(`| ${widths.map((w, i) => (i === 0 ? '-'.repeat(w) : `${'-'.repeat(w - 1)}:`)).join(' | ')} |`);
  for (const r of rows.slice(1)) console.log(line(r));
}

/** The host whose copy of `name` is alive (the lab keeps one; a failed job leaves it on the source). */
function whereIs(lab: Lab, name: string): Host | null {
  return lab.hosts().find((h) => {
    const g = h.guest(name);
    return g && !g.exit;
  }) ?? null;
}

function otherHost(lab: Lab, h: Host): Host {
  return lab.hosts().find((x) => x !== h)!;
}

/** A ready lab guest whose memory holds labload's pattern, then idle (as lab/demo.ts does). */
async function bootPatterned(lab: Lab, host: string, name: string, memoryMiB: number, patternMiB: number): Promise<Guest> {
  const g = await lab.startGuest(host, { name, memoryMiB });
  await g.waitReady(120_000);
  if (patternMiB > 0) {
    await g.labload!.startLoad({ workingSetMiB: patternMiB, rateMBps: 1 }, { timeoutMs: 60_000 });
    await g.labload!.stopLoad();
  }
  return g;
}

// ---- /proc ---------------------------------------------------------------------------------------

function procComm(pid: number): string {
  return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
}

function procCmdline(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
}

function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime, all threads
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/**
 * The agent's own node process. `ip netns exec` enters the namespace and execs the command, so the
 * pid we spawned should be node itself; if it is still `ip` (or a wrapper), take its child.
 */
function agentNodePid(spawnedPid: number): { pid: number; how: string } {
  const isAgent = (pid: number) => {
    const argv = procCmdline(pid);
    return argv.some((a) => a.endsWith('miglab.mjs')) && argv.includes('agent');
  };
  if (isAgent(spawnedPid)) {
    let exe = '?';
    try {
      exe = readlinkSync(`/proc/${spawnedPid}/exe`);
    } catch {
      // unreadable: say so below
    }
    const same = exe === realpathSync(process.execPath);
    return { pid: spawnedPid, how: `pid ${spawnedPid} is the spawned pid itself: comm "${procComm(spawnedPid)}", exe ${exe}${same ? ' (this Node)' : ''}; ip netns exec exec'd into node` };
  }
  const children = readFileSync(`/proc/${spawnedPid}/task/${spawnedPid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  const child = children.find(isAgent);
  if (child === undefined) throw new Error(`Cannot find the agent's node process under pid ${spawnedPid} (comm "${procComm(spawnedPid)}")`);
  return { pid: child, how: `pid ${child}, child of the spawned pid ${spawnedPid} ("${procComm(spawnedPid)}"): comm "${procComm(child)}"` };
}

interface IdleSample {
  guests: number;
  rssMin: number;
  rssMedian: number;
  rssMax: number;
  rssSamples: number;
  agentCpuPct: number;
  /** This process (the engine: RemoteHosts, heartbeats, the switch's control side) over the same window. */
  engineCpuPct: number;
  /** Heartbeats the engine received from the host's guests per second in the window. */
  heartbeatsPerS: number;
}

async function sampleAgent(pid: number, guests: Guest[]): Promise<IdleSample> {
  const rss: number[] = [];
  const beats0 = guests.reduce((s, g) => s + (g.labload?.heartbeats.count ?? 0), 0);
  const ticks0 = cpuTicks(pid);
  const engine0 = process.cpuUsage();
  const t0 = performance.now();
  while (performance.now() - t0 < SAMPLE_MS) {
    rss.push(rssMiB(pid));
    await delay(RSS_EVERY_MS);
  }
  const wallS = (performance.now() - t0) / 1000;
  const ticks = cpuTicks(pid) - ticks0;
  const engine = process.cpuUsage(engine0);
  const beats = guests.reduce((s, g) => s + (g.labload?.heartbeats.count ?? 0), 0) - beats0;
  return {
    guests: guests.length,
    rssMin: min(rss), rssMedian: median(rss), rssMax: max(rss), rssSamples: rss.length,
    agentCpuPct: (100 * ticks) / CLK_TCK / wallS,
    engineCpuPct: (100 * (engine.user + engine.system)) / 1e6 / wallS,
    heartbeatsPerS: beats / wallS,
  };
}

// ---- the labs, and stopping everything whatever happens ---------------------------------------------

let workDir: string | null = null;
let local: Lab | null = null;
let agents: NetnsAgentLab | null = null;
let netnsPrefix: string | null = null;
let netnsDir: string | null = null;
let stopping = false;
let tearingDown: Promise<void> | null = null;

function teardown(): Promise<void> {
  tearingDown ??= (async () => {
    stopping = true;
    await local?.dispose().catch((err: Error) => console.error(`stopping the local lab: ${err.message}`));
    await agents?.dispose().catch((err: Error) => console.error(`stopping the namespace lab: ${err.message}`));
    if (workDir) await removeDir(workDir);
  })();
  return tearingDown;
}

teardownOnStop('every guest, agent and namespace of the benchmark', teardown);

function checkStopping(): void {
  if (stopping) throw new Error('interrupted');
}

// ---- 1. the same migration, local and through agents ------------------------------------------------

type Setup = 'local' | 'agents';

interface MigRun {
  setup: Setup;
  run: number;
  from: string;
  to: string;
  status: string;
  failure: string | null;
  reason: string | null;
  /** performance.now() around awaiting migrateGuest's result. */
  wallMs: number;
  /** The result's own wallTimeMs. */
  jobWallMs: number | null;
  /** Job start to the guest's first heartbeat on the destination. */
  resumedAtMs: number | null;
  totalTimeMs: number | null;
  downtimeMs: number | null;
}

async function migrateOnce(lab: Lab, setup: Setup, run: number): Promise<MigRun> {
  let from = whereIs(lab, GUEST);
  if (!from) {
    // The guest was lost (a crash with no copy left): a fresh one, not timed.
    console.log(`  ${setup}: no copy of ${GUEST} left; booting a new one on host-a`);
    await bootPatterned(lab, 'host-a', GUEST, MEMORY_MIB, PATTERN_MIB);
    from = lab.host('host-a');
  }
  const to = otherHost(lab, from);
  const guest = from.guest(GUEST)!;
  const t = performance.now();
  let r: MigrationResult;
  try {
    r = await migrateGuest({ guest, from, to, options: OPTIONS, network: lab.network, maxDurationMs: 120_000 }).result;
  } catch (err) {
    return { setup, run, from: from.name, to: to.name, status: 'error', failure: null, reason: (err as Error).message, wallMs: performance.now() - t, jobWallMs: null, resumedAtMs: null, totalTimeMs: null, downtimeMs: null };
  }
  const wallMs = performance.now() - t;
  return {
    setup, run, from: from.name, to: to.name, status: r.status, failure: r.failure, reason: r.reason,
    wallMs, jobWallMs: r.wallTimeMs, resumedAtMs: r.resumedAtMs, totalTimeMs: r.totalTimeMs, downtimeMs: r.downtimeMs,
  };
}

function migSummary(runs: MigRun[], setup: Setup) {
  const all = runs.filter((r) => r.setup === setup);
  const ok = all.filter((r) => r.status === 'completed');
  const notCompleted = all.filter((r) => r.status !== 'completed');
  return {
    setup,
    attempted: all.length,
    completed: ok.length,
    completedAtoB: ok.filter((r) => r.from === 'host-a').length,
    completedBtoA: ok.filter((r) => r.from === 'host-b').length,
    wallMedian: median(ok.map((r) => r.wallMs)),
    wallP90: pct(ok.map((r) => r.wallMs), 90),
    jobWallMedian: median(ok.map((r) => r.jobWallMs)),
    jobWallP90: pct(ok.map((r) => r.jobWallMs), 90),
    resumedMedian: median(ok.map((r) => r.resumedAtMs)),
    totalTimeMedian: median(ok.map((r) => r.totalTimeMs)),
    downtimeMedian: median(ok.map((r) => r.downtimeMs)),
    notCompleted: notCompleted.map((r) => `${r.from}->${r.to}: ${r.status}${r.failure ? ` (${r.failure})` : ''}: ${r.reason ?? ''}`),
  };
}

// ---- 3. an agent killed and restarted under its guests -------------------------------------------------

interface Restart {
  run: number;
  /** SIGKILL sent to the engine's RemoteHost saying 'reconnecting'. */
  lossSeenMs: number;
  /** restartAgent called to the agent listening (its info printed), with the guests it adopted. */
  listeningMs: number;
  adopted: string[];
  allAdopted: boolean;
  /** restartAgent called to the RemoteHost 'connected' again. */
  connectedMs: number;
  /** restartAgent called to the first heartbeat from each guest (the slowest guest). */
  allBeatingMs: number;
  /** The same, the fastest guest. */
  firstBeatingMs: number;
  note: string | null;
}

async function restartOnce(n: NetnsAgentLab, hostName: string, names: string[], run: number): Promise<Restart> {
  const host = n.lab.host(hostName) as RemoteHost;
  const guests = names.map((nm) => host.guest(nm)!);
  const tKill = performance.now();
  await n.killAgent(hostName, 'SIGKILL');
  // Before timing the restart, the engine must have noticed the loss: whatever was in flight on
  // the old connection has then been read, so any heartbeat after t0 came through the new one.
  while (host.connection === 'connected' && performance.now() - tKill < 10_000) await delay(2);
  const lossSeenMs = performance.now() - tKill;

  let connectedAt: number | null = null;
  const onConnection = (state: string) => {
    if (state === 'connected' && connectedAt === null) connectedAt = performance.now();
  };
  host.on('connection', onConnection);
  const firstBeat = new Map<string, number>();
  const unlisten = guests.map((g) => {
    const onBeat = () => {
      if (!firstBeat.has(g.name)) firstBeat.set(g.name, performance.now());
    };
    g.labload!.on('heartbeat', onBeat);
    return () => g.labload!.off('heartbeat', onBeat);
  });
  let note: string | null = null;
  try {
    const t0 = performance.now();
    const a = await n.restartAgent(hostName);
    const listeningMs = performance.now() - t0;
    // The event gives the exact moment; polling is the fallback should it have been missed.
    while (host.connection !== 'connected' && performance.now() - t0 < 30_000) await delay(5);
    if (host.connection === 'connected') connectedAt ??= performance.now();
    else note = `not connected again within 30 s (${host.connection})`;
    while (firstBeat.size < guests.length && performance.now() - t0 < 30_000) await delay(5);
    if (firstBeat.size < guests.length) note = `${note ? `${note}; ` : ''}heartbeats back from ${firstBeat.size}/${guests.length} guests within 30 s`;
    const beats = [...firstBeat.values()].map((t) => t - t0);
    const adopted = [...a.info.adopted].sort();
    return {
      run, lossSeenMs, listeningMs, adopted,
      allAdopted: names.every((nm) => adopted.includes(nm)),
      connectedMs: connectedAt === null ? NaN : connectedAt - t0,
      allBeatingMs: firstBeat.size === guests.length ? max(beats) : NaN,
      firstBeatingMs: min(beats),
      note,
    };
  } finally {
    host.off('connection', onConnection);
    for (const u of unlisten) u();
  }
}

// ---- 4. faults, repeated ---------------------------------------------------------------------------

type FaultKind = 'destination QEMU killed' | 'link cut';

interface FaultRun {
  fault: FaultKind;
  run: number;
  from: string;
  status: string;
  runningOn: string | null;
  /** The fault was injected (the moment before the kill or the cut) to the job's result. */
  faultToResultMs: number;
  copies: string[];
  verifyBad: number | null;
  verifyPages: number | null;
  /** Exactly one copy, running on the source, memory intact, and its QEMU the only one left. */
  ok: boolean;
  note: string | null;
}

async function faultOnce(n: NetnsAgentLab, fault: FaultKind, run: number): Promise<FaultRun> {
  const lab = n.lab;
  const from = whereIs(lab, GUEST);
  if (!from) throw new Error(`No copy of ${GUEST} is left to inject faults into`);
  const to = otherHost(lab, from);
  const options: Partial<MigrationOptions> = fault === 'link cut' ? { bandwidthMBps: 1000, link: { bandwidthMBps: 20 } } : { bandwidthMBps: 20 };
  let faultAt: number | null = null;
  let hit: Promise<void> | null = null;
  let faultError: string | null = null;
  const inject = async (job: MigrationJob) => {
    faultAt = performance.now();
    if (fault === 'link cut') await job.link('cut');
    else process.kill(job.destination!.pid!, 'SIGKILL');
  };
  const { job, result } = migrateGuest(
    { guest: from.guest(GUEST)!, from, to, options, network: lab.network, maxDurationMs: 120_000 },
    (ev) => {
      if (ev.type === 'phase' && ev.phase === 'monitor' && !hit) {
        hit = delay(FAULT_AFTER_MS).then(() => inject(job)).catch((err: Error) => void (faultError = err.message));
      }
    },
  );
  const r = await result;
  const resultAt = performance.now();
  await hit;
  const out: FaultRun = {
    fault, run, from: from.name, status: r.status, runningOn: r.runningOn,
    faultToResultMs: faultAt === null ? NaN : resultAt - faultAt,
    copies: [], verifyBad: null, verifyPages: null, ok: false, note: faultError ?? (faultAt === null ? 'the job ended before the fault' : null),
  };
  out.copies = await runningCopies(lab, GUEST);
  const g = lab.host(from.name).guest(GUEST);
  if (g && !g.exit && out.copies.length === 1 && out.copies[0] === from.name) {
    const v = await g.labload!.verify({ timeoutMs: 60_000 }).catch((err: Error) => {
      out.note = `verify: ${err.message}`;
      return null;
    });
    out.verifyBad = v?.bad ?? null;
    out.verifyPages = v?.pages ?? null;
    // The destination's QEMU (killed, or stopped by the rollback) is gone too.
    let pids = await qemuPids(n.dir);
    for (let i = 0; i < 50 && pids.length !== 1; i++) pids = (await delay(100), await qemuPids(n.dir));
    const onlyOne = pids.length === 1 && pids[0] === g.pid;
    if (!onlyOne) out.note = `${out.note ? `${out.note}; ` : ''}QEMUs left: ${pids.join(', ')}`;
    out.ok = r.status !== 'completed' && r.runningOn === from.name && v !== null && v.bad === 0 && v.pages > 0 && onlyOne;
  } else {
    out.note ??= `${r.status}: ${r.reason ?? ''}; running copies on: ${out.copies.join(', ') || 'none'}`;
  }
  return out;
}

// ---- main --------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  smokeBanner();
  const [qemu, accel] = await Promise.all([findQemu(), chooseAccelerator()]);
  const cpu = cpus();
  const machine = `${cpu.length} cores (${cpu[0]?.model.trim() ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB, QEMU ${qemu.version}, ${accel.accel.toUpperCase()}, Node ${process.version}`;
  console.log(`agent benchmark: ${machine}; load average at start ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  console.log(
    `${RUNS} migrations each way per setup (BENCH_AGENT_RUNS), ${RESTARTS} agent restarts (BENCH_AGENT_RESTARTS), ` +
      `${FAULTS} runs per fault (BENCH_AGENT_FAULTS)\n`,
  );

  workDir = await makeTempDir('bench-agent');
  local = await defaultLocalLab({ runtimeDir: join(workDir, 'local'), network: { subnet: '10.88.0.0/24' } });
  agents = await netnsAgentLab({ subnet: '10.89.0.0/24', reconnectWaitMs: 30_000 });
  netnsPrefix = agents.netns.prefix;
  netnsDir = agents.dir;
  const n = agents;
  const agentA = agentNodePid(n.agents.get('host-a')!.proc.pid!);
  console.log(`namespace lab ${n.netns.prefix}: ${[...n.agents.values()].map((a) => `${a.name} ${a.info.url}`).join(', ')}`);
  console.log(`host-a's agent process: ${agentA.how}\n`);

  const migRuns: MigRun[] = [];
  const idle: IdleSample[] = [];
  const restarts: Restart[] = [];
  const faults: FaultRun[] = [];
  try {
    // QEMU's capabilities are probed once per host (and per agent process): not in the runs.
    await Promise.all([...local.hosts(), ...n.lab.hosts()].map((h) => h.info()));

    // 2a. The agent with no guests, before anything runs on the machine.
    console.log(`sampling host-a's agent with 0 guests for ${SAMPLE_MS / 1000} s`);
    await delay(SETTLE_MS);
    idle.push(await sampleAgent(agentA.pid, []));

    // 1. The same guest, both setups, interleaved in ABBA order so that drift in the machine's
    // load hits both alike. Both guests run all along, so each setup migrates with the other's
    // idle guest in the background.
    console.log(`booting ${GUEST} (${MEMORY_MIB} MiB, ${PATTERN_MIB} MiB pattern) in both labs`);
    await Promise.all([
      bootPatterned(local, 'host-a', GUEST, MEMORY_MIB, PATTERN_MIB),
      bootPatterned(n.lab, 'host-a', GUEST, MEMORY_MIB, PATTERN_MIB),
    ]);
    const labs: Record<Setup, Lab> = { local, agents: n.lab };
    for (let i = 1; i <= 2 * RUNS; i++) {
      const order: Setup[] = i % 2 === 1 ? ['local', 'agents'] : ['agents', 'local'];
      for (const setup of order) {
        checkStopping();
        const r = await migrateOnce(labs[setup], setup, i);
        migRuns.push(r);
        console.log(
          `  run ${i} ${setup.padEnd(6)} ${r.from}->${r.to}: ${r.status}, wall ${fmt(r.wallMs)} ms (job ${fmt(r.jobWallMs)}), ` +
            `total-time ${fmt(r.totalTimeMs)}, downtime ${fmt(r.downtimeMs)}${r.status === 'completed' ? '' : `: ${r.failure ?? ''} ${r.reason ?? ''}`}`,
        );
      }
    }
    await whereIs(local, GUEST)?.guest(GUEST)?.stop();
    await local.dispose();

    // 4. Faults, with the agents' guest (it keeps its pattern).
    for (const fault of ['destination QEMU killed', 'link cut'] as const) {
      for (let i = 1; i <= FAULTS; i++) {
        checkStopping();
        const f = await faultOnce(n, fault, i);
        faults.push(f);
        console.log(
          `  ${fault} ${i}: ${f.status}, on ${f.runningOn}, fault -> result ${fmt(f.faultToResultMs)} ms, ` +
            `copies [${f.copies.join(', ')}], verify bad ${f.verifyBad ?? '-'} of ${f.verifyPages ?? '-'} pages: ${f.ok ? 'ok' : 'NOT ok'}${f.note ? ` (${f.note})` : ''}`,
        );
      }
    }
    await whereIs(n.lab, GUEST)?.guest(GUEST)?.stop();

    // 2b. The agent with 4 idle guests.
    const names = Array.from({ length: IDLE_GUESTS }, (_, i) => `idle${i + 1}`);
    console.log(`booting ${IDLE_GUESTS} guests of ${IDLE_GUEST_MIB} MiB on host-a`);
    const idleGuests = await Promise.all(names.map((nm) => bootPatterned(n.lab, 'host-a', nm, IDLE_GUEST_MIB, 0)));
    await delay(SETTLE_MS);
    console.log(`sampling host-a's agent with ${IDLE_GUESTS} guests for ${SAMPLE_MS / 1000} s`);
    idle.push(await sampleAgent(agentA.pid, idleGuests));

    // 3. Kill and restart host-a's agent under those guests.
    for (let i = 1; i <= RESTARTS; i++) {
      checkStopping();
      const r = await restartOnce(n, 'host-a', names, i);
      restarts.push(r);
      console.log(
        `  restart ${i}: loss seen ${fmt(r.lossSeenMs)} ms after the kill; listening ${fmt(r.listeningMs)} ms (adopted ${r.adopted.join(', ')}), ` +
          `connected ${fmt(r.connectedMs)} ms, heartbeats from all ${fmt(r.allBeatingMs)} ms${r.note ? ` (${r.note})` : ''}`,
      );
      await delay(500);
    }
  } finally {
    await teardown();
  }

  // ---- the tables ----
  console.log(`\n## ${machine}`);

  const loc = migSummary(migRuns, 'local');
  const ag = migSummary(migRuns, 'agents');
  const ratio = ag.wallMedian / loc.wallMedian;
  console.log(
    `\n### 1. The same migration, local hosts vs namespace hosts through their agents\n` +
      `${MEMORY_MIB} MiB lab guest, idle after filling ${PATTERN_MIB} MiB with labload's pattern; bandwidthMBps ${OPTIONS.bandwidthMBps}, other options MigLab's defaults; ` +
      `host-a->host-b and back, ${RUNS} each way per setup, interleaved run by run in ABBA order (local, agents, agents, local, ...). Completed runs only.\n`,
  );
  printTable([
    ['metric (ms)', 'local', 'agents', 'agents/local'],
    ['completed / attempted', `${loc.completed}/${loc.attempted}`, `${ag.completed}/${ag.attempted}`, ''],
    ['completed a->b / b->a', `${loc.completedAtoB}/${loc.completedBtoA}`, `${ag.completedAtoB}/${ag.completedBtoA}`, ''],
    ['wall, median (performance.now around the result)', fmt(loc.wallMedian), fmt(ag.wallMedian), fmt(ratio, 2)],
    ['wall, p90', fmt(loc.wallP90), fmt(ag.wallP90), fmt(ag.wallP90 / loc.wallP90, 2)],
    ['result wallTimeMs, median', fmt(loc.jobWallMedian), fmt(ag.jobWallMedian), fmt(ag.jobWallMedian / loc.jobWallMedian, 2)],
    ['result wallTimeMs, p90', fmt(loc.jobWallP90), fmt(ag.jobWallP90), fmt(ag.jobWallP90 / loc.jobWallP90, 2)],
    ['job start -> first heartbeat on dest., median', fmt(loc.resumedMedian), fmt(ag.resumedMedian), fmt(ag.resumedMedian / loc.resumedMedian, 2)],
    ['QEMU total-time, median', fmt(loc.totalTimeMedian), fmt(ag.totalTimeMedian), fmt(ag.totalTimeMedian / loc.totalTimeMedian, 2)],
    ['QEMU downtime, median', fmt(loc.downtimeMedian), fmt(ag.downtimeMedian), ''],
  ]);
  const verdict = Number.isFinite(ratio) ? (ratio <= TARGET_RATIO ? 'met' : 'NOT met') : 'not measured (no completed runs)';
  console.log(`\nratio of median wall times agents/local: ${fmt(ratio, 2)} (target <= ${TARGET_RATIO}): ${verdict}`);
  for (const s of [loc, ag]) {
    console.log(`not completed, ${s.setup}: ${s.attempted - s.completed}`);
    for (const why of s.notCompleted) console.log(`  - ${why}`);
  }

  console.log(`\n### 2. host-a's agent at rest (${SAMPLE_MS / 1000} s window after ${SETTLE_MS / 1000} s settling; RSS every ${RSS_EVERY_MS} ms; CPU from /proc utime+stime, CLK_TCK ${CLK_TCK})\n`);
  console.log(`agent process: ${agentA.how}\n`);
  printTable([
    ['guests', 'RSS min MiB', 'RSS median MiB', 'RSS max MiB', 'agent CPU %', 'engine CPU %', 'heartbeats/s relayed'],
    ...idle.map((s) => [`${s.guests}${s.guests ? ` x ${IDLE_GUEST_MIB} MiB` : ''}`, fmt(s.rssMin, 1), fmt(s.rssMedian, 1), fmt(s.rssMax, 1), fmt(s.agentCpuPct, 2), fmt(s.engineCpuPct, 2), fmt(s.heartbeatsPerS, 0)]),
  ]);
  console.log('(CPU % of one core; engine: this process over the same window.)');

  console.log(`\n### 3. Reattach after a restart: host-a's agent SIGKILLed under ${IDLE_GUESTS} guests, then restarted (${restarts.length} times)\n`);
  console.log('Times from calling restartAgent (after the engine saw the connection drop).\n');
  const rs = (f: (r: Restart) => number) => restarts.map(f);
  printTable([
    ['ms from restartAgent', 'median', 'max'],
    ['(i) agent listening, guests adopted', fmt(median(rs((r) => r.listeningMs))), fmt(max(rs((r) => r.listeningMs)))],
    ['(ii) engine RemoteHost connected', fmt(median(rs((r) => r.connectedMs))), fmt(max(rs((r) => r.connectedMs)))],
    ['(ii) - (i): agent listening -> engine connected', fmt(median(rs((r) => r.connectedMs - r.listeningMs))), fmt(max(rs((r) => r.connectedMs - r.listeningMs)))],
    ['(iii) first heartbeat, fastest guest', fmt(median(rs((r) => r.firstBeatingMs))), fmt(max(rs((r) => r.firstBeatingMs)))],
    [`(iii) first heartbeat, from all ${IDLE_GUESTS} guests`, fmt(median(rs((r) => r.allBeatingMs))), fmt(max(rs((r) => r.allBeatingMs)))],
    ['(before) SIGKILL -> engine sees the loss', fmt(median(rs((r) => r.lossSeenMs))), fmt(max(rs((r) => r.lossSeenMs)))],
  ]);
  console.log(`all ${IDLE_GUESTS} adopted: ${restarts.filter((r) => r.allAdopted).length}/${restarts.length} restarts`);
  console.log("((ii) - (i) is the engine's reconnect back-off (100, 200, 400, then every 500 ms) and the TLS and guest-list handshake; heartbeats can arrive just before 'connected', which is set once the guest list is reconciled.)");
  for (const r of restarts.filter((x) => x.note)) console.log(`  restart ${r.run}: ${r.note}`);

  console.log(`\n### 4. Faults ${FAULT_AFTER_MS} ms into 'monitor', across namespace hosts (${FAULTS} runs each)\n`);
  printTable([
    ['fault', 'one copy on source, memory intact', 'fault -> result median ms', 'max ms'],
    ...(['destination QEMU killed', 'link cut'] as const).map((k) => {
      const fs = faults.filter((f) => f.fault === k);
      const t = fs.map((f) => f.faultToResultMs);
      return [k === 'link cut' ? 'link cut (link 20 MB/s)' : 'destination QEMU SIGKILLed (20 MB/s)', `${fs.filter((f) => f.ok).length}/${fs.length}`, fmt(median(t)), fmt(max(t.filter(Number.isFinite)))];
    }),
  ]);
  for (const f of faults.filter((x) => !x.ok)) console.log(`  ${f.fault} ${f.run}: ${f.status}, on ${f.runningOn}: ${f.note ?? ''}`);

  // ---- nothing left ----
  const leftNetns = netnsPrefix ? await listNetnsObjects(netnsPrefix) : { namespaces: [], links: [] };
  const leftOurs = await listNetnsObjects(netnsRunTag());
  const leftQemu = (await Promise.all([workDir!, netnsDir!].map((d) => qemuPids(d)))).flat();
  const leftAgents = await agentPids();
  console.log(
    `\nleft behind: namespaces/links of this lab (${netnsPrefix}*): ${[...leftNetns.namespaces, ...leftNetns.links].join(', ') || 'none'}; ` +
      `of this temp folder's runs (${netnsRunTag()}*): ${[...leftOurs.namespaces, ...leftOurs.links].join(', ') || 'none'}; ` +
      `QEMU from the temp dirs: ${leftQemu.join(', ') || 'none'}; agents: ${leftAgents.join(', ') || 'none'}`,
  );

  const file = resultFile('agent');
  await mkdir(dirname(file), { recursive: true });
  await writeFile(
    file,
    `${JSON.stringify(
      {
        date: new Date().toISOString(), machine, qemu: qemu.version, accel: accel.accel, cores: cpu.length,
        options: OPTIONS, runsEachWay: RUNS, restartsRequested: RESTARTS, faultsEach: FAULTS,
        migration: { local: loc, agents: ag, wallRatio: ratio, target: TARGET_RATIO, order: 'ABBA, run by run' },
        agentProcess: agentA.how, idle, restarts, faults, migrations: migRuns,
        leftBehind: { netns: leftNetns, qemu: leftQemu, agents: leftAgents },
      },
      (_, v: unknown) => (typeof v === 'number' ? (Number.isFinite(v) ? Math.round(v * 100) / 100 : null) : v),
      2,
    )}\n`,
  );
  console.log(`written to ${file}`);
  const ownAgents = leftAgents.filter((pid) => {
    try {
      return procCmdline(pid).some((a) => a.startsWith(netnsDir!));
    } catch {
      return false; // gone since
    }
  });
  failSmokeOn([
    ...migRuns.filter((r) => r.status !== 'completed').map((r) => `migration ${r.setup} run ${r.run} ${r.from}->${r.to}: ${r.status}${r.failure ? ` (${r.failure})` : ''}: ${r.reason ?? ''}`),
    ...faults.filter((f) => !f.ok).map((f) => `${f.fault} ${f.run}: ${f.status}, on ${f.runningOn}: ${f.note ?? ''}`),
    ...restarts.filter((r) => !r.allAdopted || r.note).map((r) => `restart ${r.run}: adopted ${r.adopted.join(', ') || 'none'}${r.note ? `; ${r.note}` : ''}`),
    ...idle.filter((x) => x.guests > 0 && !(x.heartbeatsPerS > 0)).map((x) => `no heartbeats relayed from ${x.guests} idle guests`),
    ...[...leftNetns.namespaces, ...leftNetns.links].map((o) => `left behind: ${o}`),
    ...leftQemu.map((pid) => `left behind: QEMU pid ${pid}`),
    ...ownAgents.map((pid) => `left behind: agent pid ${pid}`),
  ]);
}

await runBenchmark(main);
