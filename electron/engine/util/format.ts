// How MigLab writes its figures, the same in the CLI, the app and the browser: pure, with no Node
// imports, so the renderer can use it through the API contract.
// A figure nobody measured (null) shows as "n/a", never as 0.

/** 40.0 MB/s (10^6 bytes, as max-bandwidth is given in MigLab). */
export function formatBytesRate(bps: number | null): string {
  if (bps === null || !Number.isFinite(bps)) return 'n/a';
  return `${(bps / 1e6).toFixed(1)} MB/s`;
}

/** 12.0 MB (10^6 bytes). */
export function formatBytes(bytes: number | null): string {
  if (bytes === null || !Number.isFinite(bytes)) return 'n/a';
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** 350 ms below a second, 1.2 s above. */
export function formatMs(ms: number | null): string {
  if (ms === null || !Number.isFinite(ms)) return 'n/a';
  const rounded = Math.round(ms);
  // 999.7 would round to "1000 ms": switch to seconds where the rounding lands, not before.
  if (Math.abs(rounded) < 1000) return `${rounded} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}
