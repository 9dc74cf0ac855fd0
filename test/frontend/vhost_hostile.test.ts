// Hostile memory tables and vring addresses at the vhost-user socket level: a refused control
// message must leave the backend exactly as it was (old memory table, old vring config, and a
// journaled state a successor can load), and guest memory must never be mapped past the end of
// its fd (an access there is SIGBUS). Runs against both backends; the C virtiofsd (the
// reference, not the standard) checks less: what it answers is recorded as a comment, and only
// ours is held to the stricter outcome.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native, C } from '../../shared/native';
import { queryStatus } from '../../cli/status';
import { selectedBackends, type BackendKind } from './backend';
import { openSession, probeServing, waitFor, type Session } from './helpers';
import { Flag, Req, VhostUserFrontend } from './vhost_user';
import { VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from './virtqueue';
import * as F from './fuse_proto';

const MiB = 1024 * 1024;
const ROOT = F.FUSE_ROOT_ID;

/** Sends a message with NEED_REPLY and describes the answer ("ack 0", "ack 1", "no reply ..."). */
async function ackOf(fe: VhostUserFrontend, request: number, payload: Buffer, fds: number[]): Promise<string> {
  fe.sendRawMessage(request, payload, fds, { flags: Flag.VERSION | Flag.NEED_REPLY });
  try {
    const m = await fe.readMessage(5_000);
    if (m.request !== request) return `reply for request ${m.request}`;
    return m.payload.length === 8 ? `ack ${m.payload.readBigUInt64LE(0)}` : `reply of ${m.payload.length} bytes`;
  } catch (e) {
    return `no reply (${(e as Error).message})`;
  }
}

interface RegionSpec { gpa: bigint; size: number; uva: bigint; mmapOffset: number }

const memTable = (regions: RegionSpec[]): Buffer => VhostUserFrontend.memTable({ regions });

/** Ours gets a short state dir of its own (keeper.sock path limit), so the test can find the worker. */
async function session(t: Test, kind: BackendKind): Promise<{ s: Session; stateDir: string | null }> {
  let stateDir: string | null = null;
  if (kind === 'ours') {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
    t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
    stateDir = d;
  }
  const s = await openSession(t, kind, { extraArgs: stateDir ? ['--state-dir', stateDir] : [], setup: (d) => fs.writeFileSync(path.join(d, 'f'), 'x') });
  return { s, stateDir };
}

/** A GETATTR of the root whose header descriptor is at `headerGpa` (never touched by us). */
function getattrAt(s: Session, headerGpa: bigint): number {
  const q = s.fe.queues[1]!;
  const rep = s.fe.mem!.alloc(F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE);
  const [a, b] = q.reserveSlots(2) as [number, number];
  q.submitRaw([
    { slot: a, addr: headerGpa, len: F.IN_HEADER_SIZE + 16, flags: VRING_DESC_F_NEXT, next: b },
    { slot: b, addr: rep, len: F.OUT_HEADER_SIZE + F.ATTR_OUT_SIZE, flags: VRING_DESC_F_WRITE, next: 0 },
  ], a, { slots: [a, b], owned: [rep] });
  return a;
}

/** Kills ours' worker by pid and waits until the keeper has a verdict on its successor. */
async function killWorker(stateDir: string): Promise<{ state: string; error: string | null }> {
  const pid = queryStatus(stateDir).worker.pid;
  if (pid === null) throw new Error('no worker running');
  process.kill(pid, 'SIGKILL');
  const st = await waitFor(() => {
    const q = queryStatus(stateDir);
    return (q.worker.pid !== null && q.worker.pid !== pid && q.worker.state === 'running') || q.worker.state === 'failed' ? q : null;
  }, 'a successor (or the keeper giving up)', 20_000);
  return { state: st!.worker.state, error: st!.keeper.error };
}

for (const kind of selectedBackends()) {
  t.test(`${kind}: a memory region larger than its memfd, then a request past the memfd's end`, async (t) => {
    const { s, stateDir } = await session(t, kind);
    const mem = s.fe.mem!;
    const small = native.memfdCreate('vfsk-test-small', C.MFD_ALLOW_SEALING!);
    t.teardown(() => native.close(small));
    native.ftruncate(small, 1 * MiB);
    // The real table plus a 16 MiB region at 8 GiB that only 1 MiB of memfd backs.
    const extra: RegionSpec = { gpa: 0x2_0000_0000n, size: 16 * MiB, uva: 0x7f9a_0000_0000n, mmapOffset: 0 };
    const table = memTable([...mem.regions, extra]);
    const r = await ackOf(s.fe, Req.SET_MEM_TABLE, table, [...mem.regions.map(() => mem.fd), small]);
    t.comment(`${kind} answered SET_MEM_TABLE with a region past its memfd's end: ${r}`);
    if (kind === 'ours') t.match(r, /^ack [1-9]/, 'ours nacks it');
    // 8 MiB into the region: past the memfd's end (a mapping there faults).
    const head = getattrAt(s, extra.gpa + BigInt(8 * MiB));
    const used = await s.fe.queues[1]!.waitUsed(head, kind === 'ours' ? 15_000 : 3_000).then((u) => `returned with used.len ${u.len}`, (e: Error) => `not returned (${e.message.slice(0, 80)})`);
    const after = await probeServing(s);
    t.comment(`${kind}: the request past the end was ${used}; afterwards ${after.why}`);
    if (kind === 'ours') {
      t.match(used, /^returned with used.len 0$/, 'ours returns it unanswered (not in guest memory)');
      t.ok(after.ok, `the old table still serves (${after.why})`);
      const back = await ackOf(s.fe, Req.SET_MEM_TABLE, VhostUserFrontend.memTable(mem), mem.regions.map(() => mem.fd));
      t.equal(back, 'ack 0', 'a valid table is accepted afterwards');
      t.ok((await probeServing(s)).ok, 'and serves');
      t.equal(queryStatus(stateDir!).worker.restarts, 0, 'no worker died');
    } else {
      t.pass(`C virtiofsd recorded: ${r}; ${used}; ${after.why}`);
    }
  });

  t.test(`${kind}: a refused SET_MEM_TABLE (overlapping regions) leaves the old table serving`, async (t) => {
    const { s, stateDir } = await session(t, kind);
    const mem = s.fe.mem!;
    // Two overlapping regions far from the real ones: a backend that drops its old table before
    // validating the new one keeps the first and loses the rings.
    const table = memTable([
      { gpa: 0x3_0000_0000n, size: 2 * MiB, uva: 0x7fa0_0000_0000n, mmapOffset: 0 },
      { gpa: 0x3_0010_0000n, size: 2 * MiB, uva: 0x7fb0_0000_0000n, mmapOffset: 0 },
    ]);
    const r = await ackOf(s.fe, Req.SET_MEM_TABLE, table, [mem.fd, mem.fd]);
    t.comment(`${kind} answered SET_MEM_TABLE with overlapping regions: ${r}`);
    const alive = await probeServing(s);
    t.comment(`${kind}: afterwards ${alive.why}`);
    if (kind !== 'ours') {
      t.pass(`C virtiofsd recorded: ${r}; ${alive.why}`);
      return;
    }
    t.match(r, /^ack [1-9]/, 'ours nacks it');
    t.ok(alive.ok, `the old table still serves the next kick (${alive.why})`);
    t.equal((await s.fuse.getattr(ROOT)).attr.ino, BigInt(fs.statSync(s.shared).ino), 'with the right memory');
    // The journaled table is the old one too: a successor serves from it.
    const k = await killWorker(stateDir!);
    t.equal(k.state, 'running', `the successor resumes (${k.error ?? 'no error'})`);
    t.ok((await probeServing(s)).ok, 'and serves');
    t.equal(queryStatus(stateDir!).worker.restarts, 1, 'only the kill restarted it');
  });

  t.test(`${kind}: a refused SET_VRING_ADDR above 2^53 leaves the saved state usable`, async (t) => {
    const { s, stateDir } = await session(t, kind);
    const q = s.fe.queues[1]!;
    const base = await s.fe.stopQueue(1);
    const r = await ackOf(s.fe, Req.SET_VRING_ADDR, VhostUserFrontend.vringAddr(1, 1n << 60n, q.usedUva, q.availUva), []);
    t.comment(`${kind} answered SET_VRING_ADDR with a descriptor table at 2^60: ${r}`);
    if (kind === 'ours') {
      t.match(r, /^ack [1-9]/, 'ours nacks it');
      // The successor loads the state journaled after the nack.
      const k = await killWorker(stateDir!);
      t.equal(k.state, 'running', `the successor resumes (${k.error ?? 'no error'})`);
    }
    let restart = 'restarted';
    if (!s.fe.isClosedByPeer && !s.backend.exited) {
      await s.fe.restartQueue(1, base).catch((e: Error) => { restart = `restart failed: ${e.message}`; });
    } else {
      restart = 'connection gone';
    }
    const alive = await probeServing(s);
    t.comment(`${kind}: queue 1 ${restart}; afterwards ${alive.why}`);
    if (kind === 'ours') {
      t.equal(restart, 'restarted', 'the queue restarts with a proper SET_VRING_ADDR');
      t.ok(alive.ok, `and serves (${alive.why})`);
    } else {
      t.pass(`C virtiofsd recorded: ${r}; ${restart}; ${alive.why}`);
    }
  });
}
