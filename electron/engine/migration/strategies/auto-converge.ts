import { z } from 'zod';
import { defineStrategy } from './strategy';

const percent = (what: string) => z.number().int().min(1, `${what} is at least 1 %`).max(99, `${what} is at most 99 %`);

export const autoConverge = defineStrategy({
  name: 'auto-converge',
  title: 'Auto-converge',
  explanation:
    "Pre-copy, and when the guest dirties memory faster than QEMU sends it, QEMU slows the guest's vCPUs down: a first throttle, then more at each pass that does not converge, until the dirty rate falls below the link. It converges at the price of a slower guest during the migration.",
  capabilities: ['auto-converge'],
  offeredBy: 'QEMU 1.6 and later (cpu-throttle-tailslow since 5.1)',
  params: z.object({
    /** cpu-throttle-initial: the first throttle, % (QEMU's default 20). */
    initialPercent: percent('the initial throttle').optional(),
    /** cpu-throttle-increment: added at each pass that does not converge, % (QEMU's default 10). */
    incrementPercent: percent('the throttle increment').optional(),
    /** cpu-throttle-tailslow: near the end, throttle only as much as the dirty rate needs. */
    tailslow: z.boolean().optional(),
    /** max-cpu-throttle: the most it throttles, % (QEMU's default 99). */
    maxPercent: percent('the maximum throttle').optional(),
  }).strict(),
  qemuParameters: (p) => ({
    source: {
      ...(p.initialPercent !== undefined ? { 'cpu-throttle-initial': p.initialPercent } : {}),
      ...(p.incrementPercent !== undefined ? { 'cpu-throttle-increment': p.incrementPercent } : {}),
      ...(p.tailslow !== undefined ? { 'cpu-throttle-tailslow': p.tailslow } : {}),
      ...(p.maxPercent !== undefined ? { 'max-cpu-throttle': p.maxPercent } : {}),
    },
    destination: {},
  }),
  figures: [{ key: 'cpuThrottlePercent', what: "QEMU's cpu-throttle-percentage: how much the guest's vCPUs are slowed down" }],
});
