// The Electron shell builds with Electron Forge's Vite plugin, exactly as `electron-forge
// package` would build it. Only the Electron binary is missing here (it cannot be downloaded),
// so the app is built but not launched.
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Listr } from 'listr2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import forgeConfig from '../../forge.config';
import { removeDir } from '../../electron/engine/util/fs';

const root = join(import.meta.dirname, '..', '..');
const out = join(root, '.vite');
let hadOutput: boolean;

interface ForgeVitePlugin {
  name: string;
  init(dir: string): void;
  isProd: boolean;
  build(task: unknown): Promise<Listr | void>;
  buildRenderer(task: unknown): Promise<Listr | void>;
}

beforeAll(async () => {
  hadOutput = existsSync(out);
  const plugin = forgeConfig.plugins!.find((p) => (p as { name?: string }).name === 'vite') as unknown as ForgeVitePlugin;
  plugin.init(root);
  plugin.isProd = true; // what Forge's prePackage hook sets before it builds for packaging
  const task = { newListr: (tasks: never, opts: object) => new Listr(tasks, { ...opts, renderer: 'silent' }) };
  for (const step of [plugin.build, plugin.buildRenderer]) {
    const list = await step(task);
    if (list) await list.run();
  }
}, 180_000);

afterAll(async () => {
  if (!hadOutput) await removeDir(out);
});

describe('the Electron shell build', () => {
  it('bundles the main process as CommonJS with electron left external and a locked-down window', async () => {
    const main = await readFile(join(out, 'build', 'main.cjs'), 'utf8');
    expect(main).toMatch(/require\(["']electron["']\)/);
    expect(main).toMatch(/contextIsolation:\s*(!0|true)/);
    expect(main).toMatch(/sandbox:\s*(!0|true)/);
    expect(main).toMatch(/nodeIntegration:\s*(!1|false)/);
    expect(main).toContain('preload.cjs');
  });

  it('bundles the preload script that exposes window.lab', async () => {
    const preload = await readFile(join(out, 'build', 'preload.cjs'), 'utf8');
    expect(preload).toMatch(/exposeInMainWorld\(["'`]lab["'`]/);
  });

  it('bundles the renderer with a Content-Security-Policy and no Node imports', async () => {
    const dir = join(out, 'renderer', 'main_window');
    const html = await readFile(join(dir, 'index.html'), 'utf8');
    expect(html).toContain('Content-Security-Policy');
    expect(html).toMatch(/<script type="module"[^>]+src="[^"]+\.js"/);
    const assets = await readdir(join(dir, 'assets'));
    const js = await Promise.all(assets.filter((a) => a.endsWith('.js')).map((a) => readFile(join(dir, 'assets', a), 'utf8')));
    expect(js.length).toBeGreaterThan(0);
    for (const code of js) {
      expect(code).not.toMatch(/require\(|from\s*["']node:/);
    }
  });
});
