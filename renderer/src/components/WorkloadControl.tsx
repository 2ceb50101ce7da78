// The lab guest's workload, turned while it runs: raise the dirty rate mid-migration and watch
// convergence fail.
import { useState } from 'react';
import type { GuestView } from '../../../electron/engine/api/contract';
import type { LabConnection } from '../api';

export function WorkloadControl({ guest, conn, onError }: { guest: GuestView; conn: LabConnection; onError: (m: string) => void }) {
  const [rate, setRate] = useState(guest.workload?.rateMBps ?? 0);
  const [ws, setWs] = useState(guest.workload?.workingSetMiB ?? 64);
  if (!guest.labload || conn.role !== 'teacher') return null;
  const apply = () => conn.call({ type: 'setWorkload', guest: guest.name, rateMBps: rate, workingSetMiB: ws }).catch((e: Error) => onError(e.message));
  return (
    <section aria-label="Workload" className="panel toolbar">
      <strong>{guest.name} workload</strong>
      <label>
        Dirty rate (MB/s) <input type="range" min={0} max={200} step={5} value={rate} onChange={(e) => setRate(Number(e.target.value))} aria-label="Dirty rate" />
        <output>{rate}</output>
      </label>
      <label>
        Working set (MiB) <input type="number" min={1} max={guest.memoryMiB} value={ws} onChange={(e) => setWs(Number(e.target.value))} aria-label="Working set" />
      </label>
      <button type="button" onClick={() => void apply()}>Set workload</button>
    </section>
  );
}
