// A compromised agent for tests: a real `miglab agent` behind a TLS WebSocket of another identity
// that passes every frame through both ways, except that it rewrites what the agent says about
// its guests (a real agent cannot be made to lie). The engine pins this proxy's certificate.
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer, type RawData } from 'ws';
import { loadOrCreateAgentIdentity } from '../../electron/engine/tls/certs';
import type { AgentProcess } from './agents';

export type DescriptorRewrite = (descriptor: Record<string, unknown>) => unknown;

export interface LyingAgent {
  url: string;
  fingerprint: string;
  /** What descriptors become on their way to the engine (default: as the agent sent them). */
  rewrite: DescriptorRewrite;
  /** Extra descriptors the proxy adds to every answer to "guests". */
  extraGuests: unknown[];
  close(): Promise<void>;
}

const isDescriptor = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && 'handle' in v && 'spec' in v && 'state' in v;

/** Starts the proxy in front of `agent`, its identity kept in `dir`. */
export async function startLyingAgent(agent: AgentProcess, dir: string): Promise<LyingAgent> {
  const identity = await loadOrCreateAgentIdentity(dir, { commonName: 'lying-agent', ipAddresses: ['127.0.0.1'] });
  const https: Server = createServer({ key: identity.keyPem, cert: identity.certPem, minVersion: 'TLSv1.3' });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const sockets = new Set<WebSocket>();
  const guestsRequests = new Set<number>();
  const lying: LyingAgent = {
    url: '',
    fingerprint: identity.fingerprint,
    rewrite: (d) => d,
    extraGuests: [],
    close: async () => {
      for (const s of sockets) s.terminate();
      wss.close();
      await new Promise<void>((resolve) => https.close(() => resolve()));
    },
  };

  const falsify = (text: string): string => {
    const msg = JSON.parse(text) as { t: string; id?: number; ok?: boolean; result?: unknown; event?: string; data?: unknown };
    if (msg.t === 'res' && msg.ok && msg.id !== undefined) {
      if (Array.isArray(msg.result)) {
        msg.result = msg.result.map((d) => (isDescriptor(d) ? lying.rewrite(d) : d));
        if (guestsRequests.delete(msg.id)) msg.result = [...(msg.result as unknown[]), ...lying.extraGuests];
      } else if (isDescriptor(msg.result)) {
        msg.result = lying.rewrite(msg.result);
      }
    }
    if (msg.t === 'evt' && msg.event === 'guest-started' && isDescriptor(msg.data)) msg.data = lying.rewrite(msg.data);
    return JSON.stringify(msg);
  };

  https.on('upgrade', (req, socket, head) => {
    const upstream = new WebSocket(agent.info.url, { rejectUnauthorized: false, headers: { authorization: req.headers.authorization ?? '' }, perMessageDeflate: false });
    sockets.add(upstream);
    // Frames from the agent before the engine's side is open wait here.
    let engine: WebSocket | null = null;
    const early: Array<[RawData, boolean]> = [];
    const toEngine = (data: RawData, binary: boolean) => {
      const out = binary ? data : Buffer.from(falsify(data.toString()));
      if (!engine) early.push([out, binary]);
      else if (engine.readyState === WebSocket.OPEN) engine.send(out, { binary });
    };
    upstream.on('message', toEngine);
    upstream.once('unexpected-response', (_q, res) => {
      socket.end(`HTTP/1.1 ${res.statusCode} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      upstream.terminate();
    });
    upstream.on('error', () => socket.destroy());
    upstream.once('open', () => {
      wss.handleUpgrade(req, socket, head, (ws) => {
        engine = ws;
        sockets.add(ws);
        for (const [data, binary] of early.splice(0)) ws.send(data, { binary });
        ws.on('message', (data, binary) => {
          if (!binary) {
            const msg = JSON.parse(data.toString()) as { t: string; id: number; method?: string };
            if (msg.t === 'req' && msg.method === 'guests') guestsRequests.add(msg.id);
          }
          if (upstream.readyState === WebSocket.OPEN) upstream.send(data, { binary });
        });
        const end = () => {
          ws.close();
          upstream.close();
          sockets.delete(ws);
          sockets.delete(upstream);
        };
        ws.on('close', end);
        upstream.on('close', end);
        ws.on('error', end);
      });
    });
  });
  await new Promise<void>((resolve) => https.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
  lying.url = `wss://127.0.0.1:${(https.address() as AddressInfo).port}/v1/agent`;
  return lying;
}
