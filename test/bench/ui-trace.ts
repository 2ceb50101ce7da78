// Reading what Chromium recorded for ui.bench.ts: the renderer main thread's scripting time per
// frame from a Chrome trace, the functions a CPU profile spent its time in, and the way back from
// the minified bundle to the renderer's sources through the build's (hidden) source map.
import { readFileSync } from 'node:fs';
import { SourceMap, type SourceMapPayload } from 'node:module';
import { dirname, join, relative, resolve as resolvePath } from 'node:path';

export interface TraceEvent {
  name: string;
  cat: string;
  ph: string;
  ts: number; // microseconds
  dur?: number; // microseconds, complete ('X') events: wall time
  tdur?: number; // microseconds: the thread's CPU time
  pid: number;
  tid: number;
  args?: { data?: Record<string, unknown>; name?: string; [k: string]: unknown };
}

/**
 * What counts as scripting: the event names DevTools' Performance panel puts in its "Scripting"
 * category, as far as the recorded categories emit them. On this UI's main thread, during a
 * migration, the ones that occur at top level are:
 *  - FunctionCall: a callback run as a task of its own: the WebSocket's onmessage (api.ts; in this
 *    Chromium a WebSocket message is a FunctionCall, not an EventDispatch), React's scheduler
 *    (performWorkUntilDeadline: passive effects, i.e. the charts' setData), timers' bodies;
 *  - FireAnimationFrame: requestAnimationFrame callbacks: the store's flush (store.ts), and inside
 *    the same event React's render and commit (a microtask), uPlot's redraw;
 *  - MinorGC / MajorGC: DevTools counts garbage collection as scripting too.
 * The rest (EventDispatch, TimerFire, RunMicrotasks, EvaluateScript, ...) are listed so that no
 * scripting-like event is silently dropped. Nested events are never counted twice.
 */
export const SCRIPTING = new Set([
  'FunctionCall', 'EvaluateScript', 'v8.evaluateModule', 'v8.compile', 'v8.compileModule', 'CompileScript', 'CompileCode',
  'TimerFire', 'FireAnimationFrame', 'FireIdleCallback', 'EventDispatch', 'RunMicrotasks', 'XHRReadyStateChange', 'XHRLoad',
  'MajorGC', 'MinorGC', 'GCEvent', 'BlinkGC.AtomicPhase',
]);

/**
 * Rendering work that can run nested inside a script (a forced style recalc or layout when the
 * script reads a size: uPlot and xterm measure their boxes). DevTools counts it as Rendering, not
 * Scripting, so it is taken out of the script's time and counted as the frame's rendering.
 */
export const RENDERING = new Set([
  'UpdateLayoutTree', 'RecalculateStyles', 'Layout', 'PrePaint', 'Paint', 'Layerize', 'UpdateLayer', 'UpdateLayerTree',
  'HitTest', 'ScrollLayer', 'ComputeIntersections', 'IntersectionObserverController::computeIntersections', 'PaintImage',
]);

/** A JS function the engine entered (FunctionCall's data; 1-based line and column). */
export interface EntryPoint {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

/** One top-level scripting event. Times in ms; wall = the event's duration, cpu = its thread time. */
export interface ScriptSlice {
  name: string;
  start: number;
  wall: number;
  cpu: number;
  /** Rendering nested inside it (forced style/layout), wall ms; taken out of self. */
  nestedRendering: number;
  selfWall: number;
  selfCpu: number;
  /** The JS functions it entered at its first level (itself, for a FunctionCall), with their self wall ms. */
  calls: Array<{ entry: EntryPoint; wall: number }>;
}

export interface Frame {
  /** Where this frame's share of the main thread starts: the end of the previous rendering update. */
  start: number;
  /** Chromium's AnimationFrame span: the first task after the previous update to the end of this update. */
  spanStart: number;
  end: number;
  scriptingMs: number;
  scriptingCpuMs: number;
  /** Scripting inside the AnimationFrame span only (what the Long Animation Frames API would list). */
  spanScriptingMs: number;
  /** Style, layout, paint: top-level in the interval plus the forced ones inside scripts. */
  renderingMs: number;
}

export interface FrameAnalysis {
  frameSource: 'AnimationFrame' | 'BeginMainThreadFrame';
  rendererPid: number;
  mainTid: number;
  /** The traced window, ms, from the main thread's first to last event. */
  windowMs: number;
  frames: Frame[];
  /** Scripting before the first frame's span or after the last frame (no frame to give it to). */
  unattributedMs: number;
  slices: ScriptSlice[];
  /** Top-level scripting by event name. */
  byName: Record<string, { count: number; selfMs: number; selfCpuMs: number }>;
  /** WebSocket messages the page received (WebSocketReceive events). */
  webSocketMessages: number;
}

export function traceEvents(buf: Buffer | string): TraceEvent[] {
  const parsed = JSON.parse(typeof buf === 'string' ? buf : buf.toString('utf8')) as { traceEvents?: TraceEvent[] } | TraceEvent[];
  return Array.isArray(parsed) ? parsed : (parsed.traceEvents ?? []);
}

/**
 * The page's renderer main thread: the CrRendererMain that runs scripts from `origin` (the
 * WebServer's), else the busiest CrRendererMain.
 */
function findMainThread(events: TraceEvent[], origin: string): { pid: number; tid: number } {
  const mains = new Set<string>();
  for (const e of events) if (e.ph === 'M' && e.name === 'thread_name' && e.args?.name === 'CrRendererMain') mains.add(`${e.pid}:${e.tid}`);
  const fromOrigin = new Map<string, number>();
  const busy = new Map<string, number>();
  for (const e of events) {
    const k = `${e.pid}:${e.tid}`;
    if (!mains.has(k) || e.ph !== 'X') continue;
    busy.set(k, (busy.get(k) ?? 0) + (e.dur ?? 0));
    const url = e.args?.data?.url;
    if (typeof url === 'string' && url.startsWith(origin)) fromOrigin.set(k, (fromOrigin.get(k) ?? 0) + 1);
  }
  const pick = (m: Map<string, number>) => [...m.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
  const k = pick(fromOrigin) ?? pick(busy);
  if (!k) throw new Error('The trace has no renderer main thread (CrRendererMain) with events: was the page open while tracing?');
  const [pid, tid] = k.split(':').map(Number) as [number, number];
  return { pid, tid };
}

function entryOf(e: TraceEvent): EntryPoint {
  const d = e.args?.data ?? {};
  return {
    functionName: typeof d.functionName === 'string' ? d.functionName : '',
    url: typeof d.url === 'string' ? d.url : '',
    lineNumber: typeof d.lineNumber === 'number' ? d.lineNumber : 0,
    columnNumber: typeof d.columnNumber === 'number' ? d.columnNumber : 0,
  };
}

/**
 * Scripting time per frame on the page's main thread.
 *
 * Frames: Chromium records, in devtools.timeline, an async 'AnimationFrame' span per rendering
 * update of the main thread (the model behind the Long Animation Frames API): from the first task
 * after the previous update (here, the WebSocket message) to the end of this update's style and
 * layout. A frame's share of the main thread is everything from the end of the previous update to
 * the end of its own: the span, plus the tasks that ran after the previous update without being
 * part of a span (React's scheduler flushing passive effects, i.e. the charts' setData, which
 * Chromium does not open a span for). Each scripting event goes to the frame whose share contains
 * its start. Without AnimationFrame spans (an older Chromium), BeginMainThreadFrame marks delimit
 * the frames instead.
 *
 * Scripting: top-level events only (a FunctionCall inside a FireAnimationFrame is not counted
 * twice), minus the rendering nested in them (forced layouts), as DevTools counts it. Wall time
 * (the event's duration, what DevTools shows and what a frame budget is about) and the thread's
 * CPU time (tdur: the same minus the time the thread waited for a core) are both kept.
 */
export function analyzeFrames(events: TraceEvent[], origin: string): FrameAnalysis {
  const { pid, tid } = findMainThread(events, origin);
  const main = events.filter((e) => e.pid === pid && e.tid === tid && e.ph !== 'M');
  main.sort((a, b) => a.ts - b.ts || (b.dur ?? 0) - (a.dur ?? 0));
  const ms = (us: number) => us / 1000;

  // Top-level scripting slices, their nested rendering and the functions they entered; top-level rendering.
  const slices: ScriptSlice[] = [];
  const rendering: Array<{ start: number; dur: number }> = [];
  interface Open { slice: ScriptSlice; endUs: number; renderEndUs: number; callEndUs: number; call: { entry: EntryPoint; wall: number } | null }
  let open: Open | null = null;
  let renderOpenEndUs = -Infinity;
  let webSocketMessages = 0;
  for (const e of main) {
    if (e.name === 'WebSocketReceive') webSocketMessages++;
    if (e.ph !== 'X' || e.dur === undefined) continue;
    if (open && e.ts >= open.endUs) open = null;
    if (open) {
      if (open.call && e.ts >= open.callEndUs) open.call = null;
      if (e.name === 'FunctionCall' && !open.call) {
        open.call = { entry: entryOf(e), wall: ms(e.dur) };
        open.callEndUs = e.ts + e.dur;
        open.slice.calls.push(open.call);
      }
      if (RENDERING.has(e.name) && e.ts >= open.renderEndUs) {
        open.slice.nestedRendering += ms(e.dur);
        open.slice.selfCpu -= ms(e.tdur ?? 0);
        if (open.call) open.call.wall -= ms(e.dur);
        open.renderEndUs = e.ts + e.dur;
      }
      continue;
    }
    if (SCRIPTING.has(e.name)) {
      const slice: ScriptSlice = { name: e.name, start: ms(e.ts), wall: ms(e.dur), cpu: ms(e.tdur ?? e.dur), nestedRendering: 0, selfWall: 0, selfCpu: ms(e.tdur ?? e.dur), calls: [] };
      slices.push(slice);
      open = { slice, endUs: e.ts + e.dur, renderEndUs: -Infinity, callEndUs: -Infinity, call: null };
      if (e.name === 'FunctionCall') {
        open.call = { entry: entryOf(e), wall: ms(e.dur) };
        open.callEndUs = e.ts + e.dur;
        slice.calls.push(open.call);
      }
    } else if (RENDERING.has(e.name) && e.ts >= renderOpenEndUs) {
      rendering.push({ start: ms(e.ts), dur: ms(e.dur) });
      renderOpenEndUs = e.ts + e.dur;
    }
  }
  for (const s of slices) {
    s.selfWall = Math.max(0, s.wall - s.nestedRendering);
    s.selfCpu = Math.max(0, s.selfCpu);
  }

  // Frames.
  let frameSource: FrameAnalysis['frameSource'] = 'AnimationFrame';
  const spans: Array<{ start: number; end: number }> = [];
  let begun: number | null = null;
  for (const e of main) {
    if (e.name !== 'AnimationFrame') continue;
    if (e.ph === 'b') begun = ms(e.ts);
    else if (e.ph === 'e' && begun !== null) {
      spans.push({ start: begun, end: ms(e.ts) });
      begun = null;
    }
  }
  if (spans.length === 0) {
    frameSource = 'BeginMainThreadFrame';
    const marks = main.filter((e) => e.name === 'BeginMainThreadFrame').map((e) => ms(e.ts));
    for (let i = 1; i < marks.length; i++) spans.push({ start: marks[i - 1]!, end: marks[i]! });
  }
  const frames: Frame[] = spans.map((s, i) => ({
    start: i === 0 ? s.start : spans[i - 1]!.end, spanStart: s.start, end: s.end,
    scriptingMs: 0, scriptingCpuMs: 0, spanScriptingMs: 0, renderingMs: 0,
  }));
  /** The frame whose share (start, end] contains t (the first frame: [start, end]). */
  const frameAt = (t: number): Frame | undefined => {
    let lo = 0;
    let hi = frames.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (frames[mid]!.end < t) lo = mid + 1;
      else hi = mid - 1;
    }
    const f = frames[lo];
    return f && t >= f.start ? f : undefined;
  };
  let unattributedMs = 0;
  for (const s of slices) {
    const f = frameAt(s.start);
    if (!f) {
      unattributedMs += s.selfWall;
      continue;
    }
    f.scriptingMs += s.selfWall;
    f.scriptingCpuMs += s.selfCpu;
    f.renderingMs += s.nestedRendering;
    if (s.start >= f.spanStart) f.spanScriptingMs += s.selfWall;
  }
  for (const r of rendering) {
    const f = frameAt(r.start);
    if (f) f.renderingMs += r.dur;
  }

  const byName: FrameAnalysis['byName'] = {};
  for (const s of slices) {
    const t = (byName[s.name] ??= { count: 0, selfMs: 0, selfCpuMs: 0 });
    t.count++;
    t.selfMs += s.selfWall;
    t.selfCpuMs += s.selfCpu;
  }
  const first = main[0]?.ts ?? 0;
  const last = main.reduce((m, e) => Math.max(m, e.ts + (e.dur ?? 0)), first);
  return { frameSource, rendererPid: pid, mainTid: tid, windowMs: ms(last - first), frames, unattributedMs, slices, byName, webSocketMessages };
}

// ---- percentiles ---------------------------------------------------------------------------------

/** Nearest-rank percentile (p in 0..100); NaN for no values. */
export function percentile(xs: number[], p: number): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const rank = Math.max(1, Math.ceil((p / 100) * v.length));
  return v[Math.min(v.length, rank) - 1]!;
}

export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const mid = v.length / 2;
  return v.length % 2 ? v[Math.floor(mid)]! : (v[mid - 1]! + v[mid]!) / 2;
}

// ---- from the bundle back to the sources ---------------------------------------------------------------

export interface Origin {
  /** The original name where the source map has one, else the minified one. */
  name: string;
  /** The source file, relative to the repository (node_modules/... for libraries); '(native)' for the browser's own. */
  file: string;
  line: number;
}

interface LoadedMap {
  map: SourceMap;
  /** The generated code, by line. */
  lines: string[];
  dir: string;
}

/** Maps positions in the served bundle (by URL) to the sources, with the build's .map files. */
export class BundleMapper {
  private readonly maps = new Map<string, LoadedMap | null>();

  constructor(
    private readonly uiDir: string,
    private readonly origin: string,
    private readonly repoRoot: string,
  ) {}

  private load(url: string): LoadedMap | null {
    if (this.maps.has(url)) return this.maps.get(url)!;
    let got: LoadedMap | null = null;
    if (url.startsWith(this.origin)) {
      try {
        const file = join(this.uiDir, new URL(url).pathname);
        const payload = JSON.parse(readFileSync(`${file}.map`, 'utf8')) as SourceMapPayload;
        got = { map: new SourceMap(payload), lines: readFileSync(file, 'utf8').split('\n'), dir: dirname(file) };
      } catch {
        got = null;
      }
    }
    this.maps.set(url, got);
    return got;
  }

  /**
   * `line`/`column` 0-based, as in CPU profiles. The function's minified name is looked for just
   * before the position (V8 gives the position of its parameter list), and that identifier's own
   * mapping gives the original name.
   */
  resolve(functionName: string, url: string, line: number, column: number): Origin {
    if (!url) return { name: functionName || '(anonymous)', file: '(native)', line: 0 };
    const fallback: Origin = { name: functionName || '(anonymous)', file: url.startsWith(this.origin) ? url.slice(this.origin.length) : url, line: line + 1 };
    const m = this.load(url);
    if (!m) return fallback;
    const at = m.map.findOrigin(line + 1, column + 1) as { fileName?: string; lineNumber?: number };
    if (!at.fileName) return fallback;
    let name = functionName || '(anonymous)';
    const ident = functionName.split('.').at(-1) ?? '';
    if (/^[\w$]+$/.test(ident)) {
      const text = m.lines[line] ?? '';
      const from = Math.max(0, column - 400);
      const before = text.slice(from, column + 1);
      const re = new RegExp(`(?<![\\w$])${ident.replace(/\$/g, '\\$')}(?![\\w$])`, 'g');
      let idx = -1;
      for (let r = re.exec(before); r; r = re.exec(before)) idx = r.index;
      if (idx >= 0) {
        const named = m.map.findOrigin(line + 1, from + idx + 1) as { name?: string };
        if (named.name) name = functionName === ident ? named.name : `${functionName.slice(0, -ident.length)}${named.name}`;
      }
    }
    return { name, file: this.shortFile(at.fileName, m.dir), line: at.lineNumber ?? 0 };
  }

  private shortFile(f: string, mapDir: string): string {
    const abs = f.startsWith('file://') ? new URL(f).pathname : resolvePath(mapDir, f);
    const p = relative(this.repoRoot, abs);
    const nm = p.lastIndexOf('node_modules/');
    return nm >= 0 ? p.slice(nm) : p;
  }
}

/** The package a source file belongs to (node_modules/<pkg>), or the app's own sources. */
export function packageOf(file: string): string {
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(file);
  if (m) return m[1]!;
  if (file.startsWith('renderer/')) return 'renderer (app code)';
  if (file.startsWith('electron/')) return 'electron/engine (shared with the engine)';
  return file.startsWith('(') ? file : 'other';
}

// ---- CPU profile (CDP Profiler.stop) ------------------------------------------------------------------

export interface CpuProfile {
  nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number }; children?: number[] }>;
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface ProfileRow {
  name: string;
  /** Source file and line; for a browser built-in (canvas, DOM), the JS function that called it. */
  where: string;
  /** The package its time counts to (a built-in's: its caller's). */
  pkg: string;
  selfMs: number;
  totalMs: number;
}

export interface ProfileSummary {
  durationMs: number;
  /** Time in JS, in the built-ins it called, and in GC (not idle, not "(program)"). */
  jsMs: number;
  gcMs: number;
  idleMs: number;
  /** "(program)": the renderer's own native work outside JS (style, layout, paint, IPC). */
  programMs: number;
  functions: ProfileRow[];
  packages: Array<{ pkg: string; selfMs: number }>;
}

const SPECIAL = new Set(['(root)', '(idle)', '(program)', '(garbage collector)']);

/**
 * Self and total time per function (mapped to the sources), and self time per package, a
 * built-in's time going to the package of the JS that called it (uPlot's canvas calls count to
 * uPlot). A sample stands for the time until the next one.
 */
export function summarizeProfile(p: CpuProfile, mapper: BundleMapper): ProfileSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];

  interface Info { key: string; name: string; where: string; pkg: string }
  const infoOf = new Map<number, Info>();
  const info = (id: number): Info => {
    let i = infoOf.get(id);
    if (i) return i;
    const cf = byId.get(id)!.callFrame;
    if (SPECIAL.has(cf.functionName)) {
      i = { key: cf.functionName, name: cf.functionName, where: '', pkg: cf.functionName === '(garbage collector)' ? '(gc)' : cf.functionName };
    } else if (!cf.url) {
      // A built-in: named after the JS function that called it.
      const up = parent.get(id);
      const caller = up !== undefined && !SPECIAL.has(byId.get(up)!.callFrame.functionName) ? info(up) : null;
      const where = caller ? `built-in, called from ${caller.name} (${caller.where.replace(/^built-in, called from /, '')})` : 'built-in';
      i = { key: `${cf.functionName}|${where}`, name: cf.functionName || '(anonymous)', where, pkg: caller?.pkg ?? '(browser built-ins)' };
    } else {
      const o = mapper.resolve(cf.functionName, cf.url, cf.lineNumber, cf.columnNumber);
      const where = `${o.file}:${o.line}`;
      i = { key: `${o.name}|${where}`, name: o.name, where, pkg: packageOf(o.file) };
    }
    infoOf.set(id, i);
    return i;
  };

  const rows = new Map<string, ProfileRow>();
  const row = (i: Info) => {
    let r = rows.get(i.key);
    if (!r) rows.set(i.key, (r = { name: i.name, where: i.where, pkg: i.pkg, selfMs: 0, totalMs: 0 }));
    return r;
  };
  let idle = 0;
  let program = 0;
  let gc = 0;
  for (let i = 0; i < samples.length; i++) {
    const us = deltas[i + 1] ?? 0;
    const id = samples[i]!;
    const fn = byId.get(id)!.callFrame.functionName;
    if (fn === '(idle)') idle += us;
    else if (fn === '(program)') program += us;
    else if (fn === '(garbage collector)') gc += us;
    if (fn === '(idle)' || fn === '(program)' || fn === '(root)') continue;
    row(info(id)).selfMs += us / 1000;
    // Total time: each function once per sample, however deep it recurses.
    const seen = new Set<string>();
    for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
      if (byId.get(n)!.callFrame.functionName === '(root)') continue;
      const inf = info(n);
      if (seen.has(inf.key)) continue;
      seen.add(inf.key);
      row(inf).totalMs += us / 1000;
    }
  }
  const functions = [...rows.values()];
  const pk = new Map<string, number>();
  for (const r of functions) pk.set(r.pkg, (pk.get(r.pkg) ?? 0) + r.selfMs);
  return {
    durationMs: (p.endTime - p.startTime) / 1000,
    jsMs: functions.reduce((s, r) => s + r.selfMs, 0),
    gcMs: gc / 1000, idleMs: idle / 1000, programMs: program / 1000,
    functions,
    packages: [...pk.entries()].map(([pkg, selfMs]) => ({ pkg, selfMs })).filter((x) => x.selfMs > 0).sort((a, b) => b.selfMs - a.selfMs),
  };
}
