// The Electron shell: one window, sandboxed, showing the lab UI from miglab://app/, talking to
// the engine (which runs here, in the main process) through the checked IPC bridge.
import { app, BrowserWindow, dialog, ipcMain, Menu, protocol, session, type WebContents } from 'electron';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { LabService } from '../engine/api/service';
import { defaultLocalLab, type Lab } from '../engine/lab/lab';
import { labFromFile, readLabFile } from '../engine/lab/lab-file';
import { recoverInterruptedMigrations } from '../engine/migration/recovery';
import { MigrationJournal } from '../engine/migration/journal';
import { findBuiltUi } from '../engine/web/ui-files';
import { appProtocolHandler } from './app-protocol';
import { APP_ORIGIN, APP_SCHEME, CHANNELS } from '../engine/api/ipc-channels';
import { registerHelloIpc, registerLabIpc } from './ipc';
import { describeRecovery } from '../engine/migration/recovery-report';

declare const MAIN_WINDOW_VITE_NAME: string;

/** The window's options: every web preference that keeps the page away from Node. */
export const WINDOW_OPTIONS: Electron.BrowserWindowConstructorOptions = {
  width: 1400,
  height: 900,
  title: 'MigLab',
  backgroundColor: '#15171c',
  webPreferences: {
    preload: join(__dirname, 'preload.cjs'),
    contextIsolation: true,
    sandbox: true,
    nodeIntegration: false,
    nodeIntegrationInWorker: false,
    webSecurity: true,
    allowRunningInsecureContent: false,
    webviewTag: false,
    spellcheck: false,
  },
};

/** Where the built UI is: next to this bundle (packaged), or in the source tree's .vite. */
export function uiDir(): string {
  const name = typeof MAIN_WINDOW_VITE_NAME === 'string' ? MAIN_WINDOW_VITE_NAME : 'main_window';
  const packaged = join(__dirname, '..', 'renderer', name);
  return existsSync(packaged) ? packaged : (findBuiltUi() ?? packaged);
}

/** No navigation away from the app, no new windows, whatever the page asks for. */
export function lockDown(contents: WebContents): void {
  contents.on('will-navigate', (e) => e.preventDefault());
  contents.on('will-redirect', (e) => e.preventDefault());
  contents.setWindowOpenHandler(() => ({ action: 'deny' }));
  contents.on('will-attach-webview', (e) => e.preventDefault());
}

export function createWindow(): BrowserWindow {
  const win = new BrowserWindow(WINDOW_OPTIONS);
  lockDown(win.webContents);
  void win.loadURL(`${APP_ORIGIN}/index.html`);
  return win;
}

// Before ready: miglab:// behaves like https (a secure, standard origin) for the page.
protocol.registerSchemesAsPrivileged([{ scheme: APP_SCHEME, privileges: { standard: true, secure: true, supportFetchAPI: true } }]);

let lab: Lab | null = null;
let service: LabService | null = null;
let unregister: (() => void) | null = null;
let win: BrowserWindow | null = null;

const windowContents = (): WebContents | null => (win && !win.isDestroyed() ? win.webContents : null);

/**
 * Opens a lab: the one in a lab file, or the default (host-a, host-b). The lab it replaces is
 * shut down first (its guests stopped), and the window is told about the new one.
 */
export async function openLab(file: string | null): Promise<void> {
  const spec = file ? await readLabFile(file) : null;
  unregister?.();
  await service?.close();
  const old = lab;
  lab = null;
  await old?.dispose();
  lab = spec ? await labFromFile(spec, { source: file! }) : await defaultLocalLab();
  const journal = new MigrationJournal();
  // Migrations a previous run left in flight between this lab's agents: settled, then reported.
  const recovered = await recoverInterruptedMigrations(lab.hosts(), journal);
  service = new LabService(lab, journal);
  unregister = registerLabIpc(ipcMain, service, windowContents);
  windowContents()?.send(CHANNELS.event, { type: 'lab', snapshot: service.snapshot() });
  if (recovered.length) {
    dialog.showErrorBox(
      'MigLab: migrations that were in flight',
      recovered.map(describeRecovery).join('\n'),
    );
  }
  if (spec) {
    const s = service;
    void s.startGuests(spec.guests, (m) => dialog.showErrorBox('MigLab', m));
  }
}

/** File > Open lab file…: the app's way to the same lab files as "miglab web lab.yaml". */
export function buildMenu(): Menu {
  return Menu.buildFromTemplate([
    {
      label: 'File',
      submenu: [
        {
          label: 'Open lab file…',
          accelerator: 'CmdOrCtrl+O',
          click: async () => {
            const pick = await dialog.showOpenDialog({ title: 'Open a MigLab lab file', properties: ['openFile'], filters: [{ name: 'Lab files', extensions: ['yaml', 'yml'] }] });
            const path = pick.filePaths[0];
            if (pick.canceled || !path) return;
            await openLab(path).catch((err: Error) => dialog.showErrorBox('MigLab', err.message));
          },
        },
        { role: 'quit' },
      ],
    },
  ]);
}

export async function start(opts: { uiDir?: string; labFile?: string | null } = {}): Promise<void> {
  await app.whenReady();
  session.defaultSession.setPermissionRequestHandler((_wc, _permission, callback) => callback(false));
  session.defaultSession.setPermissionCheckHandler(() => false);
  protocol.handle(APP_SCHEME, appProtocolHandler(opts.uiDir ?? uiDir()));
  Menu.setApplicationMenu(buildMenu());
  registerHelloIpc(ipcMain, windowContents);
  win = createWindow();
  win.on('closed', () => {
    win = null;
  });
  // `npm start -- lab.yaml` passes the lab file through MIGLAB_LAB_FILE.
  await openLab(opts.labFile ?? process.env.MIGLAB_LAB_FILE ?? null).catch(async (err: Error) => {
    dialog.showErrorBox('MigLab', err.message);
    await openLab(null);
  });
}

app.on('web-contents-created', (_e, contents) => lockDown(contents));
app.on('window-all-closed', () => app.quit());
app.on('will-quit', (e) => {
  if (!lab) return;
  // Stop every guest before leaving: QEMU runs in its own process group and would outlive us.
  e.preventDefault();
  const l = lab;
  lab = null;
  void l.dispose().finally(() => app.quit());
});

if (!process.env.VITEST) void start();
