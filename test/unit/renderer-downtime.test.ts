// @vitest-environment happy-dom
// The downtime policy in the renderer: the store keeps its steps, the Migration view marks them on
// the Convergence chart and names the policy in the result, not-converged reads as such, the
// Migrate dialog sends the policy; and the charts' figures: bar axes from zero, the switchover
// threshold from QEMU's measured throughput. JSX-free, like renderer-components.test.ts.
import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { createElement as h } from 'react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DOWNTIME_POLICIES, type LabSnapshot } from '../../electron/engine/api/contract';
import type { DowntimePolicyReport, DowntimeStep, MigrationEvent, MigrationResult } from '../../electron/engine/migration/types';
import type { LabConnection } from '../../renderer/src/api';
import { stepMarkers, switchoverThreshold, zeroBasedRange } from '../../renderer/src/charts/figures';
import { MigrateDialog } from '../../renderer/src/components/MigrateDialog';
import { MigrationView, roundsChartOptions } from '../../renderer/src/components/MigrationView';
import { LabStore } from '../../renderer/src/store';

// uPlot needs a 2D canvas and Path2D, which happy-dom lacks: every method a no-op (hoisted above
// the imports, so uPlot finds them when it loads).
vi.hoisted(() => {
  const inert = (): object =>
    new Proxy({} as Record<string | symbol, unknown>, {
      get: (o, k) => (k in o ? o[k] : () => undefined),
      set: (o, k, v) => ((o[k] = v), true),
    });
  Object.defineProperty(HTMLCanvasElement.prototype, 'getContext', { configurable: true, writable: true, value: () => inert() });
  const g = globalThis as Record<string, unknown>;
  if (typeof g.Path2D !== 'function') g.Path2D = function Path2D() { return inert(); };
});

afterEach(() => {
  cleanup();
  vi.restoreAllMocks();
});

const ID = 'dddd4444-0000-4000-8000-000000000004';
const RAISE: DowntimeStep = { pass: 4, action: 'raise', downtimeLimitMs: 150, remainingBytes: 90e6, why: 'two passes without what remains shrinking: downtime-limit raised from 100 to 150 ms' };
const END: DowntimeStep = { pass: 6, action: 'end', downtimeLimitMs: 150, remainingBytes: 88e6, why: 'already at the last limit: the guest dirties its memory as fast as the link carries it' };
const POLICY: DowntimePolicyReport = { name: 'ramp', description: DOWNTIME_POLICIES.ramp.description, startMs: 100, steps: [RAISE, END] };

function sample(atMs: number, throughputBps: number | null): MigrationEvent {
  return {
    type: 'sample', atMs,
    sample: { atMs, status: 'active', transferredBytes: 1e8, remainingBytes: 90e6, totalBytes: 536_870_912, dirtyRateBps: 30e6, throughputBps, expectedDowntimeMs: null, cpuThrottlePercent: 0, pass: 2 },
  };
}

function notConverged(): MigrationResult {
  return {
    id: ID, status: 'not-converged', guest: 'web1', from: 'host-a', to: 'host-b', reason: 'The downtime policy ended the migration: what remained stopped shrinking.',
    qemuMessage: null, ramBytes: 536_870_912, totalTimeMs: null, setupTimeMs: 10, downtimeMs: null, guestDowntimeMs: null, transferredBytes: 700e6,
    passes: [], phases: [], checks: [], prediction: null, wallTimeMs: 9000, runningOn: 'host-a', attention: null, sourceKept: null, rolledBackMs: null,
    downtimePolicy: POLICY, destinationRunningAtMs: null, resumedAtMs: null, failure: 'not-converged', destinationConsoleTail: null, network: null, tls: false, link: null,
  };
}

/** web1 host-a -> host-b: the limit 100 ms, QEMU measuring 25 MB/s, one raise to 150 ms, then the end. */
function store(upTo: 'running' | 'over'): LabStore {
  const s = new LabStore();
  const events: MigrationEvent[] = [
    { type: 'phase', atMs: 0, phase: 'monitor', previous: null },
    { type: 'parameters', atMs: 10, bandwidthMBps: 40, downtimeLimitMs: 100 },
    sample(1000, 25e6),
    { type: 'downtime-step', atMs: 4300, step: RAISE },
    { type: 'parameters', atMs: 4300, bandwidthMBps: 40, downtimeLimitMs: 150 },
    sample(5000, 25e6),
  ];
  if (upTo === 'over') {
    events.push({ type: 'downtime-step', atMs: 8300, step: END }, { type: 'result', atMs: 9000, result: notConverged() });
  }
  for (const event of events) s.apply({ type: 'migration', id: ID, guest: 'web1', event });
  return s;
}

const conn = () => ({ role: 'teacher', call: vi.fn().mockResolvedValue({}), onEvent: () => () => {}, onClose: () => () => {} }) as unknown as LabConnection;

describe('the downtime policy in the store and the Migration view', () => {
  it('keeps each step with its job time, and the result\'s policy', () => {
    const t = store('over').get().migrations.get(ID)!;
    expect(t.downtimeSteps).toEqual([{ atMs: 4300, step: RAISE }, { atMs: 8300, step: END }]);
    expect(t.downtimePolicy).toEqual(POLICY);
    expect(t.params).toEqual({ bandwidthMBps: 40, downtimeLimitMs: 150 });
  });

  it('marks each step on the Convergence chart at its time, with its reason as the tooltip', async () => {
    expect(stepMarkers([{ atMs: 4300, step: RAISE }, { atMs: 8300, step: END }])).toEqual([
      { x: 4.3, action: 'raise', label: 'limit → 150 ms', title: RAISE.why },
      { x: 8.3, action: 'end', label: 'not converged', title: END.why },
    ]);
    render(h(MigrationView, { t: store('over').get().migrations.get(ID)!, conn: conn() }));
    const steps = within(screen.getByRole('region', { name: 'Convergence' })).getByRole('list', { name: 'Downtime policy steps' });
    const items = within(steps).getAllByRole('listitem');
    expect(items.map((li) => li.getAttribute('title'))).toEqual([RAISE.why, END.why]);
    expect(items[0]!.textContent).toContain('limit → 150 ms');
    expect(items[0]!.textContent).toContain('at 4.3 s, pass 4');
    expect(items[1]!.textContent).toContain('not converged');
    // On the chart itself (uPlot's draw hook): a marker per step, its reason on hover.
    const onChart = () => [...screen.getByRole('region', { name: 'Convergence' }).querySelectorAll<HTMLElement>('.u-over .step-marker')];
    await waitFor(() => expect(onChart()).toHaveLength(2)); // uPlot draws after it commits
    expect(onChart().map((m) => [m.className, m.textContent, m.title])).toEqual([
      ['step-marker raise', 'limit → 150 ms', RAISE.why],
      ['step-marker end', 'not converged', END.why],
    ]);
    // 4.3 s lies inside the samples' 1 to 5 s; 8.3 s, after the last sample, sits at the right edge.
    const [raise, end] = onChart().map((m) => parseFloat(m.style.left));
    expect(raise!).toBeGreaterThan(0);
    expect(end!).toBeGreaterThan(raise!);
  });

  it('shows no step list while the policy has not acted', () => {
    const s = new LabStore();
    s.apply({ type: 'migration', id: ID, guest: 'web1', event: sample(1000, 25e6) });
    render(h(MigrationView, { t: s.get().migrations.get(ID)!, conn: conn() }));
    expect(screen.queryByRole('list', { name: 'Downtime policy steps' })).toBeNull();
  });

  it('says a not-converged migration did not converge, in its own colour, and names the policy and its steps', () => {
    render(h(MigrationView, { t: store('over').get().migrations.get(ID)!, conn: conn() }));
    const status = screen.getByRole('status');
    expect(status.querySelector('strong')!.textContent).toBe('did not converge: the guest stays on host-a');
    expect(status.className).toBe('result not-converged');
    expect(status.textContent).not.toContain('not-converged:');
    const policy = within(status).getByLabelText('Downtime policy');
    expect(policy.textContent).toContain('Downtime policy: ramp');
    expect(policy.textContent).toContain(DOWNTIME_POLICIES.ramp.description);
    const steps = within(policy).getAllByRole('listitem');
    expect(steps.map((li) => li.textContent)).toEqual([
      'at 4.3 s, pass 4: downtime-limit raised to 150 ms',
      'at 8.3 s, pass 6: ended as not converged at 150 ms',
    ]);
    expect(steps[0]!.title).toContain(RAISE.why);
  });
});

describe('the charts do not exaggerate', () => {
  it('starts a bar axis at zero, whatever the smallest bar', () => {
    // The Rounds chart's "MB sent": passes of 130 to 140 MB.
    expect(zeroBasedRange(130, 140)).toEqual([0, 147]);
    expect(zeroBasedRange(null, null)).toEqual([0, 1]);
    expect(zeroBasedRange(0, 0)).toEqual([0, 1]);
    // The Rounds chart uses it for both its value axes.
    const { scales } = roundsChartOptions(800);
    for (const key of ['mb', 'rate']) {
      const range = scales![key]!.range as (u: unknown, lo: number | null, hi: number | null, key: string) => [number, number];
      expect(range(null, 130, 140, key)).toEqual([0, 147]);
    }
  });

  it('computes the switchover threshold from QEMU\'s measured throughput and the current limit', () => {
    // Measured 25 MB/s (the latest sample with a figure), not the 40 MB/s configured.
    const th = switchoverThreshold([30e6, 25e6, null], { bandwidthMBps: 40, downtimeLimitMs: 150 })!;
    expect(th).toMatchObject({ bytes: 3.75e6, rateBps: 25e6, rateSource: 'measured', downtimeLimitMs: 150 });
    expect(th.how).toContain("computed: QEMU's measured throughput × downtime-limit");
    // Before QEMU measured: the configured bandwidth, and it says so.
    const before = switchoverThreshold([null], { bandwidthMBps: 40, downtimeLimitMs: 100 })!;
    expect(before).toMatchObject({ bytes: 4e6, rateSource: 'configured' });
    expect(before.how).toContain('configured bandwidth');
    expect(switchoverThreshold([25e6], null)).toBeNull();
  });

  it('labels the Convergence threshold with what it was computed from', () => {
    render(h(MigrationView, { t: store('running').get().migrations.get(ID)!, conn: conn() }));
    const th = within(screen.getByRole('region', { name: 'Convergence' })).getByLabelText('Switchover threshold');
    // 25 MB/s measured x 150 ms (the limit after the raise) = 3.75 MB.
    expect(th.textContent).toContain("150 ms at 25 MB/s ≈ 4 MB (QEMU's measured throughput)");
    expect(th.title).toContain("computed: QEMU's measured throughput × downtime-limit");
  });

  it('names the source of each live figure in its tooltip', () => {
    render(h(MigrationView, { t: store('running').get().migrations.get(ID)!, conn: conn() }));
    const tips = [...screen.getByRole('region', { name: 'Counters' }).querySelectorAll('dd')].map((dd) => dd.title);
    expect(tips).toHaveLength(4);
    for (const tip of tips) expect(tip).toMatch(/^QEMU: query-migrate/);
  });
});

describe('MigrateDialog: the downtime policy', () => {
  const guest = { name: 'web1', host: 'host-a', state: 'ready', memoryMiB: 256, vcpus: 1, boot: 'lab', ip: null, mac: null, switchPort: null, labload: true, workload: null } as const;
  const snapshot: LabSnapshot = {
    apiVersion: 1, migrations: [], network: null,
    hosts: [
      { name: 'host-a', kind: 'local', address: '127.0.0.1', guests: [guest] },
      { name: 'host-b', kind: 'local', address: '127.0.0.1', guests: [] },
    ],
  };

  async function migrateWith(policy: string | null) {
    const call = vi.fn(async (cmd: { type: string }) => (cmd.type === 'preflight' ? { checks: [], capabilities: [] } : { id: ID }));
    const c = { role: 'teacher', call, onEvent: () => () => {}, onClose: () => () => {} } as unknown as LabConnection;
    render(h(MigrateDialog, { guest, snapshot, conn: c, onClose: () => {}, onStarted: () => {} }));
    const dialog = screen.getByRole('dialog', { name: 'Migrate web1' });
    const select = within(dialog).getByLabelText('Downtime policy') as HTMLSelectElement;
    expect(select.value).toBe('');
    expect(select.options[0]!.textContent).toBe('MigLab default (ramp from 100 ms)');
    expect([...select.options].slice(1).map((o) => [o.value, o.title])).toEqual(
      (['ramp', 'proxmox', 'nova', 'fixed'] as const).map((n) => [n, DOWNTIME_POLICIES[n].description]),
    );
    if (policy !== null) fireEvent.change(select, { target: { value: policy } });
    const go = within(dialog).getByRole('button', { name: 'Start migration' }) as HTMLButtonElement;
    await waitFor(() => expect(go.disabled).toBe(false));
    fireEvent.click(go);
    await waitFor(() => expect(call).toHaveBeenLastCalledWith(expect.objectContaining({ type: 'migrate' })));
    return { options: (call.mock.lastCall![0] as unknown as { options: Record<string, unknown> }).options, dialog };
  }

  it('sends the policy picked as options.downtimePolicy, and explains it', async () => {
    const { options, dialog } = await migrateWith('nova');
    expect(options.downtimePolicy).toBe('nova');
    expect(within(dialog).getByLabelText('Downtime policy explained').textContent).toContain(DOWNTIME_POLICIES.nova.description);
  });

  it('leaves the downtime limit to the policy until one is typed, and says what the engine will do', async () => {
    const left = await migrateWith(null);
    expect('downtimeLimitMs' in left.options).toBe(false);
    expect(within(left.dialog).getByLabelText('Downtime policy explained').textContent).toBe(`MigLab's default, ${DOWNTIME_POLICIES.ramp.description}.`);
    cleanup();
    const call = vi.fn(async (cmd: { type: string }) => (cmd.type === 'preflight' ? { checks: [], capabilities: [] } : { id: ID }));
    const c = { role: 'teacher', call, onEvent: () => () => {}, onClose: () => () => {} } as unknown as LabConnection;
    render(h(MigrateDialog, { guest, snapshot, conn: c, onClose: () => {}, onStarted: () => {} }));
    const dialog = screen.getByRole('dialog', { name: 'Migrate web1' });
    fireEvent.change(within(dialog).getByLabelText('Downtime limit'), { target: { value: '250' } });
    expect(within(dialog).getByLabelText('Downtime policy explained').textContent).toBe('A limit typed and no policy: the engine keeps it fixed at 250 ms, as QEMU does. Empty the limit, or pick a policy, to let it move.');
    const go = within(dialog).getByRole('button', { name: 'Start migration' }) as HTMLButtonElement;
    await waitFor(() => expect(go.disabled).toBe(false));
    fireEvent.click(go);
    await waitFor(() => expect(call).toHaveBeenLastCalledWith(expect.objectContaining({ type: 'migrate' })));
    expect((call.mock.lastCall![0] as unknown as { options: Record<string, unknown> }).options.downtimeLimitMs).toBe(250);
  });

  it('asks pre-flight to measure the dirty rate against the bandwidth and policy set, when the box is ticked', async () => {
    const call = vi.fn(async (cmd: { type: string }) => (cmd.type === 'preflight' ? { checks: [], capabilities: [] } : { id: ID }));
    const c = { role: 'teacher', call, onEvent: () => () => {}, onClose: () => () => {} } as unknown as LabConnection;
    render(h(MigrateDialog, { guest, snapshot, conn: c, onClose: () => {}, onStarted: () => {} }));
    const dialog = screen.getByRole('dialog', { name: 'Migrate web1' });
    await waitFor(() => expect(call).toHaveBeenCalledWith({ type: 'preflight', guest: 'web1', to: 'host-b', capabilities: {} }));
    fireEvent.change(within(dialog).getByLabelText('Bandwidth'), { target: { value: '20' } });
    fireEvent.change(within(dialog).getByLabelText('Downtime policy'), { target: { value: 'nova' } });
    fireEvent.click(within(dialog).getByLabelText('Measure the dirty rate first'));
    await waitFor(() => expect(call).toHaveBeenLastCalledWith({
      type: 'preflight', guest: 'web1', to: 'host-b', capabilities: {},
      measureDirtyRate: { ms: 1000, bandwidthMBps: 20, downtimePolicy: 'nova' },
    }));
  });

  it('offers the strategies pre-flight found, explained, the unavailable ones disabled, and sends the one picked', async () => {
    const strategies = [
      { name: 'precopy', title: 'Pre-copy', explanation: 'QEMU copies all of memory while the guest runs.', unavailable: null },
      { name: 'auto-converge', title: 'Auto-converge', explanation: 'QEMU slows the guest down.', unavailable: null },
      { name: 'multifd', title: 'Multifd', explanation: 'Several connections.', unavailable: 'not both QEMUs offer multifd' },
    ];
    const call = vi.fn(async (cmd: { type: string }) => (cmd.type === 'preflight' ? { checks: [], capabilities: [], strategies } : { id: ID }));
    const c = { role: 'teacher', call, onEvent: () => () => {}, onClose: () => () => {} } as unknown as LabConnection;
    render(h(MigrateDialog, { guest, snapshot, conn: c, onClose: () => {}, onStarted: () => {} }));
    const dialog = screen.getByRole('dialog', { name: 'Migrate web1' });
    const select = within(dialog).getByLabelText('Strategy') as HTMLSelectElement;
    await waitFor(() => expect(select.options).toHaveLength(3));
    expect([...select.options].map((o) => [o.value, o.textContent, o.disabled])).toEqual([
      ['precopy', 'Pre-copy', false], ['auto-converge', 'Auto-converge', false], ['multifd', 'Multifd (not offered)', true],
    ]);
    expect(within(dialog).getByLabelText('Strategy explained').textContent).toBe('QEMU copies all of memory while the guest runs.');
    fireEvent.change(select, { target: { value: 'auto-converge' } });
    expect(within(dialog).getByLabelText('Strategy explained').textContent).toBe('QEMU slows the guest down.');
    const go = within(dialog).getByRole('button', { name: 'Start migration' }) as HTMLButtonElement;
    await waitFor(() => expect(go.disabled).toBe(false));
    fireEvent.click(go);
    await waitFor(() => expect(call).toHaveBeenLastCalledWith(expect.objectContaining({ type: 'migrate' })));
    expect((call.mock.lastCall![0] as unknown as { options: Record<string, unknown> }).options.strategy).toEqual({ name: 'auto-converge' });
  });

  it('leaves the field out for MigLab\'s default', async () => {
    const { options } = await migrateWith(null);
    expect('downtimePolicy' in options).toBe(false);
  });
});
