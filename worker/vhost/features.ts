// Feature negotiation: the virtio and vhost-user protocol features this backend offers, and the
// ones the frontend acked. The memory table, vrings and inflight tracking read it from here.
import * as M from './messages';
import { VhostError } from './errors';

export const OFFERED_FEATURES =
  M.bit(M.VIRTIO_F_VERSION_1) | M.bit(M.VIRTIO_RING_F_INDIRECT_DESC) | M.bit(M.VIRTIO_RING_F_EVENT_IDX) |
  M.bit(M.VHOST_USER_F_PROTOCOL_FEATURES);

export const OFFERED_PROTOCOL_FEATURES =
  M.bit(M.ProtocolFeature.MQ) | M.bit(M.ProtocolFeature.REPLY_ACK) | M.bit(M.ProtocolFeature.BACKEND_REQ) |
  M.bit(M.ProtocolFeature.INFLIGHT_SHMFD) | M.bit(M.ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  M.bit(M.ProtocolFeature.RESET_DEVICE);

export class NegotiatedFeatures {
  /** Virtio device features (SET_FEATURES). */
  acked = 0n;
  /** SET_FEATURES was received (since the last reset). */
  set = false;
  ackedProtocol = 0n;

  /** SET_FEATURES: only bits we offered. */
  ack(f: bigint): void {
    if (f & ~OFFERED_FEATURES) throw new VhostError(`frontend acked features we did not offer: 0x${(f & ~OFFERED_FEATURES).toString(16)}`);
    this.acked = f;
    this.set = true;
  }

  /** SET_PROTOCOL_FEATURES: only bits we offered. */
  ackProtocol(f: bigint): void {
    if (f & ~OFFERED_PROTOCOL_FEATURES) throw new VhostError(`frontend acked protocol features we did not offer: 0x${(f & ~OFFERED_PROTOCOL_FEATURES).toString(16)}`);
    this.ackedProtocol = f;
  }

  /** A device reset forgets the virtio features; the protocol features stay negotiated. */
  resetDeviceFeatures(): void {
    this.acked = 0n;
    this.set = false;
  }

  has(bitNo: bigint): boolean {
    return (this.acked & M.bit(bitNo)) !== 0n;
  }

  hasProtocol(f: M.ProtocolFeature): boolean {
    return (this.ackedProtocol & M.bit(f)) !== 0n;
  }
}
