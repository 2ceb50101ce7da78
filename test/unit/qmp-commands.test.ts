import { describe, expect, it } from 'vitest';
import * as qmp from '../../electron/engine/qmp';
import type { QmpCommandOptions, QmpExecutor } from '../../electron/engine/qmp';
import {
  QmpCommandError,
  QmpDisconnectedError,
  QmpError,
  QmpTimeoutError,
} from '../../electron/engine/qmp/errors';
import { FakeQmpServer } from '../helpers/fake-qmp-server';

interface Call {
  cmd: string;
  args: Record<string, unknown> | undefined;
  opts: QmpCommandOptions | undefined;
}

/** Records what a wrapper asks for and answers from a table (or with an error). */
class RecordingExecutor implements QmpExecutor {
  readonly calls: Call[] = [];
  constructor(
    private readonly answers: Record<string, unknown> = {},
    private readonly failWith?: (cmd: string) => Error | undefined,
  ) {}

  async execute<T = unknown>(cmd: string, args?: Record<string, unknown>, opts?: QmpCommandOptions): Promise<T> {
    this.calls.push({ cmd, args, opts });
    const err = this.failWith?.(cmd);
    if (err) throw err;
    return (cmd in this.answers ? this.answers[cmd] : {}) as T;
  }
}

describe('QMP command wrappers', () => {
  it.each([
    ['queryVersion', 'query-version'],
    ['queryStatus', 'query-status'],
    ['queryKvm', 'query-kvm'],
    ['queryName', 'query-name'],
    ['queryMachines', 'query-machines'],
    ['queryMigrate', 'query-migrate'],
    ['queryMigrateCapabilities', 'query-migrate-capabilities'],
    ['queryMigrateParameters', 'query-migrate-parameters'],
    ['queryMemorySizeSummary', 'query-memory-size-summary'],
    ['queryCpusFast', 'query-cpus-fast'],
    ['migrateCancel', 'migrate_cancel'],
    ['migrateStartPostcopy', 'migrate-start-postcopy'],
    ['stop', 'stop'],
    ['cont', 'cont'],
    ['quit', 'quit'],
    ['systemPowerdown', 'system_powerdown'],
  ] as const)('%s sends "%s" without arguments', async (fn, command) => {
    const exec = new RecordingExecutor();
    await (qmp[fn] as (e: QmpExecutor) => Promise<unknown>)(exec);
    expect(exec.calls).toEqual([{ cmd: command, args: undefined, opts: undefined }]);
  });

  it('passes results through typed', async () => {
    const version = { qemu: { major: 7, minor: 2, micro: 22 }, package: 'Debian' };
    const caps = [
      { capability: 'xbzrle', state: false },
      { capability: 'events', state: true },
    ];
    const exec = new RecordingExecutor({ 'query-version': version, 'query-migrate-capabilities': caps });
    const v = await qmp.queryVersion(exec);
    expect(qmp.qemuVersionString(v)).toBe('7.2.22');
    const list = await qmp.queryMigrateCapabilities(exec);
    expect(list.filter((c) => c.state).map((c) => c.capability)).toEqual(['events']);
  });

  it('forwards a per-call timeout', async () => {
    const exec = new RecordingExecutor();
    await qmp.queryMigrate(exec, { timeoutMs: 1234 });
    expect(exec.calls[0]!.opts).toEqual({ timeoutMs: 1234 });
  });

  it('migrateSetCapabilities builds the capabilities list in order, skipping undefined', async () => {
    const exec = new RecordingExecutor();
    await qmp.migrateSetCapabilities(exec, {
      events: true,
      xbzrle: false,
      'pause-before-switchover': true,
      'auto-converge': undefined,
    });
    expect(exec.calls).toEqual([
      {
        cmd: 'migrate-set-capabilities',
        args: {
          capabilities: [
            { capability: 'events', state: true },
            { capability: 'xbzrle', state: false },
            { capability: 'pause-before-switchover', state: true },
          ],
        },
        opts: undefined,
      },
    ]);
    expect(qmp.capabilityList({})).toEqual([]);
  });

  it('migrateSetParameters sends the parameters as top-level arguments, minus undefined', async () => {
    const exec = new RecordingExecutor();
    await qmp.migrateSetParameters(exec, {
      'max-bandwidth': 125_000_000,
      'downtime-limit': 300,
      'tls-creds': null,
      'multifd-channels': undefined,
    });
    expect(exec.calls[0]).toEqual({
      cmd: 'migrate-set-parameters',
      args: { 'max-bandwidth': 125_000_000, 'downtime-limit': 300, 'tls-creds': null },
      opts: undefined,
    });
  });

  it('migrate sends the uri, and resume only when asked', async () => {
    const exec = new RecordingExecutor();
    await qmp.migrate(exec, 'tcp:10.0.0.2:4444');
    await qmp.migrate(exec, 'tcp:10.0.0.2:4444', { resume: true, timeoutMs: 50 });
    expect(exec.calls).toEqual([
      { cmd: 'migrate', args: { uri: 'tcp:10.0.0.2:4444' }, opts: undefined },
      { cmd: 'migrate', args: { uri: 'tcp:10.0.0.2:4444', resume: true }, opts: { timeoutMs: 50 } },
    ]);
  });

  it('migrateIncoming and migrateContinue send their single argument', async () => {
    const exec = new RecordingExecutor();
    await qmp.migrateIncoming(exec, 'tcp:0.0.0.0:4444');
    await qmp.migrateContinue(exec);
    await qmp.migrateContinue(exec, 'device');
    expect(exec.calls.map(({ cmd, args }) => ({ cmd, args }))).toEqual([
      { cmd: 'migrate-incoming', args: { uri: 'tcp:0.0.0.0:4444' } },
      { cmd: 'migrate-continue', args: { state: 'pre-switchover' } },
      { cmd: 'migrate-continue', args: { state: 'device' } },
    ]);
  });

  it('announceSelf fills in QEMU\'s default timings and lets the caller override them', async () => {
    const exec = new RecordingExecutor();
    await qmp.announceSelf(exec);
    await qmp.announceSelf(exec, { rounds: 10, interfaces: ['net0'] });
    expect(exec.calls.map((c) => c.args)).toEqual([
      { initial: 50, max: 550, rounds: 5, step: 100 },
      { initial: 50, max: 550, rounds: 10, step: 100, interfaces: ['net0'] },
    ]);
    expect(exec.calls.every((c) => c.cmd === 'announce-self')).toBe(true);
  });

  it('quit treats the connection dropping during quit as success, but not other failures', async () => {
    const dropped = new RecordingExecutor({}, () => new QmpDisconnectedError('gone', { command: 'quit' }));
    await expect(qmp.quit(dropped)).resolves.toBeUndefined();

    const timedOut = new RecordingExecutor({}, () => new QmpTimeoutError(100, { command: 'quit' }));
    await expect(qmp.quit(timedOut)).rejects.toBeInstanceOf(QmpTimeoutError);

    const refused = new RecordingExecutor({}, (cmd) => new QmpCommandError(cmd, undefined, 'GenericError', 'no'));
    await expect(qmp.quit(refused)).rejects.toBeInstanceOf(QmpCommandError);
  });

  it('lets other wrappers pass errors through unchanged', async () => {
    const err = new QmpCommandError('migrate', { uri: 'x' }, 'GenericError', 'busy');
    const exec = new RecordingExecutor({}, () => err);
    await expect(qmp.migrate(exec, 'x')).rejects.toBe(err);
  });

  it('accepts a QmpClient as a QmpExecutor', async () => {
    const exec: QmpExecutor = new qmp.QmpClient();
    // Not connected, so the wrapper's call reaches the client and is refused there.
    await expect(qmp.queryStatus(exec)).rejects.toBeInstanceOf(qmp.QmpStateError);
  });
});

describe('dirty-rate wrappers', () => {
  // What QEMU 10.0.2 answered, measured on this machine.
  const measured10 = {
    status: 'measured', 'sample-pages': 1024, 'dirty-rate': 0, mode: 'page-sampling',
    'calc-time-unit': 'millisecond', 'start-time': 1796703707, 'calc-time': 300,
  };

  it('calcDirtyRate sends the arguments given, minus undefined', async () => {
    const exec = new RecordingExecutor();
    await qmp.calcDirtyRate(exec, { 'calc-time': 300, 'calc-time-unit': 'millisecond', 'sample-pages': 1024 });
    await qmp.calcDirtyRate(exec, { 'calc-time': 1, 'sample-pages': undefined, mode: 'page-sampling' });
    expect(exec.calls.map(({ cmd, args }) => ({ cmd, args }))).toEqual([
      { cmd: 'calc-dirty-rate', args: { 'calc-time': 300, 'calc-time-unit': 'millisecond', 'sample-pages': 1024 } },
      { cmd: 'calc-dirty-rate', args: { 'calc-time': 1, mode: 'page-sampling' } },
    ]);
  });

  it('calcDirtyRate refuses bad arguments before QEMU sees them, dirty-ring included', async () => {
    const exec = new RecordingExecutor();
    await expect(qmp.calcDirtyRate(exec, { 'calc-time': 0 })).rejects.toThrow(/whole, positive calc-time; got 0/);
    await expect(qmp.calcDirtyRate(exec, { 'calc-time': 1.5 })).rejects.toThrow(/calc-time; got 1.5/);
    await expect(qmp.calcDirtyRate(exec, { 'calc-time': 1, 'sample-pages': -4 })).rejects.toThrow(/sample-pages; got -4/);
    await expect(qmp.calcDirtyRate(exec, { 'calc-time': 1, mode: 'dirty-ring' })).rejects.toThrow(/dirty-ring needs KVM.*crashes/);
    expect(exec.calls).toEqual([]);
  });

  it('queryDirtyRate asks in the unit given and returns a checked copy of the answer', async () => {
    const exec = new RecordingExecutor({ 'query-dirty-rate': { ...measured10, 'x-unknown': 'dropped' } });
    const info = await qmp.queryDirtyRate(exec, 'millisecond', { timeoutMs: 500 });
    expect(exec.calls).toEqual([{ cmd: 'query-dirty-rate', args: { 'calc-time-unit': 'millisecond' }, opts: { timeoutMs: 500 } }]);
    expect(info).toEqual(measured10);
    // QEMU 7.2's answer (no calc-time-unit, asked without one), and a dirty-ring answer's vCPU list.
    const old = { status: 'measuring', 'sample-pages': 256, mode: 'page-sampling', 'start-time': 33326, 'calc-time': 1 };
    const ring = { ...measured10, mode: 'dirty-ring', 'sample-pages': 0, 'vcpu-dirty-rate': [{ id: 0, 'dirty-rate': 12 }] };
    const exec2 = new RecordingExecutor({ 'query-dirty-rate': old });
    expect(await qmp.queryDirtyRate(exec2)).toEqual(old);
    expect(exec2.calls[0]!.args).toBeUndefined();
    expect(await qmp.queryDirtyRate(new RecordingExecutor({ 'query-dirty-rate': ring }), 'millisecond')).toEqual(ring);
  });

  it.each([
    ['not an object', [measured10], /not an object/],
    ['null', null, /not an object/],
    ['an unknown status', { ...measured10, status: 'done' }, /status is not one of unstarted, measuring, measured \(got "done"\)/],
    ['a missing calc-time', { ...measured10, 'calc-time': undefined }, /calc-time is not a whole number >= 0 \(got undefined\)/],
    ['a string rate', { ...measured10, 'dirty-rate': '50' }, /dirty-rate is not a whole number >= -1 \(got "50"\)/],
    ['a rate below -1', { ...measured10, 'dirty-rate': -7 }, /dirty-rate is not a whole number >= -1/],
    ['a fractional rate', { ...measured10, 'dirty-rate': 0.5 }, /dirty-rate is not a whole number/],
    ['an unknown mode', { ...measured10, mode: 'guess' }, /mode is not one of/],
    ['another unit than asked', { ...measured10, 'calc-time-unit': 'second' }, /calc-time-unit is not the millisecond asked for/],
    ['a bad vCPU list', { ...measured10, 'vcpu-dirty-rate': [{ id: 'a', 'dirty-rate': 1 }] }, /vcpu-dirty-rate entry/],
    ['a huge answer, cut short', { ...measured10, status: 'x'.repeat(5000) }, /status is not one of .*\.\.\.\)$/],
  ])('queryDirtyRate refuses %s, naming it', async (_what, answer, message) => {
    const exec = new RecordingExecutor({ 'query-dirty-rate': answer });
    const err = await qmp.queryDirtyRate(exec, 'millisecond').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpError);
    expect((err as QmpError).command).toBe('query-dirty-rate');
    expect((err as Error).message).toMatch(/^QEMU's answer to query-dirty-rate does not match its schema: /);
    expect((err as Error).message).toMatch(message);
  });

  it('over a real QMP socket: QEMU 7.2\'s refusal of calc-time-unit arrives as a QmpCommandError, a hostile answer as a QmpError', async () => {
    const server = await FakeQmpServer.create({
      handlers: {
        'calc-dirty-rate': (cmd, conn) => conn.replyError(cmd, 'GenericError', "Parameter 'calc-time-unit' is unexpected"),
        'query-dirty-rate': (cmd, conn) => conn.reply(cmd, { ...measured10, 'dirty-rate': { huge: true } }),
      },
    });
    const client = new qmp.QmpClient({ defaultTimeoutMs: 2000 });
    try {
      await client.connect(server.path);
      const refused = await qmp.calcDirtyRate(client, { 'calc-time': 300, 'calc-time-unit': 'millisecond' }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(QmpCommandError);
      expect((refused as QmpCommandError).desc).toBe("Parameter 'calc-time-unit' is unexpected");
      await expect(qmp.queryDirtyRate(client)).rejects.toThrow(/dirty-rate is not a whole number >= -1 \(got \{"huge":true\}\)/);
    } finally {
      await client.disconnect();
      await server.close();
    }
  });
});
