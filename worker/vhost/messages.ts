// vhost-user wire format (QEMU docs/interop/vhost-user.rst): constants, and parsers for the
// payloads the backend receives. Everything here is pure and validates sizes; the frontend is
// untrusted as far as lengths and indices go.
import { FrontendError } from '../../shared/errors';

export const HEADER_SIZE = 12;
/** The largest payload we accept; the largest legitimate one (GET_CONFIG) is 12 + 256 bytes. A
 * larger size breaks the framing of the stream, so the connection cannot continue. */
export const MAX_PAYLOAD_SIZE = 4096;
/** SCM_RIGHTS fds the frontend may attach to one message (VHOST_MEMORY_BASELINE_NREGIONS). */
export const VHOST_USER_MAX_FDS = 8;

export const FLAG_VERSION_1 = 0x1;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
export const VERSION_MASK = 0x3;

export enum Request {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  RESET_OWNER = 4,
  SET_MEM_TABLE = 5,
  SET_LOG_BASE = 6,
  SET_LOG_FD = 7,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  SET_VRING_ERR = 14,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  GET_QUEUE_NUM = 17,
  SET_VRING_ENABLE = 18,
  SEND_RARP = 19,
  NET_SET_MTU = 20,
  SET_BACKEND_REQ_FD = 21,
  IOTLB_MSG = 22,
  SET_VRING_ENDIAN = 23,
  GET_CONFIG = 24,
  SET_CONFIG = 25,
  CREATE_CRYPTO_SESSION = 26,
  CLOSE_CRYPTO_SESSION = 27,
  POSTCOPY_ADVISE = 28,
  POSTCOPY_LISTEN = 29,
  POSTCOPY_END = 30,
  GET_INFLIGHT_FD = 31,
  SET_INFLIGHT_FD = 32,
  GPU_SET_SOCKET = 33,
  RESET_DEVICE = 34,
  VRING_KICK = 35,
  GET_MAX_MEM_SLOTS = 36,
  ADD_MEM_REG = 37,
  REM_MEM_REG = 38,
  SET_STATUS = 39,
  GET_STATUS = 40,
}

export function requestName(code: number): string {
  return Request[code] ?? `UNKNOWN(${code})`;
}

// Virtio device feature bits (u64).
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24n;
export const VIRTIO_RING_F_INDIRECT_DESC = 28n;
export const VIRTIO_RING_F_EVENT_IDX = 29n;
export const VHOST_USER_F_PROTOCOL_FEATURES = 30n;
export const VIRTIO_F_VERSION_1 = 32n;

// Protocol feature bits.
export enum ProtocolFeature {
  MQ = 0,
  LOG_SHMFD = 1,
  RARP = 2,
  REPLY_ACK = 3,
  NET_MTU = 4,
  BACKEND_REQ = 5,
  CROSS_ENDIAN = 6,
  CRYPTO_SESSION = 7,
  PAGEFAULT = 8,
  CONFIG = 9,
  BACKEND_SEND_FD = 10,
  HOST_NOTIFIER = 11,
  INFLIGHT_SHMFD = 12,
  RESET_DEVICE = 13,
  INBAND_NOTIFICATIONS = 14,
  CONFIGURE_MEM_SLOTS = 15,
  STATUS = 16,
}

export const bit = (n: bigint | number): bigint => 1n << BigInt(n);

/** Low 8 bits of the u64 payload of SET_VRING_KICK/CALL/ERR hold the queue index; bit 8 says
 * "no fd attached" (polling mode / invalid). */
export const VRING_IDX_MASK = 0xffn;
export const VRING_NOFD_MASK = 0x100n;

export class VhostProtocolError extends FrontendError {
  constructor(message: string, readonly request: number) {
    super(message);
  }
}

export interface MessageHeader { request: number; flags: number; size: number }

export function parseHeader(buf: Buffer): MessageHeader {
  if (buf.length < HEADER_SIZE) throw new VhostProtocolError(`short header (${buf.length} bytes)`, 0);
  return { request: buf.readUInt32LE(0), flags: buf.readUInt32LE(4), size: buf.readUInt32LE(8) };
}

export function encodeReply(request: number, payload: Buffer): Buffer {
  const out = Buffer.alloc(HEADER_SIZE + payload.length);
  out.writeUInt32LE(request, 0);
  out.writeUInt32LE(FLAG_VERSION_1 | FLAG_REPLY, 4);
  out.writeUInt32LE(payload.length, 8);
  payload.copy(out, HEADER_SIZE);
  return out;
}

export function u64Payload(value: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, value));
  return b;
}

function expectSize(request: number, payload: Buffer, size: number): void {
  if (payload.length !== size) {
    throw new VhostProtocolError(`${requestName(request)}: payload is ${payload.length} bytes, expected ${size}`, request);
  }
}

export function parseU64(request: number, payload: Buffer): bigint {
  expectSize(request, payload, 8);
  return payload.readBigUInt64LE(0);
}

export interface VringState { index: number; num: number }

export function parseVringState(request: number, payload: Buffer): VringState {
  expectSize(request, payload, 8);
  return { index: payload.readUInt32LE(0), num: payload.readUInt32LE(4) };
}

export function encodeVringState(state: VringState): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(state.index, 0);
  b.writeUInt32LE(state.num, 4);
  return b;
}

export interface VringAddr {
  index: number;
  flags: number;
  descUser: bigint;
  usedUser: bigint;
  availUser: bigint;
  logGuest: bigint;
}

export function parseVringAddr(request: number, payload: Buffer): VringAddr {
  expectSize(request, payload, 40);
  return {
    index: payload.readUInt32LE(0),
    flags: payload.readUInt32LE(4),
    descUser: payload.readBigUInt64LE(8),
    usedUser: payload.readBigUInt64LE(16),
    availUser: payload.readBigUInt64LE(24),
    logGuest: payload.readBigUInt64LE(32),
  };
}

export interface MemoryRegionDesc {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  mmapOffset: bigint;
}

const REGION_SIZE = 32;

function parseRegion(payload: Buffer, offset: number): MemoryRegionDesc {
  return {
    guestPhysAddr: payload.readBigUInt64LE(offset),
    memorySize: payload.readBigUInt64LE(offset + 8),
    userspaceAddr: payload.readBigUInt64LE(offset + 16),
    mmapOffset: payload.readBigUInt64LE(offset + 24),
  };
}

/** SET_MEM_TABLE: u32 nregions, u32 padding, then nregions × region (QEMU always sends the
 * full 8-slot array, so the payload may be longer than nregions needs). */
export function parseMemTable(request: number, payload: Buffer): MemoryRegionDesc[] {
  if (payload.length < 8) throw new VhostProtocolError(`SET_MEM_TABLE: payload ${payload.length} bytes`, request);
  const n = payload.readUInt32LE(0);
  if (n === 0 || n > VHOST_USER_MAX_FDS) throw new VhostProtocolError(`SET_MEM_TABLE: ${n} regions`, request);
  if (payload.length < 8 + n * REGION_SIZE || payload.length > 8 + VHOST_USER_MAX_FDS * REGION_SIZE) {
    throw new VhostProtocolError(`SET_MEM_TABLE: payload ${payload.length} bytes for ${n} regions`, request);
  }
  const regions: MemoryRegionDesc[] = [];
  for (let i = 0; i < n; i++) regions.push(parseRegion(payload, 8 + i * REGION_SIZE));
  return regions;
}

/** ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region. */
export function parseSingleRegion(request: number, payload: Buffer): MemoryRegionDesc {
  expectSize(request, payload, 8 + REGION_SIZE);
  return parseRegion(payload, 8);
}

export interface InflightDesc { mmapSize: bigint; mmapOffset: bigint; numQueues: number; queueSize: number }

export function parseInflight(request: number, payload: Buffer): InflightDesc {
  expectSize(request, payload, 24);
  return {
    mmapSize: payload.readBigUInt64LE(0),
    mmapOffset: payload.readBigUInt64LE(8),
    numQueues: payload.readUInt16LE(16),
    queueSize: payload.readUInt16LE(18),
  };
}

export function encodeInflight(d: InflightDesc): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(d.mmapSize, 0);
  b.writeBigUInt64LE(d.mmapOffset, 8);
  b.writeUInt16LE(d.numQueues, 16);
  b.writeUInt16LE(d.queueSize, 18);
  return b;
}

/** Requests whose reply is part of the protocol (not only a REPLY_ACK). */
export function hasProtocolReply(request: number): boolean {
  switch (request) {
    case Request.GET_FEATURES:
    case Request.GET_PROTOCOL_FEATURES:
    case Request.GET_VRING_BASE:
    case Request.GET_QUEUE_NUM:
    case Request.GET_CONFIG:
    case Request.GET_INFLIGHT_FD:
    case Request.GET_MAX_MEM_SLOTS:
    case Request.GET_STATUS:
      return true;
    default:
      return false;
  }
}
