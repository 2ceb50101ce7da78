import { z } from 'zod';
import { defineStrategy } from './strategy';

export const precopy = defineStrategy({
  name: 'precopy',
  title: 'Pre-copy',
  explanation:
    'QEMU copies all of memory while the guest runs, then again what the guest dirtied meanwhile, pass after pass, and switches over once what remains fits in the downtime limit. It converges only while the link outruns the guest (or its working set fits in the downtime budget).',
  capabilities: [],
  offeredBy: 'every QEMU',
  params: z.object({}).strict(),
  qemuParameters: () => ({ source: {}, destination: {} }),
  figures: [],
});
