// The demo scenario behind `miglab demo`: two local hosts, a guest on host-a, an optional
// workload, a migration to host-b, and a check of the guest where it landed. The workload and
// the migration go through the lab's front door (LabService), as in the app and browser mode.
// (It sits above api/ although it lives in lab/: it is a front end of its own.)
import type { ApiCommand } from './contract';
import { followMigration, type FollowedMigration } from './follow-migration';
import { LabService } from './service';
import type { Guest } from '../hosts/host';
import type { GuestSpecInput } from '../qemu/spec';
import { queryMigrateCapabilities } from '../qmp';
import { MigrationJournal } from '../migration/journal';
import { UNREADY_GRACE_MS } from '../migration/preflight';
import type { MigrationEvent, MigrationResult } from '../migration/types';
import { delay } from '../util/time';
import { defaultLocalLab, type Lab } from '../lab/lab';
import { netnsAgentLab } from '../lab/netns-lab';

export interface DemoOptions {
  memoryMiB: number;
  /** MB/s the guest dirties during the migration; 0: an idle guest. */
  dirtyRateMBps: number;
  workingSetMiB: number;
  /** The migrate command's options, validated by the service as any front end's. */
  migration: NonNullable<Extract<ApiCommand, { type: 'migrate' }>['options']>;
  /** The lab subnet (default 10.80.0.0/24). */
  subnet?: string;
  /** host-a and host-b as network namespaces, each reached through its agent (root only). */
  netns?: boolean;
  /** A custom guest instead of the lab guest. */
  custom?: { kind: 'kernel'; kernel: string; initrd?: string; append?: string; readyPattern?: string } | { kind: 'disk'; path: string; readyPattern?: string };
  onProgress?: (message: string) => void;
  onEvent?: (ev: MigrationEvent) => void;
  /** The migration once sent, for a Ctrl-C to cancel through the service. */
  onMigration?: (migration: FollowedMigration) => void;
}

export interface DemoIntegrity {
  ok: boolean;
  pages: number;
  bad: number;
  /** Heartbeats kept arriving on the destination after the move. */
  heartbeatsContinue: boolean;
}

export interface DemoHost {
  name: string;
  address: string;
  /** How the engine reaches it: QEMU spawned here, or an agent over TLS (in a namespace). */
  transport: 'local' | 'agent-tls-netns';
}

export interface DemoReport {
  hosts: DemoHost[];
  result: MigrationResult;
  integrity: DemoIntegrity | null;
  /** The workload as labload measured it inside the guest; null when idle or custom. */
  workload: { requestedMBps: number; measuredMBps: number; workingSetMiB: number } | null;
  /**
   * The migration capabilities each QEMU said were on once the job had configured them
   * (query-migrate-capabilities); null when the job ended before it got that far.
   */
  capabilities: { source: string[]; destination: string[] } | null;
}

const GUEST = 'demo';

async function capabilitiesOn(guest: Guest): Promise<string[]> {
  const caps = await queryMigrateCapabilities(guest.qmp);
  return caps.filter((c) => c.state).map((c) => c.capability).sort();
}

async function waitUntilMigratable(guest: Guest, say: (m: string) => void): Promise<void> {
  if (guest.labload || (guest.spec.boot.kind !== 'lab' && guest.spec.boot.readyPattern)) {
    await guest.waitReady(120_000);
    return;
  }
  // What pre-flight demands of a guest that cannot say when it has booted.
  say(`the guest cannot say when it has booted: waiting ${UNREADY_GRACE_MS / 1000} s (give a ready pattern to skip this)`);
  await delay(Math.max(0, UNREADY_GRACE_MS - (performance.now() - guest.startedAt)) + 500);
}

/** How long the demo leaves a guest paused before the switchover (pause-before-switchover). */
const PAUSE_SHOWN_MS = 2000;

export async function runDemo(opts: DemoOptions): Promise<DemoReport> {
  const say = opts.onProgress ?? (() => {});
  let lab: Lab;
  let dispose: () => Promise<void>;
  if (opts.netns) {
    say('making host-a and host-b as network namespaces, each with its agent');
    const n = await netnsAgentLab(opts.subnet ? { subnet: opts.subnet } : {});
    lab = n.lab;
    dispose = n.dispose;
    for (const a of n.agents.values()) say(`${a.name}: agent at ${a.info.url} (in namespace ${a.netns}), fingerprint pinned`);
  } else {
    lab = await defaultLocalLab(opts.subnet ? { network: { subnet: opts.subnet } } : {});
    dispose = () => lab.dispose();
  }
  const hosts: DemoHost[] = lab.hosts().map((h) => ({ name: h.name, address: h.address, transport: h.describe().transport === 'agent-tls' ? 'agent-tls-netns' : 'local' }));
  const service = new LabService(lab, new MigrationJournal());
  try {
    const from = lab.host('host-a');
    const to = lab.host('host-b');
    const spec: GuestSpecInput = { name: GUEST, memoryMiB: opts.memoryMiB, ...(opts.custom ? { boot: opts.custom } : {}) };
    say(`booting ${opts.custom ? 'the custom guest' : 'the lab guest'} on ${from.name} (${opts.memoryMiB} MiB)`);
    const guest = await lab.startGuest(from.name, spec);
    await waitUntilMigratable(guest, say);
    say(`${guest.name} is ready after ${Math.round(performance.now() - guest.startedAt)} ms`);
    if (guest.switchPort && lab.network) {
      say(`its NIC (${guest.spec.mac}, ${guest.spec.ip ?? 'no address'}) is on switch port ${guest.switchPort.id}; the probe (${lab.network.probeAddress.ip}) will ping it`);
    }

    const load = guest.labload !== null && opts.dirtyRateMBps > 0;
    if (guest.labload) {
      // The working set carries labload's pattern, checked after the move. An idle demo fills it
      // and stops: the memory is still checked, but nothing dirties it during the migration.
      say(load
        ? `starting the workload: ${opts.workingSetMiB} MiB dirtied at ${opts.dirtyRateMBps} MB/s`
        : `filling ${opts.workingSetMiB} MiB with a pattern to check after the move (the guest stays idle)`);
      // The service knows the working set from here, for the migration's prediction.
      const workload = (rateMBps: number) => service.execute({ type: 'setWorkload', guest: GUEST, rateMBps, workingSetMiB: opts.workingSetMiB });
      await workload(load ? opts.dirtyRateMBps : 1);
      if (load) await delay(500); // let the dirty rate settle before the first pass measures it
      else await workload(0);
    }

    // Once the job has configured both QEMUs (it then listens), ask each what is on: the
    // destination is the copy arriving on host-b.
    let asked: Promise<DemoReport['capabilities']> | null = null;
    const onEvent = (ev: MigrationEvent) => {
      const dst = to.guest(GUEST);
      if (ev.type === 'phase' && ev.phase === 'listen' && dst && dst !== guest && !asked) {
        asked = Promise.all([capabilitiesOn(guest), capabilitiesOn(dst)]).then(
          ([source, destination]) => ({ source, destination }),
          () => null,
        );
      }
      opts.onEvent?.(ev);
      // pause-before-switchover: the demo shows the paused guest for a moment, then lets QEMU finish.
      if (ev.type === 'status' && ev.status === 'pre-switchover') {
        opts.onProgress?.(`QEMU has stopped the guest before the switchover and waits (pause-before-switchover); the demo continues in ${PAUSE_SHOWN_MS / 1000} s`);
        setTimeout(() => void migration.continue(), PAUSE_SHOWN_MS);
      }
    };
    const migration = followMigration(service, { type: 'migrate', guest: GUEST, to: to.name, options: opts.migration, maxDurationMs: 120_000 }, onEvent);
    opts.onMigration?.(migration);
    const result = await migration.result;
    const capabilities = await (asked ?? Promise.resolve(null));
    const where = runningCopy(result);

    let integrity: DemoIntegrity | null = null;
    let workload: DemoReport['workload'] = null;
    if (where?.labload && !where.exit) {
      say(`checking the guest on ${result.runningOn}`);
      if (load) {
        const report = await where.labload.report();
        workload = { requestedMBps: opts.dirtyRateMBps, measuredMBps: report.avgMBps, workingSetMiB: opts.workingSetMiB };
        await where.labload.stopLoad();
      }
      const beats = where.labload.heartbeats.count;
      const v = await where.labload.verify({ timeoutMs: 60_000 });
      await delay(100);
      const heartbeatsContinue = where.labload.heartbeats.count > beats;
      integrity = { ok: v.bad === 0 && v.sweepOk !== false && heartbeatsContinue, pages: v.pages, bad: v.bad, heartbeatsContinue };
    }
    return { hosts, result, integrity, workload, capabilities };
  } finally {
    say('tearing the lab down');
    await service.close();
    await dispose();
  }

  /** The copy that runs the guest after the migration, wherever the result says it is. */
  function runningCopy(result: MigrationResult): Guest | null {
    const host = result.runningOn ? lab.hosts().find((h) => h.name === result.runningOn) : undefined;
    const g = host?.guest(GUEST);
    return g && !g.exit ? g : null;
  }
}
