import { describe, expect, it } from 'vitest';
import * as qmp from '../../electron/engine/qmp';
import type { QmpCommandOptions, QmpExecutor } from '../../electron/engine/qmp';
import {
  QmpCommandError,
  QmpDisconnectedError,
  QmpTimeoutError,
} from '../../electron/engine/qmp/errors';

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
