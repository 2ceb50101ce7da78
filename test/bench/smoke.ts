// `--smoke`: a benchmark run with its smallest settings, every code path taken once and every table
// printed, so that CI (scripts/bench-smoke.mjs) notices when a benchmark no longer runs. Its
// figures mean nothing, and nothing is judged on time; what the benchmark could not do (a run that
// threw, a migration that should have completed, something left behind) makes it exit 1.
import { join } from 'node:path';

export const SMOKE = process.argv.slice(2).includes('--smoke');

/**
 * A numeric setting: the environment variable `name` when set (checked: a positive number, whole
 * when `whole`), else the smoke value under --smoke, else the normal one.
 */
export function setting(name: string, normal: number, smoke: number, opts: { whole?: boolean } = {}): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return SMOKE ? smoke : normal;
  const v = Number(raw);
  if (!(Number.isFinite(v) && v > 0 && (!opts.whole || Number.isInteger(v)))) {
    throw new Error(`${name}=${raw} is not a positive ${opts.whole ? 'whole ' : ''}number`);
  }
  return v;
}

/** test-artifacts/bench/<name>.json; a smoke run's own file, so it never replaces a real result. */
export function resultFile(name: string): string {
  return join(import.meta.dirname, '..', '..', 'test-artifacts', 'bench', `${name}${SMOKE ? '.smoke' : ''}.json`);
}

/** The first line of a smoke run's output. */
export function smokeBanner(): void {
  if (SMOKE) console.log('smoke run (--smoke): the smallest settings, every step once; the figures below are not measurements\n');
}

/**
 * Under --smoke, what went wrong fails the run (exit code 1) with one line each; in a real run
 * the benchmark has already printed them with its results.
 */
export function failSmokeOn(problems: string[]): void {
  if (!SMOKE) return;
  if (problems.length) {
    console.error(`\nsmoke run FAILED:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    process.exitCode = 1;
  } else console.log('\nsmoke run: every step ran');
}
