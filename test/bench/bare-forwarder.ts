// The reference for bench:switch: the least Node can do per frame (receive a datagram, send it
// on), in a process of its own. It shows why the switch's data plane is C.
import { createSocket } from 'node:dgram';

const sinkPort = Number(process.argv[2]);
const rx = createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
const tx = createSocket({ type: 'udp4', sendBufferSize: 4 << 20 });
await new Promise<void>((r) => rx.bind(0, '127.0.0.1', () => r()));
await new Promise<void>((r) => tx.bind(0, '127.0.0.1', () => tx.connect(sinkPort, '127.0.0.1', () => r())));
rx.on('message', (m) => tx.send(m));
// Between two blasts the sink is gone, and what was still queued bounces (ECONNREFUSED on the
// connected socket): a lost frame, as in the switch, not the end of the forwarder.
tx.on('error', () => {});
process.on('message', () => {
  rx.close();
  tx.close();
  process.exit(0);
});
process.send!({ in: rx.address().port });
