// The frame helpers the lab switch and its probe read and write: MAC keys, IPv4 numbers,
// ARP/RARP, the Internet checksum, ICMP echo, and why a MAC showed up on a new port.
import { afterAll, describe, expect, it } from 'vitest';
import {
  BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_RARP, ETH_HEADER, buildArp, buildIcmpEcho, ethertypeOf,
  inetChecksum, ipv4ToNumber, isGroupMac, macKeyAt, macToString, moveCauseOf, numberToIpv4, parseArp,
  parseIcmpEcho, parseMac, writeMac, type ArpPacket, type IcmpEcho,
} from '../../electron/engine/network/frame';

afterAll(() => {
  // Pure functions: nothing here may open a socket.
  expect(process.getActiveResourcesInfo().filter((r) => /^udpwrap$/i.test(r))).toEqual([]);
});

const GUEST_MAC = '52:54:00:50:00:0a';
const PROBE_MAC = '52:54:00:50:00:02';

/** A RARP frame laid out the way QEMU's announce-self sends it (qemu_announce_self). */
function rarpFrame(mac: string, op = 3): Buffer {
  const key = parseMac(mac);
  const buf = Buffer.alloc(60); // padded to the Ethernet minimum, as QEMU does
  writeMac(buf, 0, BROADCAST_MAC);
  writeMac(buf, 6, key);
  buf.writeUInt16BE(ETHERTYPE_RARP, 12);
  buf.writeUInt16BE(1, 14); // hardware: Ethernet
  buf.writeUInt16BE(ETHERTYPE_IPV4, 16);
  buf[18] = 6;
  buf[19] = 4;
  buf.writeUInt16BE(op, 20); // 3: reverse request
  writeMac(buf, 22, key); // sha
  buf.writeUInt32BE(0, 28); // spa
  writeMac(buf, 32, key); // tha
  buf.writeUInt32BE(0, 38); // tpa
  return buf;
}

function echo(over: Partial<IcmpEcho> = {}): IcmpEcho {
  return {
    srcMac: parseMac(PROBE_MAC),
    dstMac: parseMac(GUEST_MAC),
    srcIp: ipv4ToNumber('10.80.0.2'),
    dstIp: ipv4ToNumber('10.80.0.10'),
    type: 8,
    id: 0xbeef,
    seq: 4242,
    payload: Buffer.from('miglab probe payload, 33 bytes!!!'),
    ...over,
  };
}

describe('MAC addresses', () => {
  it.each([
    ['00:00:00:00:00:00', 0],
    ['00:00:00:00:00:01', 1],
    ['ff:ff:ff:ff:ff:ff', BROADCAST_MAC],
    ['52:54:00:12:34:56', 0x5254_0012_3456],
    [GUEST_MAC, 0x5254_0050_000a],
    ['80:00:00:00:00:00', 0x8000_0000_0000],
    ['01:00:5e:7f:ff:fa', 0x0100_5e7f_fffa],
  ])('parses %s to its 48-bit number and formats it back', (text, key) => {
    expect(parseMac(text)).toBe(key);
    expect(macToString(key)).toBe(text);
    expect(macToString(parseMac(text))).toBe(text);
  });

  it('accepts upper case and formats in lower case', () => {
    expect(macToString(parseMac('52:54:00:AB:CD:EF'))).toBe('52:54:00:ab:cd:ef');
  });

  it('writes a MAC into a frame and reads it back at any offset', () => {
    const buf = Buffer.alloc(20, 0xaa);
    for (const text of ['ff:ff:ff:ff:ff:ff', '52:54:00:12:34:56', '00:00:00:00:00:01', 'fe:dc:ba:98:76:54']) {
      writeMac(buf, 7, parseMac(text));
      expect(buf.subarray(7, 13).toString('hex')).toBe(text.replaceAll(':', ''));
      expect(macKeyAt(buf, 7)).toBe(parseMac(text));
      // The bytes around it are untouched.
      expect(buf[6]).toBe(0xaa);
      expect(buf[13]).toBe(0xaa);
    }
  });

  it('reads high bytes >= 0x80 in every position without going negative', () => {
    const buf = Buffer.from([0xff, 0x80, 0x80, 0x80, 0x80, 0x80]);
    const key = macKeyAt(buf, 0);
    expect(key).toBe(0xff8080808080);
    expect(macToString(key)).toBe('ff:80:80:80:80:80');
  });

  it.each(['', '52:54:00:12:34', '52:54:00:12:34:56:78', '52-54-00-12-34-56', 'zz:54:00:12:34:56', '5254.0012.3456', ' 52:54:00:12:34:56', '52:54:0:12:34:56'])(
    'refuses %j with a message that shows the right form',
    (text) => {
      expect(() => parseMac(text)).toThrow(`"${text}" is not a MAC address: write six hex pairs, like 52:54:00:12:34:56`);
    },
  );

  it('knows group (broadcast and multicast) MACs from unicast ones', () => {
    expect(isGroupMac(BROADCAST_MAC)).toBe(true);
    expect(isGroupMac(parseMac('01:00:5e:00:00:01'))).toBe(true); // IPv4 multicast
    expect(isGroupMac(parseMac('33:33:00:00:00:01'))).toBe(true); // IPv6 multicast
    expect(isGroupMac(parseMac('01:80:c2:00:00:00'))).toBe(true); // STP
    expect(isGroupMac(parseMac('52:54:00:12:34:56'))).toBe(false);
    expect(isGroupMac(parseMac('02:00:00:00:00:01'))).toBe(false); // locally administered, still unicast
    expect(isGroupMac(parseMac('fe:ff:ff:ff:ff:ff'))).toBe(false);
    expect(isGroupMac(0)).toBe(false);
  });
});

describe('IPv4 addresses', () => {
  it.each([
    ['0.0.0.0', 0],
    ['10.80.0.10', 0x0a50_000a],
    ['10.80.0.2', 0x0a50_0002],
    ['192.168.0.1', 0xc0a8_0001],
    ['255.255.255.255', 0xffff_ffff],
    ['128.0.0.1', 0x8000_0001],
  ])('converts %s to %i and back', (ip, n) => {
    expect(ipv4ToNumber(ip)).toBe(n);
    expect(numberToIpv4(n)).toBe(ip);
  });

  it.each(['256.0.0.1', '1.2.3', '1.2.3.4.5', 'a.b.c.d', '10.80.0.10/24', '', '1..2.3', '1234.1.1.1'])('refuses %j clearly', (ip) => {
    expect(() => ipv4ToNumber(ip)).toThrow(`"${ip}" is not an IPv4 address: write it like 10.80.0.10`);
  });
});

describe('ARP and RARP', () => {
  const request: ArpPacket = {
    op: 1,
    senderMac: parseMac(PROBE_MAC),
    senderIp: ipv4ToNumber('10.80.0.2'),
    targetMac: 0,
    targetIp: ipv4ToNumber('10.80.0.10'),
  };

  it('builds an ARP request that parses back to the same packet', () => {
    const frame = buildArp(request, BROADCAST_MAC);
    expect(frame.length).toBe(ETH_HEADER + 28);
    expect(ethertypeOf(frame)).toBe(ETHERTYPE_ARP);
    expect(macKeyAt(frame, 0)).toBe(BROADCAST_MAC);
    expect(macKeyAt(frame, 6)).toBe(request.senderMac);
    // The fixed part of the ARP header: Ethernet, IPv4, 6-byte MACs, 4-byte IPs, op 1.
    expect(frame.subarray(14, 22).toString('hex')).toBe('0001080006040001');
    expect(parseArp(frame)).toEqual(request);
  });

  it('builds an ARP reply that parses back to the same packet, also with Ethernet padding', () => {
    const reply: ArpPacket = { op: 2, senderMac: parseMac(GUEST_MAC), senderIp: request.targetIp, targetMac: request.senderMac, targetIp: request.senderIp };
    const frame = buildArp(reply, request.senderMac);
    expect(macKeyAt(frame, 0)).toBe(request.senderMac);
    expect(parseArp(frame)).toEqual(reply);
    expect(parseArp(Buffer.concat([frame, Buffer.alloc(18)]))).toEqual(reply);
  });

  it('parses a RARP announce as QEMU sends it (reverse request = op 1, reply = op 2)', () => {
    const key = parseMac(GUEST_MAC);
    expect(parseArp(rarpFrame(GUEST_MAC))).toEqual({ op: 1, senderMac: key, senderIp: 0, targetMac: key, targetIp: 0 });
    expect(parseArp(rarpFrame(GUEST_MAC, 4))?.op).toBe(2);
  });

  it('returns null for what is not ARP over Ethernet for IPv4, or is cut short', () => {
    const good = buildArp(request, BROADCAST_MAC);
    expect(parseArp(good.subarray(0, good.length - 1))).toBeNull();
    expect(parseArp(good.subarray(0, 10))).toBeNull();
    const damaged = (at: number, value: number): Buffer => {
      const b = Buffer.from(good);
      b[at] = value;
      return b;
    };
    expect(parseArp(damaged(13, 0x00))).toBeNull(); // ethertype 0x0800
    expect(parseArp(damaged(15, 6))).toBeNull(); // hardware type 6 (IEEE 802), not Ethernet
    expect(parseArp(damaged(16, 0x86))).toBeNull(); // protocol 0x8600, not IPv4
    expect(parseArp(damaged(18, 8))).toBeNull(); // hardware length 8
    expect(parseArp(damaged(19, 16))).toBeNull(); // protocol length 16 (IPv6)
    expect(parseArp(buildIcmpEcho(echo()))).toBeNull();
  });

  it('parses an ARP frame that lives inside a larger buffer', () => {
    const frame = buildArp(request, BROADCAST_MAC);
    const big = Buffer.alloc(frame.length + 100, 0xee);
    frame.copy(big, 37);
    expect(parseArp(big.subarray(37, 37 + frame.length))).toEqual(request);
  });
});

describe('the Internet checksum', () => {
  it('matches the RFC 1071 worked example', () => {
    // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2 (with end-around carry).
    const data = Buffer.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
    expect(inetChecksum(data, 0, data.length)).toBe(~0xddf2 & 0xffff);
    expect(inetChecksum(data, 0, data.length)).toBe(0x220d);
  });

  it('gives the checksum of a real IPv4 header, and zero over a header that carries it', () => {
    const header = Buffer.from('450000730000400040110000c0a80001c0a800c7', 'hex');
    expect(inetChecksum(header, 0, header.length)).toBe(0xb861);
    header.writeUInt16BE(0xb861, 10);
    expect(inetChecksum(header, 0, header.length)).toBe(0);
  });

  it('pads an odd length with a zero byte and respects start and end', () => {
    expect(inetChecksum(Buffer.from([0x01]), 0, 1)).toBe(0xfeff);
    const data = Buffer.from([0xff, 0xff, 0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0xff]);
    expect(inetChecksum(data, 2, 10)).toBe(0x220d);
    expect(inetChecksum(data, 0, 0)).toBe(0xffff);
  });
});

describe('ICMP echo', () => {
  it('builds an echo request that parses back to the same fields', () => {
    const e = echo();
    const frame = buildIcmpEcho(e);
    expect(frame.length).toBe(ETH_HEADER + 20 + 8 + e.payload.length);
    expect(ethertypeOf(frame)).toBe(ETHERTYPE_IPV4);
    expect(frame[ETH_HEADER]).toBe(0x45);
    expect(frame[ETH_HEADER + 9]).toBe(1); // ICMP
    // Both checksums verify: over the IP header and over the ICMP message.
    expect(inetChecksum(frame, ETH_HEADER, ETH_HEADER + 20)).toBe(0);
    expect(inetChecksum(frame, ETH_HEADER + 20, frame.length)).toBe(0);
    const parsed = parseIcmpEcho(frame);
    expect(parsed).not.toBeNull();
    expect({ ...parsed!, payload: Buffer.from(parsed!.payload) }).toEqual({ ...e, payload: Buffer.from(e.payload) });
  });

  it('round-trips a reply with an empty payload, also padded to the Ethernet minimum', () => {
    const e = echo({ type: 0, payload: Buffer.alloc(0), id: 0, seq: 0xffff });
    const frame = buildIcmpEcho(e);
    expect(frame.length).toBe(42);
    const padded = Buffer.concat([frame, Buffer.alloc(18, 0x55)]);
    for (const f of [frame, padded]) {
      const parsed = parseIcmpEcho(f);
      expect(parsed).toMatchObject({ type: 0, id: 0, seq: 0xffff, srcIp: e.srcIp, dstIp: e.dstIp, srcMac: e.srcMac, dstMac: e.dstMac });
      expect(parsed!.payload.length).toBe(0);
    }
  });

  it('rejects a frame whose ICMP or IP checksum does not verify', () => {
    const frame = buildIcmpEcho(echo());
    const payloadByte = Buffer.from(frame);
    payloadByte[payloadByte.length - 1]! ^= 0x01;
    expect(parseIcmpEcho(payloadByte)).toBeNull();
    const icmpChecksum = Buffer.from(frame);
    icmpChecksum[ETH_HEADER + 22]! ^= 0x80;
    expect(parseIcmpEcho(icmpChecksum)).toBeNull();
    const ttl = Buffer.from(frame);
    ttl[ETH_HEADER + 8] = 63; // TTL changed without fixing the header checksum
    expect(parseIcmpEcho(ttl)).toBeNull();
  });

  it('rejects ICMP that is not an echo, IP that is not ICMP, and cut-short frames', () => {
    const frame = buildIcmpEcho(echo());
    const unreachable = Buffer.from(frame);
    unreachable[ETH_HEADER + 20] = 3;
    unreachable.writeUInt16BE(0, ETH_HEADER + 22);
    unreachable.writeUInt16BE(inetChecksum(unreachable, ETH_HEADER + 20, unreachable.length), ETH_HEADER + 22);
    expect(inetChecksum(unreachable, ETH_HEADER + 20, unreachable.length)).toBe(0);
    expect(parseIcmpEcho(unreachable)).toBeNull();

    const udp = Buffer.from(frame);
    udp[ETH_HEADER + 9] = 17;
    udp.writeUInt16BE(0, ETH_HEADER + 10);
    udp.writeUInt16BE(inetChecksum(udp, ETH_HEADER, ETH_HEADER + 20), ETH_HEADER + 10);
    expect(parseIcmpEcho(udp)).toBeNull();

    expect(parseIcmpEcho(frame.subarray(0, frame.length - 1))).toBeNull(); // IP total length says more
    expect(parseIcmpEcho(frame.subarray(0, ETH_HEADER + 27))).toBeNull();
    expect(parseIcmpEcho(buildArp({ op: 1, senderMac: 1, senderIp: 1, targetMac: 0, targetIp: 2 }, BROADCAST_MAC))).toBeNull();
  });
});

describe('moveCauseOf', () => {
  const mac = parseMac(GUEST_MAC);
  const ip = ipv4ToNumber('10.80.0.10');

  it('calls a RARP frame (QEMU announce-self) "rarp"', () => {
    expect(moveCauseOf(rarpFrame(GUEST_MAC))).toBe('rarp');
  });

  it('calls an ARP request or reply with sender IP == target IP "gratuitous-arp"', () => {
    expect(moveCauseOf(buildArp({ op: 1, senderMac: mac, senderIp: ip, targetMac: 0, targetIp: ip }, BROADCAST_MAC))).toBe('gratuitous-arp');
    expect(moveCauseOf(buildArp({ op: 2, senderMac: mac, senderIp: ip, targetMac: mac, targetIp: ip }, BROADCAST_MAC))).toBe('gratuitous-arp');
  });

  it('calls an ordinary ARP request, an ARP probe and IPv4 traffic "traffic"', () => {
    const other = ipv4ToNumber('10.80.0.2');
    expect(moveCauseOf(buildArp({ op: 1, senderMac: mac, senderIp: ip, targetMac: 0, targetIp: other }, BROADCAST_MAC))).toBe('traffic');
    expect(moveCauseOf(buildArp({ op: 1, senderMac: mac, senderIp: 0, targetMac: 0, targetIp: ip }, BROADCAST_MAC))).toBe('traffic');
    expect(moveCauseOf(buildIcmpEcho(echo({ srcMac: mac })))).toBe('traffic');
    // An ARP ethertype with a body too short to be ARP is just traffic.
    const short = Buffer.alloc(20);
    short.writeUInt16BE(ETHERTYPE_ARP, 12);
    expect(moveCauseOf(short)).toBe('traffic');
  });
});
