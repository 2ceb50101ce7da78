// Set-up (scripts/setup.mjs) as the README describes it, run for real by plain Node in its own
// process: a missing system package installed with apt-get as root; the exact apt command, and
// nothing installed, for anyone else; npm ci only when the lock changed; the UI rebuilt only when
// its sources changed; and `node scripts/setup.mjs` itself running those steps. The steps run on a
// small Debian package (GNU hello) and on projects of the test's own, never on this checkout.
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, cp, mkdir, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

const runFile = promisify(execFile);
const repo = join(import.meta.dirname, '..', '..');
const SETUP = join(repo, 'scripts', 'setup.mjs');
/** The unprivileged user: no root, no sudo. */
const NOBODY = 65534;
/**
 * Set-up runs before node_modules (and its Node 22) exists: on the system's Node where there is
 * one, as `npm test` on a fresh machine does.
 */
const SYSTEM_NODE = existsSync('/usr/bin/node') ? '/usr/bin/node' : process.execPath;
/** For every process the tests start: npm and Vite's CLI would leave a compile cache in the temp folder. */
const CHILD_ENV = { ...process.env, NODE_DISABLE_COMPILE_CACHE: '1' };

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function spawnRun(argv: string[], opts: { cwd: string; timeoutMs?: number }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: opts.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: opts.timeoutMs ?? 240_000,
      env: CHILD_ENV,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', reject);
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/**
 * Calls one of setup.mjs's exported steps in a fresh Node process (as root, or as nobody), as
 * `node scripts/setup.mjs` would; a value it returns is printed after "@result ".
 */
async function runStep(step: string, param: unknown, opts: { asNobody?: boolean } = {}): Promise<Run & { result: unknown }> {
  const code = [
    'const [step, param] = JSON.parse(process.argv[1]);',
    `const setup = await import(${JSON.stringify(pathToFileURL(SETUP).href)});`,
    'const r = setup[step](param);',
    "if (r !== undefined) console.log('@result ' + JSON.stringify(r));",
  ].join('\n');
  const node = [SYSTEM_NODE, '--input-type=module', '-e', code, JSON.stringify([step, param])];
  const argv = opts.asNobody ? ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...node] : node;
  const r = await spawnRun(argv, { cwd: '/' });
  const line = r.stdout.split('\n').find((l) => l.startsWith('@result '));
  return { ...r, result: line ? JSON.parse(line.slice('@result '.length)) : undefined };
}

const said = (r: Run) => `exit ${r.status}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

async function dpkgStatus(pkg: string): Promise<string> {
  const r = await runFile('dpkg-query', ['-W', '-f=${db:Status-Status}', pkg]).catch(() => ({ stdout: 'unknown' }));
  return r.stdout.trim();
}

async function aptGet(...argv: string[]): Promise<void> {
  // Another apt on the machine may hold the dpkg lock for a while: wait for it.
  await runFile('apt-get', ['-o', 'DPkg::Lock::Timeout=120', '-y', '-qq', ...argv], { env: { ...CHILD_ENV, DEBIAN_FRONTEND: 'noninteractive' } });
}

describe('system packages', () => {
  // GNU hello: 53 kB, depends only on libc6, and nothing in the lab uses it. sl: the same kind.
  const PKG = 'hello';
  let wasInstalled = false;

  beforeAll(async () => {
    wasInstalled = (await dpkgStatus(PKG)) === 'installed';
    if (wasInstalled) await aptGet('purge', PKG);
  }, 180_000);

  afterAll(async () => {
    // The machine as it was found.
    const now = await dpkgStatus(PKG);
    if (wasInstalled) await aptGet('install', '--no-install-recommends', PKG);
    else if (now !== 'unknown' && now !== 'not-installed') await aptGet('purge', PKG);
  }, 180_000);

  it('not as root and without sudo: exits 1 with the exact apt command for what is missing, and installs nothing', async () => {
    expect(await dpkgStatus(PKG)).not.toBe('installed');
    const packages = [['cpio', 'packs the lab guest initramfs'], [PKG, 'a test package'], ['sl', 'another test package']];
    const r = await runStep('ensureSystemPackages', { packages }, { asNobody: true });
    expect(r.status, said(r)).toBe(1);
    expect(r.stderr, said(r)).toBe(
      `[setup] MigLab needs system packages that are missing: ${PKG} (a test package), sl (another test package).\n` +
        `Run: sudo apt-get update && sudo apt-get install -y ${PKG} sl\n` +
        'then run this again.\n',
    );
    expect(r.stdout, said(r)).toBe(''); // no "apt-get update", no "installing"
    expect(await dpkgStatus(PKG)).not.toBe('installed');
  });

  it('as root: installs a missing package with apt-get, and next time has nothing to do', async () => {
    expect(await dpkgStatus(PKG)).not.toBe('installed');
    const packages = [['cpio', 'packs the lab guest initramfs'], [PKG, 'a test package']];
    const r = await runStep('ensureSystemPackages', { packages });
    expect(r.status, said(r)).toBe(0);
    expect(r.stdout, said(r)).toContain('[setup] apt-get update');
    expect(r.stdout, said(r)).toContain(`[setup] installing ${PKG}\n`);
    expect(await dpkgStatus(PKG)).toBe('installed');
    const again = await runStep('ensureSystemPackages', { packages });
    expect(again.status, said(again)).toBe(0);
    expect(again.stdout, said(again)).toBe('');
  }, 240_000);
});

describe('node_modules', () => {
  let project: string;
  const stampOf = () => readFile(join(project, 'node_modules', '.miglab-installed'), 'utf8');
  const marker = () => join(project, 'node_modules', '.still-here');
  const lockHash = async () => (await runStep('lockHash', project)).result as string;

  /** A package of the project's own (no registry): `tiny` at `version`. */
  async function tiny(version: string): Promise<void> {
    await mkdir(join(project, 'tiny'), { recursive: true });
    await writeFile(join(project, 'tiny', 'package.json'), JSON.stringify({ name: 'tiny', version }));
    await writeFile(join(project, 'tiny', 'index.js'), 'module.exports = 1;\n');
  }

  async function writeLock(): Promise<void> {
    await runFile('npm', ['install', '--package-lock-only', '--no-audit', '--no-fund', '--ignore-scripts'], { cwd: project, env: CHILD_ENV });
  }

  beforeAll(async () => {
    project = await makeTempDir('setup-npm');
    await tiny('1.0.0');
    await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'p', version: '1.0.0', private: true, dependencies: { tiny: 'file:./tiny' } }, null, 2));
    await writeLock();
  }, 120_000);

  afterAll(async () => {
    await removeDir(project);
  });

  it('runs npm ci when node_modules is missing, and stamps it with the lock hash', async () => {
    const r = await runStep('ensureNodeModules', { projectRoot: project });
    expect(r.status, said(r)).toBe(0);
    expect(r.stdout, said(r)).toContain('[setup] npm ci (node_modules missing or out of date)');
    expect(existsSync(join(project, 'node_modules', 'tiny', 'package.json'))).toBe(true);
    expect(await stampOf()).toBe(await lockHash());
  });

  it('does not run npm ci while the lock and the dependencies are the same, scripts changed or not', async () => {
    await writeFile(marker(), 'npm ci would remove this\n');
    const pkg = JSON.parse(await readFile(join(project, 'package.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(join(project, 'package.json'), JSON.stringify({ ...pkg, scripts: { hello: 'echo hi' } }, null, 2));
    const r = await runStep('ensureNodeModules', { projectRoot: project });
    expect(r.status, said(r)).toBe(0);
    expect(r.stdout, said(r)).not.toContain('npm ci');
    expect(existsSync(marker())).toBe(true);
  });

  it('runs npm ci when the lock changes', async () => {
    const before = await stampOf();
    const pkgBefore = await readFile(join(project, 'package.json'), 'utf8');
    await tiny('1.0.1');
    await writeLock(); // only the lock changes: package.json names the same file: dependency
    expect(await readFile(join(project, 'package.json'), 'utf8')).toBe(pkgBefore);
    const r = await runStep('ensureNodeModules', { projectRoot: project });
    expect(r.status, said(r)).toBe(0);
    expect(r.stdout, said(r)).toContain('[setup] npm ci (node_modules missing or out of date)');
    expect(existsSync(marker())).toBe(false); // npm ci started node_modules afresh
    const installed = JSON.parse(await readFile(join(project, 'node_modules', '.package-lock.json'), 'utf8')) as { packages: Record<string, { version?: string }> };
    expect(installed.packages.tiny?.version).toBe('1.0.1');
    const after = await stampOf();
    expect(after).not.toBe(before);
    expect(after).toBe(await lockHash());
  }, 120_000);
});

/**
 * A copy of this project's sources (renderer, electron), package files and scripts in a temp dir, with a
 * node_modules of its own whose entries link to this checkout's (so nothing set-up does there
 * reaches the real one).
 */
async function projectCopy(label: string): Promise<string> {
  const dir = await makeTempDir(label);
  for (const p of ['renderer', 'electron', 'package.json', 'package-lock.json', 'tsconfig.json', 'scripts']) {
    await cp(join(repo, p), join(dir, p), { recursive: true });
  }
  await mkdir(join(dir, 'node_modules'));
  for (const entry of await readdir(join(repo, 'node_modules'))) {
    if (entry.startsWith('.') && entry !== '.bin') continue; // stamps, caches, vite's temp files
    await symlink(join(repo, 'node_modules', entry), join(dir, 'node_modules', entry));
  }
  return dir;
}

describe('the UI build', () => {
  let project: string;
  const out = () => join(project, '.vite', 'renderer', 'main_window');
  const marker = () => join(out(), '.still-here');
  const ensureUi = () => runStep('ensureUi', { projectRoot: project });

  async function bundleText(): Promise<string> {
    const assets = join(out(), 'assets');
    const js = (await readdir(assets)).filter((f) => f.endsWith('.js'));
    return (await Promise.all(js.map((f) => readFile(join(assets, f), 'utf8')))).join('\n');
  }

  beforeAll(async () => {
    project = await projectCopy('setup-ui');
  });

  afterAll(async () => {
    await removeDir(project);
  });

  it('builds the UI when it was never built, then not again while its sources stay the same', async () => {
    const r = await ensureUi();
    expect(r.status, said(r)).toBe(0);
    expect(r.stdout, said(r)).toContain('[setup] building the UI (vite)');
    expect(existsSync(join(out(), 'index.html'))).toBe(true);
    expect(await readFile(join(project, '.vite', 'renderer', '.miglab-ui-built'), 'utf8')).toBe((await runStep('uiSourceHash', project)).result);

    await writeFile(marker(), 'a rebuild would remove this\n');
    const built = (await stat(join(out(), 'index.html'))).mtimeMs;
    // A file next to the sources that is not one of them changes nothing either.
    await writeFile(join(project, 'renderer', 'NOTES.md'), 'notes\n');
    const again = await ensureUi();
    expect(again.status, said(again)).toBe(0);
    expect(again.stdout, said(again)).not.toContain('building the UI');
    expect(existsSync(marker())).toBe(true);
    expect((await stat(join(out(), 'index.html'))).mtimeMs).toBe(built);
  }, 120_000);

  it('rebuilds it when a renderer source changes, and the new bundle has the change', async () => {
    const note = `setup-test-${process.pid}-${Date.now()}`;
    expect(await bundleText()).not.toContain(note);
    await appendFile(join(project, 'renderer', 'src', 'main.tsx'), `\nconsole.info(${JSON.stringify(note)});\n`);
    const r = await ensureUi();
    expect(r.status, said(r)).toBe(0);
    expect(r.stdout, said(r)).toContain('[setup] building the UI (vite)');
    expect(existsSync(marker())).toBe(false);
    expect(await bundleText()).toContain(note);
  }, 120_000);

  it('rebuilds it when an engine module the UI imports changes', async () => {
    await writeFile(marker(), 'a rebuild would remove this\n');
    await appendFile(join(project, 'electron', 'engine', 'api', 'contract.ts'), '\n// changed by setup.test.ts\n');
    const r = await ensureUi();
    expect(r.status, said(r)).toBe(0);
    expect(r.stdout, said(r)).toContain('[setup] building the UI (vite)');
    expect(existsSync(marker())).toBe(false);
  }, 120_000);
});

describe('node scripts/setup.mjs', () => {
  let project: string;

  beforeAll(async () => {
    project = await projectCopy('setup-run');
    // node_modules is in place for this package.json and lock: the stamp says so.
    await writeFile(join(project, 'node_modules', '.miglab-installed'), (await runStep('lockHash', project)).result as string);
  });

  afterAll(async () => {
    await removeDir(project);
  });

  it('runs its steps: in a copy of the project it builds the missing UI, then has nothing left to do', async () => {
    const script = join(project, 'scripts', 'setup.mjs');
    const r = await spawnRun([SYSTEM_NODE, script, '--no-guest'], { cwd: project });
    expect(r.status, said(r)).toBe(0);
    expect(r.stdout, said(r)).toContain('[setup] building the UI (vite)');
    expect(r.stdout, said(r)).not.toContain('npm ci');
    expect(existsSync(join(project, '.vite', 'renderer', 'main_window', 'index.html'))).toBe(true);
    const again = await spawnRun([SYSTEM_NODE, script, '--no-guest'], { cwd: project });
    expect(again.status, said(again)).toBe(0);
    expect(again.stdout, said(again)).not.toContain('building the UI');
    expect(again.stdout, said(again)).not.toContain('npm ci');
  }, 180_000);
});
