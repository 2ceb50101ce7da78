import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Reads `qemu-system-x86_64 --version`: "QEMU emulator version 10.0.2 (Debian ...)". */
export function parseQemuVersion(output: string): { version: string; major: number; minor: number } | null {
  const m = /QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?/.exec(output);
  if (!m) return null;
  return { version: `${m[1]}.${m[2]}.${m[3] ?? '0'}`, major: Number(m[1]), minor: Number(m[2]) };
}

/**
 * Runs `path --version` and reads it. Throws an Error whose message says what went wrong (the
 * callers wrap it in their own error kind).
 */
export async function readQemuVersion(path: string): Promise<{ version: string; major: number; minor: number }> {
  let out: string;
  try {
    out = (await run(path, ['--version'], { timeout: 10_000 })).stdout;
  } catch (err) {
    throw new Error(`${path} --version failed (${(err as Error).message.split('\n')[0]})`);
  }
  const v = parseQemuVersion(out);
  if (!v) throw new Error(`${path} printed an unknown version: ${out.trim().slice(0, 80)}`);
  return v;
}
