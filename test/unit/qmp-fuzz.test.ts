// Throws random bytes and mutated QMP at fresh clients through a real UNIX socket for
// about three seconds. Whatever the peer does, every call must settle in time with a
// result or a QmpError, nothing may escape as an uncaught error, and nothing may leak.
// Reproduce a failure with QMP_FUZZ_SEED=<seed printed in the failure message>.
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { QmpClient } from '../../electron/engine/qmp/client';
import { QmpError, QmpStateError } from '../../electron/engine/qmp/errors';
import { DEFAULT_GREETING, FakeQmpServer, sleep } from '../helpers/fake-qmp-server';
import type { FakeQmpConnection, ReceivedCommand } from '../helpers/fake-qmp-server';
import { Rng } from '../helpers/rng';

const BUDGET_MS = 3000;
const CALL_TIMEOUT_MS = 150;
// Generous slack over the call timeout before we call it a hang (CI machines are slow).
const HANG_AFTER_MS = CALL_TIMEOUT_MS + 1500;
const MAX_MESSAGE_BYTES = 2048;


const SPICY = ['\n', '\r\n', '{', '}', '[', ']', '"', '\\', ',', ':', '\0', 'é', '\u2028', 'null', '{"event":'];

function randomString(rng: Rng): string {
  const pool = ['STOP', 'RESUME', 'id', 'return', 'error', 'ü', '🚀', '\n', '"', '\\', 'x'];
  let s = '';
  for (let i = rng.int(6); i > 0; i--) s += rng.pick(pool);
  return s;
}

function randomJson(rng: Rng, depth = 0): unknown {
  const r = rng.int(depth > 3 ? 5 : 8);
  switch (r) {
    case 0:
      return null;
    case 1:
      return rng.chance(0.5);
    case 2:
      return rng.pick([0, -1, 1.5, 1e308, 2 ** 53 + 1, rng.int(1000)]);
    case 3:
    case 4:
      return randomString(rng);
    case 5: {
      const arr: unknown[] = [];
      for (let i = rng.int(4); i > 0; i--) arr.push(randomJson(rng, depth + 1));
      return arr;
    }
    default: {
      const obj: Record<string, unknown> = {};
      for (let i = rng.int(4); i > 0; i--) obj[rng.pick(['return', 'error', 'id', 'event', 'data', 'class', 'desc', 'QMP', randomString(rng)])] = randomJson(rng, depth + 1);
      return obj;
    }
  }
}

/** Byte-level damage to a valid message. */
function mutateBytes(rng: Rng, text: string): Buffer {
  let b = Buffer.from(text, 'utf8');
  for (let n = 1 + rng.int(3); n > 0; n--) {
    const at = rng.int(b.length + 1);
    switch (rng.int(6)) {
      case 0:
        if (b.length) b[Math.min(at, b.length - 1)] = rng.int(256);
        break;
      case 1:
        b = Buffer.concat([b.subarray(0, at), Buffer.from(rng.pick(SPICY)), b.subarray(at)]);
        break;
      case 2:
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(8)))]);
        break;
      case 3:
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.max(0, at - 10), at), b.subarray(at)]);
        break;
      case 4:
        b = b.subarray(0, at);
        break;
      default:
        b = Buffer.concat([b.subarray(at), b.subarray(0, at)]);
    }
  }
  return b;
}

/** Structurally wrong but syntactically valid variants of a reply. */
function mutateReply(rng: Rng, reply: Record<string, unknown>): Record<string, unknown> {
  const m: Record<string, unknown> = { ...reply };
  switch (rng.int(6)) {
    case 0:
      m.return = randomJson(rng);
      break;
    case 1:
      delete m.id;
      break;
    case 2:
      m.id = randomJson(rng);
      break;
    case 3:
      m.error = randomJson(rng);
      break;
    case 4:
      m.event = randomJson(rng);
      break;
    default:
      delete m.return;
      m.error = { class: randomJson(rng), desc: randomJson(rng) };
  }
  return m;
}

function validReply(rng: Rng, cmd: ReceivedCommand): Record<string, unknown> {
  return rng.chance(0.75)
    ? { return: rng.chance(0.5) ? {} : randomJson(rng), id: cmd.id }
    : { error: { class: rng.pick(['GenericError', 'CommandNotFound']), desc: randomString(rng) }, id: cmd.id };
}

function validEvent(rng: Rng): Record<string, unknown> {
  return {
    event: rng.pick(['STOP', 'RESUME', 'MIGRATION', 'SHUTDOWN']),
    data: rng.chance(0.5) ? {} : { status: rng.pick(['active', 'completed']) },
    timestamp: { seconds: 1_700_000_000, microseconds: rng.int(1_000_000) },
  };
}

async function sendInPieces(rng: Rng, conn: FakeQmpConnection, data: Buffer | string): Promise<void> {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  let at = 0;
  while (at < bytes.length && !conn.isClosed) {
    const size = rng.chance(0.5) ? bytes.length - at : 1 + rng.int(bytes.length - at);
    await conn.sendRawFlushed(bytes.subarray(at, at + size));
    at += size;
    if (rng.chance(0.3)) await sleep(rng.int(3));
  }
}

const line = (obj: unknown): string => `${JSON.stringify(obj)}\r\n`;

/**
 * The misbehaving peer. `chaos` (0..1) is the chance of doing something wrong at each
 * turn, so some rounds are mostly well-behaved and reach real results.
 */
async function drive(rng: Rng, conn: FakeQmpConnection, chaos: number): Promise<void> {
  if (!rng.chance(chaos)) {
    await sendInPieces(rng, conn, line(DEFAULT_GREETING));
  } else {
    const g = rng.int(3);
    if (g === 0) await sendInPieces(rng, conn, mutateBytes(rng, line(DEFAULT_GREETING)));
    else if (g === 1) await sendInPieces(rng, conn, rng.bytes(1 + rng.int(200)));
    // else: say nothing and let the client time out
  }

  for (let step = 10 + rng.int(40); step > 0 && !conn.isClosed; step--) {
    const cmd = conn.takeCommand();
    if (cmd && !rng.chance(chaos)) {
      // Well-behaved answer, sometimes preceded by an event, sometimes in pieces.
      const reply = cmd.execute === 'qmp_capabilities' ? { return: {}, id: cmd.id } : validReply(rng, cmd);
      await sendInPieces(rng, conn, (rng.chance(0.3) ? line(validEvent(rng)) : '') + line(reply));
      continue;
    }
    if (cmd) {
      const a = rng.int(5);
      if (a === 0) await sendInPieces(rng, conn, mutateBytes(rng, line(validReply(rng, cmd))));
      else if (a === 1) conn.send(mutateReply(rng, validReply(rng, cmd)));
      else if (a === 2) conn.send({ return: {}, id: `${String(cmd.id)}-not-mine` });
      else if (a === 3) await sendInPieces(rng, conn, line(validEvent(rng)) + line(validReply(rng, cmd)));
      // else: never answer this one
      continue;
    }
    if (rng.chance(chaos * 0.3)) {
      const r = rng.int(6);
      if (r === 0) await sendInPieces(rng, conn, mutateBytes(rng, line(validEvent(rng))));
      else if (r === 1) await sendInPieces(rng, conn, line(randomJson(rng)));
      else if (r === 2) await sendInPieces(rng, conn, rng.bytes(1 + rng.int(100)));
      else if (r === 3) {
        // Over the client's cap, with or without a newline.
        const big = '{"return": "' + 'z'.repeat(MAX_MESSAGE_BYTES + rng.int(4000)) + '"}';
        await sendInPieces(rng, conn, rng.chance(0.5) ? `${big}\r\n` : big);
      } else if (r === 4) conn.destroy();
      else void conn.end();
    } else if (rng.chance(0.1)) {
      conn.send(validEvent(rng));
    } else {
      await sleep(rng.int(4));
    }
  }
}

const COMMANDS = ['query-status', 'query-migrate', 'stop', 'cont', 'query-version', 'no-such-command'];

interface Outcome {
  what: string;
  kind: 'ok' | 'error' | 'hang';
  error?: unknown;
}

/** Settles to an Outcome; 'hang' if the promise has not settled after HANG_AFTER_MS. */
function observe(what: string, p: Promise<unknown>): Promise<Outcome> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ what, kind: 'hang' }), HANG_AFTER_MS);
    p.then(
      () => {
        clearTimeout(timer);
        resolve({ what, kind: 'ok' });
      },
      (error: unknown) => {
        clearTimeout(timer);
        resolve({ what, kind: 'error', error });
      },
    );
  });
}

/** Waits for p, but at most ms, and leaves no timer behind either way. */
function within(p: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    void p.finally(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Sockets and servers (exact) and timers (the runner's own come and go) keeping the loop alive. */
function handleCounts(): { sockets: Record<string, number>; timers: number } {
  const sockets: Record<string, number> = {};
  let timers = 0;
  for (const r of process.getActiveResourcesInfo()) {
    if (r === 'Timeout') timers++;
    else if (/Pipe|TCP|FSReq/.test(r)) sockets[r] = (sockets[r] ?? 0) + 1;
  }
  return { sockets, timers };
}

async function oneRound(rng: Rng, tally: Map<string, number>, problems: string[]): Promise<void> {
  const server = await FakeQmpServer.create({ greeting: null, autoCapabilities: false });
  const client = new QmpClient({ maxMessageBytes: MAX_MESSAGE_BYTES, defaultTimeoutMs: CALL_TIMEOUT_MS });
  const peerRng = rng.fork();
  const chaos = rng.pick([0, 0.1, 0.3, 0.6, 1]);
  const script = server
    .nextConnection()
    .then((conn) => drive(peerRng, conn, chaos))
    .catch((err: unknown) => problems.push(`fake server script failed: ${String(err)}`));
  const outcomes: Outcome[] = [];
  try {
    outcomes.push(await observe('connect', client.connect(server.path, { timeoutMs: CALL_TIMEOUT_MS })));
    if (client.runstate === 'running') {
      const calls: Array<Promise<Outcome>> = [];
      for (let n = 1 + rng.int(4); n > 0; n--) {
        const cmd = rng.pick(COMMANDS);
        const args = rng.chance(0.3) ? { arg: randomJson(rng) } : undefined;
        calls.push(observe(cmd, client.execute(cmd, args)));
        if (rng.chance(0.3)) await sleep(rng.int(5));
      }
      if (rng.chance(0.5)) calls.push(observe('waitForEvent', client.waitForEvent(rng.pick(['STOP', 'MIGRATION', '*']))));
      outcomes.push(...(await Promise.all(calls)));
    }
  } finally {
    await client.disconnect();
    await server.close();
    // The peer script ends quickly once its socket is gone; don't wait forever if it never got one.
    await within(script, 200);
  }
  if (client.runstate !== 'idle') problems.push(`runstate ${client.runstate} after disconnect`);
  if (client.pendingCount !== 0) problems.push(`${client.pendingCount} calls still pending after disconnect`);
  if (existsSync(server.dir)) problems.push(`temp dir ${server.dir} left behind`);
  for (const o of outcomes) {
    const key = o.kind === 'error' ? `${o.what}: ${(o.error as Error)?.name ?? typeof o.error}` : `${o.what}: ${o.kind}`;
    tally.set(key, (tally.get(key) ?? 0) + 1);
    if (o.kind === 'hang') problems.push(`${o.what} did not settle within ${HANG_AFTER_MS} ms`);
    if (o.kind === 'error' && !(o.error instanceof QmpError)) {
      problems.push(`${o.what} rejected with a non-QmpError: ${String(o.error)}`);
    }
    // A fresh client can only fail to connect for a reason the peer gave, never "wrong state".
    if (o.what === 'connect' && o.error instanceof QmpStateError) {
      problems.push(`connect rejected with a state error: ${o.error.message}`);
    }
  }
}

describe('QMP client fuzz', () => {
  it('survives random and mutated input: every call settles with a result or a QmpError, nothing leaks', async () => {
    const seed = Number(process.env.QMP_FUZZ_SEED ?? (Date.now() % 0x7fff_ffff));
    const rng = new Rng(seed);
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason);
    };
    process.on('unhandledRejection', onUnhandled);
    const before = handleCounts();
    const tally = new Map<string, number>();
    const problems: string[] = [];
    const started = performance.now();
    let rounds = 0;
    try {
      while (performance.now() - started < BUDGET_MS && problems.length === 0) {
        await oneRound(rng, tally, problems);
        rounds++;
      }
      await sleep(50); // let the last closes and timers run out
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    const context = `seed ${seed}, ${rounds} rounds`;
    expect(problems, context).toEqual([]);
    expect(unhandled.map(String), context).toEqual([]);
    const after = handleCounts();
    expect(after.sockets, `open sockets after the fuzz (${context})`).toEqual(before.sockets);
    expect(after.timers, `live timers after the fuzz (${context})`).toBeLessThanOrEqual(before.timers);
    expect(rounds, context).toBeGreaterThan(10);
    // The fuzz is only worth something if it reaches both outcomes.
    const keys = [...tally.keys()];
    expect(keys.some((k) => k.endsWith(': ok') && k !== 'connect: ok'), context).toBe(true);
    expect(keys.some((k) => k.includes('Qmp')), context).toBe(true);
    console.info(`qmp fuzz: ${context}; outcomes ${JSON.stringify(Object.fromEntries([...tally].sort()))}`);
  });
});
