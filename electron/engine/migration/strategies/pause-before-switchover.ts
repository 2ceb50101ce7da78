import { z } from 'zod';
import { defineStrategy } from './strategy';

export const pauseBeforeSwitchover = defineStrategy({
  name: 'pause-before-switchover',
  title: 'Pause before switchover',
  explanation:
    'A teaching step: pre-copy as usual, but once QEMU has stopped the guest for the switchover it waits (pre-switchover) with the guest paused, so the class can see what remains; "Continue" lets QEMU finish, "Cancel" resumes the guest where it was.',
  capabilities: ['pause-before-switchover'],
  offeredBy: 'QEMU 2.11 and later',
  params: z.object({}).strict(),
  qemuParameters: () => ({ source: {}, destination: {} }),
  figures: [],
});
