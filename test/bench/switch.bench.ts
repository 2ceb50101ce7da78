// npm run bench:switch: the lab switch's forwarding rate (64-byte frames), throughput (1500-byte
// frames), the latency it adds, and its memory under overload. A benchmark, not a test.
//
// The switch's data plane (miglab-switchd) is pinned to one core with taskset when the machine
// has two or more; the traffic comes from udp-blast, a small C program built here with gcc and
// pinned to another core, so that the generator is never the bottleneck it measures. A bare Node
// UDP forwarder is measured the same way, as the reference for what Node alone could do.
// Prints tables and writes test-artifacts/bench/switch.json. --smoke: 0.5 s per case, 1 s of
// overload (see smoke.ts).
import { execFile, execFileSync, fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { canBind } from '../../electron/engine/hosts/ports';
import { LabSwitch } from '../../electron/engine/network/switch';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { failSmokeOn, resultFile, setting, smokeBanner } from './smoke';
import { runBenchmark, teardownOnStop } from './stop-signals';

const run = promisify(execFile);
const SECONDS = setting('BENCH_SECONDS', 3, 0.5);
const OVERLOAD_SECONDS = setting('BENCH_OVERLOAD_SECONDS', 10, 1);
const TICK = 100; // clock ticks per second in /proc/<pid>/stat

interface Blast {
  sent: number;
  received: number;
  seconds: number;
  latencySamples: number;
  p50us: number;
  p99us: number;
}

/** Two cores or more, and taskset: the forwarder gets CPU 1 to itself, the generator CPU 0. */
const PIN = cpus().length >= 2 && (() => {
  try {
    execFileSync('taskset', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

function pin(pid: number, cpu: number): void {
  if (PIN) execFileSync('taskset', ['-a', '-c', '-p', String(cpu), String(pid)], { stdio: 'ignore' });
}

function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / TICK; // utime + stime
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function freeUdpPorts(n: number): Promise<number[]> {
  const out: number[] = [];
  for (let p = 41000; out.length < n && p < 42000; p++) if (await canBind('127.0.0.1', p, 'udp')) out.push(p);
  return out;
}

/**
 * Runs udp-blast. `pinned`: on CPU 0, away from the switch (throughput). Latency is measured
 * unpinned: on one core the generator's sending thread would delay its own receiving thread.
 */
async function blast(bin: string, ports: { src: number; sink: number; in: number; out: number }, bytes: number, rate: number, seconds: number, pinned = true, broadcast = false): Promise<Blast> {
  const args = [...[ports.src, ports.sink, ports.in, ports.out, bytes, rate, seconds].map(String), ...(broadcast ? ['broadcast'] : [])];
  const { stdout } = PIN && pinned
    ? await run('taskset', ['-c', '0', bin, ...args], { timeout: (seconds + 10) * 1000 })
    : await run(bin, args, { timeout: (seconds + 10) * 1000 });
  return JSON.parse(stdout) as Blast;
}

const fmt = (n: number, d = 0) => n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

/** The reference: the same traffic through a bare Node forwarder. */
async function bareNode(bin: string, src: number, sink: number): Promise<{ fps64: number; mbps1500: number }> {
  const child = fork(join(import.meta.dirname, 'bare-forwarder.ts'), [String(sink)], { execArgv: ['--import', 'tsx'] });
  try {
    const { in: inPort } = await new Promise<{ in: number }>((resolve) => child.once('message', (m) => resolve(m as { in: number })));
    pin(child.pid!, 1);
    const ports = { src, sink, in: inPort, out: inPort };
    const a = await blast(bin, ports, 64, 0, SECONDS);
    const b = await blast(bin, ports, 1500, 0, SECONDS);
    return { fps64: a.received / a.seconds, mbps1500: (b.received / b.seconds) * 1500 * 8 / 1e6 };
  } finally {
    const gone = new Promise((r) => child.once('exit', r));
    child.send('exit');
    await gone;
  }
}

async function main(): Promise<void> {
  smokeBanner();
  const dir = await makeTempDir('bench-switch');
  const sw = new LabSwitch();
  teardownOnStop('the switch of the benchmark', async () => {
    await sw.close();
    await removeDir(dir);
  });
  try {
    const bin = join(dir, 'udp-blast');
    await run('gcc', ['-O2', '-pthread', '-o', bin, join(import.meta.dirname, '../../scripts/bench/udp-blast.c')]);
    const [src, sink] = (await freeUdpPorts(2)) as [number, number];
    const bare = await bareNode(bin, src, sink);

    const a = await sw.openPort({ host: 'bench', guest: 'src' }, { address: '127.0.0.1', port: src });
    const b = await sw.openPort({ host: 'bench', guest: 'sink' }, { address: '127.0.0.1', port: sink });
    const pid = sw.pid!;
    pin(pid, 1);
    const ports = { src, sink, in: a.port, out: b.port };

    const rows: Array<{ case: string; frameBytes: number; offeredFps: number; forwardedFps: number; lossPct: number; mbps: number; switchCpuPct: number; p50us: number; p99us: number }> = [];
    const measure = async (label: string, bytes: number, rate: number, pinned = true) => {
      const cpu0 = cpuSeconds(pid);
      const t0 = performance.now();
      const r = await blast(bin, ports, bytes, rate, SECONDS, pinned);
      const cpu = cpuSeconds(pid) - cpu0;
      const wall = (performance.now() - t0) / 1000;
      const fps = r.received / r.seconds;
      const row = {
        case: label, frameBytes: bytes, offeredFps: Math.round(r.sent / r.seconds), forwardedFps: Math.round(fps),
        lossPct: r.sent ? Math.round((1000 * (r.sent - r.received)) / r.sent) / 10 : 0,
        mbps: Math.round((fps * bytes * 8) / 1e6), switchCpuPct: Math.round((100 * cpu) / wall), p50us: r.p50us, p99us: r.p99us,
      };
      rows.push(row);
      return row;
    };

    // Latency added: the same paced stream straight to the sink, then through the switch.
    const direct = await blast(bin, { ...ports, in: ports.sink }, 64, 10_000, SECONDS, false);
    const lat = await measure('64 B, 10k fps (latency, unpinned)', 64, 10_000, false);
    const at64: Array<(typeof rows)[number]> = [];
    for (const rate of [100_000, 150_000, 200_000]) at64.push(await measure('64 B, paced', 64, rate));
    const at1500: Array<(typeof rows)[number]> = [];
    for (const rate of [83_334, 100_000]) at1500.push(await measure('1500 B, paced', 1500, rate));
    at64.push(await measure('64 B, flat out', 64, 0));
    at1500.push(await measure('1500 B, flat out', 1500, 0));
    /** The best rate forwarded with under 1% loss. */
    const best = (rs: typeof rows) => rs.filter((r) => r.lossPct < 1).reduce((m, r) => (r.forwardedFps > m.forwardedFps ? r : m), { ...rs[0]!, forwardedFps: 0, mbps: 0 });
    const max64 = best(at64);
    const max1500 = best(at1500);

    // Overload: one generator cannot outrun the switch, so its broadcasts are multiplied: eight
    // more ports (NICs that are not listening) make every frame nine sends. Memory is sampled all
    // along: nothing in the switch queues without bound; what it cannot take is dropped by the
    // kernel at its socket buffer.
    const [firstQuiet] = await freeUdpPorts(1);
    for (let i = 0; i < 8; i++) await sw.openPort({ host: 'bench', guest: `quiet-${i}` }, { address: '127.0.0.1', port: firstQuiet! + 100 + i });
    const rxBefore = (await sw.stats()).ports.find((p) => p.guest === 'src')!.counters.rxFrames;
    const mem: number[] = [];
    const cpu0 = cpuSeconds(pid);
    const t0 = performance.now();
    const sampling = setInterval(() => mem.push(rssMiB(pid)), 500);
    const overload = await blast(bin, ports, 64, 0, OVERLOAD_SECONDS, true, true);
    clearInterval(sampling);
    const overloadCpuPct = Math.round((100 * (cpuSeconds(pid) - cpu0)) / ((performance.now() - t0) / 1000));
    const stats = await sw.stats();

    console.log(`\nlab switch (miglab-switchd), ${PIN ? 'pinned to CPU 1, generator on CPU 0' : 'not pinned'}, ${SECONDS} s per case, loopback UDP\n`);
    console.log('| case | offered fps | forwarded fps | loss | Mbit/s | switch CPU | p50 us | p99 us |');
    console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const r of rows) {
      console.log(`| ${r.case} | ${fmt(r.offeredFps)} | ${fmt(r.forwardedFps)} | ${r.lossPct}% | ${fmt(r.mbps)} | ${r.switchCpuPct}% | ${r.p50us} | ${r.p99us} |`);
    }
    console.log(`\nlatency added by the switch at 10k fps: p50 ${lat.p50us - direct.p50us} us, p99 ${lat.p99us - direct.p99us} us (direct, no switch: p50 ${direct.p50us} us, p99 ${direct.p99us} us)`);
    console.log(`targets: >= 100,000 fps at 64 B: ${fmt(max64.forwardedFps)} fps with under 1% loss (switch at ${max64.switchCpuPct}% of its core); >= 1,000 Mbit/s at 1500 B: ${fmt(max1500.mbps)} Mbit/s with under 1% loss (${max1500.switchCpuPct}%)`);
    console.log('(beyond these rates the generator, on the other core, is the limit: compare the switch CPU column)');
    console.log(`reference, a bare Node UDP forwarder on the same core: ${fmt(bare.fps64)} fps at 64 B, ${fmt(bare.mbps1500)} Mbit/s at 1500 B`);
    console.log(`\noverload, ${OVERLOAD_SECONDS} s of broadcasts flat out to 10 ports (${fmt(overload.sent / overload.seconds)} fps offered, ${fmt(overload.received / overload.seconds)} reached the sink, switch CPU ${overloadCpuPct}%):`);
    console.log(`  switchd RSS MiB: first ${fmt(mem[0] ?? NaN, 2)}, max ${fmt(Math.max(...mem), 2)}, last ${fmt(mem.at(-1) ?? NaN, 2)} (${mem.length} samples)`);
    const inPort = stats.ports.find((p) => p.guest === 'src')!.counters;
    console.log(`  the switch took in ${fmt(inPort.rxFrames - rxBefore)} of the ${fmt(overload.sent)} frames offered and sent each on to 9 ports; the rest of what was offered was dropped by the kernel before the switch read it; egress drops: ${stats.ports.reduce((n, p) => n + p.counters.drops.egress, 0)}`);

    const file = resultFile('switch');
    await mkdir(dirname(file), { recursive: true });
    await writeFile(file, JSON.stringify({ pinned: PIN, rows, direct, bareNode: bare, overload, rssMiB: mem, drops: stats.ports }, null, 2));
    console.log(`\nwritten: ${file}`);
    failSmokeOn([
      ...rows.filter((r) => r.forwardedFps === 0).map((r) => `${r.case}: the switch forwarded nothing`),
      ...(bare.fps64 === 0 ? ['the bare Node forwarder forwarded nothing'] : []),
      ...(inPort.rxFrames - rxBefore === 0 ? ['overload: the switch took in no frame'] : []),
      ...(mem.length === 0 ? ['overload: no RSS sample of the switch'] : []),
    ]);
  } finally {
    await sw.close();
    await removeDir(dir);
  }
}

await runBenchmark(main);
