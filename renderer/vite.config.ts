import { resolve } from 'node:path';
import { defineConfig } from 'vite';

// The renderer is browser code only: it talks to the lab through window.lab, never Node.
// Its sources live in renderer/; the bundle goes where Forge's main process looks for it.
export default defineConfig({
  root: import.meta.dirname,
  build: {
    outDir: resolve(import.meta.dirname, '..', '.vite', 'renderer', 'main_window'),
    emptyOutDir: true,
  },
});
