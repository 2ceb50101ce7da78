import { resolve } from 'node:path';
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// The renderer is browser code only: it talks to the lab through window.lab, never Node.
// Its sources live in renderer/; the bundle goes where Forge's main process looks for it.
export default defineConfig({
  root: import.meta.dirname,
  plugins: [react()],
  // Served from the page's own origin in browser mode, and from a custom protocol in the app.
  base: './',
  build: {
    outDir: resolve(import.meta.dirname, '..', '.vite', 'renderer', 'main_window'),
    emptyOutDir: true,
    // React, xterm.js and uPlot in one bundle of about 600 kB, loaded once from this machine.
    chunkSizeWarningLimit: 1000,
  },
});
