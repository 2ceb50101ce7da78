// @vitest-environment happy-dom
// The History view, the Migration view (with its Link panel), the Migrate dialog and the Lab view's LAN host form, rendered in happy-dom with tracks the LabStore built
// from the engine's events. JSX-free (React.createElement), so vitest's test/unit/**/*.test.ts
// include picks it up without a config change.
import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { createElement as h } from 'react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ApiEvent, LabSnapshot, MigrationView as MigrationViewInfo } from '../../electron/engine/api/contract';
import type { MigrationEvent, MigrationPass, MigrationResult } from '../../electron/engine/migration/types';
import type { LinkRelayStats } from '../../electron/engine/network/link-profile';
import type { LabConnection } from '../../renderer/src/api';
import { HistoryView } from '../../renderer/src/components/HistoryView';
import { LabView } from '../../renderer/src/components/LabView';
import { MigrateDialog } from '../../renderer/src/components/MigrateDialog';
import { MigrationView } from '../../renderer/src/components/MigrationView';
import { LabStore, type MigrationTrack } from '../../renderer/src/store';

// uPlot draws on a 2D canvas. happy-dom has no canvas rendering (getContext('2d') gives null) and
// no Path2D, so both are stubbed: a 2D context that remembers the properties set on it and answers
// every method with a no-op, and a Path2D the same. happy-dom (21) does have window.matchMedia
// (uPlot watches the pixel ratio with it when its module loads) and ResizeObserver (UPlotChart
// observes its box): those need no stub. vi.hoisted is moved above the imports, so uPlot finds the
// stubs when it loads.
vi.hoisted(() => {
  const noopProxy = (): object =>
    new Proxy({} as Record<string | symbol, unknown>, {
      get: (target, key) => (key in target ? target[key] : () => undefined),
      set: (target, key, value) => {
        target[key] = value;
        return true;
      },
    });
  Object.defineProperty(HTMLCanvasElement.prototype, 'getContext', { configurable: true, writable: true, value: () => noopProxy() });
  const g = globalThis as Record<string, unknown>;
  if (typeof g.Path2D !== 'function') g.Path2D = function Path2D() { return noopProxy(); };
});

const OLD = 'aaaa1111-0000-4000-8000-000000000001';
const NEW = 'bbbb2222-0000-4000-8000-000000000002';

function lab(views: MigrationViewInfo[]): ApiEvent {
  const snapshot: LabSnapshot = { apiVersion: 1, hosts: [], migrations: views, network: null };
  return { type: 'lab', snapshot };
}

function view(id: string, guest: string, from: string, to: string): MigrationViewInfo {
  return { id, guest, from, to, state: 'preflight', startedAt: new Date().toISOString(), result: null };
}

function pass(n: number, startMs: number): MigrationPass {
  return { pass: n, startMs, durationMs: 2000, bytes: (300 - n * 20) * 1e6, normalPages: 70_000 - n, zeroPages: n, dirtyRateBps: 60e6, throughputBps: 40e6 };
}

function sampleEvent(atMs: number, n: number, remainingBytes: number): MigrationEvent {
  return {
    type: 'sample', atMs,
    sample: { atMs, status: 'active', transferredBytes: 1e8 * n, remainingBytes, totalBytes: 536_870_912, dirtyRateBps: 60e6, throughputBps: 40e6, expectedDowntimeMs: 4000, cpuThrottlePercent: 0, pass: n },
  };
}

function completed(id: string): MigrationResult {
  return {
    id, status: 'completed', guest: 'db', from: 'alpha', to: 'beta', reason: null, qemuMessage: null, ramBytes: 268_435_456,
    totalTimeMs: 4200, setupTimeMs: 10, downtimeMs: 95, guestDowntimeMs: 120, transferredBytes: 300e6, passes: [pass(1, 300)],
    phases: [], checks: [], prediction: null, wallTimeMs: 4800, runningOn: 'beta', attention: null, sourceKept: null, rolledBackMs: null, destinationRunningAtMs: 4300, resumedAtMs: 4320,
    failure: null, destinationConsoleTail: null, network: null, tls: false, link: null, downtimePolicy: null,
  };
}

const ADVICE = ['Raise the bandwidth to at least 70 MB/s', 'Or enable auto-converge'];

/**
 * Two migrations, as the store has them: db alpha -> beta, done; then web:1 beta -> alpha, still
 * copying, three passes in, predicted never to converge.
 */
function buildStore(): LabStore {
  const store = new LabStore();
  store.apply(lab([view(OLD, 'db', 'alpha', 'beta')]));
  const old: MigrationEvent[] = [
    { type: 'phase', atMs: 0, phase: 'preflight', previous: null },
    { type: 'phase', atMs: 100, phase: 'monitor', previous: 'preflight' },
    { type: 'pass', atMs: 2300, pass: pass(1, 300) },
    { type: 'phase', atMs: 4800, phase: 'completed', previous: 'monitor' },
    { type: 'result', atMs: 4800, result: completed(OLD) },
  ];
  for (const event of old) store.apply({ type: 'migration', id: OLD, guest: 'db', event });
  store.apply(lab([view(OLD, 'db', 'alpha', 'beta'), view(NEW, 'web:1', 'beta', 'alpha')]));
  const running: MigrationEvent[] = [
    { type: 'phase', atMs: 0, phase: 'preflight', previous: null },
    { type: 'check', atMs: 5, check: { name: 'memory', status: 'pass', message: 'beta has room for 512 MiB.' } },
    { type: 'phase', atMs: 20, phase: 'prepare', previous: 'preflight' },
    { type: 'phase', atMs: 200, phase: 'configure', previous: 'prepare' },
    { type: 'parameters', atMs: 210, bandwidthMBps: 40, downtimeLimitMs: 300 },
    { type: 'phase', atMs: 230, phase: 'listen', previous: 'configure' },
    { type: 'phase', atMs: 240, phase: 'migrate', previous: 'listen' },
    { type: 'phase', atMs: 250, phase: 'monitor', previous: 'migrate' },
    sampleEvent(400, 1, 500e6),
    { type: 'pass', atMs: 2300, pass: pass(1, 300) },
    sampleEvent(2400, 2, 200e6),
    { type: 'pass', atMs: 4300, pass: pass(2, 2300) },
    sampleEvent(4400, 3, 210e6),
    { type: 'pass', atMs: 6300, pass: pass(3, 4300) },
    {
      type: 'prediction', atMs: 6300,
      prediction: { kind: 'will-not-converge', reason: 'The guest dirties 60 MB/s, faster than the 40 MB/s link sends.', advice: ADVICE },
    },
  ];
  for (const event of running) store.apply({ type: 'migration', id: NEW, guest: 'web:1', event });
  return store;
}

function tracks(store: LabStore): MigrationTrack[] {
  return [...store.get().migrations.values()];
}

afterEach(() => {
  cleanup();
  vi.restoreAllMocks();
});

describe('HistoryView', () => {
  let created: Blob[];
  let clicked: HTMLAnchorElement[];
  beforeEach(() => {
    created = [];
    clicked = [];
    vi.spyOn(URL, 'createObjectURL').mockImplementation((blob: Blob | MediaSource) => {
      created.push(blob as Blob);
      return `blob:miglab/${created.length}`;
    });
    vi.spyOn(URL, 'revokeObjectURL').mockImplementation(() => {});
    vi.spyOn(HTMLAnchorElement.prototype, 'click').mockImplementation(function (this: HTMLAnchorElement) {
      clicked.push(this);
    });
  });

  it('lists the migrations newest first, with route, state and times', () => {
    const store = buildStore();
    render(h(HistoryView, { tracks: tracks(store), current: NEW, onShow: () => {} }));
    const region = screen.getByRole('region', { name: 'History' });
    const rows = within(region).getAllByRole('row').slice(1); // the header row first
    expect(rows).toHaveLength(2);
    const [first, second] = rows as [HTMLElement, HTMLElement];
    expect(within(first).getByText('web:1')).toBeTruthy();
    expect(first.textContent).toContain('beta → alpha');
    expect(first.textContent).toContain('monitor');
    expect(first.textContent).toContain('(running)');
    expect(within(second).getByText('db')).toBeTruthy();
    expect(second.textContent).toContain('alpha → beta');
    expect(second.textContent).toContain('completed');
    expect(second.textContent).toContain('4.2 s'); // total time (QEMU)
    expect(second.textContent).toContain('95 ms'); // downtime (QEMU)
  });

  it('marks the current migration and only that one', () => {
    const store = buildStore();
    render(h(HistoryView, { tracks: tracks(store), current: OLD, onShow: () => {} }));
    const rows = within(screen.getByRole('region', { name: 'History' })).getAllByRole('row').slice(1);
    expect(rows.map((r) => r.getAttribute('aria-current'))).toEqual([null, 'true']);
    expect(within(rows[1]!).getByText('db')).toBeTruthy();
  });

  it('Show calls onShow with the migration id', () => {
    const onShow = vi.fn();
    render(h(HistoryView, { tracks: tracks(buildStore()), current: NEW, onShow }));
    fireEvent.click(screen.getByRole('button', { name: 'Show migration db alpha to beta' }));
    expect(onShow).toHaveBeenCalledExactlyOnceWith(OLD);
    fireEvent.click(screen.getByRole('button', { name: 'Show migration web:1 beta to alpha' }));
    expect(onShow).toHaveBeenLastCalledWith(NEW);
  });

  it('Export JSON downloads the JSON document of that row, then revokes the URL', async () => {
    render(h(HistoryView, { tracks: tracks(buildStore()), current: NEW, onShow: () => {} }));
    const oldRow = screen.getByRole('button', { name: 'Show migration db alpha to beta' }).closest('tr')!;
    fireEvent.click(within(oldRow).getByRole('button', { name: 'Export JSON' }));
    expect(clicked).toHaveLength(1);
    expect(clicked[0]!.download).toBe('miglab-db-alpha-to-beta-aaaa1111.json');
    expect(clicked[0]!.href).toBe('blob:miglab/1');
    expect(clicked[0]!.isConnected).toBe(false); // the temporary <a> is gone again
    expect(created[0]!.type).toBe('application/json');
    const doc = JSON.parse(await created[0]!.text());
    expect(doc.id).toBe(OLD);
    expect(doc.result.downtimeMs).toBe(95);
    await waitFor(() => expect(URL.revokeObjectURL).toHaveBeenCalledWith('blob:miglab/1'));
  });

  it('Export CSV and Export passes CSV download the samples and the passes', async () => {
    render(h(HistoryView, { tracks: tracks(buildStore()), current: NEW, onShow: () => {} }));
    const newRow = screen.getByRole('button', { name: 'Show migration web:1 beta to alpha' }).closest('tr')!;
    fireEvent.click(within(newRow).getByRole('button', { name: 'Export CSV' }));
    fireEvent.click(within(newRow).getByRole('button', { name: 'Export passes CSV' }));
    expect(clicked.map((a) => a.download)).toEqual(['miglab-web_1-beta-to-alpha-bbbb2222.csv', 'miglab-web_1-beta-to-alpha-bbbb2222-passes.csv']);
    const samples = (await created[0]!.text()).trimEnd().split('\n');
    expect(samples[0]).toBe('at_ms,pass,remaining_bytes,transferred_bytes,dirty_rate_bps,throughput_bps');
    expect(samples).toHaveLength(4);
    expect(samples[2]).toBe('2400,2,200000000,200000000,60000000,40000000');
    const passes = (await created[1]!.text()).trimEnd().split('\n');
    expect(passes).toHaveLength(4);
    expect(passes[3]).toBe('3,4300,2000,240000000,69997,3,60000000,40000000');
  });

  it('says so when there is no migration yet', () => {
    render(h(HistoryView, { tracks: [], current: null, onShow: () => {} }));
    const region = screen.getByRole('region', { name: 'History' });
    expect(within(region).queryAllByRole('row')).toHaveLength(0);
    expect(region.textContent).toContain('No migration yet');
  });
});

describe('MigrationView', () => {
  function fakeConn(): LabConnection & { call: ReturnType<typeof vi.fn> } {
    return { role: 'teacher', call: vi.fn().mockResolvedValue({}), onEvent: () => () => {}, onClose: () => () => {} } as unknown as LabConnection & {
      call: ReturnType<typeof vi.fn>;
    };
  }

  function renderRunning() {
    const t = buildStore().get().migrations.get(NEW)!;
    const conn = fakeConn();
    render(h(MigrationView, { t, conn }));
    return { t, conn };
  }

  it('shows the Timeline, Rounds and Convergence regions', () => {
    renderRunning();
    const timeline = screen.getByRole('region', { name: 'Timeline' });
    expect(timeline.textContent).toContain('(monitor)');
    expect(within(timeline).getByRole('listitem', { name: 'Phase monitor' }).className).toContain('active');
    expect(within(timeline).getByRole('listitem', { name: 'Phase configure' }).className).toContain('done');
    expect(within(timeline).getByRole('listitem', { name: 'Phase switchover' }).className).toContain('todo');
    expect(screen.getByRole('region', { name: 'Rounds' })).toBeTruthy();
    const convergence = screen.getByRole('region', { name: 'Convergence' });
    // 40 MB/s x 300 ms = 12 MB: the threshold comes from the parameters event.
    expect(convergence.textContent).toContain('300 ms at 40 MB/s ≈ 12 MB');
    // uPlot built its charts (on the stubbed canvas).
    expect(document.querySelectorAll('.uplot')).toHaveLength(2);
  });

  it('has one row in the Rounds table per pass', () => {
    renderRunning();
    const rounds = screen.getByRole('region', { name: 'Rounds' });
    // The pass table, not uPlot's legend (a table too).
    const table = rounds.querySelector<HTMLTableElement>('table.passes')!;
    expect(table).not.toBeNull();
    const rows = within(table).getAllByRole('row').slice(1);
    expect(rows).toHaveLength(3);
    expect(rows.map((r) => r.querySelector('td')?.textContent)).toEqual(['1', '2', '3']);
    expect(rows[0]!.textContent).toContain('280.0 MB');
    expect(rounds.textContent).toContain('3 passes');
  });

  it('draws one Memory row per pass, the pass under way after the closed ones, even when the last sample lags', () => {
    // The last sample still says sync 3 while passes 1-3 are closed and 120 MB more were sent:
    // the pass under way is 4.
    const errors = vi.spyOn(console, 'error');
    const store = buildStore();
    const lagging = sampleEvent(6400, 3, 150e6);
    if (lagging.type === 'sample') lagging.sample.transferredBytes = 900e6;
    store.apply({ type: 'migration', id: NEW, guest: 'web:1', event: lagging });
    render(h(MigrationView, { t: store.get().migrations.get(NEW)!, conn: fakeConn() }));
    const strip = screen.getByRole('region', { name: 'Memory' });
    const passes = [...strip.querySelectorAll('.strip')].map((row) => row.getAttribute('aria-label')!.replace(/:.*/, ''));
    expect(passes).toEqual(['Pass 1', 'Pass 2', 'Pass 3', 'Pass 4']);
    expect(errors).not.toHaveBeenCalled(); // React complains of duplicate keys with console.error
  });

  it('alerts that it will not converge, with the advice', () => {
    renderRunning();
    const alert = within(screen.getByRole('region', { name: 'Counters' })).getByRole('alert');
    expect(alert.textContent).toContain('Will not converge:');
    expect(alert.textContent).toContain('faster than the 40 MB/s link sends');
    expect(within(alert).getAllByRole('listitem').map((li) => li.textContent)).toEqual(ADVICE);
  });

  it('Cancel asks the lab to cancel this migration', async () => {
    const { conn } = renderRunning();
    fireEvent.click(within(screen.getByRole('region', { name: 'Migration controls' })).getByRole('button', { name: 'Cancel' }));
    expect(conn.call).toHaveBeenCalledExactlyOnceWith({ type: 'cancelMigration', id: NEW });
    // The call resolved: no error shown.
    await waitFor(() => expect(screen.queryByRole('region', { name: 'Migration controls' })?.querySelector('[role="alert"]')).toBeNull());
  });

  it('shows a counter QEMU did not report as n/a, never as 0', () => {
    const store = new LabStore();
    const unknown: MigrationEvent[] = [
      { type: 'phase', atMs: 0, phase: 'monitor', previous: null },
      {
        type: 'sample', atMs: 400,
        sample: { atMs: 400, status: 'active', transferredBytes: null, remainingBytes: null, totalBytes: null, dirtyRateBps: null, throughputBps: null, expectedDowntimeMs: null, cpuThrottlePercent: null, pass: null },
      },
      { type: 'pass', atMs: 2300, pass: { pass: 1, startMs: 300, durationMs: 2000, bytes: null, normalPages: null, zeroPages: null, dirtyRateBps: null, throughputBps: null } },
    ];
    for (const event of unknown) store.apply({ type: 'migration', id: NEW, guest: 'web:1', event });
    const t = store.get().migrations.get(NEW)!;
    expect(t.totalBytes).toBeNull();
    render(h(MigrationView, { t, conn: fakeConn() }));
    const counters = screen.getByRole('region', { name: 'Counters' });
    const figures = [...counters.querySelectorAll('dd')].map((dd) => dd.textContent);
    expect(figures).toEqual(['n/a', 'n/a', 'n/a', 'n/a']); // sent, remaining, dirty rate, link
    expect(counters.textContent).not.toMatch(/\b0\.0 MB/);
    const row = screen.getByRole('region', { name: 'Rounds' }).querySelector('table.passes tbody tr')!;
    expect([...row.querySelectorAll('td')].map((td) => td.textContent)).toEqual(['1', 'n/a', '2.0 s', 'n/a', 'n/a']);
  });

  it('shows no controls and the result once the migration is over', () => {
    const t = buildStore().get().migrations.get(OLD)!;
    render(h(MigrationView, { t, conn: fakeConn() }));
    expect(screen.queryByRole('button', { name: 'Cancel' })).toBeNull();
    expect(screen.getByRole('status').textContent).toContain('Completed: db now runs on beta');
  });
});

describe('LabView: LAN hosts', () => {
  const FP = 'AB:'.repeat(31) + 'CD';
  const TOKEN = 'mlt_' + 'k'.repeat(43);
  const snapshot: LabSnapshot = {
    apiVersion: 1,
    migrations: [],
    network: null,
    hosts: [
      { name: 'host-a', kind: 'local', address: '127.0.0.1', guests: [] },
      { name: 'lan-a', kind: 'remote', address: '192.168.1.20', guests: [], agentUrl: 'wss://192.168.1.20:7800/v1/agent', connection: 'reconnecting' },
      { name: 'lan-b', kind: 'remote', address: '192.168.1.21', guests: [], agentUrl: 'wss://192.168.1.21:7800/v1/agent', connection: 'connected' },
    ],
  };

  function renderLab(call: ReturnType<typeof vi.fn>, role: 'teacher' | 'spectator' = 'teacher') {
    const conn = { role, call, onEvent: () => () => {}, onClose: () => () => {} } as unknown as LabConnection;
    const onError = vi.fn();
    render(h(LabView, { snapshot, conn, selected: null, onSelect: () => {}, onMigrate: () => {}, onError }));
    return { onError };
  }

  function fillForm(url: string) {
    fireEvent.click(screen.getByRole('button', { name: 'LAN host (agent)…' }));
    const form = screen.getByRole('form', { name: 'Add a LAN host' });
    // the name proposed is the first lan-X the lab does not have yet
    expect((within(form).getByLabelText('LAN host name') as HTMLInputElement).value).toBe('lan-c');
    expect((within(form).getByLabelText('Agent address') as HTMLInputElement).placeholder).toBe('wss://192.168.1.20:7800');
    fireEvent.change(within(form).getByLabelText('Agent address'), { target: { value: ` ${url} ` } });
    fireEvent.change(within(form).getByLabelText('Token'), { target: { value: TOKEN } });
    fireEvent.change(within(form).getByLabelText('Fingerprint (SHA-256)'), { target: { value: FP } });
    return form;
  }

  it('shows a remote host\'s agent address, and a badge while its connection is down', () => {
    renderLab(vi.fn());
    const lanA = screen.getByRole('article', { name: 'Host lan-a' });
    expect(lanA.textContent).toContain('agent wss://192.168.1.20:7800/v1/agent');
    expect(within(lanA).getByLabelText('Host lan-a connection').textContent).toBe('reconnecting');
    const lanB = screen.getByRole('article', { name: 'Host lan-b' });
    expect(lanB.textContent).toContain('agent wss://192.168.1.21:7800/v1/agent');
    expect(within(lanB).queryByLabelText('Host lan-b connection')).toBeNull();
    expect(screen.getByRole('article', { name: 'Host host-a' }).textContent).not.toContain('agent');
  });

  it('sends addHost with the agent\'s address, token and fingerprint, then closes the form', async () => {
    const call = vi.fn().mockResolvedValue({ name: 'lan-c', kind: 'remote', address: '192.168.1.22', guests: [] });
    const { onError } = renderLab(call);
    const form = fillForm('wss://192.168.1.22:7800');
    const add = within(form).getByRole('button', { name: 'Add LAN host' }) as HTMLButtonElement;
    expect(add.disabled).toBe(false);
    fireEvent.click(add);
    expect(call).toHaveBeenCalledExactlyOnceWith({ type: 'addHost', name: 'lan-c', agent: { url: 'wss://192.168.1.22:7800', token: TOKEN, fingerprint: FP } });
    await waitFor(() => expect(screen.queryByRole('form', { name: 'Add a LAN host' })).toBeNull());
    expect(onError).toHaveBeenCalledExactlyOnceWith(null); // clears an earlier refusal; shows none
  });

  it('shows the engine\'s refusal the way the view shows errors, and keeps the form', async () => {
    const refusal = 'The agent at 192.168.1.22:7800 refused the token (401): it is wrong or was revoked.';
    const call = vi.fn().mockRejectedValue(new Error(refusal));
    const { onError } = renderLab(call);
    const form = fillForm('wss://192.168.1.22:7800');
    fireEvent.click(within(form).getByRole('button', { name: 'Add LAN host' }));
    await waitFor(() => expect(onError).toHaveBeenCalledExactlyOnceWith(refusal));
    expect(screen.getByRole('form', { name: 'Add a LAN host' })).toBeTruthy();
    expect((within(form).getByRole('button', { name: 'Add LAN host' }) as HTMLButtonElement).disabled).toBe(false);
  });

  it('offers no LAN host form to a spectator', () => {
    renderLab(vi.fn(), 'spectator');
    expect(screen.queryByRole('button', { name: 'LAN host (agent)…' })).toBeNull();
    expect(screen.getByRole('article', { name: 'Host lan-a' }).textContent).toContain('wss://192.168.1.20:7800');
  });
});

describe('MigrateDialog: TLS and link emulation', () => {
  const guest = { name: 'web1', host: 'host-a', state: 'ready', memoryMiB: 256, vcpus: 1, boot: 'lab', ip: null, mac: null, switchPort: null, labload: true, workload: null } as const;
  const snapshot: LabSnapshot = {
    apiVersion: 1, migrations: [], network: null,
    hosts: [
      { name: 'host-a', kind: 'local', address: '127.0.0.1', guests: [guest] },
      { name: 'host-b', kind: 'local', address: '127.0.0.1', guests: [] },
    ],
  };

  function renderDialog() {
    const call = vi.fn(async (cmd: { type: string }) =>
      cmd.type === 'preflight' ? { checks: [{ name: 'destination', status: 'pass', message: 'host-b is another host.' }], capabilities: [] } : { id: NEW });
    const conn = { role: 'teacher', call, onEvent: () => () => {}, onClose: () => () => {} } as unknown as LabConnection;
    const onStarted = vi.fn();
    const { unmount } = render(h(MigrateDialog, { guest, snapshot, conn, onClose: () => {}, onStarted }));
    return { call, onStarted, unmount, dialog: screen.getByRole('dialog', { name: 'Migrate web1' }) };
  }

  async function start(dialog: HTMLElement) {
    const go = within(dialog).getByRole('button', { name: 'Start migration' }) as HTMLButtonElement;
    await waitFor(() => expect(go.disabled).toBe(false)); // once the pre-flight checks are in
    fireEvent.click(go);
  }

  it('releases the destination its pre-flight prepared when it closes without migrating', async () => {
    const { call, unmount } = renderDialog();
    await waitFor(() => expect(call).toHaveBeenCalledWith(expect.objectContaining({ type: 'preflight', guest: 'web1', to: 'host-b' })));
    expect(call).not.toHaveBeenCalledWith(expect.objectContaining({ type: 'releasePreparedDestination' }));
    unmount();
    expect(call).toHaveBeenLastCalledWith({ type: 'releasePreparedDestination', guest: 'web1' });
  });

  it('leaves the prepared destination to the migration it started', async () => {
    const { call, onStarted, unmount, dialog } = renderDialog();
    await start(dialog);
    await waitFor(() => expect(onStarted).toHaveBeenCalledWith(NEW));
    unmount();
    expect(call).not.toHaveBeenCalledWith(expect.objectContaining({ type: 'releasePreparedDestination' }));
  });

  it('sends no TLS and no link unless asked, and keeps the link inputs off', async () => {
    const { call, onStarted, dialog } = renderDialog();
    expect((within(dialog).getByLabelText('Emulate a link') as HTMLInputElement).checked).toBe(false);
    expect((within(dialog).getByLabelText('Link bandwidth') as HTMLInputElement).disabled).toBe(true);
    expect(dialog.textContent).toContain('loss shows as TCP retransmission stalls');
    await start(dialog);
    await waitFor(() => expect(onStarted).toHaveBeenCalledWith(NEW));
    expect(call).toHaveBeenLastCalledWith({
      type: 'migrate', guest: 'web1', to: 'host-b',
      options: { bandwidthMBps: 1000, capabilities: {}, tls: false, link: null },
    });
  });

  it('sends tls and the link a preset filled in', async () => {
    const { call, onStarted, dialog } = renderDialog();
    fireEvent.click(within(dialog).getByLabelText('Encrypt the stream (QEMU TLS, lab CA)'));
    fireEvent.click(within(dialog).getByLabelText('Emulate a link'));
    fireEvent.click(within(dialog).getByRole('button', { name: 'Across an ocean' }));
    expect((within(dialog).getByLabelText('Link latency') as HTMLInputElement).value).toBe('80');
    await start(dialog);
    await waitFor(() => expect(onStarted).toHaveBeenCalledWith(NEW));
    expect(call).toHaveBeenLastCalledWith({
      type: 'migrate', guest: 'web1', to: 'host-b',
      options: { bandwidthMBps: 1000, capabilities: {}, tls: true, link: { bandwidthMBps: 20, latencyMs: 80, lossPercent: 0.5 } },
    });
  });

  it('sends an empty bandwidth as no limit, and typed numbers as numbers', async () => {
    const { call, dialog } = renderDialog();
    fireEvent.click(within(dialog).getByLabelText('Emulate a link'));
    fireEvent.change(within(dialog).getByLabelText('Link bandwidth'), { target: { value: '' } });
    fireEvent.change(within(dialog).getByLabelText('Link latency'), { target: { value: '12.5' } });
    fireEvent.change(within(dialog).getByLabelText('Link loss'), { target: { value: '2' } });
    await start(dialog);
    await waitFor(() => expect(call).toHaveBeenLastCalledWith(expect.objectContaining({ type: 'migrate' })));
    expect(call.mock.lastCall![0]).toMatchObject({ options: { tls: false, link: { bandwidthMBps: null, latencyMs: 12.5, lossPercent: 2 } } });
  });

  it('shows the engine\'s refusal of a bad link in the dialog', async () => {
    const { call, dialog } = renderDialog();
    const refusal = 'The command is not valid: options.link.bandwidthMBps: Too small: expected number to be >=0.1';
    call.mockImplementation(async (cmd: { type: string }) => {
      if (cmd.type === 'preflight') return { checks: [], capabilities: [] };
      throw new Error(refusal);
    });
    fireEvent.click(within(dialog).getByLabelText('Emulate a link'));
    fireEvent.change(within(dialog).getByLabelText('Link bandwidth'), { target: { value: '0' } });
    await start(dialog);
    await waitFor(() => expect(within(dialog).getByRole('alert').textContent).toBe(refusal));
  });
});

describe('MigrationView: the Link panel', () => {
  const LINKED = 'cccc3333-0000-4000-8000-000000000003';
  const PROFILE = { bandwidthMBps: 30, latencyMs: 5, lossPercent: 0.5 };

  function stats(over: Partial<LinkRelayStats> = {}): LinkRelayStats {
    return { connections: 1, totalConnections: 1, bytesForward: 0, bytesBackward: 0, lossStalls: 0, queuedBytes: 0, cut: false, profile: PROFILE, ...over };
  }

  /** A TLS migration over a 30 MB/s link, in its copy phase, the relay's counters twice. */
  function linkedStore(): LabStore {
    const store = new LabStore();
    store.apply(lab([{ ...view(LINKED, 'web1', 'host-a', 'host-b'), tls: true, link: PROFILE }]));
    const events: MigrationEvent[] = [
      { type: 'phase', atMs: 0, phase: 'preflight', previous: null },
      { type: 'phase', atMs: 230, phase: 'listen', previous: 'configure' },
      { type: 'link', atMs: 235, stats: stats({ connections: 0, totalConnections: 0 }) },
      { type: 'phase', atMs: 240, phase: 'migrate', previous: 'listen' },
      { type: 'phase', atMs: 250, phase: 'monitor', previous: 'migrate' },
      { type: 'link', atMs: 1000, stats: stats({ bytesForward: 15e6, bytesBackward: 2048 }) },
      { type: 'link', atMs: 1500, stats: stats({ bytesForward: 30e6, bytesBackward: 4096, lossStalls: 3, queuedBytes: 65536 }) },
    ];
    for (const event of events) store.apply({ type: 'migration', id: LINKED, guest: 'web1', event });
    return store;
  }

  function conn(role: 'teacher' | 'spectator' = 'teacher') {
    return { role, call: vi.fn().mockResolvedValue(stats()), onEvent: () => () => {}, onClose: () => () => {} } as unknown as LabConnection & { call: ReturnType<typeof vi.fn> };
  }

  it('keeps the link counters, their history and TLS in the track', () => {
    const t = linkedStore().get().migrations.get(LINKED)!;
    expect(t.tls).toBe(true);
    expect(t.linkRequested).toEqual(PROFILE);
    expect(t.link).toMatchObject({ bytesForward: 30e6, lossStalls: 3 });
    expect(t.linkHistory).toEqual({ t: [0.235, 1, 1.5], bytesForward: [0, 15e6, 30e6] });
  });

  it('shows the profile, bytes through, stalls, connections and state, and TLS in the header', () => {
    render(h(MigrationView, { t: linkedStore().get().migrations.get(LINKED)!, conn: conn() }));
    expect(screen.getByRole('heading', { level: 2 }).textContent).toContain('TLS');
    const panel = screen.getByRole('region', { name: 'Link' });
    expect(within(panel).getByLabelText('Link state').textContent).toBe('up');
    expect(panel.textContent).toContain('30 MB/s, 5 ms one way, 0.5% loss');
    expect(panel.textContent).toContain('30.0 MB to host-b');
    expect(panel.textContent).toContain('now 23.7 MB/s'); // 30 MB in the 1.265 s of readings (the last 2 s)
    expect(panel.textContent).toContain('3 (each one a TCP retransmission wait)');
    expect(panel.textContent).toContain('1 open, 1 in all');
  });

  it('pulls the cable, plugs it back and changes the profile through linkControl', async () => {
    const store = linkedStore();
    const c = conn();
    const { rerender } = render(h(MigrationView, { t: store.get().migrations.get(LINKED)!, conn: c }));
    const panel = () => screen.getByRole('region', { name: 'Link' });
    const button = (name: string) => within(panel()).getByRole('button', { name }) as HTMLButtonElement;
    expect(button('Plug it back').disabled).toBe(true);
    fireEvent.click(button('Pull the cable'));
    expect(c.call).toHaveBeenLastCalledWith({ type: 'linkControl', id: LINKED, action: 'cut' });

    // The engine's event says the cable is out: the state shows it and the other button wakes.
    store.apply({ type: 'migration', id: LINKED, guest: 'web1', event: { type: 'link', atMs: 1600, stats: stats({ cut: true, connections: 0, bytesForward: 31e6 }) } });
    rerender(h(MigrationView, { t: store.get().migrations.get(LINKED)!, conn: c }));
    expect(within(panel()).getByLabelText('Link state').textContent).toBe('CUT');
    expect(button('Pull the cable').disabled).toBe(true);
    fireEvent.click(button('Plug it back'));
    expect(c.call).toHaveBeenLastCalledWith({ type: 'linkControl', id: LINKED, action: 'restore' });

    const dials = within(panel()).getByRole('group', { name: 'Change the link' });
    expect((within(dials).getByLabelText('Live link bandwidth') as HTMLInputElement).value).toBe('30');
    fireEvent.change(within(dials).getByLabelText('Live link latency'), { target: { value: '120' } });
    fireEvent.click(within(dials).getByRole('button', { name: 'Apply to the link' }));
    expect(c.call).toHaveBeenLastCalledWith({ type: 'linkControl', id: LINKED, action: 'set', profile: { bandwidthMBps: 30, latencyMs: 120, lossPercent: 0.5 } });
    fireEvent.click(within(dials).getByRole('button', { name: 'LAN' }));
    fireEvent.click(within(dials).getByRole('button', { name: 'Apply to the link' }));
    expect(c.call).toHaveBeenLastCalledWith({ type: 'linkControl', id: LINKED, action: 'set', profile: { bandwidthMBps: null, latencyMs: 0, lossPercent: 0 } });
    await waitFor(() => expect(within(panel()).queryByRole('alert')).toBeNull());
  });

  it('shows the engine\'s refusal in the panel', async () => {
    const c = conn();
    c.call.mockRejectedValue(new Error('The migration of web1 is over (completed): its emulated link closed with it'));
    render(h(MigrationView, { t: linkedStore().get().migrations.get(LINKED)!, conn: c }));
    fireEvent.click(screen.getByRole('button', { name: 'Pull the cable' }));
    await waitFor(() => expect(within(screen.getByRole('region', { name: 'Link' })).getByRole('alert').textContent).toContain('is over'));
  });

  it('gives a spectator the counters but no cable and no dials', () => {
    render(h(MigrationView, { t: linkedStore().get().migrations.get(LINKED)!, conn: conn('spectator') }));
    const panel = screen.getByRole('region', { name: 'Link' });
    expect(panel.textContent).toContain('30.0 MB to host-b');
    expect(within(panel).queryAllByRole('button')).toEqual([]);
    expect(within(panel).queryAllByRole('spinbutton')).toEqual([]);
  });

  it('disables the cable once the migration is over, and the result shows the link and TLS', () => {
    const store = linkedStore();
    const result: MigrationResult = {
      ...completed(LINKED), guest: 'web1', from: 'host-a', to: 'host-b', status: 'failed', runningOn: 'host-a', failure: 'migration',
      reason: 'The migration failed: Unable to write to socket: Connection reset by peer.', tls: true,
      link: stats({ cut: true, connections: 0, totalConnections: 1, bytesForward: 31e6, lossStalls: 4 }),
    };
    store.apply({ type: 'migration', id: LINKED, guest: 'web1', event: { type: 'result', atMs: 1700, result } });
    render(h(MigrationView, { t: store.get().migrations.get(LINKED)!, conn: conn() }));
    const panel = screen.getByRole('region', { name: 'Link' });
    expect((within(panel).getByRole('button', { name: 'Pull the cable' }) as HTMLButtonElement).disabled).toBe(true);
    expect((within(panel).getByRole('button', { name: 'Plug it back' }) as HTMLButtonElement).disabled).toBe(true);
    expect(within(panel).queryByRole('group', { name: 'Change the link' })).toBeNull();
    expect(within(panel).getByLabelText('Link state').textContent).toBe('CUT');
    const status = screen.getByRole('status');
    expect(status.textContent).toContain('failed: The migration failed');
    expect(status.textContent).toContain('encrypted (QEMU TLS, lab CA)');
    expect(status.textContent).toContain('30 MB/s, 5 ms one way, 0.5% loss; the cable was pulled');
    expect(status.textContent).toContain('31.0 MB to host-b, 4 loss stalls, 1 connection');
  });

  it('shows no Link panel and no TLS badge for a plain migration', () => {
    render(h(MigrationView, { t: buildStore().get().migrations.get(NEW)!, conn: conn() }));
    expect(screen.queryByRole('region', { name: 'Link' })).toBeNull();
    expect(screen.getByRole('heading', { level: 2 }).textContent).not.toContain('TLS');
  });
});
