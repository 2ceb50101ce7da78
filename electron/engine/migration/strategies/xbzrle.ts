import { z } from 'zod';
import { defineStrategy } from './strategy';

export const xbzrle = defineStrategy({
  name: 'xbzrle',
  title: 'XBZRLE',
  explanation:
    'Pre-copy that remembers the pages it sent in a cache and, when a page is dirtied again, sends only what changed in it (a delta). A guest that rewrites a few bytes of many pages then costs the link far less; a guest that rewrites whole pages, or more pages than the cache holds, gains nothing (cache misses, overflows).',
  capabilities: ['xbzrle'],
  offeredBy: 'QEMU 1.6 and later',
  params: z.object({
    /** xbzrle-cache-size in MiB (QEMU's default 64). */
    cacheMiB: z.number().int().min(1, 'the XBZRLE cache is at least 1 MiB').max(65_536, 'the XBZRLE cache is at most 65536 MiB').optional(),
  }).strict(),
  qemuParameters: (p) => ({ source: p.cacheMiB !== undefined ? { 'xbzrle-cache-size': p.cacheMiB * 2 ** 20 } : {}, destination: {} }),
  figures: [{ key: 'xbzrle', what: "QEMU's xbzrle-cache: bytes sent as deltas, cache misses and overflows, and the encoding rate" }],
});
