/** Small helpers so every command prints the same way: text for people, --json for programs. */
import { DOWNTIME_POLICY_NAMES } from '../engine/migration/downtime-policy';
import type { DowntimePolicyName } from '../engine/migration/types';
import { STRATEGIES, STRATEGY_NAMES, type StrategyName } from '../engine/migration/strategies';

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A numeric --flag's value checked against its range; undefined when the flag was not given. */
export function numberOption(flag: string, value: string | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${flag} takes a number from ${min} to ${max} (got "${value}")`);
  return n;
}

/** --downtime-policy: one of the policies the engine knows, named in the error otherwise. */
export function downtimePolicyOption(value: string): DowntimePolicyName {
  if ((DOWNTIME_POLICY_NAMES as string[]).includes(value)) return value as DowntimePolicyName;
  throw new UsageError(`--downtime-policy takes one of ${DOWNTIME_POLICY_NAMES.join(', ')} (got "${value}")`);
}

/**
 * --strategy NAME and its --strategy-param K=V (numbers and true/false as such): checked by the
 * strategy itself, so the error names the parameter and its range.
 */
export function strategyOption(name: string | undefined, params: string[] | undefined): { strategy: { name: StrategyName; params: Record<string, number | string | boolean> } } | Record<string, never> {
  if (name === undefined) {
    if (params?.length) throw new UsageError('--strategy-param goes with --strategy');
    return {};
  }
  if (!(STRATEGY_NAMES as string[]).includes(name)) throw new UsageError(`--strategy takes one of ${STRATEGY_NAMES.join(', ')} (got "${name}")`);
  const out: Record<string, number | string | boolean> = {};
  for (const p of params ?? []) {
    const m = /^([A-Za-z][A-Za-z0-9]*)=(.+)$/.exec(p);
    if (!m) throw new UsageError(`--strategy-param takes KEY=VALUE, like initialPercent=30 (got "${p}")`);
    const v = m[2]!;
    out[m[1]!] = v === 'true' ? true : v === 'false' ? false : /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
  }
  try {
    STRATEGIES[name as StrategyName].parseParams(out);
  } catch (err) {
    const issues = (err as { issues?: { path: PropertyKey[]; message: string }[] }).issues ?? [];
    throw new UsageError(`--strategy ${name}: ${issues.map((i) => `${i.path.map(String).join('.') || 'params'}: ${i.message}`).join('; ') || (err as Error).message}`);
  }
  return { strategy: { name: name as StrategyName, params: out } };
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Progress goes to stderr so that stdout stays clean for --json. */
export function progress(scope: string, message: string): void {
  process.stderr.write(`[${scope}] ${message}\n`);
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

export const mark = (ok: boolean): string => (ok ? 'ok  ' : 'FAIL');
