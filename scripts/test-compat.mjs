#!/usr/bin/env node
// `npm run test:compat`: the QEMU 7.2 compatibility subset. The whole suite runs on the QEMU that
// set-up chose (QEMU 10 on Debian 12 under TCG); this runs the core of it again on the system
// QEMU when that is older than 10: a guest boot, one idle and one busy migration, and the
// network remap. Under QEMU 7.2 the busy migration may hit TCG's write loss: the tests' retry
// helper allows a retry only for that (TCG, an oops on the destination, one intact copy kept)
// and the summary line counts them.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const which = spawnSync('sh', ['-c', 'command -v qemu-system-x86_64'], { encoding: 'utf8' });
const qemu = which.stdout.trim();
if (!qemu) {
  console.error('[compat] no system qemu-system-x86_64 on PATH: "npm run setup" installs it');
  process.exit(1);
}
const version = /QEMU emulator version (\d+)\.(\d+)/.exec(spawnSync(qemu, ['--version'], { encoding: 'utf8' }).stdout ?? '');
if (!version) {
  console.error(`[compat] ${qemu} --version did not say its version`);
  process.exit(1);
}
if (Number(version[1]) >= 10) {
  console.log(`[compat] the system QEMU is ${version[1]}.${version[2]}: the whole suite already ran on a QEMU >= 10, no older QEMU to check here`);
  process.exit(0);
}
console.log(`[compat] QEMU ${version[1]}.${version[2]} (${qemu}): guest boot, idle and busy migration, network remap`);
const files = ['test/integration/lab-guest.test.ts', 'test/integration/migration.test.ts', 'test/integration/network.test.ts'];
const only = 'lab guest on a local host|moves an idle guest|needs more passes for a guest that dirties memory|records the remap';
const r = spawnSync(join(root, 'node_modules', '.bin', 'vitest'), ['run', ...files, '-t', only], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, MIGLAB_QEMU: qemu },
});
process.exit(r.status ?? 1);
