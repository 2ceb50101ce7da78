// The network remap: the switch's ports, the guest's MAC moving to its new port (and the frame
// that moved it), QEMU's announce frames, and the probe's replies with the gap in them.
import { useMemo } from 'react';
import type uPlot from 'uplot';
import { formatMs, type LabSnapshot } from '../../../electron/engine/api/contract';
import { UPlotChart } from '../charts/UPlotChart';
import type { MigrationTrack } from '../store';

const CAUSE: Record<string, string> = { rarp: 'RARP announce', 'gratuitous-arp': 'gratuitous ARP', traffic: 'ordinary traffic' };

export function NetworkView({ snapshot, t }: { snapshot: LabSnapshot; t: MigrationTrack | null }) {
  const net = snapshot.network;
  const n = t?.probe.length ?? 0;
  const data = useMemo<uPlot.AlignedData>(
    () => (t ? [t.probe.map((s) => s.sentAtMs / 1000), t.probe.map((s) => s.rttMs)] : [[], []]),
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [t?.id, n, t?.lastAtMs], // the length stops changing once the ring buffer is full
  );
  const options = (): Omit<uPlot.Options, 'width' | 'height'> => ({
    scales: { x: { time: false } },
    axes: [{ label: 'seconds', stroke: '#888' }, { label: 'RTT ms', stroke: '#888' }],
    // A line, not a dot per reply: thousands of arcs per redraw cost more than the rest of the page.
    series: [{ label: 's' }, { label: 'probe RTT (ms); breaks are lost replies', stroke: '#5bc0de', width: 1.5, points: { show: false }, spanGaps: false }],
  });
  const macs = snapshot.hosts.flatMap((h) => h.guests).filter((g) => g.mac);
  return (
    <section aria-label="Network" className="panel network">
      <h3>Network {net && <span className="detail">lab switch {net.subnet}, probe {net.probe.ip}</span>}</h3>
      {!net && <p className="detail">This lab has no network.</p>}
      {net && (
        <table className="mac-table" aria-label="MAC table">
          <thead>
            <tr><th>MAC</th><th>guest</th><th>IP</th><th>host</th><th>switch port</th></tr>
          </thead>
          <tbody>
            {macs.map((g) => (
              <tr key={`${g.host}/${g.name}`} className={g.state === 'incoming' ? 'incoming' : ''}>
                <td><code>{g.mac}</code></td><td>{g.name}{g.state === 'incoming' ? ' (arriving)' : ''}</td><td>{g.ip}</td><td>{g.host}</td><td>{g.switchPort}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {t && (
        <>
          <h4>MAC moves</h4>
          {t.moves.length === 0 && <p className="detail">none yet: the switch still sees {t.guest} on {t.from}</p>}
          <ul className="moves">
            {t.moves.map((m) => (
              <li key={`${m.atMs}-${m.toPort}`} className="move">
                <code>{m.mac}</code> moved from {m.fromHost} (port {m.fromPort}) to {m.toHost} (port {m.toPort}) at {formatMs(m.atMs)}, seen in a {CAUSE[m.cause]} frame
              </li>
            ))}
          </ul>
          <p>
            Announce frames: {t.announces.length}
            {t.announces.length > 0 && ` (${t.announces.map((a) => formatMs(a.atMs)).join(', ')})`}
            {' · '}probe: {t.probeTotals.received} of {t.probeTotals.sent} pings answered
            {t.result?.network?.networkDowntimeMs != null && ` · longest gap ${formatMs(t.result.network.networkDowntimeMs)}`}
          </p>
          <UPlotChart identity={`probe-${t.id}`} options={options} data={data} height={160} />
        </>
      )}
    </section>
  );
}
