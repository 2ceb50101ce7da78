// The agent's rules for QMP calls and migration streams, as pure functions: which lab hosts an
// agent accepts, how a tcp: URI is read, and what the QMP filter passes with which arguments.
import { describe, expect, it } from 'vitest';
import { parseTcpUri, peerProblem, usablePeers } from '../../electron/engine/hosts/remote/lab-peers';
import { qmpRefusal, type QmpFilterContext } from '../../electron/engine/agent/qmp-filter';

const RANGE = { first: 50000, last: 50099 };

describe('lab peers', () => {
  it('accepts LAN hosts for any agent, loopback and link-local only for an agent in the same scope', () => {
    expect(peerProblem({ address: '192.168.1.21', ports: RANGE }, '192.168.1.20')).toBeNull();
    expect(peerProblem({ address: '192.168.1.21', ports: RANGE }, '127.0.0.1')).toBeNull();
    expect(peerProblem({ address: '127.0.0.1', ports: RANGE }, '127.0.0.1')).toBeNull();
    expect(peerProblem({ address: '127.0.0.1', ports: RANGE }, '192.168.1.20')).toMatch(/loopback address, and this agent listens on 192\.168\.1\.20/);
    expect(peerProblem({ address: '169.254.3.4', ports: RANGE }, '169.254.9.9')).toBeNull();
    expect(peerProblem({ address: '169.254.3.4', ports: RANGE }, '10.0.0.1')).toMatch(/link-local/);
  });

  it('refuses what is no host: 0.0.0.0/8, multicast, broadcast, the metadata service, non-IPv4, odd spellings, low ports', () => {
    for (const address of ['0.0.0.0', '0.1.2.3', '224.0.0.251', '239.1.1.1', '240.0.0.1', '255.255.255.255', '::1', '::', 'localhost', '127.000.0.1', '127.1', '']) {
      expect([address, peerProblem({ address, ports: RANGE }, '127.0.0.1')]).toEqual([address, expect.any(String)]);
    }
    expect(peerProblem({ address: '169.254.169.254', ports: RANGE }, '169.254.9.9')).toMatch(/metadata/);
    expect(peerProblem({ address: '10.0.0.2', ports: { first: 22, last: 50000 } }, '10.0.0.1')).toMatch(/1024-65535/);
    expect(peerProblem({ address: '10.0.0.2', ports: { first: 50010, last: 50000 } }, '10.0.0.1')).toMatch(/FIRST-LAST/);
    expect(usablePeers('10.0.0.1', [{ address: '127.0.0.1', ports: RANGE }, { address: '10.0.0.2', ports: RANGE }])).toEqual([{ address: '10.0.0.2', ports: RANGE }]);
  });

  it('reads tcp:IPv4:PORT in plain form only', () => {
    expect(parseTcpUri('tcp:10.0.0.2:50000')).toEqual({ address: '10.0.0.2', port: 50000 });
    for (const uri of ['tcp:10.0.0.2:050000', 'tcp:10.0.0.2:0', 'tcp:10.0.0.2:65536', 'tcp:[::1]:5', 'tcp:host:5', 'tcp:127.1:5', 'tcp:0x7f.0.0.1:5', 'TCP:10.0.0.2:5', 'tcp:10.0.0.2:5 ', 'exec:x', 42]) {
      expect([uri, parseTcpUri(uri)]).toEqual([uri, null]);
    }
  });
});

describe('the QMP filter', () => {
  const ctx: QmpFilterContext = {
    outgoing: (address, port) => (address === '10.0.0.2' && port >= 50000 && port <= 50099 ? null : 'not a lab host'),
    incoming: (address, port) => (address === '10.0.0.1' && port === 50001 ? null : 'not yours'),
    maxCacheBytes: 2 ** 30,
  };
  const refused = (command: string, args?: Record<string, unknown>) => qmpRefusal(command, args, ctx) !== null;

  it('passes the commands and arguments the engine sends', () => {
    for (const [command, args] of [
      ['query-status', undefined], ['query-migrate', undefined], ['query-migrate-parameters', undefined], ['query-migrate-capabilities', undefined],
      ['cont', undefined], ['stop', {}], ['quit', undefined], ['system_powerdown', undefined], ['migrate_cancel', undefined],
      ['migrate', { uri: 'tcp:10.0.0.2:50050' }], ['migrate', { uri: 'tcp:10.0.0.2:50050', resume: true }], ['migrate-incoming', { uri: 'tcp:10.0.0.1:50001' }],
      ['migrate-continue', { state: 'pre-switchover' }], ['announce-self', { initial: 50, max: 550, rounds: 5, step: 100 }],
      ['migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }, { capability: 'xbzrle', state: false }] }],
      ['migrate-set-parameters', { 'max-bandwidth': 200_000_000, 'downtime-limit': 300, 'tls-creds': 'miglab-tls-client', 'tls-hostname': '10.0.0.2' }],
      ['migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '' }],
    ] as const) {
      expect([command, qmpRefusal(command, args as Record<string, unknown> | undefined, ctx)]).toEqual([command, null]);
    }
  });

  it('refuses other commands, queries that name paths, and every argument it does not know or whose value is out of range', () => {
    expect(qmpRefusal('query-block', undefined, ctx)).toMatch(/does not pass QMP command "query-block"/);
    for (const [command, args] of [
      ['query-chardev', undefined], ['query-qmp-schema', undefined], ['object-add', {}], ['human-monitor-command', {}],
      ['migrate', { uri: 'tcp:10.0.0.9:50050' }], ['migrate', { uri: 'tcp:10.0.0.2:50050', blk: true }], ['migrate', { uri: 'tcp:10.0.0.2:50050', channels: [] }],
      ['migrate', {}], ['migrate-incoming', { uri: 'tcp:10.0.0.1:50002' }], ['migrate-incoming', { uri: 'tcp:10.0.0.1:50001', 'exit-on-error': false }],
      ['migrate-set-parameters', { 'tls-authz': 'x' }], ['migrate-set-parameters', { 'tls-creds': 'other' }], ['migrate-set-parameters', { 'tls-hostname': '-x' }],
      ['migrate-set-parameters', { 'xbzrle-cache-size': 2 ** 31 }], ['migrate-set-parameters', { 'downtime-limit': -1 }], ['migrate-set-parameters', { mode: 'normal' }],
      ['migrate-set-capabilities', { capabilities: [{ capability: 'x-colo', state: true }] }], ['migrate-set-capabilities', { capabilities: [{ capability: 'events' }] }],
      ['migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }], extra: 1 }], ['migrate-set-capabilities', {}],
      ['migrate-continue', { state: 'active' }], ['migrate-continue', {}], ['announce-self', { initial: 0 }], ['announce-self', { id: 'x' }],
      ['cont', { x: 1 }], ['query-status', { x: 1 }],
    ] as const) {
      expect([command, args, refused(command, args as Record<string, unknown> | undefined)]).toEqual([command, args, true]);
    }
  });
});
