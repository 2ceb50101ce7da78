// The IPC bridge: the renderer's API calls reach the engine only from the app's own window and
// origin, and only as commands the engine's schema accepts (LabService.execute validates). Calls
// are answered with the WebSocket's reply envelope: Electron keeps only an error's message.
import type { IpcMain, IpcMainInvokeEvent, WebContents } from 'electron';
import { ApiError } from '../engine/api/commands';
import type { ApiEvent, Hello } from '../engine/api/contract';
import { helloFor, replyFor } from '../engine/api/replies';
import type { LabService } from '../engine/api/service';
import { APP_ORIGIN, CHANNELS } from '../engine/api/ipc-channels';

const REFUSED = 'Refused: this message does not come from the MigLab window';

/** A message counts only from our window's main frame, showing our own origin. */
export function isTrustedSender(event: Pick<IpcMainInvokeEvent, 'sender' | 'senderFrame'>, window: WebContents | null): boolean {
  if (!window || event.sender !== window) return false;
  const url = event.senderFrame?.url ?? '';
  return url === APP_ORIGIN || url.startsWith(`${APP_ORIGIN}/`);
}

/**
 * The window's hello: it owns the lab, so it is the teacher. Registered once, before the window
 * loads, as the page asks for it before anything else (the lab may still be opening).
 */
export function registerHelloIpc(ipcMain: Pick<IpcMain, 'handle' | 'removeHandler'>, window: () => WebContents | null): () => void {
  ipcMain.handle(CHANNELS.hello, (event): Hello => {
    if (!isTrustedSender(event, window())) throw new Error(REFUSED);
    return helloFor('teacher');
  });
  return () => ipcMain.removeHandler(CHANNELS.hello);
}

/** What the bridge needs of the LabService: running a command, and hearing its events. */
export interface BridgedService {
  execute: LabService['execute'];
  on(name: 'event', listener: (ev: ApiEvent) => void): unknown;
  off(name: 'event', listener: (ev: ApiEvent) => void): unknown;
}

export function registerLabIpc(ipcMain: Pick<IpcMain, 'handle' | 'removeHandler'>, service: BridgedService, window: () => WebContents | null): () => void {
  ipcMain.handle(CHANNELS.call, (event, command: unknown) =>
    replyFor(() => {
      if (!isTrustedSender(event, window())) throw new ApiError('forbidden', REFUSED);
      return service.execute(command);
    }),
  );
  const forward = (ev: ApiEvent) => {
    const wc = window();
    if (wc && !wc.isDestroyed()) wc.send(CHANNELS.event, ev);
  };
  service.on('event', forward);
  return () => {
    ipcMain.removeHandler(CHANNELS.call);
    service.off('event', forward);
  };
}
