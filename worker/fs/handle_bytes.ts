// Where the bytes of inode file handles live. A handle is kept as long as its inode is known
// (tens of thousands of them), 8-40 bytes each. The addon returns each in a Buffer with an
// ArrayBuffer and a malloc'd backing store of its own (~300 B of private memory per inode), and
// Node's shared pool is no better: its 8 KiB slabs are mostly short-lived request buffers, and
// one long-lived handle keeps a whole slab (measured: 780 slabs, 6 MiB, for 20,000 inodes). So
// handles are copied into slabs of their own (docs/ARCHITECTURE.md, "Memory").

const SLAB_BYTES = 64 * 1024;

let slab: Buffer | null = null;
let used = 0;

/** A copy of `bytes` (a file handle, at most MAX_HANDLE_BYTES) in the handle slabs. A slab is
 * freed when no handle in it is referenced any more. */
export function keepHandleBytes(bytes: Uint8Array): Buffer {
  if (slab === null || used + bytes.length > SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    used = 0;
  }
  slab.set(bytes, used);
  const out = slab.subarray(used, used + bytes.length);
  used += bytes.length;
  return out;
}
