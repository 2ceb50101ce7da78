// The engine's side of the handshake with an agent: TLS to the agent's address, its certificate
// checked against the pinned fingerprint BEFORE the token is sent, then the WebSocket.
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import WebSocket from 'ws';
import { normalizeFingerprint } from '../../tls/certs';
import { AGENT_MAX_MESSAGE_BYTES, AGENT_PROTOCOL_VERSION, AGENT_WS_PATH, type HelloReply } from './protocol';
import { RpcPeer } from './rpc';

export interface AgentAddress {
  /** wss://HOST:PORT (the path is the agent's, whatever is given). */
  url: string;
  token: string;
  /** SHA-256 of the agent's certificate, as `miglab agent` printed it. */
  fingerprint: string;
}

export class AgentConnectError extends Error {
  constructor(
    readonly kind: 'unreachable' | 'fingerprint' | 'unauthorized' | 'refused' | 'protocol',
    message: string,
  ) {
    super(message);
    this.name = 'AgentConnectError';
  }
}

export function parseAgentUrl(url: string): { host: string; port: number } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new AgentConnectError('refused', `"${url}" is not an agent address: write it as wss://HOST:PORT, as "miglab agent" prints it`);
  }
  if (u.protocol !== 'wss:') throw new AgentConnectError('refused', `Agent address "${url}" must start with wss:// (the agent speaks only TLS)`);
  const port = Number(u.port || 443);
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port };
}

/** A TLS connection whose certificate has exactly the pinned fingerprint, or an error saying so. */
function pinnedTls(host: string, port: number, fingerprint: string, timeoutMs: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // The chain is not checked (the agent's certificate is self-signed); the pin replaces it.
    const sock = tlsConnect({ host, port, rejectUnauthorized: false, minVersion: 'TLSv1.3', ALPNProtocols: ['http/1.1'] });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new AgentConnectError('unreachable', `The agent at ${host}:${port} did not answer within ${timeoutMs} ms: is it running, and is the address right?`));
    }, timeoutMs);
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      const seen = sock.getPeerCertificate().fingerprint256;
      if (!seen || seen.toUpperCase() !== fingerprint) {
        sock.destroy();
        reject(
          new AgentConnectError(
            'fingerprint',
            `The agent at ${host}:${port} presented a certificate with fingerprint ${seen ?? '(none)'}, not the pinned ${fingerprint}. ` +
              'Either the agent made a new identity (its data dir was reset) or something else answers at that address. ' +
              'If you trust the change, add the host again with the new fingerprint that its "miglab agent" printed.',
          ),
        );
        return;
      }
      resolve(sock);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new AgentConnectError('unreachable', `Cannot reach the agent at ${host}:${port}: ${err.code ?? err.message}`));
    });
  });
}

/** Connects, authenticates with the token and says hello; resolves with the live peer. */
export async function connectAgent(addr: AgentAddress, opts: { timeoutMs?: number; name?: string } = {}): Promise<{ peer: RpcPeer; hello: HelloReply }> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const { host, port } = parseAgentUrl(addr.url);
  const fingerprint = normalizeFingerprint(addr.fingerprint);
  const sock = await pinnedTls(host, port, fingerprint, timeoutMs);
  const ws = new WebSocket(`wss://${host.includes(':') ? `[${host}]` : host}:${port}${AGENT_WS_PATH}`, {
    createConnection: () => sock,
    headers: { authorization: `Bearer ${addr.token}` },
    maxPayload: AGENT_MAX_MESSAGE_BYTES,
    handshakeTimeout: timeoutMs,
    perMessageDeflate: false,
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('unexpected-response', (_req, res) => {
      const code = res.statusCode ?? 0;
      if (code === 401) {
        ws.terminate();
        reject(new AgentConnectError('unauthorized', `The agent at ${host}:${port} refused the token (401): it is wrong or was revoked. Ask the agent for a new one ("miglab agent token new").`));
        return;
      }
      // The agent says why in a line of text (a connection limit, say): passed on, cut short.
      let why = '';
      const done = () => {
        clearTimeout(timer);
        ws.terminate();
        const text = why.replace(/[^\x20-\x7e]+/g, ' ').trim().slice(0, 300);
        reject(new AgentConnectError('refused', `The agent at ${host}:${port} answered ${code} to the connection${text ? `: ${text}` : ''}`));
      };
      const timer = setTimeout(done, 1000);
      res.on('data', (d: Buffer) => (why += d.toString('latin1')));
      res.once('end', done);
      res.once('error', done);
    });
    ws.once('error', (err) => reject(new AgentConnectError('unreachable', `The agent at ${host}:${port}: ${err.message}`)));
  });
  const peer = new RpcPeer(ws, { name: opts.name ?? `agent ${host}:${port}`, timeoutMs: 30_000 });
  try {
    const hello = await peer.request<HelloReply>('hello', { protocol: AGENT_PROTOCOL_VERSION, client: 'miglab-engine' }, timeoutMs);
    return { peer, hello };
  } catch (err) {
    peer.close();
    throw new AgentConnectError('protocol', (err as Error).message);
  }
}
