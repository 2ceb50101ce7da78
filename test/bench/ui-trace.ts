// Reading what Chromium recorded for ui.bench.ts: the renderer main thread's scripting time per
// frame from a Chrome trace, the functions a CPU profile spent its time in, and the way back from
// the minified bundle to the renderer's sources through the build's (hidden) source map.
import { readFileSync } from 'node:fs';
import { SourceMap, type SourceMapPayload } from 'node:module';
import { join, relative } from 'node:path';

export interface TraceEvent {
  name: string;
  cat: string;
  ph: string;
  ts: number; // microseconds
  dur?: number; // microseconds, complete ('X') events
  pid: number;
  tid: number;
  args?: { data?: Record<string, unknown>; name?: string; [k: string]: unknown };
}

/**
 * What counts as scripting: the names DevTools' Performance panel puts in its "Scripting"
 * category, as far as the categories we record emit them. In the traces of this UI the ones that
 * actually occur on the main thread are EventDispatch (the WebSocket 'message' handler),
 * FireAnimationFrame (the store's one update per frame: React's render and commit, the charts'
 * setData), FunctionCall (callbacks that arrive outside those: timers' bodies, ResizeObserver,
 * the scheduler's MessageChannel tasks, uPlot's microtask), TimerFire and RunMicrotasks; the others
 * are here so that nothing scripting-like is silently dropped (e.g. GC, which DevTools counts as
 * scripting, and script evaluation during a load).
 */
export const SCRIPTING = new Set([
  'FunctionCall', 'EvaluateScript', 'v8.evaluateModule', 'v8.compile', 'v8.compileModule', 'CompileScript', 'CompileCode',
  'TimerFire', 'FireAnimationFrame', 'FireIdleCallback', 'EventDispatch', 'RunMicrotasks', 'XHRReadyStateChange', 'XHRLoad',
  'MajorGC', 'MinorGC', 'GCEvent', 'BlinkGC.AtomicPhase',
]);

/**
 * Rendering work that can run nested inside a script (a forced style recalc or layout when the
 * script reads a size: uPlot reads clientWidth, xterm measures its cells). DevTools counts it as
 * Rendering, not Scripting, so it is taken out of the script's time and reported on its own.
 */
export const RENDERING = new Set([
  'UpdateLayoutTree', 'RecalculateStyles', 'Layout', 'PrePaint', 'Paint', 'Layerize', 'UpdateLayer', 'UpdateLayerTree',
  'HitTest', 'ScrollLayer', 'ComputeIntersections', 'IntersectionObserverController::computeIntersections', 'PaintImage',
]);

/** Where a script started: the first JS function the engine called (FunctionCall's data). */
export interface EntryPoint {
  functionName: string;
  url: string;
  lineNumber: number; // 1-based in trace events
  columnNumber: number; // 1-based in trace events
}

export interface ScriptSlice {
  name: string;
  start: number; // ms, trace clock
  dur: number; // ms, whole event
  /** ms of rendering work nested inside it (forced style/layout). */
  nestedRendering: number;
  /** ms: dur - nestedRendering. */
  self: number;
  /** EventDispatch's event type, when it is one. */
  eventType: string | null;
  entry: EntryPoint | null;
}

export interface Frame {
  start: number; // ms
  end: number; // ms
  scriptingMs: number;
  /** Style, layout, paint: top-level in the frame plus the forced ones inside scripts. */
  renderingMs: number;
  scripts: number;
}

export interface FrameAnalysis {
  /** How frames were delimited: Chromium's AnimationFrame spans, or BeginMainThreadFrame to BeginMainThreadFrame. */
  frameSource: 'AnimationFrame' | 'BeginMainThreadFrame';
  rendererPid: number;
  mainTid: number;
  /** The traced window, ms, from the main thread's first to last event. */
  windowMs: number;
  frames: Frame[];
  /** Scripting that ran in no frame (a task that did not lead to a rendering update). */
  outsideFramesMs: number;
  slices: ScriptSlice[];
  /** Count of each scripting event name, top-level only. */
  topLevelByName: Record<string, { count: number; selfMs: number }>;
  /** WebSocket 'message' events the page dispatched. */
  messageDispatches: number;
}

export function traceEvents(buf: Buffer | string): TraceEvent[] {
  const parsed = JSON.parse(typeof buf === 'string' ? buf : buf.toString('utf8')) as { traceEvents?: TraceEvent[] } | TraceEvent[];
  return Array.isArray(parsed) ? parsed : (parsed.traceEvents ?? []);
}

/**
 * The page's renderer main thread: the CrRendererMain whose scripts come from `origin` (the
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

function entryOf(e: TraceEvent): EntryPoint | null {
  const d = e.args?.data;
  if (e.name !== 'FunctionCall' || !d) return null;
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
 * Frames: Chromium 12x+ records, in devtools.timeline, an async 'AnimationFrame' span per rendering
 * update of the main thread (the model behind the Long Animation Frames API): it opens at the start
 * of the first task after the previous update (the WebSocket message, the timer, ...) and closes
 * when this update's style, layout and paint are done. Everything the main thread did to produce
 * that frame lies inside it, so a scripting event is given to the span that contains its start.
 * Without such spans (an older Chromium), frames run from one 'BeginMainThreadFrame' to the next.
 *
 * Scripting: top-level events only (a FunctionCall inside an EventDispatch is not counted twice),
 * minus the rendering work nested in them (forced layouts), as DevTools counts it.
 */
export function analyzeFrames(events: TraceEvent[], origin: string): FrameAnalysis {
  const { pid, tid } = findMainThread(events, origin);
  const main = events.filter((e) => e.pid === pid && e.tid === tid && e.ph !== 'M');
  main.sort((a, b) => a.ts - b.ts || (b.dur ?? 0) - (a.dur ?? 0));
  const ms = (us: number) => us / 1000;

  // Top-level scripting slices, their nested rendering, their entry point; top-level rendering.
  const slices: ScriptSlice[] = [];
  const rendering: Array<{ start: number; dur: number }> = [];
  let open: { slice: ScriptSlice; endUs: number; renderEndUs: number } | null = null;
  let renderOpenEndUs = -Infinity;
  let messageDispatches = 0;
  for (const e of main) {
    if (e.ph !== 'X' || e.dur === undefined) continue;
    if (e.name === 'EventDispatch' && e.args?.data?.type === 'message') messageDispatches++;
    if (open && e.ts >= open.endUs) open = null;
    if (open) {
      // Inside a script: note its first FunctionCall and its forced rendering work.
      if (!open.slice.entry) open.slice.entry = entryOf(e);
      if (RENDERING.has(e.name) && e.ts >= open.renderEndUs) {
        open.slice.nestedRendering += ms(e.dur);
        open.renderEndUs = e.ts + e.dur;
      }
      continue;
    }
    if (SCRIPTING.has(e.name)) {
      const slice: ScriptSlice = {
        name: e.name, start: ms(e.ts), dur: ms(e.dur), nestedRendering: 0, self: 0,
        eventType: e.name === 'EventDispatch' && typeof e.args?.data?.type === 'string' ? e.args.data.type : null,
        entry: entryOf(e),
      };
      slices.push(slice);
      open = { slice, endUs: e.ts + e.dur, renderEndUs: -Infinity };
    } else if (RENDERING.has(e.name) && e.ts >= renderOpenEndUs) {
      rendering.push({ start: ms(e.ts), dur: ms(e.dur) });
      renderOpenEndUs = e.ts + e.dur;
    }
  }
  for (const s of slices) s.self = Math.max(0, s.dur - s.nestedRendering);

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
    // A frame's work: what ran since the previous frame began, up to this one's own update (which
    // follows its BeginMainThreadFrame, so each span ends where the next frame's begins).
    for (let i = 1; i < marks.length; i++) spans.push({ start: marks[i - 1]!, end: marks[i]! });
  }
  const frames: Frame[] = spans.map((s) => ({ start: s.start, end: s.end, scriptingMs: 0, renderingMs: 0, scripts: 0 }));
  const frameAt = (t: number): Frame | undefined => {
    // Binary search: the last frame starting at or before t, if t is inside it.
    let lo = 0;
    let hi = frames.length - 1;
    let best = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (frames[mid]!.start <= t) {
        best = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    const f = best >= 0 ? frames[best] : undefined;
    return f && t <= f.end ? f : undefined;
  };
  let outsideFramesMs = 0;
  for (const s of slices) {
    const f = frameAt(s.start);
    if (f) {
      f.scriptingMs += s.self;
      f.renderingMs += s.nestedRendering;
      f.scripts++;
    } else outsideFramesMs += s.self;
  }
  for (const r of rendering) {
    const f = frameAt(r.start);
    if (f) f.renderingMs += r.dur;
  }

  const topLevelByName: FrameAnalysis['topLevelByName'] = {};
  for (const s of slices) {
    const t = (topLevelByName[s.name] ??= { count: 0, selfMs: 0 });
    t.count++;
    t.selfMs += s.self;
  }
  const first = main[0]?.ts ?? 0;
  const last = main.reduce((m, e) => Math.max(m, e.ts + (e.dur ?? 0)), first);
  return { frameSource, rendererPid: pid, mainTid: tid, windowMs: ms(last - first), frames, outsideFramesMs, slices, topLevelByName, messageDispatches };
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
  /** The source file, relative to the repository (node_modules/... for libraries). */
  file: string;
  line: number;
}

/** Maps positions in the served bundle (by URL) to the sources, with the build's .map files. */
export class BundleMapper {
  private readonly maps = new Map<string, { map: SourceMap; lines: string[] } | null>();

  constructor(
    private readonly uiDir: string,
    private readonly origin: string,
    private readonly repoRoot: string,
  ) {}

  private load(url: string): { map: SourceMap; lines: string[] } | null {
    if (this.maps.has(url)) return this.maps.get(url)!;
    let got: { map: SourceMap; lines: string[] } | null = null;
    if (url.startsWith(this.origin)) {
      try {
        const file = join(this.uiDir, new URL(url).pathname);
        const payload = JSON.parse(readFileSync(`${file}.map`, 'utf8')) as SourceMapPayload;
        got = { map: new SourceMap(payload), lines: readFileSync(file, 'utf8').split('\n') };
      } catch {
        got = null;
      }
    }
    this.maps.set(url, got);
    return got;
  }

  /**
   * `line`/`column` 0-based, as in CPU profiles. The minified function name is looked for just
   * before the position (V8 gives the position of a function's parameter list), and its own
   * mapping gives the original name.
   */
  resolve(functionName: string, url: string, line: number, column: number): Origin {
    const fallback: Origin = { name: functionName || '(anonymous)', file: url.startsWith(this.origin) ? url.slice(this.origin.length) : url || '(native)', line: line + 1 };
    const m = this.load(url);
    if (!m) return fallback;
    const at = m.map.findOrigin(line + 1, column + 1) as { fileName?: string; lineNumber?: number; name?: string };
    if (!at.fileName) return fallback;
    let name = functionName || '(anonymous)';
    const text = m.lines[line] ?? '';
    if (functionName && /^[\w$]+$/.test(functionName)) {
      const before = text.slice(Math.max(0, column - 400), column + 1);
      const re = new RegExp(`(?<![\\w$])${functionName.replace(/\$/g, '\\$')}(?![\\w$])`, 'g');
      let idx = -1;
      for (let r = re.exec(before); r; r = re.exec(before)) idx = r.index;
      if (idx >= 0) {
        const col = Math.max(0, column - 400) + idx;
        const named = m.map.findOrigin(line + 1, col + 1) as { name?: string };
        if (named.name) name = named.name;
      }
    }
    return { name, file: this.shortFile(at.fileName), line: at.lineNumber ?? 0 };
  }

  private shortFile(f: string): string {
    let p = f.replace(/^file:\/\//, '');
    if (p.startsWith('/')) p = relative(this.repoRoot, p);
    p = p.replace(/^(\.\.\/)+/, '');
    const nm = p.lastIndexOf('node_modules/');
    return nm >= 0 ? p.slice(nm) : p;
  }
}

/** The package a source file belongs to (node_modules/<pkg>), or the app's own sources. */
export function packageOf(file: string): string {
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(file);
  if (m) return m[1]!;
  if (file.startsWith('renderer/')) return 'renderer (app code)';
  if (file.startsWith('electron/')) return 'electron/engine (shared)';
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
  file: string;
  line: number;
  pkg: string;
  selfMs: number;
  totalMs: number;
}

export interface ProfileSummary {
  durationMs: number;
  /** Time in JS and GC (not idle, not "(program)", i.e. the browser's own native work). */
  jsMs: number;
  gcMs: number;
  idleMs: number;
  programMs: number;
  functions: ProfileRow[];
  packages: Array<{ pkg: string; selfMs: number }>;
}

/**
 * Self and total time per function (mapped to the sources), and self time per package. A sample
 * stands for the time until the next one.
 */
export function summarizeProfile(p: CpuProfile, mapper: BundleMapper): ProfileSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  const selfUs = new Map<number, number>();
  const totalByKey = new Map<string, number>();
  const originOf = new Map<number, { key: string; o: Origin }>();
  const origin = (id: number) => {
    let o = originOf.get(id);
    if (!o) {
      const cf = byId.get(id)!.callFrame;
      const r = mapper.resolve(cf.functionName, cf.url, cf.lineNumber, cf.columnNumber);
      o = { key: `${r.name}|${r.file}|${r.line}`, o: r };
      originOf.set(id, o);
    }
    return o;
  };
  for (let i = 0; i < samples.length; i++) {
    const dt = deltas[i + 1] ?? 0;
    const id = samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
    // Total time: each function once per sample, however deep it recurses.
    const seen = new Set<string>();
    for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
      const cf = byId.get(n)!.callFrame;
      if (cf.functionName === '(root)') continue;
      const { key } = origin(n);
      if (seen.has(key)) continue;
      seen.add(key);
      totalByKey.set(key, (totalByKey.get(key) ?? 0) + dt);
    }
  }
  const rows = new Map<string, ProfileRow>();
  let idle = 0;
  let program = 0;
  let gc = 0;
  for (const [id, us] of selfUs) {
    const cf = byId.get(id)!.callFrame;
    if (cf.functionName === '(idle)') idle += us;
    else if (cf.functionName === '(program)') program += us;
    else if (cf.functionName === '(garbage collector)') gc += us;
    if (['(idle)', '(program)', '(root)'].includes(cf.functionName)) continue;
    const { key, o } = origin(id);
    const row = rows.get(key) ?? { name: o.name, file: o.file, line: o.line, pkg: cf.functionName === '(garbage collector)' ? '(gc)' : packageOf(o.file), selfMs: 0, totalMs: (totalByKey.get(key) ?? 0) / 1000 };
    row.selfMs += us / 1000;
    rows.set(key, row);
  }
  // Functions that only ever appear as callers.
  for (const [key, us] of totalByKey) {
    if (rows.has(key)) continue;
    const [name, file, line] = key.split('|') as [string, string, string];
    rows.set(key, { name, file, line: Number(line), pkg: packageOf(file), selfMs: 0, totalMs: us / 1000 });
  }
  const functions = [...rows.values()];
  const pk = new Map<string, number>();
  for (const r of functions) pk.set(r.pkg, (pk.get(r.pkg) ?? 0) + r.selfMs);
  const durationMs = (p.endTime - p.startTime) / 1000;
  const jsMs = functions.reduce((s, r) => s + r.selfMs, 0);
  return {
    durationMs, jsMs, gcMs: gc / 1000, idleMs: idle / 1000, programMs: program / 1000,
    functions,
    packages: [...pk.entries()].map(([pkg, selfMs]) => ({ pkg, selfMs })).filter((x) => x.selfMs > 0).sort((a, b) => b.selfMs - a.selfMs),
  };
}
