#!/usr/bin/env node
// Idempotent set-up run before `npm start` and `npm test`: system packages, node_modules, the lab
// guest, the built UI (and, for the tests, Chromium). Plain Node with no dependencies, because it runs before node_modules exists and may run
// on the system's older Node. Once everything is in place it is a fast no-op.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = new Set(process.argv.slice(2));
const quiet = args.has('--quiet');

/** What the lab needs from the system, and why (shown when something is missing). */
export const SYSTEM_PACKAGES = [
  ['qemu-system-x86', 'runs the guests'],
  ['qemu-utils', 'qemu-img reads disk images'],
  ['busybox-static', 'the lab guest userland'],
  ['cpio', 'packs the lab guest initramfs'],
  ['gcc', 'compiles labload, the in-guest load tool'],
  ['libc6-dev', 'static libc for labload'],
  ['iproute2', 'network namespaces for multi-host labs'],
];

/** What only the tests need (`setup.mjs --for-tests`). */
export const TEST_PACKAGES = [['chromium', 'the browser the UI tests drive']];

function log(msg) {
  if (!quiet) console.log(`[setup] ${msg}`);
}

function fail(msg) {
  console.error(`[setup] ${msg}`);
  process.exit(1);
}

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { stdio: opts.capture ? 'pipe' : 'inherit', encoding: 'utf8', cwd: root, ...opts });
  if (r.error && r.error.code === 'ENOENT') return { status: 127, stdout: '', stderr: `${cmd}: not found` };
  return r;
}

const wanted = [...SYSTEM_PACKAGES, ...(args.has('--for-tests') ? TEST_PACKAGES : [])];

function missingPackages() {
  const names = wanted.map(([n]) => n);
  const r = run('dpkg-query', ['-W', '-f=${Package} ${db:Status-Status}\n', ...names], { capture: true });
  if (r.status === 127) return null; // not a dpkg system
  const installed = new Set(
    r.stdout.split('\n').filter((l) => l.endsWith(' installed')).map((l) => l.split(' ')[0]),
  );
  return names.filter((n) => !installed.has(n));
}

function aptListsPresent() {
  try {
    return readdirSync('/var/lib/apt/lists').some((f) => /_Packages(\.[a-z0-9]+)?$/.test(f));
  } catch {
    return false;
  }
}

/** root: apt-get as is; passwordless sudo: through sudo -n; otherwise null. */
function privilegePrefix() {
  if (process.getuid?.() === 0) return [];
  if (run('sudo', ['-n', 'true'], { capture: true }).status === 0) return ['sudo', '-n'];
  return null;
}

function aptGet(prefix, argv) {
  const [cmd, ...rest] = [...prefix, 'apt-get', ...argv];
  return run(cmd, rest, { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status === 0;
}

function ensureSystemPackages() {
  const missing = missingPackages();
  if (missing === null) {
    log('dpkg not found: not a Debian/Ubuntu system, so install QEMU, busybox (static), cpio and gcc yourself');
    return;
  }
  const needLists = !aptListsPresent(); // the lab guest's kernel comes from apt too
  if (missing.length === 0 && !needLists) return;
  const prefix = privilegePrefix();
  const command = `sudo apt-get update && sudo apt-get install -y ${missing.join(' ')}`.trim();
  if (prefix === null) {
    const why = missing.map((m) => `${m} (${wanted.find(([n]) => n === m)[1]})`).join(', ');
    fail(`MigLab needs system packages that are missing: ${why || 'apt package lists'}.\nRun: ${command}\nthen run this again.`);
  }
  if (needLists || missing.length) {
    log('apt-get update');
    if (!aptGet(prefix, ['update', '-qq'])) fail(`"apt-get update" failed: fix the apt sources, then run: ${command}`);
  }
  if (missing.length) {
    log(`installing ${missing.join(' ')}`);
    if (!aptGet(prefix, ['install', '-y', '-qq', '--no-install-recommends', ...missing])) {
      fail(`Installing system packages failed. Run by hand: ${command}`);
    }
  }
}

/** What node_modules depends on: the lock file and the dependency fields, not scripts. */
function lockHash() {
  const lock = join(root, 'package-lock.json');
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  const h = createHash('sha256');
  h.update(JSON.stringify([pkg.dependencies, pkg.devDependencies, pkg.optionalDependencies, pkg.allowScripts]));
  if (existsSync(lock)) h.update(readFileSync(lock));
  return h.digest('hex');
}

function ensureNodeModules() {
  const stamp = join(root, 'node_modules', '.miglab-installed');
  const want = lockHash();
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === want) return;
  const useCi = existsSync(join(root, 'package-lock.json'));
  log(useCi ? 'npm ci (node_modules missing or out of date)' : 'npm install');
  const r = run('npm', useCi ? ['ci', '--no-audit', '--no-fund'] : ['install', '--no-audit', '--no-fund']);
  if (r.status !== 0) fail('Installing the npm dependencies failed: see the npm output above.');
  writeFileSync(stamp, want);
}

function ensureLabGuest() {
  const tsx = join(root, 'node_modules', '.bin', 'tsx');
  const env = { ...process.env, PATH: `${join(root, 'node_modules', '.bin')}:${process.env.PATH}` };
  const r = run(tsx, [join(root, 'electron', 'cli', 'main.ts'), 'guest', 'build', '--if-missing'], { env });
  if (r.status !== 0) fail('Building the lab guest failed: see above. "npx miglab doctor" checks the machine.');
}

/** A hash of what the UI bundle is built from: the renderer and the engine types it imports. */
function uiSourceHash() {
  const h = createHash('sha256');
  for (const dir of ['renderer', join('electron', 'engine')]) {
    const files = readdirSync(join(root, dir), { recursive: true }).map(String).filter((f) => /\.(tsx?|css|html)$/.test(f)).sort();
    for (const f of files) {
      h.update(f);
      h.update(readFileSync(join(root, dir, f)));
    }
  }
  h.update(lockHash());
  return h.digest('hex');
}

/** Builds the UI (what "miglab web" serves and the app loads) when its sources changed. */
function ensureUi() {
  const out = join(root, '.vite', 'renderer', 'main_window');
  const stamp = join(root, '.vite', 'renderer', '.miglab-ui-built');
  const want = uiSourceHash();
  if (existsSync(join(out, 'index.html')) && existsSync(stamp) && readFileSync(stamp, 'utf8') === want) return;
  log('building the UI (vite)');
  const vite = join(root, 'node_modules', '.bin', 'vite');
  const r = run(vite, ['build', '--config', join(root, 'renderer', 'vite.config.ts'), '--logLevel', 'warn']);
  if (r.status !== 0) fail('Building the UI failed: see above.');
  writeFileSync(stamp, want);
}

ensureSystemPackages();
ensureNodeModules();
ensureUi();
if (!args.has('--no-guest')) ensureLabGuest();
