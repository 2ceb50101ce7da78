// The one bridge between the sandboxed renderer and the app: window.lab, the API contract's
// two verbs (call a command, hear events) and nothing else of Electron or Node.
import { contextBridge, ipcRenderer, type IpcRendererEvent } from 'electron';
import type { ApiCommand, ApiEvent } from '../engine/api/contract';
import { CHANNELS } from '../main/channels';

contextBridge.exposeInMainWorld('lab', {
  apiVersion: 1,
  role: 'teacher',
  call: (command: ApiCommand) => ipcRenderer.invoke(CHANNELS.call, command),
  onEvent: (listener: (ev: ApiEvent) => void) => {
    const wrapped = (_e: IpcRendererEvent, ev: ApiEvent) => listener(ev);
    ipcRenderer.on(CHANNELS.event, wrapped);
    return () => ipcRenderer.off(CHANNELS.event, wrapped);
  },
});
