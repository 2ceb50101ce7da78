// Chromium for the UI tests: the machine's own browser (never a downloaded one), and a watch on
// each page for errors, so an exception in the UI turns the test red instead of a log line.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { expect } from 'vitest';
import { findBuiltUi } from '../../electron/engine/web/ui-files';

export const CHROMIUM = process.env.MIGLAB_CHROMIUM ?? '/usr/bin/chromium';

/** Flags that work on the build machines (see ENVIRONMENT.md): no sandbox, GPU, or network chatter. */
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/**
 * The built UI's folder and a headless Chromium; a clear failure when either is missing.
 * MIGLAB_UI_DIR points the tests at another build (a deliberately broken one, to see them fail).
 */
export async function launchChromium(): Promise<{ ui: string; browser: Browser }> {
  const ui = process.env.MIGLAB_UI_DIR ?? findBuiltUi();
  if (!ui) throw new Error('The UI is not built: run "npm test" (its set-up builds it) or "npm run build:ui"');
  if (!existsSync(CHROMIUM)) throw new Error(`No Chromium at ${CHROMIUM}: run "npm test" as root (its set-up installs it) or "sudo apt-get install chromium"`);
  return { ui, browser: await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS }) };
}

/** Where a file's screenshots go: test-artifacts/<dir>/. */
export function artifactsDir(dir: string): string {
  return join(process.cwd(), 'test-artifacts', dir);
}

/**
 * Every uncaught exception and every console error of the pages it watches. `expectNone()` fails
 * with all of them and starts afresh, so one test's errors are reported by that test only.
 */
export class PageErrors {
  private errors: string[] = [];

  watch(page: Page): Page {
    const name = () => page.url().replace(/[?#].*/, '');
    page.on('pageerror', (e) => this.errors.push(`uncaught in ${name()}: ${e.stack ?? e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') this.errors.push(`console.error in ${name()}: ${m.text()}${m.location().url ? ` (${m.location().url}:${m.location().lineNumber})` : ''}`);
    });
    page.on('crash', () => this.errors.push(`the page ${name()} crashed`));
    return page;
  }

  expectNone(): void {
    const seen = this.errors;
    this.errors = [];
    expect(seen, 'the page reported errors (uncaught exceptions or console.error)').toEqual([]);
  }
}
