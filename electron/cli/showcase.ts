import { doctorCommand } from './doctor';
import { guestBootCommand } from './guest';

/** What `npm start` shows until the desktop window exists: the working parts, run live. */
export async function showcaseCommand(): Promise<number> {
  console.log('MigLab: a hands-on lab for live migration of virtual machines.\n');
  console.log('1. This machine, checked by "miglab doctor":\n');
  const doctor = await doctorCommand({ json: false });
  if (doctor !== 0) return doctor;
  console.log('\n2. The lab guest, booted and checked by "miglab guest boot":\n');
  const boot = await guestBootCommand({ json: false });
  console.log('\nNext in MigLab: migrations between hosts, the lab network, and the desktop window.');
  return boot;
}
