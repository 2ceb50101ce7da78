// The IPC bridge: the renderer's API calls reach the engine only from the app's own window and
// origin, and only as commands the engine's schema accepts (LabService.execute validates).
import type { IpcMain, IpcMainInvokeEvent, WebContents } from 'electron';
import type { ApiEvent } from '../engine/api/contract';
import type { LabService } from '../engine/api/service';
import { APP_ORIGIN, CHANNELS } from './channels';

/** A message counts only from our window's main frame, showing our own origin. */
export function isTrustedSender(event: Pick<IpcMainInvokeEvent, 'sender' | 'senderFrame'>, window: WebContents | null): boolean {
  if (!window || event.sender !== window) return false;
  const url = event.senderFrame?.url ?? '';
  return url === APP_ORIGIN || url.startsWith(`${APP_ORIGIN}/`);
}

export function registerLabIpc(ipcMain: Pick<IpcMain, 'handle' | 'removeHandler'>, service: LabService, window: () => WebContents | null): () => void {
  ipcMain.handle(CHANNELS.call, async (event, command: unknown) => {
    if (!isTrustedSender(event, window())) throw new Error('Refused: this message does not come from the MigLab window');
    return service.execute(command);
  });
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
