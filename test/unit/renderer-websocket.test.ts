// The browser mode's connection (renderer/src/api.ts) against a real WebSocket server: it takes the
// hello's role, answers calls with their error codes, and refuses a server of another API version.
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { ApiCallError, connectWebSocket } from '../../renderer/src/api';
import { API_VERSION } from '../../electron/engine/api/contract';

const servers: WebSocketServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    for (const c of s.clients) c.terminate();
    await new Promise((r) => s.close(r));
  }
});

/** A server that sends `hello` to each client and answers every call with a failure of code 'invalid'. */
async function serve(hello: Record<string, unknown>): Promise<string> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  servers.push(wss);
  await once(wss, 'listening');
  wss.on('connection', (ws) => {
    ws.send(JSON.stringify({ hello }));
    ws.on('message', (data) => {
      const { id } = JSON.parse(String(data)) as { id: number };
      ws.send(JSON.stringify({ id, ok: false, error: { code: 'invalid', message: 'The command is not valid: guest: too long' } }));
    });
  });
  const { port } = wss.address() as { port: number };
  return `ws://127.0.0.1:${port}/api`;
}

describe('connectWebSocket', () => {
  (globalThis as { WebSocket?: unknown }).WebSocket ??= WebSocket;

  it('takes the role from the hello and keeps a failed call\'s code', async () => {
    const conn = await connectWebSocket(await serve({ apiVersion: API_VERSION, role: 'spectator' }));
    expect(conn.role).toBe('spectator');
    const err = await conn.call({ type: 'snapshot' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiCallError);
    expect(err).toMatchObject({ code: 'invalid', message: 'The command is not valid: guest: too long' });
  });

  it('refuses a MigLab of another API version, naming both', async () => {
    const err = await connectWebSocket(await serve({ apiVersion: API_VERSION + 1, role: 'teacher' })).catch((e: unknown) => e);
    expect((err as Error).message).toBe(`This page speaks API version ${API_VERSION}, but the MigLab it reached speaks version ${API_VERSION + 1}: reload the page`);
  });
});
