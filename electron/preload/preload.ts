// The one bridge between the sandboxed renderer and the app: window.lab, the API contract's
// verbs (hear the hello, call a command, hear events) and nothing else of Electron or Node.
import { contextBridge, ipcRenderer, type IpcRendererEvent } from 'electron';
import type { ApiEvent, LabBridge } from '../engine/api/contract';
import { CHANNELS } from '../engine/api/ipc-channels';

const bridge: LabBridge = {
  // The engine says which API it speaks and the window's role: nothing about it is assumed here.
  hello: () => ipcRenderer.invoke(CHANNELS.hello),
  call: (command) => ipcRenderer.invoke(CHANNELS.call, command),
  onEvent: (listener) => {
    const wrapped = (_e: IpcRendererEvent, ev: ApiEvent) => listener(ev);
    ipcRenderer.on(CHANNELS.event, wrapped);
    return () => ipcRenderer.off(CHANNELS.event, wrapped);
  },
};
contextBridge.exposeInMainWorld('lab', bridge);
