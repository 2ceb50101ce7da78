// What a host's CPU is, as its kernel describes it: a "host" CPU model copies it into the guest,
// so the pre-flight check compares the two hosts' CPUs before such a guest moves.
import { readFile } from 'node:fs/promises';
import type { HostCpu } from '../host';

/** The first processor's "model name" and "flags" of a /proc/cpuinfo text; null when absent. */
export function parseCpuinfo(text: string): HostCpu | null {
  const first = text.split(/\n\s*\n/)[0] ?? '';
  const field = (name: string) => first.match(new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm'))?.[1]?.trim();
  const model = field('model name');
  const flags = field('flags');
  if (!model || flags === undefined) return null;
  return { model, flags: [...new Set(flags.split(/\s+/).filter(Boolean))].sort() };
}

/** This machine's CPU; null where /proc/cpuinfo is missing or says nothing we can read. */
export async function readHostCpu(path = '/proc/cpuinfo'): Promise<HostCpu | null> {
  try {
    return parseCpuinfo(await readFile(path, 'utf8'));
  } catch {
    return null;
  }
}
