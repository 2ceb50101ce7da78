// One migration as it happens: the phase timeline, every pre-copy round, the remaining data
// converging (or not) towards what fits in the downtime budget, and the controls that act on it.
import { memo, useMemo, useRef, useState } from 'react';
import uPlot from 'uplot';
import { formatBytes, formatBytesRate, formatMs, MIGRATION_PHASES, type DowntimePolicyReport, type MigrationResult } from '../../../electron/engine/api/contract';
import type { LabConnection } from '../api';
import { describeStep, stepMarkers, switchoverThreshold, zeroBasedRange, type StepMarker } from '../charts/figures';
import { UPlotChart } from '../charts/UPlotChart';
import type { MigrationTrack } from '../store';
import { describeLink, LinkPanel } from './LinkPanel';

const MB = 1e6;

/** Bytes (or bytes/s) in MB for a chart; a figure QEMU did not report stays null, a gap. */
const inMB = (v: number | null): number | null => (v === null ? null : v / MB);

function Timeline({ t }: { t: MigrationTrack }) {
  const total = Math.max(1, t.result?.wallTimeMs ?? t.lastAtMs);
  return (
    <section aria-label="Timeline" className="panel">
      <h3>Timeline <span className="detail">({t.state})</span></h3>
      <ol className="timeline">
        {MIGRATION_PHASES.map((name) => {
          const span = t.phases.find((p) => p.name === name);
          const done = span && span.endMs !== null;
          const width = span ? Math.max(2, (((span.endMs ?? total) - span.startMs) / total) * 100) : 0;
          return (
            <li key={name} className={`phase ${span ? (done ? 'done' : 'active') : 'todo'}`} aria-label={`Phase ${name}`}>
              <span className="name">{name}</span>
              <span className="bar" style={{ width: `${width}%` }} />
              <span className="detail">{span ? formatMs((span.endMs ?? total) - span.startMs) : ''}</span>
            </li>
          );
        })}
      </ol>
      {t.checks.length > 0 && (
        <details>
          <summary>Pre-flight checks ({t.checks.filter((c) => c.status !== 'pass').length} not passed)</summary>
          <ul>
            {t.checks.map((c) => (
              <li key={c.name} className={`check ${c.status}`}>
                {c.status}: {c.message}
              </li>
            ))}
          </ul>
        </details>
      )}
    </section>
  );
}

/** The Rounds chart: bytes each pass sent (bars), and the rates against it. */
export const roundsChartOptions = (width: number): Omit<uPlot.Options, 'width' | 'height'> => ({
  title: undefined,
  // Bars from zero: an axis that hugs the data makes small differences look large.
  scales: { x: { time: false }, mb: { range: (_u, lo, hi) => zeroBasedRange(lo, hi) }, rate: { range: (_u, lo, hi) => zeroBasedRange(lo, hi) } },
  axes: [{ label: 'pass', stroke: '#888', incrs: [1, 2, 5, 10, 20, 50], values: (_u, vals) => vals.map((v) => String(v)) }, { scale: 'mb', label: 'MB sent', stroke: '#888' }, { scale: 'rate', side: 1, label: 'MB/s', stroke: '#888', grid: { show: false } }],
  series: [
    { label: 'pass' },
    { label: 'sent (MB)', scale: 'mb', stroke: '#4a90d9', fill: 'rgba(74,144,217,0.4)', paths: uPlot.paths.bars!({ size: [0.6, width / 8] }) },
    { label: 'dirty rate (MB/s)', scale: 'rate', stroke: '#d9534f', width: 2 },
    { label: 'link (MB/s)', scale: 'rate', stroke: '#5cb85c', width: 2 },
    { label: 'bandwidth limit (MB/s)', scale: 'rate', stroke: '#f0ad4e', dash: [6, 4], width: 1.5 },
  ],
});

function Rounds({ t }: { t: MigrationTrack }) {
  const data = useMemo<uPlot.AlignedData>(
    () => [
      t.passes.map((p) => p.pass),
      t.passes.map((p) => inMB(p.bytes)),
      t.passes.map((p) => inMB(p.dirtyRateBps)),
      t.passes.map((p) => inMB(p.throughputBps)),
      t.passes.map(() => t.params?.bandwidthMBps ?? null),
    ],
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [t.passes.length, t.params?.bandwidthMBps],
  );
  return (
    <section aria-label="Rounds" className="panel">
      <h3>Rounds <span className="detail">{t.passes.length} pass{t.passes.length === 1 ? '' : 'es'} (QEMU MIGRATION_PASS)</span></h3>
      <UPlotChart identity={t.id} options={roundsChartOptions} data={data} />
      <table className="passes">
        <thead>
          <tr><th>pass</th><th>sent</th><th>took</th><th>dirty rate</th><th>link</th></tr>
        </thead>
        <tbody>
          {t.passes.map((p) => (
            <tr key={p.pass}>
              <td>{p.pass}</td><td>{formatBytes(p.bytes)}</td><td>{formatMs(p.durationMs)}</td><td>{formatBytesRate(p.dirtyRateBps)}</td><td>{formatBytesRate(p.throughputBps)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

/**
 * Draws each downtime-policy step as a vertical line on the chart, with a label whose tooltip is
 * the policy's reason. The markers are read at each draw, so new steps need no new chart.
 */
function stepMarkerPlugin(markers: () => StepMarker[]): uPlot.Plugin {
  return {
    hooks: {
      draw: (u) => {
        const [lo, hi] = [u.scales.x!.min, u.scales.x!.max];
        for (const el of [...u.over.querySelectorAll('.step-marker')]) el.remove();
        if (lo == null || hi == null) return;
        for (const m of markers()) {
          // A step after the last sample sits at the right edge.
          const x = Math.min(Math.max(m.x, lo), hi);
          const colour = m.action === 'raise' ? '#f0ad4e' : '#ff7043';
          const cx = Math.round(u.valToPos(x, 'x', true));
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = colour;
          ctx.lineWidth = 2;
          ctx.setLineDash([3, 3]);
          ctx.beginPath();
          ctx.moveTo(cx, u.bbox.top);
          ctx.lineTo(cx, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.restore();
          const tag = document.createElement('span');
          tag.className = `step-marker ${m.action}`;
          tag.style.left = `${u.valToPos(x, 'x')}px`;
          tag.textContent = m.label;
          tag.title = m.title;
          u.over.appendChild(tag);
        }
      },
    },
  };
}

function Convergence({ t }: { t: MigrationTrack }) {
  const th = switchoverThreshold(t.samples.throughput, t.params);
  const thresholdMB = th === null ? null : th.bytes / MB;
  const markers = stepMarkers(t.downtimeSteps);
  const current = useRef(markers);
  current.current = markers;
  const n = t.samples.t.length;
  const data = useMemo<uPlot.AlignedData>(
    () => [t.samples.t.slice(), t.samples.remaining.map(inMB), t.samples.t.map(() => thresholdMB)],
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [n, t.lastAtMs, thresholdMB, markers.length], // the length stops changing once the ring buffer is full
  );
  const options = (): Omit<uPlot.Options, 'width' | 'height'> => ({
    scales: { x: { time: false } },
    axes: [{ label: 'seconds', stroke: '#888' }, { label: 'MB remaining', stroke: '#888' }],
    series: [
      { label: 's' },
      { label: 'remaining (MB, QEMU query-migrate)', stroke: '#4a90d9', width: 2, fill: 'rgba(74,144,217,0.15)' },
      { label: "switchover threshold (MB, computed: QEMU's measured throughput × downtime-limit)", stroke: '#f0ad4e', dash: [6, 4], width: 2 },
    ],
    plugins: [stepMarkerPlugin(() => current.current)],
  });
  const rateMBps = th === null ? null : Number((th.rateBps / MB).toFixed(1));
  return (
    <section aria-label="Convergence" className="panel">
      <h3>
        Convergence{' '}
        {th === null ? (
          <span className="detail">switchover threshold unknown until QEMU's downtime-limit is set</span>
        ) : (
          <span className="detail" aria-label="Switchover threshold" title={th.how}>
            switchover once remaining data fits in {th.downtimeLimitMs} ms at {rateMBps} MB/s ≈ {thresholdMB!.toFixed(0)} MB
            {th.rateSource === 'measured' ? " (QEMU's measured throughput)" : ' (the configured bandwidth: QEMU has not measured its throughput yet)'}
          </span>
        )}
      </h3>
      <UPlotChart identity={t.id} options={options} data={data} />
      {markers.length > 0 && (
        <ol className="step-markers" aria-label="Downtime policy steps">
          {t.downtimeSteps.map(({ atMs, step }, i) => (
            <li key={i} className={`step ${step.action}`} title={step.why}>
              {markers[i]!.label} <span className="detail">({describeStep(step, atMs)})</span>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}

const STRIP_CELLS = 128;
const PASS_COLOURS = ['#4a90d9', '#f0ad4e', '#d9534f', '#9b59b6', '#5cb85c'];

/**
 * The guest's RAM as a strip of cells: pass 1 fills it, later passes re-send part of it. The
 * amounts are QEMU's (bytes per pass against the RAM size); where in RAM those pages lie QEMU does
 * not say, so each pass is drawn as a share, not as page positions.
 */
function MemoryStrip({ t }: { t: MigrationTrack }) {
  const total = t.totalBytes ?? t.result?.ramBytes ?? null;
  if (!total) return null;
  // The running pass's share is what QEMU sent since the closed ones: only when all are known.
  const known = t.passes.every((p) => p.bytes !== null);
  const closed = t.passes.reduce((n, p) => n + (p.bytes ?? 0), 0);
  const lastSent = known ? (t.samples.transferred.at(-1) ?? null) : null;
  // The pass under way, or the one a cancel or a failure cut short: what it sent was sent.
  // Its number: the sample's sync count, but never one of a closed pass (a sample can lag the
  // MIGRATION_PASS event that closed it).
  const after = (t.passes.at(-1)?.pass ?? 0) + 1;
  const runningPass = Math.max(t.samples.pass.at(-1) ?? after, after);
  const running = t.result?.status === 'completed' ? null : { pass: runningPass, bytes: lastSent === null ? 0 : Math.max(0, lastSent - closed) };
  const rows: Array<{ pass: number; bytes: number | null }> = [...t.passes.map((p) => ({ pass: p.pass, bytes: p.bytes })), ...(running && running.bytes > 0 ? [running] : [])];
  return (
    <section aria-label="Memory" className="panel">
      <h3>Memory <span className="detail">{formatBytes(total)} of RAM; each row is one pass, as a share of RAM sent (QEMU counts bytes, not which pages)</span></h3>
      {rows.map((r, i) => (
        <StripRow
          key={r.pass}
          pass={r.pass}
          cells={r.bytes === null ? 0 : Math.min(STRIP_CELLS, Math.round((r.bytes / total) * STRIP_CELLS))}
          colour={PASS_COLOURS[i % PASS_COLOURS.length]!}
          label={formatBytes(r.bytes)}
        />
      ))}
    </section>
  );
}

/** One pass's row of cells: redrawn only when its numbers change, not with every sample. */
const StripRow = memo(function StripRow({ pass, cells, colour, label }: { pass: number; cells: number; colour: string; label: string }) {
  return (
    <div className="strip" aria-label={`Pass ${pass}: ${label}`}>
      <span className="detail">pass {pass}</span>
      <span className="cells">
        {Array.from({ length: STRIP_CELLS }, (_, c) => (
          <i key={c} style={c < cells ? { background: colour } : undefined} />
        ))}
      </span>
      <span className="detail">{label}</span>
    </div>
  );
});

function Counters({ t, conn }: { t: MigrationTrack; conn: LabConnection }) {
  const i = t.samples.t.length - 1;
  const r = t.result;
  const p = t.prediction;
  return (
    <section aria-label="Counters" className="panel counters">
      {i >= 0 && (
        <dl>
          <dt>sent</dt><dd title={SOURCE.sent}>{formatBytes(t.samples.transferred[i] ?? null)}{t.totalBytes !== null ? ` of ${formatBytes(t.totalBytes)} RAM` : ''}</dd>
          <dt>remaining</dt><dd title={SOURCE.remaining}>{formatBytes(t.samples.remaining[i] ?? null)}</dd>
          <dt>dirty rate</dt><dd title={SOURCE.dirtyRate}>{formatBytesRate(t.samples.dirtyRate[i] ?? null)}</dd>
          <dt>link</dt><dd title={SOURCE.throughput}>{formatBytesRate(t.samples.throughput[i] ?? null)}</dd>
        </dl>
      )}
      {p?.kind === 'eta' && !r && <p title={SOURCE.prediction}>ETA {formatMs(p.etaMs)}: {p.reason}</p>}
      {p?.kind === 'will-not-converge' && !r && (
        <div role="alert" className="warning" title={SOURCE.prediction}>
          <strong>Will not converge:</strong> {p.reason}
          <ul>{p.advice.map((a) => <li key={a}>{a}</li>)}</ul>
        </div>
      )}
      {r && (
        <div className={`result ${r.status}`} role="status">
          <strong>{r.status === 'completed' ? `Completed: ${r.guest} now runs on ${r.to}` : r.status === 'needs-attention' ? `Needs attention: ${r.guest} runs nowhere MigLab can vouch for` : r.status === 'not-converged' ? `did not converge: the guest stays on ${r.runningOn ?? r.from}` : `${r.status}: ${r.reason}`}</strong>
          {(r.status === 'completed' || r.status === 'not-converged') && r.reason && <p className="detail">{r.reason}</p>}
          {r.attention && (
            <div role="alert" className="warning" aria-label="Attention">
              <p>{r.attention.reason}</p>
              {r.attention.pausedOn.length > 0 && <p>Paused copy on {r.attention.pausedOn.join(', ')} (nothing runs it).</p>}
              {r.attention.unknown.length > 0 && <p>Not answering: {r.attention.unknown.join(', ')}.</p>}
              <p><strong>To settle it:</strong> {r.attention.settle}</p>
              {r.attention.pausedOn.includes(r.from) && r.attention.unknown.length === 0 && conn.role === 'teacher' && <ResumeOnSource r={r} conn={conn} />}
            </div>
          )}
          {r.rolledBackMs !== null && <p>The guest went back to {r.from}: it had run {formatMs(r.rolledBackMs)} on {r.to}, and what it did there is lost.</p>}
          {r.sourceKept && <p className="detail">The paused source was kept {formatMs(r.sourceKept.ms)} after the destination ran: {r.sourceKept.why}.</p>}
          {r.status === 'completed' && (
            <dl>
              <dt>downtime (QEMU)</dt><dd title={SOURCE.downtime}>{r.downtimeMs === null ? 'n/a' : formatMs(r.downtimeMs)}</dd>
              <dt>downtime (guest heartbeats)</dt><dd title={SOURCE.guestDowntime}>{r.guestDowntimeMs === null ? 'n/a' : formatMs(r.guestDowntimeMs)}</dd>
              <dt>downtime (network probe)</dt><dd title={SOURCE.networkDowntime}>{r.network?.networkDowntimeMs == null ? 'n/a' : formatMs(r.network.networkDowntimeMs)}</dd>
              <dt>total time (QEMU)</dt><dd title={SOURCE.totalTime}>{r.totalTimeMs === null ? 'n/a' : formatMs(r.totalTimeMs)}</dd>
            </dl>
          )}
          <dl aria-label="Stream">
            <dt>stream</dt><dd title={SOURCE.tls}>{r.tls ? 'encrypted (QEMU TLS, lab CA)' : 'not encrypted'}</dd>
            {r.link && (
              <>
                <dt>link</dt><dd title={SOURCE.linkProfile}>{describeLink(r.link.profile)}{r.link.cut ? '; the cable was pulled' : ''}</dd>
                <dt>through the link</dt>
                <dd title={SOURCE.linkCounters}>{formatBytes(r.link.bytesForward)} to {r.to}, {r.link.lossStalls} loss stall{r.link.lossStalls === 1 ? '' : 's'}, {r.link.totalConnections} connection{r.link.totalConnections === 1 ? '' : 's'}</dd>
              </>
            )}
          </dl>
          {r.downtimePolicy && <PolicyResult policy={r.downtimePolicy} t={t} />}
        </div>
      )}
    </section>
  );
}

/** Where each figure of the live and result panels comes from: the tooltip on it. */
const SOURCE = {
  sent: "QEMU: query-migrate's ram.transferred (and ram.total)",
  remaining: "QEMU: query-migrate's ram.remaining",
  dirtyRate: "QEMU: query-migrate's ram.dirty-pages-rate × page size",
  throughput: "QEMU: query-migrate's ram.mbps (the throughput QEMU measures)",
  prediction: "computed: MigLab's prediction from QEMU's dirty rate and throughput (query-migrate)",
  downtime: "QEMU: query-migrate's downtime once completed (the guest paused for the switchover)",
  guestDowntime: "the guest: the longest gap between labload's heartbeats across the switchover",
  networkDowntime: "the wire: the lab network probe's pings the guest did not answer",
  totalTime: "QEMU: query-migrate's total-time",
  tls: "MigLab's options: QEMU's tls-creds set on both sides (lab CA)",
  linkProfile: 'the link profile MigLab asked its relay to emulate',
  linkCounters: "the wire: the link relay's counters (bytes it carried, its loss stalls, its connections)",
  policyStep: "computed: MigLab's downtime policy, from QEMU's ram.remaining at each MIGRATION_PASS",
} as const;

/** The downtime policy the migration ran under, and each step it took. */
function PolicyResult({ policy, t }: { policy: DowntimePolicyReport; t: MigrationTrack }) {
  // The job time of a step, when its event was heard (not for a result read from a snapshot).
  const when = (pass: number, action: string) => t.downtimeSteps.find((s) => s.step.pass === pass && s.step.action === action)?.atMs ?? null;
  return (
    <div aria-label="Downtime policy" className="policy">
      <p>
        <strong>Downtime policy: {policy.name}</strong> <span className="detail">({policy.description}; started at {policy.startMs} ms)</span>
      </p>
      {policy.steps.length === 0 ? (
        <p className="detail">It took no step: downtime-limit stayed at {policy.startMs} ms.</p>
      ) : (
        <ol>
          {policy.steps.map((s, i) => (
            <li key={i} className={`step ${s.action}`} title={`${s.why} (${SOURCE.policyStep})`}>
              {describeStep(s, when(s.pass, s.action))}
            </li>
          ))}
        </ol>
      )}
    </div>
  );
}

/** needs-attention with the guest paused on its source: a person may take it back there (back in time). */
function ResumeOnSource({ r, conn }: { r: MigrationResult; conn: LabConnection }) {
  const [said, setSaid] = useState<string | null>(null);
  const resume = () =>
    conn.call({ type: 'resumeSource', guest: r.guest }).then(
      (x) => setSaid(`${r.guest} runs on ${x.runningOn ?? 'no host'} again (${x.outcome}).`),
      (e: Error) => setSaid(e.message),
    );
  return (
    <p>
      <button type="button" onClick={() => void resume()}>Resume on {r.from}</button>
      {said && <span role="status"> {said}</span>}
    </p>
  );
}

function Controls({ t, conn }: { t: MigrationTrack; conn: LabConnection }) {
  const [bw, setBw] = useState(t.params?.bandwidthMBps ?? 1000);
  const [dl, setDl] = useState(t.params?.downtimeLimitMs ?? 300);
  const [error, setError] = useState<string | null>(null);
  const live = !t.result && conn.role === 'teacher';
  const act = (p: Promise<unknown>) => p.then(() => setError(null), (e: Error) => setError(e.message));
  const cancel = () =>
    conn.call({ type: 'cancelMigration', id: t.id }).then(
      (r) => setError(r.cancelled ? null : 'Too late to cancel: the switchover has begun, and the guest is already moving.'),
      (e: Error) => setError(e.message),
    );
  if (!live) return null;
  const waiting = t.qemuStatus === 'pre-switchover' && t.state === 'switchover';
  const keeping = t.sourceKept !== null && t.state === 'confirm';
  return (
    <section aria-label="Migration controls" className="panel toolbar">
      {waiting && (
        <span role="status" className="warning">
          QEMU has stopped the guest before the switchover and waits (pause-before-switchover)
          {t.samples.remaining.at(-1) != null ? `: ${formatBytes(t.samples.remaining.at(-1)!)} remain to send (QEMU)` : ''}.{' '}
          <button type="button" onClick={() => void act(conn.call({ type: 'continueMigration', id: t.id }))}>Continue</button>
        </span>
      )}
      {keeping && (
        <span role="status">
          {t.guest} runs on {t.to}; its paused copy on {t.from} is kept {formatMs(t.sourceKept!.ms)}.{' '}
          <button type="button" onClick={() => void act(conn.call({ type: 'rollbackMigration', id: t.id }))}>Take it back to {t.from}</button>
        </span>
      )}
      <label>Bandwidth (MB/s) <input type="number" min={1} value={bw} onChange={(e) => setBw(Number(e.target.value))} aria-label="Live bandwidth" /></label>
      <label>Downtime limit (ms) <input type="number" min={1} value={dl} onChange={(e) => setDl(Number(e.target.value))} aria-label="Live downtime limit" title="A limit set by hand stops the downtime policy: it neither raises the limit nor ends the migration after that" /></label>
      <button type="button" onClick={() => void act(conn.call({ type: 'setMigrationParameters', id: t.id, bandwidthMBps: bw, downtimeLimitMs: dl }))}>Apply</button>
      <button type="button" onClick={() => void cancel()}>Cancel</button>
      {error && <span role="alert" className="error">{error}</span>}
    </section>
  );
}

export function MigrationView({ t, conn }: { t: MigrationTrack; conn: LabConnection }) {
  return (
    <section aria-label="Migration" className="migration">
      <h2>
        {t.guest}: {t.from} → {t.to}
        {t.tls && <span className="badge tls" title="The stream is encrypted with QEMU's TLS (lab CA certificates)">TLS</span>}
      </h2>
      <Timeline t={t} />
      {/* Remounted when QEMU's parameters arrive, so the inputs start from what is set. */}
      <Controls key={t.params ? `${t.params.bandwidthMBps}/${t.params.downtimeLimitMs}` : 'defaults'} t={t} conn={conn} />
      <Counters t={t} conn={conn} />
      {(t.link || t.linkRequested) && <LinkPanel t={t} conn={conn} />}
      <MemoryStrip t={t} />
      <div className="charts">
        <Rounds t={t} />
        <Convergence t={t} />
      </div>
    </section>
  );
}
