// Where the bytes of inode file handles live. A handle is kept as long as its inode is known
// (tens of thousands of them), 8-40 bytes each. The addon returns each in a Buffer with an
// ArrayBuffer and a malloc'd backing store of its own (~300 B of private memory per inode), and
// Node's shared pool is no better: its 8 KiB slabs are mostly short-lived request buffers, and
// one long-lived handle keeps a whole slab (measured: 780 slabs, 6 MiB, for 20,000 inodes). So
// handles are copied into slabs of their own (docs/ARCHITECTURE.md, "Memory"). A kept handle
// holds its slab and offset, not a Buffer view: a view is a typed-array object of ~100 B, as
// much again as the bytes and the rest of the handle, for each of tens of thousands of inodes;
// `handle` makes one when it is read (opening by handle, comparing, journaling: rare).
import type { InodeHandle } from './session_base';

const SLAB_BYTES = 64 * 1024;

let slab: Buffer | null = null;
let used = 0;

/** Room for `length` bytes in the current slab: where they go. A slab is freed when no handle
 * in it is referenced any more. */
function slabRoom(length: number): number {
  if (slab === null || used + length > SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    used = 0;
  }
  const at = used;
  used += length;
  return at;
}

/** An inode's file handle, its bytes in a slab (see the header). */
export class KeptHandle implements InodeHandle {
  // Private (#): not enumerable, so a KeptHandle compares, logs and serialises as the plain
  // { mountId, handleType, handle } it stands for.
  readonly #slab: Buffer;
  readonly #at: number;
  readonly #length: number;

  constructor(readonly mountId: number, readonly handleType: number, slab: Buffer, at: number, length: number) {
    this.#slab = slab;
    this.#at = at;
    this.#length = length;
  }

  get handle(): Buffer {
    return this.#slab.subarray(this.#at, this.#at + this.#length);
  }

  /** The handle's length in bytes, without making a view of them. */
  get byteLength(): number {
    return this.#length;
  }

  /** Copies the bytes to dst[at] (a byte loop: handles are 8-40 bytes, where Buffer.copy's
   * own cost is most of it); returns the offset after them. */
  copyTo(dst: Uint8Array, at: number): number {
    const src = this.#slab;
    for (let k = this.#at, end = this.#at + this.#length; k < end; k++) dst[at++] = src[k]!;
    return at;
  }

  toJSON(): InodeHandle {
    return { mountId: this.mountId, handleType: this.handleType, handle: this.handle };
  }
}

/** A handle whose bytes are copied into the slabs (`bytes`: at most MAX_HANDLE_BYTES). */
export function keepHandle(mountId: number, handleType: number, bytes: Uint8Array): KeptHandle {
  const at = slabRoom(bytes.length);
  slab!.set(bytes, at);
  return new KeptHandle(mountId, handleType, slab!, at, bytes.length);
}

/** keepHandle of the `length` bytes at src[from], without a view of them (a new inode's handle,
 * read into a scratch buffer by native.fstatHandle). */
export function keepHandleFrom(mountId: number, handleType: number, src: Buffer, from: number, length: number): KeptHandle {
  const at = slabRoom(length);
  src.copy(slab!, at, from, from + length);
  return new KeptHandle(mountId, handleType, slab!, at, length);
}

/** A handle over bytes that stay where they are (a loaded snapshot's table, kept alive as long
 * as its handles). */
export function handleOver(mountId: number, handleType: number, buf: Buffer, at: number, length: number): KeptHandle {
  return new KeptHandle(mountId, handleType, buf, at, length);
}

/** The length of a handle's bytes, without a view of them when it is a kept one. */
export function handleLength(h: InodeHandle): number {
  return h instanceof KeptHandle ? h.byteLength : h.handle.length;
}

/** Copies a handle's bytes to dst[at]; returns the offset after them. */
export function copyHandleBytes(h: InodeHandle, dst: Buffer, at: number): number {
  return h instanceof KeptHandle ? h.copyTo(dst, at) : at + h.handle.copy(dst, at);
}
