// The state file: an append-only journal of records in an mmapped file on tmpfs.
// tmpfs outlives the worker process, so no fsync is needed: a record is durable once its bytes
// are in the mapping and the 8-byte commit offset has been published with a release store.
// Records are staged (encoded in place, no commit) and committed as a group: one release store
// makes every staged record durable at once (the worker commits once per used-ring publish).
// A record past the commit offset (a torn tail) is ignored on load; a record before it that
// fails its CRC means the file is corrupt, which is a hard, clearly reported error.
//
// Layout: header page { magic "VFSKSTAT", u32 format version, u32 schema version,
// u64 committed end, u64 generation, u32 min reader schema, u8 length + the writer's version },
// then records { u32 length, u32 crc32, payload }. (Files written before the last two fields
// have zeros there: min reader = their schema, writer unrecorded.) Which schemas a worker reads
// is the compatibility rule in docs/ARCHITECTURE.md, "State schema compatibility".
import * as fs from 'node:fs';
import * as zlib from 'node:zlib';
import { Packr, RESERVE_START_SPACE } from 'msgpackr';
import { native, C, STAT } from '../../shared/native';
import { at } from '../../shared/pinned_dirs';
import { StateError } from '../../shared/errors';

export const STATE_MAGIC = Buffer.from('VFSKSTAT');
export const STATE_FORMAT_VERSION = 1;
export const DATA_START = 4096;
const COMMIT_OFFSET = 16;
const GENERATION_OFFSET = 24;
const MIN_READER_OFFSET = 32;
const WRITER_OFFSET = 36;
const MAX_WRITER_LENGTH = 64;
const RECORD_HEADER = 8;
const INITIAL_CAPACITY = 1 << 20;
/** A single record larger than this is a bug or a corrupt length field. */
export const MAX_RECORD_SIZE = 64 << 20;

export class StateFileError extends StateError {
  constructor(message: string, readonly path: string) {
    super(`${path}: ${message}`);
  }
}

/** Who wrote a state file and who may read it (the header's compatibility fields). */
export interface SchemaStamp {
  /** The schema its records are in. */
  schema: number;
  /** The oldest reader schema that reads everything in it correctly (<= schema). */
  minReader: number;
  /** The writer's package version ('' in files from before it was recorded). */
  writer: string;
}

/** A reader of schema `schema` (this build's) and its version, for the compatibility rule. */
export interface SchemaReader {
  schema: number;
  version: string;
}

/** The compatibility rule: a reader of schema R reads every schema from 1 to R, and a newer
 * file only if its writer declared it readable by R (minReader <= R). */
export function canRead(reader: number, file: { schema: number; minReader: number }): boolean {
  return (file.schema >= 1 && file.schema <= reader) || (file.minReader >= 1 && file.minReader <= reader);
}

/** A state file this build must not read (newer schema not declared readable by ours, or a
 * record it does not know): names both versions, never a silent misread. */
export class StateVersionError extends StateFileError {
  constructor(readonly file: SchemaStamp, readonly reader: SchemaReader, path: string, detail?: string) {
    super(`${describeWriter(file)}; this worker (virtiofs-keeper ${reader.version}) reads state schemas 1 to ${reader.schema}${detail ? ` (${detail})` : ''}: refusing it rather than misreading it`, path);
  }
}

export function describeWriter(f: SchemaStamp): string {
  return `state written by ${f.writer ? `virtiofs-keeper ${f.writer}` : 'an older virtiofs-keeper'} in schema ${f.schema}${f.minReader < f.schema ? ` (readable from schema ${f.minReader})` : ''}`;
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'bigint' });

/** msgpackr packs into one buffer that it keeps for every later pack, grown to 4x the largest
 * value packed so far (a session snapshot: 3.7 MiB of private memory after 20,000 inodes, for
 * the life of the worker). Beyond this size a fresh small one replaces it; the large one lives
 * on only as long as the view just returned (docs/ARCHITECTURE.md, "Memory"). */
const PACK_BUFFER_KEEP = 64 * 1024;

/** `reserve` (0-255): bytes left before the encoded value, for the caller to fill (a record
 * tag), so that a large value is not copied once more to put a byte in front of it. */
export function encodeRecord(value: unknown, reserve = 0): Buffer {
  const out = reserve > 0 ? packr.pack(value, RESERVE_START_SPACE | (reserve & 0xff)) : packr.pack(value);
  // Later packs write after `out` or into the new buffer: `out` stays intact either way.
  if (out.buffer.byteLength > PACK_BUFFER_KEEP) packr.useBuffer(Buffer.allocUnsafeSlow(8192));
  return out;
}

export function decodeRecord(bytes: Buffer): unknown {
  return packr.unpack(bytes);
}

export class StateJournal {
  private fd: number;
  private map: ArrayBuffer;
  private bytes: Uint8Array;
  private view: DataView;
  private buf: Buffer;
  /** Committed end (what a reader after a crash sees). */
  private end: number;
  /** End of the staged records (>= end). */
  private staged: number;
  private closed = false;
  private mapObserver: ((map: ArrayBuffer | null) => void) | null = null;

  private constructor(readonly path: string, fd: number, map: ArrayBuffer, end: number, private schema: number,
    private stampNow: SchemaStamp = { schema, minReader: schema, writer: '' }) {
    this.fd = fd;
    this.map = map;
    this.bytes = new Uint8Array(map);
    this.view = new DataView(map);
    this.buf = Buffer.from(map);
    this.end = end;
    this.staged = end;
  }

  /** Creates (or atomically replaces) the state file. `initialPayloads` are committed before the
   * rename, so compaction (a snapshot record replacing a long journal) is crash-safe. */
  static create(path: string, schemaVersion: number, generation = 0n, initialPayloads: Buffer[] = [],
    compat: { minReader: number; writer: string } = { minReader: schemaVersion, writer: '' }): StateJournal {
    // Through the state directory's fd once the worker is confined (shared/pinned_dirs.ts).
    const { dirFd, name } = at(path);
    const tmp = `${name}.new`;
    const fd = native.openat(dirFd, tmp, C.O_RDWR! | C.O_CREAT! | C.O_TRUNC! | C.O_CLOEXEC!, 0o600);
    let mapped: ArrayBuffer | null = null;
    let journal: StateJournal | null = null;
    try {
      // Whatever the process umask (the filesystem layer sets the guest's), the next worker
      // must be able to open this file.
      fs.fchmodSync(fd, 0o600);
      fs.ftruncateSync(fd, INITIAL_CAPACITY);
      const map = native.mmap(fd, INITIAL_CAPACITY, 0, true);
      mapped = map;
      const bytes = new Uint8Array(map);
      bytes.set(STATE_MAGIC, 0);
      const view = new DataView(map);
      view.setUint32(8, STATE_FORMAT_VERSION, true);
      view.setUint32(12, schemaVersion, true);
      view.setBigUint64(GENERATION_OFFSET, generation, true);
      view.setUint32(MIN_READER_OFFSET, compat.minReader, true);
      const writer = Buffer.from(compat.writer, 'latin1').subarray(0, MAX_WRITER_LENGTH);
      bytes[WRITER_OFFSET] = writer.length;
      bytes.set(writer, WRITER_OFFSET + 1);
      native.storeReleaseU64(map, COMMIT_OFFSET, BigInt(DATA_START));
      journal = new StateJournal(path, fd, map, DATA_START, schemaVersion, { schema: schemaVersion, ...compat, writer: writer.toString('latin1') });
      for (const p of initialPayloads) journal.appendEncoded(p);
      native.renameat2(dirFd, tmp, dirFd, name, 0);
      return journal;
    } catch (e) {
      // A failed create (a compaction at EMFILE/ENOMEM) leaves neither a mapping nor an fd.
      if (journal !== null) journal.close();
      else {
        if (mapped !== null) native.munmap(mapped);
        fs.closeSync(fd);
      }
      throw e;
    }
  }

  /** The schema the header says (raised by raiseSchema). */
  get schemaVersion(): number {
    return this.schema;
  }

  get stamp(): SchemaStamp {
    return this.stampNow;
  }

  /** Says in the header that the file now holds records of `schema`, readable from
   * `minReader`: before such a record is staged, so that a reader never finds one in a file
   * that claims an older schema. Never lowers (a new file starts lower). */
  raiseSchema(schema: number, minReader: number): void {
    if (schema <= this.schema) return;
    this.view.setUint32(12, schema, true);
    this.view.setUint32(MIN_READER_OFFSET, minReader, true);
    this.schema = schema;
    this.stampNow = { ...this.stampNow, schema, minReader };
  }

  /** Opens an existing state file; validates the header. `schemaVersions`: those the caller
   * can read, or a reader to which the compatibility rule (canRead) applies. */
  static open(path: string, schemaVersions: number | readonly number[] | SchemaReader): StateJournal {
    const reader = typeof schemaVersions === 'object' && !Array.isArray(schemaVersions) ? schemaVersions as SchemaReader : null;
    const readable = typeof schemaVersions === 'number' ? [schemaVersions] : reader === null ? schemaVersions as readonly number[] : [];
    const { dirFd, name } = at(path);
    const fd = native.openat(dirFd, name, C.O_RDWR! | C.O_CLOEXEC!, 0);
    try {
      const size = fs.fstatSync(fd).size;
      if (size < DATA_START) throw new StateFileError(`file is ${size} bytes, shorter than its header`, path);
      const map = native.mmap(fd, size, 0, true);
      const bytes = new Uint8Array(map);
      if (!Buffer.from(bytes.subarray(0, 8)).equals(STATE_MAGIC)) {
        native.munmap(map);
        throw new StateFileError('not a virtiofs-keeper state file (bad magic)', path);
      }
      const view = new DataView(map);
      const format = view.getUint32(8, true);
      const schema = view.getUint32(12, true);
      const minReaderField = view.getUint32(MIN_READER_OFFSET, true);
      const writerLength = Math.min(bytes[WRITER_OFFSET]!, MAX_WRITER_LENGTH);
      const stamp: SchemaStamp = {
        schema, minReader: minReaderField === 0 ? schema : Math.min(minReaderField, schema),
        writer: Buffer.from(bytes.subarray(WRITER_OFFSET + 1, WRITER_OFFSET + 1 + writerLength)).toString('latin1').replace(/[^\x21-\x7e]/g, '?'),
      };
      if (reader !== null && format === STATE_FORMAT_VERSION && !canRead(reader.schema, stamp)) {
        native.munmap(map);
        throw new StateVersionError(stamp, reader, path);
      }
      if (format !== STATE_FORMAT_VERSION || (reader === null && !readable.includes(schema))) {
        native.munmap(map);
        throw new StateFileError(`unsupported version (format ${format}, schema ${schema}; this build reads format ${STATE_FORMAT_VERSION}, schema ${readable.join(' or ')})`, path);
      }
      const committed = Number(native.loadAcquireU64(map, COMMIT_OFFSET));
      if (!(committed >= DATA_START && committed <= size)) {
        native.munmap(map);
        throw new StateFileError(`commit offset ${committed} outside the file (${size} bytes)`, path);
      }
      return new StateJournal(path, fd, map, committed, schema, stamp);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  get generation(): bigint {
    return this.view.getBigUint64(GENERATION_OFFSET, true);
  }

  get committedBytes(): number {
    return this.end;
  }

  /** committedBytes with the records the addon committed after ours (not yet taken). */
  get committedBytesInFile(): number {
    return this.closed ? this.end : this.committedInFile();
  }

  /** Every committed record decoded as msgpack, in order. Throws StateFileError on a corrupt
   * record. */
  records(): unknown[] {
    return this.payloads().map((payload, i) => {
      try {
        return decodeRecord(payload);
      } catch (e) {
        throw new StateFileError(`record #${i} does not decode: ${(e as Error).message}`, this.path);
      }
    });
  }

  /** The file's (st_dev, st_ino): a file replaced by a compaction or a fresh start is another
   * inode (and the one we hold stays allocated while we hold it, so its number is not reused). */
  identity(): string {
    const st = Buffer.alloc(STAT.SIZE);
    native.fstatat(this.fd, '', C.AT_EMPTY_PATH!, st);
    return `${st.readBigUInt64LE(STAT.dev)}:${st.readBigUInt64LE(STAT.ino)}`;
  }

  /** The (st_dev, st_ino) of whatever file is at `path` now, or null if none. */
  static identityAt(path: string): string | null {
    const { dirFd, name } = at(path);
    const st = Buffer.alloc(STAT.SIZE);
    try {
      native.fstatat(dirFd, name, C.AT_SYMLINK_NOFOLLOW!, st);
    } catch {
      return null;
    }
    return `${st.readBigUInt64LE(STAT.dev)}:${st.readBigUInt64LE(STAT.ino)}`;
  }

  /** A reader of a file another process writes: takes the commit offset it published since
   * (mapping the file again if it grew). Returns the new committed end. */
  refresh(): number {
    const committed = Number(native.loadAcquireU64(this.map, COMMIT_OFFSET));
    if (committed > this.map.byteLength) {
      const size = fs.fstatSync(this.fd).size;
      if (committed > size) throw new StateFileError(`commit offset ${committed} outside the file (${size} bytes)`, this.path);
      const map = native.mmap(this.fd, size, 0, true);
      native.munmap(this.map);
      this.map = map;
      this.bytes = new Uint8Array(map);
      this.view = new DataView(map);
      this.buf = Buffer.from(map);
    }
    if (committed < this.end) throw new StateFileError(`commit offset went back from ${this.end} to ${committed}`, this.path);
    this.end = committed;
    this.staged = committed;
    return committed;
  }

  /** Every committed record's payload bytes (copies), in order, from offset `from` (a record
   * boundary: DATA_START or an end this journal returned). Throws StateFileError on a corrupt
   * record. */
  payloads(from = DATA_START): Buffer[] {
    const out: Buffer[] = [];
    let pos = from;
    while (pos < this.end) {
      if (pos + RECORD_HEADER > this.end) throw new StateFileError(`truncated record header at ${pos}`, this.path);
      const len = this.view.getUint32(pos, true);
      const crc = this.view.getUint32(pos + 4, true);
      if (len > MAX_RECORD_SIZE || pos + RECORD_HEADER + len > this.end) {
        throw new StateFileError(`record at ${pos} claims ${len} bytes past the commit offset`, this.path);
      }
      const payload = Buffer.from(this.bytes.subarray(pos + RECORD_HEADER, pos + RECORD_HEADER + len));
      if (zlib.crc32(payload) !== crc) throw new StateFileError(`record at ${pos} fails its checksum`, this.path);
      out.push(payload);
      pos += RECORD_HEADER + len;
    }
    return out;
  }

  /** Appends one record and commits it (durable against a worker crash on return). */
  append(value: unknown): void {
    this.appendEncoded(encodeRecord(value));
  }

  appendEncoded(payload: Buffer): void {
    this.stage(payload.length, (buf, at) => payload.copy(buf, at));
    this.commit();
  }

  /** Encodes one record in place after the staged ones, without committing it. `fill` writes
   * at most `maxLength` payload bytes into `buf` at `at` and returns how many it wrote. */
  stage(maxLength: number, fill: (buf: Buffer, at: number) => number): void {
    if (this.closed) throw new StateFileError('journal is closed', this.path);
    if (this.staged === this.end) this.takeForeignCommits();
    if (maxLength > MAX_RECORD_SIZE) throw new StateFileError(`record of ${maxLength} bytes is too large`, this.path);
    const start = this.staged;
    if (start + RECORD_HEADER + maxLength > this.map.byteLength) this.grow(start + RECORD_HEADER + maxLength);
    const at = start + RECORD_HEADER;
    const len = fill(this.buf, at);
    if (!(len >= 0 && len <= maxLength)) throw new Error(`record encoder wrote ${len} bytes of at most ${maxLength}`);
    this.view.setUint32(start, len, true);
    this.view.setUint32(start + 4, zlib.crc32(this.buf.subarray(at, at + len)), true);
    this.staged = at + len;
  }

  /** Records the addon committed after ours (the intents it journals before a natively served
   * CREATE, MKDIR, UNLINK or RMDIR: native/src/fast_fuse.cc WriteIntent, appended at our committed end while
   * nothing of ours was staged): ours go after them. */
  private takeForeignCommits(): void {
    const committed = this.committedInFile();
    if (committed === this.end) return;
    if (committed < this.end || committed > this.map.byteLength) {
      throw new StateFileError(`commit offset moved from ${this.end} to ${committed} under the writer`, this.path);
    }
    this.end = this.staged = committed;
    // The addon raises the schema before a TAG_LOOKUPS record of its own (as raiseSchema).
    const schema = this.view.getUint32(12, true);
    if (schema > this.schema) {
      this.schema = schema;
      this.stampNow = { ...this.stampNow, schema, minReader: this.view.getUint32(MIN_READER_OFFSET, true) };
    }
  }

  /** The header's commit offset (ours, or past it the addon's). */
  private committedInFile(): number {
    return this.view.getUint32(COMMIT_OFFSET, true) + this.view.getUint32(COMMIT_OFFSET + 4, true) * 2 ** 32;
  }

  /** Told of every mapping of the journal: the new one after a grow, null before it is
   * unmapped (the addon writes intents into it: FastFuseHandle.setJournal). */
  set onMapped(fn: ((map: ArrayBuffer | null) => void) | null) {
    this.mapObserver = fn;
    fn?.(this.closed ? null : this.map);
  }

  /** True when records are staged but not committed. */
  get hasStaged(): boolean {
    return this.staged !== this.end;
  }

  /** Makes every staged record durable with one release store. */
  commit(): void {
    if (this.staged === this.end) return;
    // The addon appends only while nothing of ours is staged (native/src/fast_fuse.cc
    // WriteIntent): had it written meanwhile, our staged records overwrote its own.
    if (this.committedInFile() !== this.end) throw new StateFileError(`a record was committed under our staged ones (at ${this.end})`, this.path);
    this.end = this.staged;
    native.storeReleaseU64(this.map, COMMIT_OFFSET, BigInt(this.end));
  }

  private grow(need: number): void {
    let cap = this.map.byteLength;
    while (cap < need) cap *= 2;
    fs.ftruncateSync(this.fd, cap);
    // Map the new size before unmapping the old: if mmap fails (ENOMEM) the journal is intact.
    const map = native.mmap(this.fd, cap, 0, true);
    this.mapObserver?.(map);
    native.munmap(this.map);
    this.map = map;
    this.bytes = new Uint8Array(this.map);
    this.view = new DataView(this.map);
    this.buf = Buffer.from(this.map);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.mapObserver?.(null);
    native.munmap(this.map);
    fs.closeSync(this.fd);
  }
}
