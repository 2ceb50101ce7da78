// `miglab demo`: a whole migration on this machine, shown live on the terminal.
import type { FollowedMigration } from '../engine/api/follow-migration';
import { runDemo, type DemoOptions, type DemoReport } from '../engine/api/demo';
import { formatBytes, formatBytesRate, formatMs } from '../engine/util/format';
import type { MigrationEvent } from '../engine/migration/types';
import { InvalidSubnetError, parseSubnet } from '../engine/network/lab-network';
import { numberOption, printJson, table, UsageError, downtimePolicyOption, strategyOption } from './output';

export interface DemoArgs {
  json: boolean;
  memory?: string | undefined;
  'dirty-rate'?: string | undefined;
  'working-set'?: string | undefined;
  bandwidth?: string | undefined;
  'downtime-limit'?: string | undefined;
  'downtime-policy'?: string | undefined;
  'measure-dirty-rate'?: string | undefined;
  kernel?: string | undefined;
  initrd?: string | undefined;
  append?: string | undefined;
  disk?: string | undefined;
  'ready-pattern'?: string | undefined;
  capability?: string[] | undefined;
  strategy?: string | undefined;
  'strategy-param'?: string[] | undefined;
  subnet?: string | undefined;
  'probe-interval'?: string | undefined;
  netns?: boolean | undefined;
}

function num(name: string, value: string | undefined, min: number, max: number, fallback: number): number {
  return numberOption(name, value, min, max) ?? fallback;
}

export function parseDemoArgs(a: DemoArgs): Omit<DemoOptions, 'onProgress' | 'onEvent'> {
  if (a.disk && a.kernel) throw new UsageError('Give either --kernel (with --initrd, --append) or --disk, not both');
  if ((a.initrd || a.append) && !a.kernel) throw new UsageError('--initrd and --append go with --kernel');
  const readyPattern = a['ready-pattern'];
  if (readyPattern !== undefined && !a.kernel && !a.disk) throw new UsageError('--ready-pattern goes with --kernel or --disk: the lab guest says by itself when it is ready');
  const custom: DemoOptions['custom'] = a.kernel
    ? { kind: 'kernel', kernel: a.kernel, ...(a.initrd ? { initrd: a.initrd } : {}), ...(a.append ? { append: a.append } : {}), ...(readyPattern ? { readyPattern } : {}) }
    : a.disk
      ? { kind: 'disk', path: a.disk, ...(readyPattern ? { readyPattern } : {}) }
      : undefined;
  const dirtyRateMBps = num('dirty-rate', a['dirty-rate'], 0, 100_000, 0);
  if (custom && dirtyRateMBps > 0) throw new UsageError('--dirty-rate needs the lab guest (labload makes the workload): drop it for a custom guest');
  const migration: DemoOptions['migration'] = {
    bandwidthMBps: num('bandwidth', a.bandwidth, 1, 100_000, 1000),
    // Only a limit the user gave: without one, the downtime policy chooses (ramp from 100 ms).
    ...(a['downtime-limit'] !== undefined ? { downtimeLimitMs: num('downtime-limit', a['downtime-limit'], 1, 2_000_000, 300) } : {}),
    ...(a['downtime-policy'] !== undefined ? { downtimePolicy: downtimePolicyOption(a['downtime-policy']) } : {}),
    ...strategyOption(a.strategy, a['strategy-param']),
    ...(a['measure-dirty-rate'] !== undefined ? { measureDirtyRateMs: Math.round(num('measure-dirty-rate', a['measure-dirty-rate'], 50, 60_000, 1000)) } : {}),
    capabilities: Object.fromEntries((a.capability ?? []).map((c) => [c, true])),
    probeIntervalMs: num('probe-interval', a['probe-interval'], 5, 1000, 20),
  };
  if (a.netns && (a.kernel || a.disk)) throw new UsageError('--netns runs the lab guest: a custom --kernel or --disk would have to be in each agent\'s image library');
  if (a.netns && process.getuid?.() !== 0) throw new UsageError('--netns makes network namespaces, which needs root: run it with sudo, or drop --netns for hosts on this machine');
  if (a.subnet !== undefined) {
    try {
      parseSubnet(a.subnet);
    } catch (err) {
      if (err instanceof InvalidSubnetError) throw new UsageError(`--subnet: ${err.message}`);
      throw err;
    }
  }
  return {
    memoryMiB: num('memory', a.memory, 64, 65536, 256),
    dirtyRateMBps,
    workingSetMiB: num('working-set', a['working-set'], 1, 65536, 64),
    migration,
    ...(custom ? { custom } : {}),
    ...(a.subnet !== undefined ? { subnet: a.subnet } : {}),
    ...(a.netns ? { netns: true } : {}),
  };
}

function causeText(cause: 'rarp' | 'gratuitous-arp' | 'traffic'): string {
  return cause === 'rarp' ? 'RARP announce frame' : cause === 'gratuitous-arp' ? 'gratuitous ARP' : 'frame of ordinary traffic';
}

/** Live lines on stderr: one per phase, check and pass; a status line redrawn on a terminal. */
export function liveDisplay(scope = 'demo'): { onEvent: (ev: MigrationEvent) => void; say: (m: string) => void } {
  const tty = process.stderr.isTTY;
  let statusShown = false;
  let lastPrinted = 0;
  const clear = () => {
    if (tty && statusShown) process.stderr.write('\r\x1b[K');
    statusShown = false;
  };
  const line = (s: string) => {
    clear();
    process.stderr.write(`${s}\n`);
  };
  let eta = '';
  let lastVerdict = '';
  let lastAdvice = '';
  let verdictAt = -Infinity;
  return {
    say: (m) => line(`[${scope}] ${m}`),
    onEvent: (ev) => {
      switch (ev.type) {
        case 'phase':
          line(`[${ev.phase}] at ${formatMs(ev.atMs)}`);
          break;
        case 'check':
          line(`  ${ev.check.status.padEnd(4)} ${ev.check.name}: ${ev.check.message}`);
          break;
        case 'pass':
          line(`  pass ${ev.pass.pass}: ${formatBytes(ev.pass.bytes)} in ${formatMs(ev.pass.durationMs)}, dirty rate ${formatBytesRate(ev.pass.dirtyRateBps)}`);
          break;
        case 'prediction': {
          const p = ev.prediction;
          eta = p.kind === 'eta' ? `ETA ${formatMs(p.etaMs)}` : p.kind === 'will-not-converge' ? 'will not converge' : '';
          // The verdict when it changes, then a reminder every 5 s: not a line per sample.
          if (p.kind === 'will-not-converge' && (lastVerdict !== p.kind || ev.atMs - verdictAt >= 5000)) {
            line(`  will not converge: ${p.reason}`);
            // The advice once, and again only when it says something else.
            const advice = p.advice.join(' ');
            if (advice && advice !== lastAdvice) line(`    what would help: ${advice}`);
            lastAdvice = advice;
            verdictAt = ev.atMs;
          }
          lastVerdict = p.kind;
          break;
        }
        case 'sample': {
          const s = ev.sample;
          // What QEMU did not report shows as n/a, not as 0.
          const pct = s.totalBytes && s.transferredBytes !== null ? `${Math.min(100, (100 * s.transferredBytes) / s.totalBytes).toFixed(0)}%` : 'n/a';
          const text = `  pass ${s.pass ?? 'n/a'}  ${pct} sent  remaining ${formatBytes(s.remainingBytes)}  dirty ${formatBytesRate(s.dirtyRateBps)}  link ${formatBytesRate(s.throughputBps)}  ${eta}`;
          if (tty) {
            process.stderr.write(`\r\x1b[K${text}`);
            statusShown = true;
          } else if (ev.atMs - lastPrinted >= 1000) {
            lastPrinted = ev.atMs;
            line(text);
          }
          break;
        }
        case 'heartbeat-gap':
          line(`  heartbeats resumed on the destination after a ${formatMs(ev.gapMs)} gap`);
          break;
        case 'downtime-step':
          line(ev.step.action === 'raise' ? `  downtime policy: ${ev.step.why}` : `  downtime policy gives up: ${ev.step.why}`);
          break;
        case 'mac-move':
          line(`  switch: ${ev.move.mac} moved from ${ev.move.fromHost} (port ${ev.move.fromPort}) to ${ev.move.toHost} (port ${ev.move.toPort}), seen in a ${causeText(ev.move.cause)}`);
          break;
        case 'announce':
          line(`  switch: announce frame ${ev.count} (RARP) from ${ev.mac} on ${ev.host} at ${formatMs(ev.atMs)}`);
          break;
        case 'link': {
          const l = ev.stats;
          const p = l.profile;
          line(`  link: ${l.cut ? 'CUT' : `${p.bandwidthMBps === null ? 'unlimited' : `${p.bandwidthMBps} MB/s`}, +${p.latencyMs} ms, ${p.lossPercent}% loss`}; ${formatBytes(l.bytesForward)} through, ${l.lossStalls} retransmission stalls`);
          break;
        }
        default:
          break;
      }
    },
  };
}

/** The object `--json` prints: what the issue promised, null for what cannot be measured. */
export function demoJson(r: DemoReport) {
  const m = r.result;
  return {
    hosts: r.hosts,
    status: m.status,
    reason: m.reason,
    failure: m.failure,
    guest: m.guest,
    from: m.from,
    to: m.to,
    runningOn: m.runningOn,
    destinationConsoleTail: m.destinationConsoleTail,
    ramBytes: m.ramBytes,
    totalTimeMs: m.totalTimeMs,
    setupTimeMs: m.setupTimeMs,
    downtimeMs: m.downtimeMs,
    guestDowntimeMs: m.guestDowntimeMs,
    transferredBytes: m.transferredBytes,
    passes: m.passes.map((p) => ({ pass: p.pass, startMs: Math.round(p.startMs), durationMs: Math.round(p.durationMs), bytes: p.bytes, dirtyRate: p.dirtyRateBps })),
    phases: m.phases.map((p) => ({ name: p.name, startMs: Math.round(p.startMs), endMs: p.endMs === null ? null : Math.round(p.endMs) })),
    prediction: m.prediction,
    downtimePolicy: m.downtimePolicy,
    integrity: r.integrity,
    workload: r.workload,
    capabilities: r.capabilities,
    network: m.network,
    checks: m.checks,
    qemuMessage: m.qemuMessage,
  };
}

function printReport(r: DemoReport): void {
  const m = r.result;
  console.log(`\nhosts: ${r.hosts.map((h) => `${h.name} ${h.address} (${h.transport === 'local' ? 'this machine' : 'agent over TLS, in a network namespace'})`).join('; ')}`);
  const head = m.status === 'completed' ? `Migration completed: ${m.guest} moved from ${m.from} to ${m.to}` : `Migration ${m.status}: ${m.reason}`;
  console.log(`\n${head}`);
  if (m.qemuMessage) console.log(`  QEMU said: ${m.qemuMessage}`);
  const rows: string[][] = [];
  const ms = (v: number | null) => (v === null ? 'n/a' : formatMs(v));
  rows.push(['total time (QEMU)', ms(m.totalTimeMs)], ['setup (QEMU)', ms(m.setupTimeMs)], ['downtime (QEMU)', ms(m.downtimeMs)]);
  rows.push(['downtime (guest heartbeats)', m.guestDowntimeMs === null ? 'n/a' : formatMs(m.guestDowntimeMs)]);
  if (m.downtimePolicy) {
    const p = m.downtimePolicy;
    const steps = p.steps.map((st) => (st.action === 'raise' ? `${st.downtimeLimitMs} ms at pass ${st.pass}` : `ended at pass ${st.pass}`));
    rows.push(['downtime policy', `${p.name}: started at ${p.startMs} ms${steps.length ? `; ${steps.join(', ')}` : '; no step needed'}`]);
  }
  rows.push(['transferred (QEMU)', m.transferredBytes === null ? 'n/a' : `${formatBytes(m.transferredBytes)} for ${m.ramBytes === null ? 'RAM of a size QEMU did not report' : `${formatBytes(m.ramBytes)} of RAM`}`]);
  if (r.workload) rows.push(['workload (guest)', `${formatBytesRate(r.workload.measuredMBps * 1e6)} over ${r.workload.workingSetMiB} MiB (asked ${r.workload.requestedMBps} MB/s)`]);
  const net = m.network;
  if (net) {
    rows.push(['downtime (network probe)', net.networkDowntimeMs === null ? 'n/a (no probe replies)' : `${formatMs(net.networkDowntimeMs)} longest gap in replies to a ping every ${net.probe?.intervalMs} ms`]);
    if (net.probe) rows.push(['probe (wire)', `${net.probe.received} of ${net.probe.sent} pings answered`]);
    const moves = net.macMoves.map((mv) => `${mv.fromHost} -> ${mv.toHost} at ${formatMs(mv.atMs)} (${causeText(mv.cause)})`);
    rows.push(['MAC moves (switch)', moves.length ? `${net.mac}: ${moves.join('; ')}` : 'none seen']);
    rows.push(['announce frames (switch)', `${net.announceFrames} of ${net.expectedAnnounceFrames ?? 'n/a'} rounds${net.expectedAnnounceFrames === null ? ' (the destination did not report its announce-rounds)' : ''}${net.announceAtMs.length ? ` at ${net.announceAtMs.map((t) => formatMs(t)).join(', ')}` : ''}`]);
  }
  if (r.capabilities) rows.push(['capabilities on (QEMU)', `host-a: ${r.capabilities.source.join(', ')}; host-b: ${r.capabilities.destination.join(', ')}`]);
  if (r.integrity) rows.push(['integrity (guest)', `${r.integrity.pages} pages, ${r.integrity.bad} bad; heartbeats ${r.integrity.heartbeatsContinue ? 'continue' : 'STOPPED'}`]);
  console.log(table(rows.map(([a, b]) => [`  ${a}`, b!])));
  if (m.passes.length) {
    console.log('\n  pre-copy passes (QEMU MIGRATION_PASS events and query-migrate):');
    console.log(table([
      ['    pass', 'start', 'duration', 'sent', 'dirty rate', 'throughput'],
      ...m.passes.map((p) => [`    ${p.pass}`, formatMs(p.startMs), formatMs(p.durationMs), formatBytes(p.bytes), formatBytesRate(p.dirtyRateBps), formatBytesRate(p.throughputBps)]),
    ]));
  }
  console.log(`\n  phases: ${m.phases.map((p) => `${p.name} ${p.endMs === null ? '?' : formatMs(p.endMs - p.startMs)}`).join(', ')}`);
}

export async function demoCommand(args: DemoArgs): Promise<number> {
  const opts = parseDemoArgs(args);
  const live = args.json ? null : liveDisplay();
  let migration: FollowedMigration | null = null;
  const onSigint = () => {
    void migration?.cancel('Interrupted (Ctrl-C)').then((accepted) => {
      if (accepted) process.stderr.write('\n[demo] cancelling the migration...\n');
    });
  };
  process.on('SIGINT', onSigint);
  try {
    const report = await runDemo({
      ...opts,
      ...(live ? { onProgress: live.say, onEvent: live.onEvent } : {}),
      onMigration: (m) => {
        migration = m;
      },
    });
    if (args.json) printJson(demoJson(report));
    else printReport(report);
    const ok = report.result.status === 'completed' && (report.integrity === null || report.integrity.ok);
    return ok ? 0 : 1;
  } finally {
    process.off('SIGINT', onSigint);
  }
}
