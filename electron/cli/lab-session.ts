// `miglab migrate` and `miglab recover`: one engine run against a lab file whose hosts are agents.
// The guests live on the agents' hosts, so the run connects, acts, and leaves them running. The
// migration goes through the lab's front door (LabService), as in the app and browser mode.
import { resolve } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { followMigration } from '../engine/api/follow-migration';
import { LabService } from '../engine/api/service';
import type { Lab } from '../engine/lab/lab';
import { LabFileError, labFromFile, readLabFile } from '../engine/lab/lab-file';
import { MigrationJournal } from '../engine/migration/journal';
import { formatMs } from '../engine/util/format';
import { recoverInterruptedMigrations } from '../engine/migration/recovery';
import type { MigrationOptions } from '../engine/migration/types';
import { parseLinkProfile } from '../engine/network/link-profile';
import { liveDisplay } from './demo';
import { numberOption, printJson, UsageError, downtimePolicyOption, strategyOption } from './output';
import { describeRecovery, type RecoveryReport } from '../engine/migration/recovery-report';

export interface LabSessionArgs {
  json: boolean;
  to?: string | undefined;
  bandwidth?: string | undefined;
  'downtime-limit'?: string | undefined;
  'downtime-policy'?: string | undefined;
  'measure-dirty-rate'?: string | undefined;
  strategy?: string | undefined;
  'strategy-param'?: string[] | undefined;
  tls?: boolean | undefined;
  'link-bandwidth'?: string | undefined;
  'link-latency'?: string | undefined;
  'link-loss'?: string | undefined;
  'keep-source'?: string | undefined;
  'pause-before-switchover'?: boolean | undefined;
  'resume-source'?: string[] | undefined;
}

async function openAgentLab(file: string | undefined): Promise<Lab> {
  if (!file) throw new UsageError('Give the lab file whose hosts run "miglab agent"');
  const path = resolve(process.env.INIT_CWD ?? process.cwd(), file);
  try {
    const lab = await labFromFile(await readLabFile(path), { source: path });
    const local = lab.hosts().filter((h) => !h.describe().outlivesEngine);
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
async function settle(lab: Lab, journal: MigrationJournal, say: (m: string) => void, resumeSource: string[] = []): Promise<RecoveryReport[]> {
  const reports = await recoverInterruptedMigrations(lab.hosts(), journal, { resumeSource });
  for (const r of reports) say(`a migration was in flight when the last engine stopped: ${describeRecovery(r)}`);
  return reports;
}

export async function recoverCommand(file: string | undefined, args: LabSessionArgs): Promise<number> {
  const lab = await openAgentLab(file);
  try {
    const resumeSource = args['resume-source'] ?? [];
    const reports = await settle(lab, new MigrationJournal(), () => {}, resumeSource);
    if (args.json) printJson({ recovered: reports });
    else if (!reports.length) console.log('No migration was in flight between these hosts.');
    else for (const r of reports) console.log(describeRecovery(r));
    const unsettled = resumeSource.filter((g) => !reports.some((r) => r.guest === g && r.outcome === 'rolled-back'));
    if (unsettled.length) process.stderr.write(`miglab recover: ${unsettled.join(', ')} ${unsettled.length === 1 ? 'was' : 'were'} not taken back: only a guest whose migration needs attention, paused on its source, can be\n`);
    return reports.some((r) => r.outcome === 'lost' || r.outcome === 'needs-attention') || unsettled.length ? 1 : 0;
  } finally {
    await lab.leave();
  }
}

/**
 * The migration's questions to the person at the terminal, one at a time: a line on stdin
 * answers the one asked last. Closed with the migration, so stdin never holds the process.
 */
class TerminalQuestions {
  private rl: Interface | null = null;
  private answer: ((line: string | null) => void) | null = null;

  /** Asks; resolves with the line typed, or null once stdin has ended or the questions closed. */
  ask(say: (m: string) => void, question: string): Promise<string | null> {
    say(question);
    this.answer?.(null);
    if (!this.rl) {
      this.rl = createInterface({ input: process.stdin });
      this.rl.on('line', (line) => this.answer?.(line));
      this.rl.on('close', () => this.answer?.(null));
    }
    return new Promise((resolve) => {
      this.answer = (line) => {
        this.answer = null;
        resolve(line);
      };
    });
  }

  /** The migration is over: answers still pending mean nothing now. */
  closed = false;

  close(): void {
    this.closed = true;
    this.answer?.(null);
    this.rl?.close();
    this.rl = null;
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
  const keepSourceMs = numberOption('keep-source', args['keep-source'], 0, 600_000);
  const pauseBefore = args['pause-before-switchover'] ?? false;
  const live = args.json ? null : liveDisplay('migrate');
  const say = live?.say ?? ((m: string) => process.stderr.write(`[migrate] ${m}\n`));
  const lab = await openAgentLab(file);
  try {
    const journal = new MigrationJournal();
    await settle(lab, journal, say);
    if (!lab.hosts().some((h) => h.guest(guestName))) throw new UsageError(`No host of this lab runs a guest "${guestName}"`);
    const to = lab.host(args.to);
    const service = new LabService(lab, journal);
    try {
      if (args.tls) {
        const { caFingerprint } = await service.migrationTls();
        say(`TLS: every host has a certificate from the lab CA (${caFingerprint.slice(0, 23)}...)`);
      }
      const questions = new TerminalQuestions();
      const migration = followMigration(
        service,
        {
          type: 'migrate', guest: guestName, to: to.name, maxDurationMs: 600_000,
          options: {
            ...(bandwidthMBps ? { bandwidthMBps } : {}), ...(downtimeLimitMs ? { downtimeLimitMs } : {}), tls: args.tls ?? false, link,
            ...(keepSourceMs !== undefined ? { keepSourceMs: Math.round(keepSourceMs) } : {}),
            ...(args['downtime-policy'] !== undefined ? { downtimePolicy: downtimePolicyOption(args['downtime-policy']) } : {}),
            ...strategyOption(args.strategy, args['strategy-param']),
            ...(args['measure-dirty-rate'] !== undefined ? { measureDirtyRateMs: Math.round(numberOption('measure-dirty-rate', args['measure-dirty-rate'], 50, 60_000)!) } : {}),
            ...(pauseBefore ? { capabilities: { 'pause-before-switchover': true } } : {}),
          },
        },
        (ev) => {
          live?.onEvent(ev);
          // pause-before-switchover as a teaching step: QEMU waits, Enter lets it go on (stdin
          // closed, as in a script: it goes on at once).
          if (ev.type === 'status' && ev.status === 'pre-switchover') {
            void questions.ask(say, 'QEMU has stopped the guest before the switchover and waits: press Enter to continue (Ctrl-C cancels)')
              .then(() => (questions.closed ? null : migration.id.then((id) => service.execute({ type: 'continueMigration', id }))))
              .catch((err: Error) => say(`continue: ${err.message}`));
          }
          // The paused source kept (--keep-source): "back" takes the guest back to it.
          if (ev.type === 'source-kept') {
            void questions.ask(say, `${guestName} runs on ${args.to}; its paused source is kept ${formatMs(ev.ms)}: type "back" and Enter to take it back there`)
              .then((line) => (!questions.closed && line?.trim() === 'back' ? migration.id.then((id) => service.execute({ type: 'rollbackMigration', id })) : null))
              .catch((err: Error) => say(`back: ${err.message}`));
          }
          // Machine-readable phases for scripts (and the fault tests) even with --json.
          if (ev.type === 'phase') process.stderr.write(`phase ${ev.phase}\n`);
        },
      );
      // Told to stop: cancel the migration (the source keeps the guest), then leave the guests be.
      // These replace the CLI's stop-every-guest handlers, which would stop the agents' guests.
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.removeAllListeners(sig);
      const onSignal = (sig: NodeJS.Signals) => {
        void migration.cancel(`Interrupted (${sig})`).then((accepted) => {
          if (accepted) say('cancelling the migration...');
        });
      };
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
      const r = await migration.result.finally(() => {
        questions.close();
        for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, onSignal);
      });
      if (args.json) printJson(r);
      else console.log(r.status === 'completed' ? `${r.guest} now runs on ${r.to} (downtime ${formatMs(r.downtimeMs)})` : `Migration ${r.status}: ${r.reason}`);
      return r.status === 'completed' ? 0 : 1;
    } finally {
      await service.close();
    }
  } finally {
    await lab.leave();
  }
}
