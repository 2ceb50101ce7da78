#!/usr/bin/env node
// The `miglab` command: a thin adapter over the engine, like the app and the web server.
import { parseArgs } from 'node:util';
import { demoCommand } from './demo';
import { startCommand } from './start';
import { webCommand } from './web';
import { doctorCommand } from './doctor';
import { guestBootCommand, guestBuildCommand } from './guest';
import { showcaseCommand } from './showcase';
import { agentCommand, agentTokenCommand } from './agent';
import { migrateCommand, recoverCommand } from './lab-session';
import { UsageError } from './output';
import { qemuFetchCommand, qemuWhichCommand } from './qemu';
import { disposeAllLabs } from '../engine/lab/lab';

const USAGE = `miglab: a hands-on lab for live migration of virtual machines

Usage:
  miglab doctor [--json]            check this machine: QEMU, KVM or TCG, lab guest, Node, namespaces
  miglab qemu which [--json]        the QEMU that runs the lab's guests, where it came from and why
  miglab qemu fetch [--if-needed] [--json]
                                    fetch QEMU 10 from Debian's bookworm-backports into the cache (no
                                    root, /etc/apt untouched); --if-needed: only when the lab would
                                    otherwise run a QEMU older than 10 under TCG
  miglab guest build [--json] [--force]
                                    build the lab guest (kernel + busybox initramfs + labload)
  miglab guest boot [--json] [--memory MiB]
                                    boot the lab guest, check heartbeats and memory integrity, stop it
  miglab demo [--json] [--memory MiB] [--dirty-rate MBps] [--working-set MiB]
              [--bandwidth MBps] [--downtime-limit ms] [--downtime-policy ramp|proxmox|nova|fixed] [--measure-dirty-rate ms]
              [--strategy precopy|auto-converge|xbzrle|multifd|pause-before-switchover [--strategy-param K=V]...]
              [--capability NAME]...
              [--kernel K [--initrd I] [--append A] | --disk IMG] [--ready-pattern TEXT]
              [--subnet CIDR] [--probe-interval ms] [--netns]
                                    boot a guest on host-a, migrate it live to host-b, check it there;
                                    its NIC is on the lab switch (default subnet 10.80.0.0/24), and a
                                    probe pings it through the move (every 20 ms by default);
                                    --netns (root): host-a and host-b are network namespaces, each
                                    driven through its agent, the migration crossing a veth
  miglab start [lab.yaml] [--port N] the app (what "npm start" runs): the desktop window, or, where it
                                    cannot open, the same UI in browser mode
  miglab web [lab.yaml] [--port N] [--host 127.0.0.1] [--json]
                                    the lab in a browser: serves the UI and its API with an access
                                    token, and a read-only address for spectators (default port 5199);
                                    a --host that is not loopback is served over HTTPS with MigLab's
                                    own certificate (--json prints its fingerprint)
  miglab agent [--listen ADDR:PORT] [--data-dir DIR] [--images DIR] [--name NAME]
               [--max-guests N] [--max-memory MiB] [--ports FIRST-LAST] [--json]
                                    run this machine as a lab host: QEMU driven by the app over TLS
                                    (default 127.0.0.1:7800); prints its pairing token and fingerprint
  miglab agent token new|list|revoke [ID] [--data-dir DIR] [--label L]
                                    manage the agent's access tokens
  miglab migrate LAB.yaml GUEST --to HOST [--bandwidth MBps] [--downtime-limit ms] [--downtime-policy P] [--measure-dirty-rate ms]
                 [--strategy S [--strategy-param K=V]...] [--tls]
                 [--link-bandwidth MBps] [--link-latency ms] [--link-loss %]
                 [--keep-source ms] [--pause-before-switchover] [--json]
                                    migrate a guest between hosts that run "miglab agent" (their lab
                                    file lists each agent's url, token and fingerprint); --tls
                                    encrypts the stream with the lab CA; --link-* put an emulated
                                    link (bandwidth, latency, loss) in its path; --keep-source keeps
                                    the paused source that long after the destination runs (a
                                    diskless guest goes back to it if the destination crashes);
                                    --pause-before-switchover stops before the switchover until you
                                    press Enter (Ctrl-C cancels)
  miglab recover LAB.yaml [--resume-source GUEST]... [--json]
                                    settle migrations a stopped engine left in flight between the
                                    lab's agents: exactly one copy of each guest keeps running;
                                    --resume-source takes a guest whose destination failed after it
                                    ran back to its paused source (what it did there is lost)
  miglab showcase                   what works so far, run live (what "npm start" shows)
  miglab help                       this text
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      json: { type: 'boolean', default: false },
      force: { type: 'boolean', default: false },
      'if-missing': { type: 'boolean', default: false },
      'if-needed': { type: 'boolean', default: false },
      memory: { type: 'string' },
      'dirty-rate': { type: 'string' },
      'working-set': { type: 'string' },
      bandwidth: { type: 'string' },
      'downtime-limit': { type: 'string' },
      'downtime-policy': { type: 'string' },
      'measure-dirty-rate': { type: 'string' },
      kernel: { type: 'string' },
      initrd: { type: 'string' },
      append: { type: 'string' },
      disk: { type: 'string' },
      'ready-pattern': { type: 'string' },
      capability: { type: 'string', multiple: true },
      strategy: { type: 'string' },
      'strategy-param': { type: 'string', multiple: true },
      subnet: { type: 'string' },
      'probe-interval': { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      listen: { type: 'string' },
      'data-dir': { type: 'string' },
      images: { type: 'string' },
      name: { type: 'string' },
      'max-guests': { type: 'string' },
      'max-memory': { type: 'string' },
      ports: { type: 'string' },
      label: { type: 'string' },
      netns: { type: 'boolean', default: false },
      to: { type: 'string' },
      tls: { type: 'boolean', default: false },
      'link-bandwidth': { type: 'string' },
      'link-latency': { type: 'string' },
      'link-loss': { type: 'string' },
      'keep-source': { type: 'string' },
      'pause-before-switchover': { type: 'boolean', default: false },
      'resume-source': { type: 'string', multiple: true },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [cmd, sub, ...rest] = positionals;
  if (values.help || cmd === undefined || cmd === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  // The agent's guests outlive it on purpose (the next agent reattaches them): a crash of the
  // agent leaves them be, as its signal handlers do.
  if (cmd === 'agent') fatalCleanup = { what: 'its guests keep running for the next agent to reattach', run: async () => {} };
  if (cmd === 'agent' && sub === 'token') return agentTokenCommand(rest[0], rest[1], values);
  if (cmd === 'migrate') {
    if (rest.length > 1) throw new UsageError(`Unexpected arguments: ${rest.slice(1).join(' ')}`);
    return migrateCommand(sub, rest[0], values);
  }
  if (rest.length) throw new UsageError(`Unexpected arguments: ${rest.join(' ')}`);
  switch (cmd) {
    case 'doctor':
      if (sub) throw new UsageError(`"miglab doctor" takes no argument (got "${sub}")`);
      return doctorCommand({ json: values.json });
    case 'qemu':
      if (sub === 'fetch') return qemuFetchCommand({ json: values.json, ifNeeded: values['if-needed'] });
      if (sub === 'which') return qemuWhichCommand({ json: values.json });
      throw new UsageError(sub ? `Unknown qemu command "${sub}": use "qemu which" or "qemu fetch"` : 'Say what to do: "qemu which" or "qemu fetch"');
    case 'guest':
      if (sub === 'build') return guestBuildCommand({ json: values.json, force: values.force, ifMissing: values['if-missing'] });
      if (sub === 'boot') return guestBootCommand({ json: values.json, memory: values.memory });
      throw new UsageError(sub ? `Unknown guest command "${sub}": use "guest build" or "guest boot"` : 'Say what to do with the guest: "guest build" or "guest boot"');
    case 'demo':
      if (sub) throw new UsageError(`"miglab demo" takes options only (got "${sub}")`);
      return demoCommand(values);
    case 'start':
      return startCommand({ json: values.json, port: values.port, host: values.host, labFile: sub });
    case 'web':
      return webCommand({ json: values.json, port: values.port, host: values.host, labFile: sub });
    case 'showcase':
      return showcaseCommand();
    case 'recover':
      return recoverCommand(sub, values);
    case 'agent':
      if (sub) throw new UsageError(`Unknown agent command "${sub}": use "miglab agent" or "miglab agent token ..."`);
      return agentCommand(values);
    default:
      throw new UsageError(`Unknown command "${cmd}"`);
  }
}

/**
 * Told to quit (terminal closed, SIGTERM, or Ctrl-C with no command handling it, or a second
 * Ctrl-C): stop every guest this process started, then exit. Without this, QEMU, which runs in
 * its own process group, would be left running.
 */
function installShutdown(): void {
  let stopping = false;
  const shutdown = (signal: NodeJS.Signals, code: number) => {
    if (signal === 'SIGINT' && !stopping && process.listenerCount('SIGINT') > 1) {
      stopping = true; // a command (demo) handles the first Ctrl-C: it cancels and cleans up
      return;
    }
    try {
      process.stderr.write(`\nmiglab: ${signal}: stopping the guests this run started\n`);
    } catch {
      // the terminal may be gone (SIGHUP): stopping the guests matters more than saying so
    }
    void disposeAllLabs().finally(() => process.exit(code));
  };
  // Writing to a terminal that has closed fails with EIO: that must not crash us before the
  // guests are stopped.
  process.stdout.on('error', () => {});
  process.stderr.on('error', () => {});
  process.on('SIGINT', () => shutdown('SIGINT', 130));
  process.on('SIGTERM', () => shutdown('SIGTERM', 143));
  process.on('SIGHUP', () => shutdown('SIGHUP', 129));
}

/**
 * What an error nobody caught must undo before the process exits. Like a signal, by default: stop
 * every guest this run started (web, start, demo, guest boot, migrate), which would otherwise
 * keep running with nobody to stop them.
 */
let fatalCleanup: { what: string; run: () => Promise<void> } = { what: 'stopping the guests this run started', run: disposeAllLabs };
/** How long the clean-up may take before the process exits anyway. */
const FATAL_CLEANUP_MS = 20_000;
/** EX_SOFTWARE: an internal error, told apart from usage errors (2) and failed commands (1). */
const EXIT_INTERNAL_ERROR = 70;

/** An exception or a rejection that no code handled: a MigLab bug. Clean up, say so, exit. */
function installFatalHandlers(): void {
  let dying = false;
  const fatal = (kind: string, err: unknown) => {
    const e = err instanceof Error ? err : new Error(String(err));
    const say = (text: string) => {
      try {
        process.stderr.write(text);
      } catch {
        // the terminal may be gone: cleaning up matters more than saying so
      }
    };
    if (dying) {
      say(`miglab: another internal error while cleaning up (${kind}): ${e.message}\n`);
      return; // the first one's clean-up goes on
    }
    dying = true;
    process.exitCode = EXIT_INTERNAL_ERROR;
    say(`miglab: internal error (${kind}): ${e.message}\n`);
    say(`miglab: ${fatalCleanup.what}, then exiting. This is a MigLab bug: please report it with this output${process.env.MIGLAB_DEBUG ? '' : ' (MIGLAB_DEBUG=1 adds the stack)'}.\n`);
    if (process.env.MIGLAB_DEBUG) say(`${e.stack}\n`);
    setTimeout(() => {
      say(`miglab: the clean-up did not finish within ${FATAL_CLEANUP_MS / 1000} s; look for leftover qemu-system processes\n`);
      process.exit(EXIT_INTERNAL_ERROR);
    }, FATAL_CLEANUP_MS);
    fatalCleanup
      .run()
      .catch((cleanupErr: Error) => say(`miglab: the clean-up failed too: ${cleanupErr.message}; look for leftover qemu-system processes\n`))
      .finally(() => process.exit(EXIT_INTERNAL_ERROR));
  };
  process.on('uncaughtException', (err) => fatal('uncaught exception', err));
  process.on('unhandledRejection', (reason) => fatal('unhandled promise rejection', reason));
}

installShutdown();
installFatalHandlers();
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const e = err as Error & { code?: string };
    if (err instanceof UsageError || e.code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`miglab: ${e.message}\nRun "miglab help" for the commands.\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`miglab: ${e.message}\n`);
      if (process.env.MIGLAB_DEBUG) process.stderr.write(`${e.stack}\n`);
      process.exitCode = 1;
    }
  },
);
