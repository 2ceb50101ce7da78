// The IPC channel names, in one place for main and preload.
export const CHANNELS = {
  /** renderer -> main (invoke): one API command; resolves with its result or rejects. */
  call: 'lab:call',
  /** main -> renderer: one API event. */
  event: 'lab:event',
} as const;

/** The app's own origin: the UI is served from a custom protocol, never from file://. */
export const APP_SCHEME = 'miglab';
export const APP_ORIGIN = `${APP_SCHEME}://app`;

/** The window's content security policy: our scripts, our styles, nothing from the network. */
export const APP_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";
