import { defineConfig } from 'vite';

// The renderer is browser code only: it talks to the lab through window.lab, never Node.
export default defineConfig({
  root: 'renderer',
});
