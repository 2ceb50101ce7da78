// The IPC channel names, in one place for main and preload.
export const CHANNELS = {
  /** renderer -> main (invoke): the Hello (API version, role), as the WebSocket's first message. */
  hello: 'lab:hello',
  /** renderer -> main (invoke): one API command; resolves with its ApiReply (result, or error and code), never rejects. */
  call: 'lab:call',
  /** main -> renderer: one API event. */
  event: 'lab:event',
} as const;

/** The app's own origin: the UI is served from a custom protocol, never from file://. */
export const APP_SCHEME = 'miglab';
export const APP_ORIGIN = `${APP_SCHEME}://app`;

