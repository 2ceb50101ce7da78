// The one bridge between the sandboxed renderer and the app: window.lab.
import { contextBridge } from 'electron';

contextBridge.exposeInMainWorld('lab', {
  apiVersion: 1,
});
