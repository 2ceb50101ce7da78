// The migration dialog: where to, the pre-flight checks for that destination (run now, nothing
// started), the two knobs QEMU's convergence depends on, the capabilities both QEMUs offer, and
// the lessons about the wire: an encrypted stream, and an emulated long or lossy link. The
// engine starts the destination QEMU while the pre-flight runs; closing without migrating
// releases it.
import { useEffect, useRef, useState } from 'react';
import {
  capabilityRefusal, DOWNTIME_POLICIES, DOWNTIME_POLICY_NAMES, type ApiResults, type DowntimePolicyName, type GuestView, type LabSnapshot, type StrategyName,
} from '../../../electron/engine/api/contract';
import type { LabConnection } from '../api';
import { draftOf, LinkPresets, LinkProfileFields, LINK_PRESETS, profileOf, type LinkDraft } from './LinkPanel';

/** Capabilities worth offering in a lab: what each shows. `events` is always on. */
const CAPABILITY_HINTS: Record<string, string> = {
  'auto-converge': 'throttles the guest CPU when it dirties memory faster than the link',
  xbzrle: 'sends only the changed bytes of re-sent pages',
  multifd: 'several streams in parallel',
  compress: 'compresses pages (slow under TCG)',
  'pause-before-switchover': 'stops the guest before the switchover and waits for Continue: look at what remains first',
};

/** How long the dialog's dirty-rate measurement watches the guest. */
const DIRTY_RATE_MEASURE_MS = 1000;

/** QEMU's own default downtime-limit, which 'fixed' keeps when no limit is typed. */
const QEMU_DEFAULT_DOWNTIME_MS = 300;

/**
 * What the engine will do with the downtime limit, given the policy picked ('' = MigLab's default)
 * and the limit typed (null: left empty). The engine's rule (migration/downtime-policy.ts): a
 * limit given is where a policy starts, and with no policy it stays fixed there.
 */
export function policyNote(policy: DowntimePolicyName | '', downtimeMs: number | null): string {
  if (policy === '' && downtimeMs === null) return `MigLab's default, ${DOWNTIME_POLICIES.ramp.description}.`;
  if (policy === '') return `A limit typed and no policy: the engine keeps it fixed at ${downtimeMs} ms, as QEMU does. Empty the limit, or pick a policy, to let it move.`;
  if (policy === 'fixed') return `${DOWNTIME_POLICIES.fixed.description}: ${downtimeMs ?? QEMU_DEFAULT_DOWNTIME_MS} ms${downtimeMs === null ? ' (QEMU\'s default)' : ''}.`;
  return `${DOWNTIME_POLICIES[policy].description}.${downtimeMs === null ? '' : ` It starts from the limit typed (${downtimeMs} ms).`}`;
}

export function MigrateDialog({ guest, to: dropTarget, snapshot, conn, onClose, onStarted }: {
  guest: GuestView;
  /** The host the guest was dragged onto; otherwise the first other host. */
  to?: string;
  snapshot: LabSnapshot;
  conn: LabConnection;
  onClose: () => void;
  onStarted: (id: string) => void;
}) {
  const others = snapshot.hosts.filter((h) => h.name !== guest.host);
  const [to, setTo] = useState((others.find((h) => h.name === dropTarget) ?? others[0])?.name ?? '');
  const [bandwidth, setBandwidth] = useState(1000);
  // Empty: the downtime policy picks the limit (MigLab's default starts at 100 ms).
  const [downtime, setDowntime] = useState<number | null>(null);
  const [policy, setPolicy] = useState<DowntimePolicyName | ''>('');
  const [strategy, setStrategy] = useState<StrategyName>('precopy');
  const [caps, setCaps] = useState<Record<string, boolean>>({});
  const [tls, setTls] = useState(false);
  const [linkOn, setLinkOn] = useState(false);
  const [link, setLink] = useState<LinkDraft>(() => draftOf(LINK_PRESETS[1]!.profile));
  const [pre, setPre] = useState<ApiResults['preflight'] | null>(null);
  // Pre-flight then asks QEMU to measure the guest's dirty rate (about a second) and judges it.
  const [measure, setMeasure] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const started = useRef(false);

  // Closed without migrating (or the guest changed): the destination its pre-flight prepared goes.
  useEffect(
    () => () => {
      if (!started.current) conn.call({ type: 'releasePreparedDestination', guest: guest.name }).catch(() => {});
    },
    [conn, guest.name],
  );

  useEffect(() => {
    if (!to) return;
    let live = true;
    setPre(null);
    // The settings as they are when the box is ticked: the check's message names what it used.
    const measureDirtyRate = measure
      ? { ms: DIRTY_RATE_MEASURE_MS, bandwidthMBps: bandwidth, ...(downtime === null ? {} : { downtimeLimitMs: downtime }), ...(policy === '' ? {} : { downtimePolicy: policy }) }
      : undefined;
    conn.call({ type: 'preflight', guest: guest.name, to, capabilities: caps, ...(measureDirtyRate ? { measureDirtyRate } : {}) }).then(
      (r) => live && setPre(r),
      (e: Error) => live && setError(e.message),
    );
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps -- bandwidth and limit are read when measuring starts, not on each keystroke
  }, [conn, guest.name, to, caps, measure]);

  const failed = pre?.checks.filter((c) => c.status === 'fail') ?? [];
  const go = async () => {
    started.current = true; // the migration takes the prepared destination
    try {
      const { id } = await conn.call({
        type: 'migrate', guest: guest.name, to,
        options: {
          bandwidthMBps: bandwidth, ...(downtime === null ? {} : { downtimeLimitMs: downtime }), capabilities: caps, tls, link: linkOn ? profileOf(link) : null,
          // Left out for MigLab's default: the engine picks.
          ...(policy === '' ? {} : { downtimePolicy: policy }),
          ...(strategy === 'precopy' ? {} : { strategy: { name: strategy } }),
        },
      });
      onStarted(id);
    } catch (err) {
      started.current = false;
      setError((err as Error).message);
    }
  };
  // Only what the engine would accept (migration/capabilities.ts): never a box that fails pre-flight.
  const offered = (pre?.capabilities ?? []).filter((c) => c in CAPABILITY_HINTS && capabilityRefusal(c, true) === null);
  return (
    <div className="dialog" role="dialog" aria-label={`Migrate ${guest.name}`}>
      <h2>Migrate {guest.name} from {guest.host}</h2>
      <label>
        Destination host{' '}
        <select value={to} onChange={(e) => setTo(e.target.value)} aria-label="Destination host">
          {others.map((h) => (
            <option key={h.name}>{h.name}</option>
          ))}
        </select>
      </label>
      <label>
        Bandwidth (MB/s) <input type="number" min={1} value={bandwidth} onChange={(e) => setBandwidth(Number(e.target.value))} aria-label="Bandwidth" />
      </label>
      <label>
        Downtime limit (ms){' '}
        <input
          type="number" min={1} value={downtime ?? ''} placeholder="policy"
          onChange={(e) => setDowntime(e.target.value === '' ? null : Number(e.target.value))} aria-label="Downtime limit"
        />
      </label>
      <label>
        Strategy{' '}
        <select value={strategy} onChange={(e) => setStrategy(e.target.value as StrategyName)} aria-label="Strategy">
          {(pre?.strategies ?? []).map((s) => (
            <option key={s.name} value={s.name} disabled={s.unavailable !== null} title={s.unavailable ?? s.explanation}>
              {s.title}{s.unavailable ? ' (not offered)' : ''}
            </option>
          ))}
        </select>
      </label>
      <p className="detail" aria-label="Strategy explained">
        {pre?.strategies?.find((s) => s.name === strategy)?.explanation ?? 'Pre-flight is asking both QEMUs what they offer…'}
      </p>
      <label>
        Downtime policy{' '}
        <select value={policy} onChange={(e) => setPolicy(e.target.value as DowntimePolicyName | '')} aria-label="Downtime policy">
          <option value="">MigLab default (ramp from 100 ms)</option>
          {DOWNTIME_POLICY_NAMES.map((n) => (
            <option key={n} value={n} title={DOWNTIME_POLICIES[n].description}>
              {n}
            </option>
          ))}
        </select>
      </label>
      <p className="detail" aria-label="Downtime policy explained">{policyNote(policy, downtime)}</p>
      <label className="cap">
        <input type="checkbox" checked={measure} onChange={(e) => setMeasure(e.target.checked)} aria-label="Measure the dirty rate first" /> Measure the dirty rate first{' '}
        <span className="detail">QEMU watches the guest for {DIRTY_RATE_MEASURE_MS / 1000} s (calc-dirty-rate); pre-flight then says whether pre-copy converges at the bandwidth above</span>
      </label>
      {offered.length > 0 && (
        <fieldset>
          <legend>Capabilities both QEMUs offer</legend>
          {offered.map((c) => (
            <label key={c} className="cap">
              <input type="checkbox" checked={caps[c] ?? false} onChange={(e) => setCaps({ ...caps, [c]: e.target.checked })} aria-label={c} /> {c}{' '}
              <span className="detail">{CAPABILITY_HINTS[c]}</span>
            </label>
          ))}
        </fieldset>
      )}
      <label className="cap">
        <input type="checkbox" checked={tls} onChange={(e) => setTls(e.target.checked)} aria-label="Encrypt the stream (QEMU TLS, lab CA)" /> Encrypt the stream (QEMU TLS, lab CA){' '}
        <span className="detail">each host gets a certificate from the lab CA; the source checks the destination's</span>
      </label>
      <fieldset className="link-emulation">
        <legend>
          <label>
            <input type="checkbox" checked={linkOn} onChange={(e) => setLinkOn(e.target.checked)} aria-label="Emulate a link" /> Emulate a link
          </label>
        </legend>
        <p className="detail">
          A relay on the destination{to ? ` (${to})` : ''} carries the stream: the bandwidth and the latency hold for each direction, and
          loss shows as TCP retransmission stalls (the stream waits), not as lost pages. QEMU's bandwidth limit above still caps
          what the source sends.
        </p>
        <LinkPresets disabled={!linkOn} onPick={(p) => setLink(draftOf(p))} />
        <div className="toolbar">
          <LinkProfileFields draft={link} onChange={setLink} label="Link" disabled={!linkOn} />
        </div>
      </fieldset>
      <section aria-label="Pre-flight checks">
        <h3>Pre-flight checks</h3>
        {!pre && !error && <p className="detail">checking…</p>}
        <ul className="checks">
          {pre?.checks.map((c) => (
            <li key={c.name} className={`check ${c.status}`}>
              <strong>{c.status}</strong> {c.message}
            </li>
          ))}
        </ul>
      </section>
      {error && <p role="alert" className="error">{error}</p>}
      <div className="toolbar">
        <button type="button" onClick={() => void go()} disabled={!to || !pre || failed.length > 0}>
          Start migration
        </button>
        <button type="button" onClick={onClose}>
          Close
        </button>
      </div>
    </div>
  );
}
