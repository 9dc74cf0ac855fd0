// The keeper in-process, driven over a socketpair as a worker would drive keeper.sock: the fd
// store, the fetch, control-reply forwarding, and what it does with malformed and out-of-order
// messages (refuse the message, close its fds, log at a bounded rate, keep serving). The keeper
// runs in systemd mode (no worker command), so nothing is spawned; its logs go to a file.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native, C, STAT } from '../../shared/native';
import { encodeToKeeper, parseFromKeeper, SCM_MAX_FD, MAX_MESSAGE_SIZE, type FromKeeper, type ToKeeper } from '../../shared/keeper_protocol';
import { waitFor, openFds } from '../frontend/helpers';

const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-keeper-log-'));
const logFile = path.join(logDir, 'keeper.log');
const logFd = fs.openSync(logFile, 'a');
process.env.VFSK_LOG_FD = String(logFd);
// Imported after VFSK_LOG_FD is set: the root logger reads it once.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Keeper } = require('../../keeper/keeper') as typeof import('../../keeper/keeper');
t.teardown(() => { fs.closeSync(logFd); fs.rmSync(logDir, { recursive: true, force: true }); });

const buf = Buffer.alloc(MAX_MESSAGE_SIZE);

type TestLike = { teardown(fn: () => unknown): void };

interface Harness {
  keeper: InstanceType<typeof Keeper>;
  /** Our end of the keeper.sock connection. */
  fd: number;
  send(msg: ToKeeper | Buffer, fds?: number[]): void;
  /** The next message from the keeper (polls: the keeper answers on its event loop). */
  receive(): Promise<{ msg: FromKeeper; fds: number[] }>;
  /** Whether the keeper answers a status query (it is alive and serving this connection). */
  alive(): Promise<boolean>;
}

async function startKeeper(t: TestLike): Promise<Harness> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-keeper-'));
  fs.mkdirSync(path.join(dir, 'shared'));
  const keeper = new Keeper({
    stateDir: path.join(dir, 'state'), sharedDir: path.join(dir, 'shared'), socketPath: path.join(dir, 'vhost.sock'),
    cache: 'auto', requestQueues: 1, keepListening: false, xattr: false, maxLockWaits: 64,
    workerCommand: null, standbyCommand: null,
  });
  keeper.start();
  const [ours, theirs] = native.socketpair('seqpacket');
  keeper.adoptPeer(theirs, process.pid);
  t.teardown(async () => {
    native.close(ours);
    await keeper.stop('test over');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const h: Harness = {
    keeper, fd: ours,
    send(msg, fds = []) {
      const data = Buffer.isBuffer(msg) ? msg : encodeToKeeper(msg);
      if (native.sendMsg(ours, data, fds) !== data.length) throw new Error('short send');
    },
    async receive() {
      const r = (await waitFor(() => native.recvMsg(ours, buf, SCM_MAX_FD), 'a message from the keeper'))!;
      return { msg: parseFromKeeper(buf.subarray(0, r.bytes), r.fds.length), fds: r.fds };
    },
    async alive() {
      h.send({ type: 'statusQuery' });
      const { msg } = await h.receive();
      return msg.type === 'status' && msg.status.keeper.pid === process.pid;
    },
  };
  return h;
}

function inodeOf(fd: number): bigint {
  const st = Buffer.alloc(STAT.SIZE);
  native.fstatat(fd, '', C.AT_EMPTY_PATH!, st);
  return st.readBigUInt64LE(STAT.ino);
}

/** Fetches the whole fd set as a successor does; returns name → fd (ours to close). */
async function fetchAll(h: Harness): Promise<Map<string, number>> {
  h.send({ type: 'fetch' });
  const out = new Map<string, number>();
  for (;;) {
    const { msg, fds } = await h.receive();
    if (msg.type !== 'fdSet') throw new Error(`unexpected ${msg.type}`);
    msg.names.forEach((n, i) => out.set(n, fds[i]!));
    if (!msg.more) return out;
    h.send({ type: 'fetchNext' });
  }
}

/** The same with a window: the keeper sends up to `window` batches per request (FETCH_WINDOW),
 * each saying so; returns the set and how many requests it took. */
async function fetchWindowed(h: Harness, window: number): Promise<{ fds: Map<string, number>; requests: number }> {
  h.send({ type: 'fetch', window });
  let requests = 1;
  let left = window;
  const out = new Map<string, number>();
  for (;;) {
    const { msg, fds } = await h.receive();
    if (msg.type !== 'fdSet') throw new Error(`unexpected ${msg.type}`);
    if (msg.window !== window) throw new Error(`FDSET says window ${msg.window}`);
    msg.names.forEach((n, i) => out.set(n, fds[i]!));
    if (!msg.more) return { fds: out, requests };
    if (--left === 0) {
      h.send({ type: 'fetchNext' });
      requests++;
      left = window;
    }
  }
}

function closeAll(fds: Iterable<number>): void {
  for (const fd of fds) native.close(fd);
}

t.test('a windowed fetch sends several batches per request, and the whole set', async (t) => {
  const h = await startKeeper(t);
  const files = Array.from({ length: 1100 }, (_, i) => native.memfdCreate(`w${i}`, 0));
  for (let i = 0; i < files.length; i += 200) h.send({ type: 'store', names: files.slice(i, i + 200).map((_, k) => `file.${i + k}`) }, files.slice(i, i + 200));
  closeAll(files);
  const { fds, requests } = await fetchWindowed(h, 2);
  t.equal([...fds.keys()].filter((n) => n.startsWith('file.')).length, 1100, 'every fd (5 batches of at most 253)');
  t.equal(requests, 3, 'two batches per request: FDFETCH and two FDFETCHNEXT');
  closeAll(fds.values());
  const again = await fetchWindowed(h, 8);
  t.same([...again.fds.keys()].sort(), [...fds.keys()].sort());
  t.equal(again.requests, 1, 'one request for the whole set');
  closeAll(again.fds.values());
});

t.test('stores, fetches in batches and removes fds', async (t) => {
  const before = openFds().length;
  const h = await startKeeper(t);
  const files = Array.from({ length: 300 }, (_, i) => native.memfdCreate(`f${i}`, 0));
  const names = files.map((_, i) => `file.${i}`);
  // Two messages: the set then spans two fetch batches (SCM_MAX_FD per message).
  h.send({ type: 'store', names: names.slice(0, 200) }, files.slice(0, 200));
  h.send({ type: 'store', names: names.slice(200) }, files.slice(200));
  const got = await fetchAll(h);
  t.ok(got.has('root') && got.has('vhost.listen'), 'the keeper\'s own fds are in the set');
  let same = 0;
  files.forEach((f, i) => { if (got.has(names[i]!) && inodeOf(got.get(names[i]!)!) === inodeOf(f)) same++; });
  t.equal(same, 300, 'every stored fd comes back, the same file');
  closeAll(got.values());
  h.send({ type: 'remove', names: names.slice(0, 150) });
  const after = await fetchAll(h);
  t.equal([...after.keys()].filter((n) => n.startsWith('file.')).length, 150, 'removed fds are gone');
  closeAll(after.values());
  closeAll(files);
  t.ok(await h.alive());
  await h.keeper.stop('done');
  t.equal(openFds().length, before + 1, 'only our end of the socketpair is left open');
});

t.test('malformed and out-of-order messages: refused, fds closed, the keeper keeps serving', async (t) => {
  const h = await startKeeper(t);
  const baseline = openFds().length;
  const attach = (): number[] => [native.memfdCreate('attached', 0)];
  const cases: Array<[string, Buffer | ToKeeper, boolean]> = [
    ['garbage', Buffer.from('\u0000\u0001garbage'), true],
    ['no key', Buffer.from('=1\n'), true],
    ['FDFETCHNEXT before FDFETCH', { type: 'fetchNext' }, false],
    ['fd names do not match the fds', Buffer.from('FDSTORE=1\nFDNAME=a:b\n'), true],
    ['invalid fd name', Buffer.from('FDSTORE=1\nFDNAME=../x\n'), true],
    ['two message types', Buffer.from('FDSTORE=1\nFDNAME=a\nX_SERVED=1\n'), true],
    ['fds on a status message', Buffer.from('STATUS=hi\n'), true],
    ['fds on a removal', Buffer.from('FDSTOREREMOVE=1\nFDNAME=root\n'), true],
    ['keeper-to-worker message sent to the keeper', Buffer.from('X_TAKEOVER=1\n'), false],
    ['X_CTLREPLY without a frontend connection', { type: 'controlReply', seq: 1, data: Buffer.from('x') }, true],
    ['X_STATS that is not JSON', Buffer.from('X_STATS={{\n'), false],
    ['an empty message with fds', Buffer.alloc(0), true],
  ];
  for (const [what, msg, withFds] of cases) {
    const fds = withFds ? attach() : [];
    h.send(msg, fds);
    closeAll(fds);
    t.ok(await h.alive(), `${what}: the keeper still answers`);
  }
  await waitFor(() => openFds().length === baseline, 'the keeper closed every fd of the refused messages', 5000).catch(() => undefined);
  t.equal(openFds().length, baseline, 'no fd of a refused message is left open');
  const got = await fetchAll(h);
  t.same([...got.keys()].sort(), ['root', 'vhost.listen'], 'nothing refused was stored, nothing removed');
  closeAll(got.values());
});

t.test('a message longer than the receive buffer (truncated) is refused', async (t) => {
  const h = await startKeeper(t);
  const big = Buffer.alloc(MAX_MESSAGE_SIZE + 100, 0x41);
  big.write('STATUS=', 0);
  h.send(big);
  t.ok(await h.alive(), 'still answers after a message longer than its buffer');
  t.equal(h.keeper.status().worker.status, null, 'the truncated STATUS was not taken');
});

t.test('a flood of bad messages is logged at a bounded rate', async (t) => {
  const h = await startKeeper(t);
  const start = fs.statSync(logFile).size;
  const t0 = Date.now();
  for (let i = 0; i < 5000; i++) {
    const junk = Buffer.from(`junk ${i}\n`);
    // A full socket buffer: let the keeper read (it runs on this event loop), then resend.
    while (native.sendMsg(h.fd, junk, []) !== junk.length) await new Promise((r) => setImmediate(r));
  }
  t.ok(await h.alive());
  const elapsedS = (Date.now() - t0) / 1000;
  const lines = fs.readFileSync(logFile, 'utf8').slice(start).split('\n').filter((l) => l.includes('bad keeper.sock message'));
  t.ok(lines.length >= 1, 'bad messages are logged');
  t.ok(lines.length <= 20 + Math.ceil(elapsedS * 10) + 1, `${lines.length} log lines for 5000 bad messages in ${elapsedS.toFixed(1)} s`);
  const last = JSON.parse(lines[lines.length - 1]!) as { dropped?: number; component?: string };
  t.equal(last.component, 'keeper', 'pino JSON with the component');
});

t.test('control replies reach the frontend once per sequence number, with their fds', async (t) => {
  const h = await startKeeper(t);
  const [qemu, conn] = native.socketpair('stream');
  h.send({ type: 'store', names: ['vhost.conn'] }, [conn]);
  native.close(conn);
  const w = native.memfdCreate('inflight', 0);
  const r = native.dup(w);
  h.send({ type: 'controlReply', seq: 1, data: Buffer.from('one') }, [r]);
  h.send({ type: 'controlReply', seq: 1, data: Buffer.from('dup') }, []);
  h.send({ type: 'controlReply', seq: 2, data: Buffer.from('two') }, []);
  native.close(r);
  const got: string[] = [];
  let passed: number[] = [];
  await waitFor(() => {
    const m = native.recvMsg(qemu, buf, 8);
    if (m !== null) { got.push(buf.subarray(0, m.bytes).toString()); passed = passed.concat(m.fds); }
    return got.join('') === 'onetwo';
  }, 'both replies at the frontend');
  t.equal(got.join(''), 'onetwo', 'seq 1 once, the duplicate dropped, then seq 2');
  t.equal(passed.length, 1, 'the reply\'s fd reached the frontend');
  t.equal(inodeOf(passed[0]!), inodeOf(w), 'the same file');
  closeAll(passed);
  native.close(w);
  // A successor learns the last forwarded sequence number with the fd set.
  h.send({ type: 'fetch' });
  const { msg, fds } = await h.receive();
  t.equal(msg.type === 'fdSet' && msg.ctlSeq, 2, 'CTLSEQ is the last forwarded reply');
  closeAll(fds);
  if (msg.type === 'fdSet' && msg.more) { h.send({ type: 'fetchNext' }); closeAll((await h.receive()).fds); }
  native.close(qemu);
});

t.test('worker reports: READY, STATUS, X_STATS, X_SETERROR, X_SERVED show in the status', async (t) => {
  const h = await startKeeper(t);
  h.send({ type: 'notify', ready: true, stopping: false, status: 'serving' });
  h.send({ type: 'stats', stats: { fuse: { inodes: 7 } } });
  h.send({ type: 'setError', error: 'worker cannot start (state): bad journal' });
  h.send({ type: 'served' });
  await waitFor(() => h.keeper.status().workerStats !== null, 'the stats');
  const s = h.keeper.status();
  t.equal(s.worker.state, 'running');
  t.equal(s.worker.pid, process.pid, 'under systemd, whoever says READY is the worker');
  t.equal(s.worker.status, 'serving');
  t.same(s.workerStats, { fuse: { inodes: 7 } });
  t.equal(s.keeper.error, 'worker cannot start (state): bad journal');
  h.send({ type: 'notify', ready: false, stopping: true, status: 'frontend disconnected' });
  await waitFor(() => h.keeper.status().worker.state === 'stopping', 'STOPPING');
  t.pass('STOPPING=1 moves the worker to stopping');
});

/** Another keeper.sock connection of `role`, as the upgrade CLI (observer) or a restarted
 * worker has. */
function connect(h: Harness, role: 'worker' | 'observer', t: TestLike): { fd: number; send(m: ToKeeper): void; receive(): Promise<FromKeeper> } {
  const [ours, theirs] = native.socketpair('seqpacket');
  h.keeper.adoptPeer(theirs, process.pid, role);
  t.teardown(() => { try { native.close(ours); } catch { /* closed by the test */ } });
  return {
    fd: ours,
    send(m) { const d = encodeToKeeper(m); if (native.sendMsg(ours, d, []) !== d.length) throw new Error('short send'); },
    async receive() {
      const r = (await waitFor(() => native.recvMsg(ours, buf, 0), 'a message from the keeper'))!;
      return parseFromKeeper(buf.subarray(0, r.bytes), r.fds.length);
    },
  };
}

const INFO = { version: '1.0.0', schema: 2, minReader: 2, drain: true };

t.test('planned upgrade under systemd: X_UPGRADE → X_DRAIN → X_DRAINED, a new worker → X_RESUMED → X_UPGRADED with the pause', async (t) => {
  const h = await startKeeper(t);
  const cli = connect(h, 'observer', t);
  cli.send({ type: 'upgrade', timeoutMs: null });
  let reply = await cli.receive();
  t.equal(reply.type === 'upgraded' && reply.result.result, 'refused', 'no worker serving: refused at once');
  t.match(reply.type === 'upgraded' ? reply.result.reason : '', /no worker is serving/);

  const old = connect(h, 'worker', t);
  old.send({ type: 'notify', ready: true, stopping: false, status: 'serving', worker: INFO });
  await waitFor(() => h.keeper.status().worker.state === 'running', 'the worker serving');
  cli.send({ type: 'upgrade', timeoutMs: 30_000 });
  t.equal((await old.receive()).type, 'drain', 'the serving worker is told to drain (it said X_CANDRAIN)');
  const second = connect(h, 'observer', t);
  second.send({ type: 'upgrade', timeoutMs: null });
  reply = await second.receive();
  t.equal(reply.type === 'upgraded' && reply.result.reason, 'an upgrade is already in progress', 'one at a time');
  old.send({ type: 'drained', pausedNs: 1_000_000_000n, left: 1 });
  await h.alive();
  native.close(old.fd); // the drained worker exits; systemd starts the next
  await waitFor(() => h.keeper.status().worker.state === 'restarting', 'its connection closed');
  const next = connect(h, 'worker', t);
  next.send({ type: 'notify', ready: true, stopping: false, status: 'serving (resumed)', worker: { ...INFO, version: '1.1.0' } });
  next.send({ type: 'resumed', resumedNs: 1_012_500_000n });
  reply = await cli.receive();
  if (reply.type !== 'upgraded') throw new Error(`unexpected ${reply.type}`);
  t.match(reply.result, { result: 'ok', mode: 'drain', oldVersion: '1.0.0', newVersion: '1.1.0', pauseMs: 12.5, left: 1, reason: null }, 'the pause is X_RESUMED - X_PAUSEDNS');
  const st = h.keeper.status();
  t.equal(st.worker.restarts, 0, 'a handover, not a death');
  t.match(st.upgrades, { count: 1, failed: 2, inProgress: false, pauseP50Ms: 12.5, recentPauseMs: [12.5] }, 'status: one done, two refused, the pause');
});

t.test('the compatibility check an upgrade makes before it drains names both versions', async (t) => {
  const h = await startKeeper(t);
  // The end-to-end refusal is in test/crash/upgrade.test.ts; here the rule's corners.
  const { incompatibility } = require('../../keeper/upgrade') as typeof import('../../keeper/upgrade');
  t.equal(incompatibility({ ...INFO, schema: 3, minReader: 2 }, INFO), null, 'a newer file declared readable by 2');
  t.equal(incompatibility(INFO, { ...INFO, schema: 3, minReader: 3 }), null, 'newer reads older');
  t.equal(incompatibility(null, INFO), null, 'a worker from before the rule writes schema 2');
  t.match(incompatibility({ ...INFO, version: '2.0.0', schema: 3, minReader: 3 }, INFO),
    /installed worker \(virtiofs-keeper 1\.0\.0\) reads state schemas 1 to 2, but the serving worker \(virtiofs-keeper 2\.0\.0\) writes schema 3, readable from schema 3/);
  t.match(incompatibility({ ...INFO, schema: 3, minReader: 3 }, null), /unknown \(older\)/, 'an installed worker that does not say is taken for schema 2');
  t.ok(await h.alive());
});
