// The emulated link between two hosts: a relay on the destination that gives the migration stream
// a bandwidth, a latency and a loss rate, and a cable that can be pulled. Its profile inputs and
// presets (shared with the migration dialog) and its live panel in the Migration view.
import { useState } from 'react';
import { formatBytes, formatBytesRate, MIGRATION_OUTCOMES, type LinkProfile } from '../../../electron/engine/api/contract';
import type { LabConnection } from '../api';
import type { MigrationTrack } from '../store';

/** Links students know, as profiles. */
export const LINK_PRESETS: ReadonlyArray<{ name: string; profile: LinkProfile }> = [
  { name: 'LAN', profile: { bandwidthMBps: null, latencyMs: 0, lossPercent: 0 } },
  { name: 'Across a city', profile: { bandwidthMBps: 100, latencyMs: 5, lossPercent: 0 } },
  { name: 'Across an ocean', profile: { bandwidthMBps: 20, latencyMs: 80, lossPercent: 0.5 } },
  { name: 'Satellite', profile: { bandwidthMBps: 5, latencyMs: 300, lossPercent: 1 } },
];

/** A profile as the inputs hold it: text, so a field can be empty while it is typed (empty bandwidth: no limit). */
export interface LinkDraft {
  bandwidth: string;
  latency: string;
  loss: string;
}

export function draftOf(p: Partial<LinkProfile>): LinkDraft {
  return {
    bandwidth: p.bandwidthMBps == null ? '' : String(p.bandwidthMBps),
    latency: String(p.latencyMs ?? 0),
    loss: String(p.lossPercent ?? 0),
  };
}

/** What the engine is asked for; out-of-range numbers are left for it to refuse, with the field named. */
export function profileOf(d: LinkDraft): LinkProfile {
  const num = (s: string) => (s.trim() === '' ? 0 : Number(s));
  return {
    bandwidthMBps: d.bandwidth.trim() === '' ? null : Number(d.bandwidth),
    latencyMs: num(d.latency),
    lossPercent: num(d.loss),
  };
}

export function describeLink(p: LinkProfile): string {
  const bw = p.bandwidthMBps === null ? 'no bandwidth limit' : `${p.bandwidthMBps} MB/s`;
  return `${bw}, ${p.latencyMs} ms one way, ${p.lossPercent}% loss`;
}

/** Bandwidth, latency and loss inputs; `label` tells one set from another on the page. */
export function LinkProfileFields({ draft, onChange, label, disabled = false }: {
  draft: LinkDraft;
  onChange: (d: LinkDraft) => void;
  label: string;
  disabled?: boolean;
}) {
  return (
    <>
      <label>
        Bandwidth (MB/s){' '}
        <input type="number" min={0.1} max={10000} step="any" placeholder="no limit" value={draft.bandwidth} disabled={disabled}
          onChange={(e) => onChange({ ...draft, bandwidth: e.target.value })} aria-label={`${label} bandwidth`} />
      </label>
      <label>
        Latency (ms, one way){' '}
        <input type="number" min={0} max={5000} step="any" value={draft.latency} disabled={disabled}
          onChange={(e) => onChange({ ...draft, latency: e.target.value })} aria-label={`${label} latency`} />
      </label>
      <label>
        Loss (%){' '}
        <input type="number" min={0} max={50} step="any" value={draft.loss} disabled={disabled}
          onChange={(e) => onChange({ ...draft, loss: e.target.value })} aria-label={`${label} loss`} />
      </label>
    </>
  );
}

export function LinkPresets({ onPick, disabled = false }: { onPick: (p: LinkProfile) => void; disabled?: boolean }) {
  return (
    <div className="toolbar presets">
      {LINK_PRESETS.map((p) => (
        <button key={p.name} type="button" className="small" disabled={disabled} title={describeLink(p.profile)} onClick={() => onPick(p.profile)}>
          {p.name}
        </button>
      ))}
    </div>
  );
}

/** The window the rate through the link is taken over: counters come about twice a second, a little unevenly. */
const RATE_WINDOW_S = 2;

/** Bytes/s through the relay over the last RATE_WINDOW_S of counter readings; null without two readings. */
function rateNow(t: MigrationTrack): number | null {
  const { t: at, bytesForward } = t.linkHistory;
  const last = at.length - 1;
  if (last < 1) return null;
  let first = last - 1;
  while (first > 0 && at[last]! - at[first - 1]! <= RATE_WINDOW_S) first--;
  const dt = at[last]! - at[first]!;
  return dt > 0 ? Math.max(0, (bytesForward[last]! - bytesForward[first]!) / dt) : null;
}

/** The live link: what it is, what went through, and (for the teacher) the cable and the dials. */
export function LinkPanel({ t, conn }: { t: MigrationTrack; conn: LabConnection }) {
  const s = t.link;
  const over = t.result !== null || (MIGRATION_OUTCOMES as readonly string[]).includes(t.state);
  const teacher = conn.role === 'teacher';
  const [error, setError] = useState<string | null>(null);
  const act = (command: Parameters<LabConnection['call']>[0]) =>
    conn.call(command).then(() => setError(null), (e: Error) => setError(e.message));
  const rate = over ? null : rateNow(t);
  return (
    <section aria-label="Link" className="panel link">
      <h3>
        Link{' '}
        {s && <span className={`badge ${s.cut ? 'cut' : 'up'}`} aria-label="Link state">{s.cut ? 'CUT' : 'up'}</span>}{' '}
        <span className="detail">a relay on {t.to} in the stream's path</span>
      </h3>
      {!s && <p className="detail">The relay opens once {t.to} listens for the stream.</p>}
      {s && (
        <dl>
          <dt>profile</dt><dd>{describeLink(s.profile)}</dd>
          <dt>through</dt>
          <dd>{formatBytes(s.bytesForward)} to {t.to}, {formatBytes(s.bytesBackward)} back{rate !== null ? `; now ${formatBytesRate(rate)}` : ''}</dd>
          <dt>loss stalls</dt><dd>{s.lossStalls} (each one a TCP retransmission wait)</dd>
          <dt>connections</dt><dd>{s.connections} open, {s.totalConnections} in all</dd>
          <dt>queued</dt><dd>{formatBytes(s.queuedBytes)}</dd>
        </dl>
      )}
      {teacher && (
        <>
          <div className="toolbar">
            <button type="button" className="danger" disabled={over || !s || s.cut} onClick={() => void act({ type: 'linkControl', id: t.id, action: 'cut' })}>
              Pull the cable
            </button>
            <button type="button" disabled={over || !s || !s.cut} onClick={() => void act({ type: 'linkControl', id: t.id, action: 'restore' })}>
              Plug it back
            </button>
          </div>
          {/* Remounted when the profile changes, so the dials start from what the link is now. */}
          {s && !over && <LiveProfile key={describeLink(s.profile)} profile={s.profile} onApply={(profile) => void act({ type: 'linkControl', id: t.id, action: 'set', profile })} />}
        </>
      )}
      {error && <p role="alert" className="error">{error}</p>}
    </section>
  );
}

function LiveProfile({ profile, onApply }: { profile: LinkProfile; onApply: (p: LinkProfile) => void }) {
  const [draft, setDraft] = useState(() => draftOf(profile));
  return (
    <div className="toolbar" role="group" aria-label="Change the link">
      <LinkPresets onPick={(p) => setDraft(draftOf(p))} />
      <LinkProfileFields draft={draft} onChange={setDraft} label="Live link" />
      <button type="button" onClick={() => onApply(profileOf(draft))}>Apply to the link</button>
    </div>
  );
}
