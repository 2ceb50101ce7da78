// npm run bench:ui: the renderer's cost in browser mode. A benchmark, not a test.
//
//  1. Bundle size: the UI built with Vite's JS API (renderer/vite.config.ts, outDir overridden to a
//     temp dir of ours), the sizes of its .js and .css files, raw and gzipped (node:zlib's
//     gzipSync at its default level, 6). The build also writes hidden source maps (no
//     sourceMappingURL comment: the .js is byte for byte what a build without them gives; they
//     are not counted) so that the profile below can name functions in the renderer's sources.
//     THAT build dir is what the WebServer serves.
//  2. Initial load: a fresh browser context per load; from page.goto(server.url) until the
//     article 'Host host-a' is visible (the lab is shown), median of BENCH_LOADS (5) loads, with
//     Navigation Timing's domContentLoadedEventEnd and loadEventEnd and the first contentful paint.
//     The lab is empty then (no guest yet), as a class first opens it.
//  3. Scripting per frame during a migration streamed at 20 samples/s: a real lab guest (512 MiB,
//     dirtying 128 MiB at 60 MB/s) migrated host-a -> host-b with bandwidthMBps 20 (it cannot
//     converge) and sampleIntervalMs 50, shown by the page (the UI follows the newest migration).
//     For BENCH_SECONDS (8) s Chromium records a trace with the categories devtools.timeline and
//     disabled-by-default-devtools.timeline.frame (browser.startTracing); ui-trace.ts reads the
//     page's renderer main thread (CrRendererMain):
//       - frames: Chromium's async 'AnimationFrame' spans (the model behind the Long Animation
//         Frames API), one per rendering update the main thread made, i.e. per frame the page drew.
//         A frame's share of the main thread runs from the end of the previous update to the end
//         of its own: its span (which opens with the first task that asked for a frame, here the
//         WebSocket message) plus the tasks in between that Chromium puts in no span (React's
//         scheduler flushing passive effects after a commit). Every task is thus given to the
//         next frame drawn after it. (Fallback for a Chromium without such spans:
//         BeginMainThreadFrame to BeginMainThreadFrame.)
//       - scripting: the top-level events DevTools counts as Scripting. Those this UI produces
//         during a migration: FunctionCall (a callback that is a task of its own: the WebSocket's
//         onmessage, React's scheduler task, timers), FireAnimationFrame (rAF callbacks: the
//         store's flush, and within it React's render/commit microtask and uPlot's redraw
//         microtask), MinorGC/MajorGC (DevTools counts GC as scripting). EventDispatch, TimerFire,
//         RunMicrotasks, EvaluateScript, ... are in the list too, so nothing scripting-like is
//         dropped. Nested events (the FunctionCalls inside a FireAnimationFrame) are not counted
//         twice, and rendering nested in a script (a forced style/layout when uPlot or xterm
//         measures a box) is taken out and counted as the frame's rendering, as DevTools does.
//       - two clocks: the events' wall duration (what DevTools shows; the target is judged on it)
//         and their thread CPU time (tdur): on a machine whose cores are busy (QEMU under TCG
//         takes more than one core here) the difference is the time the main thread waited to be
//         scheduled, not work of the UI's.
//     Per frame: median and p95 over all the frames in the window. The samples the UI received
//     are counted by a WebSocket client of our own on the same server (the same broadcast as the
//     page's) over the same window, and checked against the messages the page itself received
//     (the trace's WebSocketReceive events). Then, still during the migration and outside the
//     timed window (the profiler slows scripts down), a CDP CPU profile (BENCH_PROFILE_SECONDS,
//     4 s) names the functions the time goes to, through the source maps; its samples are
//     wall-clock, so a built-in that wakes another thread (requestAnimationFrame, postMessage) also
//     collects the time this thread then waited for a core. Then the migration is cancelled and
//     its result awaited, whatever it is.
//
// Real QEMU guests (the lab guest from the cache) and Debian's Chromium (MIGLAB_CHROMIUM to use
// another). Prints tables and writes test-artifacts/bench/ui.json; BENCH_UI_TRACE=<file> and
// BENCH_UI_PROFILE=<file>.cpuprofile also keep the raw trace and profile (both open in DevTools'
// Performance panel; the bundle they point into is removed with the temp dir).
//
// --smoke: one load, a 256 MiB guest, a 2 s window and a 1 s profile (see smoke.ts); what the
// bench could not do (no chart, no frame or sample in the window, a cancel that failed, the result
// not shown, something left behind) fails it; rates and times never do.
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { gzipSync } from 'node:zlib';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { build } from 'vite';
import WebSocket from 'ws';
import { LabService } from '../../electron/engine/api/service';
import type { ApiEvent, LabSnapshot, ServerMessage } from '../../electron/engine/api/contract';
import { findLabGuest } from '../../electron/engine/guest/image';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { MigrationJournal } from '../../electron/engine/migration/journal';
import type { MigrationResult } from '../../electron/engine/migration/types';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { delay } from '../../electron/engine/util/time';
import { WebServer } from '../../electron/engine/web/server';
import { leakedSince, snapshot as leakSnapshot, qemuPids } from '../helpers/leaks';
import { failSmokeOn, resultFile, setting, SMOKE, smokeBanner } from './smoke';
import { runBenchmark, teardownOnStop } from './stop-signals';
import { analyzeFrames, BundleMapper, median, percentile, summarizeProfile, traceEvents, type CpuProfile, type EntryPoint } from './ui-trace';

const ROOT = join(import.meta.dirname, '..', '..');
const CHROMIUM = process.env.MIGLAB_CHROMIUM ?? '/usr/bin/chromium';
const LOADS = setting('BENCH_LOADS', 5, 1, { whole: true });
const WINDOW_S = setting('BENCH_SECONDS', 8, 2);
const PROFILE_S = setting('BENCH_PROFILE_SECONDS', 4, 1);
const GUEST = 'uibench';
const MEMORY_MIB = SMOKE ? 256 : 512;
const WORKLOAD = { rateMBps: 60, workingSetMiB: 128 };
const MIGRATION = { bandwidthMBps: 20, sampleIntervalMs: 50 };
const TARGET = { p95ScriptingMs: 8, loadMs: 1500, samplesPerS: 1000 / MIGRATION.sampleIntervalMs };
const VIEWPORT = { width: 1400, height: 1000 };
const LAUNCH_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
/** The categories the brief names; 'AnimationFrame' spans and every scripting event are in them. */
const TRACE_CATEGORIES = ['devtools.timeline', 'disabled-by-default-devtools.timeline.frame'];

const fmt = (n: number | null | undefined, d = 1) => (typeof n === 'number' && Number.isFinite(n) ? n.toFixed(d) : '-');
const kB = (bytes: number) => `${(bytes / 1000).toFixed(1)} kB`;
const verdict = (ok: boolean) => (ok ? 'met' : 'NOT met');

// ---- 1. the bundle ---------------------------------------------------------------------------------

interface BundleFile {
  file: string;
  bytes: number;
  gzipBytes: number;
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else out.push(p);
  }
  return out;
}

async function buildUi(outDir: string): Promise<{ files: BundleFile[]; buildMs: number }> {
  const t0 = performance.now();
  await build({
    configFile: join(ROOT, 'renderer', 'vite.config.ts'),
    logLevel: 'warn',
    build: { outDir, emptyOutDir: true, sourcemap: 'hidden' },
  });
  const buildMs = performance.now() - t0;
  const files: BundleFile[] = [];
  for (const f of await filesUnder(outDir)) {
    if (!/\.(js|css)$/.test(f)) continue;
    const data = await readFile(f);
    if (f.endsWith('.js') && data.includes('sourceMappingURL')) throw new Error(`${f} points at its source map: the build is not the plain production bundle`);
    files.push({ file: relative(outDir, f), bytes: data.length, gzipBytes: gzipSync(data).length });
  }
  if (!files.length) throw new Error(`Vite built no .js or .css into ${outDir}`);
  return { files, buildMs };
}

// ---- 2. initial load -----------------------------------------------------------------------------------

interface Load {
  /** Node's clock: page.goto started to the 'Host host-a' article visible. */
  toLabShownMs: number;
  /** The page's clock (from navigation start): the article inserted into the DOM. */
  inPageLabInsertedMs: number | null;
  domContentLoadedMs: number;
  loadMs: number;
  firstContentfulPaintMs: number | null;
  transferBytes: number;
}

async function measureLoad(browser: Browser, url: string): Promise<Load> {
  const ctx = await browser.newContext({ viewport: VIEWPORT });
  try {
    // When the lab's first host appears in the DOM, on the page's own clock (injected by the
    // DevTools protocol, so the page's CSP does not apply; it only observes).
    // (A string: tsx's helpers are not in the page.)
    await ctx.addInitScript(`(() => {
      const mo = new MutationObserver(() => {
        if (window.__labInsertedAt === undefined && document.querySelector('article[aria-label="Host host-a"]')) {
          window.__labInsertedAt = performance.now();
          mo.disconnect();
        }
      });
      mo.observe(document, { childList: true, subtree: true });
    })()`);
    const page = await ctx.newPage();
    page.on('pageerror', (e) => console.warn(`[page] ${e.message}`));
    const t0 = performance.now();
    await page.goto(url, { waitUntil: 'commit' });
    await page.getByRole('article', { name: 'Host host-a' }).waitFor({ state: 'visible', timeout: 30_000 });
    const toLabShownMs = performance.now() - t0;
    await page.waitForLoadState('load');
    const t = await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming;
      const fcp = performance.getEntriesByType('paint').find((p) => p.name === 'first-contentful-paint');
      const res = performance.getEntriesByType('resource') as PerformanceResourceTiming[];
      return {
        dcl: nav.domContentLoadedEventEnd,
        load: nav.loadEventEnd,
        fcp: fcp ? fcp.startTime : null,
        inserted: (window as unknown as { __labInsertedAt?: number }).__labInsertedAt ?? null,
        bytes: nav.transferSize + res.reduce((s, r) => s + r.transferSize, 0),
      };
    });
    return { toLabShownMs, inPageLabInsertedMs: t.inserted, domContentLoadedMs: t.dcl, loadMs: t.load, firstContentfulPaintMs: t.fcp, transferBytes: t.bytes };
  } finally {
    await ctx.close();
  }
}

// ---- 3. the migration ------------------------------------------------------------------------------------

/** Our own client of the browser-mode API: it hears the same broadcast as the page. */
class EventCounter {
  readonly events: Array<{ at: number; type: string }> = [];
  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const msg = JSON.parse(String(data)) as ServerMessage;
      if (!('event' in msg)) return;
      const ev: ApiEvent = msg.event;
      this.events.push({ at: performance.now(), type: ev.type === 'migration' ? `migration:${ev.event.type}` : ev.type });
    });
  }

  static async open(server: WebServer): Promise<EventCounter> {
    const ws = new WebSocket(`ws://${server.address.host}:${server.address.port}/api?token=${server.tokens.teacher}`);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return new EventCounter(ws);
  }

  count(type: string, from = -Infinity, to = Infinity): number {
    return this.events.filter((e) => e.type === type && e.at >= from && e.at <= to).length;
  }

  times(type: string, from: number, to: number): number[] {
    return this.events.filter((e) => e.type === type && e.at >= from && e.at <= to).map((e) => e.at);
  }

  byType(from: number, to: number): Record<string, number> {
    const out: Record<string, number> = {};
    for (const e of this.events) if (e.at >= from && e.at <= to) out[e.type] = (out[e.type] ?? 0) + 1;
    return out;
  }

  close(): void {
    this.ws.terminate();
  }
}

/** Jiffies of all cores: busy (not idle or iowait) and total. */
function machineCpu(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((s, x) => s + x, 0);
  return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
}

/** CPU seconds a process has used (utime + stime), 0 when it is gone. */
function processCpuSeconds(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}

async function until<T>(what: string, timeoutMs: number, probe: () => T | null | undefined | false | Promise<T | null | undefined | false>): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await delay(200);
  }
}

function guestState(s: LabSnapshot, name: string): string | null {
  for (const h of s.hosts) for (const g of h.guests) if (g.name === name && g.state !== 'incoming') return g.state;
  return null;
}

// ---- main ----------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  smokeBanner();
  if (!(await findLabGuest())) throw new Error('The lab guest is not built: run "npm test" (its set-up builds it) or "npx miglab guest build"');
  if (!existsSync(CHROMIUM)) throw new Error(`No Chromium at ${CHROMIUM}: sudo apt-get install chromium, or set MIGLAB_CHROMIUM`);
  const before = await leakSnapshot();
  const work = await makeTempDir('bench-ui');
  let lab: Lab | null = null;
  let service: LabService | null = null;
  let server: WebServer | null = null;
  let browser: Browser | null = null;
  let counter: EventCounter | null = null;
  let ctx: BrowserContext | null = null;
  const problems: string[] = [];
  /** What the benchmark could not do (not how fast it was): fails a smoke run. */
  const broken: string[] = [];
  let cleaningUp: Promise<void> | null = null;
  /** Everything this run made, in order; once, whether the run ends or is stopped. */
  const cleanup = () => (cleaningUp ??= (async () => {
    const step = async (what: string, f: () => unknown) => {
      try {
        await f();
      } catch (err) {
        console.warn(`[cleanup] ${what}: ${(err as Error).message}`);
      }
    };
    await step('event counter', () => counter?.close());
    await step('context', () => ctx?.close());
    await step('browser', () => browser?.close());
    await step('web server', () => server?.close());
    await step('service', () => service?.close());
    await step('lab', () => lab?.dispose());
    await step('temp dir', () => removeDir(work));
  })());
  teardownOnStop('the browser and the guests of the benchmark', cleanup);
  try {
    // 1. The bundle, built into our temp dir.
    const uiDir = join(work, 'ui');
    const bundle = await buildUi(uiDir);
    const raw = bundle.files.reduce((s, f) => s + f.bytes, 0);
    const gz = bundle.files.reduce((s, f) => s + f.gzipBytes, 0);

    // The lab, served from that build.
    lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
    service = new LabService(lab, new MigrationJournal(join(work, 'state')));
    server = await WebServer.start(service, { port: 0, uiDir });
    const origin = new URL(server.url).origin;
    // Our teardown closes it on Ctrl-C (Playwright's own handlers would kill it, leaving its temp files).
    browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS, handleSIGINT: false, handleSIGTERM: false, handleSIGHUP: false });

    // 2. Initial loads, each in a fresh context.
    const loads: Load[] = [];
    for (let i = 0; i < LOADS; i++) loads.push(await measureLoad(browser, server.url));

    // 3. A guest, its workload, the page, the migration.
    const svc = service;
    const results = new Map<string, MigrationResult>();
    svc.on('event', (ev) => {
      if (ev.type === 'migration' && ev.event.type === 'result') results.set(ev.id, ev.event.result);
    });
    counter = await EventCounter.open(server);
    const bootT0 = performance.now();
    await svc.execute({ type: 'startGuest', host: 'host-a', guest: { name: GUEST, memoryMiB: MEMORY_MIB } });
    await until(`${GUEST} to be ready`, 180_000, () => guestState(svc.snapshot(), GUEST) === 'ready');
    const bootMs = performance.now() - bootT0;
    await svc.execute({ type: 'setWorkload', guest: GUEST, ...WORKLOAD });

    ctx = await browser.newContext({ viewport: VIEWPORT });
    const page: Page = await ctx.newPage();
    page.on('pageerror', (e) => console.warn(`[page] ${e.message}`));
    await page.goto(server.url);
    await page.getByRole('article', { name: 'Host host-a' }).waitFor({ state: 'visible', timeout: 30_000 });
    await page.getByRole('button', { name: `Guest ${GUEST}` }).waitFor({ timeout: 30_000 });

    const { id } = (await svc.execute({ type: 'migrate', guest: GUEST, to: 'host-b', options: MIGRATION })) as { id: string };
    const migT0 = performance.now();
    await page.getByRole('region', { name: 'Migration', exact: true }).waitFor({ timeout: 30_000 });
    // Pre-copy under way and samples streaming (the destination QEMU takes a few seconds to start).
    await until('samples to stream', 90_000, () => {
      const r = results.get(id);
      if (r) throw new Error(`The migration ended before its samples streamed: ${r.status}${r.failure ? ` (${r.failure})` : ''}: ${r.reason ?? ''}`);
      return counter!.count('migration:sample', migT0) >= 20;
    });
    await page.getByRole('region', { name: 'Counters', exact: true }).locator('dl').waitFor({ timeout: 10_000 });
    const streamingAfterMs = performance.now() - migT0;

    // The timed window: the trace, and what else the machine did meanwhile.
    const qemu = await qemuPids(join(work, 'run'));
    const cpu0 = { machine: machineCpu(), qemu: qemu.reduce((t, p) => t + processCpuSeconds(p), 0) };
    await browser.startTracing(page, { categories: TRACE_CATEGORIES });
    const w0 = performance.now();
    await delay(WINDOW_S * 1000);
    const w1 = performance.now();
    const traceBuf = await browser.stopTracing();
    const cpu1 = { machine: machineCpu(), qemu: qemu.reduce((t, p) => t + processCpuSeconds(p), 0) };
    const machineBusyPct = (100 * (cpu1.machine.busy - cpu0.machine.busy)) / (cpu1.machine.total - cpu0.machine.total);
    const qemuCores = (cpu1.qemu - cpu0.qemu) / ((w1 - w0) / 1000);
    if (process.env.BENCH_UI_TRACE) await writeFile(process.env.BENCH_UI_TRACE, traceBuf);
    if (results.has(id)) problems.push(`the migration ended inside the timed window (${results.get(id)!.status})`);
    const sampleTimes = counter.times('migration:sample', w0, w1);
    const gaps = sampleTimes.slice(1).map((t, i) => t - sampleTimes[i]!);
    const windowEvents = counter.byType(w0, w1);
    const windowEventCount = Object.values(windowEvents).reduce((x, y) => x + y, 0);
    const chartCanvases = await page.evaluate(() => document.querySelectorAll('section[aria-label="Convergence"] canvas').length);

    // Where the time goes (not timed): a CPU profile of the page, still during the migration.
    const cdp = await ctx.newCDPSession(page);
    await cdp.send('Profiler.enable');
    await cdp.send('Profiler.setSamplingInterval', { interval: 250 });
    await cdp.send('Profiler.start');
    await delay(PROFILE_S * 1000);
    const { profile } = (await cdp.send('Profiler.stop')) as unknown as { profile: CpuProfile };
    await cdp.detach();
    if (process.env.BENCH_UI_PROFILE) await writeFile(process.env.BENCH_UI_PROFILE, JSON.stringify(profile));
    if (results.has(id) && !problems.length) problems.push(`the migration ended during the profile (${results.get(id)!.status})`);

    // Cancel it and wait for its result, whatever it is.
    let result: MigrationResult | null = results.get(id) ?? null;
    if (!result) {
      try {
        await svc.execute({ type: 'cancelMigration', id });
      } catch (err) {
        problems.push(`cancelMigration: ${(err as Error).message}`);
        broken.push(`cancelMigration: ${(err as Error).message}`);
      }
      result = await until('the migration result', 120_000, () => results.get(id) ?? null).catch((err: Error) => {
        problems.push(err.message);
        return null;
      });
    }
    const shownResult = result ? await page.getByRole('region', { name: 'Counters', exact: true }).getByRole('status').innerText({ timeout: 10_000 }).catch(() => null) : null;

    // Analysis.
    const frames = analyzeFrames(traceEvents(traceBuf), origin);
    const perFrame = frames.frames.map((f) => f.scriptingMs);
    const perFrameCpu = frames.frames.map((f) => f.scriptingCpuMs);
    const perFrameSpan = frames.frames.map((f) => f.spanScriptingMs);
    const renderPerFrame = frames.frames.map((f) => f.renderingMs);
    const traceSeconds = frames.windowMs / 1000;
    const totalScripting = frames.slices.reduce((s, x) => s + x.selfWall, 0);
    const totalScriptingCpu = frames.slices.reduce((s, x) => s + x.selfCpu, 0);
    const mapper = new BundleMapper(uiDir, origin, ROOT);
    const named = (e: EntryPoint): string => {
      const o = mapper.resolve(e.functionName, e.url, e.lineNumber - 1, e.columnNumber - 1);
      return `${o.name} (${o.file}:${o.line})`;
    };
    // Scripting by entry point: the top-level event and each JS function it entered.
    const entries = new Map<string, { count: number; ms: number; max: number }>();
    const addEntry = (key: string, ms: number) => {
      const x = entries.get(key) ?? { count: 0, ms: 0, max: 0 };
      x.count++;
      x.ms += ms;
      x.max = Math.max(x.max, ms);
      entries.set(key, x);
    };
    for (const s of frames.slices) {
      let inCalls = 0;
      for (const c of s.calls) {
        addEntry(`${s.name === 'FunctionCall' ? 'task' : s.name}: ${named(c.entry)}`, Math.max(0, c.wall));
        inCalls += Math.max(0, c.wall);
      }
      if (s.selfWall - inCalls > 0.05 || s.calls.length === 0) addEntry(`${s.name}${s.calls.length ? ', outside the JS functions it entered (GC, bindings, waits)' : ''}`, Math.max(0, s.selfWall - inCalls));
    }
    const entryRows = [...entries.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 12);
    const prof = summarizeProfile(profile, mapper);
    const topSelf = [...prof.functions].sort((a, b) => b.selfMs - a.selfMs).slice(0, 15);
    const topApp = prof.functions.filter((f) => f.pkg === 'renderer (app code)').sort((a, b) => b.totalMs - a.totalMs).slice(0, 10);

    const samplesPerS = sampleTimes.length / ((w1 - w0) / 1000);
    const load = {
      toLabShownMs: median(loads.map((l) => l.toLabShownMs)),
      inPageLabInsertedMs: median(loads.map((l) => l.inPageLabInsertedMs ?? NaN)),
      domContentLoadedMs: median(loads.map((l) => l.domContentLoadedMs)),
      loadMs: median(loads.map((l) => l.loadMs)),
      firstContentfulPaintMs: median(loads.map((l) => l.firstContentfulPaintMs ?? NaN)),
    };
    const p50 = median(perFrame);
    const p95 = percentile(perFrame, 95);
    const maxFrame = Math.max(...perFrame);
    const p95Cpu = percentile(perFrameCpu, 95);

    console.log(`\nMigLab UI, browser mode, in Chromium ${browser.version()} (headless${process.env.MIGLAB_CHROMIUM ? `, ${CHROMIUM}` : ''}); ${cpus().length} cores; ${LOADS} loads; a ${WINDOW_S} s traced window during a migration\n`);
    console.log('| measure | value | target | |');
    console.log('| --- | ---: | ---: | --- |');
    console.log(`| renderer bundle, .js + .css (${bundle.files.length} files) | ${kB(raw)} raw, ${kB(gz)} gzip | | |`);
    for (const f of bundle.files) console.log(`| &nbsp;&nbsp;${f.file} | ${kB(f.bytes)} raw, ${kB(f.gzipBytes)} gzip | | |`);
    console.log(`| initial load: goto to 'Host host-a' visible, median of ${LOADS} | ${fmt(load.toLabShownMs, 0)} ms | < ${TARGET.loadMs} ms | ${verdict(load.toLabShownMs < TARGET.loadMs)} |`);
    console.log(`| &nbsp;&nbsp;Navigation Timing: domContentLoaded / load, median | ${fmt(load.domContentLoadedMs, 0)} / ${fmt(load.loadMs, 0)} ms | | |`);
    console.log(`| &nbsp;&nbsp;first contentful paint / lab in the DOM (page clock), median | ${fmt(load.firstContentfulPaintMs, 0)} / ${fmt(load.inPageLabInsertedMs, 0)} ms | | |`);
    console.log(`| migration samples received (own WebSocket client) | ${fmt(samplesPerS, 1)} /s (${sampleTimes.length} in ${fmt((w1 - w0) / 1000, 1)} s; gaps median ${fmt(median(gaps), 0)} ms, max ${fmt(Math.max(...gaps), 0)} ms) | ${TARGET.samplesPerS} /s | |`);
    console.log(`| &nbsp;&nbsp;messages the page received (trace: WebSocketReceive) / the client saw | ${frames.webSocketMessages} / ${windowEventCount} | | |`);
    console.log(`| frames the page drew (${frames.frameSource} spans) | ${frames.frames.length} (${fmt(frames.frames.length / traceSeconds, 1)} /s) | | |`);
    console.log(`| main-thread scripting per frame, median | ${fmt(p50, 2)} ms | | |`);
    console.log(`| main-thread scripting per frame, p95 | ${fmt(p95, 2)} ms | < ${TARGET.p95ScriptingMs} ms | ${verdict(p95 < TARGET.p95ScriptingMs)} |`);
    console.log(`| &nbsp;&nbsp;max; all scripting in the window | ${fmt(maxFrame, 2)} ms; ${fmt(totalScripting / traceSeconds, 1)} ms/s (${fmt(totalScripting / traceSeconds / 10, 1)}% of the main thread) | | |`);
    console.log(`| the same as the thread's CPU time (tdur: without the time it waited for a core), median / p95 | ${fmt(median(perFrameCpu), 2)} / ${fmt(p95Cpu, 2)} ms | < ${TARGET.p95ScriptingMs} ms | ${verdict(p95Cpu < TARGET.p95ScriptingMs)} |`);
    console.log(`| &nbsp;&nbsp;max; all scripting in the window | ${fmt(Math.max(...perFrameCpu), 2)} ms; ${fmt(totalScriptingCpu / traceSeconds, 1)} ms/s | | |`);
    console.log(`| style, layout, paint per frame, median / p95 | ${fmt(median(renderPerFrame), 2)} / ${fmt(percentile(renderPerFrame, 95), 2)} ms | | |`);
    console.log(`| machine during the window: all cores busy / QEMU processes | ${fmt(machineBusyPct, 0)}% / ${fmt(qemuCores, 2)} cores | | |`);

    console.log('\ninitial loads (ms):\n');
    console.log('| load | goto to lab visible | lab in DOM (page clock) | FCP | domContentLoaded | load | transferred |');
    console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    loads.forEach((l, i) => console.log(`| ${i + 1} | ${fmt(l.toLabShownMs, 0)} | ${fmt(l.inPageLabInsertedMs, 0)} | ${fmt(l.firstContentfulPaintMs, 0)} | ${fmt(l.domContentLoadedMs, 0)} | ${fmt(l.loadMs, 0)} | ${kB(l.transferBytes)} |`));

    console.log('\nscripting in the traced window, by the JS function each top-level event entered (mapped to the sources; wall time):\n');
    console.log('| entry point | count | total ms | max ms |');
    console.log('| --- | ---: | ---: | ---: |');
    for (const [k, v] of entryRows) console.log(`| ${k} | ${v.count} | ${fmt(v.ms, 1)} | ${fmt(v.max, 2)} |`);

    console.log(`\nCPU profile of the page for ${fmt(prof.durationMs / 1000, 1)} s after the window (sampling every 250 us, wall-clock): JS and the built-ins it called ${fmt(prof.jsMs, 0)} ms (GC ${fmt(prof.gcMs, 0)} ms of it), renderer native work "(program)" ${fmt(prof.programMs, 0)} ms, idle ${fmt(prof.idleMs, 0)} ms\n`);
    console.log('| package (built-ins count to their caller) | self ms | share |');
    console.log('| --- | ---: | ---: |');
    for (const p of prof.packages.slice(0, 8)) console.log(`| ${p.pkg} | ${fmt(p.selfMs, 0)} | ${fmt((100 * p.selfMs) / prof.jsMs, 0)}% |`);
    console.log('\n| function, by self time | where | self ms | total ms |');
    console.log('| --- | --- | ---: | ---: |');
    for (const f of topSelf) console.log(`| ${f.name} | ${f.where} | ${fmt(f.selfMs, 1)} | ${fmt(f.totalMs, 1)} |`);
    console.log('\n| app function, by total time (callees included) | where | self ms | total ms |');
    console.log('| --- | --- | ---: | ---: |');
    for (const f of topApp) console.log(`| ${f.name} | ${f.where} | ${fmt(f.selfMs, 1)} | ${fmt(f.totalMs, 1)} |`);

    console.log(`\nguest ${GUEST}: ${MEMORY_MIB} MiB, dirtying ${WORKLOAD.workingSetMiB} MiB at ${WORKLOAD.rateMBps} MB/s, ready ${fmt(bootMs / 1000, 1)} s after startGuest; migration ${id} to host-b at ${MIGRATION.bandwidthMBps} MB/s, a sample every ${MIGRATION.sampleIntervalMs} ms, streaming ${fmt(streamingAfterMs / 1000, 1)} s after it started`);
    console.log(`events sent to the page in the window: ${Object.entries(windowEvents).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    console.log(`scripting per frame counting only each frame's own AnimationFrame span (as Long Animation Frames would): median ${fmt(median(perFrameSpan), 2)} ms, p95 ${fmt(percentile(perFrameSpan, 95), 2)} ms; top-level events: ${Object.entries(frames.byName).map(([k, v]) => `${k} ${v.count}x ${fmt(v.selfMs, 1)} ms`).join(', ')}; not in any frame (before the first, after the last): ${fmt(frames.unattributedMs, 1)} ms`);
    console.log(`result: ${result ? `${result.status}${result.failure ? ` (${result.failure})` : ''}: ${result.reason ?? 'no reason given'}; the guest runs on ${result.runningOn}` : 'none'}; the page shows: ${shownResult ? JSON.stringify(shownResult.split('\n')[0]) : '-'}`);
    if (chartCanvases < 1) problems.push('the page showed no Convergence chart');
    if (samplesPerS < 0.9 * TARGET.samplesPerS) problems.push(`the engine streamed ${fmt(samplesPerS, 1)} samples/s, not ${TARGET.samplesPerS}: its sampling was held up (all cores ${fmt(machineBusyPct, 0)}% busy)`);
    for (const p of problems) console.log(`note: ${p}`);
    if (chartCanvases < 1) broken.push('the page showed no Convergence chart');
    if (!sampleTimes.length) broken.push('no migration sample reached our WebSocket client in the window');
    if (!frames.frames.length) broken.push('the trace shows no frame the page drew in the window');
    if (!frames.webSocketMessages) broken.push('the trace shows no WebSocket message the page received in the window');
    if (!result) broken.push('the migration gave no result');
    else if (!shownResult) broken.push('the page did not show the migration result');

    const out = resultFile('ui');
    await mkdir(dirname(out), { recursive: true });
    const r2 = (n: number) => Math.round(n * 100) / 100;
    await writeFile(out, JSON.stringify({
      chromium: browser.version(),
      cores: cpus().length,
      targets: TARGET,
      bundle: { files: bundle.files, rawBytes: raw, gzipBytes: gz, buildMs: Math.round(bundle.buildMs), gzipLevel: 6 },
      initialLoad: { runs: loads, median: load, met: load.toLabShownMs < TARGET.loadMs },
      migration: {
        guest: { memoryMiB: MEMORY_MIB, workload: WORKLOAD, bootMs: Math.round(bootMs) }, options: MIGRATION, id,
        streamingAfterMs: Math.round(streamingAfterMs),
        window: {
          seconds: (w1 - w0) / 1000, samples: sampleTimes.length, samplesPerS, gapMedianMs: median(gaps), gapMaxMs: Math.max(...gaps),
          events: windowEvents, pageWebSocketMessages: frames.webSocketMessages, machineBusyPct, qemuCores,
        },
        result: result ? { status: result.status, failure: result.failure, reason: result.reason, runningOn: result.runningOn } : null,
        shownResult,
      },
      scripting: {
        method: 'Chrome trace (devtools.timeline, disabled-by-default-devtools.timeline.frame) of the renderer main thread; a frame = the end of the previous AnimationFrame span to the end of its own; scripting = top-level scripting events (FunctionCall, FireAnimationFrame, GC, ...) minus nested rendering, given to the frame containing their start',
        frameSource: frames.frameSource,
        traceSeconds,
        frames: frames.frames.length,
        perFrameMs: { median: p50, p95, max: maxFrame },
        perFrameCpuMs: { median: median(perFrameCpu), p95: p95Cpu, max: Math.max(...perFrameCpu), met: p95Cpu < TARGET.p95ScriptingMs },
        perFrameSpanOnlyMs: { median: median(perFrameSpan), p95: percentile(perFrameSpan, 95) },
        met: p95 < TARGET.p95ScriptingMs,
        unattributedMs: frames.unattributedMs,
        totalMsPerS: totalScripting / traceSeconds,
        totalCpuMsPerS: totalScriptingCpu / traceSeconds,
        renderingPerFrameMs: { median: median(renderPerFrame), p95: percentile(renderPerFrame, 95) },
        byEventName: frames.byName,
        entryPoints: entryRows.map(([k, v]) => ({ entry: k, ...v })),
        perFrame: frames.frames.map((f) => ({ startMs: r2(f.start), spanStartMs: r2(f.spanStart), endMs: r2(f.end), scriptingMs: r2(f.scriptingMs), scriptingCpuMs: r2(f.scriptingCpuMs), renderingMs: r2(f.renderingMs) })),
      },
      profile: { durationMs: prof.durationMs, jsMs: prof.jsMs, gcMs: prof.gcMs, programMs: prof.programMs, idleMs: prof.idleMs, packages: prof.packages, topSelf, topApp },
      problems,
    }, null, 2));
    console.log(`\nwritten: ${out}`);
  } finally {
    await cleanup();
  }
  const leaked = await leakedSince(before);
  const left = [
    ...leaked.qemu.map((p) => `qemu pid ${p}`), ...leaked.switchd.map((p) => `miglab-switchd pid ${p}`),
    ...leaked.chromium.map((p) => `chromium pid ${p}`), ...leaked.tempDirs,
  ];
  if (left.length) {
    console.error(`LEFT BEHIND: ${left.join(', ')}`);
    process.exitCode = 1;
  } else console.log('clean: no QEMU, no miglab-switchd, no Chromium and no temp dir of this run left behind');
  failSmokeOn([...broken, ...left.map((l) => `left behind: ${l}`)]);
}

await runBenchmark(main);
