import { execFile } from 'node:child_process';
import { access } from 'node:fs/promises';
import { promisify } from 'node:util';
import { findLabGuest, findStaticBusybox } from '../guest/image';
import { INSTALL_QEMU_HINT, chooseAccelerator, findQemu, whichBinary, type QemuSource } from '../qemu/binary';
import { detectQemuCapabilities } from '../qemu/capabilities';

const runFile = promisify(execFile);

export interface DoctorCheck {
  name: string;
  ok: boolean;
  /** What was found, in a sentence. */
  detail: string;
  /** What to do when not ok; null when ok. */
  fix: string | null;
  /** A failed required check means guests cannot run; others limit what the lab can do. */
  required: boolean;
  /** The qemu check only: the version in use and where it came from. */
  version?: string;
  source?: QemuSource;
}

const MIN_NODE = [22, 13] as const;
const MIN_QEMU = [6, 2] as const;
const GUEST_TOOLS_FIX = 'sudo apt-get install busybox-static cpio gcc libc6-dev';

function atLeast(have: readonly number[], want: readonly number[]): boolean {
  for (let i = 0; i < want.length; i++) {
    const h = have[i] ?? 0;
    const w = want[i] ?? 0;
    if (h !== w) return h > w;
  }
  return true;
}

function check(name: string, required: boolean, ok: boolean, detail: string, fix: string): DoctorCheck {
  return { name, ok, detail, fix: ok ? null : fix, required };
}

async function nodeCheck(): Promise<DoctorCheck> {
  const v = process.versions.node.split('.').map(Number);
  return check(
    'node', true, atLeast(v, MIN_NODE), `Node.js ${process.versions.node} at ${process.execPath}`,
    `MigLab needs Node.js >= ${MIN_NODE.join('.')}: run it through npm ("npm start", "npx miglab"), which uses the Node 22 in node_modules, or install a newer Node.js`,
  );
}

async function qemuChecks(): Promise<DoctorCheck[]> {
  try {
    const q = await findQemu();
    const out: DoctorCheck[] = [{
      ...check(
        'qemu', true, atLeast([q.major, q.minor], MIN_QEMU), `qemu-system-x86_64 ${q.version} at ${q.path} (${q.source}): ${q.reason}`,
        `QEMU ${q.version} is too old: MigLab needs ${MIN_QEMU.join('.')} or newer (${INSTALL_QEMU_HINT})`,
      ),
      version: q.version,
      source: q.source,
    }];
    try {
      const caps = (await detectQemuCapabilities(q.path)).migrationCapabilities;
      out.push(check(
        'migration-capabilities', true, caps.includes('events'), `${caps.length} offered: ${caps.join(', ')}`,
        'This QEMU lacks the "events" migration capability that MigLab uses to see every pre-copy pass: install QEMU 6.2 or newer',
      ));
    } catch (err) {
      out.push(check('migration-capabilities', true, false, `QEMU could not be asked: ${(err as Error).message}`, 'Run "qemu-system-x86_64 -machine none -display none" to see why QEMU fails to start'));
    }
    out.push(await dgramCheck(q.path));
    return out;
  } catch (err) {
    return [check('qemu', true, false, (err as Error).message, INSTALL_QEMU_HINT)];
  }
}

/** Guest NICs reach the lab switch over UDP with QEMU's dgram netdev, new in QEMU 7.2. */
async function dgramCheck(qemu: string): Promise<DoctorCheck> {
  const fix = 'The lab network needs QEMU 7.2 or newer (its "dgram" netdev): install a newer QEMU; guests still run and migrate without a NIC';
  try {
    const { stdout } = await runFile(qemu, ['-netdev', 'help'], { timeout: 10_000 });
    const ok = stdout.split('\n').some((l) => l.trim() === 'dgram');
    return check('lab-network', false, ok, ok ? 'QEMU has the dgram netdev: guest NICs plug into the lab switch over UDP' : 'QEMU has no dgram netdev', fix);
  } catch (err) {
    return check('lab-network', false, false, `QEMU could not list its netdevs: ${(err as Error).message.split('\n')[0]}`, fix);
  }
}

async function accelCheck(): Promise<DoctorCheck> {
  const a = await chooseAccelerator();
  // TCG is a working lab, just slower: not a failure.
  return check('accelerator', false, true, `${a.accel.toUpperCase()}: ${a.reason}`, '');
}

async function toolCheck(name: string, binary: string, required: boolean, fix: string, why: string): Promise<DoctorCheck> {
  const path = await whichBinary(binary);
  return check(name, required, path !== null, path ? `${binary} at ${path} (${why})` : `${binary} not found (${why})`, fix);
}

async function busyboxCheck(): Promise<DoctorCheck> {
  try {
    const { path } = await findStaticBusybox();
    return check('busybox', false, true, `static busybox at ${path} (lab guest userland)`, '');
  } catch (err) {
    return check('busybox', false, false, (err as Error).message, GUEST_TOOLS_FIX);
  }
}

async function staticLibcCheck(): Promise<DoctorCheck> {
  const candidates = ['/usr/lib/x86_64-linux-gnu/libc.a', '/usr/lib64/libc.a', '/usr/lib/libc.a'];
  for (const c of candidates) {
    try {
      await access(c);
      return check('static-libc', false, true, `${c} (labload is linked statically)`, '');
    } catch {
      /* next */
    }
  }
  return check('static-libc', false, false, 'no static libc found (labload is linked statically)', GUEST_TOOLS_FIX);
}

async function labGuestCheck(): Promise<DoctorCheck> {
  try {
    const img = await findLabGuest();
    return check(
      'lab-guest', true, img !== null,
      img ? `built in ${img.dir} (labload ${img.labloadVersion})` : 'not built yet',
      'npx miglab guest build',
    );
  } catch (err) {
    return check('lab-guest', true, false, (err as Error).message, 'npx miglab guest build');
  }
}

async function netnsCheck(): Promise<DoctorCheck> {
  const fix = 'Multi-host labs in network namespaces need root and iproute2: run as root, and "sudo apt-get install iproute2"';
  const ip = await whichBinary('ip');
  if (!ip) return check('network-namespaces', false, false, 'the "ip" command (iproute2) is not installed', fix);
  if (process.getuid?.() !== 0) return check('network-namespaces', false, false, 'not running as root', fix);
  const name = `miglab-doctor-${process.pid}`;
  try {
    await runFile(ip, ['netns', 'add', name], { timeout: 5000 });
    await runFile(ip, ['netns', 'delete', name], { timeout: 5000 });
    return check('network-namespaces', false, true, 'a namespace was created and removed', fix);
  } catch (err) {
    await runFile(ip, ['netns', 'delete', name]).catch(() => {});
    return check('network-namespaces', false, false, `creating a namespace failed: ${(err as Error).message.split('\n')[0]}`, fix);
  }
}

/** Everything MigLab needs from this machine, each with a fix for what is missing. */
export async function runDoctor(): Promise<DoctorCheck[]> {
  const [node, qemu, accel, qemuImg, busybox, cpio, gcc, libc, guest, netns] = await Promise.all([
    nodeCheck(),
    qemuChecks(),
    accelCheck(),
    toolCheck('qemu-img', 'qemu-img', false, 'sudo apt-get install qemu-utils', 'reads custom disk images'),
    busyboxCheck(),
    toolCheck('cpio', 'cpio', false, GUEST_TOOLS_FIX, 'packs the lab guest'),
    toolCheck('gcc', 'gcc', false, GUEST_TOOLS_FIX, 'compiles labload and the lab switch'),
    staticLibcCheck(),
    labGuestCheck(),
    netnsCheck(),
  ]);
  return [node, ...qemu, accel, qemuImg, busybox, cpio, gcc, libc, guest, netns];
}
