// The UI in Chromium (browser mode) against real QEMU guests: the lab, a guest started from the
// page, its console, a migration started with the Migrate button and watched to the end (rounds,
// the MAC move), the console carrying on from the destination, and a spectator's read-only view.
// Screenshots of each step go to test-artifacts/e2e/. An error in a page fails the test it happened in.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { LabService } from '../../electron/engine/api/service';
import type { Lab } from '../../electron/engine/lab/lab';
import { parseLabFile } from '../../electron/engine/lab/lab-file';
import type { WebServer } from '../../electron/engine/web/server';
import { expectOneCopyOn, labCrashEvidence } from '../helpers/migration';
import { retryTcgCrashes } from '../helpers/tcg-retry';
import type { MigrationResult } from '../../electron/engine/migration/types';
import { startAgent, stopAgent } from '../helpers/agents';
import { artifactsDir, PageErrors } from '../helpers/browser';
import { closeBrowserLab, openBrowserLab, type BrowserLab } from '../helpers/browser-lab';

const SHOTS = artifactsDir('e2e');

let work: string;
let lab: Lab;
let service: LabService;
let server: WebServer;
let browser: Browser;
let page: Page;
const pageErrors = new PageErrors();

async function shot(name: string, p: Page = page): Promise<void> {
  await p.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

let env: BrowserLab | undefined;

beforeAll(async () => {
  env = await openBrowserLab('e2e', SHOTS);
  ({ work, lab, service, server, browser } = env);
  page = pageErrors.watch(await env.browser.newPage({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true }));
}, 120_000);

afterEach(() => pageErrors.expectNone());

afterAll(async () => {
  await closeBrowserLab(env ?? {}, ['host-a', 'host-b']);
});

/** The text xterm.js shows in the Console region (its DOM renderer keeps it in rows). */
function consoleText(p: Page = page): Promise<string> {
  return p.getByRole('region', { name: 'Console' }).locator('.xterm-rows').innerText();
}

async function typeInConsole(text: string): Promise<void> {
  await page.getByRole('region', { name: 'Console' }).locator('.console-box').click();
  await page.keyboard.type(text);
  await page.keyboard.press('Enter');
}

describe('the UI in Chromium, browser mode, real guests', () => {
  it('shows the lab: host-a, host-b and the switch between them', async () => {
    await page.goto(server.url);
    // The token left the address bar (history, sync, screen shares) for an HttpOnly cookie.
    expect(await page.evaluate(() => location.search)).toBe('');
    expect(page.url()).toBe(new URL('/', server.url).href);
    await expect.poll(() => page.getByRole('article', { name: 'Host host-a' }).count()).toBe(1);
    expect(await page.getByRole('article', { name: 'Host host-b' }).count()).toBe(1);
    expect(await page.getByLabel('Lab switch').innerText()).toContain('10.80.0.0/24');
    await shot('01-lab');
  });

  it('starts a guest from the page; it boots, and its console shows it and runs a typed command', async () => {
    await page.getByLabel('Guest name').fill('ui1');
    await page.getByRole('button', { name: 'Start guest' }).click();
    const card = page.getByRole('button', { name: 'Guest ui1' });
    await card.waitFor({ timeout: 60_000 });
    await expect.poll(() => card.innerText(), { timeout: 90_000 }).toContain('ready');
    await card.click();
    await expect.poll(() => consoleText(), { timeout: 30_000 }).toContain('ui1:/#');
    await typeInConsole('echo typed-$((40+2))');
    await expect.poll(() => consoleText(), { timeout: 20_000 }).toContain('typed-42');
    await shot('02-guest-and-console');
  });

  it('migrates it with the Migrate button and shows the rounds, the result and the MAC move', async () => {
    // Only QEMU 7.2's TCG bug may cost a retry (see tcg-retry.ts): the page must say MigLab kept
    // the guest on host-a, and the crash is judged on the job's result and the lab's copies.
    await retryTcgCrashes('ui1: migration to host-b from the Migrate button', async () => {
      await page.getByRole('button', { name: 'Migrate' }).click();
      const dialog = page.getByRole('dialog', { name: 'Migrate ui1' });
      expect(await dialog.getByLabel('Destination host').inputValue()).toBe('host-b');
      // the pre-flight checks for host-b, run before anything starts, and the capabilities offered
      const checks = dialog.getByRole('region', { name: 'Pre-flight checks' });
      await expect.poll(() => checks.locator('li').count(), { timeout: 20_000 }).toBeGreaterThanOrEqual(5);
      expect(await checks.innerText()).toContain('ui1 has finished booting and said it is ready.');
      expect(await dialog.getByLabel('auto-converge').count()).toBe(1);
      await shot('03-migrate-dialog');
      await dialog.getByRole('button', { name: 'Start migration' }).click();
      const result = page.getByRole('region', { name: 'Counters' }).getByRole('status');
      await result.waitFor({ timeout: 120_000 });
      const text = await result.innerText();
      if (text.startsWith('Completed')) return { done: true, value: undefined };
      expect(text).toMatch(/failed: The guest .* on host-b right after the switchover, so MigLab resumed it on host-a/);
      const snap = (await service.execute({ type: 'snapshot' })) as { migrations: Array<{ guest: string; result: MigrationResult | null }> };
      const job = snap.migrations.filter((m) => m.guest === 'ui1').at(-1)?.result;
      if (!job) throw new Error('The page shows a failed migration of ui1, but the service has no result for it');
      return {
        done: false,
        failure: text,
        evidence: () => labCrashEvidence(lab, 'ui1', job.from, job.destinationConsoleTail),
        cleanup: () => page.getByRole('button', { name: 'Guest ui1' }).click(),
      };
    });
    const result = page.getByRole('region', { name: 'Counters' }).getByRole('status');
    expect(await result.innerText()).toContain('Completed: ui1 now runs on host-b');
    const rounds = page.getByRole('region', { name: 'Rounds' });
    expect(await rounds.locator('tbody tr').count()).toBeGreaterThanOrEqual(1);
    expect(await rounds.locator('canvas').count()).toBeGreaterThanOrEqual(1);
    const timeline = page.getByRole('region', { name: 'Timeline' });
    expect(await timeline.getByText('cleanup').count()).toBe(1);
    await expect.poll(() => page.getByRole('region', { name: 'Network' }).innerText(), { timeout: 10_000 })
      .toMatch(/52:54:00:50:00:0a moved from host-a \(port \d+\) to host-b \(port \d+\) at .*, seen in a RARP announce frame/);
    expect(lab.host('host-b').guest('ui1')?.state).toBe('ready');
    expect(lab.host('host-a').guest('ui1')).toBeUndefined();
    await shot('04-migrated');
  });

  it('keeps the console working on the destination, with what host-a printed still in it', async () => {
    await page.getByRole('button', { name: 'Guest ui1' }).click();
    await typeInConsole('echo moved-$((40+3))');
    await expect.poll(() => consoleText(), { timeout: 20_000 }).toContain('moved-43');
    // What host-a printed is still in the console's scrollback (it may have scrolled out of view).
    const history = (await service.execute({ type: 'consoleHistory', guest: 'ui1' })) as { text: string };
    expect(history.text).toContain('typed-42');
    expect(history.text.indexOf('typed-42')).toBeLessThan(history.text.indexOf('moved-43'));
    await shot('05-console-on-destination');
  });

  it('lists the migration in History and exports it as JSON and CSV, and the lab as a lab file', async () => {
    const history = page.getByRole('region', { name: 'History' });
    expect(await history.locator('tbody tr').count()).toBeGreaterThanOrEqual(1);
    expect(await history.locator('tbody tr').first().innerText()).toMatch(/ui1\s+host-a → host-b\s+completed/);
    const [json] = await Promise.all([page.waitForEvent('download'), history.getByRole('button', { name: 'Export JSON' }).first().click()]);
    expect(json.suggestedFilename()).toMatch(/^miglab-ui1-host-a-to-host-b-[\w-]+\.json$/);
    const exported = JSON.parse(await readFile((await json.path())!, 'utf8')) as { guest: string; result: { status: string }; samples: unknown[]; passes: unknown[] };
    expect(exported).toMatchObject({ guest: 'ui1', result: { status: 'completed' } });
    expect(exported.samples.length).toBeGreaterThan(0);
    expect(exported.passes.length).toBeGreaterThan(0);
    const [csvFile] = await Promise.all([page.waitForEvent('download'), history.getByRole('button', { name: 'Export CSV' }).first().click()]);
    const csvText = await readFile((await csvFile.path())!, 'utf8');
    expect(csvText.split('\n')[0]).toBe('at_ms,pass,remaining_bytes,transferred_bytes,dirty_rate_bps,throughput_bps');
    expect(csvText.trim().split('\n').length).toBe(exported.samples.length + 1);
    const [labFile] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Save lab file' }).click()]);
    const lab = parseLabFile(await readFile((await labFile.path())!, 'utf8'));
    expect(lab.hosts.map((h) => h.name)).toEqual(['host-a', 'host-b']);
    expect(lab.guests).toEqual([expect.objectContaining({ name: 'ui1', host: 'host-b' })]);
    await shot('06-history');
  });

  it('gives a spectator the same view without the controls', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const spectator = pageErrors.watch(await ctx.newPage());
    try {
      await spectator.goto(server.spectatorUrl);
      expect(await spectator.evaluate(() => location.search)).toBe(''); // its token too left the address bar
      await spectator.getByText('spectator view (read-only)').waitFor();
      await expect.poll(() => spectator.getByRole('article', { name: 'Host host-b' }).innerText()).toContain('ui1');
      expect(await spectator.getByRole('button', { name: 'Start guest' }).count()).toBe(0);
      expect(await spectator.getByRole('button', { name: 'Migrate' }).count()).toBe(0);
      await expect.poll(() => consoleText(spectator), { timeout: 20_000 }).toContain('moved-43');
      await shot('07-spectator', spectator);
    } finally {
      await ctx.close();
    }
  });

  it('migrates over an emulated link, TLS-encrypted, and pulls the cable: the guest stays on its source', async () => {
    await page.getByRole('button', { name: 'Guest ui1' }).click();
    await page.getByRole('button', { name: 'Migrate' }).click();
    const dialog = page.getByRole('dialog', { name: 'Migrate ui1' });
    expect(await dialog.getByLabel('Destination host').inputValue()).toBe('host-a');
    await dialog.getByLabel('Encrypt the stream (QEMU TLS, lab CA)').check();
    await dialog.getByLabel('Emulate a link').check();
    await dialog.getByLabel('Link bandwidth').fill('5');
    await dialog.getByLabel('Link latency').fill('40');
    await dialog.getByRole('button', { name: 'Start migration' }).click();
    const link = page.getByRole('region', { name: 'Link' });
    // the stream flows through the relay: its counters move, then the cable is pulled
    await expect.poll(async () => Number((await link.innerText()).match(/through\s+([\d.]+) MB to host-a/)?.[1] ?? 0), { timeout: 60_000 }).toBeGreaterThan(0.5);
    await link.getByRole('button', { name: 'Pull the cable' }).click();
    const result = page.getByRole('region', { name: 'Counters' }).getByRole('status');
    await result.waitFor({ timeout: 60_000 });
    expect(await result.innerText()).toMatch(/failed: The emulated link was cut \(the cable pulled\).* stayed on host-b/);
    expect(await page.getByRole('region', { name: 'Counters' }).innerText()).toMatch(/through the link\s+[1-9][\d.]* MB to host-a/);
    expect(await link.getByLabel('Link state').innerText()).toBe('CUT');
    expect(await page.getByText('TLS', { exact: true }).count()).toBeGreaterThanOrEqual(1);
    await expectOneCopyOn(lab, 'ui1', 'host-b');
    await shot('08-cable-pulled');
  });

  it("adds a LAN host by its agent's address, token and fingerprint; a wrong fingerprint is refused", async () => {
    const agent = await startAgent({ name: 'lab-pc', listen: '127.0.0.1:0', dataDir: join(work, 'agent'), extra: ['--ports', '50500-50599'] });
    try {
      await page.getByRole('button', { name: 'LAN host (agent)…' }).click();
      const form = page.getByRole('form', { name: 'Add a LAN host' });
      await form.getByLabel('LAN host name').fill('lan-a');
      await form.getByLabel('Agent address').fill(agent.info.url);
      await form.getByLabel('Token').fill(agent.info.pairingToken!);
      // first with another certificate's fingerprint: refused, nothing added
      await form.getByLabel('Fingerprint (SHA-256)').fill('00:'.repeat(31) + '00');
      await form.getByRole('button', { name: 'Add LAN host' }).click();
      await expect.poll(() => page.locator('body').innerText(), { timeout: 20_000 }).toMatch(/not the pinned/);
      expect(await page.getByRole('article', { name: 'Host lan-a' }).count()).toBe(0);
      await form.getByLabel('Fingerprint (SHA-256)').fill(agent.info.fingerprint);
      await form.getByRole('button', { name: 'Add LAN host' }).click();
      const host = page.getByRole('article', { name: 'Host lan-a' });
      await host.waitFor({ timeout: 20_000 });
      expect(await host.innerText()).toContain(agent.info.url);
      expect(await page.locator('body').innerText()).not.toMatch(/not the pinned/); // the refusal is cleared
      await shot('09-lan-host');
      await service.execute({ type: 'removeHost', name: 'lan-a' });
      await expect.poll(() => page.getByRole('article', { name: 'Host lan-a' }).count()).toBe(0);
    } finally {
      await stopAgent(agent);
    }
  });
});
