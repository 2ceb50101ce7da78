import { defineConfig } from 'vite';

// The main process bundle: Node built-ins and electron stay external (Forge's base config).
export default defineConfig({});
