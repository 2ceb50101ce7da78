import { z } from 'zod';
import { defineStrategy } from './strategy';

export const multifd = defineStrategy({
  name: 'multifd',
  title: 'Multifd',
  explanation:
    "Pre-copy over several TCP connections at once, each fed by its own thread, optionally compressing pages (zlib, zstd). It helps when one connection or one core is the limit, not the link; compression trades the source's CPU for bytes on the wire.",
  capabilities: ['multifd'],
  offeredBy: 'QEMU 4.0 and later (compression since 5.0)',
  params: z.object({
    /** multifd-channels (QEMU's default 2). */
    channels: z.number().int().min(1, 'multifd needs at least 1 channel').max(255, 'multifd takes at most 255 channels').optional(),
    /** multifd-compression on both sides (QEMU's default none). */
    compression: z.enum(['none', 'zlib', 'zstd'], { error: 'multifd compression is none, zlib or zstd' }).optional(),
  }).strict(),
  qemuParameters: (p) => {
    // Both QEMUs must agree on the channels and the compression.
    const both = {
      ...(p.channels !== undefined ? { 'multifd-channels': p.channels } : {}),
      ...(p.compression !== undefined ? { 'multifd-compression': p.compression } : {}),
    };
    return { source: both, destination: both };
  },
  figures: [{ key: 'multifdBytes', what: "QEMU's ram.multifd-bytes: the memory sent over the multifd channels" }],
});
