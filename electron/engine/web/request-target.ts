// Reading what a browser-mode request asks for, when the request comes from anyone on the network:
// every function here takes hostile text and answers null or false rather than throwing.

/** The parts of a request target the server uses: its path and its query parameters. */
export interface RequestTarget {
  pathname: string;
  params: URLSearchParams;
}

/**
 * The path and query of an origin-form target ("/x?y") or an absolute-form one
 * ("http://host/x?y"); null for anything else ("*", "//", "", garbage). A target like "//evil/x"
 * is a path here, never a host: it is parsed against a fixed base, not as a URL of its own.
 */
export function parseRequestTarget(raw: string | undefined): RequestTarget | null {
  if (!raw) return null;
  let url: URL;
  try {
    if (raw.startsWith('/')) url = new URL(`http://target.invalid${raw}`);
    else if (/^https?:\/\//i.test(raw)) url = new URL(raw);
    else return null;
  } catch {
    return null;
  }
  return { pathname: url.pathname, params: url.searchParams };
}

/**
 * Where to send a browser that came with ?token=: the same path and the other parameters, without
 * the token. Always a path on this server: leading slashes collapse to one, so "//evil.example/"
 * cannot become a link to another site.
 */
export function locationWithout(target: RequestTarget, param: string): string {
  const params = new URLSearchParams(target.params);
  params.delete(param);
  const query = params.toString();
  return `/${target.pathname.replace(/^\/+/, '')}${query ? `?${query}` : ''}`;
}

/**
 * Whether a WebSocket's Origin header names this server (the Host the request was sent to). A
 * page from elsewhere, a sandboxed page ("null") and anything unreadable are foreign; no Origin at
 * all (a program, not a browser page) is not.
 */
export function sameOrigin(origin: string | undefined, host: string | undefined): boolean {
  if (origin === undefined) return true;
  if (!host) return false;
  try {
    return new URL(origin).host === host.toLowerCase();
  } catch {
    return false;
  }
}
