import { demoCommand } from './demo';
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
  if (boot !== 0) return boot;
  console.log('\n3. A live migration from host-a to host-b of a guest dirtying 32 MiB at 30 MB/s, by "miglab demo";');
  console.log('   its NIC is on the lab switch, which shows its MAC move to host-b while a probe pings it:\n');
  const demo = await demoCommand({ json: false, 'dirty-rate': '30', 'working-set': '32' });
  console.log('\nTry "npx miglab demo --dirty-rate 100 --bandwidth 50" to watch a migration that cannot converge.');
  console.log('Next in MigLab: the desktop window, and LAN hosts.');
  return demo;
}
