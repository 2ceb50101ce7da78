import { bootCheck } from '../engine/lab/boot-check';
import { buildLabGuest, findLabGuest } from '../engine/guest/image';
import { printJson, progress, UsageError } from './output';

export async function guestBuildCommand(opts: { json: boolean; force: boolean; ifMissing: boolean }): Promise<number> {
  if (opts.ifMissing && !opts.force) {
    const found = await findLabGuest();
    if (found) {
      if (opts.json) printJson(imageJson(found));
      return 0;
    }
  }
  const started = performance.now();
  const image = await buildLabGuest({
    force: opts.force,
    onProgress: (step, detail) => progress('guest', detail ? `${step}: ${detail}` : step),
  });
  if (opts.json) printJson(imageJson(image));
  else {
    console.log(`Lab guest ready in ${((performance.now() - started) / 1000).toFixed(1)} s:`);
    console.log(`  kernel  ${image.kernel}\n  initrd  ${image.initrd}\n  append  ${image.append}\n  labload ${image.labloadVersion}`);
  }
  return 0;
}

function imageJson(image: { kernel: string; initrd: string; append: string; labloadVersion: string }) {
  return { kernel: image.kernel, initrd: image.initrd, append: image.append, labloadVersion: image.labloadVersion };
}

function parseMemory(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 64 || n > 65536) {
    throw new UsageError(`--memory takes a size in MiB between 64 and 65536 (got "${value}")`);
  }
  return n;
}

export async function guestBootCommand(opts: { json: boolean; memory?: string | undefined }): Promise<number> {
  const memoryMiB = parseMemory(opts.memory);
  const r = await bootCheck({
    ...(memoryMiB ? { memoryMiB } : {}),
    onProgress: (m) => {
      if (!opts.json) progress('boot', m);
    },
  });
  if (opts.json) {
    printJson({
      status: r.status, accel: r.accel, bootToReadyMs: r.bootToReadyMs, heartbeatIntervalMs: r.heartbeatIntervalMs,
      integrity: r.integrity, heartbeats: r.heartbeats, load: r.load, error: r.error,
    });
  } else if (r.status === 'ok') {
    console.log(`The lab guest works (${r.accel.toUpperCase()}):`);
    console.log(`  boot to ready      ${r.bootToReadyMs} ms`);
    console.log(`  heartbeat interval ${r.heartbeatIntervalMs} ms (guest clock), jitter ${r.heartbeats!.jitterMs.toFixed(2)} ms (host clock)`);
    console.log(`  workload           ${r.load!.measuredMBps.toFixed(1)} MB/s measured in the guest (asked for ${r.load!.requestedMBps})`);
    console.log(`  integrity          ${r.integrity!.pages} pages checked, ${r.integrity!.bad} bad`);
  } else {
    console.error(`The lab guest check failed: ${r.error}`);
  }
  return r.status === 'ok' ? 0 : 1;
}
