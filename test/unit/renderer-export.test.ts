// @vitest-environment happy-dom
// The export of one migration (renderer/src/export.ts): a track built the way the UI builds it, by
// feeding the LabStore the events the engine sends, then taken out as JSON and CSV.
import { describe, expect, it } from 'vitest';
import type { ApiEvent, LabSnapshot, MigrationView } from '../../electron/engine/api/contract';
import type { MigrationEvent, MigrationPass, MigrationResult, MigrationSample } from '../../electron/engine/migration/types';
import { csv, csvField, exportFileName, exportedSamples, migrationCsv, migrationJson, passesCsv } from '../../renderer/src/export';
import { LabStore, MAX_SAMPLES, type MigrationTrack } from '../../renderer/src/store';

const ID = '3f9c2a71-0b4e-4d8a-9c11-5e6f7a8b9c0d';
const GUEST = 'web1';

function snapshot(views: MigrationView[]): ApiEvent {
  const s: LabSnapshot = { apiVersion: 1, hosts: [], migrations: views, network: null };
  return { type: 'lab', snapshot: s };
}

function sample(atMs: number, pass: number, remainingBytes: number, transferredBytes: number, dirtyRateBps: number, throughputBps: number): MigrationEvent {
  const s: MigrationSample = {
    atMs, status: 'active', transferredBytes, remainingBytes, totalBytes: 268_435_456, dirtyRateBps, throughputBps,
    expectedDowntimeMs: 120, cpuThrottlePercent: 0, pass,
  };
  return { type: 'sample', atMs, sample: s };
}

const PASSES: MigrationPass[] = [
  { pass: 1, startMs: 320.5, durationMs: 6400, bytes: 268_435_456, normalPages: 60_000, zeroPages: 5_536, dirtyRateBps: 12_000_000, throughputBps: 41_943_040 },
  { pass: 2, startMs: 6720.5, durationMs: 1800, bytes: 75_000_000, normalPages: 18_310, zeroPages: 0, dirtyRateBps: 11_500_000, throughputBps: 41_666_666.5 },
  { pass: 3, startMs: 8520.5, durationMs: 520, bytes: 21_000_000, normalPages: 5_127, zeroPages: 2, dirtyRateBps: 9_000_000, throughputBps: 40_384_615 },
];

function result(): MigrationResult {
  return {
    id: ID, status: 'completed', guest: GUEST, from: 'hostA', to: 'hostB', reason: null, qemuMessage: null,
    ramBytes: 268_435_456, totalTimeMs: 9100, setupTimeMs: 12, downtimeMs: 87, guestDowntimeMs: 131.4,
    transferredBytes: 364_435_456, passes: PASSES,
    phases: [{ name: 'preflight', startMs: 0, endMs: 12.5 }],
    checks: [{ name: 'qemu-version', status: 'pass', message: 'Both hosts run QEMU 9.2.' }],
    prediction: { kind: 'eta', etaMs: 0, passesLeft: 0, reason: 'done' },
    wallTimeMs: 9650, runningOn: 'hostB', attention: null, sourceKept: null, rolledBackMs: null, destinationRunningAtMs: 9140.2, resumedAtMs: 9160, failure: null, destinationConsoleTail: null, tls: false, link: null, downtimePolicy: null,
    network: {
      mac: '52:54:00:12:34:56', ip: '10.0.0.11', macMoves: [], announceFrames: 2, announceAtMs: [9145, 9195],
      expectedAnnounceFrames: 5, probe: { target: '10.0.0.11', intervalMs: 20, sent: 3, received: 2, maxGapMs: 140 },
      networkDowntimeMs: 140, oldPortRetired: true,
    },
  };
}

/** The events of one completed migration of web1 from hostA to hostB, in the order the engine sends them. */
function events(): MigrationEvent[] {
  return [
    { type: 'phase', atMs: 0, phase: 'preflight', previous: null },
    { type: 'check', atMs: 3, check: { name: 'qemu-version', status: 'pass', message: 'Both hosts run QEMU 9.2.' } },
    { type: 'check', atMs: 9, check: { name: 'cpu-model', status: 'warn', message: 'The CPU models differ, "host" on both sides.' } },
    { type: 'phase', atMs: 12.5, phase: 'prepare', previous: 'preflight' },
    { type: 'phase', atMs: 250.25, phase: 'configure', previous: 'prepare' },
    { type: 'parameters', atMs: 260, bandwidthMBps: 40, downtimeLimitMs: 300 },
    { type: 'phase', atMs: 300, phase: 'listen', previous: 'configure' },
    { type: 'phase', atMs: 310, phase: 'migrate', previous: 'listen' },
    { type: 'phase', atMs: 320.5, phase: 'monitor', previous: 'migrate' },
    sample(400.125, 1, 260_000_000, 8_435_456, 12_000_000, 41_943_040),
    sample(500, 1, 255_000_000, 13_435_456, 12_100_000, 41_900_000),
    { type: 'pass', atMs: 6720.5, pass: PASSES[0]! },
    { type: 'prediction', atMs: 6720.5, prediction: { kind: 'eta', etaMs: 2400, passesLeft: 2, reason: 'Each pass sends less: about 2 more.' } },
    sample(6800.7, 2, 70_000_000, 280_000_000, 11_500_000, 41_666_666.5),
    { type: 'pass', atMs: 8520.5, pass: PASSES[1]! },
    sample(8600, 3, 19_000_000, 345_000_000, 9_000_000, 40_384_615),
    { type: 'pass', atMs: 9040.5, pass: PASSES[2]! },
    { type: 'phase', atMs: 9041, phase: 'switchover', previous: 'monitor' },
    { type: 'heartbeat-gap', atMs: 9160, gapMs: 131.4 },
    { type: 'mac-move', atMs: 9145, move: { mac: '52:54:00:12:34:56', fromHost: 'hostA', toHost: 'hostB', fromPort: 1, toPort: 2, atMs: 9145, cause: 'rarp' } },
    { type: 'announce', atMs: 9145, mac: '52:54:00:12:34:56', host: 'hostB', port: 2, count: 1 },
    { type: 'announce', atMs: 9195, mac: '52:54:00:12:34:56', host: 'hostB', port: 2, count: 2 },
    { type: 'probe', atMs: 9200, samples: [{ seq: 1, sentAtMs: 9000, rttMs: 0.4 }, { seq: 2, sentAtMs: 9020, rttMs: null }, { seq: 3, sentAtMs: 9160, rttMs: 0.6 }], sent: 3, received: 2 },
    { type: 'phase', atMs: 9150, phase: 'confirm', previous: 'switchover' },
    { type: 'phase', atMs: 9600, phase: 'cleanup', previous: 'confirm' },
    { type: 'phase', atMs: 9650, phase: 'completed', previous: 'cleanup' },
    { type: 'result', atMs: 9650, result: result() },
  ];
}

/** A track as the UI has it: the lab snapshot that announced the job, then its events. */
function buildTrack(): MigrationTrack {
  const store = new LabStore();
  store.apply(snapshot([{ id: ID, guest: GUEST, from: 'hostA', to: 'hostB', state: 'preflight', startedAt: '2025-01-01T10:00:00.000Z', result: null }]));
  for (const event of events()) store.apply({ type: 'migration', id: ID, guest: GUEST, event });
  const t = store.get().migrations.get(ID);
  if (!t) throw new Error('the store made no track');
  return t;
}

describe('migrationJson', () => {
  it('has every part of the migration, with the right counts and values', () => {
    const doc = JSON.parse(migrationJson(buildTrack()));
    expect(doc.id).toBe(ID);
    expect(doc.guest).toBe(GUEST);
    expect(doc.from).toBe('hostA');
    expect(doc.to).toBe('hostB');
    expect(doc.state).toBe('completed');
    // preflight .. cleanup: 9 phases, all closed by the next one (the last by 'completed').
    expect(doc.phases).toHaveLength(9);
    expect(doc.phases[0]).toEqual({ endMs: 12.5, name: 'preflight', startMs: 0 });
    expect(doc.phases.at(-1)).toEqual({ endMs: 9650, name: 'cleanup', startMs: 9600 });
    expect(doc.checks.map((c: { status: string }) => c.status)).toEqual(['pass', 'warn']);
    expect(doc.passes).toHaveLength(3);
    expect(doc.passes[1]).toEqual(PASSES[1]);
    expect(doc.samples).toHaveLength(4);
    expect(doc.samples[0]).toEqual({ atMs: 400.125, remainingBytes: 260_000_000, transferredBytes: 8_435_456, dirtyRateBps: 12_000_000, throughputBps: 41_943_040, pass: 1 });
    expect(Object.keys(doc.samples[0])).toEqual(['atMs', 'remainingBytes', 'transferredBytes', 'dirtyRateBps', 'throughputBps', 'pass']);
    // Times went through seconds in the store and come back as the ms they were.
    expect(doc.samples.map((s: { atMs: number }) => s.atMs)).toEqual([400.125, 500, 6800.7, 8600]);
    expect(doc.prediction).toEqual({ etaMs: 2400, kind: 'eta', passesLeft: 2, reason: 'Each pass sends less: about 2 more.' });
    expect(doc.params).toEqual({ bandwidthMBps: 40, downtimeLimitMs: 300 });
    expect(doc.network.moves).toHaveLength(1);
    expect(doc.network.moves[0].cause).toBe('rarp');
    expect(doc.network.announces).toEqual([{ atMs: 9145, host: 'hostB', count: 1 }, { atMs: 9195, host: 'hostB', count: 2 }]);
    expect(doc.network.probe.samples).toHaveLength(3);
    expect(doc.network.probe.samples[1]).toEqual({ seq: 2, sentAtMs: 9020, rttMs: null });
    expect(doc.network.probe.sent).toBe(3);
    expect(doc.network.probe.received).toBe(2);
    expect(doc.result.status).toBe('completed');
    expect(doc.result.downtimeMs).toBe(87);
    expect(doc.result.network.networkDowntimeMs).toBe(140);
    expect(doc.totalBytes).toBe(268_435_456);
    expect(doc.heartbeatGapMs).toBe(131.4);
  });

  it('keeps a stable key order: the document in a fixed order, engine objects sorted', () => {
    const t = buildTrack();
    const text = migrationJson(t);
    expect(text.endsWith('}\n')).toBe(true);
    expect(text).toContain('\n  "id": '); // pretty-printed, two spaces
    const doc = JSON.parse(text);
    expect(Object.keys(doc)).toEqual(['id', 'guest', 'from', 'to', 'state', 'phases', 'checks', 'passes', 'samples', 'prediction', 'params', 'network', 'result', 'totalBytes', 'heartbeatGapMs']);
    const keys = Object.keys(doc.result);
    expect(keys).toEqual([...keys].sort());
    // The same result built in another key order gives the same document.
    const reversed = Object.fromEntries(Object.entries(result()).reverse()) as unknown as MigrationResult;
    expect(migrationJson({ ...t, result: reversed })).toBe(text);
  });

  it('tells a migration seen only in a lab snapshot by its result: outcome, phases and passes', () => {
    const store = new LabStore();
    store.apply(snapshot([{ id: ID, guest: GUEST, from: 'hostA', to: 'hostB', state: 'completed', startedAt: '2025-01-01T10:00:00.000Z', result: result() }]));
    const t = store.get().migrations.get(ID)!;
    const doc = JSON.parse(migrationJson(t));
    expect(doc.state).toBe('completed');
    expect(doc.passes).toHaveLength(3);
    expect(doc.phases).toEqual([{ endMs: 12.5, name: 'preflight', startMs: 0 }]);
    expect(doc.samples).toEqual([]);
    expect(passesCsv(t).trimEnd().split('\n')).toHaveLength(4);
  });
});

describe('migrationCsv', () => {
  it('has the header and one row per sample, with the numbers as sent', () => {
    const text = migrationCsv(buildTrack());
    expect(text.endsWith('\n')).toBe(true);
    expect(text).not.toContain('\r');
    const lines = text.slice(0, -1).split('\n');
    expect(lines[0]).toBe('at_ms,pass,remaining_bytes,transferred_bytes,dirty_rate_bps,throughput_bps');
    expect(lines).toHaveLength(1 + 4);
    expect(lines[1]).toBe('400.125,1,260000000,8435456,12000000,41943040');
    expect(lines[3]).toBe('6800.7,2,70000000,280000000,11500000,41666666.5');
    expect(lines[4]).toBe('8600,3,19000000,345000000,9000000,40384615');
  });

  it('is the header alone for a migration without samples', () => {
    const store = new LabStore();
    store.apply({ type: 'migration', id: ID, guest: GUEST, event: { type: 'phase', atMs: 0, phase: 'preflight', previous: null } });
    expect(migrationCsv(store.get().migrations.get(ID)!)).toBe('at_ms,pass,remaining_bytes,transferred_bytes,dirty_rate_bps,throughput_bps\n');
  });

  it('has the samples the store kept: the latest MAX_SAMPLES', () => {
    const store = new LabStore();
    for (let i = 0; i < MAX_SAMPLES + 5; i++) store.apply({ type: 'migration', id: ID, guest: GUEST, event: sample(i * 100, 1, 1000 - i, i, 0, 0) });
    const t = store.get().migrations.get(ID)!;
    const lines = migrationCsv(t).trimEnd().split('\n');
    expect(lines).toHaveLength(1 + MAX_SAMPLES);
    expect(lines[1]).toBe(`500,1,${1000 - 5},5,0,0`);
    expect(exportedSamples(t).at(-1)!.atMs).toBe((MAX_SAMPLES + 4) * 100);
  });
});

describe('figures QEMU did not report', () => {
  /** A track whose one sample and one pass carry no counters at all. */
  function unknownTrack(): MigrationTrack {
    const store = new LabStore();
    const s: MigrationSample = {
      atMs: 400, status: 'active', transferredBytes: null, remainingBytes: null, totalBytes: null, dirtyRateBps: null,
      throughputBps: null, expectedDowntimeMs: null, cpuThrottlePercent: null, pass: null,
    };
    const p: MigrationPass = { pass: 1, startMs: 300, durationMs: 2000, bytes: null, normalPages: null, zeroPages: null, dirtyRateBps: null, throughputBps: null };
    store.apply({ type: 'migration', id: ID, guest: GUEST, event: { type: 'sample', atMs: 400, sample: s } });
    store.apply({ type: 'migration', id: ID, guest: GUEST, event: { type: 'pass', atMs: 2300, pass: p } });
    return store.get().migrations.get(ID)!;
  }

  it('are null in the JSON, not 0', () => {
    const doc = JSON.parse(migrationJson(unknownTrack()));
    expect(doc.samples).toEqual([{ atMs: 400, remainingBytes: null, transferredBytes: null, dirtyRateBps: null, throughputBps: null, pass: null }]);
    expect(doc.passes[0]).toMatchObject({ bytes: null, normalPages: null, zeroPages: null, dirtyRateBps: null, throughputBps: null });
    expect(doc.totalBytes).toBeNull();
  });

  it('are empty fields in the CSVs, not 0', () => {
    const t = unknownTrack();
    expect(migrationCsv(t).trimEnd().split('\n')[1]).toBe('400,,,,,');
    expect(passesCsv(t).trimEnd().split('\n')[1]).toBe('1,300,2000,,,,,');
  });
});

describe('CSV quoting (RFC 4180)', () => {
  it('quotes a field with a comma, a quote or a line break, and doubles inner quotes', () => {
    expect(csvField('plain')).toBe('plain');
    expect(csvField('a,b')).toBe('"a,b"');
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    expect(csvField('two\nlines')).toBe('"two\nlines"');
    expect(csvField('cr\rhere')).toBe('"cr\rhere"');
    expect(csvField('')).toBe('');
  });

  it('writes numbers as they are and leaves missing or non-finite values empty', () => {
    expect(csvField(41_666_666.5)).toBe('41666666.5');
    expect(csvField(-3)).toBe('-3');
    expect(csvField(Number.NaN)).toBe('');
    expect(csvField(Number.POSITIVE_INFINITY)).toBe('');
    expect(csvField(null)).toBe('');
    expect(csvField(undefined)).toBe('');
  });

  it('joins rows with \\n and ends with a newline', () => {
    expect(csv([['name', 'note'], ['web,1', 'a "b"'], [1, null]])).toBe('name,note\n"web,1","a ""b"""\n1,\n');
  });
});

describe('passesCsv', () => {
  it('has the header and one row per pass', () => {
    const lines = passesCsv(buildTrack()).trimEnd().split('\n');
    expect(lines[0]).toBe('pass,start_ms,duration_ms,bytes,normal_pages,zero_pages,dirty_rate_bps,throughput_bps');
    expect(lines).toHaveLength(4);
    expect(lines[1]).toBe('1,320.5,6400,268435456,60000,5536,12000000,41943040');
    expect(lines[2]).toBe('2,6720.5,1800,75000000,18310,0,11500000,41666666.5');
    expect(lines[3]).toBe('3,8520.5,520,21000000,5127,2,9000000,40384615');
  });
});

describe('exportFileName', () => {
  const SAFE = /^miglab-[A-Za-z0-9_-]+-[A-Za-z0-9_-]+-to-[A-Za-z0-9_-]+-[A-Za-z0-9_-]{1,8}\.[a-z0-9]+$/;

  it('names the guest, the hosts and the first 8 characters of the id', () => {
    expect(exportFileName(buildTrack(), 'json')).toBe('miglab-web1-hostA-to-hostB-3f9c2a71.json');
    expect(exportFileName(buildTrack(), 'csv')).toBe('miglab-web1-hostA-to-hostB-3f9c2a71.csv');
  });

  it('is safe for odd guest and host names', () => {
    const t = { ...buildTrack(), guest: '../../etc/pass wd', from: 'höst "a"', to: 'C:\\b\n<c>', id: 'ab/cd..ef-123456' };
    const name = exportFileName(t, '.JSON');
    expect(name).toMatch(SAFE);
    expect(name).not.toContain('..');
    expect(name).toBe('miglab-etc_pass_wd-host_a-to-C_b_c-ab_cd_e.json');
  });

  it('falls back to placeholders for names with nothing safe in them', () => {
    const t = { ...buildTrack(), guest: '💥', from: '', to: '///', id: '' };
    const name = exportFileName(t, '');
    expect(name).toMatch(SAFE);
    expect(name).toBe('miglab-guest-unknown-to-unknown-id.txt');
  });
});
