import { setTimeout as delay } from 'node:timers/promises';

export { delay };

/** Milliseconds on a monotonic clock (never jumps with the wall clock). */
export function nowMs(): number {
  return performance.now();
}

export class TimeoutError extends Error {
  constructor(what: string, timeoutMs: number) {
    super(`${what} did not happen within ${Math.round(timeoutMs)} ms`);
    this.name = 'TimeoutError';
  }
}

/** Rejects with a TimeoutError naming `what` unless `p` settles first. */
export async function withTimeout<T>(p: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(what, timeoutMs)), timeoutMs);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
