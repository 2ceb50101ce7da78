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

describe('forge.config.ts fuses', () => {
  it('sets every V1 fuse for Linux: no claims that only hold on macOS or Windows, no file:// privileges', async () => {
    const { FuseV1Options } = await import('@electron/fuses');
    const { default: config } = await import('../../forge.config');
    const plugin = (config.plugins ?? []).find((p) => (p as { name?: string }).name === 'fuses') as { fusesConfig: Record<string, unknown> } | undefined;
    expect(plugin, 'forge.config.ts has a FusesPlugin').toBeDefined();
    const fuses = plugin!.fusesConfig;
    // Every fuse this @electron/fuses knows is decided on purpose, not left to its default.
    const known = Object.values(FuseV1Options).filter((v): v is number => typeof v === 'number');
    expect(known.filter((i) => typeof fuses[i] !== 'boolean').map((i) => FuseV1Options[i])).toEqual([]);
    expect(fuses[FuseV1Options.RunAsNode]).toBe(false);
    expect(fuses[FuseV1Options.EnableNodeOptionsEnvironmentVariable]).toBe(false);
    expect(fuses[FuseV1Options.EnableNodeCliInspectArguments]).toBe(false);
    expect(fuses[FuseV1Options.OnlyLoadAppFromAsar]).toBe(true);
    // ASAR integrity is validated on macOS and Windows only: on Linux the fuse would be a false promise.
    expect(fuses[FuseV1Options.EnableEmbeddedAsarIntegrityValidation]).toBe(false);
    // The UI comes from app://, so file:// needs nothing extra.
    expect(fuses[FuseV1Options.GrantFileProtocolExtraPrivileges]).toBe(false);
  });
});
