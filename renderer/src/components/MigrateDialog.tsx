// The migration dialog: where to, and the two knobs QEMU's convergence depends on.
import { useState } from 'react';
import type { GuestView, LabSnapshot } from '../../../electron/engine/api/contract';
import type { LabConnection } from '../api';

export function MigrateDialog({ guest, snapshot, conn, onClose, onStarted }: {
  guest: GuestView;
  snapshot: LabSnapshot;
  conn: LabConnection;
  onClose: () => void;
  onStarted: (id: string) => void;
}) {
  const others = snapshot.hosts.filter((h) => h.name !== guest.host);
  const [to, setTo] = useState(others[0]?.name ?? '');
  const [bandwidth, setBandwidth] = useState(1000);
  const [downtime, setDowntime] = useState(300);
  const [error, setError] = useState<string | null>(null);
  const go = async () => {
    try {
      const { id } = await conn.call({ type: 'migrate', guest: guest.name, to, options: { bandwidthMBps: bandwidth, downtimeLimitMs: downtime } });
      onStarted(id);
    } catch (err) {
      setError((err as Error).message);
    }
  };
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
      <p className="detail">Pre-flight checks run first; a failed check stops the migration before anything starts.</p>
      {error && <p role="alert" className="error">{error}</p>}
      <div className="toolbar">
        <button type="button" onClick={() => void go()} disabled={!to}>
          Start migration
        </button>
        <button type="button" onClick={onClose}>
          Close
        </button>
      </div>
    </div>
  );
}
