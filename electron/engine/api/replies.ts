// What every front door (the WebSocket, Electron IPC) answers, built in one place: the hello a
// front end hears first, and a command's reply with its error code, so no front end has to read
// the code back out of an error's text.
import { ApiError } from './commands';
import { API_VERSION, type ApiFailure, type ApiReply, type ApiRole, type Hello } from './contract';

export function helloFor(role: ApiRole): Hello {
  return { apiVersion: API_VERSION, role };
}

/** An ApiError keeps its code; anything else the engine threw is 'failed', with its message. */
export function failureReply(err: unknown): ApiFailure {
  const e = err instanceof ApiError ? err : new ApiError('failed', err instanceof Error ? err.message : String(err));
  return { ok: false, error: { message: e.message, code: e.code } };
}

/** Runs `work` and answers with its result or its failure; never rejects. */
export async function replyFor<T>(work: () => T | Promise<T>): Promise<ApiReply<T>> {
  try {
    return { ok: true, result: await work() };
  } catch (err) {
    return failureReply(err);
  }
}
