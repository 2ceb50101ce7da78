/** Reads `qemu-system-x86_64 --version`: "QEMU emulator version 10.0.2 (Debian ...)". */
export function parseQemuVersion(output: string): { version: string; major: number; minor: number } | null {
  const m = /QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?/.exec(output);
  if (!m) return null;
  return { version: `${m[1]}.${m[2]}.${m[3] ?? '0'}`, major: Number(m[1]), minor: Number(m[2]) };
}
