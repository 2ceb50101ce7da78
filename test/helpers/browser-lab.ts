// One UI test file's world: a fresh screenshots dir, Chromium, a local lab (host-a, host-b) behind
// LabService and browser mode's WebServer, all in the file's own temp dir; and its teardown,
// which checks that every host's runtime dir was left empty.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { LabService } from '../../electron/engine/api/service';
import { defaultLocalLab, type Lab } from '../../electron/engine/lab/lab';
import { MigrationJournal } from '../../electron/engine/migration/journal';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { WebServer } from '../../electron/engine/web/server';
import { launchChromium } from './browser';
import { expectScopeClean, requireLabGuest } from './lab';

export interface BrowserLab {
  work: string;
  lab: Lab;
  service: LabService;
  server: WebServer;
  browser: Browser;
}

export async function openBrowserLab(label: string, shotsDir: string): Promise<BrowserLab> {
  await requireLabGuest();
  const { ui, browser } = await launchChromium();
  await removeDir(shotsDir); // this run's screenshots only
  await mkdir(shotsDir, { recursive: true });
  const work = await makeTempDir(label);
  const lab = await defaultLocalLab({ runtimeDir: join(work, 'run') });
  const service = new LabService(lab, new MigrationJournal(join(work, 'state')), { stateDir: join(work, 'state') });
  const server = await WebServer.start(service, { port: 0, uiDir: ui });
  return { work, lab, service, server, browser };
}

/** Closes what openBrowserLab opened (whatever part of it got opened), then checks `hosts` left nothing. */
export async function closeBrowserLab(b: Partial<BrowserLab>, hosts: string[]): Promise<void> {
  await b.browser?.close();
  await b.server?.close();
  b.service?.close();
  await b.lab?.dispose();
  if (!b.work) return;
  for (const h of hosts) await expectScopeClean(join(b.work, 'run', h));
  await removeDir(b.work);
}
