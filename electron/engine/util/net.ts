import { createConnection, type Socket } from 'node:net';

/** Connects to a UNIX socket (a QEMU chardev); rejects with the connect error. */
export function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}
