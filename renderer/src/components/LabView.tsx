// The lab: hosts with their guests, the switch between them. Select a guest, then Migrate.
import { memo, useState } from 'react';
import type { GuestBootInput, GuestView, HostView, LabSnapshot } from '../../../electron/engine/api/contract';
import type { LabConnection } from '../api';

export interface LabViewProps {
  snapshot: LabSnapshot;
  conn: LabConnection;
  selected: string | null;
  onSelect: (guest: string) => void;
  /** Open the migration dialog; `to` is the host it was dropped on, if it was dragged. */
  onMigrate: (guest: GuestView, to?: string) => void;
  /** A refusal to show, or null to clear the one shown. */
  onError: (message: string | null) => void;
}

/** What a guest is doing in a migration, in words: QEMU's view of a paused source is not a state. */
function roleInMigration(g: GuestView, migrations: LabSnapshot['migrations']): string | null {
  const m = migrations.find((x) => x.guest === g.name && x.result === null);
  // A destination the Migrate dialog's pre-flight started, paused, before any migration.
  if (!m) return g.state === 'incoming' ? 'prepared: waiting for the migration' : null;
  if (g.state === 'incoming') return `arriving from ${m.from}`;
  if (g.host === m.from) return ['switchover', 'confirm', 'cleanup'].includes(m.state) ? `paused: handing over to ${m.to}` : `migrating to ${m.to}`;
  return null;
}

function GuestCard({ g, selected, onSelect, role }: { g: GuestView; selected: boolean; onSelect: () => void; role: string | null }) {
  return (
    <li>
      <button
        type="button"
        className={`guest ${selected ? 'selected' : ''} state-${g.state}`}
        aria-pressed={selected}
        aria-label={`Guest ${g.name}`}
        draggable
        onDragStart={(e) => e.dataTransfer.setData('text/miglab-guest', g.name)}
        onClick={onSelect}
      >
        <strong>{g.name}</strong> <span className="state">{role ?? g.state}</span>
        <span className="detail">
          {g.memoryMiB} MiB{g.ip ? ` · ${g.ip}` : ''}{g.mac ? ` · ${g.mac}` : ''}{g.switchPort !== null ? ` · port ${g.switchPort}` : ''}
        </span>
        {g.workload && <span className="detail">dirtying {g.workload.workingSetMiB} MiB at {g.workload.rateMBps} MB/s</span>}
      </button>
    </li>
  );
}

/**
 * A LAN host: the three things its `miglab agent` printed (address, token, certificate
 * fingerprint). The engine connects before the host joins the lab; a refusal says why.
 */
function LanHostForm({ hosts, conn, onError, onDone }: { hosts: HostView[]; conn: LabConnection; onError: (m: string | null) => void; onDone: () => void }) {
  const [name, setName] = useState(() => {
    for (let c = 97; c < 123; c++) if (!hosts.some((h) => h.name === `lan-${String.fromCharCode(c)}`)) return `lan-${String.fromCharCode(c)}`;
    return 'lan';
  });
  const [url, setUrl] = useState('');
  const [token, setToken] = useState('');
  const [fingerprint, setFingerprint] = useState('');
  const [busy, setBusy] = useState(false);
  const add = async () => {
    setBusy(true);
    try {
      await conn.call({ type: 'addHost', name: name.trim(), agent: { url: url.trim(), token: token.trim(), fingerprint: fingerprint.trim() } });
      onError(null); // an earlier refusal (a wrong fingerprint, say) no longer applies
      onDone();
    } catch (err) {
      onError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form
      className="toolbar lan-host"
      aria-label="Add a LAN host"
      onSubmit={(e) => {
        e.preventDefault();
        void add();
      }}
    >
      <label>
        LAN host name <input value={name} onChange={(e) => setName(e.target.value)} aria-label="LAN host name" />
      </label>
      <label>
        Agent address{' '}
        <input className="wide" value={url} placeholder="wss://192.168.1.20:7800" onChange={(e) => setUrl(e.target.value)} aria-label="Agent address" />
      </label>
      <label>
        Token{' '}
        <input type="password" autoComplete="off" value={token} placeholder="mlt_…" onChange={(e) => setToken(e.target.value)} aria-label="Token" />
      </label>
      <label>
        Fingerprint (SHA-256){' '}
        <input className="wide" value={fingerprint} placeholder="AB:CD:…" onChange={(e) => setFingerprint(e.target.value)} aria-label="Fingerprint (SHA-256)" />
      </label>
      <button type="submit" disabled={busy || !url || !token || !fingerprint}>
        {busy ? 'Connecting…' : 'Add LAN host'}
      </button>
      <span className="detail">what "miglab agent" printed on that host</span>
    </form>
  );
}

/** Re-rendered only when the lab changes (snapshots come with lab events, not with every sample). */
export const LabView = memo(function LabView({ snapshot, conn, selected, onSelect, onMigrate, onError }: LabViewProps) {
  const [name, setName] = useState('guest1');
  const [host, setHost] = useState(snapshot.hosts[0]?.name ?? '');
  const [busy, setBusy] = useState(false);
  const [memory, setMemory] = useState(256);
  const [image, setImage] = useState<'lab' | 'kernel' | 'disk'>('lab');
  const [imagePath, setImagePath] = useState('');
  const [readyPattern, setReadyPattern] = useState('');
  const [newHost, setNewHost] = useState(`host-${String.fromCharCode(97 + snapshot.hosts.length)}`);
  const [lanForm, setLanForm] = useState(false);
  const teacher = conn.role === 'teacher';
  const all = snapshot.hosts.flatMap((h) => h.guests);
  const chosen = all.find((g) => g.name === selected && g.state !== 'incoming') ?? null;

  const start = async () => {
    setBusy(true);
    try {
      const ready = readyPattern ? { readyPattern } : {};
      const boot: GuestBootInput =
        image === 'kernel' ? { kind: 'kernel', kernel: imagePath, ...ready } : image === 'disk' ? { kind: 'disk', path: imagePath, ...ready } : { kind: 'lab' };
      await conn.call({ type: 'startGuest', host, guest: { name, memoryMiB: memory, boot } });
      onSelect(name);
    } catch (err) {
      onError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };

  const act = (p: Promise<unknown>) => p.catch((err: Error) => onError(err.message));

  const stop = async (g: GuestView) => {
    try {
      await conn.call({ type: 'stopGuest', host: g.host, guest: g.name });
    } catch (err) {
      onError((err as Error).message);
    }
  };

  return (
    <section aria-label="Lab" className="lab">
      <div className="hosts">
        {snapshot.hosts.map((h, i) => (
          <div key={h.name} className="host-wrap">
            <article
              className="host"
              aria-label={`Host ${h.name}`}
              onDragOver={(e) => teacher && e.preventDefault()}
              onDrop={(e) => {
                const g = all.find((x) => x.name === e.dataTransfer.getData('text/miglab-guest'));
                if (g && g.host !== h.name) onMigrate(g, h.name);
              }}
            >
              <h2>{h.name}</h2>
              <p className="detail">
                {h.kind} · {h.address}
                {h.connection && h.connection !== 'connected' && (
                  <span className="badge warn" aria-label={`Host ${h.name} connection`}>
                    {h.connection}
                  </span>
                )}
                {teacher && h.guests.length === 0 && snapshot.hosts.length > 1 && (
                  <button type="button" className="small" aria-label={`Remove host ${h.name}`} onClick={() => void act(conn.call({ type: 'removeHost', name: h.name }))}>
                    remove
                  </button>
                )}
              </p>
              {h.agentUrl && <p className="detail agent-url">agent {h.agentUrl}</p>}
              {h.refusedGuests?.map((r) => (
                <p key={r.guest} className="check warn refused-guest" aria-label={`Guest ${r.guest} refused`}>
                  {r.problem}
                </p>
              ))}
              <ul className="guests">
                {h.guests.map((g) => (
                  <GuestCard key={`${g.host}/${g.name}`} g={g} selected={g.name === selected} onSelect={() => onSelect(g.name)} role={roleInMigration(g, snapshot.migrations)} />
                ))}
                {h.guests.length === 0 && <li className="detail">no guests</li>}
              </ul>
            </article>
            {i === 0 && snapshot.network && (
              <div className="switch" aria-label="Lab switch">
                <span>switch</span>
                <span className="detail">{snapshot.network.subnet}</span>
                <span className="detail">{snapshot.network.ports.length} ports</span>
              </div>
            )}
          </div>
        ))}
      </div>
      {teacher && (
        <div className="toolbar">
          <label>
            Guest name <input value={name} onChange={(e) => setName(e.target.value)} aria-label="Guest name" />
          </label>
          <label>
            on{' '}
            <select value={host} onChange={(e) => setHost(e.target.value)} aria-label="Host for the new guest">
              {snapshot.hosts.map((h) => (
                <option key={h.name}>{h.name}</option>
              ))}
            </select>
          </label>
          <label>
            memory (MiB) <input type="number" min={64} step={64} value={memory} onChange={(e) => setMemory(Number(e.target.value))} aria-label="Guest memory" />
          </label>
          <select value={image} onChange={(e) => setImage(e.target.value as typeof image)} aria-label="Guest image">
            <option value="lab">lab guest</option>
            <option value="kernel">kernel image</option>
            <option value="disk">disk image</option>
          </select>
          {image !== 'lab' && (
            <>
              <input value={imagePath} placeholder="/path/on/the/host" onChange={(e) => setImagePath(e.target.value)} aria-label="Image path" />
              <input value={readyPattern} placeholder="ready pattern, e.g. login:" onChange={(e) => setReadyPattern(e.target.value)} aria-label="Ready pattern" />
            </>
          )}
          <button type="button" onClick={() => void start()} disabled={busy}>
            {busy ? 'Starting…' : 'Start guest'}
          </button>
          <label>
            Host name <input value={newHost} onChange={(e) => setNewHost(e.target.value)} aria-label="New host name" />
          </label>
          <button type="button" onClick={() => void act(conn.call({ type: 'addHost', name: newHost }).then(() => setNewHost(`host-${String.fromCharCode(98 + snapshot.hosts.length)}`)))}>
            Add host
          </button>
          <button type="button" aria-expanded={lanForm} onClick={() => setLanForm(!lanForm)}>
            LAN host (agent)…
          </button>
          <span className="spacer" />
          <button type="button" disabled={!chosen || chosen.state !== 'ready'} onClick={() => chosen && onMigrate(chosen)}>
            Migrate
          </button>
          <button type="button" disabled={!chosen} onClick={() => chosen && void stop(chosen)}>
            Stop guest
          </button>
        </div>
      )}
      {teacher && lanForm && <LanHostForm hosts={snapshot.hosts} conn={conn} onError={onError} onDone={() => setLanForm(false)} />}
    </section>
  );
});
