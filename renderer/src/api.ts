// The renderer's only way to the lab: the API contract over a WebSocket (browser mode). In the
// desktop app the same calls go through window.lab; the UI does not know which.
import { API_VERSION, type ApiCommand, type ApiEvent, type ApiResults, type ApiRole, type LabBridge, type ServerMessage } from '../../electron/engine/api/contract';

export interface LabConnection {
  readonly role: ApiRole;
  call<K extends ApiCommand['type']>(command: Extract<ApiCommand, { type: K }>): Promise<ApiResults[K]>;
  onEvent(listener: (ev: ApiEvent) => void): () => void;
  onClose(listener: (why: string) => void): () => void;
}

export class ApiCallError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/** Connects to /api on the page's own host; the access token travels in the page's cookie. */
export function connectWebSocket(url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api`): Promise<LabConnection> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
    const events = new Set<(ev: ApiEvent) => void>();
    const closes = new Set<(why: string) => void>();
    const early: ApiEvent[] = [];
    let nextId = 1;
    let opened = false;
    ws.onmessage = (m) => {
      const msg = JSON.parse(String(m.data)) as ServerMessage;
      if ('hello' in msg) {
        if (msg.hello.apiVersion !== API_VERSION) {
          // A page from another MigLab (a cached tab, a spectator's old copy): its calls would be misread.
          reject(new Error(`This page speaks API version ${API_VERSION}, but the MigLab it reached speaks version ${msg.hello.apiVersion}: reload the page`));
          ws.close();
          return;
        }
        opened = true;
        const conn: LabConnection = {
          role: msg.hello.role,
          call: (command) =>
            new Promise((res, rej) => {
              const id = nextId++;
              pending.set(id, { resolve: res as (v: unknown) => void, reject: rej });
              ws.send(JSON.stringify({ id, command }));
            }),
          onEvent: (l) => {
            events.add(l);
            for (const ev of early.splice(0)) l(ev);
            return () => events.delete(l);
          },
          onClose: (l) => {
            closes.add(l);
            return () => closes.delete(l);
          },
        };
        resolve(conn);
      } else if ('event' in msg) {
        if (events.size === 0) early.push(msg.event);
        for (const l of events) l(msg.event);
      } else {
        const p = pending.get(msg.id);
        pending.delete(msg.id);
        if (msg.ok) p?.resolve(msg.result);
        else p?.reject(new ApiCallError(msg.error.message, msg.error.code));
      }
    };
    ws.onclose = (e) => {
      const why = e.code === 1006 && !opened ? 'MigLab refused the connection: open the address miglab web printed, with its token' : `the connection to MigLab closed (${e.code})`;
      if (!opened) reject(new Error(why));
      for (const p of pending.values()) p.reject(new Error(why));
      for (const l of closes) l(why);
    };
  });
}

/**
 * In the desktop app: the same connection over window.lab (the preload), which the engine answers
 * through IPC with the WebSocket's hello and replies. Null outside the app.
 */
export async function connectWindowLab(): Promise<LabConnection | null> {
  const lab = (globalThis as { lab?: LabBridge }).lab;
  if (!lab || typeof lab.call !== 'function') return null;
  const hello = await lab.hello();
  if (hello.apiVersion !== API_VERSION) {
    throw new Error(`This MigLab window speaks API version ${API_VERSION}, but the app's engine speaks version ${hello.apiVersion}: the app is not installed whole, reinstall it`);
  }
  return {
    role: hello.role,
    call: async (command) => {
      const reply = await lab.call(command);
      if (!reply.ok) throw new ApiCallError(reply.error.message, reply.error.code);
      return reply.result;
    },
    onEvent: (l) => lab.onEvent(l),
    onClose: () => () => {},
  };
}
