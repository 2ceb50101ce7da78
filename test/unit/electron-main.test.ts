// The Electron main process with `electron` mocked (its binary cannot run here): the window's
// security options, navigation and new windows denied, permissions denied, the app protocol
// (CSP, no path out of the UI folder), and the IPC bridge's sender and payload checks.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

const mocks = vi.hoisted(() => {
  type Handler = (...args: unknown[]) => unknown;
  const appHandlers = new Map<string, Handler>();
  const windows: Array<{ options: unknown; url: string | null; handlers: Map<string, Handler>; openHandler: Handler | null; contents: unknown }> = [];
  const ipcHandlers = new Map<string, Handler>();
  const protocolHandlers = new Map<string, Handler>();
  let permissionHandler: Handler | null = null;
  const menus: unknown[] = [];
  const dialogState = { open: null as string | null, errors: [] as string[] };
  let permissionCheck: Handler | null = null;
  const privileged: unknown[] = [];
  function contents(handlers: Map<string, Handler>, w: { openHandler: Handler | null }) {
    return {
      on: (ev: string, h: Handler) => handlers.set(ev, h),
      setWindowOpenHandler: (h: Handler) => {
        w.openHandler = h;
      },
      send: vi.fn(),
      isDestroyed: () => false,
    };
  }
  class BrowserWindow {
    webContents: ReturnType<typeof contents>;
    constructor(options: unknown) {
      const w = { options, url: null as string | null, handlers: new Map<string, Handler>(), openHandler: null as Handler | null, contents: null as unknown };
      windows.push(w);
      this.webContents = contents(w.handlers, w);
      w.contents = this.webContents;
      (this as unknown as { record: typeof w }).record = w;
    }
    loadURL(url: string) {
      (this as unknown as { record: { url: string } }).record.url = url;
      return Promise.resolve();
    }
    on() {}
    isDestroyed() {
      return false;
    }
  }
  return {
    appHandlers, windows, ipcHandlers, protocolHandlers, privileged, menus, dialogState,
    get permissionHandler() { return permissionHandler; },
    get permissionCheck() { return permissionCheck; },
    electron: {
      app: {
        whenReady: () => Promise.resolve(),
        on: (ev: string, h: Handler) => appHandlers.set(ev, h),
        quit: vi.fn(),
      },
      BrowserWindow,
      Menu: {
        buildFromTemplate: (t: unknown) => ({ template: t }),
        setApplicationMenu: (m: unknown) => menus.push(m),
      },
      dialog: {
        showOpenDialog: async () => ({ canceled: dialogState.open === null, filePaths: dialogState.open ? [dialogState.open] : [] }),
        showErrorBox: (_title: string, message: string) => dialogState.errors.push(message),
      },
      ipcMain: { handle: (ch: string, h: Handler) => ipcHandlers.set(ch, h), removeHandler: (ch: string) => ipcHandlers.delete(ch) },
      protocol: {
        registerSchemesAsPrivileged: (s: unknown[]) => privileged.push(...s),
        handle: (scheme: string, h: Handler) => protocolHandlers.set(scheme, h),
      },
      session: {
        defaultSession: {
          setPermissionRequestHandler: (h: Handler) => {
            permissionHandler = h;
          },
          setPermissionCheckHandler: (h: Handler) => {
            permissionCheck = h;
          },
        },
      },
    },
  };
});

vi.mock('electron', () => ({ ...mocks.electron, default: mocks.electron }));

let work: string;
let main: typeof import('../../electron/main/main');

beforeAll(async () => {
  work = await makeTempDir('electron-main');
  process.env.MIGLAB_RUNTIME_DIR = work;
  main = await import('../../electron/main/main');
});

afterAll(async () => {
  // Leaving the app stops the lab the main process made.
  const e = { preventDefault: vi.fn() };
  mocks.appHandlers.get('will-quit')?.(e);
  await vi.waitFor(() => expect(mocks.electron.app.quit).toHaveBeenCalled(), { timeout: 10_000 });
  delete process.env.MIGLAB_RUNTIME_DIR;
  await removeDir(work);
});

describe('the Electron main process', () => {
  it('registers miglab:// as a secure, standard scheme before the app is ready', () => {
    expect(mocks.privileged).toEqual([{ scheme: 'miglab', privileges: { standard: true, secure: true, supportFetchAPI: true } }]);
  });

  it('opens a window with the page kept away from Node', () => {
    const win = main.createWindow();
    const record = mocks.windows.at(-1)!;
    expect(record.options).toMatchObject({
      webPreferences: { contextIsolation: true, sandbox: true, nodeIntegration: false, nodeIntegrationInWorker: false, webSecurity: true, webviewTag: false },
    });
    expect(String((record.options as { webPreferences: { preload: string } }).webPreferences.preload)).toMatch(/preload\.cjs$/);
    // the UI comes from the app's own protocol, not file://
    expect(record.url).toBe('miglab://app/index.html');
    expect(win).toBeDefined();
  });

  it('denies navigation, redirects, webviews and new windows', () => {
    main.createWindow();
    const record = mocks.windows.at(-1)!;
    for (const ev of ['will-navigate', 'will-redirect', 'will-attach-webview']) {
      const e = { preventDefault: vi.fn() };
      record.handlers.get(ev)!(e, 'https://example.com');
      expect(e.preventDefault, ev).toHaveBeenCalled();
    }
    expect(record.openHandler!({ url: 'https://example.com' })).toEqual({ action: 'deny' });
    // and every other web contents the app ever makes is locked down the same way
    expect(mocks.appHandlers.has('web-contents-created')).toBe(true);
  });

  it('starts: denies every permission, serves the UI with a CSP, and bridges IPC', async () => {
    const ui = join(work, 'ui');
    await mkdir(ui, { recursive: true });
    await writeFile(join(ui, 'index.html'), '<!doctype html><title>MigLab test page</title>');
    await writeFile(join(work, 'secret.txt'), 'not for the page');
    await main.start({ uiDir: ui });

    const cb = vi.fn();
    mocks.permissionHandler!({}, 'media', cb);
    expect(cb).toHaveBeenCalledWith(false);
    expect(mocks.permissionCheck!()).toBe(false);

    const handler = mocks.protocolHandlers.get('miglab') as (r: Request) => Promise<Response>;
    expect(handler).toBeDefined();
    const page = await handler(new Request('miglab://app/index.html'));
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('MigLab test page');
    expect(page.headers.get('content-security-policy')).toContain("default-src 'self'");
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
    for (const bad of ['miglab://app/../secret.txt', 'miglab://app/%2e%2e/secret.txt', 'miglab://other/index.html']) {
      expect((await handler(new Request(bad))).status, bad).toBe(404);
    }

    // IPC: only the app's own window, showing the app's own origin, reaches the engine.
    const win = mocks.windows.at(-1)!;
    const call = mocks.ipcHandlers.get('lab:call') as (e: unknown, command: unknown) => Promise<unknown>;
    const from = (sender: unknown, url: string) => ({ sender, senderFrame: { url } });
    const snap = (await call(from(win.contents, 'miglab://app/index.html'), { type: 'snapshot' })) as { hosts: Array<{ name: string }> };
    expect(snap.hosts.map((h) => h.name)).toEqual(['host-a', 'host-b']);
    const other = mocks.windows[0]!.contents;
    await expect(call(from(other, 'miglab://app/index.html'), { type: 'snapshot' })).rejects.toThrow(/does not come from the MigLab window/);
    await expect(call(from(win.contents, 'https://evil.example/'), { type: 'snapshot' })).rejects.toThrow(/does not come from the MigLab window/);
    await expect(call(from(win.contents, 'file:///etc/passwd'), { type: 'snapshot' })).rejects.toThrow(/does not come from the MigLab window/);
    // and the payload is validated like any other front end's
    await expect(call(from(win.contents, 'miglab://app/index.html'), { type: 'startGuest', host: 'host-a', guest: { name: 'x', memoryMiB: 1 } }))
      .rejects.toMatchObject({ code: 'invalid' });
    await expect(call(from(win.contents, 'miglab://app/index.html'), { type: 'rm -rf' })).rejects.toMatchObject({ code: 'invalid' });
  });

  it('opens a lab file from File > Open lab file…, replacing the lab; a bad file is refused with a message', async () => {
    type Item = { label?: string; role?: string; click?: () => Promise<void> };
    const menu = mocks.menus.at(-1) as { template: Array<{ label: string; submenu: Item[] }> };
    const open = menu.template[0]!.submenu.find((i) => i.label === 'Open lab file…')!;
    expect(menu.template[0]!.submenu.some((i) => i.role === 'quit')).toBe(true);
    const good = join(work, 'lab.yaml');
    await writeFile(good, 'hosts: [{ name: left }, { name: right }, { name: third }]\nnetwork: null\n');
    mocks.dialogState.open = good;
    await open.click!();
    const win = mocks.windows.at(-1)!;
    const call = mocks.ipcHandlers.get('lab:call') as (e: unknown, command: unknown) => Promise<unknown>;
    const snap = (await call({ sender: win.contents, senderFrame: { url: 'miglab://app/index.html' } }, { type: 'snapshot' })) as { hosts: Array<{ name: string }>; network: unknown };
    expect(snap.hosts.map((h) => h.name)).toEqual(['left', 'right', 'third']);
    expect(snap.network).toBeNull();
    // the window heard of the new lab at once
    const send = (win.contents as { send: ReturnType<typeof vi.fn> }).send;
    expect(send).toHaveBeenCalledWith('lab:event', expect.objectContaining({ type: 'lab' }));

    const bad = join(work, 'bad.yaml');
    await writeFile(bad, 'hosts: []\n');
    mocks.dialogState.open = bad;
    await open.click!();
    expect(mocks.dialogState.errors.at(-1)).toContain('hosts: a lab needs at least one host');
    // the lab that was open stays open
    const still = (await call({ sender: win.contents, senderFrame: { url: 'miglab://app/index.html' } }, { type: 'snapshot' })) as { hosts: Array<{ name: string }> };
    expect(still.hosts.map((h) => h.name)).toEqual(['left', 'right', 'third']);
  });
});
