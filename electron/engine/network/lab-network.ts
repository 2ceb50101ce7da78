// The lab network: one switch, one subnet, an address per guest, and the probe. Hosts plug guest
// NICs into it (it is their NetworkAttachment); migrations watch it.
import { ipv4ToNumber, macToString, numberToIpv4 } from './frame';
import { ProbeEndpoint } from './probe';
import { LabSwitch, type PortLabel, type SwitchOptions, type SwitchPortHandle } from './switch';
import type { NetworkAttachment } from './attachment';
import { isSubnet, readSubnet, type Subnet } from './subnet';

export const DEFAULT_LAB_SUBNET = '10.80.0.0/24';
/** The probe's host number in the subnet (.2); guests are numbered from FIRST_GUEST_HOST (.10). */
const PROBE_HOST = 2;
const FIRST_GUEST_HOST = 10;
/** QEMU's OUI; the low three bytes are the low bytes of the guest's IP, so a MAC says its IP. */
const MAC_PREFIX = 0x525400 * 2 ** 24;

export class InvalidSubnetError extends Error {
  constructor(text: string, why: string) {
    super(`The lab subnet "${text}" is not usable: ${why}`);
    this.name = 'InvalidSubnetError';
  }
}

export function parseSubnet(text: string): Subnet {
  const r = readSubnet(text, { minPrefix: 16, maxPrefix: 28 });
  if (isSubnet(r)) return r;
  switch (r.problem) {
    case 'form': throw new InvalidSubnetError(text, 'write it as an IPv4 network with a prefix, like 10.80.0.0/24');
    case 'address': throw new InvalidSubnetError(text, r.why);
    case 'prefix': throw new InvalidSubnetError(text, 'use a prefix from /16 to /28 (room for the probe and the guests)');
    case 'host-bits': throw new InvalidSubnetError(text, `the host bits must be zero: did you mean ${r.network}?`);
  }
}

export interface LabNetworkOptions extends SwitchOptions {
  subnet?: string;
}

export interface GuestAddress {
  /** With prefix, as the guest's kernel command line takes it: 10.80.0.10/24. */
  ip: string;
  mac: string;
}

export class LabNetwork implements NetworkAttachment {
  readonly switch: LabSwitch;
  readonly subnet: Subnet;
  readonly subnetText: string;
  private readonly byGuest = new Map<string, number>();
  private readonly taken = new Set<number>();
  private endpoint: Promise<ProbeEndpoint> | null = null;

  constructor(opts: LabNetworkOptions = {}) {
    this.subnetText = opts.subnet ?? DEFAULT_LAB_SUBNET;
    this.subnet = parseSubnet(this.subnetText);
    this.switch = new LabSwitch(opts);
  }

  openPort(label: PortLabel, peer: { address: string; port: number }): Promise<SwitchPortHandle> {
    return this.switch.openPort(label, peer);
  }

  private address(host: number): GuestAddress {
    const n = this.subnet.network + host;
    return { ip: `${numberToIpv4(n)}/${this.subnet.prefix}`, mac: macToString(MAC_PREFIX + (n % 2 ** 24)) };
  }

  /** The guest's address: the same one every time for the same name, the next free one otherwise. */
  assign(guest: string): GuestAddress {
    const known = this.byGuest.get(guest);
    if (known !== undefined) return this.address(known);
    for (let h = FIRST_GUEST_HOST; h < this.subnet.size - 1; h++) {
      if (this.taken.has(h)) continue;
      this.taken.add(h);
      this.byGuest.set(guest, h);
      return this.address(h);
    }
    throw new Error(`The lab subnet ${this.subnetText} has no free address left: use a larger subnet`);
  }

  /** The probe's own address on the switch. */
  get probeAddress(): GuestAddress {
    return this.address(PROBE_HOST);
  }

  /** The switch's observer endpoint, plugged in on first use. */
  probeEndpoint(): Promise<ProbeEndpoint> {
    if (!this.endpoint) {
      const a = this.probeAddress;
      this.endpoint = ProbeEndpoint.open(this.switch, MAC_PREFIX + ((this.subnet.network + PROBE_HOST) % 2 ** 24), ipv4ToNumber(a.ip.split('/')[0]!));
      this.endpoint.catch(() => {
        this.endpoint = null; // try again next time
      });
    }
    return this.endpoint;
  }

  async close(): Promise<void> {
    const ep = await this.endpoint?.catch(() => null);
    ep?.close();
    await this.switch.close();
  }
}
