#!/usr/bin/env node
// Idempotent set-up run before `npm start` and `npm test`: system packages, node_modules, the lab
// guest, the built UI (and, for the tests, Chromium). Plain Node with no dependencies, because it runs before node_modules exists and may run
// on the system's older Node. Once everything is in place it is a fast no-op.
// Each step is an exported function whose inputs (packages, project root, commands) are
// parameters defaulting to this project's: test/integration/setup.test.ts runs the real steps on
// a package and on projects of its own. Importing this file runs nothing.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, writeFileSync } from 'node:fs';
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

/** The names dpkg does not have installed, or null when this is not a dpkg system. */
export function missingPackages(names, dpkgQuery = 'dpkg-query') {
  const r = run(dpkgQuery, ['-W', '-f=${Package} ${db:Status-Status}\n', ...names], { capture: true });
  if (r.status === 127) return null; // not a dpkg system
  const installed = new Set(
    r.stdout.split('\n').filter((l) => l.endsWith(' installed')).map((l) => l.split(' ')[0]),
  );
  return names.filter((n) => !installed.has(n));
}

function aptListsPresent(listsDir) {
  try {
    return readdirSync(listsDir).some((f) => /_Packages(\.[a-z0-9]+)?$/.test(f));
  } catch {
    return false;
  }
}

/** root: apt-get as is; passwordless sudo: through sudo -n; otherwise null. */
function privilegePrefix(sudo) {
  if (process.getuid?.() === 0) return [];
  if (run(sudo, ['-n', 'true'], { capture: true }).status === 0) return [sudo, '-n'];
  return null;
}

function aptGet(prefix, aptGetCmd, argv) {
  const [cmd, ...rest] = [...prefix, aptGetCmd, ...argv];
  return run(cmd, rest, { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status === 0;
}

/**
 * Installs the missing ones of `packages` ([name, why] pairs) with apt-get as root or through
 * passwordless sudo; otherwise exits 1 with the exact command to run, installing nothing.
 */
export function ensureSystemPackages({
  packages = wanted, dpkgQuery = 'dpkg-query', aptGet: aptGetCmd = 'apt-get', sudo = 'sudo', aptLists = '/var/lib/apt/lists',
} = {}) {
  const missing = missingPackages(packages.map(([n]) => n), dpkgQuery);
  if (missing === null) {
    log('dpkg not found: not a Debian/Ubuntu system, so install QEMU, busybox (static), cpio and gcc yourself');
    return;
  }
  const needLists = !aptListsPresent(aptLists); // the lab guest's kernel comes from apt too
  if (missing.length === 0 && !needLists) return;
  const prefix = privilegePrefix(sudo);
  const command = `sudo apt-get update && sudo apt-get install -y ${missing.join(' ')}`.trim();
  if (prefix === null) {
    const why = missing.map((m) => `${m} (${packages.find(([n]) => n === m)[1]})`).join(', ');
    fail(`MigLab needs system packages that are missing: ${why || 'apt package lists'}.\nRun: ${command}\nthen run this again.`);
  }
  if (needLists || missing.length) {
    log('apt-get update');
    if (!aptGet(prefix, aptGetCmd, ['update', '-qq'])) fail(`"apt-get update" failed: fix the apt sources, then run: ${command}`);
  }
  if (missing.length) {
    log(`installing ${missing.join(' ')}`);
    if (!aptGet(prefix, aptGetCmd, ['install', '-y', '-qq', '--no-install-recommends', ...missing])) {
      fail(`Installing system packages failed. Run by hand: ${command}`);
    }
  }
}

/** What node_modules depends on: the lock file and the dependency fields, not scripts. */
export function lockHash(projectRoot = root) {
  const lock = join(projectRoot, 'package-lock.json');
  const pkg = JSON.parse(readFileSync(join(projectRoot, 'package.json'), 'utf8'));
  const h = createHash('sha256');
  h.update(JSON.stringify([pkg.dependencies, pkg.devDependencies, pkg.optionalDependencies, pkg.allowScripts]));
  if (existsSync(lock)) h.update(readFileSync(lock));
  return h.digest('hex');
}

/** npm ci (npm install without a lock) unless node_modules/.miglab-installed holds lockHash(). */
export function ensureNodeModules({ projectRoot = root, npm = 'npm' } = {}) {
  const stamp = join(projectRoot, 'node_modules', '.miglab-installed');
  const want = lockHash(projectRoot);
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === want) return;
  const useCi = existsSync(join(projectRoot, 'package-lock.json'));
  log(useCi ? 'npm ci (node_modules missing or out of date)' : 'npm install');
  const r = run(npm, useCi ? ['ci', '--no-audit', '--no-fund'] : ['install', '--no-audit', '--no-fund'], { cwd: projectRoot });
  if (r.status !== 0) fail('Installing the npm dependencies failed: see the npm output above.');
  mkdirSync(dirname(stamp), { recursive: true }); // a project without dependencies gets no node_modules
  writeFileSync(stamp, want);
}

function ensureLabGuest() {
  const tsx = join(root, 'node_modules', '.bin', 'tsx');
  const env = { ...process.env, PATH: `${join(root, 'node_modules', '.bin')}:${process.env.PATH}` };
  const r = run(tsx, [join(root, 'electron', 'cli', 'main.ts'), 'guest', 'build', '--if-missing'], { env });
  if (r.status !== 0) fail('Building the lab guest failed: see above. "npx miglab doctor" checks the machine.');
}

/**
 * The QEMU that runs the lab: $MIGLAB_QEMU, else the system QEMU if it is 10.0 or newer or KVM
 * is usable, else (Debian 12 under TCG) QEMU 10 from bookworm-backports, fetched into the cache
 * without root. Runs after the guest build: the KVM test boots the guest's kernel. A failed fetch
 * is reported, not fatal: the lab then runs on the system QEMU with pti=on.
 */
function ensureLabQemu() {
  const tsx = join(root, 'node_modules', '.bin', 'tsx');
  const env = { ...process.env, PATH: `${join(root, 'node_modules', '.bin')}:${process.env.PATH}` };
  const r = run(tsx, [join(root, 'electron', 'cli', 'main.ts'), 'qemu', 'fetch', '--if-needed'], { env });
  if (r.status !== 0) fail('No QEMU can run the lab: see above. "npx miglab doctor" checks the machine.');
}

/** A hash of what the UI bundle is built from: the renderer and the engine types it imports. */
export function uiSourceHash(projectRoot = root) {
  const h = createHash('sha256');
  for (const dir of ['renderer', join('electron', 'engine')]) {
    const files = readdirSync(join(projectRoot, dir), { recursive: true }).map(String).filter((f) => /\.(tsx?|css|html)$/.test(f)).sort();
    for (const f of files) {
      h.update(f);
      h.update(readFileSync(join(projectRoot, dir, f)));
    }
  }
  h.update(lockHash(projectRoot));
  return h.digest('hex');
}

/** Builds the UI (what "miglab web" serves and the app loads) when its sources changed. */
export function ensureUi({ projectRoot = root, vite = join(projectRoot, 'node_modules', '.bin', 'vite') } = {}) {
  const out = join(projectRoot, '.vite', 'renderer', 'main_window');
  const stamp = join(projectRoot, '.vite', 'renderer', '.miglab-ui-built');
  const want = uiSourceHash(projectRoot);
  if (existsSync(join(out, 'index.html')) && existsSync(stamp) && readFileSync(stamp, 'utf8') === want) return;
  log('building the UI (vite)');
  const r = run(vite, ['build', '--config', join(projectRoot, 'renderer', 'vite.config.ts'), '--logLevel', 'warn'], { cwd: projectRoot });
  if (r.status !== 0) fail('Building the UI failed: see above.');
  writeFileSync(stamp, want);
}

/** `node scripts/setup.mjs` runs the steps; a test importing them does not. */
function runAsScript() {
  try {
    return process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false; // `node -e`: argv[1] is an argument, not a file
  }
}

if (runAsScript()) {
  ensureSystemPackages();
  ensureNodeModules();
  ensureUi();
  if (!args.has('--no-guest')) {
    ensureLabGuest();
    ensureLabQemu();
  }
}
