// A 1 MiB raw disk whose boot sector proves the guest can write to it: it writes itself to the
// second sector (BIOS int 13h), reads it back, compares, and prints MIGLAB-DISK-WROTE on COM1 when
// the write held (MIGLAB-DISK-FAILED if not). With it, tests show where a guest's writes go.
import { createHash } from 'node:crypto';
import { open, readdir, readFile, readlink, stat } from 'node:fs/promises';

/**
 * A boot sector that writes itself to the disk's second sector (BIOS int 13h), reads it back,
 * compares, and prints MIGLAB-DISK-WROTE on COM1 when the write held (MIGLAB-DISK-FAILED if not).
 */
function writingBootSector(): Buffer {
  const ok = Buffer.from('MIGLAB-DISK-WROTE\r\n\0', 'latin1');
  const fail = Buffer.from('MIGLAB-DISK-FAILED\r\n\0', 'latin1');
  const okAt = 0x7c00 + 79;
  const failAt = okAt + ok.length;
  const code = Buffer.from([
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfb, // cli; ds=es=ss=0; sp=0x7c00; sti
    0xb8, 0x01, 0x03, 0xb9, 0x02, 0x00, 0xb6, 0x00, 0xbb, 0x00, 0x7c, 0xcd, 0x13, 0x72, 0x22, // write 1 sector (CHS 0/0/2) from 0x7c00; jc fail
    0xb8, 0x01, 0x02, 0xb9, 0x02, 0x00, 0xb6, 0x00, 0xbb, 0x00, 0x80, 0xcd, 0x13, 0x72, 0x13, // read it back to 0x8000; jc fail
    0xbe, 0x00, 0x7c, 0xbf, 0x00, 0x80, 0xb9, 0x00, 0x01, 0xfc, 0xf3, 0xa7, 0x75, 0x05, // compare 256 words; jne fail
    0xbe, okAt & 0xff, okAt >> 8, 0xeb, 0x03, // si = ok; jmp print
    0xbe, failAt & 0xff, failAt >> 8, // fail: si = fail
    0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xf4, 0xeb, 0xfd, // print to COM1, hlt
  ]);
  if (code.length !== 79) throw new Error(`the boot sector's code is ${code.length} bytes, its messages expect 79`);
  const sector = Buffer.alloc(512);
  Buffer.concat([code, ok, fail]).copy(sector);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

/** How each open file descriptor of `pid` that names `file` was opened (O_ACCMODE: 0 read-only). */
export async function openModes(pid: number, file: string): Promise<number[]> {
  const modes: number[] = [];
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')) !== file) continue;
    const flags = /flags:\s+(\d+)/.exec(await readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1]!;
    modes.push(parseInt(flags, 8) & 3);
  }
  return modes;
}

export async function fingerprintOf(file: string): Promise<string> {
  const st = await stat(file);
  return `${createHash('sha256').update(await readFile(file)).digest('hex')} mtime ${st.mtimeMs}`;
}


/** Writes the disk: the boot sector, then zeros to 1 MiB. */
export async function writeBootDisk(path: string): Promise<void> {
  const f = await open(path, 'w');
  try {
    await f.write(writingBootSector(), 0, 512, 0);
    await f.truncate(1024 * 1024);
  } finally {
    await f.close();
  }
}
