// The migration dialog: where to, the pre-flight checks for that destination (run now, nothing
// started), the two knobs QEMU's convergence depends on, the capabilities both QEMUs offer, and
// the lessons about the wire: an encrypted stream, and an emulated long or lossy link. The
// engine starts the destination QEMU while the pre-flight runs; closing without migrating
// releases it.
import { useEffect, useRef, useState } from 'react';
import { capabilityRefusal, type ApiResults, type GuestView, type LabSnapshot } from '../../../electron/engine/api/contract';
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
  const [downtime, setDowntime] = useState(300);
  const [caps, setCaps] = useState<Record<string, boolean>>({});
  const [tls, setTls] = useState(false);
  const [linkOn, setLinkOn] = useState(false);
  const [link, setLink] = useState<LinkDraft>(() => draftOf(LINK_PRESETS[1]!.profile));
  const [pre, setPre] = useState<ApiResults['preflight'] | null>(null);
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
    conn.call({ type: 'preflight', guest: guest.name, to, capabilities: caps }).then(
      (r) => live && setPre(r),
      (e: Error) => live && setError(e.message),
    );
    return () => {
      live = false;
    };
  }, [conn, guest.name, to, caps]);

  const failed = pre?.checks.filter((c) => c.status === 'fail') ?? [];
  const go = async () => {
    started.current = true; // the migration takes the prepared destination
    try {
      const { id } = await conn.call({
        type: 'migrate', guest: guest.name, to,
        options: { bandwidthMBps: bandwidth, downtimeLimitMs: downtime, capabilities: caps, tls, link: linkOn ? profileOf(link) : null },
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
        Downtime limit (ms) <input type="number" min={1} value={downtime} onChange={(e) => setDowntime(Number(e.target.value))} aria-label="Downtime limit" />
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
