// The lab on one page: hosts and guests on top, the migration as it happens, the network, the
// console. Spectators see the same, without the controls.
import { useEffect, useMemo, useState } from 'react';
import type { GuestView } from '../../electron/engine/api/contract';
import type { LabConnection } from './api';
import { download } from './export';
import { ConsoleView } from './components/ConsoleView';
import { HistoryView } from './components/HistoryView';
import { LabView } from './components/LabView';
import { MigrateDialog } from './components/MigrateDialog';
import { MigrationView } from './components/MigrationView';
import { NetworkView } from './components/NetworkView';
import { WorkloadControl } from './components/WorkloadControl';
import { LabStore, useLab } from './store';

export function App({ conn }: { conn: LabConnection }) {
  const store = useMemo(() => new LabStore(), []);
  useEffect(() => {
    const off = conn.onEvent((ev) => store.apply(ev));
    // Browser mode sends a snapshot on connect; the app's IPC bridge waits to be asked.
    void conn.call({ type: 'snapshot' }).then((snapshot) => store.apply({ type: 'lab', snapshot }), () => {});
    return off;
  }, [conn, store]);
  const state = useLab(store);
  const [selected, setSelected] = useState<string | null>(null);
  const [dialog, setDialog] = useState<{ guest: GuestView; to?: string } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [closed, setClosed] = useState<string | null>(null);
  /** A migration picked in History; otherwise the newest is shown. */
  const [shown, setShown] = useState<string | null>(null);
  useEffect(() => conn.onClose(setClosed), [conn]);

  const snapshot = state.snapshot;
  const currentId = shown ?? state.current;
  const current = currentId ? state.migrations.get(currentId) ?? null : null;
  const guests = snapshot?.hosts.flatMap((h) => h.guests) ?? [];
  const chosen = guests.find((g) => g.name === selected && g.state !== 'incoming') ?? null;
  // Follow the guest: a spectator who has chosen nothing watches what is migrating.
  const consoleGuest = selected ?? current?.guest ?? guests[0]?.name ?? null;

  // History changes when a migration starts or ends, not with every sample.
  const tracks = [...state.migrations.values()];
  const historyKey = tracks.map((t) => `${t.id}:${t.state}:${t.result ? 1 : 0}`).join(',');
  const history = useMemo(
    () => <HistoryView tracks={tracks} current={currentId} onShow={setShown} />,
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [historyKey, currentId],
  );

  if (!snapshot) return <p className="detail">Connecting to the lab…</p>;
  return (
    <div className="app">
      <header>
        <h1>MigLab</h1>
        <span className="detail">{conn.role === 'spectator' ? 'spectator view (read-only)' : 'teacher'}</span>
        <span className="spacer" />
        <button
          type="button"
          onClick={() =>
            void conn.call({ type: 'exportLab' }).then(
              ({ yaml }) => download('miglab-lab.yaml', 'application/yaml', yaml),
              (err: Error) => setError(err.message),
            )
          }
        >
          Save lab file
        </button>
        {closed && <span role="alert" className="error">{closed}</span>}
        {error && (
          <span role="alert" className="error">
            {error} <button type="button" onClick={() => setError(null)}>dismiss</button>
          </span>
        )}
      </header>
      <LabView snapshot={snapshot} conn={conn} selected={selected} onSelect={setSelected} onMigrate={(guest, to) => setDialog({ guest, ...(to ? { to } : {}) })} onError={setError} />
      {chosen && <WorkloadControl key={chosen.name} guest={chosen} conn={conn} onError={setError} />}
      {dialog && (
        <MigrateDialog
          key={`${dialog.guest.name}>${dialog.to ?? ''}`} // a new guest or drop target starts a fresh dialog
          guest={dialog.guest}
          {...(dialog.to ? { to: dialog.to } : {})}
          snapshot={snapshot}
          conn={conn}
          onClose={() => setDialog(null)}
          onStarted={() => {
            setDialog(null);
            setShown(null); // follow the new migration
          }}
        />
      )}
      <main className="grid">
        <div className="left">
          {current ? <MigrationView key={current.id} t={current} conn={conn} /> : <p className="detail panel">No migration yet: select a ready guest and press Migrate, or drag it onto another host.</p>}
        </div>
        <div className="right">
          <NetworkView snapshot={snapshot} t={current} />
          <ConsoleView conn={conn} guest={consoleGuest} />
          {history}
        </div>
      </main>
    </div>
  );
}
