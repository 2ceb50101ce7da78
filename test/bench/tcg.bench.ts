// npm run bench:tcg [-- --runs N] [-- --smoke]: does the guest survive a busy migration under TCG?
// The same busy lab-guest demo (64 MiB dirtied at 50 MB/s while it migrates) with the system
// QEMU and with the lab's QEMU 10, each with and without pti=on on the guest kernel's command
// line (MIGLAB_GUEST_PTI), interleaved run by run. A crash is what MigLab saw: the destination
// died in the confirm watch (failure "destination-crashed", the guest resumed on the source), or
// the guest's memory check on the destination found bad pages or stopped heartbeats.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { findPrivateQemu } from '../../electron/engine/qemu/private-qemu';
import { chooseAccelerator, whichBinary } from '../../electron/engine/qemu/binary';
import { parseQemuVersion } from '../../electron/engine/qemu/version';
import { defaultCacheRoot } from '../../electron/engine/util/paths';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { SMOKE, failSmokeOn, smokeBanner } from './smoke';

const runFile = promisify(execFile);
const root = join(import.meta.dirname, '..', '..');
const args = process.argv.slice(2);
const runsArg = args.indexOf('--runs');
const runs = SMOKE ? 1 : runsArg >= 0 ? Number(args[runsArg + 1]) : 5;

interface Config {
  label: string;
  qemu: string;
  pti: 'on' | 'off';
}

interface Outcome {
  completedIntact: number;
  crashed: number;
  other: string[];
  downtimes: number[];
}

async function version(path: string): Promise<string> {
  return parseQemuVersion((await runFile(path, ['--version'])).stdout)?.version ?? '?';
}

async function demo(c: Config, stateDir: string): Promise<{ kind: 'ok' | 'crash' | 'other'; detail: string; downtimeMs: number | null }> {
  // The demos journal into a dir of the bench's own, not the user's state dir.
  const env = { ...process.env, MIGLAB_QEMU: c.qemu, MIGLAB_GUEST_PTI: c.pti, MIGLAB_STATE_DIR: stateDir };
  const argv = [join(root, 'electron', 'cli', 'main.ts'), 'demo', '--json', '--dirty-rate', '50', '--working-set', '64'];
  const out = await runFile(join(root, 'node_modules', '.bin', 'tsx'), argv, { env, cwd: root, timeout: 300_000, maxBuffer: 16 * 2 ** 20 })
    .then((r) => r.stdout)
    .catch((err: { stdout?: string; message: string }) => err.stdout || JSON.stringify({ status: 'error', reason: err.message }));
  let r: { status: string; failure?: string | null; reason?: string; downtimeMs?: number | null; integrity?: { ok: boolean; bad: number; heartbeatsContinue: boolean } | null };
  try {
    r = JSON.parse(out);
  } catch {
    return { kind: 'other', detail: `unreadable output: ${out.slice(0, 200)}`, downtimeMs: null };
  }
  if (r.status === 'completed' && r.integrity?.ok) return { kind: 'ok', detail: 'completed, intact', downtimeMs: r.downtimeMs ?? null };
  if (r.failure === 'destination-crashed' || (r.status === 'completed' && r.integrity && !r.integrity.ok)) {
    return { kind: 'crash', detail: r.reason ?? `integrity: ${JSON.stringify(r.integrity)}`, downtimeMs: null };
  }
  return { kind: 'other', detail: `${r.status}: ${r.reason ?? ''}`, downtimeMs: null };
}

async function main(): Promise<void> {
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs takes a whole number of runs per row (got "${args[runsArg + 1]}")`);
  smokeBanner();
  const system = await whichBinary('qemu-system-x86_64');
  const ten = process.env.MIGLAB_QEMU ?? (await findPrivateQemu(defaultCacheRoot()))?.path;
  if (!system || !ten) throw new Error('bench:tcg needs the system QEMU and the lab\'s QEMU 10 (npm run setup fetches it)');
  const accel = await chooseAccelerator();
  const [sv, tv] = await Promise.all([version(system), version(ten)]);
  const configs: Config[] = [
    { label: `QEMU ${sv}, pti=on`, qemu: system, pti: 'on' },
    { label: `QEMU ${sv}, no pti`, qemu: system, pti: 'off' },
    { label: `QEMU ${tv}, pti=on`, qemu: ten, pti: 'on' },
    { label: `QEMU ${tv}, no pti`, qemu: ten, pti: 'off' },
  ];
  console.log(`## bench:tcg: busy lab guest (64 MiB at 50 MB/s) migrated host-a -> host-b, ${runs} run(s) per row, interleaved`);
  console.log(`accelerator: ${accel.accel} (${accel.reason})\n`);
  const outcomes = new Map<string, Outcome>(configs.map((c) => [c.label, { completedIntact: 0, crashed: 0, other: [], downtimes: [] }]));
  const stateDir = await makeTempDir('bench-tcg');
  try {
    await runAll(configs, outcomes, stateDir);
  } finally {
    await removeDir(stateDir);
  }
  printTable(configs, outcomes);
  // A crash is the finding; a demo that could not run at all is the bench failing.
  failSmokeOn(configs.flatMap((c) => outcomes.get(c.label)!.other.map((why) => `${c.label}: ${why}`)));
}

async function runAll(configs: Config[], outcomes: Map<string, Outcome>, stateDir: string): Promise<void> {
  for (let i = 0; i < runs; i++) {
    for (const c of configs) {
      const r = await demo(c, stateDir);
      const o = outcomes.get(c.label)!;
      if (r.kind === 'ok') o.completedIntact++;
      else if (r.kind === 'crash') o.crashed++;
      else o.other.push(r.detail);
      if (r.downtimeMs !== null) o.downtimes.push(r.downtimeMs);
      console.error(`[tcg] run ${i + 1}/${runs} ${c.label}: ${r.kind} (${r.detail.slice(0, 160)})`);
    }
  }
}

function printTable(configs: Config[], outcomes: Map<string, Outcome>): void {
  console.log('| QEMU and guest command line | runs | completed, memory intact | crashed on the destination | other failures | QEMU downtime median (ms) |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
  for (const c of configs) {
    const o = outcomes.get(c.label)!;
    const d = [...o.downtimes].sort((a, b) => a - b);
    const median = d.length ? String(d[Math.floor(d.length / 2)]) : 'n/a';
    console.log(`| ${c.label} | ${runs} | ${o.completedIntact} | ${o.crashed} | ${o.other.length} | ${median} |`);
  }
  for (const c of configs) for (const why of outcomes.get(c.label)!.other) console.log(`other failure, ${c.label}: ${why}`);
}

main().catch((err: Error) => {
  console.error(`bench:tcg: ${err.message}`);
  process.exit(1);
});
