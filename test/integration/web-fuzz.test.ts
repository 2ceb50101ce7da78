// Browser mode against hostile HTTP: a real `miglab web` process on loopback, sent malformed
// request lines, odd request targets, poisoned headers, bad WebSocket upgrades, pipelined and
// half-closed connections, as raw bytes. It must answer every request, never hang, stay up and
// keep its memory. A crash would end the process, which the test sees.
//
// Reproduce a failure with WEB_FUZZ_SEED=<seed printed at the start> (WEB_FUZZ_MS sets how long
// the fuzzing runs, 20 s by default).
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';
import { expectScopeClean } from '../helpers/lab';
import { clientFrame, exchange, parseResponses, upgradeRequest } from '../helpers/raw-http';
import { Rng } from '../helpers/rng';
import { apiCall, rssBytes, startWebCli, stopWebCli, type WebCli } from '../helpers/web-cli';

const SEED = Number(process.env.WEB_FUZZ_SEED) || (Math.random() * 0xffff_ffff) >>> 0;
const FUZZ_MS = Number(process.env.WEB_FUZZ_MS) || 20_000;
const WHY = `(WEB_FUZZ_SEED=${SEED})`;
/** Connections open at once. */
const WORKERS = 8;
/**
 * How much the server's RSS may grow over the whole fuzz. It keeps nothing per connection once it
 * is closed, so what grows is V8's heap settling to the load (measured: 10-25 MiB over 20 s on
 * this machine). A leak of the 64 KiB headers or targets the fuzz sends (a few thousand of them)
 * would be hundreds of MiB; a leak of a kilobyte per request, over 20,000 requests, 20 MiB on top.
 */
const RSS_GROWTH_BOUND = 64 * 2 ** 20;
/** Statuses a request may get. 500 is not one: it means a handler threw. */
const ALLOWED = new Set([101, 200, 303, 400, 401, 403, 404, 405, 413, 414, 426, 431, 501, 503, 505]);

let work: string;
let run: string;
let web: WebCli;
let cookieName: string;

beforeAll(async () => {
  work = await makeTempDir('it-webfuzz');
  run = join(work, 'run');
  await mkdir(run);
  web = await startWebCli(['--port', '0'], { MIGLAB_RUNTIME_DIR: run, MIGLAB_STATE_DIR: join(work, 'state') });
  const r = await fetch(web.info.url, { redirect: 'manual' });
  cookieName = /^(miglab_[0-9a-f]+)=/.exec(r.headers.get('set-cookie') ?? '')?.[1] ?? 'miglab_unknown';
});

afterAll(async () => {
  expect(await stopWebCli(web)).toBe(0);
  await expectScopeClean(run);
  await removeDir(work);
});

function alive(): boolean {
  return web.child.exitCode === null && web.child.signalCode === null;
}

/** The teacher still gets answers: a snapshot over a fresh WebSocket. */
async function expectServing(): Promise<void> {
  expect(alive(), `miglab web exited; stderr: ${web.err()}`).toBe(true);
  const m = await apiCall(`ws://127.0.0.1:${web.port}`, web.info.token, { type: 'snapshot' });
  expect(m).toMatchObject({ ok: true, result: { apiVersion: 1 } });
}

/** For exchange(): half-close once the first answer came. */
const answered = (d: Buffer) => parseResponses(d).length >= 1;

function request(line: string, headers: string[] = [`Host: 127.0.0.1:${web?.port}`]): Buffer {
  return Buffer.from(`${line}\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n`, 'latin1');
}

describe('miglab web: requests that used to kill it', () => {
  it('answers a "//" request target (curl --path-as-is .../) and keeps serving', async () => {
    for (const [line, auth, status] of [
      ['GET // HTTP/1.1', null, 401],
      ['GET // HTTP/1.1', `Authorization: Bearer ${web.info.token}`, 404],
      [`GET //?token=${web.info.token} HTTP/1.1`, null, 303],
    ] as const) {
      const headers = [`Host: 127.0.0.1:${web.port}`, ...(auth ? [auth] : [])];
      const ex = await exchange(web.port, [request(line, headers)], { until: answered });
      const [res] = parseResponses(ex.data);
      expect(res?.status, line).toBe(status);
      // The browser goes to this server's own root, never to a host named in the target.
      if (status === 303) expect(res!.headers.location).toBe('/');
      expect(ex.closed).toBe(true);
    }
    await expectServing();
  });

  it('refuses a WebSocket upgrade with Origin: null (or garbage) with 403 and keeps serving', async () => {
    for (const origin of ['null', '::::', 'http://[', 'http://evil.example']) {
      const ex = await exchange(web.port, [Buffer.from(upgradeRequest(web.port, `/api?token=${web.info.token}`, { origin }))], { until: answered });
      expect(parseResponses(ex.data)[0]?.status, origin).toBe(403);
      expect(ex.closed).toBe(true);
    }
    await expectServing();
  });

  it('answers "*", absolute-form, CONNECT and a 64 KiB target, and keeps serving', async () => {
    const cases: Array<[Buffer, number]> = [
      [request('OPTIONS * HTTP/1.1'), 400],
      [request(`GET http://127.0.0.1:${web.port}/?token=${web.info.token} HTTP/1.1`), 303],
      [request('GET https://evil.example/ HTTP/1.1'), 401],
      [request(`CONNECT 127.0.0.1:${web.port} HTTP/1.1`), 405],
      [request(`GET /${'a'.repeat(64 * 1024)} HTTP/1.1`), 431],
    ];
    for (const [bytes, status] of cases) {
      const ex = await exchange(web.port, [bytes], { until: answered });
      expect(parseResponses(ex.data)[0]?.status, bytes.subarray(0, 60).toString('latin1')).toBe(status);
      expect(ex.closed).toBe(true);
    }
    await expectServing();
  });
});

// ---- the fuzz ----

/** One request of a connection: its bytes, and what the server owes it. */
interface FuzzRequest {
  bytes: Buffer;
  head: boolean;
  /** Made of valid parts only (what the server makes of it is another matter). */
  wellFormed: boolean;
  /** Ends the connection once answered (an upgrade, Connection: close, HTTP/1.0, "*"). */
  last: boolean;
}

class Fuzz {
  constructor(
    private readonly rng: Rng,
    private readonly port: number,
    private readonly teacher: string,
    private readonly spectator: string,
  ) {}

  private token(): string {
    return this.rng.pick([this.teacher, this.spectator, 'wrong', '', this.teacher.slice(1), `${this.teacher}x`]);
  }

  private target(): { text: string; valid: boolean } {
    const r = this.rng;
    const t = this.token();
    const valid = [
      '/', '//', '///x', '/api', '/assets/', '/index.html', `/?token=${t}`, `/x/y?a=1&token=${t}&b=2`, `//evil.example/?token=${t}`,
      '/%2e%2e/%2e%2e/etc/passwd', '/%00', '/%', '/%E0%A4%A', '/..\\..\\x', `/?token=${'A'.repeat(r.int(4000))}`, '/?token=%ZZ',
      `http://127.0.0.1:${this.port}/?token=${t}`, 'https://evil.example/', 'http://[::1]/api', '/?a=%00&token=',
    ];
    if (r.chance(0.1)) return { text: '*', valid: true };
    if (r.chance(0.03)) return { text: `/${'a'.repeat(64 * 1024)}`, valid: false }; // over Node's header limit: 431
    if (r.chance(0.1)) return { text: r.pick(['abc', '', 'http://', '://x', '\\\\x', 'http://x:99999/', '/a b']), valid: false };
    if (r.chance(0.05)) return { text: r.bytes(1 + r.int(40)).toString('latin1'), valid: false };
    return { text: r.pick(valid), valid: true };
  }

  private headers(): { lines: string[]; valid: boolean; last: boolean; body: string } {
    const r = this.rng;
    const t = this.token();
    const lines: string[] = [];
    let valid = true;
    let last = false;
    let body = '';
    if (!r.chance(0.05)) lines.push(`Host: 127.0.0.1:${this.port}`);
    else valid = false; // Node answers a missing Host with 400 and closes
    if (r.chance(0.05)) {
      lines.push('Host: evil.example');
      valid = false;
    }
    const n = r.int(5);
    for (let i = 0; i < n; i++) {
      switch (r.int(9)) {
        case 0:
          lines.push(`Origin: ${r.pick(['null', 'http://evil.example', '::::', 'http://[', `http://127.0.0.1:${this.port}`, '', '\u00ff\u00fe'])}`);
          break;
        case 1: {
          const cookie = r.pick([`${cookieName}=${t}`, '=;;=;a', `${cookieName}=`, `${cookieName}=${t}; ${cookieName}=wrong`, 'x=y; miglab_token=z']);
          if (r.chance(0.05)) {
            lines.push(`Cookie: ${'c'.repeat(64 * 1024)}`); // 431
            valid = false;
          } else lines.push(`Cookie: ${cookie}`);
          break;
        }
        case 2:
          lines.push(`Authorization: ${r.pick([`Bearer ${t}`, 'Bearer ', 'Basic Zm9vOmJhcg==', `Bearer ${'x'.repeat(8000)}`, 'Bearer\t'])}`);
          break;
        case 3:
          // An upgrade: good or bad, it is the connection's last request.
          lines.push('Connection: Upgrade', 'Upgrade: websocket');
          if (r.chance(0.7)) lines.push(`Sec-WebSocket-Key: ${r.pick(['dGhlIHNhbXBsZSBub25jZQ==', '!!!', '', 'short'])}`);
          if (r.chance(0.7)) lines.push(`Sec-WebSocket-Version: ${r.pick(['13', '8', 'x'])}`);
          last = true;
          break;
        case 4:
          lines.push('Connection: close');
          last = true;
          break;
        case 5: {
          const kind = r.int(4);
          if (kind === 0) {
            lines.push('Content-Length: 5');
            body = 'hello';
          } else if (kind === 1) {
            lines.push('Transfer-Encoding: chunked');
            body = '5\r\nhello\r\n0\r\n\r\n';
          } else {
            lines.push(r.pick(['Content-Length: -1', 'Content-Length: 99999999999999999999', 'Transfer-Encoding: zz']));
            if (kind === 3) lines.push('Content-Length: 3');
            valid = false;
          }
          break;
        }
        case 6:
          lines.push(r.pick(['no colon here', 'X-Nul: a\u0000b', ' leading-space: x', 'X: \u00e9\u00e8']));
          valid = false;
          break;
        case 7:
          lines.push(`X-Filler: ${'f'.repeat(r.int(2000))}`);
          break;
        default:
          lines.push(`Accept: ${r.pick(['*/*', 'text/html', ''])}`);
      }
    }
    // Body framing given twice (both kinds, or one of them repeated) is refused by Node's parser,
    // which then ends the connection (seed 1986010045: two "Transfer-Encoding: chunked").
    const framing = lines.filter((l) => l.startsWith('Transfer-Encoding') || l.startsWith('Content-Length'));
    if (framing.length > 1) valid = false;
    return { lines, valid, last, body };
  }

  request(): FuzzRequest {
    const r = this.rng;
    const good = ['GET', 'GET', 'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS'];
    const method = r.chance(0.9) ? r.pick(good) : r.pick(['FOO', 'get', 'G E T', '', 'CONNECT', '\u0000']);
    const methodValid = good.includes(method);
    const target = this.target();
    const version = r.chance(0.92) ? 'HTTP/1.1' : r.pick(['HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1x', 'FOO', '']);
    const h = this.headers();
    const eol = r.chance(0.03) ? '\n' : '\r\n';
    const text = `${method} ${target.text} ${version}${eol}${h.lines.map((l) => `${l}${eol}`).join('')}${eol}${h.body}`;
    const wellFormed = methodValid && target.valid && (version === 'HTTP/1.1' || version === 'HTTP/1.0') && h.valid && eol === '\r\n';
    const last = h.last || version === 'HTTP/1.0' || target.text === '*';
    return { bytes: Buffer.from(text, 'latin1'), head: method === 'HEAD', wellFormed, last };
  }

  /** A spectator's WebSocket sent frames of garbage and half-valid JSON after its upgrade. */
  wsGarbage(): Buffer[] {
    const r = this.rng;
    const frames: Buffer[] = [Buffer.from(upgradeRequest(this.port, `/api?token=${this.spectator}`))];
    for (let i = 0, n = 1 + r.int(6); i < n; i++) {
      frames.push(
        r.pick<() => Buffer>([
          () => clientFrame(JSON.stringify({ id: r.int(100), command: { type: r.pick(['snapshot', 'consoleHistory', 'exportLab', 'startGuest', 'nope']), guest: 'x' } })),
          () => clientFrame(r.bytes(r.int(300))),
          () => clientFrame(r.bytes(r.int(300)), 0x2),
          () => r.bytes(1 + r.int(50)), // not a frame at all
          () => clientFrame('{"id": 1e400, "command": null}'),
        ])(),
      );
    }
    return frames;
  }
}

interface Tally {
  requests: number;
  connections: number;
  answers: number;
  statuses: Map<number, number>;
  resets: number;
}

async function oneConnection(fuzz: Fuzz, rng: Rng, tally: Tally): Promise<void> {
  const mode = rng.int(20);
  tally.connections++;
  if (mode === 0) {
    // Upgrade, then WebSocket frames of garbage: the server answers 101 and ends the connection.
    const ex = await exchange(web.port, fuzz.wsGarbage(), { timeoutMs: 8000, until: answered });
    tally.requests++;
    const [res] = parseResponses(ex.data);
    expect(res?.status, `ws garbage: ${JSON.stringify(ex.data.subarray(0, 200).toString("latin1"))} ${ex.error} ${WHY}`).toBe(101);
    expect(ex.closed, `ws garbage: the server did not close ${WHY}`).toBe(true);
    tally.answers++;
    tally.statuses.set(101, (tally.statuses.get(101) ?? 0) + 1);
    return;
  }
  // A pipeline stops at the first request that may end the connection (malformed, an upgrade,
  // Connection: close): bytes sent after the server decided to close make its kernel reset the
  // connection, and a reset may destroy the answer before we read it. TCP, not the server.
  const reqs: FuzzRequest[] = [];
  for (let i = 0, n = rng.chance(0.3) ? 2 + rng.int(4) : 1; i < n; i++) {
    const q = fuzz.request();
    reqs.push(q);
    if (q.last || !q.wellFormed) break;
  }
  const bytes = Buffer.concat(reqs.map((q) => q.bytes));
  tally.requests += reqs.length;
  if (mode === 1) {
    // Sent, then reset without reading: nothing to check but that the server lives on.
    await exchange(web.port, [bytes], { halfClose: false, timeoutMs: 50 });
    tally.resets++;
    return;
  }
  let chunks: Buffer[] = [bytes];
  // Every request is owed an answer. But Node's parser reads ahead: a malformed last request gets
  // a 400 and the connection closes, which may cut the answers to those before it. Then the
  // connection is owed one answer at least (theirs, or the 400).
  let owed = reqs.at(-1)!.wellFormed ? reqs.length : 1;
  let halfClose = false;
  if (mode === 2) {
    // Cut short anywhere, then half-closed: Node drops what is still in flight when the client
    // says it is done (its http server does not allow half-open), so only a request cut before
    // its end is owed an answer: 400, as the end of the stream breaks it.
    const cut = 1 + rng.int(bytes.length - 1);
    chunks = [bytes.subarray(0, cut)];
    owed = cut < reqs[0]!.bytes.length ? 1 : 0;
    halfClose = true;
  } else if (mode === 3) {
    // Dribbled in small pieces.
    chunks = [];
    for (let at = 0; at < bytes.length; ) {
      const n = 1 + rng.int(200);
      chunks.push(bytes.subarray(at, at + n));
      at += n;
    }
  }
  const heads = reqs.map((q) => q.head);
  // We stay open until the answers owed came, then half-close: the server must then close too.
  const ex = await exchange(web.port, chunks, { timeoutMs: 8000, ...(halfClose ? {} : { until: (d: Buffer) => parseResponses(d, heads).length >= owed }) });
  const responses = parseResponses(ex.data, reqs.map((q) => q.head));
  // What failed, short enough to read: each request's first lines, and the statuses it got.
  const shown = `${reqs.map((q) => q.bytes.toString('latin1').split('\r\n').slice(0, 8).map((l) => l.slice(0, 80)).join('|')).join(' ++ ')} => ${responses.map((x) => x.status).join(',')}`;
  expect(ex.closed, `the server kept a half-closed connection open ${WHY}: ${JSON.stringify(shown)}`).toBe(true);
  expect(responses.length, `answers to ${JSON.stringify(shown)} (mode ${mode}) ${WHY}`).toBeGreaterThanOrEqual(owed);
  for (const res of responses) {
    expect(ALLOWED.has(res.status), `status ${res.status} for ${JSON.stringify(shown)} ${WHY}`).toBe(true);
    tally.statuses.set(res.status, (tally.statuses.get(res.status) ?? 0) + 1);
  }
  tally.answers += responses.length;
}

describe('miglab web: HTTP fuzz', () => {
  it(`answers every request, stays up and keeps its memory ${WHY}`, async () => {
    console.log(`web fuzz: WEB_FUZZ_SEED=${SEED} WEB_FUZZ_MS=${FUZZ_MS}`);
    const fuzz = new Fuzz(new Rng(SEED), web.port, web.info.token, web.spectatorToken);
    // Warm up first, so the baseline is the server's working size rather than its idle size.
    for (let i = 0; i < 50; i++) await oneConnection(fuzz, new Rng(SEED + i), { requests: 0, connections: 0, answers: 0, statuses: new Map(), resets: 0 });
    const before = await rssBytes(web.child.pid!);
    const tally: Tally = { requests: 0, connections: 0, answers: 0, statuses: new Map(), resets: 0 };
    const end = performance.now() + FUZZ_MS;
    const root = new Rng(SEED ^ 0x5eed);
    await Promise.all(
      Array.from({ length: WORKERS }, async () => {
        const rng = root.fork();
        while (performance.now() < end && alive()) await oneConnection(new Fuzz(rng, web.port, web.info.token, web.spectatorToken), rng, tally);
      }),
    );
    const after = await rssBytes(web.child.pid!);
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    console.log(
      `web fuzz: ${tally.requests} requests over ${tally.connections} connections (${tally.resets} reset unread), ${tally.answers} answers; ` +
        `statuses ${JSON.stringify(Object.fromEntries([...tally.statuses].sort((a, b) => a[0] - b[0])))}; ` +
        `RSS before ${mib(before)} MiB, after ${mib(after)} MiB (bound: +${mib(RSS_GROWTH_BOUND)} MiB)`,
    );
    await expectServing();
    expect(tally.connections).toBeGreaterThan(500);
    expect(after, `RSS grew from ${mib(before)} to ${mib(after)} MiB ${WHY}`).toBeLessThan(before + RSS_GROWTH_BOUND);
  }, FUZZ_MS + 90_000);
});
