import type { ForgeConfig } from '@electron-forge/shared-types';
import { VitePlugin } from '@electron-forge/plugin-vite';
import { FusesPlugin } from '@electron-forge/plugin-fuses';
import { FuseV1Options, FuseVersion } from '@electron/fuses';

// Electron Forge builds main, preload and renderer with Vite. Linux packages (AppImage, deb)
// are made by electron-builder from the packaged app.
const config: ForgeConfig = {
  packagerConfig: {
    asar: true,
    name: 'MigLab',
    executableName: 'miglab',
  },
  rebuildConfig: {},
  makers: [],
  plugins: [
    new VitePlugin({
      build: [
        { entry: 'electron/main/main.ts', config: 'electron/main/vite.config.ts', target: 'main' },
        { entry: 'electron/preload/preload.ts', config: 'electron/preload/vite.config.ts', target: 'preload' },
      ],
      renderer: [{ name: 'main_window', config: 'renderer/vite.config.ts' }],
    }),
    // Switch off what an attacker could use to turn the app into a general Node runtime. Each
    // fuse is set for Linux, the only packaging target: ASAR integrity validation exists only on
    // macOS and Windows, so it is off rather than claimed; file:// gets no extra privileges
    // because the UI is served from the app:// protocol (electron/main/app-protocol.ts).
    new FusesPlugin({
      version: FuseVersion.V1,
      [FuseV1Options.RunAsNode]: false,
      [FuseV1Options.EnableCookieEncryption]: true,
      [FuseV1Options.EnableNodeOptionsEnvironmentVariable]: false,
      [FuseV1Options.EnableNodeCliInspectArguments]: false,
      [FuseV1Options.EnableEmbeddedAsarIntegrityValidation]: false,
      [FuseV1Options.OnlyLoadAppFromAsar]: true,
      [FuseV1Options.LoadBrowserProcessSpecificV8Snapshot]: false,
      [FuseV1Options.GrantFileProtocolExtraPrivileges]: false,
      // V8's guard-page bounds checks for WebAssembly: Electron's default, kept on purpose.
      [FuseV1Options.WasmTrapHandlers]: true,
    }),
  ],
};

export default config;
