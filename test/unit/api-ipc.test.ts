// The desktop app's bridge end to end, with Electron faked (its binary cannot run here): main's
// handlers (registerHelloIpc, registerLabIpc), the preload's window.lab and the renderer's
// connectWindowLab, wired as Electron wires them. Like Electron, the fake passes values through a
// structured clone and turns a handler that throws into an "Error invoking remote method" error
// with the text only: an error's code reaches the page only inside the reply.
import { EventEmitter } from 'node:events';
import type { IpcMain } from 'electron';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ApiError, parseCommand } from '../../electron/engine/api/commands';
import { API_VERSION, type ApiCommand, type ApiEvent, type ApiResults, type LabBridge } from '../../electron/engine/api/contract';
import { CHANNELS } from '../../electron/engine/api/ipc-channels';
import { helloFor } from '../../electron/engine/api/replies';
import { registerHelloIpc, registerLabIpc } from '../../electron/main/ipc';
import { ApiCallError, connectWindowLab, type LabConnection } from '../../renderer/src/api';

const fake = vi.hoisted(() => {
  type Handler = (event: unknown, ...args: unknown[]) => unknown;
  type Listener = (event: unknown, ...args: unknown[]) => void;
  const handlers = new Map<string, Handler>();
  const listeners = new Map<string, Set<Listener>>();
  /** The app window's web contents: main sends to it, and the page's invokes come from it. */
  const window = {
    isDestroyed: () => false,
    send: (channel: string, ...args: unknown[]) => {
      for (const l of listeners.get(channel) ?? []) l({}, ...structuredClone(args));
    },
  };
  const fromPage = { sender: window, senderFrame: { url: 'miglab://app/index.html' } };
  const electron = {
    ipcMain: {
      handle: (channel: string, h: Handler) => {
        if (handlers.has(channel)) throw new Error(`Attempted to register a second handler for '${channel}'`);
        handlers.set(channel, h);
      },
      removeHandler: (channel: string) => handlers.delete(channel),
    },
    ipcRenderer: {
      invoke: async (channel: string, ...args: unknown[]) => {
        const h = handlers.get(channel);
        try {
          if (!h) throw new Error(`No handler registered for '${channel}'`);
          return structuredClone(await h(fromPage, ...structuredClone(args)));
        } catch (err) {
          throw new Error(`Error invoking remote method '${channel}': ${String(err)}`);
        }
      },
      on: (channel: string, l: Listener) => {
        if (!listeners.has(channel)) listeners.set(channel, new Set());
        listeners.get(channel)!.add(l);
      },
      off: (channel: string, l: Listener) => listeners.get(channel)?.delete(l),
    },
    contextBridge: {
      exposeInMainWorld: (key: string, api: unknown) => {
        (globalThis as Record<string, unknown>)[key] = api;
      },
    },
  };
  return { handlers, window, fromPage, electron };
});

vi.mock('electron', () => ({ ...fake.electron, default: fake.electron }));

/** The engine's side, as far as IPC sees it: the real command schema, then answers or refusals. */
class FakeService extends EventEmitter<{ event: [ApiEvent] }> {
  async execute(input: unknown): Promise<ApiResults[ApiCommand['type']]> {
    const cmd = parseCommand(input);
    if (cmd.type === 'snapshot') return { apiVersion: API_VERSION, hosts: [], migrations: [], network: null };
    if (cmd.type === 'removeHost') throw new ApiError('invalid', `${cmd.name} is the lab's last host: a lab keeps at least one`);
    throw new Error(`the engine broke on ${cmd.type}`);
  }
}

const window = () => fake.window as never;
const ipcMain = fake.electron.ipcMain as unknown as Pick<IpcMain, 'handle' | 'removeHandler'>;
const service = new FakeService();
let unregister: Array<() => void> = [];
let conn: LabConnection;

/** What a call rejected with. */
async function refusal(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    (r) => {
      throw new Error(`resolved: ${JSON.stringify(r)}`);
    },
    (err: unknown) => err,
  );
}

/** Main's hello handler answers `hello` for the length of `body`. */
async function withHello(hello: unknown, body: () => Promise<void>): Promise<void> {
  const real = fake.handlers.get(CHANNELS.hello)!;
  fake.handlers.set(CHANNELS.hello, () => hello);
  try {
    await body();
  } finally {
    fake.handlers.set(CHANNELS.hello, real);
  }
}

beforeAll(async () => {
  unregister = [registerHelloIpc(ipcMain, window), registerLabIpc(ipcMain, service, window)];
  await import('../../electron/preload/preload');
  conn = (await connectWindowLab())!;
});

afterAll(() => {
  for (const u of unregister) u();
  delete (globalThis as { lab?: unknown }).lab;
});

describe('the IPC bridge (main, preload, renderer)', () => {
  it("an ApiError the engine throws reaches the page as an ApiCallError with the engine's code and message", async () => {
    const err = await refusal(conn.call({ type: 'removeHost', name: 'host-a' }));
    expect(err).toBeInstanceOf(ApiCallError);
    expect(err).toMatchObject({ code: 'invalid', message: "host-a is the lab's last host: a lab keeps at least one" });
    // the schema's own refusal the same way
    const bad = await refusal(conn.call({ type: 'snapshot', extra: 1 } as never));
    expect(bad).toBeInstanceOf(ApiCallError);
    expect(bad).toMatchObject({ code: 'invalid', message: 'The command is not valid: command: Unrecognized key: "extra"' });
  });

  it("any other error is 'failed', with its message as it was; a result arrives as it was", async () => {
    const err = await refusal(conn.call({ type: 'exportLab' }));
    expect(err).toBeInstanceOf(ApiCallError);
    expect(err).toMatchObject({ code: 'failed', message: 'the engine broke on exportLab' });
    expect(await conn.call({ type: 'snapshot' })).toEqual({ apiVersion: API_VERSION, hosts: [], migrations: [], network: null });
  });

  it("the preload's hello is what main answers, and the connection takes its role from it", async () => {
    const lab = (globalThis as { lab?: LabBridge }).lab!;
    expect(await lab.hello()).toEqual({ apiVersion: API_VERSION, role: 'teacher' });
    expect(conn.role).toBe('teacher');
    // nothing in the preload decides it: main says spectator, the page is a spectator
    await withHello(helloFor('spectator'), async () => {
      expect(await lab.hello()).toEqual({ apiVersion: API_VERSION, role: 'spectator' });
      expect((await connectWindowLab())!.role).toBe('spectator');
    });
  });

  it('main refuses a hello from another sender', () => {
    const hello = fake.handlers.get(CHANNELS.hello)!;
    expect(() => hello({ sender: {}, senderFrame: { url: 'miglab://app/index.html' } })).toThrow('Refused: this message does not come from the MigLab window');
    expect(() => hello({ sender: fake.window, senderFrame: { url: 'https://evil.example/' } })).toThrow('Refused');
  });

  it('connectWindowLab refuses an engine that speaks another API version, saying both', async () => {
    await withHello({ apiVersion: API_VERSION + 1, role: 'teacher' }, async () => {
      await expect(connectWindowLab()).rejects.toThrow(`This MigLab window speaks API version ${API_VERSION}, but the app's engine speaks version ${API_VERSION + 1}`);
    });
  });

  it("the engine's events reach the page", () => {
    const heard: ApiEvent[] = [];
    const off = conn.onEvent((ev) => heard.push(ev));
    const ev: ApiEvent = { type: 'console', guest: 'g', host: 'host-a', data: 'login:' };
    service.emit('event', ev);
    off();
    service.emit('event', ev);
    expect(heard).toEqual([ev]);
  });

  it('without window.lab (browser mode) there is no desktop connection', async () => {
    const lab = (globalThis as { lab?: unknown }).lab;
    delete (globalThis as { lab?: unknown }).lab;
    try {
      expect(await connectWindowLab()).toBeNull();
    } finally {
      (globalThis as { lab?: unknown }).lab = lab;
    }
  });
});
