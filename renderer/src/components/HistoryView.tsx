// Every migration this UI has seen, newest first: how each went, a button to bring it back into
// the Migration view, and its data to take home as JSON or CSV.
import { useId } from 'react';
import { formatMs, MIGRATION_OUTCOMES } from '../../../electron/engine/api/contract';
import { download, exportFileName, migrationCsv, migrationJson, passesCsv, stateOf } from '../export';
import type { MigrationTrack } from '../store';

const OUTCOMES: ReadonlySet<string> = new Set(MIGRATION_OUTCOMES);

/**
 * `tracks` in the order the migrations started, oldest first, as the store's Map keeps them
 * (`[...state.migrations.values()]`): a track carries no start time of its own to sort by.
 */
export function HistoryView({ tracks, current, onShow }: { tracks: MigrationTrack[]; current: string | null; onShow: (id: string) => void }) {
  const idBase = useId();
  const rows = [...tracks].reverse();
  return (
    <section aria-label="History" className="panel history">
      <h3>History <span className="detail">{tracks.length} migration{tracks.length === 1 ? '' : 's'}, newest first</span></h3>
      {rows.length === 0 ? (
        <p className="detail">No migration yet.</p>
      ) : (
        <table className="passes history">
          <thead>
            <tr><th>guest</th><th>route</th><th>state</th><th>total time</th><th>downtime</th><th><span className="detail">actions</span></th></tr>
          </thead>
          <tbody>
            {rows.map((t, i) => {
              const r = t.result;
              const isCurrent = t.id === current;
              const guestId = `${idBase}-guest-${i}`;
              const routeId = `${idBase}-route-${i}`;
              const describedBy = `${guestId} ${routeId}`;
              const state = stateOf(t);
              const total = r ? (r.totalTimeMs !== null ? formatMs(r.totalTimeMs) : `${formatMs(r.wallTimeMs)} (wall)`) : '';
              const downtime = r ? (r.downtimeMs !== null ? formatMs(r.downtimeMs) : 'n/a') : '';
              return (
                <tr key={t.id} className={isCurrent ? 'current' : undefined} aria-current={isCurrent ? 'true' : undefined}>
                  <td id={guestId}>{t.guest}</td>
                  <td id={routeId}>{t.from || '?'} → {t.to || '?'}</td>
                  <td className={`state ${state}`}>{state}{!r && !OUTCOMES.has(state) && <span className="detail"> (running)</span>}</td>
                  <td>{total}</td>
                  <td>{downtime}</td>
                  <td>
                    <div className="toolbar">
                      <button type="button" aria-label={`Show migration ${t.guest} ${t.from} to ${t.to}`} onClick={() => onShow(t.id)}>
                        Show
                      </button>
                      <button type="button" className="small" aria-describedby={describedBy} onClick={() => download(exportFileName(t, 'json'), 'application/json', migrationJson(t))}>
                        Export JSON
                      </button>
                      <button type="button" className="small" aria-describedby={describedBy} onClick={() => download(exportFileName(t, 'csv'), 'text/csv;charset=utf-8', migrationCsv(t))}>
                        Export CSV
                      </button>
                      <button
                        type="button"
                        className="small"
                        aria-describedby={describedBy}
                        onClick={() => download(exportFileName(t, 'csv').replace(/\.csv$/, '-passes.csv'), 'text/csv;charset=utf-8', passesCsv(t))}
                      >
                        Export passes CSV
                      </button>
                    </div>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </section>
  );
}
