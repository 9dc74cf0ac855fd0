// Fuzzing the request parser with random and mutated-valid requests. The only allowed outcomes
// are a well-formed FuseRequest or a FuseProtocolError(EINVAL | EIO); anything else fails with the
// seed, the iteration and the input's hex.
//
//   FUZZ_SEED=<u32>     replay a run (the seed is printed as a test comment)
//   FUZZ_SECONDS=<s>    how long to run (default 5, capped at 600)
import t from 'tap';
import { randomInt } from 'node:crypto';
import {
  FuseProtocolError, OPCODE_NAMES, parseInHeader, parseRequest, type FuseRequest, type InHeader, type ParseOptions,
} from '../../worker/fuse/protocol';
import { sampleRequest, validSamples } from './wire.test';

const EINVAL = 22;
const EIO = 5;

const seed = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) >>> 0 : randomInt(0x1_0000_0000);
const requestedSeconds = Number(process.env.FUZZ_SECONDS ?? 5);
const seconds = Number.isFinite(requestedSeconds) ? Math.min(Math.max(requestedSeconds, 0.2), 600) : 5;

/** mulberry32: small, fast, good enough to explore inputs, and reproducible from one u32. */
function prng(s: number): () => number {
  let a = s >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

const NODEID_FIELDS = new Set(['nodeid', 'newDir', 'oldNodeid', 'nodeidOut']);
const SIGNED_FIELDS = new Set(['atime', 'mtime', 'ctime']);
const KNOWN_KINDS = new Set([...OPCODE_NAMES.values(), 'UNKNOWN']);
KNOWN_KINDS.delete('CUSE_INIT');

/** Returns a description of the first invariant the parsed request breaks, or null. `argsAt`:
 * where the request's arguments (after the in-header) start in `input`. */
function invariantViolation(r: FuseRequest, h: InHeader, input: Buffer, argsAt: number): string | null {
  if (!KNOWN_KINDS.has(r.kind)) return `unknown kind ${r.kind}`;
  // READDIR offsets are opaque 64-bit directory cookies (ext4 hands out 63-bit hashes): every
  // u64 is accepted and reaches the filesystem exactly, so it can lseek straight to it.
  if ((r.kind === 'READDIR' || r.kind === 'READDIRPLUS') &&
    (typeof r.offset !== 'bigint' || r.offset !== input.readBigUInt64LE(argsAt + 8))) {
    return `readdir offset ${String(r.offset)} is not the wire cookie`;
  }
  if (r.kind === 'UNKNOWN' && OPCODE_NAMES.has(r.opcode) && r.opcode !== 4096) return `known opcode ${r.opcode} parsed as UNKNOWN`;
  if (r.kind !== 'UNKNOWN' && OPCODE_NAMES.get(h.opcode) !== r.kind) return `opcode ${h.opcode} parsed as ${r.kind}`;
  if (r.kind === 'WRITE' && h.len !== 80 + r.size + h.totalExtlen * 8) return 'WRITE size disagrees with len';
  const walk = (v: unknown, key: string): string | null => {
    if (typeof v === 'number') {
      if (Number.isNaN(v)) return NODEID_FIELDS.has(key) ? null : `${key} is NaN`;
      if (!Number.isSafeInteger(v)) return `${key}=${v} is not a safe integer`;
      if (v < 0 && !SIGNED_FIELDS.has(key)) return `${key}=${v} is negative`;
      return null;
    }
    if (typeof v === 'bigint') return v >= 0n && v < 1n << 64n ? null : `${key}=${v} outside u64`;
    if (Buffer.isBuffer(v)) {
      // (Small copies may share Node's pool ArrayBuffer with the input, so compare byte ranges.)
      const overlaps = v.buffer === input.buffer && v.length > 0 &&
        v.byteOffset < input.byteOffset + input.length && input.byteOffset < v.byteOffset + v.length;
      if (overlaps) return `${key} is a view of the input, not a copy`;
      if (key === 'value') return null;
      if (v.length === 0) return `${key} is empty`;
      if (v.includes(0)) return `${key} contains a NUL`;
      return null;
    }
    if (typeof v === 'boolean' || typeof v === 'string' || v === null) return null;
    if (Array.isArray(v)) {
      for (const item of v) { const bad = walk(item, key); if (bad) return bad; }
      return null;
    }
    if (typeof v === 'object') {
      for (const [k, x] of Object.entries(v as Record<string, unknown>)) { const bad = walk(x, k); if (bad) return bad; }
      return null;
    }
    return `${key} has type ${typeof v}`;
  };
  return walk(r, 'request');
}

t.test('fuzz parseInHeader + parseRequest', async (t) => {
  t.comment(`FUZZ_SEED=${seed} FUZZ_SECONDS=${seconds}`);
  const rand = prng(seed);
  const int = (n: number): number => Math.floor(rand() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const samples = validSamples();
  const opcodes = [...OPCODE_NAMES.keys(), 0, 7, 19, 52, 0xffffffff];
  const u32s = [0, 1, 7, 8, 39, 40, 41, 80, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
  const u64s = [0n, 1n, (1n << 53n) - 1n, 1n << 53n, 0x7fffffffffffffffn, 1n << 63n, 0xffffffffffffffffn];

  const randomBytes = (n: number): Buffer => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = int(256);
    return b;
  };

  /** Purely random input, sometimes with a plausible header. */
  const randomInput = (): Buffer => {
    const buf = randomBytes(int(4) === 0 ? int(2000) : int(160));
    if (buf.length >= 40 && rand() < 0.7) {
      buf.writeUInt32LE(rand() < 0.8 ? buf.length : int(buf.length + 64), 0);
      if (rand() < 0.8) buf.writeUInt32LE(pick(opcodes), 4);
      if (rand() < 0.8) buf.writeUInt16LE(rand() < 0.7 ? 0 : int(8), 36);
    }
    return buf;
  };

  /** A valid request with a few mutations. */
  const mutatedInput = (): Buffer => {
    const s = pick(samples);
    let buf: Buffer = sampleRequest(s);
    const payload = s.payload ?? 0;
    const mutations = 1 + int(4);
    for (let m = 0; m < mutations; m++) {
      switch (int(11)) {
        case 0: if (buf.length) buf[int(buf.length)] ^= 1 << int(8); break;
        case 1: if (buf.length) buf[int(buf.length)] = pick([0, 0x2f, 0x2e, 0x7f, 0x80, 0xff]); break;
        case 2: if (buf.length >= 44) buf.writeUInt32LE(pick(u32s), 4 * int(Math.floor(buf.length / 4))); break;
        case 3: if (buf.length >= 48) buf.writeBigUInt64LE(pick(u64s), 40 + 8 * int(Math.floor((buf.length - 40) / 8))); break;
        case 4: buf = buf.subarray(0, int(buf.length + 1)); break;
        case 5: buf = Buffer.concat([buf, rand() < 0.5 ? Buffer.alloc(1 + int(16)) : randomBytes(1 + int(16))]); break;
        case 6: if (buf.length >= 40) buf.writeUInt32LE(pick([buf.length + payload, buf.length, buf.length - 1, buf.length + 1, int(200), pick(u32s)]) >>> 0, 0); break;
        case 7: if (buf.length >= 40) buf.writeUInt16LE(pick([0, 1, 2, int(16), 0xffff]), 36); break;
        case 8: if (buf.length >= 40) buf.writeUInt32LE(pick(samples).opcode, 4); break;
        case 9: if (buf.length >= 40) buf.writeBigUInt64LE(pick(u64s), 16); break;
        case 10: // re-seal: make len consistent with the (mutated) bytes again, so parsing goes deep
          if (buf.length >= 40) buf.writeUInt32LE(buf.length + (buf.readUInt32LE(4) === s.opcode ? payload : 0), 0);
          break;
      }
    }
    return buf;
  };

  let iterations = 0;
  let parsed = 0;
  let rejected = 0;
  const kindsParsed = new Set<string>();
  const deadline = Date.now() + seconds * 1000;
  let failure: string | null = null;

  while (failure === null) {
    if ((iterations & 255) === 0 && Date.now() >= deadline) break;
    const mode = int(10);
    const input = mode < 3 ? randomInput() : mutatedInput();
    const options: ParseOptions = { setxattrExt: rand() < 0.5 };
    const offset = mode === 9 ? int(8) : 0;
    const buf = offset === 0 ? input : Buffer.concat([randomBytes(offset), input]);
    iterations++;
    try {
      let header: InHeader;
      try {
        header = parseInHeader(buf, offset);
      } catch (e) {
        if (e instanceof FuseProtocolError && e.errno === EIO && buf.length - offset < 40) { rejected++; continue; }
        throw e;
      }
      const r = parseRequest(header, buf.subarray(offset + 40), options);
      const bad = invariantViolation(r, header, buf, offset + 40);
      if (bad !== null) failure = `invariant broken: ${bad}`;
      parsed++;
      kindsParsed.add(r.kind);
    } catch (e) {
      if (e instanceof FuseProtocolError && (e.errno === EINVAL || e.errno === EIO)) { rejected++; continue; }
      failure = `unexpected ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`;
    }
    if (failure !== null) {
      t.fail(`${failure}\n  FUZZ_SEED=${seed} iteration=${iterations} setxattrExt=${options.setxattrExt} offset=${offset}\n  input=${buf.toString('hex')}`);
    }
  }

  t.comment(`${iterations} inputs: ${parsed} parsed, ${rejected} rejected, ${kindsParsed.size} kinds reached`);
  t.equal(failure, null, 'no input produced anything but a FuseRequest or a FuseProtocolError');
  if (failure === null) {
    // Coverage of the fuzzer itself (meaningless after an early stop, hence only when it ran out).
    t.ok(iterations >= 1000, `ran ${iterations} iterations`);
    t.ok(parsed > iterations / 50, 'a fair share of inputs parse (the fuzzer reaches past the length checks)');
    t.ok(rejected > iterations / 50, 'a fair share of inputs are rejected');
    t.ok(kindsParsed.size >= 40, `mutations still reach most opcodes (${kindsParsed.size})`);
  }
});
