// `miglab start` (what `npm start` runs): the desktop window when Electron can open one here;
// otherwise it says why and serves the same UI in browser mode, printing the address.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { webCommand, type WebArgs } from './web';

/** Why the Electron window cannot open on this machine, or null when it can. */
export function electronUnavailable(env: NodeJS.ProcessEnv = process.env): string | null {
  if (!env.DISPLAY && !env.WAYLAND_DISPLAY) return 'there is no display (neither DISPLAY nor WAYLAND_DISPLAY is set)';
  try {
    // The electron package exports the binary's path, and throws when the binary was never downloaded.
    const path = createRequire(import.meta.url)('electron') as unknown;
    if (typeof path !== 'string') return 'the electron package did not give a binary path';
  } catch (err) {
    return `the Electron binary is not installed (${(err as Error).message.split('\n')[0]})`;
  }
  return null;
}

export async function startCommand(args: WebArgs): Promise<number> {
  const why = electronUnavailable();
  if (why === null) {
    const labFile = args.labFile ? resolve(process.env.INIT_CWD ?? process.cwd(), args.labFile) : null;
    const env = { ...process.env, ...(labFile ? { MIGLAB_LAB_FILE: labFile } : {}) };
    const child = spawn('npx', ['electron-forge', 'start'], { stdio: 'inherit', env });
    return new Promise((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
  }
  console.log(`The MigLab window cannot open here: ${why}.`);
  console.log('Serving the same UI in browser mode instead; open the address below in a browser.\n');
  return webCommand(args);
}
