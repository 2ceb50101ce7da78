// The Electron main process with `electron` mocked (its binary cannot run here). Every handler the
// main process gives Electron is called, as Electron would call it: navigation, redirects, webviews
// and new windows denied (in every web contents), permissions denied, the app protocol (CSP, no
// path out of the UI folder), the IPC bridge (a foreign sender refused before the engine hears
// it, a bad payload refused naming the field, a good call answered by the LabService, its events
// sent to the window, nothing after the window closed), and quitting only once the lab stopped.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { ApiReply } from '../../electron/engine/api/contract';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

const mocks = vi.hoisted(() => {
  type Handler = (...args: unknown[]) => unknown;
  const appHandlers = new Map<string, Handler>();
  interface WindowRecord {
    options: unknown;
    url: string | null;
    /** webContents.on handlers. */
    handlers: Map<string, Handler>;
    /** BrowserWindow.on handlers ('closed'). */
    windowHandlers: Map<string, Handler>;
    openHandler: Handler | null;
    contents: unknown;
    destroyed: boolean;
  }
  const windows: WindowRecord[] = [];
  const ipcHandlers = new Map<string, Handler>();
  const protocolHandlers = new Map<string, Handler>();
  let permissionHandler: Handler | null = null;
  const menus: unknown[] = [];
  const dialogState = { open: null as string | null, errors: [] as string[] };
  let permissionCheck: Handler | null = null;
  const privileged: unknown[] = [];
  function contents(w: WindowRecord) {
    return {
      on: (ev: string, h: Handler) => w.handlers.set(ev, h),
      setWindowOpenHandler: (h: Handler) => {
        w.openHandler = h;
      },
      send: vi.fn(),
      isDestroyed: () => w.destroyed,
    };
  }
  class BrowserWindow {
    webContents: ReturnType<typeof contents>;
    private readonly record: WindowRecord;
    constructor(options: unknown) {
      const w: WindowRecord = { options, url: null, handlers: new Map(), windowHandlers: new Map(), openHandler: null, contents: null, destroyed: false };
      windows.push(w);
      this.record = w;
      this.webContents = contents(w);
      w.contents = this.webContents;
    }
    loadURL(url: string) {
      this.record.url = url;
      return Promise.resolve();
    }
    on(ev: string, h: Handler) {
      this.record.windowHandlers.set(ev, h);
      return this;
    }
    isDestroyed() {
      return this.record.destroyed;
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

type Send = ReturnType<typeof vi.fn>;
type Snapshot = { hosts: Array<{ name: string }>; network: unknown };
type Call = (event: unknown, command: unknown) => Promise<unknown>;

const APP_PAGE = 'miglab://app/index.html';
/** An IPC event as Electron gives it: the sending web contents and the frame it came from. */
const from = (sender: unknown, url: string | null) => ({ sender, senderFrame: url === null ? null : { url } });
/** The lab:call handler, its reply unwrapped as the renderer does: the result, or a rejection with the error's code. */
const call = (): Call => async (event, command) => {
  const reply = (await (mocks.ipcHandlers.get('lab:call') as Call)(event, command)) as ApiReply<unknown>;
  if (reply.ok) return reply.result;
  throw Object.assign(new Error(reply.error.message), { code: reply.error.code });
};
/** The window start() opened: the app's one window. */
const appWindow = () => mocks.windows.at(-1)!;
const fromApp = () => from(appWindow().contents, APP_PAGE);
const hostNames = async () => ((await call()(fromApp(), { type: 'snapshot' })) as Snapshot).hosts.map((h) => h.name);

let work: string;
let main: typeof import('../../electron/main/main');

beforeAll(async () => {
  work = await makeTempDir('electron-main');
  process.env.MIGLAB_RUNTIME_DIR = work;
  // The lab's migration journal (which start() reads and settles) is the test's, not the user's.
  process.env.MIGLAB_STATE_DIR = join(work, 'state');
  main = await import('../../electron/main/main');
});

afterAll(async () => {
  // Should a test have stopped before quitting: leaving the app stops the lab the main process made.
  const e = { preventDefault: vi.fn() };
  mocks.electron.app.quit.mockClear();
  mocks.appHandlers.get('will-quit')?.(e);
  if (e.preventDefault.mock.calls.length) await vi.waitFor(() => expect(mocks.electron.app.quit).toHaveBeenCalled(), { timeout: 10_000 });
  delete process.env.MIGLAB_RUNTIME_DIR;
  delete process.env.MIGLAB_STATE_DIR;
  await removeDir(work);
});

/** Calls a web contents' lockdown handlers as Electron would, and says which let the page through. */
function notDenied(handlers: Map<string, (...args: unknown[]) => unknown>, openHandler: ((...args: unknown[]) => unknown) | null): string[] {
  const through: string[] = [];
  for (const [ev, url] of [
    ['will-navigate', 'https://example.com/'],
    ['will-navigate', 'miglab://app/other.html'], // not even within the app: the page never navigates
    ['will-redirect', 'https://example.com/'],
    ['will-attach-webview', 'https://example.com/'],
  ] as const) {
    const e = { preventDefault: vi.fn() };
    const h = handlers.get(ev);
    if (!h) through.push(`${ev}: no handler`);
    else {
      h(e, url);
      if (!e.preventDefault.mock.calls.length) through.push(`${ev} ${url}`);
    }
  }
  for (const url of ['https://example.com/', 'miglab://app/index.html']) {
    const r = openHandler?.({ url, frameName: '', features: '', disposition: 'new-window' }) as { action?: string } | undefined;
    if (r?.action !== 'deny') through.push(`window.open ${url}: ${JSON.stringify(r)}`);
  }
  return through;
}

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

  it("denies the window's navigation (even within the app), redirects, webviews and new windows", () => {
    main.createWindow();
    const record = mocks.windows.at(-1)!;
    expect(notDenied(record.handlers, record.openHandler)).toEqual([]);
  });

  it('locks down every other web contents the app ever makes the same way', () => {
    const handlers = new Map<string, (...args: unknown[]) => unknown>();
    let openHandler: ((...args: unknown[]) => unknown) | null = null;
    const contents = {
      on: (ev: string, h: (...args: unknown[]) => unknown) => handlers.set(ev, h),
      setWindowOpenHandler: (h: (...args: unknown[]) => unknown) => {
        openHandler = h;
      },
    };
    const created = mocks.appHandlers.get('web-contents-created');
    expect(created).toBeDefined();
    created!({ preventDefault: vi.fn() }, contents);
    expect(notDenied(handlers, openHandler)).toEqual([]);
  });

  it('starts: denies every permission request and check, and serves the UI with a CSP and nothing outside it', async () => {
    const ui = join(work, 'ui');
    await mkdir(ui, { recursive: true });
    await writeFile(join(ui, 'index.html'), '<!doctype html><title>MigLab test page</title>');
    await writeFile(join(work, 'secret.txt'), 'not for the page');
    await main.start({ uiDir: ui });

    const win = appWindow();
    for (const permission of ['media', 'geolocation', 'notifications', 'clipboard-read', 'fullscreen', 'openExternal']) {
      const cb = vi.fn();
      mocks.permissionHandler!(win.contents, permission, cb, { requestingUrl: APP_PAGE });
      expect(cb, permission).toHaveBeenCalledWith(false);
      expect(cb, permission).toHaveBeenCalledTimes(1);
      expect(mocks.permissionCheck!(win.contents, permission, 'miglab://app', { requestingUrl: APP_PAGE }), permission).toBe(false);
    }

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
  });

  it('IPC: refuses a call from any other sender or origin, before the engine hears it', async () => {
    const other = mocks.windows[0]!.contents; // a window that is not the app's
    const foreign = [
      from(other, APP_PAGE),
      from(appWindow().contents, 'https://evil.example/'),
      from(appWindow().contents, 'file:///etc/passwd'),
      from(appWindow().contents, 'miglab://app.evil.example/index.html'),
      from(appWindow().contents, 'miglab://appx/index.html'),
      from(appWindow().contents, null), // no frame
      from(undefined, APP_PAGE),
    ];
    for (const event of foreign) {
      await expect(call()(event, { type: 'addHost', name: 'intruder' }), JSON.stringify(event.senderFrame)).rejects.toThrow(
        'Refused: this message does not come from the MigLab window',
      );
    }
    // none of them reached the lab
    expect(await hostNames()).toEqual(['host-a', 'host-b']);
  });

  it('IPC: refuses a payload the API does not accept, saying what is wrong with it', async () => {
    const bad: Array<[unknown, string]> = [
      [{ type: 'startGuest', host: 'host-a', guest: { name: 'x', memoryMiB: 1 } }, 'guest.memoryMiB: Too small: expected number to be >=64'],
      [{ type: 'startGuest', host: 'host-a', guest: { name: 'x', boot: { kind: 'kernel', kernel: 'relative/bzImage' } } }, 'guest.boot.kernel: give an absolute path on the host'],
      [{ type: 'rm -rf' }, 'type: Invalid discriminator value'],
      [{ type: 'snapshot', extra: 1 }, 'command: Unrecognized key: "extra"'],
      ['snapshot', 'command: Invalid input: expected object, received string'],
      [null, 'command: Invalid input: expected object, received null'],
      [{ type: 'consoleInput', guest: 'g', data: 'x'.repeat(5000) }, 'data: Too big'],
    ];
    for (const [payload, why] of bad) {
      const err = (await call()(fromApp(), payload).then(
        () => null,
        (e: unknown) => e,
      )) as { code?: string; message?: string } | null;
      expect(err, JSON.stringify(payload)).not.toBeNull();
      expect(err!.code, JSON.stringify(payload)).toBe('invalid');
      expect(err!.message, JSON.stringify(payload)).toContain(`The command is not valid: ${why}`);
    }
    expect(await hostNames()).toEqual(['host-a', 'host-b']);
  });

  it("IPC: a good call reaches the LabService and returns its result, and the engine's events reach the window", async () => {
    const send = (appWindow().contents as { send: Send }).send;
    send.mockClear();
    const added = (await call()(fromApp(), { type: 'addHost', name: 'host-c' })) as { name: string; kind: string; guests: unknown[] };
    expect(added).toMatchObject({ name: 'host-c', kind: 'local', guests: [] });
    expect(await hostNames()).toEqual(['host-a', 'host-b', 'host-c']);
    // the lab changed: the window is sent the new snapshot on the event channel
    await vi.waitFor(() => {
      const labEvents = send.mock.calls.filter(([ch, ev]) => ch === 'lab:event' && (ev as { type: string }).type === 'lab');
      expect(labEvents.map(([, ev]) => (ev as { snapshot: Snapshot }).snapshot.hosts.map((h) => h.name)).at(-1)).toEqual(['host-a', 'host-b', 'host-c']);
    });
    const exported = (await call()(fromApp(), { type: 'exportLab' })) as { yaml: string };
    expect(exported.yaml).toContain('host-c');
    expect(await call()(fromApp(), { type: 'removeHost', name: 'host-c' })).toEqual({ name: 'host-c' });
    expect(await hostNames()).toEqual(['host-a', 'host-b']);
    // and the engine's own refusals come back as they are
    await expect(call()(fromApp(), { type: 'stopGuest', host: 'host-a', guest: 'nobody' })).rejects.toMatchObject({ code: 'not-found' });
    await expect(call()(fromApp(), { type: 'removeHost', name: 'host-z' })).rejects.toMatchObject({ code: 'not-found', message: expect.stringContaining('host-z') });
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
    const snap = (await call()(fromApp(), { type: 'snapshot' })) as Snapshot;
    expect(snap.hosts.map((h) => h.name)).toEqual(['left', 'right', 'third']);
    expect(snap.network).toBeNull();
    // the window heard of the new lab at once
    const send = (appWindow().contents as { send: Send }).send;
    expect(send).toHaveBeenCalledWith('lab:event', expect.objectContaining({ type: 'lab' }));

    const bad = join(work, 'bad.yaml');
    await writeFile(bad, 'hosts: []\n');
    mocks.dialogState.open = bad;
    await open.click!();
    expect(mocks.dialogState.errors.at(-1)).toContain('hosts: a lab needs at least one host');
    // the lab that was open stays open
    expect(await hostNames()).toEqual(['left', 'right', 'third']);
  });

  it('after the window closes, its contents can no longer call the engine nor hear from it', async () => {
    const win = appWindow();
    const send = (win.contents as { send: Send }).send;
    const closed = win.windowHandlers.get('closed');
    expect(closed).toBeDefined();
    closed!(); // the 'closed' event itself lets go of the window (Electron destroys it just after)
    send.mockClear();
    await expect(call()(from(win.contents, APP_PAGE), { type: 'snapshot' })).rejects.toThrow('Refused: this message does not come from the MigLab window');
    // a new lab (File > Open) is not announced to the window that is gone
    const menu = mocks.menus.at(-1) as { template: Array<{ submenu: Array<{ label?: string; click?: () => Promise<void> }> }> };
    mocks.dialogState.open = join(work, 'lab.yaml');
    await menu.template[0]!.submenu.find((i) => i.label === 'Open lab file…')!.click!();
    expect(send).not.toHaveBeenCalled();
    win.destroyed = true;
  });

  it('quits when the last window closes, and holds the quit until the lab has stopped', async () => {
    const quit = mocks.electron.app.quit;
    quit.mockClear();
    mocks.appHandlers.get('window-all-closed')!();
    expect(quit).toHaveBeenCalledTimes(1);

    quit.mockClear();
    const e = { preventDefault: vi.fn() };
    mocks.appHandlers.get('will-quit')!(e);
    expect(e.preventDefault).toHaveBeenCalled(); // not yet: the lab's guests are stopped first
    expect(quit).not.toHaveBeenCalled();
    await vi.waitFor(() => expect(quit).toHaveBeenCalledTimes(1), { timeout: 10_000 });
    // the lab is gone: the next will-quit goes through
    const again = { preventDefault: vi.fn() };
    mocks.appHandlers.get('will-quit')!(again);
    expect(again.preventDefault).not.toHaveBeenCalled();
  });
});
