// Ethernet frames as they travel between QEMU's dgram netdev and the lab switch: raw frames,
// no FCS, no vnet header. Only what the switch and the probe read or write is here.

export const ETH_HEADER = 14;
/** 1500-byte payload + header + one VLAN tag. Larger datagrams are dropped as oversized. */
export const MAX_FRAME = 1518;

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
/** Reverse ARP: what QEMU's announce-self sends after a migration (qemu_announce_self). */
export const ETHERTYPE_RARP = 0x8035;

export const BROADCAST_MAC = 0xffff_ffff_ffff;

/** A MAC address as a number (48 bits fit a double exactly): cheap to hash and compare. */
export type MacKey = number;

export function macKeyAt(buf: Uint8Array, offset: number): MacKey {
  return (
    ((buf[offset]! << 8) | buf[offset + 1]!) * 2 ** 32 +
    ((buf[offset + 2]! << 24) >>> 0) + (buf[offset + 3]! << 16) + (buf[offset + 4]! << 8) + buf[offset + 5]!
  );
}

export function macToString(key: MacKey): string {
  const parts: string[] = [];
  for (let i = 5; i >= 0; i--) parts.push((Math.floor(key / 2 ** (8 * i)) % 256).toString(16).padStart(2, '0'));
  return parts.join(':');
}

const MAC_RE = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i;

export function parseMac(text: string): MacKey {
  if (!MAC_RE.test(text)) throw new Error(`"${text}" is not a MAC address: write six hex pairs, like 52:54:00:12:34:56`);
  return text.split(':').reduce((acc, h) => acc * 256 + parseInt(h, 16), 0);
}

export function writeMac(buf: Uint8Array, offset: number, key: MacKey): void {
  for (let i = 0; i < 6; i++) buf[offset + i] = Math.floor(key / 2 ** (8 * (5 - i))) % 256;
}

/** Group bit: broadcast and multicast destinations; never a valid source. */
export function isGroupMac(key: MacKey): boolean {
  return Math.floor(key / 2 ** 40) % 2 === 1;
}

export function ethertypeOf(frame: Uint8Array): number {
  return (frame[12]! << 8) | frame[13]!;
}

export function ipv4ToNumber(ip: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m || m.slice(1).some((o) => Number(o) > 255)) throw new Error(`"${ip}" is not an IPv4 address: write it like 10.80.0.10`);
  return m.slice(1).reduce((acc, o) => acc * 256 + Number(o), 0);
}

export function numberToIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function ethHeader(dst: MacKey, src: MacKey, ethertype: number, payloadLength: number): Buffer {
  const buf = Buffer.alloc(ETH_HEADER + payloadLength);
  writeMac(buf, 0, dst);
  writeMac(buf, 6, src);
  buf.writeUInt16BE(ethertype, 12);
  return buf;
}

export interface ArpPacket {
  op: 1 | 2;
  senderMac: MacKey;
  senderIp: number;
  targetMac: MacKey;
  targetIp: number;
}

/** ARP (and RARP, same layout) over Ethernet for IPv4; null when it is not that or is cut short. */
export function parseArp(frame: Uint8Array): ArpPacket | null {
  const t = ethertypeOf(frame);
  if ((t !== ETHERTYPE_ARP && t !== ETHERTYPE_RARP) || frame.length < ETH_HEADER + 28) return null;
  const p = ETH_HEADER;
  const view = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
  if (view.readUInt16BE(p) !== 1 || view.readUInt16BE(p + 2) !== ETHERTYPE_IPV4 || frame[p + 4] !== 6 || frame[p + 5] !== 4) return null;
  const op = view.readUInt16BE(p + 6);
  return {
    op: op === 2 || op === 4 ? 2 : 1, // RARP uses 3/4 for request/reply
    senderMac: macKeyAt(frame, p + 8),
    senderIp: view.readUInt32BE(p + 14),
    targetMac: macKeyAt(frame, p + 18),
    targetIp: view.readUInt32BE(p + 24),
  };
}

export function buildArp(arp: ArpPacket, ethDst: MacKey): Buffer {
  const buf = ethHeader(ethDst, arp.senderMac, ETHERTYPE_ARP, 28);
  const p = ETH_HEADER;
  buf.writeUInt16BE(1, p); // Ethernet
  buf.writeUInt16BE(ETHERTYPE_IPV4, p + 2);
  buf[p + 4] = 6;
  buf[p + 5] = 4;
  buf.writeUInt16BE(arp.op, p + 6);
  writeMac(buf, p + 8, arp.senderMac);
  buf.writeUInt32BE(arp.senderIp, p + 14);
  writeMac(buf, p + 18, arp.targetMac);
  buf.writeUInt32BE(arp.targetIp, p + 24);
  return buf;
}

/** The Internet checksum (RFC 1071) over buf[start, end). */
export function inetChecksum(buf: Uint8Array, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i + 1 < end; i += 2) sum += (buf[i]! << 8) | buf[i + 1]!;
  if ((end - start) % 2 === 1) sum += buf[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export interface IcmpEcho {
  srcMac: MacKey;
  dstMac: MacKey;
  srcIp: number;
  dstIp: number;
  /** 8: request, 0: reply. */
  type: 0 | 8;
  id: number;
  seq: number;
  payload: Uint8Array;
}

export function buildIcmpEcho(e: IcmpEcho): Buffer {
  const ipLen = 20 + 8 + e.payload.length;
  const buf = ethHeader(e.dstMac, e.srcMac, ETHERTYPE_IPV4, ipLen);
  const ip = ETH_HEADER;
  buf[ip] = 0x45;
  buf.writeUInt16BE(ipLen, ip + 2);
  buf.writeUInt16BE(e.seq & 0xffff, ip + 4); // identification
  buf.writeUInt16BE(0x4000, ip + 6); // don't fragment
  buf[ip + 8] = 64; // TTL
  buf[ip + 9] = 1; // ICMP
  buf.writeUInt32BE(e.srcIp, ip + 12);
  buf.writeUInt32BE(e.dstIp, ip + 16);
  buf.writeUInt16BE(inetChecksum(buf, ip, ip + 20), ip + 10);
  const icmp = ip + 20;
  buf[icmp] = e.type;
  buf.writeUInt16BE(e.id, icmp + 4);
  buf.writeUInt16BE(e.seq, icmp + 6);
  buf.set(e.payload, icmp + 8);
  buf.writeUInt16BE(inetChecksum(buf, icmp, buf.length), icmp + 2);
  return buf;
}

/** An ICMP echo request or reply with valid checksums; null for anything else. */
export function parseIcmpEcho(frame: Uint8Array): IcmpEcho | null {
  if (ethertypeOf(frame) !== ETHERTYPE_IPV4 || frame.length < ETH_HEADER + 28) return null;
  const view = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
  const ip = ETH_HEADER;
  if (frame[ip]! >> 4 !== 4 || frame[ip + 9] !== 1) return null;
  const ihl = (frame[ip]! & 15) * 4;
  const total = view.readUInt16BE(ip + 2);
  if (ihl < 20 || total < ihl + 8 || ip + total > frame.length) return null;
  if (inetChecksum(frame, ip, ip + ihl) !== 0) return null;
  const icmp = ip + ihl;
  const end = ip + total;
  if (inetChecksum(frame, icmp, end) !== 0) return null;
  const type = frame[icmp];
  if (type !== 0 && type !== 8) return null;
  return {
    dstMac: macKeyAt(frame, 0),
    srcMac: macKeyAt(frame, 6),
    srcIp: view.readUInt32BE(ip + 12),
    dstIp: view.readUInt32BE(ip + 16),
    type,
    id: view.readUInt16BE(icmp + 4),
    seq: view.readUInt16BE(icmp + 6),
    payload: frame.subarray(icmp + 8, end),
  };
}

/** Why a switch learned a MAC on a new port: the frame that showed it there. */
export type MoveCause = 'rarp' | 'gratuitous-arp' | 'traffic';

export function moveCauseOf(frame: Uint8Array): MoveCause {
  const t = ethertypeOf(frame);
  if (t === ETHERTYPE_RARP) return 'rarp';
  if (t === ETHERTYPE_ARP) {
    const arp = parseArp(frame);
    // Gratuitous: the sender announces its own address (request or reply with spa == tpa).
    if (arp && arp.senderIp === arp.targetIp) return 'gratuitous-arp';
  }
  return 'traffic';
}
