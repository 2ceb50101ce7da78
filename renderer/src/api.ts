// The renderer's only way to the lab: the API contract over a WebSocket (browser mode). In the
// desktop app the same calls go through window.lab; the UI does not know which.
import type { ApiCommand, ApiEvent, ApiResults, ApiRole, ServerMessage } from '../../electron/engine/api/contract';

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

/** What the desktop app's preload exposes (see electron/preload/preload.ts). */
interface WindowLab {
  apiVersion: number;
  role: ApiRole;
  call(command: ApiCommand): Promise<unknown>;
  onEvent(listener: (ev: ApiEvent) => void): () => void;
}

/** In the desktop app: the same connection over window.lab, which the engine answers through IPC. */
export function connectWindowLab(): LabConnection | null {
  const lab = (globalThis as { lab?: WindowLab }).lab;
  if (!lab || typeof lab.call !== 'function') return null;
  return {
    role: lab.role,
    call: (command) => lab.call(command).catch((err: Error) => Promise.reject(new ApiCallError(err.message.replace(/^Error invoking remote method '[^']+': (Error: )?/, ''), 'failed'))) as never,
    onEvent: (l) => lab.onEvent(l),
    onClose: () => () => {},
  };
}
