import { describe, expect, it } from 'vitest';
import { UsageError, strategyOption } from '../../electron/cli/output';
import { parseMigrationOptions } from '../../electron/engine/migration/limits';
import { STRATEGIES, STRATEGY_NAMES } from '../../electron/engine/migration/strategies';
import { capabilityRefusal } from '../../electron/engine/migration/capabilities';

describe('the strategies', () => {
  it('each explains itself and asks only for capabilities MigLab allows', () => {
    expect(STRATEGY_NAMES).toEqual(['precopy', 'auto-converge', 'xbzrle', 'multifd', 'pause-before-switchover']);
    for (const s of Object.values(STRATEGIES)) {
      expect(s.explanation.length).toBeGreaterThan(80);
      for (const c of s.capabilities) expect(capabilityRefusal(c, true)).toBeNull();
    }
  });

  it('turn their parameters into QEMU\'s, on the sides that need them', () => {
    expect(STRATEGIES['auto-converge'].qemuParameters({ initialPercent: 30, incrementPercent: 5, tailslow: true, maxPercent: 90 })).toEqual({
      source: { 'cpu-throttle-initial': 30, 'cpu-throttle-increment': 5, 'cpu-throttle-tailslow': true, 'max-cpu-throttle': 90 },
      destination: {},
    });
    expect(STRATEGIES.xbzrle.qemuParameters({ cacheMiB: 16 })).toEqual({ source: { 'xbzrle-cache-size': 16 * 2 ** 20 }, destination: {} });
    expect(STRATEGIES.multifd.qemuParameters({ channels: 4, compression: 'zstd' })).toEqual({
      source: { 'multifd-channels': 4, 'multifd-compression': 'zstd' },
      destination: { 'multifd-channels': 4, 'multifd-compression': 'zstd' },
    });
    // Left out: QEMU's own defaults stay.
    expect(STRATEGIES.multifd.qemuParameters(undefined)).toEqual({ source: {}, destination: {} });
  });

  it('are checked as options, each naming the parameter and its range', () => {
    expect(parseMigrationOptions({ strategy: { name: 'xbzrle', params: { cacheMiB: 8 } } }).strategy).toEqual({ name: 'xbzrle', params: { cacheMiB: 8 } });
    expect(() => parseMigrationOptions({ strategy: { name: 'auto-converge', params: { initialPercent: 120 } } })).toThrow('strategy.params.initialPercent: the initial throttle is at most 99 %');
    expect(() => parseMigrationOptions({ strategy: { name: 'multifd', params: { channels: 2, colour: 'red' } } })).toThrow(/strategy\.params: .*colour/);
    expect(() => parseMigrationOptions({ strategy: { name: 'warp' as never } })).toThrow('strategy.name: the strategy is one of precopy, auto-converge, xbzrle, multifd, pause-before-switchover');
  });

  it('come from the CLI as --strategy NAME --strategy-param K=V, refused with the strategy\'s words', () => {
    expect(strategyOption('multifd', ['channels=3', 'compression=zlib'])).toEqual({ strategy: { name: 'multifd', params: { channels: 3, compression: 'zlib' } } });
    expect(strategyOption('auto-converge', ['tailslow=true'])).toEqual({ strategy: { name: 'auto-converge', params: { tailslow: true } } });
    expect(strategyOption(undefined, undefined)).toEqual({});
    expect(() => strategyOption(undefined, ['channels=3'])).toThrow(new UsageError('--strategy-param goes with --strategy'));
    expect(() => strategyOption('fast', [])).toThrow('--strategy takes one of precopy, auto-converge, xbzrle, multifd, pause-before-switchover (got "fast")');
    expect(() => strategyOption('multifd', ['channels'])).toThrow('--strategy-param takes KEY=VALUE, like initialPercent=30 (got "channels")');
    expect(() => strategyOption('multifd', ['channels=0'])).toThrow('--strategy multifd: channels: multifd needs at least 1 channel');
  });
});
