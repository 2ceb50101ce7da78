#!/usr/bin/env node
// The `miglab` bin: loads the TypeScript CLI through tsx, so there is no build step to forget.
import { register } from 'tsx/esm/api';

register();
await import('../electron/cli/main.ts');
