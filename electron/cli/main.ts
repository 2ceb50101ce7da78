#!/usr/bin/env node
// The `miglab` command: a thin adapter over the engine, like the app and the web server.
import { parseArgs } from 'node:util';
import { demoCommand } from './demo';
import { startCommand } from './start';
import { webCommand } from './web';
import { doctorCommand } from './doctor';
import { guestBootCommand, guestBuildCommand } from './guest';
import { showcaseCommand } from './showcase';
import { UsageError } from './output';
import { disposeAllLabs } from '../engine/lab/lab';

const USAGE = `miglab: a hands-on lab for live migration of virtual machines

Usage:
  miglab doctor [--json]            check this machine: QEMU, KVM or TCG, lab guest, Node, namespaces
  miglab guest build [--json] [--force]
                                    build the lab guest (kernel + busybox initramfs + labload)
  miglab guest boot [--json] [--memory MiB]
                                    boot the lab guest, check heartbeats and memory integrity, stop it
  miglab demo [--json] [--memory MiB] [--dirty-rate MBps] [--working-set MiB]
              [--bandwidth MBps] [--downtime-limit ms] [--capability NAME]...
              [--kernel K [--initrd I] [--append A] | --disk IMG] [--ready-pattern TEXT]
              [--subnet CIDR] [--probe-interval ms]
                                    boot a guest on host-a, migrate it live to host-b, check it there;
                                    its NIC is on the lab switch (default subnet 10.80.0.0/24), and a
                                    probe pings it through the move (every 20 ms by default)
  miglab start [lab.yaml] [--port N] the app (what "npm start" runs): the desktop window, or, where it
                                    cannot open, the same UI in browser mode
  miglab web [lab.yaml] [--port N] [--host 127.0.0.1] [--json]
                                    the lab in a browser: serves the UI and its API with an access
                                    token, and a read-only address for spectators (default port 5199)
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
      memory: { type: 'string' },
      'dirty-rate': { type: 'string' },
      'working-set': { type: 'string' },
      bandwidth: { type: 'string' },
      'downtime-limit': { type: 'string' },
      kernel: { type: 'string' },
      initrd: { type: 'string' },
      append: { type: 'string' },
      disk: { type: 'string' },
      'ready-pattern': { type: 'string' },
      capability: { type: 'string', multiple: true },
      subnet: { type: 'string' },
      'probe-interval': { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [cmd, sub, ...rest] = positionals;
  if (values.help || cmd === undefined || cmd === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (rest.length) throw new UsageError(`Unexpected arguments: ${rest.join(' ')}`);
  switch (cmd) {
    case 'doctor':
      if (sub) throw new UsageError(`"miglab doctor" takes no argument (got "${sub}")`);
      return doctorCommand({ json: values.json });
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

installShutdown();
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
