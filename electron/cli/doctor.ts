import { runDoctor } from '../engine/lab/doctor';
import { printJson } from './output';

export async function doctorCommand(opts: { json: boolean }): Promise<number> {
  const checks = await runDoctor();
  const failedRequired = checks.some((c) => c.required && !c.ok);
  if (opts.json) {
    printJson({
      checks: checks.map(({ name, ok, detail, fix, required, version, source }) => ({
        name, ok, detail, fix, required, ...(version !== undefined ? { version, source } : {}),
      })),
    });
  } else {
    for (const c of checks) {
      const tag = c.ok ? 'ok  ' : c.required ? 'FAIL' : 'warn';
      console.log(`${tag}  ${c.name.padEnd(22)} ${c.detail}`);
      if (!c.ok && c.fix) console.log(`      ${''.padEnd(22)} fix: ${c.fix}`);
    }
    console.log(failedRequired ? '\nSome required checks failed: see the fixes above.' : '\nThis machine can run MigLab labs.');
  }
  return failedRequired ? 1 : 0;
}
