// Writes a journal record as the addon writes its intents (native/src/fast_fuse.cc
// WriteIntent): at the committed end of the journal's mapping (worker/state/journal.ts layout:
// u32 length, u32 crc32, payload), then a release store of the commit offset.
import * as zlib from 'node:zlib';
import { native } from '../../shared/native';

const COMMIT_OFFSET = 16;

export function appendAsAddon(map: ArrayBuffer, payload: Buffer): void {
  const end = Number(native.loadAcquireU64(map, COMMIT_OFFSET));
  const b = Buffer.from(map);
  b.writeUInt32LE(payload.length, end);
  b.writeUInt32LE(zlib.crc32(payload), end + 4);
  payload.copy(b, end + 8);
  native.storeReleaseU64(map, COMMIT_OFFSET, BigInt(end + 8 + payload.length));
}
