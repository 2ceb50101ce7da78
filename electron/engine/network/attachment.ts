import type { PortLabel, SwitchPortHandle } from './switch';

/**
 * Where a host plugs its guests' NICs in: the lab switch. The host picks the UDP port QEMU sends
 * from; the switch opens a port that accepts frames from that address only.
 */
export interface NetworkAttachment {
  openPort(label: PortLabel, peer: { address: string; port: number }): Promise<SwitchPortHandle>;
  /** A handle for a port opened before a restart (a reattached guest's), so it can still be closed. */
  portHandle?(port: { id: number; address: string; port: number }): SwitchPortHandle;
}
