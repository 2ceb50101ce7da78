#!/usr/bin/env node
// The benchmarks as smoke runs (CI): each test/bench/<name>.bench.ts with --smoke, one after the
// other, so that none of them rots. A smoke run takes the smallest settings, runs every step once,
// prints its tables and judges nothing on time (test/bench/smoke.ts); it exits 1 when it could not
// do what it measures. This script exits 1 when any of them did not exit 0, and ends with the wall
// time of each.
//
//   node scripts/bench-smoke.mjs [NAME...]     (default: every benchmark below; run after set-up)
//
// BENCH_SMOKE_TIMEOUT_S (default 600): a benchmark still running then is stopped (SIGTERM, which
// its teardown handles; its whole process group SIGKILLed 60 s later) and counts as failed. A
// benchmark that leaves a process of its own group running fails too (QEMU has a group of its
// own: the benchmarks check for their guests themselves).
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
/** Every benchmark; bench:agent needs root (network namespaces), as the tests do. */
const BENCHES = ['guest', 'migrate', 'strategies', 'switch', 'agent', 'ui', 'tcg'];
const timeoutS = Number(process.env.BENCH_SMOKE_TIMEOUT_S ?? 600);
const KILL_AFTER_MS = 60_000;

const asked = process.argv.slice(2);
const unknown = asked.filter((n) => !BENCHES.includes(n));
if (unknown.length) {
  console.error(`[bench-smoke] no benchmark named ${unknown.join(', ')}: choose from ${BENCHES.join(', ')}`);
  process.exit(2);
}
if (!(Number.isFinite(timeoutS) && timeoutS > 0)) {
  console.error(`[bench-smoke] BENCH_SMOKE_TIMEOUT_S=${process.env.BENCH_SMOKE_TIMEOUT_S} is not a positive number of seconds`);
  process.exit(2);
}
const bin = join(root, 'node_modules', '.bin');
if (!existsSync(join(bin, 'tsx'))) {
  console.error('[bench-smoke] tsx is not installed: run "npm run setup" first');
  process.exit(2);
}
/** The Node npm scripts use (node_modules' Node 22), else this one. */
const node = existsSync(join(bin, 'node')) ? join(bin, 'node') : process.execPath;

/** The one running now, so that a Ctrl-C or a CI cancel stops it (and its guests) too. */
let current = null;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    // The benchmark alone: its teardown stops what it started (agents too, which a signal to the
    // whole group would kill under it, leaving their guests).
    if (current) process.kill(current.pid, sig);
    process.exitCode = 130;
  });
}

/** Processes still in process group `pgid`, as "pid (name)". */
function groupMembers(pgid) {
  const out = [];
  for (const pid of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // state, ppid, pgrp, ...
      if (Number(fields[2]) === pgid) out.push(`${pid} (${stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))})`);
    } catch {
      // gone while we looked
    }
  }
  return out;
}

/** What is still in the group once its members had a moment to end (tsx's esbuild ends on EOF). */
async function leftInGroup(pgid) {
  for (let waited = 0; waited < 3000; waited += 100) {
    if (!groupMembers(pgid).length) return [];
    await new Promise((r) => setTimeout(r, 100));
  }
  return groupMembers(pgid);
}

function killGroup(pgid) {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // nothing left in it
  }
}

/** Runs one benchmark in a process group of its own; resolves with how it ended and its wall time. */
function runBench(name) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    // Node itself runs the benchmark (tsx as a loader, no wrapper process): its exit is the benchmark's.
    const child = spawn(node, ['--import', 'tsx', join(root, 'test', 'bench', `${name}.bench.ts`), '--smoke'], {
      cwd: root,
      stdio: 'inherit',
      detached: true,
      env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
    });
    current = child;
    let timedOut = false;
    let killTimer = null;
    const timer = setTimeout(() => {
      timedOut = true;
      console.error(`\n[bench-smoke] ${name}: still running after ${timeoutS} s: stopping it`);
      child.kill('SIGTERM');
      killTimer = setTimeout(() => killGroup(child.pid), KILL_AFTER_MS);
    }, timeoutS * 1000);
    const done = async (code, signal, error) => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      current = null;
      const wallS = (performance.now() - t0) / 1000;
      const left = error ? [] : await leftInGroup(child.pid);
      if (left.length) killGroup(child.pid);
      resolve({ name, code, signal, error, timedOut, left, wallS });
    };
    child.once('error', (err) => done(null, null, err.message));
    child.once('exit', (code, signal) => done(code, signal, null));
  });
}

const results = [];
for (const name of asked.length ? asked : BENCHES) {
  if (process.exitCode === 130) break;
  console.log(`\n[bench-smoke] ===== bench:${name} --smoke =====\n`);
  results.push(await runBench(name));
}

const outcome = (r) =>
  r.error ? `could not start: ${r.error}`
    : r.timedOut ? `timed out after ${timeoutS} s`
    : r.signal ? `killed by ${r.signal}`
    : r.code !== 0 ? `exit ${r.code}`
    : r.left.length ? `left running (now killed): ${r.left.join(', ')}`
    : 'ok';
console.log('\n[bench-smoke] benchmark | result | wall s');
for (const r of results) console.log(`[bench-smoke] ${r.name} | ${outcome(r)} | ${r.wallS.toFixed(1)}`);
const failed = results.filter((r) => outcome(r) !== 'ok');
const total = results.reduce((s, r) => s + r.wallS, 0);
console.log(`[bench-smoke] ${results.length - failed.length} of ${results.length} ran, ${total.toFixed(0)} s in all${failed.length ? `; FAILED: ${failed.map((r) => r.name).join(', ')}` : ''}`);
if (failed.length || process.exitCode === 130) process.exitCode ||= 1;
