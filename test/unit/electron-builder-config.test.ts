// The Linux packaging configuration, checked by electron-builder's own schema (packaging itself
// needs the Electron binary, which our build machines cannot download).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';

const require = createRequire(import.meta.url);
// app-builder-lib loads its config helpers through jiti, which would leave a cache in the temp
// folder (the run's leak check finds it).
process.env.JITI_FS_CACHE = 'false';
process.env.JITI_CACHE = 'false';
const root = join(import.meta.dirname, '..', '..');

describe('electron-builder.yml', () => {
  it('is a valid electron-builder configuration for AppImage and deb', async () => {
    const config = parse(readFileSync(join(root, 'electron-builder.yml'), 'utf8'));
    const { validateConfiguration } = require('app-builder-lib/out/util/config/config') as {
      validateConfiguration(config: unknown, debug: { add(k: string, v: unknown): void; isEnabled: boolean }): Promise<void>;
    };
    await expect(validateConfiguration(config, { add() {}, isEnabled: false })).resolves.toBeUndefined();
    expect(config.linux.target).toEqual(['AppImage', 'deb']);
    // the deb brings what the lab needs on the machine it runs on
    expect(config.deb.depends).toEqual(expect.arrayContaining(['qemu-system-x86', 'gcc']));
    await expect(validateConfiguration({ ...config, linux: { ...config.linux, colour: 'blue' } }, { add() {}, isEnabled: false })).rejects.toThrow();
  });
});
