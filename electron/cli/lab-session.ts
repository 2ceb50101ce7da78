// `miglab migrate` and `miglab recover`: one engine run against a lab file whose hosts are agents.
// The guests live on the agents' hosts, so the run connects, acts, and leaves them running.
import { resolve } from 'node:path';
import { RemoteHost } from '../engine/hosts/remote';
import type { Lab } from '../engine/lab/lab';
import { LabFileError, labFromFile, readLabFile } from '../engine/lab/lab-file';
import { MigrationJournal } from '../engine/migration/journal';
import { migrateGuest } from '../engine/migration/orchestrator';
import { formatMs } from '../engine/migration/prediction';
import { describeRecovery, recoverInterruptedMigrations, type RecoveryReport } from '../engine/migration/recovery';
import type { MigrationOptions } from '../engine/migration/types';
import { parseLinkProfile } from '../engine/network/link-relay';
import { liveDisplay } from './demo';
import { numberOption, printJson, UsageError } from './output';

export interface LabSessionArgs {
  json: boolean;
  to?: string | undefined;
  bandwidth?: string | undefined;
  'downtime-limit'?: string | undefined;
  tls?: boolean | undefined;
  'link-bandwidth'?: string | undefined;
  'link-latency'?: string | undefined;
  'link-loss'?: string | undefined;
}

async function openAgentLab(file: string | undefined): Promise<Lab> {
  if (!file) throw new UsageError('Give the lab file whose hosts run "miglab agent"');
  const path = resolve(process.env.INIT_CWD ?? process.cwd(), file);
  try {
    const lab = await labFromFile(await readLabFile(path), { source: path });
    const local = lab.hosts().filter((h) => !(h instanceof RemoteHost));
    if (local.length) {
      await lab.leave();
      throw new UsageError(`Host ${local.map((h) => h.name).join(', ')} of ${file} is on this machine: migrate and recover work on hosts that run "miglab agent" (their guests outlive this command)`);
    }
    return lab;
  } catch (err) {
    if (err instanceof LabFileError) throw new UsageError(err.message);
    throw err;
  }
}

/** What an engine does when it opens a lab with agents: settle what its predecessor left. */
async function settle(lab: Lab, journal: MigrationJournal, say: (m: string) => void): Promise<RecoveryReport[]> {
  const reports = await recoverInterruptedMigrations(lab.hosts(), journal);
  for (const r of reports) say(`a migration was in flight when the last engine stopped: ${describeRecovery(r)}`);
  return reports;
}

export async function recoverCommand(file: string | undefined, args: LabSessionArgs): Promise<number> {
  const lab = await openAgentLab(file);
  try {
    const reports = await settle(lab, new MigrationJournal(), () => {});
    if (args.json) printJson({ recovered: reports });
    else if (!reports.length) console.log('No migration was in flight between these hosts.');
    else for (const r of reports) console.log(describeRecovery(r));
    return reports.some((r) => r.outcome === 'lost') ? 1 : 0;
  } finally {
    await lab.leave();
  }
}

export async function migrateCommand(file: string | undefined, guestName: string | undefined, args: LabSessionArgs): Promise<number> {
  if (!file) throw new UsageError('Give the lab file whose hosts run "miglab agent": "miglab migrate LAB.yaml GUEST --to HOST"');
  if (!guestName) throw new UsageError('Say which guest to migrate: "miglab migrate LAB.yaml GUEST --to HOST"');
  if (!args.to) throw new UsageError('Say where to: --to HOST');
  const linkGiven = args['link-bandwidth'] !== undefined || args['link-latency'] !== undefined || args['link-loss'] !== undefined;
  let link: MigrationOptions['link'] = null;
  if (linkGiven) {
    try {
      link = parseLinkProfile({
        bandwidthMBps: numberOption('link-bandwidth', args['link-bandwidth'], 0.1, 10_000) ?? null,
        latencyMs: numberOption('link-latency', args['link-latency'], 0, 5000) ?? 0,
        lossPercent: numberOption('link-loss', args['link-loss'], 0, 50) ?? 0,
      });
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  const bandwidthMBps = numberOption('bandwidth', args.bandwidth, 1, 100_000);
  const downtimeLimitMs = numberOption('downtime-limit', args['downtime-limit'], 1, 2_000_000);
  const live = args.json ? null : liveDisplay('migrate');
  const say = live?.say ?? ((m: string) => process.stderr.write(`[migrate] ${m}\n`));
  const lab = await openAgentLab(file);
  try {
    const journal = new MigrationJournal();
    await settle(lab, journal, say);
    const from = lab.hosts().find((h) => h.guest(guestName));
    if (!from) throw new UsageError(`No host of this lab runs a guest "${guestName}"`);
    const to = lab.host(args.to);
    const guest = from.guest(guestName)!;
    if (args.tls) {
      const { caFingerprint } = await lab.prepareMigrationTls();
      say(`TLS: every host has a certificate from the lab CA (${caFingerprint.slice(0, 23)}...)`);
    }
    const { job, result } = migrateGuest(
      {
        guest, from, to, journal, network: lab.network, maxDurationMs: 600_000,
        options: { ...(bandwidthMBps ? { bandwidthMBps } : {}), ...(downtimeLimitMs ? { downtimeLimitMs } : {}), tls: args.tls ?? false, link },
      },
      (ev) => {
        live?.onEvent(ev);
        // Machine-readable phases for scripts (and the fault tests) even with --json.
        if (ev.type === 'phase') process.stderr.write(`phase ${ev.phase}\n`);
      },
    );
    // Told to stop: cancel the migration (the source keeps the guest), then leave the guests be.
    // These replace the CLI's stop-every-guest handlers, which would stop the agents' guests.
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.removeAllListeners(sig);
    const onSignal = (sig: NodeJS.Signals) => {
      if (job.cancel(`Interrupted (${sig})`)) say('cancelling the migration...');
    };
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
    const r = await result.finally(() => {
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, onSignal);
    });
    if (args.json) printJson(r);
    else console.log(r.status === 'completed' ? `${r.guest} now runs on ${r.to} (downtime ${formatMs(r.downtimeMs)})` : `Migration ${r.status}: ${r.reason}`);
    return r.status === 'completed' ? 0 : 1;
  } finally {
    await lab.leave();
  }
}
